"""The fused decode path (explorer.layerwise.FusedDecoder) gives what the transformers model gives."""
import pytest

import explorer as ex
from explorer import quant_kernels as K
from explorer import tasks as T
from explorer.generate import generate
from explorer.layerwise import fused_decoder


def prompts():
    return [e.prompt for e in T.get("addition").examples(4, 7) + T.get("sort").examples(3, 7)]  # left padded


def test_fused_greedy_decoding_equals_the_model(zoo_models):
    model = zoo_models["zoo-m"]
    fused = fused_decoder(model.hf)
    assert fused is not None
    a = generate(model.hf, model.tokenizer, prompts(), max_new_tokens=40)  # past the cache's first 32 spare columns
    b = generate(fused, model.tokenizer, prompts(), max_new_tokens=40)
    assert a.tokens == b.tokens and a.tokens_generated == b.tokens_generated
    assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)


@pytest.mark.parametrize("quantize", [ex.Quantize(bits=8), ex.Quantize(bits=4, group_size=32)])
def test_fused_decoding_calls_a_quantized_kernels_linears(zoo_models, quantize):
    q = quantize.apply(zoo_models["zoo-m"])
    if q.tags["quantize"]["kernel"] == "simulated":
        pytest.skip("no kernel for this format here")
    fused = fused_decoder(q.hf)
    assert fused is not None and fused.layers[0].modules is not None
    a = generate(q.hf, q.tokenizer, prompts(), max_new_tokens=12)
    b = generate(fused, q.tokenizer, prompts(), max_new_tokens=12)
    assert a.tokens == b.tokens
    assert b.logprobs == pytest.approx(a.logprobs, abs=1e-3)
    assert K is not None
