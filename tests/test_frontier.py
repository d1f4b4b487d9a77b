import math
import warnings

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.frontier import best_under_budget, chart, frontier

# Small integer grids make ties (equal cost, equal quality, duplicates) common.
point = st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(0, 4), st.integers(0, 4), st.sampled_from("ab"))


def frame(points) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": list(range(len(points))), "cost": [float(c) for c, *_ in points],
         "acc": [q / 12 for _, q, *_ in points], "acc_lo": [(q - lo) / 12 for _, q, lo, _, _ in points],
         "acc_hi": [(q + hi) / 12 for _, q, _, hi, _ in points], "group": [g for *_, g in points]},
        schema={"id": pl.Int64, "cost": pl.Float64, "acc": pl.Float64, "acc_lo": pl.Float64,
                "acc_hi": pl.Float64, "group": pl.String})


def brute_force(rows: list[dict], maximize: bool = True) -> set[int]:
    """Pareto set by definition: nobody at most as costly and at least as good, better on one."""
    s = 1 if maximize else -1

    def dominates(a, b):
        return (a["cost"] <= b["cost"] and s * a["acc"] >= s * b["acc"]
                and (a["cost"] < b["cost"] or s * a["acc"] > s * b["acc"]))

    return {b["id"] for b in rows if not any(dominates(a, b) for a in rows)}


@settings(max_examples=300, deadline=None)
@given(st.lists(point, max_size=40), st.booleans())
def test_frontier_equals_brute_force(points, maximize):
    df = frame(points)
    got = set(frontier(df, cost="cost", quality="acc", maximize=maximize)["id"].to_list())
    assert got == brute_force(df.to_dicts(), maximize)


@settings(max_examples=200, deadline=None)
@given(st.lists(point, max_size=40))
def test_per_group_frontier_equals_brute_force_within_each_group(points):
    df = frame(points)
    got = set(frontier(df, cost="cost", quality="acc", by="group")["id"].to_list())
    want = set().union(*[brute_force([r for r in df.to_dicts() if r["group"] == g]) for g in "ab"])
    assert got == want


@settings(max_examples=200, deadline=None)
@given(st.lists(point, min_size=1, max_size=40))
def test_not_distinguishable_means_an_interval_overlaps_a_cheaper_frontier_point(points):
    df = frame(points)
    marked = frontier(df, cost="cost", quality="acc", keep="all")
    assert marked.height == df.height
    front = marked.filter("on_frontier").to_dicts()
    for r in marked.to_dicts():
        clearly_worse = any(f["cost"] <= r["cost"] and f["acc_lo"] > r["acc_hi"] for f in front)
        if r["on_frontier"]:
            assert r["frontier_status"] == "frontier" and r["distinguishable"]
        else:
            assert r["distinguishable"] == clearly_worse
            assert r["frontier_status"] == ("dominated" if clearly_worse else "not distinguishable")


def test_intervals_travel_with_every_frontier_point():
    df = pl.DataFrame({"cost": [1.0, 2.0, 3.0], "accuracy": [0.2, 0.5, 0.4],
                       "accuracy_lo": [0.1, 0.4, 0.3], "accuracy_hi": [0.3, 0.6, 0.5]})
    f = frontier(df, cost="cost")
    assert f.select("cost", "accuracy", "accuracy_lo", "accuracy_hi").rows() == [(1.0, 0.2, 0.1, 0.3),
                                                                                   (2.0, 0.5, 0.4, 0.6)]


def test_a_quality_without_interval_columns_gets_a_zero_width_one():
    df = pl.DataFrame({"cost": [1.0, 2.0], "score": [3.0, 1.0]})
    f = frontier(df, cost="cost", quality="score", keep="all")
    assert f["score_lo"].to_list() == f["score"].to_list() == f["score_hi"].to_list()


def test_rows_missing_the_cost_or_quality_are_left_out():
    df = pl.DataFrame({"cost": [1.0, None, 3.0, float("nan")], "accuracy": [0.1, 0.9, None, 0.99]})
    assert frontier(df, cost="cost", keep="all")["cost"].to_list() == [1.0]


