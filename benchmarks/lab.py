"""How fast the lab answers: state change -> new chart data, cached and live.

Prints, side by side in one run:
- cached: a bit-width change whose rows are all in the store, from `state.bits = v`
  to the chart's new data (the spec the front end receives), over many changes;
- filters: a budget change, from `state.budget = v` to the chart's param;
- live: a bit-width nobody ran yet on zoo-m with 64 problems, to the first redraw;
- and, for the record, the costlier path of replacing the whole Altair chart.

Run: python benchmarks/lab.py [--model zoo-m] [--n 64]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="zoo-m")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--changes", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from widgets import Lab
    from widgets.frontier import chart

    lab = Lab(tempfile.mkdtemp(), models=[args.model], technique="quantize", bits=8, n=args.n)
    lab.runner.wait(600)
    for bits in (4, 6):  # fill the store for the cached changes
        lab.state.bits = bits
        lab.runner.wait(600)

    cached = []
    for i in range(args.changes):
        target = (4, 6, 8)[i % 3]
        if lab.state.bits == target:
            continue
        before = lab.frontier.updates
        t = time.perf_counter()
        lab.state.bits = target
        while lab.frontier.updates == before:
            time.sleep(0.0005)
        cached.append(time.perf_counter() - t)

    filters = []
    for i in range(args.changes):
        t = time.perf_counter()
        lab.state.budget = 1e5 * (1 + i)
        assert lab.frontier.widget.params.budget == 1e5 * (1 + i)
        filters.append(time.perf_counter() - t)

    replace = []
    rows = lab.frontier.rows(lab.store.frame())
    for _ in range(10):
        t = time.perf_counter()
        lab.frontier.widget.chart = chart(rows, cost_axis=lab.state.cost_axis)
        replace.append(time.perf_counter() - t)

    before = lab.frontier.updates
    t = time.perf_counter()
    lab.state.bits = 3  # never run: a real quantize + 64 problems on the model
    while lab.frontier.updates == before:
        time.sleep(0.001)
    live = time.perf_counter() - t
    lab.runner.wait(600)

    print(f"{'path':<44} {'median ms':>10} {'p95 ms':>8} {'n':>4}")
    for name, xs in [("cached bit-width change -> chart data", cached),
                     ("budget change -> chart param", filters),
                     ("replace the whole Altair chart (not used)", replace)]:
        print(f"{name:<44} {1000 * statistics.median(xs):>10.2f} {1000 * pct(xs, 95):>8.2f} {len(xs):>4}")
    print(f"{'live run ' + args.model + f' n={args.n} -> first redraw':<44} {1000 * live:>10.0f} {'':>8} {1:>4}")
    print("(debounce before a live run: %.0f ms, included)" % (1000 * lab.runner.debounce_s))
    lab.runner.close()


if __name__ == "__main__":
    main()
