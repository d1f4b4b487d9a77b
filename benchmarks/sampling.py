"""Repeated sampling: throughput of n samples per prompt, and pass@k on the zoo.

1. Throughput, side by side in one run, for n = 64 samples of each prompt:
   - batched: the prompt repeated 64 times in ONE call of explorer.generate.generate
     (what explorer.Sampling does);
   - single: 64 calls of explorer.generate.generate, one sample each;
   - hf: transformers `model.generate(num_return_sequences=64, do_sample=True)`.
   Methods run interleaved per prompt and repeat, so drift in machine load hits all
   three alike; the table reports medians over prompts x repeats.
2. Curves: pass@k, majority@k and best-of-k for k = 1..n from one Sampling run,
   with the gain in pass@k per doubling of k (log-linear coverage is a constant gain).

    python benchmarks/sampling.py                      # both, zoo-m
    python benchmarks/sampling.py --only throughput --model zoo-l --prompts 8
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import explorer as ex  # noqa: E402
from explorer.generate import generate  # noqa: E402
from explorer.techniques.sampling import Samples  # noqa: E402


def hf_sample(model, prompt: str, n: int, max_new_tokens: int, seed: int) -> int:
    """n samples of one prompt with transformers' own generate; returns tokens generated."""
    tok = model.tokenizer
    ids = tok(prompt, return_tensors="pt")
    torch.manual_seed(seed)  # transformers samples from the global generator
    out = model.hf.generate(**ids, do_sample=True, num_return_sequences=n, max_new_tokens=max_new_tokens,
                            temperature=1.0, top_p=1.0, top_k=0, pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id)
    new = out[:, ids["input_ids"].shape[1]:]
    # Count positions up to and including the first end-of-sequence, as explorer.generate does.
    ended = (new == tok.eos_token_id).int().cumsum(1)
    return int(((ended == 0) | ((ended == 1) & (new == tok.eos_token_id))).sum())


def throughput(model, task, prompts: int, n: int, repeats: int) -> None:
    examples = task.examples(prompts, seed=0)
    mnt = task.max_new_tokens
    methods = {
        f"batched (1 call x {n} rows)": lambda p, s: generate(
            model.hf, model.tokenizer, [p] * n, max_new_tokens=mnt, temperature=1.0,
            generator=torch.Generator().manual_seed(s)).tokens_generated,
        f"single ({n} calls x 1 row)": lambda p, s: sum(generate(
            model.hf, model.tokenizer, [p], max_new_tokens=mnt, temperature=1.0,
            generator=torch.Generator().manual_seed(s * n + i)).tokens_generated for i in range(n)),
        f"hf generate(num_return_sequences={n})": lambda p, s: hf_sample(model, p, n, mnt, s),
    }
    for fn in methods.values():  # warm-up: first calls pay for allocation and dispatch caches
        fn(examples[0].prompt, 0)
    walls = {m: [] for m in methods}
    tokens = {m: [] for m in methods}
    for r in range(repeats):
        for i, e in enumerate(examples):
            for m, fn in methods.items():
                t = time.perf_counter()
                tokens[m].append(fn(e.prompt, r * prompts + i))
                walls[m].append(time.perf_counter() - t)
    single = statistics.median(walls[f"single ({n} calls x 1 row)"])
    print(f"\n## throughput: {model.name}, task {task.name}, {n} samples per prompt, "
          f"{prompts} prompts x {repeats} repeats, torch threads {torch.get_num_threads()}")
    print(f"| method | median wall_s per prompt | samples/s | tokens/s | speed-up vs single |")
    print("|---|---|---|---|---|")
    for m in methods:
        w = statistics.median(walls[m])
        tps = sum(tokens[m]) / sum(walls[m])
        print(f"| {m} | {w:.4f} | {n / w:.0f} | {tps:.0f} | {single / w:.1f}x |")


def curve_table(model, task_name: str, n: int, problems: int, temperature: float) -> None:
    t = time.perf_counter()
    row = ex.run(model, task_name, ex.Sampling(n=n, temperature=temperature), n=problems, seed=0, repeats=1)
    wall = time.perf_counter() - t
    t = time.perf_counter()
    c = ex.Sampling.curves(row)
    slider_s = time.perf_counter() - t
    print(f"\n## curves: {model.name}, {task_name}, {problems} problems x {n} samples, T={temperature} "
          f"(draw wall_s {row['wall_s']:.1f}, run {wall:.1f} s, curves() for all k {slider_s * 1e3:.0f} ms)")
    print("| k | pass@k | gain per doubling | majority@k | best-of-k logprob | best-of-k verifier (fpr=fnr=0.1) "
          "| tokens generated |")
    print("|---|---|---|---|---|---|---|")
    prev = None
    for k in [2**i for i in range(int(math.log2(n)) + 1)] + ([n] if n & (n - 1) else []):
        r = c.row(k - 1, named=True)
        gain = "" if prev is None else f"{r['pass_at_k'] - prev:+.3f}"
        prev = r["pass_at_k"]
        print(f"| {k} | {r['pass_at_k']:.3f} | {gain} | {r['majority_at_k']:.3f} | {r['best_logprob_at_k']:.3f} "
              f"| {r['best_verifier_at_k']:.3f} | {r['tokens_generated']:.0f} |")
    slope, r2 = loglinear(c["k"].to_numpy(), c["pass_at_k"].to_numpy())
    print(f"pass@k ~ a + b log2 k over k = 1, 2, 4, ..: b = {slope:+.3f} per doubling, R^2 = {r2:.3f}")
    print("| difficulty | pass@1 | pass@" + str(n) + " | majority@" + str(n) + " | b per doubling | R^2 |")
    print("|---|---|---|---|---|---|")
    s = Samples.of(row)
    for d in sorted(set(s.difficulty.tolist())):
        keep = s.difficulty == d
        sub = Samples([a for a, k in zip(s.answers, keep) if k], s.correct[keep], s.logprob[keep],
                      s.tokens[keep], s.difficulty[keep])
        cd = ex.Sampling.curves(sub)
        b, r2 = loglinear(cd["k"].to_numpy(), cd["pass_at_k"].to_numpy())
        print(f"| {d} | {cd['pass_at_k'][0]:.3f} | {cd['pass_at_k'][-1]:.3f} | {cd['majority_at_k'][-1]:.3f} "
              f"| {b:+.3f} | {r2:.3f} |")


def loglinear(k, p) -> tuple[float, float]:
    """Least-squares fit of p on log2 k: (gain per doubling, R^2)."""
    # Fit on k = 1, 2, 4, ...: evenly spaced in log k, so large k does not outvote small k.
    keep = (k & (k - 1)) == 0
    x, p = np.log2(k[keep]), p[keep]
    b, a = np.polyfit(x, p, 1)
    resid = p - (a + b * x)
    total = ((p - p.mean()) ** 2).sum()
    return float(b), float(1 - (resid**2).sum() / total) if total > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="zoo-m")
    ap.add_argument("--only", choices=["throughput", "curves"])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=6, help="prompts for the throughput comparison")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--problems", type=int, default=100, help="problems per task for the curves")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--tasks", default="addition,multiplication")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = ex.load(args.model)
    if args.only != "curves":
        throughput(model, ex.tasks.get("addition"), args.prompts, args.n, args.repeats)
    if args.only != "throughput":
        for name in args.tasks.split(","):
            curve_table(model, name, args.n, args.problems, args.temperature)


if __name__ == "__main__":
    main()