def test_bad_columns_are_named():
    df = pl.DataFrame({"cost": [1.0], "accuracy": [0.5], "model": ["zoo-xs"]})
    with pytest.raises(ValueError, match="'wall_ms'.*columns: cost, accuracy, model"):
        frontier(df, cost="wall_ms")
    with pytest.raises(ValueError, match="'model' is String"):
        frontier(df, cost="model")
    with pytest.raises(ValueError, match="keep='some'"):
        frontier(df, cost="cost", keep="some")


BUDGET = pl.DataFrame({"cost": [10.0, 20.0, 30.0, 30.0], "accuracy": [0.3, 0.6, 0.6, 0.8], "tag": list("abcd")})


def test_budget_below_every_cost_gives_none_and_says_the_cheapest():
    with pytest.warns(UserWarning, match="nothing fits.*cheapest of 4 rows costs 10"):
        assert best_under_budget(BUDGET, budget=9.99, cost="cost") is None


def test_budget_exactly_at_a_cost_includes_that_row():
    assert best_under_budget(BUDGET, budget=10, cost="cost")["tag"] == "a"
    assert best_under_budget(BUDGET, budget=30.0, cost="cost")["tag"] == "d"


def test_a_tie_in_quality_goes_to_the_cheaper_row():
    assert best_under_budget(BUDGET, budget=29.0, cost="cost")["tag"] == "b"
    assert best_under_budget(BUDGET.filter(pl.col("tag") != "d"), budget=1e9, cost="cost")["tag"] == "b"


def test_budget_above_every_cost_gives_the_best_row():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert best_under_budget(BUDGET, budget=math.inf, cost="cost")["tag"] == "d"


@settings(max_examples=200, deadline=None)
@given(st.lists(point, min_size=1, max_size=30), st.integers(-1, 13))
def test_best_under_budget_is_the_best_affordable_point_and_lies_on_the_frontier(points, budget):
    df = frame(points)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best = best_under_budget(df, budget=budget + 0.5, cost="cost", quality="acc") if budget >= 0 else None
    fits = [r for r in df.to_dicts() if r["cost"] <= budget + 0.5]
    if budget < 0 or not fits:
        assert best is None
        return
    top = max(r["acc"] for r in fits)
    assert best["acc"] == top and best["cost"] == min(r["cost"] for r in fits if r["acc"] == top)
    assert best["id"] in brute_force(df.to_dicts())


@pytest.mark.parametrize("budget", [float("nan"), -1, -0.5, "10", None, True])
def test_nan_negative_or_non_numeric_budget_is_a_clear_error(budget):
    with pytest.raises(ValueError, match=r"budget=.*(>= 0|number)"):
        best_under_budget(BUDGET, budget=budget, cost="cost")


def test_lower_is_better_quality():
    df = pl.DataFrame({"cost": [1.0, 2.0, 3.0], "bits_per_char": [3.0, 2.0, 2.5]})
    assert frontier(df, cost="cost", quality="bits_per_char", maximize=False)["cost"].to_list() == [1.0, 2.0]
    assert best_under_budget(df, budget=5, cost="cost", quality="bits_per_char", maximize=False)["cost"] == 2.0


def test_cost_per_problem_is_derived_from_any_row():
    df = pl.DataFrame({"flops_per_token_analytic": [100.0, 100.0], "tokens_generated": [50, 400],
                       "n_examples": [10, 10], "accuracy": [0.5, 0.7]})
    f = frontier(df, cost="flops_per_problem_analytic", keep="all")
    assert f["flops_per_problem_analytic"].to_list() == [500.0, 4000.0]


def test_the_chart_holds_every_point_and_its_status(tmp_path):
    df = pl.DataFrame({"cost": [1.0, 2.0, 3.0], "accuracy": [0.2, 0.5, 0.4], "technique": ["a", "b", "a"],
                       "task": ["t", "t", "t"]})
    spec = chart(df, cost="cost", by="task").to_dict()
    values = spec["datasets"][next(iter(spec["datasets"]))]
    assert [(v["cost"], v["frontier_status"]) for v in values] == [(1.0, "frontier"), (2.0, "frontier"),
                                                                  (3.0, "dominated")]


