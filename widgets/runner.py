"""The runner: the only part of the lab that asks the engine for runs.

It watches the state store. When the selection needs rows the results store
lacks, it runs them on one background thread (torch releases the GIL inside
its kernels, so the kernel's UI stays responsive), debounced so a slider
dragged across ten values starts one run, not ten. A newer selection
supersedes an older one: the worker checks before each run and drops stale
work. A run already started finishes and is stored (finished work is never
thrown away). Filters (budget, cost axis, k) are not watched: they never run
a model.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from explorer.executors import Failed, Job, try_job
from explorer.store import Store
from explorer.sweep import plan
from explorer.techniques import Baseline
from widgets.state import LabState

REPEATS = 1  # one timed pass per live run: the lab favours a fast answer; sweeps can repeat


class Runner:
    def __init__(self, state: LabState, store: Store, *, debounce_s: float = 0.3,
                 on_rows: Callable[[], None] | None = None, autostart: bool = True):
        self.state, self.store = state, store
        self.debounce_s = debounce_s
        self.on_rows = on_rows or (lambda: None)
        self.models: dict = {}  # loaded models, shared by every run of this lab
        self.runs_started = 0
        # Configurations the engine refused for a model (a draft as big as its target): said
        # once in the status line and not tried again, so the other models' runs go ahead.
        self.refused: dict[str, str] = {}
        self._generation = 0
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-runner")
        self.last: Future | None = None
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
            self.state.status = f"{shown} runs, all in the store" + self.skipped()
            self.on_rows()
            return None
        self.state.busy = True
        self.last = self._pool.submit(self._work, generation, todo)
        return self.last

    def _work(self, generation: int, todo: list[Job]) -> int:
        done = 0
        try:
            for i, job in enumerate(todo):
                if generation != self._generation:
                    self.state.status = "selection changed: dropped the older runs"
                    return done
                self.state.progress = i / len(todo)
                self.state.status = f"running {job.model} {job.technique.name} on {job.task} ({i + 1}/{len(todo)})"
                self.runs_started += 1
                row = try_job(job, self.models)
                if isinstance(row, Failed):
                    self.refused[job.config_hash] = f"{job.model}: {row.error}"
                    continue
                self.store.add(row)
                done += 1
                self.on_rows()
            self.state.progress = 1.0
            self.state.status = f"{done} new run{'' if done == 1 else 's'} stored in {self.store.path}" + self.skipped()
        except Exception as err:  # a failed run must reach the status line, not vanish in a thread
            self.state.status = f"run failed: {type(err).__name__}: {err}"
        finally:
            if generation == self._generation:
                self.state.busy = False
        return done

    def skipped(self) -> str:
        """The refusals that apply to the current selection, for the status line."""
        mine = [self.refused[j.config_hash] for j in self.jobs() if j.config_hash in self.refused]
        return f"; skipped {'; '.join(mine)}" if mine else ""

    def wait(self, timeout: float | None = None) -> None:
        """Block until pending work is done (for tests and scripts, never for the UI)."""
        if self._timer is not None:
            self._timer.join(timeout)
        if self.last is not None:
            self.last.result(timeout)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
