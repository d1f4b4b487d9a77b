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


# ---------------------------------------------------------------- memory traffic (Kinetics)

def kv_bytes_per_position(config, kv_elem_bytes: float | None = None) -> float:
    """Bytes of K and V cached per context position, all layers: 2 x layers x kv_heads x head_dim x elem."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv = getattr(config, "num_key_value_heads", heads) or heads
    elem = dtype_bytes(config) if kv_elem_bytes is None else kv_elem_bytes
    return 2 * config.num_hidden_layers * kv * head_dim * elem


def dtype_bytes(config) -> int:
    """Bytes per element of the model's activations (and so of its KV cache); float32 when unsaid."""
    import torch

    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            return 4
    return torch.empty((), dtype=dtype).element_size()


def bytes_moved_per_token(config, context: float, *, batch: float = 1, weight_bytes: float | None = None,
                          params: float | None = None, kv_elem_bytes: float | None = None) -> float:
    """Analytic bytes read from memory per generated token: weights shared by the batch, plus KV cache.

    Kinetics (Sadhukhan et al. 2025, "Rethinking Test-Time Scaling Laws"): a decode step reads every
    matmul weight once for the whole batch, and each sequence reads its own KV cache of `context`
    positions. Per token:

        bytes = W / batch + context x kv_bytes_per_position

    W is the matmul weights (attention, MLP, LM head; the embedding lookup reads one row and is left
    out) at the variant's bytes per weight, `weight_bytes / params` when both are given (a quantized
    variant moves fewer), else the config's dtype. FLOPs grow with params (d^2 per layer) but the KV
    cache only with layers x width, so at large batch, where W is amortised and the KV term dominates,
    a small model pays relatively more than its FLOPs suggest.
    """
    for name, v in (("context", context), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= (1 if name == "batch" else 0):
            raise ValueError(f"bytes_moved_per_token: {name}={v!r}; valid: a number >= {1 if name == 'batch' else 0}")
    per_weight = weight_bytes / params if weight_bytes and params else dtype_bytes(config)
    weights = matmul_params(config) * per_weight
    return weights / batch + context * kv_bytes_per_position(config, kv_elem_bytes)


LIKELIHOOD_CONTEXT = 32  # runs.likelihood scores 64-token windows: half a window of context on average


def bytes_moved_columns(model, row: dict, *, examples=None, batch_size: int = 64) -> dict:
    """A row's analytic memory traffic, at the batch and context the run decoded with.

    - `bytes_moved_per_token_analytic`: `bytes_moved_per_token` at the run's mean rows per
      generate call (`decode_batch`) and mean context (prompt + half the answer, as for FLOPs);
    - `bytes_moved_per_problem_analytic`: that times the tokens generated per problem, every
      sample counted (k samples of one problem share each weight read through the batch).

    Priced as plain autoregressive decoding of the model (a speculative row: its target alone;
    an early-exit row: every layer). A likelihood row scores whole windows in one pass per batch,
    so its weights are shared by every scored token, and it has no per-problem cost.
    """
    config = model.hf.config
    weights = {"weight_bytes": model.facts.weight_bytes, "params": model.facts.params}
    n = row["n_examples"]
    if examples is None:  # likelihood: two forward calls score every window
        batch = max(row.get("tokens_scored", 1) / 2, 1)
        per_token = bytes_moved_per_token(config, LIKELIHOOD_CONTEXT, batch=batch, **weights)
        return {"decode_batch": batch, "bytes_moved_per_token_analytic": per_token}
    drawn = row.get("samples_drawn", n)
    calls = row.get("generate_calls") or -(-n // batch_size)
    batch = max(drawn / calls, 1)
    tokens = row.get("tokens_generated", 0)
    prompt = row.get("prompt_tokens_mean")
    if prompt is None:
        prompt = sum(len(model.tokenizer(e.prompt)["input_ids"]) for e in examples) / len(examples)
    context = prompt + tokens / max(drawn, 1) / 2
    per_token = bytes_moved_per_token(config, context, batch=batch, **weights)
    return {"decode_batch": batch, "bytes_moved_per_token_analytic": per_token,
            "bytes_moved_per_problem_analytic": per_token * tokens / n}
