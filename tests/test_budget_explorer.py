"""The budget explorer (the budget notebook's widget and its Voila app page) at the Python level.
How it renders in a browser is in test_browser.py."""
import math

import polars as pl
import pytest

import explorer as ex
from widgets.budget_explorer import AGGREGATORS, BudgetExplorer, best_per_model, points


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    store = ex.Store(tmp_path_factory.mktemp("budget-store"))
    return ex.sweep(["zoo-xs", "zoo-s"], "sort", [ex.Baseline(), ex.Sampling(n=4)], n=8, store=store,
                    progress=False)


def test_points_read_each_k_and_name_configurations_a_person_reads(rows):
    pts = points(rows)
    xs = pts.filter(pl.col("model") == "zoo-xs").sort("k")
    assert set(xs["config"]) == {"greedy", "1 sample", "2 samples", "3 samples", "4 samples"}
    samples = xs.filter(pl.col("kind") == "samples").sort("k")["flops_per_problem"].to_list()
    assert samples == sorted(samples) and samples[-1] == pytest.approx(4 * samples[0], rel=1e-6)  # k samples: k x
    with pytest.raises(ValueError, match="aggregator='vote'.*pass, majority, best_verifier"):
        points(rows, "vote")


def test_the_budget_starts_at_the_reference_answer_and_moves_only_when_the_user_moves_it(rows):
    app = BudgetExplorer(rows, task="sort", reference="zoo-s")
    greedy_s = points(rows).filter((pl.col("model") == "zoo-s") & (pl.col("config") == "greedy")).row(0, named=True)
    assert app.budget.value == pytest.approx(greedy_s["flops_per_problem"])
    assert "(1 x one zoo-s answer)" in app.card.value and "best is" in app.card.value
    first = app.card.value
    app.judge.value = "majority"  # another judge: the chart re-renders, the budget stays
    assert app.budget.value == pytest.approx(greedy_s["flops_per_problem"]) and AGGREGATORS["majority"] in app.card.value
    app.budget.value = greedy_s["flops_per_problem"] / 3
    assert app.view.params.budget == pytest.approx(app.budget.value)  # dimmed in the browser, no re-render
    assert "(0.33 x one zoo-s answer)" in app.card.value and app.card.value != first
    # Each model's best within the budget, best first, and nothing over it.
    best = best_per_model(rows, "majority", app.budget.value)
    assert best.height >= 1 and (best["flops_per_problem"] <= app.budget.value).all()
    assert best["accuracy"].to_list() == sorted(best["accuracy"].to_list(), reverse=True)
    app.budget.value = 10 ** app.budget.min  # below every configuration: the card says so, not an error
    assert "buys nothing" in app.card.value and math.isfinite(app.view.params.budget)


def test_a_reference_without_a_greedy_run_is_refused_with_the_valid_names(rows):
    with pytest.raises(ValueError, match=r"reference='zoo-l' has 0 greedy rows on sort; valid: zoo-xs, zoo-s"):
        BudgetExplorer(rows, task="sort")
    with pytest.raises(ValueError, match="rows is empty"):
        BudgetExplorer(rows.clear(), task="sort")
