"""Compute-optimal test-time allocation: how many samples each problem gets (Snell et al. 2024).

Uniform best-of-N gives every problem the same N samples. Snell et al.
("Scaling LLM Test-Time Compute Optimally") spend the same total differently:
easy problems need one or two samples, hard ones more, and impossible ones
none beyond the first. Two allocators, both at a fixed mean of `mean_k`
samples per problem (so the same total compute as uniform `mean_k`):

- `by_difficulty`: one sample count per difficulty level, chosen to maximise
  expected accuracy on *other* problems' samples (a dynamic programme over the
  levels' accuracy-at-k curves). The difficulty is known before generating.
- `by_agreement`: an early signal. Every problem gets `first` samples; where
  they all agree the problem stops, and the rest of the budget is spread evenly
  over the problems whose first samples disagree.

Everything is read from samples already drawn (`explorer.Sampling` rows keep
them): a plan is an array of per-problem sample counts, applied to each
problem's first k samples in a random order of its n draws, and averaged over
`orders` such orders. `compare` decides a plan against uniform at equal
compute with a paired bootstrap over problems. `point` turns a plan into a
budget-view point (accuracy with its interval and FLOPs per problem), so a
budget chart can place it beside the uniform configurations.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Mapping

import numpy as np

from explorer import aggregate as agg
from explorer.stats import bootstrap_mean
from explorer.techniques.sampling import Samples

AGGREGATORS = ("majority", "pass")
# A strategy maps (samples, order) -> per-problem sample counts; order[i] is problem i's draws in use order.
Strategy = Callable[[Samples, np.ndarray], np.ndarray]


def _check_mean_k(mean_k, n: int) -> float:
    if isinstance(mean_k, bool) or not isinstance(mean_k, (int, float, np.integer, np.floating)) \
            or not 1 <= mean_k <= n:
        raise ValueError(f"mean_k={mean_k!r}; valid: a mean number of samples per problem in 1..n={n} "
                         "(the samples drawn per problem)")
    return float(mean_k)


def spread(total: int, base: np.ndarray, cap: int, eligible: np.ndarray) -> np.ndarray:
    """Add `total` samples to `base` over the eligible problems, as evenly as possible, each at most `cap`."""
    ks = base.copy()
    left = int(total)
    while left > 0:
        open_ = np.flatnonzero(eligible & (ks < cap))
        if open_.size == 0:
            break
        each, extra = divmod(left, open_.size)
        add = np.full(open_.size, each)
        add[:extra] += 1  # the remainder goes to the first problems
        add = np.minimum(add, cap - ks[open_])
        ks[open_] += add
        left -= int(add.sum())
        if add.sum() == 0:
            break
    return ks


def uniform(mean_k: int) -> Strategy:
    """Every problem gets `mean_k` samples (best-of-N / majority@N as usually run)."""
    def plan(samples: Samples, order: np.ndarray) -> np.ndarray:
        k = _check_mean_k(mean_k, samples.n)
        if k != int(k):
            raise ValueError(f"uniform: mean_k={mean_k!r}; give a whole number of samples")
        return np.full(len(samples.answers), int(k))
    return plan


def by_agreement(mean_k: float, first: int = 3) -> Strategy:
    """`first` samples each; problems whose first samples disagree share the rest of the budget evenly."""
    if isinstance(first, bool) or not isinstance(first, (int, np.integer)) or first < 1:
        raise ValueError(f"by_agreement: first={first!r}; valid: an integer >= 1 (samples before deciding)")

    def plan(samples: Samples, order: np.ndarray) -> np.ndarray:
        k = _check_mean_k(mean_k, samples.n)
        if first > k:
            raise ValueError(f"by_agreement: first={first} is more than mean_k={mean_k}; the budget cannot "
                             "give every problem its first samples")
        p = len(samples.answers)
        seen = [{samples.answers[i][j] for j in order[i, :first]} for i in range(p)]
        split = np.array([len(s) > 1 for s in seen])
        total = int(round(k * p)) - first * p
        return spread(total, np.full(p, first), samples.n, split)
    return plan


def level_plan(curves: Mapping[int, np.ndarray], counts: Mapping[int, int], mean_k: float) -> dict[int, int]:
    """Samples per difficulty level that maximise expected correct answers within mean_k x problems samples.

    `curves[d][k-1]` is the expected accuracy at k samples on level d; `counts[d]` its problems. A dynamic
    programme over levels and the total budget (exact, not greedy: majority curves are not concave).
    """
    levels = sorted(curves)
    budget = int(round(mean_k * sum(counts[d] for d in levels)))
    best = {0: (0.0, {})}  # samples spent -> (expected correct, plan)
    for d in levels:
        nxt: dict[int, tuple[float, dict[int, int]]] = {}
        for spent, (value, plan) in best.items():
            for k, acc in enumerate(curves[d], start=1):
                cost = spent + k * counts[d]
                if cost > budget:
                    break
                v = value + acc * counts[d]
                if cost not in nxt or v > nxt[cost][0] + 1e-12:
                    nxt[cost] = (v, {**plan, d: k})
        best = nxt
    if not best:
        raise ValueError(f"level_plan: mean_k={mean_k} cannot give every level one sample")
    return max(best.values(), key=lambda t: t[0])[1]


def curves_by_level(samples: Samples, aggregator: str = "majority", rows: np.ndarray | None = None) -> dict:
    """Expected accuracy at every k = 1..n per difficulty level (exact over subsets), on `rows` only."""
    rows = np.arange(len(samples.answers)) if rows is None else rows
    values = _curve(samples, aggregator, rows)
    diff = samples.difficulty[rows]
    return {int(d): values[diff == d].mean(0) for d in np.unique(diff)}


def _curve(samples: Samples, aggregator: str, rows: np.ndarray) -> np.ndarray:
    if aggregator not in AGGREGATORS:
        raise ValueError(f"aggregator={aggregator!r}; valid: {', '.join(AGGREGATORS)}")
    if aggregator == "pass":
        return agg.pass_curve(samples.correct[rows])
    return agg.majority_curve([samples.answers[i] for i in rows], samples.correct[rows])


def by_difficulty(mean_k: float, aggregator: str = "majority", folds: int = 2) -> Strategy:
    """One sample count per difficulty level, fitted on the other folds' problems (never on the problem itself)."""
    fitted: list = []  # [samples, ks]: the plan does not depend on the order, so fit once per Samples

    def plan(samples: Samples, order: np.ndarray) -> np.ndarray:
        if fitted and fitted[0] is samples:
            return fitted[1]
        k = _check_mean_k(mean_k, samples.n)
        p = len(samples.answers)
        fold = np.arange(p) % folds
        ks = np.zeros(p, dtype=int)
        for f in range(folds):
            fit, use = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            curves = curves_by_level(samples, aggregator, fit)
            counts = {d: int((samples.difficulty[use] == d).sum()) for d in curves}
            levels = level_plan(curves, counts, k)
            ks[use] = [levels.get(int(d), int(k)) for d in samples.difficulty[use]]
        fitted[:] = [samples, ks]
        return ks
    return plan


