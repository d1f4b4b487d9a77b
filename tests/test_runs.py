import math

import pytest

import explorer as ex
from explorer import tasks as T

TIMING = {"wall_s", "wall_s_per_token", "created_at", "device", "repeats", "batch_size"}  # how it was timed


@pytest.fixture(scope="module")
def row(tiny_model):
    return ex.run(tiny_model, "addition", n=40, seed=3, repeats=2)


def test_row_has_the_design_schema(row, tiny_model):
    for col in ["model", "model_params", "task", "technique", "n_examples", "seed", "accuracy",
                "accuracy_lo", "accuracy_hi", "flops_per_token_analytic", "weight_bytes",
                "tokens_generated", "wall_s", "device", "torch_version", "transformers_version",
                "explorer_version", "created_at", "config_hash"]:
        assert col in row, col
    assert row["model"] == "zoo-xs" and row["n_examples"] == 40 and row["technique"] == "baseline"
    assert row["weight_bytes"] == tiny_model.facts.weight_bytes
    assert 0 <= row["accuracy_lo"] <= row["accuracy"] <= row["accuracy_hi"] <= 1
    assert row["wall_s"] > 0 and row["tokens_generated"] >= 40


def test_accuracy_is_recomputable_from_the_model(row, tiny_model):
    task = T.get("addition")
    exs = task.examples(40, seed=3)
    from explorer.generate import generate

    g = generate(tiny_model.hf, tiny_model.tokenizer, [e.prompt for e in exs], max_new_tokens=7)
    assert row["correct"] == sum(task.verify(e, t) for e, t in zip(exs, g.texts))


def test_same_seed_same_row(row, tiny_model):
    again = ex.run(tiny_model, "addition", n=40, seed=3, repeats=1)
    assert {k: v for k, v in again.items() if k not in TIMING} == {k: v for k, v in row.items() if k not in TIMING}


def test_the_config_hash_changes_with_what_made_the_row(row, tiny_model):
    assert ex.run(tiny_model, "addition", n=40, seed=4, repeats=1)["config_hash"] != row["config_hash"]
    assert ex.run(tiny_model, "addition", n=41, seed=3, repeats=1)["config_hash"] != row["config_hash"]


def test_batch_size_does_not_change_the_answers(row, tiny_model):
    assert ex.run(tiny_model, "addition", n=40, seed=3, repeats=1, batch_size=7)["correct"] == row["correct"]


def test_likelihood_task_reports_bits_per_char(tiny_model, zoo_models):
    r = ex.run(tiny_model, "shakespeare", n=2000, repeats=1)
    assert 1.0 < r["bits_per_char"] < math.log2(100)
    assert r["bits_per_char_lo"] <= r["bits_per_char"] <= r["bits_per_char_hi"]
    big = ex.run(zoo_models["zoo-l"], "shakespeare", n=2000, repeats=1)
    assert big["bits_per_char"] < r["bits_per_char"]


@pytest.mark.parametrize("bad", [0, -1, "lots", 1.5])
def test_bad_n_is_refused(tiny_model, bad):
    with pytest.raises(ValueError, match=f"n={bad!r}"):
        ex.run(tiny_model, "addition", n=bad)


def test_bad_task_and_technique_are_refused(tiny_model):
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        ex.run(tiny_model, "nope", n=5)
    with pytest.raises(TypeError, match="technique='quantize'"):
        ex.run(tiny_model, "addition", "quantize", n=5)


def test_the_family_is_ordered_on_held_out_problems(zoo_models):
    # A small version of the card's evaluation, on a seed of its own.
    acc = [ex.run(zoo_models[n], "addition", n=60, seed=77, repeats=1)["accuracy"]
           + ex.run(zoo_models[n], "multiplication", n=60, seed=77, repeats=1)["accuracy"]
           for n in ex.zoo.names()]
    assert acc[0] < acc[-1]
    assert acc == sorted(acc)


def test_a_decoding_technique_on_the_likelihood_task_is_refused(tiny_model):
    with pytest.raises(ValueError, match="'shakespeare' scores text"):
        ex.run(tiny_model, "shakespeare", ex.EarlyExit(criterion="max_prob", threshold=0.9), n=100)
    assert ex.run(tiny_model, "shakespeare", ex.Quantize(bits=8), n=200, repeats=1)["bits_per_char"] > 0
