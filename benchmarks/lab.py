"""How fast the lab answers a move that needs runs: first estimate and final answer, progressive
against today's path (full runs only), side by side in one run.

For each scenario and each path, every trial starts from a copy of one store holding the
selection before the move (so only the move's own runs are missing), with the selected models
already loaded but drafts and their length plans forgotten (`cold`: the first time a person makes
the move), then makes the move and times, from the state change:
- first estimate: until EVERY selected model has a point for the new configuration on the
  chart's data (a first estimate on a few problems, or the full row);
- final: until every full row is stored.
Three paths, interleaved trial by trial so a load spike hits them alike:
- today: the runner with first estimates off (`preview_n=None`): full runs only;
- fixed 5: first estimates on 5 problems each, whatever they cost (`preview_budget_s=None`);
- budgeted: the lab's default: each first estimate starts with one problem and its measured cost
  decides how many more (up to 5) fit in the model's share of `PREVIEW_BUDGET_S`.
The last column gives the problems each model's first estimate saw (over all trials).

Scenarios (issue 16's list):
- a bit-width change over four models (quantize 8 -> 4 bits, zoo-xs..zoo-l, n=64);
- samples = 64 over three models (sampling 16 -> 64 samples, zoo-xs..zoo-m, n=64);
- a draft change (speculative zoo-l, draft zoo-xs -> zoo-s, n=64).

Run (issue 16's must-show table; about 4 minutes on an idle 2-core machine, 8 at load average 6):
    OMP_NUM_THREADS=1 python benchmarks/lab.py
Options: --trials 5 (per path and scenario; p95 of 5 is the slowest), --only bits,samples,draft,
--quick (3 trials). The machine may be shared: the load average is printed with the results.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

SCENARIOS = {
    # name: (selection before the move, the move, what it is)
    "bits": (dict(models=["zoo-xs", "zoo-s", "zoo-m", "zoo-l"], task="addition", technique="quantize", bits=8),
             {"bits": 4}, "bit-width change 8 -> 4, four models"),
    "samples": (dict(models=["zoo-xs", "zoo-s", "zoo-m"], task="addition", technique="sampling", samples=16),
                {"samples": 64}, "samples 16 -> 64, three models"),
    "draft": (dict(models=["zoo-l"], task="addition", technique="speculative", draft="zoo-xs"),
              {"draft": "zoo-s"}, "draft zoo-xs -> zoo-s, zoo-l"),
}


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def seed_store(selection: dict, n: int, models: dict) -> Path:
    """A store holding the selection before the move (baselines and the old configuration)."""
    from widgets.runner import Runner
    from widgets.state import LabState
    from explorer.store import Store

    folder = Path(tempfile.mkdtemp(prefix="lab-bench-seed-"))
    runner = Runner(LabState(**selection, n=n), Store(folder), autostart=False, preview_n=None)
    runner.models = models
    runner.schedule()
    runner.wait(1800)
    runner.close()
    return folder


def cold() -> None:
    """Forget what an earlier trial left in this process for the move's own models: drafts are loaded
    again and their length plans measured again, as the first time a person makes the move (the
    selected models stay loaded and warm, as they are in a lab that has already shown them)."""
    from explorer.techniques import speculative

    speculative._load_draft.cache_clear()
    speculative._PLANS.clear()


PATHS = {"today": dict(preview_n=None), "fixed 5": dict(preview_budget_s=None), "budgeted": {}}


def trial(seed: Path, selection: dict, move: dict, n: int, models: dict, path: dict):
    """One move on a fresh copy of the seed store: (seconds to every model's first point, to final,
    the problems each first estimate saw). A first point counts once the lab has redrawn with it."""
    from widgets.lab import Lab
    from widgets.state import LabState
    from explorer.store import Store

    folder = Path(tempfile.mkdtemp(prefix="lab-bench-"))
    shutil.copytree(seed, folder, dirs_exist_ok=True)
    state = LabState(**selection, n=n)
    lab = Lab(Store(folder), state=state, autostart=False)  # the real lab: its redraws are in the times
    runner = lab.runner
    for name, value in path.items():
        setattr(runner, name, value)
    runner.models = models
    runner.schedule()  # everything cached: no run
    runner.wait(60)
    cold()
    redraw = runner.on_rows
    first = threading.Event()
    marks = {}

    def on_rows():
        redraw()  # chart, card, detail view: what the person sees
        if first.is_set():
            return
        try:
            wanted = {j.config_hash for j in runner.jobs()}
        except ValueError:
            return
        frame = runner.frame()
        have = set(frame["config_hash"].to_list())
        if wanted <= have:
            marks["first"] = time.perf_counter()
            marks["sizes"] = (frame.filter(frame["partial"].fill_null(False))["n_examples"].to_list()
                              if "partial" in frame.columns else [])
            first.set()

    runner.on_rows = on_rows
    t0 = time.perf_counter()
    for name, value in move.items():
        setattr(state, name, value)  # the move (debounced like a slider)
    first.wait(1800)
    runner.wait(1800)
    final = time.perf_counter() - t0
    runner.close()
    shutil.rmtree(folder, ignore_errors=True)
    return marks["first"] - t0, final, marks["sizes"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 trials")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--only", default="bits,samples,draft")
    args = ap.parse_args()
    trials = 3 if args.quick else args.trials
    torch.set_num_threads(1)

    import explorer as ex
    from widgets.runner import PREVIEW_BUDGET_S, PREVIEW_N

    load_before = os.getloadavg()
    models = {m: ex.load(m) for m in ex.zoo.names()}
    results = []
    for key in args.only.split(","):
        selection, move, what = SCENARIOS[key]
        seed = seed_store(selection, args.n, models)
        times = {path: [] for path in PATHS}
        for _ in range(trials):  # interleaved, so a load spike hits every path alike
            for path, kwargs in PATHS.items():
                times[path].append(trial(seed, selection, move, args.n, models, kwargs))
        shutil.rmtree(seed, ignore_errors=True)
        results.append((what, times))

    print(f"lab moves that need runs, n={args.n}, {trials} trials per path; first estimates on at most "
          f"{PREVIEW_N} problems (budgeted: {PREVIEW_BUDGET_S} s shared by the models); seconds from the "
          "state change, debounce (300 ms) included; first = every selected model has a point")
    print(f"{'move':<34} {'path':<9} {'first p50':>9} {'first p95':>9} {'final p50':>9} {'final p95':>9}"
          "  problems per first estimate")
    for what, times in results:
        for path, xs in times.items():
            firsts, finals = [x[0] for x in xs], [x[1] for x in xs]
            sizes = sorted(s for x in xs for s in x[2])
            seen = f"{sizes[0]}-{sizes[-1]} (median {statistics.median(sizes):g})" if sizes else "-"
            print(f"{what:<34} {path:<9} {statistics.median(firsts):>9.2f} {pct(firsts, 95):>9.2f} "
                  f"{statistics.median(finals):>9.2f} {pct(finals, 95):>9.2f}  {seen}")
    load_after = os.getloadavg()
    print(f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; {os.cpu_count()} cores; "
          "torch one thread per run (first estimates and full runs use a thread each)")


if __name__ == "__main__":
    main()
