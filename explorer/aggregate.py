"""Aggregators over n stored samples per problem, for every k <= n, without drawing again.

Each aggregator is the exact expectation over all C(n, k) subsets of k samples
drawn without replacement from a problem's n samples, so a k-slider reads a
smooth, seed-free curve and pass@k agrees with Chen et al. (2021):

- pass@k: some sample in the subset is correct (coverage with a perfect verifier);
- majority@k: the most frequent answer in the subset is correct (self-consistency,
  Wang et al. 2023). A tie between answers is broken uniformly at random, so a
  correct answer tied with s others counts 1/(s+1);
- best-of-k: the subset's top sample under a ranking is correct. Ranked by the
  model's mean log-probability, or by a simulated imperfect verifier (accepted
  samples first, then mean log-probability). Equal scores go to the earlier draw.

Arrays are (problems, n): one row per problem, one column per sample.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.special import comb, gammaln

# Exact subset counts are float64; C(1024, 512) ~ 4.5e306 is the last that fits.
MAX_SAMPLES = 1024


def check_ks(ks: Sequence[int] | int | None, n: int) -> list[int]:
    """The k values to report: every 1..n by default; each must be an integer in 1..n."""
    if ks is None:
        return list(range(1, n + 1))
    ks = [ks] if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool) else list(ks)
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
            raise ValueError(f"k={k!r}; valid k are integers 1..n={n} (the samples drawn per problem)")
    return [int(k) for k in ks]


def pass_at_k(n, c, k):
    """Chen et al. (2021) unbiased pass@k: 1 - C(n-c, k) / C(n, k).

    n samples, c of them correct, k drawn. Works on scalars or broadcastable arrays.
    Uses the paper's product form, 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never
    forms a large binomial.
    """
    n, c, k = np.broadcast_arrays(np.asarray(n), np.asarray(c), np.asarray(k))
    if np.any((n < 1) | (c < 0) | (c > n)):
        raise ValueError(f"pass_at_k(n={n.tolist()!r}, c={c.tolist()!r}); need n >= 1 and 0 <= c <= n")
    if np.any((k < 1) | (k > n)):
        raise ValueError(f"k={k.tolist()!r}; valid k are integers 1..n={n.tolist()!r}")
    out = np.empty(n.shape, dtype=float)
    for idx in np.ndindex(n.shape):
        nn, cc, kk = int(n[idx]), int(c[idx]), int(k[idx])
        out[idx] = 1.0 if nn - cc < kk else 1.0 - float(np.prod(1.0 - kk / np.arange(nn - cc + 1, nn + 1)))
    return float(out) if out.ndim == 0 else out


def pass_curve(correct: np.ndarray, ks: Sequence[int] | None = None) -> np.ndarray:
    """Per-problem pass@k, shape (problems, len(ks))."""
    correct = np.asarray(correct, dtype=bool)
    n = correct.shape[1]
    ks = check_ks(ks, n)
    c = correct.sum(1, keepdims=True)
    # C(n-c, k)/C(n, k) = prod_{i<k} (n-c-i)/(n-i): one cumulative product gives every k.
    i = np.arange(n)
    miss = np.cumprod(np.clip((n - c - i) / (n - i), 0.0, None), axis=1)
    return 1.0 - miss[:, [k - 1 for k in ks]]


def top_weights(n: int, ks: Sequence[int]) -> np.ndarray:
    """W[r, j]: probability that the sample ranked r (0 = best) tops a random ks[j]-subset.

    It is C(n-1-r, k-1) / C(n, k): r is drawn and the other k-1 come from below it.
    """
    r = np.arange(n)[:, None]
    k = np.asarray(ks)[None, :]
    ok = n - 1 - r >= k - 1
    below = np.where(ok, n - 1 - r, k - 1)  # placeholder where impossible, masked below
    log_w = (gammaln(below + 1) - gammaln(k) - gammaln(below - k + 2)
             - gammaln(n + 1) + gammaln(k + 1) + gammaln(n - k + 1))
    return np.where(ok, np.exp(log_w), 0.0)


def best_of_curve(correct: np.ndarray, score: np.ndarray, ks: Sequence[int] | None = None,
                  first: np.ndarray | None = None) -> np.ndarray:
    """Per-problem best-of-k: is the subset's highest-ranked sample correct?

    Ranking: `first` (True before False) if given, then `score` descending, then
    draw order, so the result is deterministic.
    """
    correct = np.asarray(correct, dtype=bool)
    score = np.asarray(score, dtype=float)
    n = correct.shape[1]
    ks = check_ks(ks, n)
    keys = [np.broadcast_to(np.arange(n), correct.shape), -score]
    if first is not None:
        keys.append(~np.asarray(first, dtype=bool))
    order = np.lexsort(keys, axis=1)  # last key is primary
    ranked = np.take_along_axis(correct, order, axis=1).astype(float)
    return ranked @ top_weights(n, ks)


def simulate_verifier(correct: np.ndarray, fpr: float, fnr: float, seed: int) -> np.ndarray:
    """Seeded verdicts of an imperfect verifier: accepts a wrong sample with probability
    `fpr`, rejects a right one with probability `fnr`.

    One uniform draw per sample serves every rate, so at a fixed seed raising `fpr`
    only adds accepted wrong samples: a rate slider moves the curve monotonically.
    """
    for name, v in (("fpr", fpr), ("fnr", fnr)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}={v!r}; a verifier error rate must lie in [0, 1]")
    correct = np.asarray(correct, dtype=bool)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}; give a non-negative integer such as 0")
    u = np.random.default_rng(seed).random(correct.shape)
    return np.where(correct, u >= fnr, u < fpr)


def majority_curve(answers: Sequence[Sequence[str]], correct: np.ndarray,
                   ks: Sequence[int] | None = None) -> np.ndarray:
    """Per-problem expected majority-vote accuracy over random k-subsets (ties split evenly)."""
    correct = np.asarray(correct, dtype=bool)
    n = correct.shape[1]
    ks = check_ks(ks, n)
    if n > MAX_SAMPLES:
        raise ValueError(f"n={n} samples per problem; exact majority supports up to {MAX_SAMPLES}")
    binom = comb(np.arange(n + 1)[:, None], np.arange(n + 1)[None, :])  # binom[a, b] = C(a, b), once
    total = binom[n]
    out = np.empty((correct.shape[0], len(ks)))
    for p, (ans, ok) in enumerate(zip(answers, correct)):
        counts, right = answer_classes(ans, ok)
        wins = sum((majority_wins(counts[c], np.delete(counts, c), binom) for c in np.flatnonzero(right)),
                   np.zeros(n + 1))
        out[p] = wins[ks] / total[ks]
    return out


def answer_classes(answers: Sequence[str], correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vote counts per distinct answer and whether that answer is correct."""
    keys, inverse = np.unique(np.asarray(answers, dtype=object).astype(str), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(keys))
    right = np.zeros(len(keys), dtype=bool)
    np.logical_or.at(right, inverse, correct)
    wrong = np.zeros(len(keys), dtype=bool)
    np.logical_or.at(wrong, inverse, ~correct)
    if np.any(right & wrong):
        raise ValueError(f"answer {keys[right & wrong][0]!r} is marked both correct and wrong; "
                         "a verdict must be a function of the answer for majority vote")
    return counts, right


