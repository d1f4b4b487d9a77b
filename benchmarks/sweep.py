"""How long a sweep takes on this machine, and what a second Ray worker buys.

1. The default sweep (`explorer sweep` with no file: every zoo model and task,
   the baseline and a small grid per technique) with the local executor, into
   an empty store. Target: under 10 minutes on 2 cores.
2. Ray with 1 worker against 2 workers on one local cluster of 2 CPUs, started
   before the clock (startup is a fixed cost, not what a worker buys), each run
   into an empty store, alternated for `--rounds` rounds so drift in the
   machine's load hits both alike; medians reported. Target: >= 1.7x.

The load average is printed beside each timing: other processes on the machine
take cores from a sweep, and a ratio measured side by side survives that better
than an absolute time.

Run: python benchmarks/sweep.py
     python benchmarks/sweep.py --skip-default --ray-models zoo-xs zoo-s --ray-n 50 --rounds 3
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load() -> float:
    return os.getloadavg()[0]


def timed_sweep(kwargs: dict, **executor) -> tuple[int, float, float]:
    """(rows, wall seconds, CPU seconds of this process) of one sweep into an empty store."""
    from explorer.sweep import sweep

    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as store:
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        rows = sweep(**kwargs, store=store, progress=False, **executor)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_SELF)
        return rows.height, wall, (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)


def main() -> None:
    import warnings

    from explorer.sweep import DEFAULT_SPEC, from_spec, plan

    warnings.simplefilter("ignore")  # the default sweep's refused configurations (a draft as big as its target)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--skip-default", action="store_true", help="skip the local run of the default sweep")
    p.add_argument("--ray-models", nargs="*", default=None, help="models of the Ray comparison (default: all)")
    p.add_argument("--ray-n", type=int, default=None, help="examples per run in the Ray comparison")
    p.add_argument("--rounds", type=int, default=3, help="alternated rounds of 1 and 2 Ray workers")
    args = p.parse_args()

    kwargs = from_spec(DEFAULT_SPEC)
    print(f"default sweep: {len(plan(**kwargs))} configurations over {', '.join(kwargs['models'])}, "
          f"n={kwargs['n']}, {len(kwargs['techniques'])} technique settings; {os.cpu_count()} CPUs", flush=True)
    table = []
    if not args.skip_default:
        before = load()
        rows, wall, cpu = timed_sweep(kwargs)
        table.append(("default sweep", "local", "-", rows, wall, cpu, before, load()))
        print(f"  local: {rows} rows in {wall:.1f} s", flush=True)

    ray_kwargs = kwargs | {k: v for k, v in (("models", args.ray_models), ("n", args.ray_n)) if v}
    walls: dict[int, list[float]] = {1: [], 2: []}
    import ray

    from explorer.executors import start_ray

    start_ray(None, num_cpus=2)
    try:
        for r in range(args.rounds):
            for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
                before = load()
                rows, wall, _ = timed_sweep(ray_kwargs, executor="ray", workers=workers)
                walls[workers].append(wall)
                table.append((f"ray round {r + 1}", "ray", str(workers), rows, wall, float("nan"), before, load()))
                print(f"  ray round {r + 1}, {workers} worker(s): {rows} rows in {wall:.1f} s", flush=True)
    finally:
        ray.shutdown()

    print(f"\n{'run':<14} {'executor':<8} {'workers':>7} {'rows':>5} {'wall_s':>8} {'cpu_s':>8} {'load before/after':>18}")
    for name, ex, k, rows, wall, cpu, b, a in table:
        print(f"{name:<14} {ex:<8} {k:>7} {rows:>5} {wall:>8.1f} {cpu:>8.1f} {b:>9.1f}/{a:<8.1f}")
    one, two = statistics.median(walls[1]), statistics.median(walls[2])
    per_round = [a / b for a, b in zip(walls[1], walls[2])]
    print(f"\nray median wall: 1 worker {one:.1f} s, 2 workers {two:.1f} s; speed-up {one / two:.2f}x "
          f"(per round: {', '.join(f'{x:.2f}x' for x in per_round)})")


if __name__ == "__main__":
    main()
