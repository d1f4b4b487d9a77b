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
