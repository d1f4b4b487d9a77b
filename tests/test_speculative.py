import dataclasses
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

import explorer as ex
from explorer import tasks as T
from explorer.generate import encode, generate
from explorer.layerwise import first_layers
from explorer.speculative import (Decoder, FusedSide, as_decoder, decode_alone, fused_side, predicted_speedup,
                                  speculative_generate)

SIGNIFICANCE = 1e-3  # a correct sampler fails one seed in a thousand; the seeds below are fixed


@pytest.fixture(scope="module")
def draft(tiny_model):
    return tiny_model  # zoo-xs


@pytest.fixture(scope="module")
def target(zoo_models):
    return zoo_models["zoo-s"]


def prompts_of(n_per_task: int, seed: int) -> list[str]:
    return [e.prompt for t in T.GENERATIVE for e in T.get(t).examples(n_per_task, seed)]


# --- greedy: the output is the target's, token for token -------------------------------------------

@pytest.mark.parametrize("draft_len", [1, 2, 3, 5, 8])
def test_greedy_batched_output_is_the_target_alone_over_many_prompts(target, draft, draft_len):
    prompts = prompts_of(10, seed=draft_len)  # 40 prompts of different lengths: left padding and holes
    alone = generate(target.hf, target.tokenizer, prompts, max_new_tokens=14)
    enc = encode(target.tokenizer, prompts, 200)
    spec = speculative_generate(target, draft, enc, draft_len=draft_len, temperature=0.0, max_new_tokens=14)
    assert spec.tokens == alone.tokens
    assert spec.texts == alone.texts
    assert spec.logprobs == pytest.approx(alone.logprobs, abs=1e-3)
    assert spec.stats.accepted > 0 and spec.stats.accepted < spec.stats.drafted  # both paths ran


@pytest.mark.parametrize("draft_len", [1, 4, 7])
def test_greedy_one_prompt_at_a_time_is_the_target_alone(target, draft, draft_len):
    for p in [""] + prompts_of(3, seed=11):  # "": the prompt is the start token alone
        alone = generate(target.hf, target.tokenizer, [p], max_new_tokens=10)
        spec = speculative_generate(target, draft, target.tokenizer(p)["input_ids"], draft_len=draft_len,
                                    temperature=0.0, max_new_tokens=10)
        assert spec.tokens == alone.tokens, p


def test_greedy_on_zoo_m_with_zoo_s_drafting(zoo_models):
    target, draft = zoo_models["zoo-m"], zoo_models["zoo-s"]
    prompts = prompts_of(6, seed=4)
    alone = generate(target.hf, target.tokenizer, prompts, max_new_tokens=12)
    spec = speculative_generate(target, draft, encode(target.tokenizer, prompts, 200), draft_len=4,
                                temperature=0.0, max_new_tokens=12)
    assert spec.tokens == alone.tokens


def test_first_layers_of_the_target_work_as_a_draft(zoo_models):
    target = zoo_models["zoo-m"]
    prompts = prompts_of(4, seed=5)
    alone = generate(target.hf, target.tokenizer, prompts, max_new_tokens=10)
    view = dataclasses.replace(target, hf=first_layers(target.hf, 2))  # weights shared, not copied
    spec = speculative_generate(target, view, encode(target.tokenizer, prompts, 200),
                                draft_len=3, temperature=0.0, max_new_tokens=10)
    assert spec.tokens == alone.tokens
    assert spec.stats.accepted > 0


# --- sampling: the output follows the target's distribution exactly -------------------------------

PROMPT, TEMPERATURE, N, DEPTH = "To be", 1.0, 4000, 3


def exact_probs(model) -> dict[tuple, float]:
    """P(first DEPTH generated tokens) under the target, p(x1) p(x2 | x1) ..., for every
    sequence expected at least 5 times in N draws; an end token ends a sequence (padded with it)."""
    tok, eos = model.tokenizer, model.tokenizer.eos_token_id
    prompt = tok(PROMPT)["input_ids"]
    probs, frontier = {}, [((), 1.0)]
    with torch.inference_mode():
        for depth in range(DEPTH):
            ids = torch.tensor([prompt + list(seq) for seq, _ in frontier])
            p = torch.softmax(model.hf(input_ids=ids).logits[:, -1].double() / TEMPERATURE, -1)
            grown = [(seq + (x,), mass * float(p[i, x])) for i, (seq, mass) in enumerate(frontier)
                     for x in range(p.shape[1])]
            grown = [(seq, mass) for seq, mass in grown if mass * N >= 5]
            probs |= {seq + (eos,) * (DEPTH - len(seq)): mass for seq, mass in grown
                      if seq[-1] == eos or depth == DEPTH - 1}
            frontier = [(seq, mass) for seq, mass in grown if seq[-1] != eos]
    return probs


