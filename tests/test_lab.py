"""The lab at the Python level: state, runner, chart data. The browser test is in test_browser.py."""
import threading

import pytest

from widgets.lab import Lab
from widgets.runner import Runner
from widgets.state import LabState


@pytest.fixture()
def lab(tmp_path):
    lab = Lab(tmp_path / "store", models=["zoo-xs", "zoo-s"], technique="quantize", bits=8, n=12)
    lab.runner.wait(120)
    yield lab
    lab.runner.close()


def chart_rows(lab):
    return lab.frontier.widget.spec["datasets"]["rows"]


def test_the_first_view_runs_the_selection_and_draws_it(lab):
    rows = chart_rows(lab)
    assert {(r["model"], r["technique"]) for r in rows} == {
        ("zoo-xs", "baseline"), ("zoo-s", "baseline"), ("zoo-xs", "quantize"), ("zoo-s", "quantize")}
    assert len(lab.store) == 4 and "best with no budget limit" in lab.card.value


def test_a_state_change_changes_the_chart_data_in_place(lab):
    chart_obj = lab.frontier.widget
    lab.state.bits = 3
    lab.runner.wait(120)
    labels = {r["label"] for r in chart_rows(lab)}
    assert any("bits=3" in label for label in labels) and any("bits=8" in label for label in labels)
    assert lab.frontier.widget is chart_obj  # the same chart on screen, new data


def test_filters_never_run_a_model(lab):
    before = lab.runner.runs_started
    lab.state.cost_axis = "flops_per_token_analytic"
    lab.state.budget = 300_000
    lab.state.samples = 16
    lab.state.k = 4
    lab.runner.wait(30)
    assert lab.runner.runs_started == before
    assert lab.frontier.widget.params.budget == 300_000
    assert lab.frontier.widget.params.cost_axis == "flops_per_token_analytic"
    assert "300,000" in lab.card.value or "3e+05" in lab.card.value


def test_a_page_reload_cannot_move_the_chart_params_away_from_the_state(lab):
    lab.state.budget = 5e5
    # What the front end sends after a reload: the values in the spec it rendered from.
    lab.frontier.widget._params = {"budget": None, "cost_axis": "wall_s"}
    assert lab.frontier.widget.params.budget == 5e5
    assert lab.frontier.widget.params.cost_axis == lab.state.cost_axis == "weight_bytes"


def test_the_budget_slider_fits_the_cost_axis_and_its_top_is_no_limit(lab):
    import math

    budget = lab.controls["budget"]
    costs = [r["weight_bytes"] for r in chart_rows(lab)]
    assert 10 ** budget.slider.min < min(costs) and max(costs) < 10 ** budget.slider.max
    budget.slider.value = 10 ** (budget.slider.min + 2)
    assert lab.state.budget == pytest.approx(budget.slider.value) and "≤" in budget.label.value
    budget.slider.value = 10 ** budget.slider.max
    assert math.isinf(lab.state.budget) and "no limit" in budget.label.value
    lab.state.budget = 1e5
    lab.state.cost_axis = "wall_s"  # seconds, not bytes: the budget starts over, the range refits
    walls = [r["wall_s"] for r in chart_rows(lab)]
    assert math.isinf(lab.state.budget) and budget.slider.max <= math.log10(max(walls)) + 2
    lab.state.budget = -5.0  # refused: the slider stays at no limit
    assert math.isinf(lab.state.budget) and budget.slider.value == 10 ** budget.slider.max


def test_the_k_slider_moves_sampling_points_without_a_run(tmp_path):
    lab = Lab(tmp_path / "s", models=["zoo-xs"], technique="sampling", samples=8, task="multiplication", n=8)
    lab.runner.wait(120)
    runs = lab.runner.runs_started
    at = {}
    for k in (8, 1):
        lab.state.k = k
        (point,) = [r for r in lab.frontier.widget.spec["datasets"]["rows"] if r["technique"] == "sampling"]
        at[k] = point
    assert lab.runner.runs_started == runs
    assert at[1]["flops_per_problem_analytic"] == pytest.approx(at[8]["flops_per_problem_analytic"] / 8)
    assert "k=1" in lab.state.status and "no new run" in lab.state.status
    lab.runner.close()


@pytest.mark.parametrize("name,bad", [("bits", 1), ("bits", 17), ("budget", -5.0), ("group_size", -3),
                                      ("threshold", -1.0), ("task", "additon"), ("k", 99)])
def test_invalid_values_are_refused_in_the_status_line(lab, name, bad):
    before = getattr(lab.state, name)
    setattr(lab.state, name, bad)
    assert getattr(lab.state, name) == before
    assert f"refused {name}={bad!r}" in lab.state.status
    assert f"refused {name}" in lab.status.value


