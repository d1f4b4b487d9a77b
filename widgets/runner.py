"""The runner: the only part of the lab that asks the engine for runs.

It watches the state store. When the selection needs rows the results store
lacks, it runs them in the background (torch releases the GIL inside its
kernels, so the kernel's UI stays responsive), debounced so a slider dragged
across ten values starts one run, not ten.

Progressive: a full run of every selected model can take seconds to tens of
seconds on a shared CPU, so each missing configuration first gets a *first
estimate* on a few problems (at most `preview_n`, the first problems of the
same seeded set), one model after another on a thread of its own, so every
model has a point on the chart within about a second. How many problems fit
is measured, not guessed: the selected models share a time budget
(`preview_budget_s`), each first estimate starts with one problem, and its
measured cost decides how many more fit in the model's share (64 samples per
problem on zoo-m cost 30 times what a 4-bit zoo-xs does). Its interval is wide
and says so (at least Wilson's on the problems it saw, whatever interval the
technique computes). The full runs start once every model has its estimate,
and replace each estimate as they land. First estimates live in memory only
(`partial`), each marked `partial=True` with `n_full`, the n it stands in for:
they are never written to the store (the store refuses such a row), so a resume
never takes one for a finished run. They run through the technique's
`estimate`, which leaves out what a technique measures beside the task at a
fixed cost (quantization's KL on held-out text; a speculative run's
target-alone timing and cost ratios, about a second whatever the problems).

A newer selection supersedes an older one: both workers check before each run
and drop stale work. A full run already started finishes and is stored
(finished work is never thrown away). Filters (budget, cost axis, k) are not
watched: they never run a model.
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import polars as pl

from explorer.executors import Failed, Job, run_job
from explorer.models import load
from explorer.runs import run
from explorer.store import Store
from explorer.stats import wilson
from explorer.sweep import measured_otherwise, plan
from explorer.techniques import Baseline
from widgets.state import LabState

REPEATS = 1  # one timed pass per live run: the lab favours a fast answer; sweeps can repeat
# Problems in a first estimate, at most: one per difficulty level (tasks cycle difficulties 1..5), so
# a full-size first estimate is not biased to easy problems, and its Wilson interval shows how rough
# it is. One the time budget cuts to k < 5 problems saw difficulties 1..k only: it leans easy, and the
# chart and card say how many problems it saw.
PREVIEW_N = 5
# Seconds of compute that every selected model's first estimate shares: with the debounce and the
# redraw, every model has a point within 1.5 s of a move on two cores (benchmarks/lab.py).
PREVIEW_BUDGET_S = 0.8
PROBE_MARGIN = 1.5  # see _first_estimate
ESTIMATES_WAIT_S = 20.0  # the full runs wait at most this long for the first estimates


class Runner:
    def __init__(self, state: LabState, store: Store, *, debounce_s: float = 0.3,
                 on_rows: Callable[[], None] | None = None, autostart: bool = True,
                 preview_n: int | None = PREVIEW_N, preview_budget_s: float | None = PREVIEW_BUDGET_S):
        self.state, self.store = state, store
        self.debounce_s = debounce_s
        self.on_rows = on_rows or (lambda: None)
        self.preview_n = preview_n  # None or 0: no first estimates, full runs only
        self.preview_budget_s = preview_budget_s  # None: every first estimate on preview_n problems
        self.models: dict = {}  # loaded models, shared by every run of this lab
        self.runs_started = 0
        # Configurations the engine refused for a model (a draft as big as its target): said
        # once in the status line and not tried again, so the other models' runs go ahead.
        self.refused: dict[str, str] = {}
        # First estimates, by the full run's config_hash: memory only, never stored.
        self.partial: dict[str, dict[str, Any]] = {}
        self._generation = 0
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._rows_lock = threading.Lock()
        self._partial_lock = threading.Lock()  # storing a full row and dropping its estimate: one step
        self._load_lock = threading.Lock()  # two workers must not load one model twice at once
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-runner")
        self._preview_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-first-estimate")
        self.last: Future | None = None
        self.last_preview: Future | None = None
        self._progress = {"estimates": 0, "estimating": 0, "sizes": [], "done": 0, "total": 0, "running": ""}
        watched = [n for n in state.trait_names()
                   if n not in state.filters() and n not in ("status", "busy", "progress", "selected")]
        state.observe(self._changed, names=watched)
        if autostart:
            self.schedule()

    def jobs(self) -> list[Job]:
        """What the current selection shows: each chosen model as is, and under the technique
        (composed with the techniques stacked on it)."""
        s = self.state
        return plan(s.models, s.task, [Baseline(), s.technique_config()], n=s.n, seed=s.seed, repeats=REPEATS)

    def missing(self) -> list[Job]:
        have = self.store.hashes() | set(self.refused)
        return [j for j in self.jobs() if j.config_hash not in have]

    def frame(self, df: pl.DataFrame | None = None) -> pl.DataFrame:
        """The stored rows plus the first estimates whose full run has not landed yet (marked
        `partial`, with `n_examples` the problems they saw and `n_full` the n they stand in for)."""
        df = self.store.frame() if df is None else df
        have = set(df["config_hash"].to_list()) if df.height and "config_hash" in df.columns else set()
        extra = [r for h, r in list(self.partial.items()) if h not in have]
        if not extra:
            return df
        rows = pl.DataFrame(extra, infer_schema_length=None)
        return pl.concat([df, rows], how="diagonal_relaxed") if df.height else rows

    def _changed(self, change) -> None:
        with self._lock:
            self._generation += 1  # anything queued before this change is stale now
            if self._timer is not None:
                self._timer.cancel()
        try:
            cached = not self.missing()
        except (ValueError, KeyError):
            cached = False  # schedule() reports why
        if cached:
            # Everything is in the store: redraw now. Only real runs wait for the debounce.
            self.schedule()
            return
        with self._lock:
            self._timer = threading.Timer(self.debounce_s, self.schedule)
            self._timer.daemon = True
            self._timer.start()

    def schedule(self) -> Future | None:
        """Queue the runs the selection lacks; returns the future of that batch (None if cached)."""
        with self._lock:
            self._generation += 1
            generation = self._generation
        try:
            todo = self.missing()
        except (ValueError, KeyError) as err:
            self.state.status = f"cannot run this selection: {err}"
            return None
        if not todo:
            shown = sum(j.config_hash not in self.refused for j in self.jobs())
            self.state.status = f"{shown} runs, all in the store" + self.skipped() + self.reused()
            self.on_rows()
            return None
        self.state.busy = True
        rough = [j for j in todo if self.preview_n and j.n > self.preview_n and j.config_hash not in self.partial]
        self._progress = {"estimates": 0, "estimating": len(rough), "sizes": [], "done": 0, "total": len(todo),
                          "running": ""}
        estimated = threading.Event()
        if rough:
            self.last_preview = self._preview_pool.submit(self._estimate, generation, rough, estimated)
        else:
            estimated.set()
        self.last = self._pool.submit(self._work, generation, todo, estimated)
        return self.last

    # -- first estimates ----------------------------------------------------------------

    def _estimate(self, generation: int, todo: list[Job], estimated: threading.Event) -> int:
        """A first estimate of each job on its first few problems, one model after another, within
        the shared time budget."""
        made = 0
        budget = self.preview_budget_s
        deadline = time.perf_counter() + budget if budget else None
        try:
            for i, job in enumerate(todo):
                if generation != self._generation:
                    return made
                if job.config_hash in self.partial or job.config_hash in self.store.hashes():
                    continue
                try:
                    self._load(job.model)
                    row = self._first_estimate(job, deadline, len(todo) - i, generation)
                except ValueError:
                    continue  # a refused configuration: the full worker reports it
                with self._partial_lock:  # the full run may have landed meanwhile: then it wins
                    if generation != self._generation or job.config_hash in self.store.hashes():
                        continue
                    self.partial[job.config_hash] = preview_row(row, job)
                made += 1
                self._progress["estimates"] = made
                self._progress["sizes"].append(row["n_examples"])
                self._say(generation)
                self._notify()
        except Exception as err:  # noqa: BLE001 - an estimate is optional; the full run will say what broke
            self._progress["estimating"] = 0
            self.state.status = f"first estimate failed ({type(err).__name__}: {err}); the full runs go on"
        finally:
            estimated.set()
        return made

    def _first_estimate(self, job: Job, deadline: float | None, left: int, generation: int) -> dict[str, Any]:
        """The job on its first problems: `preview_n` of them without a budget; with one, the first
        problem alone, and then as many as its measured cost says fit in this model's share of what
        is left (each of the `left` models still to estimate gets an equal share)."""
        most = min(self.preview_n, job.n)
        if deadline is None:
            return self._preview(job, most)
        share = max(deadline - time.perf_counter(), 0.0) / left
        t = time.perf_counter()
        probe = self._preview(job, 1)
        spent = time.perf_counter() - t
        if generation != self._generation:
            return probe  # a newer move: dropped by the caller, so spend nothing more on it
        # The probe's row times its decoding (`wall_s`); the rest of its time is what every run pays
        # once (a quantized copy of the weights, say) and the next run pays again. Later problems are
        # harder (longer answers): PROBE_MARGIN keeps the estimate inside its share.
        per = min(max(float(probe.get("wall_s") or spent), 1e-4), spent)
        fit = min(most, int((share - spent - (spent - per)) / (PROBE_MARGIN * per)))
        return self._preview(job, fit) if fit > 1 else probe

    def _preview(self, job: Job, problems: int) -> dict[str, Any]:
        # Task accuracy and costs only (`extras=False`): no fidelity or cost-model extras, which cost
        # the same whatever the number of problems.
        return run(self.models[job.model], job.task, job.technique, n=problems, seed=job.seed,
                   repeats=1, batch_size=job.batch_size, extras=False)

    def _load(self, model: str) -> None:
        with self._load_lock:  # once, whichever worker asks first
            if model not in self.models:
                self.models[model] = load(model)

    def _run(self, job: Job) -> dict[str, Any]:
        """One full run; raises ValueError when its technique refuses the configuration."""
        self._load(job.model)
        return run_job(job, self.models)

    # -- full runs --------------------------------------------------------------------------

    def _work(self, generation: int, todo: list[Job], estimated: threading.Event | None = None) -> int:
        # The first estimates go first: on a shared CPU a full run beside them would slow the answer
        # every model needs within a second or so. (An older full run still in flight is not waited
        # for: the estimates have a thread of their own.)
        if estimated is not None:
            estimated.wait(ESTIMATES_WAIT_S)
        done = 0
        try:
            for i, job in enumerate(todo):
                if generation != self._generation:
                    self.state.status = "selection changed: dropped the older runs"
                    return done
                self.state.progress = i / len(todo)
                self._progress.update(done=i, running=f"{job.model} {job.technique.name}")
                self._say(generation)
                self.runs_started += 1
                try:
                    row = self._run(job)
                except ValueError as err:
                    row = Failed(job, str(err))
                if isinstance(row, Failed):
                    self.refused[job.config_hash] = f"{job.model}: {row.error}"
                    self.partial.pop(job.config_hash, None)
                    continue
                with self._partial_lock:
                    self.store.add(row)
                    self.partial.pop(job.config_hash, None)  # the full run replaces its first estimate
                done += 1
                self._notify()
            self.state.progress = 1.0
            self._progress.update(done=len(todo), running="")
            self.state.status = (f"{done} new run{'' if done == 1 else 's'} stored in {self.store.path}"
                                 + self.skipped() + self.reused())
        except Exception as err:  # a failed run must reach the status line, not vanish in a thread
            self.state.status = f"run failed: {type(err).__name__}: {err}"
        finally:
            if generation == self._generation:
                self.state.busy = False
        return done

    def _notify(self) -> None:
        # Both workers redraw; one at a time, each reading the rows as they are now, so an estimate's
        # redraw that finishes late cannot put back a point its full run already replaced.
        with self._rows_lock:
            self.on_rows()

    def _say(self, generation: int) -> None:
        """One status line for both workers: what is estimated, what is being refined."""
        if generation != self._generation:
            return
        p, s = self._progress, self.state
        parts = []
        if p["estimating"]:
            sizes = sorted(set(p["sizes"]))
            on = (f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]}") if sizes else "a few"
            parts.append(f"first estimates from {on} problems: {p['estimates']} of {p['estimating']} "
                         "(wide intervals)")
        if p["running"]:
            parts.append(f"refining to n={s.n} in the background: {p['done']} of {p['total']} done, "
                         f"running {p['running']}")
        s.status = "; ".join(parts)

    def skipped(self) -> str:
        """The refusals that apply to the current selection, for the status line."""
        mine = [self.refused[j.config_hash] for j in self.jobs() if j.config_hash in self.refused]
        return f"; skipped {'; '.join(mine)}" if mine else ""

    def reused(self) -> str:
        """Stored rows this selection reuses that were timed otherwise (another batch size or number of
        repeats, say by a notebook's sweep): their answers are the same, their times are not this lab's."""
        jobs = self.jobs()
        other = measured_otherwise(self.store, jobs, REPEATS, jobs[0].batch_size) if jobs else {}
        if not other:
            return ""
        how = sorted(set(other.values()))
        return (f"; {len(other)} stored run{'' if len(other) == 1 else 's'} reused as timed with "
                f"{'; '.join(how)} (this lab times batch_size={jobs[0].batch_size}, repeats={REPEATS})")

    def wait(self, timeout: float | None = None) -> None:
        """Block until pending work is done (for tests and scripts, never for the UI)."""
        if self._timer is not None:
            self._timer.join(timeout)
        if self.last is not None:
            self.last.result(timeout)
        if self.last_preview is not None:
            self.last_preview.result(timeout)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._preview_pool.shutdown(wait=False, cancel_futures=True)


def preview_row(row: dict[str, Any], job: Job) -> dict[str, Any]:
    """A first estimate as the chart and card show it: marked `partial`, keyed by the full run it stands
    in for (`n_full` its n), with an interval at least as wide as Wilson's on the problems it saw: a
    technique's own interval (a bootstrap over 2 problems, say) can claim a certainty 2 problems never give."""
    out = dict(row, partial=True, n_full=job.n, preview_config_hash=row["config_hash"], config_hash=job.config_hash)
    acc, n = row.get("accuracy"), row.get("n_examples")
    if isinstance(acc, (int, float)) and not math.isnan(acc) and n:
        lo, _ = wilson(math.floor(acc * n + 1e-9), n)
        _, hi = wilson(math.ceil(acc * n - 1e-9), n)
        out["accuracy_lo"] = min(lo, row.get("accuracy_lo", lo))
        out["accuracy_hi"] = max(hi, row.get("accuracy_hi", hi))
        if row.get("interval") != "wilson95":
            out["interval"] = f"{row.get('interval')} widened to wilson95"
    return out
