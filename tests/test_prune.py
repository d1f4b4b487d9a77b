import copy

import pytest
import torch

import explorer as ex
from explorer.techniques.prune import Prune


@pytest.fixture(scope="module")
def small():
    return ex.load("zoo-s")  # 2 layers, 3 heads of 32, 256 FFN channels


def logits(model, text="sort 8416:"):
    ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return model.hf(input_ids=ids).logits


def kept_rows(big, small_weight):
    """Which rows of `big` survive in `small_weight` (each kept row appears once, in order)."""
    return [next(i for i in range(big.shape[0]) if torch.equal(big[i], row)) for row in small_weight]


def test_structured_ffn_pruning_shrinks_the_matrices_and_equals_zeroing_those_channels(small):
    pruned = Prune(ffn=0.5, score="magnitude").prepare(small)
    mlp, mlp0 = pruned.hf.model.layers[0].mlp, small.hf.model.layers[0].mlp
    assert mlp.gate_proj.weight.shape == (128, 96) and mlp.down_proj.weight.shape == (96, 128)
    assert pruned.hf.config.intermediate_size == 128 and small.hf.config.intermediate_size == 256  # a copy
    assert pruned.facts.weight_bytes == small.facts.weight_bytes - 2 * 3 * 96 * 128 * 4  # 2 layers, 3 matrices
    # The same model with those channels' down columns zeroed computes the same function.
    zeroed = copy.deepcopy(small.hf)
    for layer, (b, b0) in enumerate(zip(pruned.hf.model.layers, zeroed.model.layers)):
        keep = kept_rows(b0.mlp.gate_proj.weight, b.mlp.gate_proj.weight)
        drop = sorted(set(range(256)) - set(keep))
        with torch.no_grad():
            b0.mlp.down_proj.weight[:, drop] = 0
    ref = ex.models.Model(zeroed, small.tokenizer, small.facts)
    assert torch.allclose(logits(pruned), logits(ref), atol=1e-5)
    assert not torch.allclose(logits(pruned), logits(small), atol=1e-3)
    assert mlp0.gate_proj.weight.shape == (256, 96)


