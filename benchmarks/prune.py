"""Structured FFN pruning on zoo-l: accuracy, weight bytes and decode time against the unpruned model.

For 0/25/50/70% of each layer's FFN channels removed (Wanda scores from a
calibration batch of each task, seeded apart from the evaluation): accuracy on
the four generative tasks pooled, with its Wilson 95% interval; weight bytes
(measured from the pruned tensors: the matrices really shrink); and decode time
per token, measured interleaved: each round times every variant back to back
(order rotated), a prompt pass and then a fixed number of greedy steps through
`explorer.generate.generate`, the loop and decode path rows use (the fused path
for every variant here, printed; no early stop, so every variant decodes the
same number of tokens), at batch 1 (latency) and at batch 64 (throughput).
Medians over rounds; the speed-up is the unpruned median over the pruned median,
in wall-clock time, and beside it in this thread's CPU time (robust to a loaded
machine). Target: 50% runs at least 1.3x faster.

Then Wanda against magnitude scores at 50%: both accuracies, and whether Wanda wins.

The must-show figures (the table and the two verdict lines) come from the first command, about
50 s at load 4.5 on this 2-core machine:

    python benchmarks/prune.py                 # n=100 per task, 7 rounds
    python benchmarks/prune.py --quick         # n=50 per task, 3 rounds
    python benchmarks/prune.py --timing-only   # the speed-ups alone (no accuracy), 7 rounds
    python benchmarks/prune.py --timing-only --profile   # and where each token's time goes, per operation
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import explorer as ex  # noqa: E402
from explorer.generate import generate  # noqa: E402
from explorer.stats import wilson  # noqa: E402

TASKS = ("addition", "subtraction", "multiplication", "sort")
TARGET = 1.3


def accuracy(model, prune, n: int) -> tuple[float, float, float, int]:
    """Pooled accuracy over TASKS with its Wilson interval; each task calibrates its own pruning."""
    k = total = 0
    for task in TASKS:
        row = ex.run(model, task, prune, n=n, seed=0, repeats=1)
        k += row["correct"]
        total += n
    lo, hi = wilson(k, total)
    return k / total, lo, hi, total


def decode_s(model, prompts: list[str], steps: int) -> tuple[float, float, str]:
    """(wall, CPU) seconds per generated token of a prompt pass and `steps` greedy steps, no early
    stop, through `explorer.generate.generate` exactly as rows decode (the same path choice), and
    the path it took."""
    wall, cpu = time.perf_counter(), time.thread_time()
    g = generate(model.hf, model.tokenizer, prompts, max_new_tokens=steps + 1, stop_at_eos=False)
    return (time.perf_counter() - wall) / (steps + 1), (time.thread_time() - cpu) / (steps + 1), g.decode_path


def profile_ops(full, pruned, prompts: list[str], steps: int, top: int = 14) -> None:
    """Where a token's time goes, unpruned against 50% pruned: torch.profiler's self time per
    operation (the matmuls of every projection are aten::mm; attention is SDPA), in us per generated
    token of the same timed call as above, and what pruning saved in each."""
    from torch.profiler import ProfilerActivity, profile

    per = {}
    for name, m in (("0%", full), ("50%", pruned)):
        decode_s(m, prompts, 2)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            decode_s(m, prompts, steps)
        per[name] = {e.key: e.self_cpu_time_total / (steps + 1) for e in prof.key_averages()}
    total = {k: sum(v.values()) for k, v in per.items()}
    ops = sorted(per["0%"], key=lambda k: -per["0%"][k])[:top]
    print(f"\nbatch {len(prompts)}: us per generated token by operation (profiler self time, inflated by its own "
          f"overhead), 0% / 50% FFN pruned")
    print(f"  {'operation':<52} {'0%':>9} {'50%':>9} {'saved':>9} {'share of 0%':>11}")
    for k in ops:
        a, b = per["0%"][k], per["50%"].get(k, 0.0)
        print(f"  {k[:52]:<52} {a:9.1f} {b:9.1f} {a - b:9.1f} {a / total['0%']:10.1%}")
    rest = [k for k in per["0%"] if k not in ops]
    a, b = sum(per["0%"][k] for k in rest), sum(per["50%"].get(k, 0.0) for k in rest)
    print(f"  {'(every other operation)':<52} {a:9.1f} {b:9.1f} {a - b:9.1f} {a / total['0%']:10.1%}")
    print(f"  {'total':<52} {total['0%']:9.1f} {total['50%']:9.1f} {total['0%'] - total['50%']:9.1f}  "
          f"ratio {total['0%'] / total['50%']:.2f}x")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="zoo-l")
    p.add_argument("-n", type=int, default=100, help="examples per task")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=32, help="decode steps timed per call")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--timing-only", action="store_true", help="decode times and speed-ups only, no accuracy")
    p.add_argument("--profile", action="store_true", help="also a per-operation table, unpruned against 50%%")
    args = p.parse_args()
    if args.quick:
        args.n, args.rounds = 50, 3
    torch.set_num_threads(1)
    print(f"load: {os.getloadavg()[0]:.2f} (1-min), torch threads 1")
    model = ex.load(args.model)
    sparsities = (0.0, 0.25, 0.5, 0.7)
    variants = {s: ex.Prune(ffn=s) for s in sparsities}
    # Pruned once on the first task's calibration batch, for timing (shapes are what matter there).
    task = ex.tasks.get(TASKS[0]).for_model(model)
    models = {s: v.prepare_for(model, task) for s, v in variants.items()}

    print(f"\n{args.model}: structured FFN pruning, Wanda scores, {args.n} problems x {len(TASKS)} tasks")
    acc = {s: None if args.timing_only else accuracy(model, variants[s], args.n) for s in sparsities}

    prompts = [e.prompt for e in ex.tasks.get("addition").for_model(model).examples(64, seed=1)]
    batches = {1: prompts[:1], 64: prompts}
    times: dict[tuple[int, float], list[tuple[float, float]]] = {(b, s): [] for b in batches for s in sparsities}
    paths = {}
    for b, batch in batches.items():
        for s in sparsities:
            paths[s] = decode_s(models[s], batch, 2)[2]  # warm-up (and builds the fused weights once)
        for r in range(args.rounds):
            order = list(sparsities[r % len(sparsities):] + sparsities[: r % len(sparsities)])
            for s in order:
                times[(b, s)].append(decode_s(models[s], batch, args.steps)[:2])

    def med(b, s, clock):  # clock 0: wall, 1: this thread's CPU time
        return statistics.median(t[clock] for t in times[(b, s)])

    print("decode path (explorer.generate, as rows): " + ", ".join(f"{s:.0%} {p}" for s, p in paths.items()))
    print(f"\n{'FFN pruned':>10} {'channels':>8} {'accuracy [Wilson 95%]':>26} {'weight MB':>9} "
          f"{'ms/token b1':>11} {'speed-up b1':>11} {'ms/token b64':>12} {'speed-up b64':>12} {'CPU-time speed-up b1/b64':>24}")
    for s in sparsities:
        cell = "(not measured: --timing-only)" if acc[s] is None else "{:8.3f} [{:.3f}, {:.3f}] n={:<4d}".format(*acc[s])
        mb = sum(p.numel() * p.element_size() for p in models[s].hf.parameters()) / 1e6
        cells = []
        for b in batches:
            cells += [f"{med(b, s, 0) * 1e3:11.2f}", f"{med(b, 0.0, 0) / med(b, s, 0):11.2f}x"]
        cpu = "/".join(f"{med(b, 0.0, 1) / med(b, s, 1):.2f}x" for b in batches)
        print(f"{s:10.0%} {models[s].hf.config.intermediate_size:8d} {cell:>30} "
              f"{mb:9.2f} {cells[0]} {cells[1]:>11} {cells[2]:>12} {cells[3]:>12} {cpu:>24}")
    for b in batches:
        speed, cpu = med(b, 0.0, 0) / med(b, 0.5, 0), med(b, 0.0, 1) / med(b, 0.5, 1)
        verdict = "meets" if speed >= TARGET else "MISSES"
        print(f"batch {b}: 50% FFN pruning decodes {speed:.2f}x faster than unpruned (wall clock; "
              f"{cpu:.2f}x in CPU time); {verdict} the {TARGET}x target")

    if args.profile:
        for b, batch in batches.items():
            profile_ops(models[0.0], models[0.5], batch, args.steps)
    if args.timing_only:
        print(f"load at the end: {os.getloadavg()[0]:.2f} (1-min)")
        return 0
    print("\nWanda against magnitude scores at 50% FFN pruning:")
    mag = accuracy(model, ex.Prune(ffn=0.5, score="magnitude"), args.n)
    wanda = acc[0.5]
    for name, (a, lo, hi, total) in (("wanda", wanda), ("magnitude", mag)):
        print(f"  {name:9s} accuracy {a:.3f} [{lo:.3f}, {hi:.3f}] (n={total})")
    if wanda[0] > mag[0] and wanda[1] > mag[2]:
        print("  Wanda wins, outside both intervals")
    elif wanda[0] > mag[0]:
        print("  Wanda is ahead, but the intervals overlap: not distinguishable at this n")
    else:
        print("  Wanda does NOT win over magnitude here")
    print(f"load at the end: {os.getloadavg()[0]:.2f} (1-min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
