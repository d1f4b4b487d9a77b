"""Costs: analytic FLOPs and bytes (named so), measured wall time (median of repeats)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, TypeVar

R = TypeVar("R")


def matmul_params(config) -> int:
    """Weights that take part in a matmul per token: attention, MLP and the LM head."""
    d, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = getattr(config, "num_key_value_heads", heads) or heads
    attn = d * heads * head_dim * 2 + d * kv * head_dim * 2  # q, o and k, v
    mlp = 3 * d * config.intermediate_size  # SwiGLU: gate, up, down
    return layers * (attn + mlp) + d * config.vocab_size


def flops_per_token(config, context: float, layers_run: float | None = None) -> float:
    """Analytic forward FLOPs per token: 2 per matmul weight plus attention over `context`.

    Kaplan et al. (2020): C = 2N + 2 n_layer n_ctx d_attn. `layers_run` lets a
    technique that skips layers count only what ran.
    """
    layers = config.num_hidden_layers
    run = layers if layers_run is None else layers_run
    per_layer = (matmul_params(config) - config.hidden_size * config.vocab_size) / layers
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attn = 2 * 2 * context * config.num_attention_heads * head_dim  # scores and weighted sum
    return 2 * per_layer * run + attn * run + 2 * config.hidden_size * config.vocab_size


def timed(fn: Callable[[], R], repeats: int = 3) -> tuple[R, float, list[float]]:
    """Run `fn` `repeats` times; return its first result, the median seconds and all timings."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r}; must be at least 1")
    result, timings = None, []
    for i in range(repeats):
        t = time.perf_counter()
        r = fn()
        timings.append(time.perf_counter() - t)
        if i == 0:
            result = r
    # Median, not mean: the first call pays for warm-up and one noisy neighbour skews a mean.
    return result, statistics.median(timings), timings
