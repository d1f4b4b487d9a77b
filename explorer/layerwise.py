"""Run a causal LM one decoder layer at a time, so a token can leave early.

`ExitingModel` wraps a Llama-style transformers model and is called exactly
like one by the shared decoding loop (`explorer.generate.generate`), so early
exit adds no second copy of that loop. Its forward:

- prefills every prompt position but the last through the untouched model;
- decodes each new position layer by layer. After each layer from the first
  allowed one, the shared final norm and LM head read the hidden state and the
  exit rule decides, per row, whether the token leaves. Rows that left are not
  run through the layers above: a layer is called on the rows still running only.

Skipped layers still need this position's keys and values, or later tokens
could not attend to it. We use CALM's state propagation (Schuster et al. 2022,
section 3.2): the exit layer's hidden state is copied upward and each skipped
layer computes only its key and value projections from it (input norm, K and V
matmuls, rotary), no query, attention, output projection or MLP. On the zoo's
Llama shape (MLP 8/3 of the width) that is 1/6 of a layer's matmul FLOPs.
Because every skipped layer reads the same frozen state, all of them are filled
at once: one RMS normalisation, one small matmul per layer against its K and V
weights (pre-multiplied by that layer's norm weight, `KVFill`), one rotary.
And since no row reads another row's keys, the fill waits for the end of the
step and serves every row that exited in it: ordered by exit layer, the rows a
layer owes are a prefix, so each layer's matmul takes exactly those (what the
FLOPs count charges; `ExitStats.fill_rows` counts them). At these sizes time
goes to per-operation overhead and weight reads more than to arithmetic, so
one fill per step instead of one per exit is what lets the time saved follow
the FLOPs saved. Its time is measured (`kv_fill_s`).

Rows whose input is the end-of-sequence token have finished (the shared loop
feeds them that token after they stop) and are not run at all.

Each decode layer call runs as plain tensor operations (`FastLayer`): one fused
Q/K/V matmul, one fused gate/up matmul, SDPA, no module dispatch. A layer called
on a few rows costs mostly fixed overhead, and early exit calls deep layers on few
rows: transformers' decoder layer spent about 130 us per call here beyond its
arithmetic, which at batch 64 kept the wall-clock saving at about half the FLOPs
saving. Its outputs equal the transformers layer's (tested); a model whose
projections are not plain Linear (a quantized kernel) runs transformers' layer.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field

import torch

CRITERIA = ("max_prob", "entropy", "agreement")


@dataclass(frozen=True)
class ExitRule:
    """When a token leaves: `criterion` against `threshold`, never before layer `min_layers`.

    - max_prob: leave when the top-1 probability is > threshold (1.0 never leaves, 0.0 always);
    - entropy: leave when the entropy of the prediction, in nats, is < threshold (0 never leaves);
    - agreement: leave when the top-1 token has stayed the same for `threshold` consecutive
      layers after the one that first predicted it (patience, Zhou et al. 2020, PABEE).
    """

    criterion: str
    threshold: float
    min_layers: int

    def first_head(self) -> int:
        """The first layer (1-based) whose prediction is read."""
        if self.criterion == "agreement":
            # Read earlier layers so that agreement can already hold at min_layers.
            return max(1, self.min_layers - int(min(self.threshold, 1 << 20)))
        return self.min_layers

    def leave(self, logits: torch.Tensor, streak: torch.Tensor) -> torch.Tensor:
        """Which rows leave, given their logits (rows, vocab) and agreement streaks (rows,)."""
        if self.criterion == "max_prob":
            return logits.float().softmax(-1).amax(-1) > self.threshold
        if self.criterion == "entropy":
            lp = logits.float().log_softmax(-1)
            entropy = -(lp.exp() * lp).sum(-1)
            return entropy.clamp(min=0) < self.threshold  # clamp: rounding can dip a certain token below 0
        return streak >= self.threshold


@dataclass
class ExitStats:
    """What one call of `ExitingModel` decoded: per step, the exit layer of every row (0: not run)."""

    steps: list[torch.Tensor] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    kv_fill_s: float = 0.0
    layer_rows: list[int] = field(default_factory=list)  # per layer: rows it ran on, summed over decode steps
    fill_rows: list[int] = field(default_factory=list)  # per layer: rows whose K/V the fill computed there
    head_rows: int = 0  # rows the LM head read, summed over layers and steps
    decode_s: float = 0.0  # every call: the prompt's prefill and every position decoded
    first_s: float = 0.0  # the first call: the prefill and the first generated token
    decode_cpu_s: float = 0.0  # the same two in this thread's CPU time (robust to a loaded machine)
    first_cpu_s: float = 0.0

    def per_row(self) -> list[list[int]]:
        """Exit layer of each token each row decoded, in order (end-of-sequence included)."""
        if not self.steps:
            return [[] for _ in self.prompt_tokens]
        table = torch.stack(self.steps, 1).tolist()
        return [[e for e in row if e > 0] for row in table]


class KVCache:
    """Keys and values, one preallocated (batch, kv heads, capacity, head dim) buffer per layer.

    Each step writes one new column (position `length`) per layer: a layer that
    runs writes its running rows' keys and values (`append`) and attends over
    the columns so far; the K/V fill writes the rows that exited below it
    (`write`); `close` moves to the next position. Nothing is copied per step
    for a layer no row runs, so the cache's cost follows the rows that run (a
    concatenation per layer and step, as transformers' DynamicCache does,
    copied every row's cache at every layer: at batch 64 that was a tenth of a
    step and early exit saved none of it). All rows running attend over a
    strided view of the buffer; a subset gathers its rows (contiguous). The
    buffers double when full.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], spare: int = 32):
        b, h, t, d = keys[0].shape
        self.length = t
        self.keys = [self._buffer(k, t + spare) for k in keys]
        self.values = [self._buffer(v, t + spare) for v in values]

    @staticmethod
    def _buffer(x: torch.Tensor, capacity: int) -> torch.Tensor:
        b, h, t, d = x.shape
        # Uninitialised beyond t: a live row's column is written (by its layer or the fill) before it
        # is read; a finished row's is never read again.
        buf = x.new_empty(b, h, capacity, d)
        buf[:, :, :t] = x
        return buf

    def open(self) -> None:
        capacity = self.keys[0].shape[2]
        if self.length + 1 > capacity:
            self.keys = [self._buffer(k[:, :, : self.length], 2 * capacity) for k in self.keys]
            self.values = [self._buffer(v[:, :, : self.length], 2 * capacity) for v in self.values]

    def append(self, layer: int, rows: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor):
        """Write the running rows' keys and values (rows, heads, 1, head dim) at this layer; return
        theirs over every position so far."""
        t = self.length
        kb, vb = self.keys[layer], self.values[layer]
        if rows is None:
            kb[:, :, t] = k[:, :, 0]
            vb[:, :, t] = v[:, :, 0]
            return kb[:, :, : t + 1], vb[:, :, : t + 1]
        # index_copy_/index_select rather than advanced indexing: the same copies, a third of the
        # time on these shapes (a subset's gather was most of a deep layer's per-row cost).
        kb[:, :, t].index_copy_(0, rows, k[:, :, 0])
        vb[:, :, t].index_copy_(0, rows, v[:, :, 0])
        return kb[:, :, : t + 1].index_select(0, rows), vb[:, :, : t + 1].index_select(0, rows)

    def write(self, layer: int, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """The fill: keys and values (rows, heads, head dim) of rows that did not run this layer."""
        self.keys[layer][:, :, self.length].index_copy_(0, rows, k)
        self.values[layer][:, :, self.length].index_copy_(0, rows, v)

    def close(self) -> None:
        self.length += 1

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length


class KVFill:
    """Every layer's key and value projection, with its input RMSNorm weight folded in.

    RMSNorm is w * x / rms(x), so layer j's keys of a frozen state x are
    (W_k,j diag(w_j)) (x / rms(x)): one normalisation serves all layers, and one
    matmul against the stacked folded weights (layers, 2 * kv width, width)
    gives every skipped layer's keys and values. Costs a copy of the K and V
    weights (1/6 of a zoo layer's).
    """

    def __init__(self, hf):
        layers = list(hf.model.layers)
        folded = [torch.cat([layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight])
                  * layer.input_layernorm.weight for layer in layers]
        self.weight = torch.stack(folded).detach()  # (layers, 2 kv width, width)
        bias = [layer.self_attn.k_proj.bias for layer in layers]
        self.bias = (None if bias[0] is None else torch.stack(
            [torch.cat([layer.self_attn.k_proj.bias, layer.self_attn.v_proj.bias]) for layer in layers]).detach())
        self.eps = layers[0].input_layernorm.variance_epsilon
        self.head_dim = layers[0].self_attn.head_dim
        # Per layer, the faster kernel for the rows it owes (oneDNN's packed weights from a few rows).
        self.project = [Projection(w, None if self.bias is None else b)
                        for w, b in zip(self.weight, self.weight if self.bias is None else self.bias)]
        self.index = torch.arange(64)  # each flat row's state: cat of prefixes of this

    def __call__(self, x: torch.Tensor, first: int, counts: list[int], cos, sin,
                 signed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer `first + i` for the first `counts[i]` frozen states of x (rows, width).

        Flat (sum of counts, kv heads, head dim), layer after layer. The rows come
        ordered by exit layer, lowest first, so the rows a layer owes are a prefix:
        each layer's matmul takes only them (what the FLOPs count charges), no gather.
        cos, sin: (rows, head dim); signed: sin comes from `signed_sin` (rotary by roll).
        """
        xf = x.float()
        n = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        kv = torch.cat([self.project[j](n[:m]) for j, m in enumerate(counts, start=first)])
        k, v = kv.unflatten(-1, (-1, self.head_dim)).chunk(2, dim=1)
        if counts[-1] > len(self.index):
            self.index = torch.arange(counts[-1])
        at = torch.cat([self.index[:m] for m in counts])  # each flat row's state
        return rotary(k, cos[at, None], sin[at, None], signed), v  # as LlamaAttention does


class RowsView:
    """What a decoder layer sees as its cache: the rows `rows` (None: all) of the open column.

    The layer's attention calls `update(k, v, layer_idx)` with the new
    position's keys and values and attends over what it returns.
    """

    def __init__(self, cache: KVCache, rows: torch.Tensor | None):
        self.cache, self.rows = cache, rows

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.cache.append(layer_idx, self.rows, key_states, value_states)


@dataclass
class Output:
    logits: torch.Tensor  # (batch, 1, vocab): the exit layer's prediction
    cache: KVCache


def check_supported(hf) -> None:
    """Early exit needs a Llama-style stack: decoder layers, shared final norm, rotary, LM head."""
    inner = getattr(hf, "model", None)
    layers = getattr(inner, "layers", None)
    ok = (layers is not None and len(layers) > 0 and hasattr(inner, "norm") and hasattr(inner, "rotary_emb")
          and hasattr(hf, "lm_head") and all(hasattr(layer, "input_layernorm") and hasattr(layer, "self_attn")
                                             and hasattr(layer.self_attn, "k_proj")
                                             and not hasattr(layer.self_attn, "k_norm") for layer in layers))
    if not ok:
        raise ValueError(f"early exit supports Llama-style models (model.layers[i].self_attn.k_proj/v_proj, "
                         f"model.norm, model.rotary_emb, lm_head); got {type(hf).__name__}")


class ExitingModel:
    """A causal LM whose decode positions leave at the first layer that meets `rule`.

    Called like the wrapped transformers model by `explorer.generate.generate`
    (`input_ids`, `attention_mask`, `position_ids`, `cache`); returns `.logits`
    and `.cache`. `stats` collects every position's exit layer.
    """

    def __init__(self, hf, rule: ExitRule, eos_token_id: int | None):
        check_supported(hf)
        depth = hf.config.num_hidden_layers
        if rule.min_layers > depth:
            raise ValueError(f"EarlyExit.min_layers={rule.min_layers}; this model has {depth} layers, "
                             f"so valid is 1..{depth}")
        self.hf, self.rule, self.eos = hf, rule, eos_token_id
        self.config = hf.config
        self.layers = list(hf.model.layers)
        self.kv = per_weights(_FILLS, hf, kv_fill)
        self.fast = per_weights(_FAST, hf, native_fast_layers)  # None: transformers' own layers
        self.stats = ExitStats(layer_rows=[0] * depth, fill_rows=[0] * depth)

    @torch.inference_mode()
    def __call__(self, *, input_ids, attention_mask, position_ids, cache=None, **_) -> Output:
        start, cpu, first = time.perf_counter(), time.thread_time(), cache is None
        if first:
            cache = self.prefill(input_ids, attention_mask, position_ids)
            live = torch.ones(input_ids.shape[0], dtype=torch.bool)
            input_ids, position_ids = input_ids[:, -1:], position_ids[:, -1:]
        else:
            live = input_ids[:, 0] != self.eos  # finished rows: the loop feeds them end-of-sequence
        logits = self.step(input_ids, attention_mask, position_ids, cache, live)
        took, took_cpu = time.perf_counter() - start, time.thread_time() - cpu
        self.stats.decode_s += took
        self.stats.first_s += took if first else 0.0
        self.stats.decode_cpu_s += took_cpu
        self.stats.first_cpu_s += took_cpu if first else 0.0
        return Output(logits[:, None], cache)

    def prefill(self, ids, mask, pos) -> KVCache:
        """All prompt positions but the last, through the full model (every layer fills its K/V)."""
        self.stats.prompt_tokens = mask.sum(-1).tolist()
        if ids.shape[1] > 1:
            out = self.hf.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                                use_cache=True)
            return KVCache([c.keys for c in out.cache.layers], [c.values for c in out.cache.layers])
        c = self.config
        heads = c.num_key_value_heads or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        empty = [self.hf.lm_head.weight.new_empty(ids.shape[0], heads, 0, head_dim) for _ in self.layers]
        return KVCache(empty, list(empty))

    def step(self, ids, mask, pos, cache: KVCache, live: torch.Tensor) -> torch.Tensor:
        """One new position per row, layer by layer; returns each row's exit logits (batch, vocab).

        The running rows' states are kept compact (only they are passed to a
        layer) and shrink when rows leave, so a layer never touches a row that left.
        """
        inner, depth = self.hf.model, len(self.layers)
        t, batch = cache.length, ids.shape[0]
        cache.open()
        h = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(h, position_ids=pos)
        if self.fast is not None:  # the fused layers' `native` rotary: (rows, 1, 1, head dim), sin signed
            cos, sin = cos[:, None], signed_sin(sin)[:, None]
        # One query per row: causal is just "not padding". Without padding, no mask at
        # all, which lets SDPA take its fastest kernel (as transformers does).
        allowed = None if bool(mask[:, : t + 1].all()) else mask[:, None, None, : t + 1].bool()
        exit_at = torch.zeros(batch, dtype=torch.long)
        out_logits = torch.zeros(batch, self.config.vocab_size, dtype=h.dtype)
        rows = None if bool(live.all()) else live.nonzero()[:, 0]  # None: every row, uncompacted
        # Positions only for transformers' layers; the fused ones take cos/sin.
        run = State(h, cos, sin, pos if self.fast is None else None, allowed).take(rows)
        top = streak = None
        if self.rule.criterion == "agreement":
            top = torch.full((run.h.shape[0],), -1, dtype=torch.long)
            streak = torch.zeros_like(top)
        first = self.rule.first_head()
        pending = []  # exits of this step whose upper layers' keys and values are still owed
        for i, layer in enumerate(self.layers):
            running = run.h.shape[0]
            if running == 0:
                break
            view = RowsView(cache, rows)
            if self.fast is not None:
                run.h = self.fast[i](run.h, run.cos, run.sin, run.mask, view)
            else:
                run.h = layer(run.h, attention_mask=run.mask, position_embeddings=(run.cos, run.sin),
                              position_ids=run.pos, cache=view, use_cache=True)
            self.stats.layer_rows[i] += running
            if i + 1 < first:
                continue
            logits = self.head(run.h[:, 0])
            self.stats.head_rows += running
            go, top, streak = self.decide(i + 1, logits, top, streak)
            leaving = 0 if go is None else int(go.sum())
            if leaving == 0:
                continue
            if leaving == running:  # everyone left: nothing to compact
                gone, left, staying = (torch.arange(batch) if rows is None else rows), run, None
            else:
                # One stable permutation, staying rows first (each group in row order), and one
                # gather per tensor serve both groups: what stays runs on, what left is kept for the fill.
                order = torch.argsort(go, stable=True)
                moved = order if rows is None else rows.index_select(0, order)
                keep = running - leaving
                run = run.take(order)
                gone, left, rows = moved[keep:], run.part(keep, None), moved[:keep]
                logits, staying = logits.index_select(0, order[keep:]), order[:keep]
                run = run.part(0, keep)
            out_logits.index_copy_(0, gone, logits)
            exit_at.index_fill_(0, gone, i + 1)
            if i + 1 < depth:
                pending.append((gone, left.h[:, 0], left.cos, left.sin, i + 1))
            if staying is None:
                break
            if top is not None:
                top, streak = top[staying], streak[staying]
        if pending:
            self.fill(pending, cache)
        cache.close()
        self.stats.steps.append(exit_at)
        return out_logits

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The shared final norm and LM head on states (rows, width): as plain tensor operations
        when the layers run fused and the head is a plain Linear (a module call costs more than
        this arithmetic), else the model's own modules."""
        inner = self.hf.model
        if self.fast is None or type(self.hf.lm_head) is not torch.nn.Linear or not hasattr(
                inner.norm, "variance_epsilon"):
            return self.hf.lm_head(inner.norm(h))
        return torch.nn.functional.linear(native_rms_norm(h, inner.norm.weight, inner.norm.variance_epsilon),
                                          self.hf.lm_head.weight, self.hf.lm_head.bias)

    def decide(self, layer: int, logits, top, streak):
        """Which running rows leave after `layer` (None: none may yet), and the agreement state."""
        if self.rule.criterion == "agreement":
            streak, top = agree(logits, top, streak)
        if layer == len(self.layers):
            return torch.ones(logits.shape[0], dtype=torch.bool), top, streak
        if layer < self.rule.min_layers:
            return None, top, streak
        return self.rule.leave(logits, streak), top, streak

    def fill(self, pending: list, cache: KVCache) -> None:
        """CALM state propagation, once per step: each exited row's keys and values above its exit layer.

        `pending` holds, per exit event of this step in layer order, (rows, their
        exit states, cos, sin, first layer to fill). A row's position is never
        read by another row, so the fill can wait until every running row has
        finished the step. Then the exited rows, lowest exit first, are one
        block: layer j owes the rows that left below it, a prefix of the block,
        and gets exactly those (one small matmul per layer, one normalisation and
        one rotary for all), so the fill computes what the FLOPs count charges.
        """
        start = time.perf_counter()
        rows = torch.cat([p[0] for p in pending])
        x, cos, sin = (torch.cat([p[k] for p in pending]) for k in (1, 2, 3))
        cos, sin = cos.reshape(x.shape[0], -1), sin.reshape(x.shape[0], -1)  # (rows, head dim)
        signed = self.fast is not None  # sin from `signed_sin`, as the fused layers take it
        first, depth = pending[0][4], len(self.layers)
        sizes = [(p[4], len(p[0])) for p in pending]
        counts = [sum(m for e, m in sizes if e <= j) for j in range(first, depth)]  # rows owed per layer
        if self.kv is not None:
            k, v = self.kv(x, first, counts, cos, sin, signed)  # flat, layer after layer
        at = 0
        for j, m in enumerate(counts, start=first):
            if self.kv is not None:
                kj, vj = k[at : at + m], v[at : at + m]
                at += m
            else:  # projections that are not plain Linear (a quantized kernel): this layer's own modules
                attn = self.layers[j].self_attn
                xn = self.layers[j].input_layernorm(x[:m, None])
                kj = attn.k_proj(xn).unflatten(-1, (-1, attn.head_dim))[:, 0]  # (rows, kv heads, head dim)
                kj = rotary(kj, cos[:m, None], sin[:m, None], signed)
                vj = attn.v_proj(xn).unflatten(-1, (-1, attn.head_dim))[:, 0]
            cache.write(j, rows[:m], kj, vj)
            self.stats.fill_rows[j] += m
        self.stats.kv_fill_s += time.perf_counter() - start


@dataclass
class State:
    """The running rows' hidden states and what their layers need, compacted to those rows."""

    h: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    pos: torch.Tensor
    mask: torch.Tensor | None

    def take(self, idx: torch.Tensor | None) -> "State":
        if idx is None:
            return self
        return State(*(None if x is None else x.index_select(0, idx) for x in vars(self).values()))

    def part(self, start: int, stop: int | None) -> "State":
        """Rows start..stop (views, no copy)."""
        return State(*(None if x is None else x[start:stop] for x in vars(self).values()))


# A matmul of at least this many rows goes through oneDNN (`Projection`); fewer, through F.linear.
# Measured here (AMD Zen 5, one thread, fp32, weights 576x192, 1024x192, 192x512): F.linear (MKL)
# at 1 row 6.8 / 11.7 / 5.5 us, 2 rows 12.5 / 20.2 / 9.5; oneDNN 14.5 / 18.0 / 13.9 and
# 14.8 / 19.3 / 14.2; at 4 rows MKL 16.8 / 32.9 / 14.8 against oneDNN 14.9 / 20.7 / 13.8.
ONEDNN_MIN_ROWS = 3


def _onednn_pack(weight: torch.Tensor) -> torch.Tensor | None:
    """`weight` reordered once into oneDNN's blocked layout for its linear kernel; None where that
    kernel is missing (a torch built without oneDNN) or the dtype is not float32."""
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        x = torch.zeros(ONEDNN_MIN_ROWS, weight.shape[1])
        torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")  # runs here, or None
    except (AttributeError, RuntimeError):
        return None
    return packed


class Projection:
    """x @ weight.T (+ bias) for float32 weights, through the faster of two CPU kernels for the rows.

    On this CPU (AMD Zen 5) torch's F.linear runs MKL's float32 GEMM on an AVX2-class path
    (~105 GFLOP/s at one thread) whose cost grows with every row from the first: a matmul of
    5 rows costs 3-4 one-row matmuls here. oneDNN's linear on a weight reordered once (its
    blocked layout; what torch.compile's CPU backend uses) runs AVX-512 (~250 GFLOP/s) and
    costs nearly the same for 1 to 8 rows, but has a fixed cost above MKL's single-row
    product. So one row (a decode step at batch 1) takes F.linear and `ONEDNN_MIN_ROWS` or
    more (a verification call, a batch) take oneDNN: at 64 rows 66 / 113 / 61 us against
    138 / 246 / 122. Both accumulate in float32; they differ by rounding only (tests pin it).
    The reordered weight is a copy: made for the fused layers of small models (FUSE_MAX_PARAMS) and
    for early exit's K/V fill (`KVFill`, a sixth of a layer's weights).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight, self.bias = weight, bias
        self.packed = _onednn_pack(weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None or x.numel() < ONEDNN_MIN_ROWS * x.shape[-1] or x.dtype != torch.float32:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class FastLayer:
    """One Llama decoder layer on one new position per row, as plain tensor operations.

    The same arithmetic as transformers' LlamaDecoderLayer (RMSNorm in float32,
    rotary, SDPA, SiLU-gated MLP) with Q/K/V and gate/up each fused into one
    matmul (weights concatenated once, per model). Called with the rows' states
    (rows, 1, width), their rotary cos/sin (rows, 1, head dim), an attention mask
    or None, and the cache view whose `update` takes this position's keys and values.
    """

    def __init__(self, layer, index: int, modules: bool = False):
        a, mlp = layer.self_attn, layer.mlp
        self.index = index
        self.sdpa = False  # attention through SDPA (`attend_sdpa`) rather than written out (`attend`)
        self.native = False  # torch's one-op RMSNorm, rotary by roll with a signed sin (fewer operations)
        self.heads = a.config.num_attention_heads
        self.kv_heads = a.config.num_key_value_heads or self.heads
        self.head_dim, self.scaling = a.head_dim, a.scaling
        self.norm1, self.eps1 = layer.input_layernorm.weight.detach(), layer.input_layernorm.variance_epsilon
        self.norm2 = layer.post_attention_layernorm.weight.detach()
        self.eps2 = layer.post_attention_layernorm.variance_epsilon
        # modules=True: each projection is the model's own module (a quantized kernel's Linear, say),
        # called in turn; otherwise the plain weights, Q/K/V and gate/up fused.
        self.modules = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj) \
            if modules else None
        if modules:
            return
        self.qkv = Projection(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach(),
                              None if a.q_proj.bias is None else
                              torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]).detach())
        self.o = Projection(a.o_proj.weight.detach())
        self.gate_up = Projection(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach())
        self.down = Projection(mlp.down_proj.weight.detach())

    def attend(self, q, k, v, mask):
        """One query per row: attention as two small matmuls and a softmax, written out. On a strided
        cache view that is faster here than SDPA's CPU kernel (79 against 129 us at batch 64).
        Grouped-query heads attend as (kv heads, group) without repeating the keys."""
        rows, hd = q.shape[0], self.head_dim
        q = q.reshape(rows, self.kv_heads, self.heads // self.kv_heads, hd)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scaling  # (rows, kv heads, group, positions)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.matmul(scores.softmax(-1), v)  # (rows, kv heads, group, head dim)

    def attend_sdpa(self, q, k, v, mask):
        """The same attention through SDPA, called as transformers' sdpa attention calls it for one
        query per row, so its float32 output is bit for bit the transformers layer's."""
        rows, hd, group = q.shape[0], self.head_dim, self.heads // self.kv_heads
        kw = {}
        if group > 1:
            if mask is None and hd <= 256:
                kw["enable_gqa"] = True
            else:
                q = q.reshape(rows, self.kv_heads, group, hd)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling, **kw)
        return o.reshape(rows, -1, 1, hd).transpose(1, 2)

    def project_qkv(self, x):
        if self.modules is None:
            return self.qkv(x)
        q, k, v = self.modules[:3]
        return torch.cat([q(x), k(x), v(x)], -1)

    def out(self, o):
        return self.o(o) if self.modules is None else self.modules[3](o)

    def mlp(self, x):
        if self.modules is None:
            gate, up = self.gate_up(x).chunk(2, -1)
            return self.down(torch.nn.functional.silu(gate) * up)
        g, u, d = self.modules[4:]
        return d(torch.nn.functional.silu(g(x)) * u(x))

    def positions(self, h, cos, sin, hidden, keys, values, t: int) -> torch.Tensor:
        """This layer on k new positions per row (h: rows, k, width); writes their keys and values into
        the buffers `keys`/`values` (rows, kv heads, capacity, head dim) at columns t..t+k-1 and attends
        over columns 0..t+k-1. cos/sin broadcast to (rows, 1, k, head dim). `hidden`: True where a
        query must not see a key, broadcast to (rows, kv heads, group, k, columns); None: every query
        sees every column. A prompt's prefill (`FusedDecoder`) and a speculative round's calls
        (`explorer.speculative.FusedSide`) run it."""
        b, k, _ = h.shape
        hd, kvh = self.head_dim, self.kv_heads
        qkv = self.project_qkv(rms_norm(h, self.norm1, self.eps1))
        qkv = qkv.view(b, k, self.heads + 2 * kvh, hd).transpose(1, 2)
        qk, v = qkv.split([self.heads + kvh, kvh], 1)
        qk = qk * cos + rotate_half(qk) * sin  # rotary on queries and keys at once
        q, key = qk.split([self.heads, kvh], 1)
        keys[:, :, t : t + k] = key
        values[:, :, t : t + k] = v
        total, group = t + k, self.heads // kvh
        # Grouped-query heads attend as (kv heads, group) without repeating the keys.
        q = q.reshape(b, kvh, group * k, hd)
        scores = torch.matmul(q, keys[:, :, :total].transpose(-1, -2)) * self.scaling
        if hidden is not None:
            scores = scores.view(b, kvh, group, k, total).masked_fill(hidden, float("-inf"))
        o = torch.matmul(scores.softmax(-1).view(b, kvh, group * k, total), values[:, :, :total])
        o = o.view(b, self.heads, k, hd).transpose(1, 2).reshape(b, k, self.heads * hd)
        h = h + self.out(o)
        return h + self.mlp(rms_norm(h, self.norm2, self.eps2))

    def __call__(self, h, cos, sin, mask, cache) -> torch.Tensor:
        rows, hd = h.shape[0], self.head_dim
        norm = native_rms_norm if self.native else rms_norm
        qkv = self.project_qkv(norm(h, self.norm1, self.eps1))
        qkv = qkv.view(rows, 1, self.heads + 2 * self.kv_heads, hd).transpose(1, 2)
        qk, v = qkv.split([self.heads + self.kv_heads, self.kv_heads], 1)
        if self.native:  # cos, sin come (rows, 1, 1, hd), sin signed (`signed_sin`): rotate_half(x) * sin
            qk = qk * cos + qk.roll(hd // 2, -1) * sin  # == x.roll(hd / 2) * signed sin
        else:
            qk = qk * cos[:, None] + rotate_half(qk) * sin[:, None]  # rotary on queries and keys at once
        q, k = qk.split([self.heads, self.kv_heads], 1)
        k, v = cache.update(k, v, self.index)
        o = self.attend_sdpa(q, k, v, mask) if self.sdpa else self.attend(q, k, v, mask)
        h = h + self.out(o.reshape(rows, 1, self.heads * hd))
        return h + self.mlp(norm(h, self.norm2, self.eps2))


def native_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`rms_norm` as one operation (torch's own) for float32, where it gives the same bits; else `rms_norm`."""
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        return rms_norm(x, weight, eps)
    return torch.nn.functional.rms_norm(x, weight.shape, weight, eps)


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half negated: rotate_half(x) * sin == x.roll(d / 2, -1) * signed_sin(sin), bit for
    bit (negation is exact), in one roll instead of two slices, a negation and a concatenation."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], -1)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm: normalise in float32, back to the input's dtype, then scale."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


# Early exit's fused layers per model (`per_weights`; None: the model needs transformers' own layers).
_FAST: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def fast_layers(hf, modules: bool = False) -> list[FastLayer] | None:
    """`FastLayer`s for a Llama stack of plain Linear projections with SiLU MLPs; else None.

    modules=True also takes Linear subclasses (quantized kernels), called as modules."""
    linear = torch.nn.Linear
    if getattr(hf.config, "hidden_act", None) != "silu" or hf.config._attn_implementation != "sdpa":
        return None
    for layer in hf.model.layers:
        a, mlp = layer.self_attn, getattr(layer, "mlp", None)
        projs = [getattr(a, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        projs += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if not all(type(p) is linear or modules and isinstance(p, linear) for p in projs) or any(
                p.bias is not None for p in projs[3:]):
            return None
        if len({p.bias is None for p in projs[:3]}) > 1 or hasattr(a, "q_norm") or getattr(a, "sliding_window", None):
            return None
        if not all(hasattr(n, "weight") and hasattr(n, "variance_epsilon")
                   for n in (layer.input_layernorm, layer.post_attention_layernorm)):
            return None
    return [FastLayer(layer, i, modules) for i, layer in enumerate(hf.model.layers)]


class FusedDecoder:
    """A Llama causal LM whose decode steps run `FastLayer`s on a preallocated K/V cache.

    Called like the transformers model by the shared loop (`explorer.generate.generate`):
    the prompt runs through the model itself (its prefill is one batched call
    whatever the layers); each later position runs the fused layers, so a
    decode step pays no module dispatch beyond the projections. It is the path
    rows decode through (`explorer.generate.decoder`). Quantized kernels' Linears
    are called as modules, and then logits equal the model's own bit for bit;
    with fused plain weights they agree to rounding (tests/test_fused.py).
    `fused_decoder(hf)` returns None for a model it cannot run.
    """

    decode_path = "fused"  # what `explorer.generate` records for rows decoded through it

    def __init__(self, hf, layers: list[FastLayer]):
        self.hf, self.config, self.layers = hf, hf.config, layers

    @property
    def device(self) -> torch.device:
        return self.hf.device

    @torch.inference_mode()
    def __call__(self, *, input_ids, attention_mask, position_ids, cache=None, logits_to_keep=0, **_) -> Output:
        inner = self.hf.model
        if cache is None and self.layers[0].modules is None and self.layers[0].qkv.packed is not None:
            return self.prefill(input_ids, attention_mask, position_ids, logits_to_keep)
        if cache is None:  # the model's own prefill: bit for bit where projections are its modules
            out = self.hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=True, logits_to_keep=logits_to_keep)
            layers = out.cache.layers
            return Output(out.logits, KVCache([c.keys for c in layers], [c.values for c in layers]))
        t = cache.length
        cache.open()
        h = inner.embed_tokens(input_ids)
        cos, sin = inner.rotary_emb(h, position_ids=position_ids)
        cos, sin = cos[:, None], signed_sin(sin)[:, None]  # the layers' `native` rotary, shaped once per step
        mask = None if bool(attention_mask[:, : t + 1].all()) else attention_mask[:, None, None, : t + 1].bool()
        view = RowsView(cache, None)
        for layer in self.layers:
            h = layer(h, cos, sin, mask, view)
        cache.close()
        return Output(self.hf.lm_head(inner.norm(h)), cache)

    def prefill(self, ids, mask, pos, logits_to_keep: int) -> Output:
        """The prompt through the fused layers, all positions in one call per layer (`FastLayer.positions`),
        so its matmuls of rows x positions take oneDNN (`Projection`; float32 weights): at batch 64 the
        prompt's matmuls through transformers' layers (MKL) were most of a short answer's time. Left padding: a real token
        sees the real columns up to its own; a pad position sees itself only (it stays finite; no real
        token reads it)."""
        inner = self.hf.model
        b, k = ids.shape
        h = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(h, position_ids=pos)
        cos, sin = cos[:, None], sin[:, None]  # (rows, 1, k, head dim)
        later = torch.ones(k, k, dtype=torch.bool).triu(1)
        if bool(mask.all()):
            hidden = later if k > 1 else None
        else:
            hidden = ((~mask[:, None, :].bool() | later) & ~torch.eye(k, dtype=torch.bool))[:, None, None]
        keys = [h.new_empty(b, layer.kv_heads, k, layer.head_dim) for layer in self.layers]
        values = [h.new_empty(b, layer.kv_heads, k, layer.head_dim) for layer in self.layers]
        for i, layer in enumerate(self.layers):
            h = layer.positions(h, cos, sin, hidden, keys[i], values[i], 0)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return Output(self.hf.lm_head(inner.norm(h)), KVCache(keys, values))


# Model types whose decoder layer is exactly Llama's arithmetic (Qwen2 adds Q/K/V biases, which
# FastLayer carries); anything else decodes through transformers.
FUSED_MODEL_TYPES = ("llama", "mistral", "qwen2")


# Fused Q/K/V and gate/up weights are copies (the model's own stay as they are): worth it where per-operation
# overhead dominates, on small models, and not the memory on large ones, where the matmuls dominate.
FUSE_MAX_PARAMS = 50_000_000
# Per model (`per_weights`): (what its parameters were when built, its fused layers). Weak keys: a model
# dropped is forgotten.
_FUSED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def fused_decoder(hf) -> FusedDecoder | None:
    """The fused decode path for this model, or None (not a plain Llama stack).

    Plain Linear projections of a model up to FUSE_MAX_PARAMS run as one Q/K/V and one gate/up
    matmul over concatenated weights (built once per model, rebuilt if a parameter is replaced or
    changed in place); anything else (a quantized kernel's Linear, a large model) calls each
    projection as the model's own module. Attention is SDPA called as transformers calls it.
    """
    if getattr(hf.config, "model_type", None) not in FUSED_MODEL_TYPES:
        return None
    try:
        check_supported(hf)
    except ValueError:
        return None
    def build(hf):
        small = sum(p.numel() for p in hf.model.layers.parameters()) <= FUSE_MAX_PARAMS
        layers = (fast_layers(hf) if small else None) or fast_layers(hf, modules=True)
        for layer in layers or ():
            layer.sdpa = layer.native = True
        return layers

    layers = per_weights(_FUSED, hf, build)
    return None if layers is None else FusedDecoder(hf, layers)


def per_weights(cache: "weakref.WeakKeyDictionary", hf, build):
    """`build(hf)`, kept in `cache` per model and built again when one of its layers' parameters is
    replaced or changed in place (pruning, a quantizer writing into the weights): what is built
    holds copies of the weights (fused, reordered for oneDNN) that would otherwise go stale."""
    state = tuple((id(p), p._version) for p in hf.model.layers.parameters())
    built = cache.get(hf)
    if built is None or built[0] != state:
        built = cache[hf] = (state, build(hf))
    return built[1]


def native_fast_layers(hf) -> list[FastLayer] | None:
    """`fast_layers` with the one-op RMSNorm and the rotary by roll: the same bits in fewer operations."""
    layers = fast_layers(hf)
    for layer in layers or ():
        layer.native = True
    return layers


def agree(logits, top, streak) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive layers agreeing on the top-1 token: the streak grows, or restarts at 0."""
    now = logits.argmax(-1)
    return torch.where(now == top, streak + 1, 0), now


# Folded K/V weights per model (`per_weights`): the technique wraps the model anew for every batch.
_FILLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def kv_fill(hf) -> KVFill | None:
    """The batched fill, when every K/V projection is a plain Linear after an RMSNorm; else None."""
    for layer in hf.model.layers:
        attn, norm = layer.self_attn, layer.input_layernorm
        if not (type(attn.k_proj) is torch.nn.Linear and type(attn.v_proj) is torch.nn.Linear
                and hasattr(norm, "weight") and hasattr(norm, "variance_epsilon")):
            return None
    return KVFill(hf)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, signed: bool) -> torch.Tensor:
    """Rotary position embedding; signed: sin from `signed_sin`, rotated by one roll (the same bits)."""
    if signed:
        return x * cos + x.roll(x.shape[-1] // 2, -1) * sin
    return x * cos + rotate_half(x) * sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def first_layers(hf, k: int):
    """A view of `hf` that runs only its first `k` decoder layers, then the shared final norm and head.

    It shares every weight with `hf` (nothing is copied) and is called like any
    transformers causal LM, with a cache of its own: the draft of LayerSkip's
    self-speculative decoding.
    """
    import copy

    check_supported(hf)
    depth = hf.config.num_hidden_layers
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < depth:
        raise ValueError(f"exit_layer={k!r}; this model has {depth} layers, so valid is 1..{depth - 1}")
    config = copy.deepcopy(hf.config)
    config.num_hidden_layers = k
    with torch.device("meta"):  # the shell only: every module is replaced by the original's below
        view = type(hf)(config)
    view.model.embed_tokens = hf.model.embed_tokens
    view.model.layers = torch.nn.ModuleList(list(hf.model.layers[:k]))
    view.model.norm = hf.model.norm
    view.model.rotary_emb = hf.model.rotary_emb
    view.lm_head = hf.lm_head
    return view.eval()
