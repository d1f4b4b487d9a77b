"""Intervals that stay honest at the edges."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a proportion.

    Used for accuracy because a bootstrap of 0/50 or 50/50 collapses to zero
    width, claiming a certainty that 50 problems cannot give.
    """
    from scipy.stats import binomtest

    if n == 0:
        return (math.nan, math.nan)
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def bootstrap_mean(values: Sequence[float], *, seed: int = 0, confidence: float = CONFIDENCE,
                   resamples: int = 2000) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean (for continuous metrics such as bits per char)."""
    from scipy.stats import bootstrap

    arr = np.asarray(values, dtype=float)
    if arr.size < 2 or np.all(arr == arr[0]):
        return (float(arr.mean()), float(arr.mean())) if arr.size else (math.nan, math.nan)
    res = bootstrap((arr,), np.mean, confidence_level=confidence, n_resamples=resamples,
                    method="percentile", rng=np.random.default_rng(seed))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


ALPHA = 0.05  # two-sided significance level of problems_needed


def problems_needed(delta: float, p: float, power: float = 0.8, *, alpha: float = ALPHA) -> int:
    """Problems per configuration to tell accuracy `p` from `p + delta` (two-proportion power calculation).

    The classic normal-approximation sample size for comparing two independent
    proportions p1 = p and p2 = p + delta with a two-sided z-test at level `alpha`
    (default 0.05) and the given `power` (Fleiss, *Statistical Methods for Rates and
    Proportions*, eq. 4.14, without continuity correction):

        n = ( z_{1-alpha/2} * sqrt(2 * pbar * (1 - pbar))
              + z_{power}   * sqrt(p1 * (1 - p1) + p2 * (1 - p2)) )**2 / delta**2,
        pbar = (p1 + p2) / 2,

    rounded up. Both configurations answer n problems each. When they answer the
    *same* problems, paired (McNemar) tests need fewer wherever their errors
    coincide, so this is the conservative count. Example: 0.70 vs 0.75 needs 1,251 each.
    """
    from scipy.stats import norm

    def bad(name, value, valid):
        raise ValueError(f"problems_needed: {name}={value!r}; valid: {valid}")

    for name, v in (("delta", delta), ("p", p), ("power", power), ("alpha", alpha)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or math.isnan(v):
            bad(name, v, "a number")
    if not 0 < p < 1:
        bad("p", p, "an accuracy strictly between 0 and 1")
    if delta == 0 or not 0 <= p + delta <= 1:
        bad("delta", delta, f"a non-zero difference with p + delta between 0 and 1 (p={p})")
    if not 0 < power < 1:
        bad("power", power, "a probability strictly between 0 and 1, such as 0.8")
    if not 0 < alpha < 1:
        bad("alpha", alpha, "a significance level strictly between 0 and 1, such as 0.05")
    p1, p2 = float(p), float(p + delta)
    pbar = (p1 + p2) / 2
    z_a, z_b = norm.ppf(1 - alpha / 2), norm.ppf(power)
    n = (z_a * math.sqrt(2 * pbar * (1 - pbar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / delta**2
    return int(math.ceil(n - 1e-9))