def test_head_pruning_keeps_whole_heads_and_equals_zeroing_their_output(small):
    pruned = Prune(heads=0.34, score="magnitude").prepare(small)  # 1 of 3 heads goes
    c = pruned.hf.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (2, 2, 32)
    attn = pruned.hf.model.layers[1].self_attn
    assert attn.q_proj.weight.shape == (64, 96) and attn.o_proj.weight.shape == (96, 64)
    zeroed = copy.deepcopy(small.hf)
    for b, b0 in zip(pruned.hf.model.layers, zeroed.model.layers):
        rows = kept_rows(b0.self_attn.q_proj.weight, b.self_attn.q_proj.weight)
        gone = sorted({r // 32 for r in range(96)} - {r // 32 for r in rows})
        assert len(gone) == 1
        with torch.no_grad():
            b0.self_attn.o_proj.weight[:, gone[0] * 32 : (gone[0] + 1) * 32] = 0
    ref = ex.models.Model(zeroed, small.tokenizer, small.facts)
    assert torch.allclose(logits(pruned), logits(ref), atol=1e-5)
    row = ex.run(small, "sort", Prune(heads=0.34, score="magnitude"), n=8, repeats=1)  # decodes with its cache
    assert row["prune_heads"] == 2 and row["flops_per_token_analytic"] < ex.run(small, "sort", n=8, repeats=1)[
        "flops_per_token_analytic"]


def test_removing_a_layer_equals_a_layer_that_writes_nothing(small):
    pruned = Prune(layers=1, score="magnitude").prepare(small)
    assert pruned.hf.config.num_hidden_layers == 1 and len(pruned.hf.model.layers) == 1
    (gone,) = pruned.tags["prune"]["layers_removed"]
    assert pruned.hf.model.layers[0].self_attn.layer_idx == 0  # the cache is indexed by it
    zeroed = copy.deepcopy(small.hf)
    with torch.no_grad():
        zeroed.model.layers[gone].self_attn.o_proj.weight.zero_()
        zeroed.model.layers[gone].mlp.down_proj.weight.zero_()
    assert torch.allclose(logits(pruned), logits(ex.models.Model(zeroed, small.tokenizer, small.facts)), atol=1e-5)
    with pytest.raises(ValueError, match="Prune.layers=2 for zoo-s, which has 2 layers; valid: 0..1"):
        Prune(layers=2, score="magnitude").prepare(small)


def test_masks_keep_the_shapes_and_label_their_costs_analytic(small):
    row = ex.run(small, "sort", Prune(mask="2:4"), n=16, repeats=1)
    dense = ex.run(small, "sort", n=16, repeats=1)
    assert row["sparsity_measured"] == pytest.approx(0.5) and row["knob_sparsity"] == 0.5
    assert row["weight_bytes"] == dense["weight_bytes"]  # measured: the zeros are still stored
    assert row["weight_bytes_sparse_analytic"] < dense["weight_bytes"]
    # half the matmul weights are zero: a sparse kernel would do about half the FLOPs; the dense one did all
    assert row["flops_per_token_sparse_analytic"] < 0.6 * row["flops_per_token_analytic"]
    w = Prune(mask="2:4", score="magnitude").prepare(small).hf.model.layers[0].mlp.up_proj.weight
    assert ((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) >= 2).all()  # two of every four
    u = Prune(mask="unstructured", sparsity=0.3, score="magnitude").prepare(small).hf.model.layers[0].self_attn.q_proj.weight
    assert (u == 0).float().mean(1).sub(0.3).abs().max() < 0.01  # per row, as Wanda compares


def test_wanda_scores_come_from_the_task_and_differ_from_magnitude(small):
    task = ex.tasks.get("sort").for_model(small)
    wanda = Prune(ffn=0.5).prepare_for(small, task)
    magnitude = Prune(ffn=0.5, score="magnitude").prepare_for(small, task)
    a = set(kept_rows(small.hf.model.layers[0].mlp.gate_proj.weight, wanda.hf.model.layers[0].mlp.gate_proj.weight))
    b = set(kept_rows(small.hf.model.layers[0].mlp.gate_proj.weight, magnitude.hf.model.layers[0].mlp.gate_proj.weight))
    assert len(a) == len(b) == 128 and a != b
    with pytest.raises(ValueError, match="calibrates on a task"):
        Prune(ffn=0.5).prepare(small)


def test_pruning_composes_with_quantization_and_shows_in_the_sweep_the_cli_and_the_lab(small, capsys):
    row = ex.run(small, "sort", [ex.Quantize(bits=8), Prune(ffn=0.5, score="magnitude")], n=8, repeats=1)
    alone = ex.run(small, "sort", ex.Quantize(bits=8), n=8, repeats=1)
    assert row["technique"] == "prune+quantize" and row["weight_bytes"] < alone["weight_bytes"]
    from explorer.cli import main
    from explorer.sweep import DEFAULT_SPEC

    assert {"name": "prune", "ffn": [0.25, 0.5]} in DEFAULT_SPEC["techniques"]
    assert main(["techniques"]) == 0 and "prune: Structured pruning" in capsys.readouterr().out
    from widgets.state import LabState

    state = LabState(technique="prune", ffn=0.25)
    assert state.technique_config() == Prune(ffn=0.25) and state.cost_axis == "weight_bytes"


@pytest.mark.parametrize("knobs, message", [
    ({"ffn": 1.0}, r"Prune.ffn=1.0; valid: a fraction 0 <= ffn < 1"),
    ({"heads": -0.1}, r"Prune.heads=-0.1; valid"),
    ({"layers": 1.5}, r"Prune.layers=1.5; valid: an integer >= 0"),
    ({"mask": "4:8"}, r"Prune.mask='4:8'; valid: 'none', 'unstructured', '2:4'"),
    ({"sparsity": 0.5}, r"sparsity is for mask='unstructured'"),
    ({"mask": "2:4", "sparsity": 0.7}, r"2:4 keeps two of every four weights"),
    ({"score": "random"}, r"Prune.score='random'; valid: 'magnitude', 'wanda'"),
    ({"calibration": 0}, r"Prune.calibration=0; valid: an integer 1..1024"),
])
def test_bad_knobs_are_refused_with_the_valid_range(knobs, message):
    with pytest.raises(ValueError, match=message):
        Prune(**knobs)


def test_wanda_calibrates_on_a_likelihood_task_from_text_it_does_not_score(small):
    from explorer.techniques.prune import calibration_texts

    task = ex.tasks.get("shakespeare")
    texts = calibration_texts(task, 8)
    assert len(texts) == 8 and all(t in task.text()[-2000:] for t in texts)
    row = ex.run(small, "shakespeare", Prune(ffn=0.5), n=1000, repeats=1)
    dense = ex.run(small, "shakespeare", n=1000, repeats=1)
    assert dense["bits_per_char"] < row["bits_per_char"] < 2 * dense["bits_per_char"]
    assert row["weight_bytes"] < dense["weight_bytes"]
