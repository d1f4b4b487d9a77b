"""Real low-bit kernels against the simulated quantizer: same bits, same groups, logits within a stated tolerance."""
import pytest
import torch

import explorer as ex
from explorer import quant_kernels as K
from explorer.techniques.quantize import Quantize

pytestmark = pytest.mark.skipif(not K.int4_kernel_runs(), reason="torch's CPU int4 matmul does not run here")

# The int4 kernel takes bfloat16 activations, scales and zeros (8 significant bits): logits may move by
# up to 1% of the largest logit against the float32 simulation of the same codes, and the greedy
# token may change only where the top two are that close.
LOGIT_TOLERANCE = 0.01


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [32, 64])
def test_int4_codes_reproduce_the_simulated_weights_exactly(symmetric, group):
    w = torch.randn(48, 192) * torch.linspace(0.1, 3, 192)
    deq, _ = K.quantize_weight(w, K.Grid("int", 4, symmetric), group)
    codes, scale, zero = K.int_codes(w, 4, symmetric, group)
    assert codes.min() >= (-7 if symmetric else 0) and codes.max() <= (7 if symmetric else 15)
    back = ((codes.reshape(48, -1, group) - zero[..., None]) * scale[..., None]).reshape(48, 192)
    assert torch.equal(back, deq)


@pytest.mark.parametrize("symmetric", [True, False])
def test_the_int4_kernel_holds_the_simulated_weights_to_bfloat16_scales(symmetric):
    lin = torch.nn.Linear(192, 64, bias=False)
    deq, _ = K.quantize_weight(lin.weight, K.Grid("int", 4, symmetric), 32)
    kern = K.Int4WeightOnlyLinear(lin, deq, symmetric, 32)
    held = kern.dequantized()
    assert torch.allclose(held, deq, rtol=2**-7, atol=2**-7 * float(deq.abs().max()) / 8)
    x = torch.randn(5, 192)
    assert torch.allclose(kern(x), x @ deq.T, atol=0.02 * float((x @ deq.T).abs().max()))


@pytest.mark.parametrize("symmetric", [True, False])
def test_an_int4_model_on_the_kernel_matches_its_simulation(zoo_models, symmetric):
    model = zoo_models["zoo-m"]
    real = Quantize(bits=4, group_size=32, symmetric=symmetric).apply(model)
    sim = Quantize(bits=4, group_size=32, symmetric=symmetric, kernel="simulated").apply(model)
    assert real.tags["quantize"]["kernel"] == "int4-weight-only" and real.tags["quantize"]["kernel_linears"] > 0
    assert sim.tags["quantize"]["kernel"] == "simulated"
    text = ex.tasks.heldout_text()[:400]
    ids = model.tokenizer([text[i : i + 80] for i in range(0, 400, 80)], return_tensors="pt")
    with torch.inference_mode():
        a, b = real.hf(**ids).logits, sim.hf(**ids).logits
    assert float((a - b).abs().max()) <= LOGIT_TOLERANCE * float(b.abs().max())
    top2 = b.topk(2, -1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * LOGIT_TOLERANCE * float(b.abs().max())
    assert torch.equal(a.argmax(-1)[clear], b.argmax(-1)[clear])
    assert clear.float().mean() > 0.5  # most positions are clear: the check above bites


def test_a_format_without_a_kernel_stays_simulated_and_says_so(zoo_models):
    model = zoo_models["zoo-s"]
    assert Quantize(bits=4, group_size=None).resolved_kernel == "simulated"  # per channel: no int4 kernel
    assert Quantize(bits=3, group_size=32).resolved_kernel == "simulated"
    assert Quantize(bits=4, group_size=32, kernel="simulated").resolved_kernel == "simulated"
    row = ex.run(model, "shakespeare", Quantize(bits=4, group_size=32), n=4)
    assert row["kernel"] == "int4-weight-only" and row["wall_s_is_kernel"] is True
    row = ex.run(model, "shakespeare", Quantize(bits=4, group_size=None), n=4)
    assert row["kernel"] == "simulated" and row["wall_s_is_kernel"] is False


@pytest.mark.skipif(not K.int8_weight_only_runs(), reason="torch's CPU int8 weight-only matmul does not run here")
def test_the_int8_weight_only_kernel_is_the_default_8_bit_kernel_and_matches_its_simulation(zoo_models):
    model = zoo_models["zoo-m"]
    real, sim = Quantize(bits=8).apply(model), Quantize(bits=8, kernel="simulated").apply(model)
    assert real.tags["quantize"]["kernel"] == "int8-weight-only" and real.tags["quantize"]["kernel_linears"] > 0
    for mod in real.hf.modules():
        if isinstance(mod, K.Int8WeightOnlyLinear):  # the kernel's codes are the simulated weights
            assert torch.allclose(mod.codes(), mod.weight, rtol=2**-8, atol=0)
    text = ex.tasks.heldout_text()[:400]
    ids = model.tokenizer([text[i : i + 80] for i in range(0, 400, 80)], return_tensors="pt")
    with torch.inference_mode():
        a, b = real.hf(**ids).logits, sim.hf(**ids).logits
    assert float((a - b).abs().max()) <= LOGIT_TOLERANCE * float(b.abs().max())


def test_int8_dynamic_is_asked_for_by_name_and_only_for_per_channel_int8():
    assert Quantize(bits=8, kernel="int8-dynamic").resolved_kernel == "int8-dynamic"
    with pytest.raises(ValueError, match="kernel='int8-dynamic' runs symmetric per-channel 8-bit int only"):
        Quantize(bits=4, group_size=32, kernel="int8-dynamic")


def test_bf16_runs_a_model_whose_head_is_tied_to_its_embeddings(zoo_models):
    model = zoo_models["zoo-xs"]
    if model.hf.get_output_embeddings().weight is not model.hf.get_input_embeddings().weight:
        import copy

        hf = copy.deepcopy(model.hf)
        hf.config.tie_word_embeddings = True
        hf.lm_head.weight = hf.model.embed_tokens.weight
        model = type(model)(hf, model.tokenizer, model.facts, dict(model.tags))
    q = Quantize(bits=16, format="fp").apply(model)  # the tied head once failed: float input, bf16 weight
    ids = model.tokenizer(["12+34="], return_tensors="pt")
    with torch.inference_mode():
        a, b = q.hf(**ids).logits.float(), model.hf(**ids).logits
    # bf16 end to end (weights and every activation, 8 significant bits through each layer): looser
    # than one kernel's 1%, and still far below what a wrong head (or none) would give.
    assert q.hf.get_output_embeddings().weight.dtype == torch.bfloat16
    assert float((a - b).abs().max()) <= 0.05 * float(b.abs().max())
