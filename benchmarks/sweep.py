"""How long a sweep takes on this machine, and what a second Ray worker buys.

1. The default sweep (`explorer sweep` with no file: every zoo model and task,
   the baseline and a small grid per technique) with the local executor, into
   an empty store. Target: under 10 minutes on 2 cores.
2. The same jobs on a local Ray cluster with 1 worker, then with 2, each into
   an empty store; the cluster is up before the clock starts (startup is a
   fixed cost, not what a worker buys). Target: >= 1.7x with 2 workers.

Run: python benchmarks/sweep.py            (both parts)
     python benchmarks/sweep.py --ray-only --models zoo-xs zoo-s
Prints one table; timings are single runs of minutes-long sweeps.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed_sweep(kwargs: dict, **executor) -> tuple[int, float]:
    from explorer.sweep import sweep

    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as store:
        t = time.perf_counter()
        rows = sweep(**kwargs, store=store, progress=False, **executor)
        return rows.height, time.perf_counter() - t


def ray_sweep(kwargs: dict, workers: int) -> tuple[int, float]:
    import ray

    from explorer.executors import worker_env

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": worker_env()})
    try:
        return timed_sweep(kwargs, executor="ray", workers=workers)
    finally:
        ray.shutdown()


def main() -> None:
    from explorer.sweep import DEFAULT_SPEC, from_spec, plan

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ray-only", action="store_true", help="skip the local run of the default sweep")
    p.add_argument("--models", nargs="*", default=None, help="restrict the Ray comparison to these models")
    args = p.parse_args()

    kwargs = from_spec(DEFAULT_SPEC)
    results = []
    n_jobs = len(plan(**kwargs))
    print(f"default sweep: {n_jobs} configurations, models {', '.join(kwargs['models'])}, "
          f"n={kwargs['n']}, {len(kwargs['techniques'])} technique settings, {os.cpu_count()} CPUs", flush=True)
    if not args.ray_only:
        rows, wall = timed_sweep(kwargs)
        results.append(("default sweep", "local", "all (torch threads)", rows, wall))
        print(f"  local: {rows} rows in {wall:.1f} s", flush=True)
    ray_kwargs = kwargs | ({"models": args.models} if args.models else {})
    for workers in (1, 2):
        rows, wall = ray_sweep(ray_kwargs, workers)
        results.append(("ray comparison", "ray", str(workers), rows, wall))
        print(f"  ray, {workers} worker(s): {rows} rows in {wall:.1f} s", flush=True)

    one = next(w for name, ex, k, _, w in results if ex == "ray" and k == "1")
    print(f"\n{'sweep':<16} {'executor':<9} {'workers':<20} {'rows':>5} {'wall_s':>8} {'minutes':>8} {'speed-up vs 1 ray worker':>25}")
    for name, ex, k, rows, wall in results:
        speed = f"{one / wall:.2f}x" if ex == "ray" else ""
        print(f"{name:<16} {ex:<9} {k:<20} {rows:>5} {wall:>8.1f} {wall / 60:>8.2f} {speed:>25}")


if __name__ == "__main__":
    main()