def test_the_chart_tooltip_names_what_a_person_reads_with_rounded_numbers():
    df = pl.DataFrame({"model": ["zoo-s", "zoo-m"], "technique": ["baseline", "quantize"], "weight_bytes": [2e6, 1e6],
                       "accuracy": [0.8359375, 0.5], "accuracy_lo": [0.75, 0.4], "accuracy_hi": [0.9, 0.6]})
    spec = chart(df, cost="weight_bytes").to_dict()
    tips = next(layer["encoding"]["tooltip"] for layer in spec["layer"] if "tooltip" in layer.get("encoding", {}))
    titles = {t["title"]: t.get("format") for t in tips}
    assert {"model", "technique", "95% interval from", "95% interval to", "frontier"} <= set(titles), titles
    assert titles["95% interval from"] == ".3f" and any("MB" in t for t in titles), titles
    assert not any("_" in t for t in titles), titles  # no raw column names


@pytest.mark.slow
@pytest.mark.parametrize("fmt, head", [("svg", b"<svg"), ("png", b"\x89PNG")])
def test_the_chart_writes_svg_and_png_through_vl_convert(tmp_path, fmt, head):
    df = pl.DataFrame({"cost": [1.0, 2.0, 3.0], "accuracy": [0.2, 0.5, 0.4], "technique": ["a", "b", "a"]})
    chart(df, cost="cost").save(str(tmp_path / f"f.{fmt}"))
    assert (tmp_path / f"f.{fmt}").read_bytes().lstrip().startswith(head)


def test_a_not_distinguishable_point_says_how_many_problems_would_decide():
    from explorer.stats import problems_needed

    df = pl.DataFrame({"cost": [1.0, 2.0, 3.0, 4.0], "accuracy": [0.70, 0.66, 0.20, 0.90],
                       "accuracy_lo": [0.60, 0.56, 0.12, 0.85], "accuracy_hi": [0.80, 0.76, 0.30, 0.95]})
    out = {r["cost"]: r for r in frontier(df, cost="cost", keep="all").iter_rows(named=True)}
    assert out[2.0]["frontier_status"] == "not distinguishable"
    assert out[2.0]["problems_to_decide"] == problems_needed(0.70 - 0.66, 0.66) > 1000
    assert out[3.0]["frontier_status"] == "dominated" and out[3.0]["problems_to_decide"] is None
    assert out[1.0]["problems_to_decide"] is None  # a frontier point needs no deciding
    bpc = frontier(df.with_columns(pl.col("accuracy") * 3), cost="cost", keep="all")  # not a proportion
    assert bpc["problems_to_decide"].is_null().all()


def test_points_read_sampling_rows_at_each_k_and_judge_without_a_run():
    """One function for every chart: a sampling row read at k = 1, 2, 4 is three points, its cost
    per problem k times one sample's; the judge (aggregator) is a filter too."""
    import explorer as ex
    from explorer.frontier import points

    sampled = ex.run("zoo-s", "sort", ex.Sampling(n=4), n=16, repeats=1)
    greedy = ex.run("zoo-s", "sort", n=16, repeats=1)
    df = pl.concat([pl.DataFrame([sampled]), pl.DataFrame([greedy])], how="diagonal_relaxed")
    pts = points(df, cost="flops_per_problem_analytic", filters={"k": [1, 2, 4], "aggregator": "pass"})
    s = pts.filter(pl.col("technique") == "sampling").sort("knob_k")
    assert s["knob_k"].to_list() == [1, 2, 4] and set(s["knob_aggregator"]) == {"pass"}
    cost = s["flops_per_problem_analytic"].to_list()
    assert cost[1] == pytest.approx(2 * cost[0]) and cost[2] == pytest.approx(4 * cost[0])
    assert s["accuracy"].to_list() == sorted(s["accuracy"].to_list())  # pass@k never falls with k
    assert pts.filter(pl.col("technique") == "baseline").height == 1  # untouched rows appear once
    many = points(df, cost=["weight_bytes", "flops_per_problem_analytic"], filters={"k": [1, 4]})
    assert many.height == 3 and {"status_weight_bytes", "status_flops_per_problem_analytic"} <= set(many.columns)