def majority_wins(m: int, others: np.ndarray, binom: np.ndarray) -> np.ndarray:
    """wins[k]: k-subsets in which one class of `m` votes wins, ties counted 1/(s+1).

    Hand-written (no library computes this): for each vote count t of the class,
    a generating function in x (subset size) and y (classes tied at t) counts the
    ways the other classes stay at or below t.
    """
    n = binom.shape[0] - 1
    wins = np.zeros(n + 1)
    size = int(others.sum()) + 1  # the others can fill at most this many - 1 places
    lag = np.subtract.outer(np.arange(size), np.arange(size))
    lag = np.where(lag >= 0, lag, size)  # size: beyond every t, so masked out below
    for t in range(1, m + 1):
        small = int(others[others < t].sum())
        big = others[others >= t]
        # Classes below t can never tie or win: together they contribute (1+x)^small.
        # At most (size-1)//t classes can tie at t, which bounds the y axis.
        poly = np.zeros((size, min(len(big), (size - 1) // t) + 1))
        poly[: small + 1, 0] = binom[small, : small + 1]
        for mj in big:
            # x^i for i < t (stays below t) as a Toeplitz matrix product, then x^t y (ties at t).
            if t == 1:  # the commonest case (many one-vote answers); the product is the identity
                new = poly.copy()
            else:
                new = np.where(lag < t, binom[mj, np.minimum(lag, t)], 0.0) @ poly
            new[t:, 1:] += binom[mj, t] * poly[: size - t, :-1]
            poly = new
        ways = poly @ (1.0 / np.arange(1, poly.shape[1] + 1))
        j = min(size, n + 1 - t)
        wins[t : t + j] += binom[m, t] * ways[:j]
    return wins