def score(samples: Samples, ks: np.ndarray, order: np.ndarray, aggregator: str = "majority") -> np.ndarray:
    """Per-problem accuracy of the aggregator over each problem's first ks[i] samples in `order`.

    Majority: the most frequent answer among them; a tie is split evenly (a correct answer tied with s
    others counts 1/(s+1)), as in explorer.aggregate. Pass: any of them correct (an exact checker).
    """
    out = np.empty(len(ks))
    for i, k in enumerate(ks):
        used = order[i, :k]
        if aggregator == "pass":
            out[i] = float(samples.correct[i, used].any())
            continue
        counts = Counter(samples.answers[i][j] for j in used)
        right = {samples.answers[i][j] for j in used if samples.correct[i, j]}
        top = max(counts.values())
        winners = [a for a, c in counts.items() if c == top]
        out[i] = sum(a in right for a in winners) / len(winners)
    return out


def evaluate(samples, strategy: Strategy, *, aggregator: str = "majority", orders: int = 20,
             seed: int = 0) -> dict[str, np.ndarray]:
    """Per-problem accuracy and samples used, each averaged over `orders` random orders of the draws."""
    samples = Samples.of(samples)
    if aggregator not in AGGREGATORS:
        raise ValueError(f"aggregator={aggregator!r}; valid: {', '.join(AGGREGATORS)}")
    rng = np.random.default_rng(seed)
    p, n = samples.correct.shape
    acc, used, tokens = np.zeros(p), np.zeros(p), np.zeros(p)
    for _ in range(orders):
        order = np.argsort(rng.random((p, n)), axis=1)
        ks = np.asarray(strategy(samples, order), dtype=int)
        acc += score(samples, ks, order, aggregator)
        used += ks
        tokens += [samples.tokens[i, order[i, :k]].sum() for i, k in enumerate(ks)]
    return {"accuracy": acc / orders, "samples": used / orders, "tokens": tokens / orders}


def compare(samples, strategy: Strategy, mean_k: int, *, aggregator: str = "majority", orders: int = 20,
            seed: int = 0) -> dict[str, Any]:
    """`strategy` against uniform `mean_k` on the same problems and orders: paired bootstrap of the gain."""
    samples = Samples.of(samples)
    a = evaluate(samples, strategy, aggregator=aggregator, orders=orders, seed=seed)
    u = evaluate(samples, uniform(mean_k), aggregator=aggregator, orders=orders, seed=seed)
    lo, hi = bootstrap_mean(a["accuracy"] - u["accuracy"], seed=seed)
    return {"accuracy": float(a["accuracy"].mean()), "uniform_accuracy": float(u["accuracy"].mean()),
            "gain": float(a["accuracy"].mean() - u["accuracy"].mean()), "gain_lo": lo, "gain_hi": hi,
            "samples_per_problem": float(a["samples"].mean()), "uniform_samples_per_problem": float(mean_k),
            "tokens_per_problem": float(a["tokens"].mean()), "uniform_tokens_per_problem": float(u["tokens"].mean()),
            "interval": "paired bootstrap95"}


def point(row: Mapping, strategy: Strategy, name: str, *, aggregator: str = "majority", orders: int = 20,
          seed: int = 0) -> dict[str, Any]:
    """A budget-view point for a Sampling row under `strategy`: accuracy (bootstrap interval) and its cost.

    FLOPs per problem are the tokens the plan generates times the row's analytic FLOPs per token, as the
    budget notebook prices a sampled configuration.
    """
    samples = Samples.of(row)
    r = evaluate(samples, strategy, aggregator=aggregator, orders=orders, seed=seed)
    lo, hi = bootstrap_mean(r["accuracy"], seed=seed)
    return {"model": row.get("model"), "task": row.get("task"), "config": name, "kind": "allocated",
            "k": float(r["samples"].mean()), "accuracy": float(r["accuracy"].mean()), "accuracy_lo": lo,
            "accuracy_hi": hi, "flops_per_problem": float(r["tokens"].mean()) * row["flops_per_token_analytic"]}