def test_a_refused_control_snaps_back(lab):
    lab.controls["group_size"].value = 128  # does not divide zoo-xs's width 64: refused at run time
    lab.runner.wait(60)
    assert "128" in lab.state.status or lab.state.group_size == 128


def test_a_stale_run_is_superseded(tmp_path):
    from explorer.store import Store

    state = LabState(models=["zoo-xs"], technique="quantize", bits=8, n=8)
    runner = Runner(state, Store(tmp_path / "s"), autostart=False, debounce_s=0.05)
    gate = threading.Event()
    runner._pool.submit(gate.wait)  # hold the worker so the first batch waits in the queue
    first = runner.schedule()
    state.bits = 4  # the user moves on before the first batch starts
    gate.set()
    assert first.result(60) == 0  # nothing of the stale batch ran
    runner.wait(60)
    hashes = runner.store.hashes()
    assert {j.config_hash for j in runner.jobs()} <= hashes  # the new selection ran
    assert len(hashes) == 2  # baseline + 4-bit; the 8-bit run was dropped
    runner.close()


def test_clicking_a_point_selects_its_configuration(lab):
    lab.state.bits = 4
    lab.runner.wait(120)
    target = next(r for r in chart_rows(lab) if "bits=8" in r["label"] and r["model"] == "zoo-s")
    # What the front end writes when a point is clicked:
    signal = {"vlPoint": {"or": [{"config_hash": target["config_hash"]}]}}
    lab.frontier.widget._vl_selections = {"pick": {"value": signal, "store": []}}
    assert lab.state.selected["config_hash"] == target["config_hash"]
    assert lab.state.bits == 8 and lab.state.technique == "quantize"


def test_technique_views_follow_the_selection_and_k_moves_no_run(tmp_path):
    from widgets.tokens import CurveView, ExitMapView

    lab = Lab(tmp_path / "s", models=["zoo-xs"], technique="early_exit", threshold=0.9, n=6)
    lab.runner.wait(120)
    (view,) = lab.detail.children
    assert isinstance(view, ExitMapView) and view.n_layers == 1 and len(view.tokens) == len(view.exit_layers)
    lab.state.samples = 8
    lab.state.technique = "sampling"
    lab.runner.wait(120)
    (curve,) = lab.detail.children
    assert isinstance(curve, CurveView) and {"pass@k", "majority@k"} <= set(curve.curves)
    assert all(points[0][0] == 1 and points[-1][0] == 8 for points in curve.curves.values())  # k up to n
    runs = lab.runner.runs_started
    lab.state.k = 4
    assert curve.k == 4 and lab.runner.runs_started == runs
    lab.runner.close()


def test_a_live_speculative_run_feeds_the_token_stream_view(tmp_path):
    from widgets.tokens import SpecStreamView

    # zoo-xs cannot draft for itself: that run is refused and said, the zoo-s run goes ahead.
    lab = Lab(tmp_path / "s", models=["zoo-xs", "zoo-s"], technique="speculative", draft="zoo-xs", draft_len=3, n=4)
    lab.runner.wait(120)
    assert "skipped zoo-xs: draft has" in lab.state.status
    tried = lab.runner.runs_started
    lab.state.task = "sort"
    lab.state.task = "addition"  # back to a selection whose runs are stored or refused
    lab.runner.wait(120)
    assert lab.runner.runs_started == tried and "all in the store; skipped zoo-xs" in lab.state.status
    (view,) = lab.detail.children
    assert isinstance(view, SpecStreamView) and view.calls
    assert all(len(c["accepted"]) + len(c["rejected"]) <= 3 for c in view.calls)
    lab.state.draft_len = 5  # a new run, a new stream
    lab.runner.wait(120)
    (longer,) = lab.detail.children
    assert longer is not view and "draft length 5" in longer.title
    lab.runner.close()


def test_each_exit_criterion_gets_a_threshold_on_its_own_scale(lab):
    lab.state.criterion = "agreement"
    assert lab.state.criterion == "agreement" and lab.state.threshold == 2
    assert lab.controls["threshold_agreement"].value == 2
    lab.state.criterion = "entropy"
    assert lab.state.criterion == "entropy" and 0 <= lab.state.threshold <= 3
    lab.state.threshold = 1.25
    assert lab.controls["threshold_entropy"].value == 1.25
    lab.controls["threshold_entropy"].value = 0.75  # the user moves the visible slider
    assert lab.state.threshold == 0.75
    lab.controls["threshold_max_prob"].value = 0.6  # a hidden slider writes nothing
    assert lab.state.threshold == 0.75


