"""Every quality knows its direction: bits per character is better lower, with no flag anywhere."""
import polars as pl
import pytest

import explorer as ex
from explorer.cli import main as cli
from explorer.metrics import higher_is_better
from explorer.store import Store


def rows():
    return pl.DataFrame({
        "config_hash": ["good", "bad", "mid"], "model": ["zoo-l", "zoo-xs", "zoo-m"], "task": ["shakespeare"] * 3,
        "technique": ["baseline"] * 3, "n_examples": [100] * 3, "tokens_generated": [0] * 3,
        "bits_per_char": [1.9, 3.1, 2.4], "bits_per_char_lo": [1.8, 3.0, 2.3], "bits_per_char_hi": [2.0, 3.2, 2.5],
        "weight_bytes": [14e6, 0.3e6, 5e6], "flops_per_token_analytic": [3e6, 1e5, 1e6],
    })


def test_the_metric_table_knows_each_direction():
    assert not higher_is_better("bits_per_char") and higher_is_better("accuracy")
    assert not higher_is_better("weight_bytes") and not higher_is_better("wall_s")


def test_best_under_budget_minimizes_bits_per_char_by_itself():
    assert ex.best_under_budget(rows(), budget=1e9, cost="weight_bytes", quality="bits_per_char")["config_hash"] == "good"
    assert ex.best_under_budget(rows(), budget=6e6, cost="weight_bytes", quality="bits_per_char")["config_hash"] == "mid"
    # the override still works
    assert ex.best_under_budget(rows(), budget=1e9, cost="weight_bytes", quality="bits_per_char",
                                maximize=True)["config_hash"] == "bad"


def test_the_frontier_of_bits_per_char_keeps_the_low_ones():
    on = ex.frontier(rows(), cost="weight_bytes", quality="bits_per_char")["config_hash"].to_list()
    assert sorted(on) == ["bad", "good", "mid"]  # each is cheapest for its quality: all on the frontier
    worse = rows().vstack(pl.DataFrame({**{c: [v[0]] for c, v in rows().to_dict(as_series=False).items()},
                                        "config_hash": ["worse"], "bits_per_char": [3.5], "bits_per_char_lo": [3.4],
                                        "bits_per_char_hi": [3.6], "weight_bytes": [20e6]}))
    assert "worse" not in ex.frontier(worse, cost="weight_bytes", quality="bits_per_char")["config_hash"].to_list()


def test_the_cli_frontier_picks_the_direction_without_a_flag(tmp_path, capsys):
    store = Store(tmp_path)
    store.add(rows().to_dicts() + [{**rows().to_dicts()[0], "config_hash": "worse", "bits_per_char": 3.5,
                                   "bits_per_char_lo": 3.4, "bits_per_char_hi": 3.6, "weight_bytes": 20e6}])
    assert cli(["frontier", "--store", str(tmp_path), "--quality", "bits_per_char", "--cost", "weight_bytes"]) == 0
    shown = capsys.readouterr().out
    assert "zoo-l" in shown and "3.5" not in shown  # the 20 MB, 3.5 bits row is dominated, not a frontier point


def test_a_jsonl_task_keys_its_content(tmp_path, tiny_model):
    from explorer import tasks as T
    from explorer.runs import config_hash

    f = tmp_path / "qa.jsonl"
    f.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"}\n')
    before = config_hash(tiny_model, T.from_jsonl(f, register_it=False).with_format("natural"), ex.Baseline(), 2, 0)
    f.write_text('{"prompt": "1+1=", "answer": "3"}\n{"prompt": "2+2=", "answer": "4"}\n')
    after = config_hash(tiny_model, T.from_jsonl(f, register_it=False).with_format("natural"), ex.Baseline(), 2, 0)
    assert before != after


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_every_seeded_path_refuses_a_seed_that_is_not_a_non_negative_integer(seed):
    from explorer import aggregate as agg
    from explorer import tasks as T
    from explorer.generate import samplers

    import numpy as np

    for call in (lambda: T.get("addition").examples(3, seed=seed), lambda: samplers(seed, 2),
                 lambda: agg.simulate_verifier(np.ones((1, 2), bool), 0.1, 0.1, seed)):
        with pytest.raises(ValueError, match=f"seed={seed!r}"):
            call()


@pytest.mark.parametrize("column, higher", [
    ("flops_saving_analytic", True), ("tokens_generated_at_4", False), ("cost_ratio_measured", False),
    ("verify_cost_ratio_measured", False), ("bits_per_weight", False), ("exit_layer_mean", False),
    ("kl_vs_full_nats", False), ("top1_agreement_vs_full", True), ("majority_at_4", True), ("pass_at_2", True),
    ("bits_per_char_hi", False), ("speedup_measured", True), ("flops_per_problem_at_4_analytic", False),
])
def test_each_result_column_a_run_writes_has_its_direction(column, higher):
    assert higher_is_better(column) is higher