@pytest.fixture(scope="module")
def exact(target):
    return exact_probs(target)


def prefixes(tokens: list[list[int]], eos: int) -> list[tuple]:
    return [tuple((t + [eos] * DEPTH)[:DEPTH]) for t in tokens]  # tokens come stripped of the end token


def fit_pvalue(samples: list[tuple], probs: dict[tuple, float]) -> float:
    """Chi-square goodness of fit over the cells expected at least 5 times, the rest pooled into one."""
    n, counts = len(samples), Counter(samples)
    cells = sorted((c for c, p in probs.items() if p * n >= 5), key=probs.get)
    observed = [counts[c] for c in cells]
    expected = [probs[c] * n for c in cells]
    rest_o, rest_e = n - sum(observed), n - sum(expected)
    if rest_e >= 5:
        observed.append(rest_o)
        expected.append(rest_e)
    else:  # too rare to stand alone: pool with the rarest kept cell
        observed[0] += rest_o
        expected[0] += rest_e
    return float(chisquare(observed, expected).pvalue)


# The prompt's forward yields token 1; with max_new_tokens=4 the first round proposes
# tokens 2 and 3 (up to 2 proposals), so the cells test acceptance, the residual draw
# and the bonus token. At adaptive=0.1 some rows stop proposing after one token and
# draw token 3 as their bonus from p; others propose two.
@pytest.mark.parametrize("draft_len,adaptive", [(1, None), (2, None), (2, 0.1)])
def test_sampled_tokens_follow_the_targets_exact_probabilities(target, draft, exact, draft_len, adaptive):
    ids = target.tokenizer([PROMPT] * N, return_tensors="pt")
    spec = speculative_generate(target, draft, ids, draft_len=draft_len, temperature=TEMPERATURE,
                                max_new_tokens=DEPTH + 1, generator=torch.Generator().manual_seed(draft_len),
                                adaptive=adaptive)
    s = spec.stats
    assert s.judged > s.accepted > 0  # rejections and acceptances both happened
    if adaptive:  # many rows that had their first proposal accepted did not offer a second
        assert 0 < s.position_judged[1] < 0.6 * s.position_accepted[0]
    assert fit_pvalue(prefixes(spec.tokens, target.tokenizer.eos_token_id), exact) > SIGNIFICANCE


def test_the_fit_test_rejects_a_sampler_that_always_accepts_the_draft(target, draft, exact):
    # Accepting every proposal emits the draft's own samples after the target's first token.
    tok = target.tokenizer
    first = generate(target.hf, tok, [PROMPT] * N, max_new_tokens=1, temperature=TEMPERATURE,
                     generator=torch.Generator().manual_seed(0)).tokens
    naive = generate(draft.hf, tok, [PROMPT + tok.decode(f) for f in first], max_new_tokens=DEPTH - 1,
                     temperature=TEMPERATURE, generator=torch.Generator().manual_seed(0))
    tokens = [f + t if f else [] for f, t in zip(first, naive.tokens)]  # [] : the first token ended it
    assert fit_pvalue(prefixes(tokens, tok.eos_token_id), exact) < 1e-9


def test_the_fit_test_rejects_resampling_from_p_instead_of_the_residual(target, draft):
    # A classic slip: on rejection, draw from p rather than norm(max(0, p - q)).
    ids = target.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        p = torch.softmax(target.hf(input_ids=ids).logits[0, -1] / TEMPERATURE, -1)
        q = torch.softmax(draft.hf(input_ids=ids).logits[0, -1] / TEMPERATURE, -1)
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(q, N, replacement=True, generator=g)
    keep = torch.rand(N, generator=g) < (p[x] / q[x])
    out = torch.where(keep, x, torch.multinomial(p, N, replacement=True, generator=g))
    probs = {(a,): float(p[a]) for a in range(p.numel())}
    assert fit_pvalue([(int(a),) for a in out], probs) < 1e-6


