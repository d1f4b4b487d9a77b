import pytest
import torch

import explorer as ex
from explorer import tasks as T
from explorer.cost import flops_per_token
from explorer.generate import generate, samplers
from explorer.techniques import techniques


@pytest.fixture(scope="module")
def small(zoo_models):
    return zoo_models["zoo-s"]  # 2 layers: the smallest zoo model with somewhere to exit


def prompts(n=6, seed=1):
    # Mixed tasks and lengths, so batches are left padded.
    exs = T.get("addition").examples(n, seed=seed) + T.get("sort").examples(n // 2, seed=seed)
    return [e.prompt for e in exs]


def decode(model, technique, ps, max_new_tokens=12, seed=0):
    return technique.generate(model, ps, max_new_tokens=max_new_tokens, seed=seed)


# ---------------------------------------------------------------- never exit, always exit

@pytest.mark.parametrize("never", [ex.EarlyExit("max_prob", 1.0), ex.EarlyExit("entropy", 0.0),
                                   ex.EarlyExit("agreement", 99)])
def test_a_threshold_that_never_exits_reproduces_the_full_model_token_for_token(mid_model, never):
    ps = prompts()
    full = generate(mid_model.hf, mid_model.tokenizer, ps, max_new_tokens=12)
    ours = decode(mid_model, never, ps)
    assert ours.tokens == full.tokens
    assert ours.logprobs == pytest.approx(full.logprobs, abs=1e-4)
    assert ours.tokens_generated == full.tokens_generated
    depth = mid_model.facts.layers
    assert {e for row in ours.exits.per_row() for e in row} == {depth}


def test_sampled_decoding_that_never_exits_draws_what_the_full_model_draws(small):
    ps = prompts()
    full = generate(small.hf, small.tokenizer, ps, max_new_tokens=10, temperature=1.0,
                    generator=samplers(4, len(ps)))  # seed 4, one generator per prompt, as a run seeds them
    ours = decode(small, ex.EarlyExit("max_prob", 1.0, temperature=1.0), ps, max_new_tokens=10, seed=4)
    assert ours.tokens == full.tokens
    again = decode(small, ex.EarlyExit("max_prob", 1.0, temperature=1.0), ps, max_new_tokens=10, seed=4)
    assert again.tokens == ours.tokens


def count_calls(modules):
    counts = [0] * len(modules)

    def hook(i):
        def fn(*_):
            counts[i] += 1
        return fn

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    return counts, handles


def test_always_exiting_runs_only_the_first_min_layers(mid_model):
    layers = mid_model.hf.model.layers
    depth, k = len(layers), 2
    calls, h1 = count_calls(list(layers))  # transformers' layers run the prompt's prefill only
    try:
        g = decode(mid_model, ex.EarlyExit("max_prob", 0.0, min_layers=k), prompts(4), max_new_tokens=8)
    finally:
        for h in h1:
            h.remove()
    assert calls == [1] * depth
    # Decode positions (every step, plus the prompt's last position) ran layers 1..k on the live rows only.
    decoded = sum(len(row) for row in g.exits.per_row())
    assert g.exits.layer_rows == [decoded] * k + [0] * (depth - k)
    assert {e for row in g.exits.per_row() for e in row} == {k}


@pytest.mark.parametrize("threshold", [1.0, 0.7])
def test_the_fused_decode_layers_give_what_transformers_layers_give(mid_model, threshold):
    from explorer.layerwise import ExitingModel

    ps, rule = prompts(6, seed=5), ex.EarlyExit("max_prob", threshold).rule()
    fast = ExitingModel(mid_model.hf, rule, mid_model.tokenizer.eos_token_id)
    assert fast.fast is not None  # a plain Llama: the fused layers run
    slow = ExitingModel(mid_model.hf, rule, mid_model.tokenizer.eos_token_id)
    slow.fast = None  # transformers' LlamaDecoderLayer, as a quantized model gets
    a = generate(fast, mid_model.tokenizer, ps, max_new_tokens=16)
    b = generate(slow, mid_model.tokenizer, ps, max_new_tokens=16)
    assert a.tokens == b.tokens and fast.stats.per_row() == slow.stats.per_row()
    assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    assert fast.stats.layer_rows == slow.stats.layer_rows


def test_exit_layers_are_kept_only_for_tokens_a_row_decoded(small):
    ps = prompts(4)
    one = [decode(small, ex.EarlyExit("max_prob", 0.9), [p]) for p in ps]
    batch = decode(small, ex.EarlyExit("max_prob", 0.9), ps)
    assert [len(r) for r in batch.exits.per_row()] == [o.tokens_generated for o in one]


def test_batched_exits_equal_one_prompt_at_a_time(mid_model):
    ps = prompts(6, seed=3)
    rule = ex.EarlyExit("max_prob", 0.8)
    batch = decode(mid_model, rule, ps)
    single = [decode(mid_model, rule, [p]) for p in ps]
    assert batch.tokens == [s.tokens[0] for s in single]
    assert batch.exits.per_row() == [s.exits.per_row()[0] for s in single]


def test_what_runs_is_what_the_flops_count_charges(mid_model):
    """Layers, LM heads and K/V fills computed equal the counts `exit_flops` charges: each token runs
    layers 1..e, reads the head at layers min_layers..e, and gets K/V filled for layers e+1..depth only."""
    depth = mid_model.facts.layers
    g = decode(mid_model, ex.EarlyExit("max_prob", 0.7, min_layers=2), prompts(6, seed=2), max_new_tokens=16)
    flat = [e for row in g.exits.per_row() for e in row]
    assert len(set(flat)) >= 3  # rows leave at several layers in one step: the fill serves mixed exits
    assert g.exits.layer_rows == [sum(e > j for e in flat) for j in range(depth)]
    assert g.exits.fill_rows == [sum(e <= j for e in flat) for j in range(depth)]
    assert g.exits.head_rows == sum(e - 2 + 1 for e in flat)


# ---------------------------------------------------------------- the KV cache under exits

def replay(hf, ids: list[int], exits: list[int]):
    """Reference: the whole sequence at once, no cache; a position's state freezes above its exit layer.

    This is what state propagation means, computed independently of the
    incremental K/V fill: layer j reads the frozen state of every position that
    left below it. Returns the per-layer logits (layers, positions, vocab).
    """
    inner = hf.model
    x = torch.tensor([ids])
    n = x.shape[1]
    h = inner.embed_tokens(x)
    pos = torch.arange(n)[None]
    rope = inner.rotary_emb(h, position_ids=pos)
    causal = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    stop = torch.tensor(exits)
    per_layer = []
    for j, layer in enumerate(inner.layers):
        out = layer(h, attention_mask=causal, position_embeddings=rope, position_ids=pos)
        h = torch.where((stop > j)[None, :, None], out, h)
        per_layer.append(hf.lm_head(inner.norm(h))[0])
    return torch.stack(per_layer)


def expected_exit(rule, layer_logits: torch.Tensor) -> int:
    """The exit layer the rule asks for, from every layer's logits at one position (layers, vocab)."""
    depth = layer_logits.shape[0]
    lp = layer_logits.log_softmax(-1)
    if rule.criterion == "max_prob":
        ok = lp.exp().amax(-1) > rule.threshold
    elif rule.criterion == "entropy":
        ok = -(lp.exp() * lp).sum(-1) < rule.threshold
    else:  # the top-1 token unchanged over the last `threshold` + 1 layers
        top, p = lp.argmax(-1).tolist(), int(rule.threshold)
        ok = [j >= p and len(set(top[j - p : j + 1])) == 1 for j in range(depth)]
    return next((j + 1 for j in range(depth - 1) if j + 1 >= rule.min_layers and ok[j]), depth)


@pytest.mark.parametrize("rule", [ex.EarlyExit("max_prob", 0.6), ex.EarlyExit("entropy", 0.8),
                                  ex.EarlyExit("agreement", 1)])
@torch.inference_mode()
def test_a_long_generation_with_exits_matches_a_reference_recomputation(mid_model, rule):
    tok, depth = mid_model.tokenizer, mid_model.facts.layers
    text = T.get("shakespeare").text()
    ps = [text[:20], text[100:131]]  # natural text: varied confidence, so exits vary
    g = decode(mid_model, rule, ps, max_new_tokens=60)
    exits = g.exits.per_row()
    spread = {e for row in exits for e in row}
    assert len(spread) >= 2 and min(spread) < depth  # tokens left at different layers, below the top
    for p, toks, row, logprob in zip(ps, g.tokens, exits, g.logprobs):
        prompt = tok(p)["input_ids"]
        out = toks + [tok.eos_token_id] * (len(row) - len(toks))  # what each decoded position produced
        fed = prompt + out[:-1]  # every produced token but the last was fed back
        # Prompt positions ran every layer; the last prompt position and every fed-back token exited.
        logits = replay(mid_model.hf, fed, [depth] * (len(prompt) - 1) + row)
        for step, (e, produced) in enumerate(zip(row, out)):
            at = len(prompt) - 1 + step
            assert int(logits[e - 1, at].argmax()) == produced
            expect = expected_exit(rule, logits[:, at])
            assert e == expect, f"position {at}: exit layer {e}, the reference says {expect}"
        # And the same numbers, not just the same argmax: the summed log-probability of the output.
        at = torch.arange(len(row)) + len(prompt) - 1
        chosen = logits[torch.tensor(row) - 1, at].log_softmax(-1)[torch.arange(len(row)), torch.tensor(out)]
        assert float(chosen.sum()) == pytest.approx(logprob, abs=1e-3)


def test_the_layer_by_layer_fill_for_quantized_projections_equals_the_batched_one(mid_model):
    from explorer.layerwise import ExitingModel

    ps, rule = prompts(6, seed=4), ex.EarlyExit("max_prob", 0.7)
    fused = ExitingModel(mid_model.hf, rule.rule(), mid_model.tokenizer.eos_token_id)
    assert fused.kv is not None  # plain Linear projections: the batched fill
    plain = ExitingModel(mid_model.hf, rule.rule(), mid_model.tokenizer.eos_token_id)
    plain.kv = None  # what a model with quantized (non-Linear) projections gets
    a = generate(fused, mid_model.tokenizer, ps, max_new_tokens=16)
    b = generate(plain, mid_model.tokenizer, ps, max_new_tokens=16)
    assert a.tokens == b.tokens and fused.stats.per_row() == plain.stats.per_row()
    assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    assert any(e < mid_model.facts.layers for row in plain.stats.per_row() for e in row)


@torch.inference_mode()
def test_the_fill_gives_each_layer_the_keys_and_values_of_its_own_projections(mid_model):
    """KVFill (folded weights through `Projection`: oneDNN's packed ones from ONEDNN_MIN_ROWS rows, F.linear
    below) against each layer's own input norm, K and V projections and rotary, on prefixes of the exited rows."""
    from explorer.layerwise import ONEDNN_MIN_ROWS, KVFill, rotate_half, signed_sin

    hf = mid_model.hf
    fill, depth = KVFill(hf), mid_model.facts.layers
    counts = [1, ONEDNN_MIN_ROWS - 1, ONEDNN_MIN_ROWS, 2 * ONEDNN_MIN_ROWS + 3][: depth - 1]
    first = depth - len(counts)
    x = torch.randn(counts[-1], hf.config.hidden_size)
    cos, sin = hf.model.rotary_emb(x[None], position_ids=torch.arange(counts[-1])[None] + 5)
    cos, sin = cos[0], sin[0]
    for signed in (False, True):
        k, v = fill(x, first, counts, cos, signed_sin(sin) if signed else sin, signed)
        at = 0
        for j, m in enumerate(counts, start=first):
            attn = hf.model.layers[j].self_attn
            xn = hf.model.layers[j].input_layernorm(x[:m])
            kj = attn.k_proj(xn).unflatten(-1, (-1, attn.head_dim))
            kj = kj * cos[:m, None] + rotate_half(kj) * sin[:m, None]
            torch.testing.assert_close(k[at : at + m], kj, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(v[at : at + m], attn.v_proj(xn).unflatten(-1, (-1, attn.head_dim)),
                                       rtol=1e-5, atol=1e-5)
            at += m
        assert at == k.shape[0] == v.shape[0]


# ---------------------------------------------------------------- the result row

def test_a_row_keeps_every_token_exit_layer_and_counts_what_ran(mid_model):
    depth = mid_model.facts.layers
    row = ex.run(mid_model, "addition", ex.EarlyExit("max_prob", 0.9, min_layers=2), n=12, repeats=1)
    assert row["technique"] == "early_exit" and row["knob_threshold"] == 0.9 and row["knob_min_layers"] == 2
    exits = row["exit_layers"]
    assert len(exits) == 12 and sum(map(len, exits)) == row["tokens_generated"]
    assert [len(w) for w in row["exit_tokens"]] == [len(e) for e in exits]
    assert sum(row["exit_layer_counts"]) == row["tokens_generated"] and row["exit_layer_counts"][0] == 0
    flat = [e for r in exits for e in r]
    assert row["exit_layer_mean"] == pytest.approx(sum(flat) / len(flat))
    # FLOPs: the layers that ran, K/V projections of the skipped ones, one LM head per layer read.
    c = mid_model.hf.config
    ctx = (row["flops_per_token_full_analytic"] - flops_per_token(c, 0)) / (
        flops_per_token(c, 1) - flops_per_token(c, 0))
    fills = sum(depth - e for e in flat) / len(flat)
    heads = sum(e - 2 + 1 for e in flat) / len(flat)
    expect = (flops_per_token(c, ctx, layers_run=sum(flat) / len(flat)) + 4 * c.hidden_size ** 2 * fills
              + 2 * c.hidden_size * c.vocab_size * (heads - 1))
    assert row["flops_per_token_analytic"] == pytest.approx(expect)
    assert 0 < row["flops_saving_analytic"] < 1
    assert row["kv_fill_s"] > 0 and 0 < row["kv_fill_share"] < 1


def test_a_higher_threshold_exits_later_and_costs_more(mid_model):
    rows = [ex.run(mid_model, "addition", ex.EarlyExit("max_prob", t), n=16, repeats=1)
            for t in (0.0, 0.5, 0.9, 0.999, 1.0)]
    means = [r["exit_layer_mean"] for r in rows]
    assert means == sorted(means) and means[0] == 1 and means[-1] == mid_model.facts.layers
    flops = [r["flops_per_token_analytic"] for r in rows]
    assert flops == sorted(flops)


def test_early_exit_is_registered_by_name():
    assert techniques.get("early_exit") is ex.EarlyExit


# ---------------------------------------------------------------- bad configurations

@pytest.mark.parametrize("kwargs, message", [
    (dict(criterion="confidence"), "criterion='confidence'; valid: max_prob, entropy, agreement"),
    (dict(criterion="max_prob", threshold=1.5), "threshold=1.5 for criterion 'max_prob'; valid range is 0..1"),
    (dict(criterion="max_prob", threshold=-0.1), "valid range is 0..1"),
    (dict(criterion="entropy", threshold=-1.0), "threshold=-1.0 for criterion 'entropy'.*>= 0"),
    (dict(criterion="agreement", threshold=0), "threshold=0 .*an integer >= 1"),
    (dict(criterion="agreement", threshold=1.5), "threshold=1.5 .*an integer >= 1"),
    (dict(threshold=float("nan")), "threshold=nan; must be a finite number"),
    (dict(threshold=True), "threshold=True"),
    (dict(min_layers=0), "min_layers=0; valid: an integer from 1"),
    (dict(min_layers=2.0), "min_layers=2.0"),
    (dict(temperature=-1.0), "temperature=-1.0"),
])
def test_a_bad_configuration_is_refused_when_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ex.EarlyExit(**kwargs)


def test_min_layers_beyond_the_depth_is_refused_when_run(small):
    with pytest.raises(ValueError, match=r"min_layers=3; this model has 2 layers, so valid is 1\.\.2"):
        ex.run(small, "addition", ex.EarlyExit(min_layers=3), n=2, repeats=1)


# ---------------------------------------------------------------- self-speculative decoding (LayerSkip)

from explorer.layerwise import first_layers  # noqa: E402
from explorer.speculative import speculative_generate  # noqa: E402
from explorer.techniques.self_speculative import SelfSpeculative  # noqa: E402


def test_the_draft_view_shares_the_weights_and_predicts_like_the_exit_layer(mid_model):
    hf = mid_model.hf
    view = first_layers(hf, 2)
    assert view.lm_head.weight.data_ptr() == hf.lm_head.weight.data_ptr()
    assert [m is n for m, n in zip(view.model.layers, hf.model.layers)] == [True, True]
    ids = mid_model.tokenizer(prompts(2)[:1], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        states = hf(input_ids=ids, output_hidden_states=True).hidden_states
        expect = hf.lm_head(hf.model.norm(states[2]))
        assert torch.equal(view(input_ids=ids).logits, expect)


@pytest.fixture
def fixed_length(monkeypatch):
    """Speculate at the fixed draft length at every batch size (no measured plan choosing plain
    decoding): these tests are about the draft and the loop, not the plan (tests/test_drafts.py)."""
    monkeypatch.setattr(SelfSpeculative, "plans_lengths", lambda self, rows: False)


@pytest.mark.parametrize("k", [1, 2])
def test_self_speculative_greedy_output_is_the_full_models(mid_model, k, fixed_length):
    ps = prompts(6, seed=2)
    full = generate(mid_model.hf, mid_model.tokenizer, ps, max_new_tokens=12)
    tech = SelfSpeculative(exit_layer=k, draft_len=3)
    out = tech.generate(tech.prepare(mid_model), ps, max_new_tokens=12, seed=0)
    assert out.tokens == full.tokens
    assert out.stats.accepted > 0  # the first layers do predict: some drafts survive


def test_a_self_speculative_row_reuses_the_speculative_columns(small, fixed_length):
    row = ex.run(small, "addition", SelfSpeculative(exit_layer=1, draft_len=4), n=8, repeats=1)
    assert row["technique"] == "self_speculative" and row["knob_exit_layer"] == 1 and row["knob_draft"] == "self"
    assert row["outputs_match_target_alone"] is True
    assert row["weight_bytes"] == small.facts.weight_bytes  # the draft adds no weights
    assert 0 < row["acceptance_rate"] <= 1 and row["tokens_per_target_call"] > 1


def test_self_speculative_uses_the_one_speculative_loop(small, monkeypatch, fixed_length):
    import explorer.techniques.speculative as spec

    calls = []
    monkeypatch.setattr(spec, "speculative_generate", lambda *a, **k: calls.append(a) or speculative_generate(*a, **k))
    SelfSpeculative(exit_layer=1).generate(small, prompts(2), max_new_tokens=4, seed=0)
    assert len(calls) == 1 and calls[0][1].hf.config.num_hidden_layers == 1


def test_a_bad_exit_layer_is_refused(small):
    with pytest.raises(ValueError, match=r"exit_layer=0; valid: an integer from 1"):
        SelfSpeculative(exit_layer=0)
    with pytest.raises(ValueError, match=r"SelfSpeculative.exit_layer=2; this model has 2 layers, so valid is 1\.\.1"):
        ex.run(small, "addition", SelfSpeculative(exit_layer=2), n=2, repeats=1)


def test_the_fused_layers_handle_grouped_query_attention_and_padding():
    """SmolLM2's shape (fewer K/V heads than query heads), on a small random Llama: fused equals transformers'."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from explorer.layerwise import ExitingModel, ExitRule

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                         attn_implementation="sdpa")
    hf = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        hf.lm_head.weight.mul_(40)  # confident predictions, so rows leave at different layers
    ids = torch.randint(3, 64, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding on one row
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = {}
    for fused in (True, False):
        model = ExitingModel(hf, ExitRule("max_prob", 0.8, 1), eos_token_id=-1)  # no row ends
        assert model.fast is not None
        if not fused:
            model.fast = None
        first = model(input_ids=ids, attention_mask=mask, position_ids=pos)
        m2 = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1)
        nxt = first.logits[:, -1].argmax(-1, keepdim=True)
        second = model(input_ids=nxt, attention_mask=m2, position_ids=pos[:, -1:] + 1, cache=first.cache)
        out[fused] = (first.logits, second.logits, model.stats.per_row())
    assert torch.allclose(out[True][0], out[False][0], atol=1e-5)
    assert torch.allclose(out[True][1], out[False][1], atol=1e-5)
    assert out[True][2] == out[False][2]
    assert len({e for row in out[True][2] for e in row}) == 3  # exits at every layer: fill and gathers ran


def test_early_exit_follows_a_weight_changed_in_place(zoo_models):
    """Early exit keeps fused and oneDNN-reordered copies of the weights per model: a weight written in
    place (as pruning does) must reach them, or the run would decode the old model."""
    import copy

    model = copy.deepcopy(zoo_models["zoo-m"])
    ps, never = prompts(), ex.EarlyExit("max_prob", 1.0)
    decode(model, never, ps)  # builds and keeps the copies
    with torch.no_grad():
        for layer in model.hf.model.layers:
            layer.mlp.down_proj.weight.mul_(0.5)
            layer.self_attn.k_proj.weight.mul_(0.5)
    full = generate(model.hf, model.tokenizer, ps, max_new_tokens=12, path="transformers")
    ours = decode(model, never, ps)
    assert ours.tokens == full.tokens
    assert ours.logprobs == pytest.approx(full.logprobs, abs=1e-4)