def test_the_pieces_compose_without_the_lab(lab):
    """A notebook can show one frontier and one budget slider over a store, nothing else."""
    from widgets import BudgetSlider, FrontierView, LabState

    state = LabState(models=["zoo-xs", "zoo-s"], technique="quantize", n=lab.state.n)
    view = FrontierView(state, lab.store)
    budget = BudgetSlider(state, lambda: [r[state.cost_axis] for r in view.shown])
    assert len(view.shown) >= 4  # the lab's runs, read from the shared store
    budget.slider.value = 10 ** (budget.slider.min + 1)
    assert view.widget.params.budget == pytest.approx(state.budget) and state.budget < min(
        r["weight_bytes"] for r in view.shown)


def test_the_not_distinguishable_mark_says_how_many_problems_would_decide():
    import polars as pl

    from explorer.stats import problems_needed
    from widgets.frontier import records

    df = pl.DataFrame({"config_hash": ["a", "b", "c"], "model": ["m"] * 3, "technique": ["t"] * 3,
                       "weight_bytes": [1.0, 2.0, 3.0], "accuracy": [0.7, 0.66, 0.2],
                       "accuracy_lo": [0.6, 0.56, 0.1], "accuracy_hi": [0.8, 0.76, 0.3]})
    status = {r["config_hash"]: r["status_weight_bytes"] for r in records(df)}
    assert status == {"a": "frontier", "c": "dominated",
                      "b": f"not distinguishable: about {problems_needed(0.04, 0.66)} problems each would decide"}


def test_stacked_techniques_run_as_one_composed_configuration(tmp_path):
    """quantize + sampling from the UI: the stack control composes them and the chart shows the joint point."""
    lab = Lab(tmp_path / "s", models=["zoo-xs"], technique="quantize", bits=4, samples=2, n=6)
    lab.runner.wait(120)
    lab.controls["stack"].value = ("sampling",)
    lab.runner.wait(120)
    techniques = {r["technique"] for r in chart_rows(lab)}
    assert "quantize+sampling" in techniques and lab.state.stack == ["sampling"]
    # the panel shows both techniques' knobs
    shown = [c.description for c in lab.knobs.children]
    assert "bits" in shown and "samples" in shown and "k" in shown
    # a stack the engine cannot compose is refused with its reason, and the control snaps back
    lab.state.stack = ["speculative", "sampling"]
    assert lab.state.stack == ["sampling"] and "refused stack" in lab.state.status
    # early exit + sampling: the exiting model samples at sampling's temperature
    lab.state.technique = "early_exit"
    assert lab.state.stack == ["sampling"]
    assert lab.state.technique_config().name == "early_exit+sampling"
    lab.runner.close()


def test_the_model_list_has_the_zoo_the_kernels_models_and_the_folders_given(tmp_path):
    import explorer as ex
    from widgets.lab import model_names

    folder = str(ex.zoo.path("zoo-xs"))
    held = ex.load(folder)  # a model loaded in this kernel, by its folder
    lab = Lab(tmp_path / "s", models=["zoo-xs"], autostart=False)
    offered = lab.controls["models"].options
    assert list(offered[: len(ex.zoo.names())]) == ex.zoo.names() and folder in offered
    assert folder in lab.controls["draft"].options  # a draft can be any of them
    extra = tmp_path / "mine"
    assert str(extra) in model_names([extra])
    lab2 = Lab(tmp_path / "s", models=[folder], n=4, autostart=False)
    assert lab2.runner.models[folder] is held  # the kernel's own model runs, not a second copy
    assert lab2.state.models == [folder]
    lab.runner.close()
    lab2.runner.close()


def test_rows_timed_otherwise_are_reused_and_said_so(tmp_path):
    import explorer as ex
    from explorer.store import Store

    store = Store(tmp_path / "s")
    # A notebook's sweep stored these with three timed repeats; the lab times one.
    ex.sweep(models=["zoo-xs"], tasks="addition", techniques=[ex.Baseline(), ex.Quantize(bits=8)], n=8,
             store=store, repeats=3, progress=False)
    state = LabState(models=["zoo-xs"], technique="quantize", bits=8, n=8)
    runner = Runner(state, store, autostart=False)
    assert runner.schedule() is None  # same answers: nothing runs again
    assert "2 stored runs reused as timed with batch_size=64, repeats=3" in state.status
    assert "this lab times batch_size=64, repeats=1" in state.status
    runner.close()


def test_the_tooltip_names_a_technique_as_its_legend_does():
    import polars as pl

    from widgets.frontier import label_expr

    df = pl.DataFrame({"model": ["zoo-s", "zoo-m"], "technique": ["early_exit", "quantize+sampling"],
                       "knob_bits": [None, 4]})
    assert label_expr(df).to_list() == ["zoo-s early exit", "zoo-m quantize + sampling bits=4"]