def test_sampling_is_seeded(target, draft):
    enc = encode(target.tokenizer, prompts_of(4, seed=0), 200)
    a, b = (speculative_generate(target, draft, enc, draft_len=3, temperature=0.8, max_new_tokens=8,
                                 generator=torch.Generator().manual_seed(5)) for _ in range(2))
    assert a.tokens == b.tokens and a.stats == b.stats


# --- the KV cache is rolled back exactly ----------------------------------------------------------

@pytest.mark.parametrize("kind", ["transformers", "fused"])
@pytest.mark.parametrize("second", ["7", "5678"])  # a padded batch; one without padding until a hole
def test_rolled_back_cache_equals_a_fresh_forward(target, kind, second):
    ids = target.tokenizer(["1234", second], return_tensors="pt", padding=True)
    side = Decoder(target.hf) if kind == "transformers" else fused_side(target.hf)
    side.start(ids["input_ids"], ids["attention_mask"])
    side.extend(torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]), torch.ones(2, 4, dtype=torch.bool))
    side.keep(torch.tensor([[True, True, False, False], [True, False, False, False]]))
    assert side.length() == ids["input_ids"].shape[1] + 2  # the column no row kept is cropped
    logits = side.extend(torch.tensor([[20], [21]]), torch.ones(2, 1, dtype=torch.bool))[:, -1]
    for row, (prompt, kept) in enumerate([("1234", [5, 6]), (second, [9])]):
        full = target.tokenizer(prompt, return_tensors="pt")["input_ids"][0].tolist() + kept + [20 + row]
        fresh = target.hf(input_ids=torch.tensor([full])).logits[0, -1]
        assert torch.allclose(logits[row], fresh, atol=1e-4)


@pytest.mark.parametrize("kind", ["transformers", "fused"])
def test_after_generation_the_target_cache_holds_exactly_the_kept_tokens(target, draft, kind):
    p = T.get("sort").examples(1, seed=3, difficulty=5)[0].prompt
    ids = target.tokenizer(p)["input_ids"]
    side = Decoder(target.hf) if kind == "transformers" else fused_side(target.hf)
    spec = speculative_generate(side, draft, ids, draft_len=6, temperature=0.0, max_new_tokens=12)
    assert spec.stats.judged > spec.stats.accepted  # some proposals were rejected and rolled back
    kept = ids + spec.tokens[0] + [target.tokenizer.eos_token_id] * (len(spec.tokens[0]) < 12)
    # The target's own last token is not fed yet; an accepted end token was.
    fed = len(kept) - 1 + spec.stats.eos_accepted
    assert side.length() == fed and bool(side.mask.all())  # no holes at batch size 1
    fresh = target.hf(input_ids=torch.tensor([kept[:fed]]), use_cache=True).cache
    if kind == "fused":
        got_layers = [(k[:, :, :fed], v[:, :, :fed]) for k, v in zip(side.keys, side.values)]
    else:
        got_layers = [(c.keys, c.values) for c in side.cache.layers]
    assert len(got_layers) == len(fresh.layers)
    for (keys, values), want in zip(got_layers, fresh.layers):
        assert torch.allclose(keys, want.keys, atol=1e-4)
        assert torch.allclose(values, want.values, atol=1e-4)


def test_zoo_models_run_the_fused_layers_and_others_transformers_own(target):
    import copy

    assert isinstance(as_decoder(target), FusedSide)  # every loop test above ran the fused path
    other = copy.deepcopy(target.hf)
    other.config.hidden_act = "gelu"  # fast_layers runs SiLU MLPs only
    side = as_decoder(other)
    assert type(side) is Decoder


# --- the statistics add up ------------------------------------------------------------------------

