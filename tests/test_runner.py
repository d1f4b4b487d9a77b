"""Progressive live runs: a first estimate on a few problems for every model, refined to full n in the
background; estimates are never stored, and a newer move drops older work."""
from __future__ import annotations

import threading

import polars as pl
import pytest

import explorer as ex
from explorer.store import Store
from widgets.frontier import records
from widgets.runner import Runner, preview_row
from widgets.state import LabState


@pytest.fixture
def gate():
    """Holds a worker until set; always set at the end, or a held thread keeps the interpreter alive."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def runner(tmp_path):
    state = LabState(models=["zoo-xs", "zoo-s"], task="addition", technique="quantize", bits=4, n=24)
    # No time budget: every first estimate on exactly preview_n problems (the budget is pinned below).
    r = Runner(state, Store(tmp_path / "store"), autostart=False, debounce_s=0.05, preview_n=4,
               preview_budget_s=None)
    yield r
    r.close()


def test_every_model_gets_a_first_estimate_then_its_full_run(runner, gate):
    seen_status, seen_partial = [], []
    runner.state.observe(lambda ch: seen_status.append(ch["new"]), names="status")
    runner.on_rows = lambda: seen_partial.append(runner.frame())
    runner._pool.submit(gate.wait)  # hold the full worker: only first estimates can arrive
    runner.schedule()
    runner.last_preview.result(120)
    estimates = runner.frame()
    assert sorted(estimates.filter(pl.col("partial"))["model"].to_list()) == ["zoo-s", "zoo-s", "zoo-xs", "zoo-xs"]
    assert set(estimates.filter(pl.col("partial"))["n_examples"]) == {4}
    assert set(estimates.filter(pl.col("partial"))["n_full"]) == {24}
    wide = estimates.filter(pl.col("partial"))
    assert ((wide["accuracy_hi"] - wide["accuracy_lo"]) > 0.3).all()  # 4 problems: a wide Wilson interval
    assert runner.store.frame().height == 0  # nothing stored yet: estimates live in memory only
    assert any("first estimates from 4 problems" in s for s in seen_status)
    # The chart says which points are first estimates, and on how many problems (its tooltip label).
    shown = [r["label"] for r in records(estimates) if r.get("partial")]
    assert len(shown) == 4 and all("first estimate: 4 of 24 problems" in label for label in shown)

    gate.set()
    runner.wait(300)
    stored = runner.store.frame()
    assert stored.height == 4 and set(stored["n_examples"]) == {24}
    assert "partial" not in stored.columns  # an estimate never reaches the store, so resume never sees one
    assert runner.partial == {} and runner.frame().height == 4
    assert any("refining to n=24 in the background" in s for s in seen_status)
    # Each estimate stood in for exactly the full run that replaced it.
    first = seen_partial[0]
    assert set(first["config_hash"]) <= set(stored["config_hash"])


def test_a_newer_move_drops_older_estimates(runner, gate):
    runner._preview_pool.submit(gate.wait)
    runner._pool.submit(gate.wait)
    runner.schedule()
    older = runner.last_preview
    runner.state.bits = 8  # the user moves on before the 4-bit estimates start
    gate.set()
    assert older.result(120) == 0
    runner.wait(300)
    hashes = runner.store.hashes()
    assert {j.config_hash for j in runner.jobs()} <= hashes
    assert runner.partial == {}


def test_no_first_estimate_when_n_is_already_small(tmp_path):
    state = LabState(models=["zoo-xs"], task="addition", technique="quantize", bits=4, n=4)
    r = Runner(state, Store(tmp_path / "s"), autostart=False, preview_n=8)
    r.schedule()
    r.wait(120)
    assert r.last_preview is None and r.store.frame().height == 2
    r.close()


def sizes_with_budget(tmp_path, budget, **selection):
    state = LabState(**{"models": ["zoo-xs", "zoo-s"], "task": "addition", "n": 24, **selection})
    r = Runner(state, Store(tmp_path / f"b{budget}"), autostart=False, preview_n=5, preview_budget_s=budget)
    gate = threading.Event()
    r._pool.submit(gate.wait)  # only first estimates: the full runs would replace them
    try:
        r.schedule()
        r.last_preview.result(300)
        frame = r.frame()
    finally:
        gate.set()
        r.close()
    return sorted(frame.filter(pl.col("partial"))["n_examples"].to_list())


def test_the_time_budget_sizes_each_first_estimate(tmp_path):
    # A budget nothing fits in: each model's first problem alone (its probe) is its first estimate.
    assert sizes_with_budget(tmp_path, 1e-6, technique="quantize", bits=4) == [1, 1, 1, 1]
    # A budget everything fits in: preview_n problems each, one per difficulty level.
    assert sizes_with_budget(tmp_path, 1e6, technique="quantize", bits=4) == [5, 5, 5, 5]


def test_a_first_estimate_is_never_stored_as_a_full_run(runner, gate):
    runner._pool.submit(gate.wait)
    runner.schedule()
    runner.last_preview.result(120)
    estimate = next(iter(runner.partial.values()))
    with pytest.raises(ValueError, match="first estimate"):
        runner.store.add(estimate)
    assert runner.store.frame().height == 0


def test_a_first_estimate_interval_is_at_least_wilson_on_its_problems():
    # Sampling's bootstrap over one problem collapses to a point; the first estimate must not claim that.
    row = ex.run("zoo-xs", "addition", ex.Sampling(n=4), n=1, repeats=1, extras=False)
    assert row["accuracy_lo"] == row["accuracy_hi"]
    job = type("J", (), {"n": 64, "config_hash": "full-run-key"})()
    shown = preview_row(row, job)
    assert shown["partial"] and shown["n_full"] == 64 and shown["config_hash"] == "full-run-key"
    assert shown["accuracy_hi"] - shown["accuracy_lo"] > 0.7  # Wilson on 1 problem: about 0.79 wide
    assert "wilson95" in shown["interval"]


def test_a_speculative_first_estimate_leaves_out_the_fixed_cost_extras():
    draft = ex.Speculative(draft="zoo-xs")
    rough = ex.run("zoo-s", "addition", draft, n=3, repeats=1, extras=False)
    full = ex.run("zoo-s", "addition", draft, n=3, repeats=1)
    assert "wall_s_target_alone" in full and "cost_ratio_measured" in full
    assert "wall_s_target_alone" not in rough and "cost_ratio_measured" not in rough
    # Same problems, same answers: greedy speculative decoding emits the target's own tokens.
    assert rough["accuracy"] == full["accuracy"] and rough["tokens_generated"] == full["tokens_generated"]
    assert rough["spec_mode"] == full["spec_mode"]  # decoded the same way (the length plan measured first)


def test_a_composed_first_estimate_leaves_out_its_decoders_extras_too():
    rough = ex.run("zoo-s", "addition", [ex.Quantize(bits=4), ex.Speculative(draft="zoo-xs")], n=3, repeats=1,
                   extras=False)
    assert rough["technique"] == "quantize+speculative" and rough["n_examples"] == 3
    assert "wall_s_target_alone" not in rough and "kl_vs_full_nats" not in rough