@pytest.mark.parametrize("temperature,adaptive", [(0.0, None), (0.9, None), (0.0, 0.6)])
def test_statistics_add_up(target, draft, temperature, adaptive):
    prompts = prompts_of(6, seed=9)
    spec = speculative_generate(target, draft, encode(target.tokenizer, prompts, 200), draft_len=5,
                                temperature=temperature, max_new_tokens=12, adaptive=adaptive,
                                generator=torch.Generator().manual_seed(1))
    s, eos = spec.stats, target.tokenizer.eos_token_id
    ended = sum(len(t) < 12 for t in spec.tokens)  # rows that stopped at an end token
    assert s.tokens == spec.tokens_generated == sum(len(t) for t in spec.tokens) + ended
    # Every target call emits its accepted proposals plus one token of its own,
    # except when an accepted proposal was the end token.
    assert s.tokens == s.accepted + s.target_calls - s.eos_accepted
    assert s.accepted <= s.judged <= s.drafted <= 5 * s.target_calls
    assert s.judged - s.accepted <= s.target_calls  # at most one rejection per call
    assert sum(s.position_judged) == s.judged and sum(s.position_accepted) == s.accepted
    assert s.position_judged == sorted(s.position_judged, reverse=True)
    assert s.acceptance_rate == s.accepted / s.judged
    assert s.tokens_per_target_call == s.tokens / s.target_calls
    assert s.position_acceptance[0] == s.position_accepted[0] / s.position_judged[0]
    assert eos not in [t for row in spec.tokens for t in row]


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_the_trace_replays_every_rows_output_call_by_call(target, draft, temperature):
    prompts = prompts_of(5, seed=4)
    trace: list = []
    spec = speculative_generate(target, draft, encode(target.tokenizer, prompts, 200), draft_len=4,
                                temperature=temperature, max_new_tokens=12, trace=trace,
                                generator=torch.Generator().manual_seed(3))
    eos, s = target.tokenizer.eos_token_id, spec.stats
    assert len(trace) == s.target_calls  # one record per row per target call
    assert sum(len(r["accepted"]) for r in trace) == s.accepted
    assert sum(len(r["accepted"]) + len(r["rejected"]) for r in trace) == s.drafted
    for i, want in enumerate(spec.tokens):
        got = [t for r in trace if r["row"] == i
               for t in r["accepted"] + ([] if r["bonus"] is None else [r["bonus"]])]
        assert [t for t in got if t != eos] == want


def test_a_speculative_row_stores_the_first_prompts_token_stream(target):
    row = ex.run(target, "addition", ex.Speculative(draft="zoo-xs", draft_len=3), n=4)
    calls = row["spec_trace"]
    assert calls and all(set(c) == {"accepted", "rejected", "bonus"} for c in calls)
    text = "".join("".join(c["accepted"]) + (c["bonus"] or "") for c in calls)
    task = T.get("addition")
    alone = generate(target.hf, target.tokenizer, [task.examples(4, 0)[0].prompt], max_new_tokens=task.max_new_tokens)
    assert text.replace(target.tokenizer.eos_token, "") == alone.texts[0]  # greedy: the target's own output


def test_a_higher_adaptive_threshold_proposes_less_and_changes_nothing(target, draft):
    enc = encode(target.tokenizer, prompts_of(6, seed=2), 200)
    runs = [speculative_generate(target, draft, enc, draft_len=8, temperature=0.0, max_new_tokens=12,
                                 adaptive=a) for a in (None, 0.3, 0.9)]
    assert runs[0].tokens == runs[1].tokens == runs[2].tokens
    per_call = [r.stats.drafted / r.stats.target_calls for r in runs]
    assert per_call[0] > per_call[1] > per_call[2]


def test_predicted_speedup_is_leviathans_formula():
    assert predicted_speedup(0.8, 4, 0.1) == pytest.approx((1 - 0.8**5) / (0.2 * 1.4))
    assert predicted_speedup(1.0, 3, 0.0) == 4.0
    assert predicted_speedup(0.0, 3, 0.5) == pytest.approx(1 / 2.5)


# --- clear errors, not wrong answers --------------------------------------------------------------

def other_tokenizer(tokenizer):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = tokenizer.get_vocab()
    shuffled = dict(zip(vocab, reversed(list(vocab.values()))))
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(shuffled, unk_token="<unk>")),
                                   eos_token="<eos>", pad_token="<pad>")


def test_tokenizers_that_differ_are_refused(target, draft):
    foreign = dataclasses.replace(draft, tokenizer=other_tokenizer(draft.tokenizer))
    with pytest.raises(ValueError, match="tokenizers differ"):
        speculative_generate(target, foreign, [1, 5, 6], draft_len=2, temperature=0.0, max_new_tokens=4)


def test_a_draft_not_smaller_than_the_target_is_refused(target, draft):
    for big, small in [(draft, target), (target, target)]:
        with pytest.raises(ValueError, match="must be smaller than the target"):
            speculative_generate(big, small, [1, 5, 6], draft_len=2, temperature=0.0, max_new_tokens=4)
    with pytest.raises(ValueError, match="must be smaller than the target"):
        ex.run(draft, "addition", ex.Speculative(draft="zoo-s"), n=2, repeats=1)


@pytest.mark.parametrize("bad", [0, -1, 33, 2.5, True, None])
def test_draft_len_out_of_range_is_refused(target, draft, bad):
    with pytest.raises(ValueError, match=r"draft_len=.*valid range is 1\.\.32"):
        speculative_generate(target, draft, [1, 5], draft_len=bad, temperature=0.0, max_new_tokens=4)
    with pytest.raises(ValueError, match=r"Speculative\.draft_len="):
        ex.Speculative(draft_len=bad)


@pytest.mark.parametrize("knobs,field", [({"adaptive": 1.5}, "adaptive"), ({"adaptive": 0}, "adaptive"),
                                         ({"temperature": -0.1}, "temperature"), ({"draft": ""}, "draft")])
def test_bad_knobs_are_refused_when_the_config_is_built(knobs, field):
    with pytest.raises(ValueError, match=rf"Speculative\.{field}="):
        ex.Speculative(**knobs)


def test_right_padded_prompts_are_refused(target, draft):
    with pytest.raises(ValueError, match="pad on the left"):
        speculative_generate(target, draft, {"input_ids": torch.tensor([[1, 5, 0]]),
                                             "attention_mask": torch.tensor([[1, 1, 0]])},
                             draft_len=2, temperature=0.0, max_new_tokens=4)


# --- the technique: a row for explorer.run --------------------------------------------------------

def test_run_row_puts_measured_beside_predicted_speedup(target):
    technique = ex.Speculative(draft="zoo-xs", draft_len=3)
    # Batch 1: a fixed draft length (at larger batches a measured plan may choose plain decoding).
    row = ex.run(target, "addition", technique, n=12, repeats=1, batch_size=1)
    assert row["spec_mode"] == "speculative"
    assert ex.techniques.techniques.get("speculative") is ex.Speculative
    assert row["technique"] == "speculative" and row["knob_draft"] == "zoo-xs" and row["knob_draft_len"] == 3
    assert row["outputs_match_target_alone"] is True
    assert row["accuracy"] == row["accuracy_target_alone"]
    assert row["speedup_measured"] == row["wall_s_target_alone"] / row["wall_s"]
    assert row["speedup_predicted"] == pytest.approx(
        predicted_speedup(row["acceptance_rate"], 3, row["cost_ratio_measured"]))
    c, v = row["cost_ratio_measured"], row["verify_cost_ratio_measured"]
    assert row["speedup_predicted_verify"] == pytest.approx(row["speedup_predicted"] * (3 * c + 1) / (3 * c + v))
    assert 0 < row["cost_ratio_measured"] < 1
    assert row["tokens_generated"] == row["accepted"] + row["target_calls"] - row["eos_accepted"]
    assert row["weight_bytes"] == target.facts.weight_bytes + ex.load("zoo-xs").facts.weight_bytes
    # Speculation spends more arithmetic per token than the target alone (that is its trade).
    assert row["flops_per_token_analytic"] > row["flops_per_token_analytic_target_alone"]
    assert len(row["acceptance_by_position"]) == 3


def test_the_target_alone_through_the_loops_own_layers_is_the_target_alone(target):
    prompts = prompts_of(5, seed=4)
    want = generate(target.hf, target.tokenizer, prompts, max_new_tokens=10).tokens
    enc = encode(target.tokenizer, prompts, 200)
    assert decode_alone(target, enc, max_new_tokens=10) == want


@pytest.mark.parametrize("batch", [1, 5])  # one prompt; a batch whose last row runs alone at the end
def test_one_row_rounds_equal_the_batched_code(target, draft, monkeypatch, batch):
    import explorer.speculative as S

    prompts = prompts_of(batch, seed=11)
    runs = []
    for fast in (True, False):
        monkeypatch.setattr(S, "ONE_ROW", fast)
        trace: list = []
        runs.append((speculative_generate(target, draft, encode(target.tokenizer, prompts, 200), draft_len=4,
                                          temperature=0.0, max_new_tokens=14, trace=trace), trace))
    (a, trace_a), (b, trace_b) = runs
    assert a.tokens == b.tokens and a.stats == b.stats and trace_a == trace_b
    assert a.logprobs == pytest.approx(b.logprobs, abs=1e-9)
    assert a.stats.eos_accepted + a.stats.accepted > 0  # the rounds did accept proposals
