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
Llama shape (MLP 8/3 of the width) that is 1/6 of a layer's matmul FLOPs; the
time it takes is measured (`kv_fill_s`).

Rows whose input is the end-of-sequence token have finished (the shared loop
feeds them that token after they stop) and are not run at all.
"""
from __future__ import annotations

import time
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
            return -(lp.exp() * lp).sum(-1).clamp(min=0) < self.threshold
        return streak >= self.threshold


@dataclass
class ExitStats:
    """What one call of `ExitingModel` decoded: per step, the exit layer of every row (0: not run)."""

    steps: list[torch.Tensor] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    kv_fill_s: float = 0.0
    decode_s: float = 0.0

    def per_row(self) -> list[list[int]]:
        """Exit layer of each token each row decoded, in order (end-of-sequence included)."""
        if not self.steps:
            return [[] for _ in self.prompt_tokens]
        table = torch.stack(self.steps, 1).tolist()
        return [[e for e in row if e > 0] for row in table]


class KVBuffer:
    """Keys and values of every layer in preallocated tensors (batch, kv heads, positions, head dim).

    Preallocated rather than concatenated (as DynamicCache does) because a
    layer writes only the rows still running at a position, and the K/V fill
    writes the others into the same column.
    """

    def __init__(self, layers: int, batch: int, heads: int, head_dim: int, dtype, capacity: int):
        shape = (batch, heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype) for _ in range(layers)]
        self.length = 0

    def reserve(self, n: int) -> None:
        cap = self.keys[0].shape[2]
        if n <= cap:
            return
        grow = max(n, 2 * cap)
        for store in (self.keys, self.values):
            for i, t in enumerate(store):
                bigger = t.new_zeros(t.shape[0], t.shape[1], grow, t.shape[3])
                bigger[:, :, :cap] = t
                store[i] = bigger

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length


class RowsView:
    """What a decoder layer sees as its cache: the rows `rows` (None: all) at column `t`.

    The layer's attention calls `update(k, v, layer_idx)` with the new
    position's keys and values and attends over what it returns.
    """

    def __init__(self, buf: KVBuffer, rows: torch.Tensor | None, t: int):
        self.buf, self.rows, self.t = buf, rows, t

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k, v, t = self.buf.keys[layer_idx], self.buf.values[layer_idx], self.t
        if self.rows is None:
            k[:, :, t : t + 1] = key_states
            v[:, :, t : t + 1] = value_states
            return k[:, :, : t + 1], v[:, :, : t + 1]
        k[self.rows, :, t : t + 1] = key_states
        v[self.rows, :, t : t + 1] = value_states
        return k[self.rows, :, : t + 1], v[self.rows, :, : t + 1]


@dataclass
class Output:
    logits: torch.Tensor  # (batch, 1, vocab): the exit layer's prediction
    cache: KVBuffer


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
        if rule.min_layers > hf.config.num_hidden_layers:
            raise ValueError(f"EarlyExit.min_layers={rule.min_layers}; this model has "
                             f"{hf.config.num_hidden_layers} layers, so valid is 1..{hf.config.num_hidden_layers}")
        self.hf, self.rule, self.eos = hf, rule, eos_token_id
        self.config = hf.config
        self.layers = list(hf.model.layers)
        self.stats = ExitStats()

    @torch.inference_mode()
    def __call__(self, *, input_ids, attention_mask, position_ids, cache=None, **_) -> Output:
        start = time.perf_counter()
        if cache is None:
            cache = self.prefill(input_ids, attention_mask, position_ids)
            live = torch.ones(input_ids.shape[0], dtype=torch.bool)
            input_ids, position_ids = input_ids[:, -1:], position_ids[:, -1:]
        else:
            live = input_ids[:, 0] != self.eos  # finished rows: the loop feeds them end-of-sequence
        logits = self.step(input_ids, attention_mask, position_ids, cache, live)
        self.stats.decode_s += time.perf_counter() - start
        return Output(logits[:, None], cache)

    def prefill(self, ids, mask, pos) -> KVBuffer:
        """All prompt positions but the last, through the full model (every layer fills its K/V)."""
        c = self.config
        heads = c.num_key_value_heads or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        dtype = self.hf.lm_head.weight.dtype
        buf = KVBuffer(len(self.layers), ids.shape[0], heads, head_dim, dtype, ids.shape[1] + 32)
        self.stats.prompt_tokens = mask.sum(-1).tolist()
        if ids.shape[1] > 1:
            out = self.hf.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                                use_cache=True)
            n = ids.shape[1] - 1
            for i, layer in enumerate(out.cache.layers):
                buf.keys[i][:, :, :n] = layer.keys
                buf.values[i][:, :, :n] = layer.values
            buf.length = n
        return buf

    def step(self, ids, mask, pos, buf: KVBuffer, live: torch.Tensor) -> torch.Tensor:
        """One new position per row, layer by layer; returns each row's exit logits (batch, vocab)."""
        inner, rule, n_layers = self.hf.model, self.rule, len(self.layers)
        t = buf.length
        buf.reserve(t + 1)
        h = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(h, position_ids=pos)
        # One query per row: causal is just "not padding". Without padding, no mask at
        # all, which lets SDPA take its fastest kernel (as transformers does).
        allowed = None if bool(mask[:, : t + 1].all()) else mask[:, None, None, : t + 1].bool()
        batch = ids.shape[0]
        running, left = live.clone(), torch.zeros(batch, dtype=torch.bool)
        exit_at = torch.zeros(batch, dtype=torch.long)
        out_logits = torch.zeros(batch, self.config.vocab_size, dtype=h.dtype)
        top = torch.full((batch,), -1, dtype=torch.long)
        streak = torch.zeros(batch, dtype=torch.long)
        first = rule.first_head()
        for i, layer in enumerate(self.layers):
            if bool(left.any()):
                self.fill(i, layer, h, left, cos, sin, buf, t)
            rows = running.nonzero()[:, 0]
            if rows.numel() == 0:
                continue
            if rows.numel() == batch:
                h = layer(h, attention_mask=allowed, position_embeddings=(cos, sin), position_ids=pos,
                          cache=RowsView(buf, None, t), use_cache=True)
                hr = h
            else:
                sub = None if allowed is None else allowed[rows]
                hr = layer(h[rows], attention_mask=sub, position_embeddings=(cos[rows], sin[rows]),
                           position_ids=pos[rows], cache=RowsView(buf, rows, t), use_cache=True)
                h[rows] = hr
            depth = i + 1
            if depth < first:
                continue
            logits = self.hf.lm_head(inner.norm(hr[:, 0]))
            if depth == n_layers:
                go = torch.ones(rows.numel(), dtype=torch.bool)
            else:
                if rule.criterion == "agreement":
                    now = logits.argmax(-1)
                    streak[rows] = torch.where(now == top[rows], streak[rows] + 1, 0)
                    top[rows] = now
                go = rule.leave(logits, streak[rows]) if depth >= rule.min_layers else torch.zeros_like(rows, dtype=torch.bool)
            if bool(go.any()):
                gone = rows[go]
                out_logits[gone] = logits[go]
                exit_at[gone] = depth
                running[gone] = False
                left[gone] = True
        buf.length = t + 1
        self.stats.steps.append(exit_at)
        return out_logits

    def fill(self, i: int, layer, h, rows_mask, cos, sin, buf: KVBuffer, t: int) -> None:
        """CALM state propagation: keys and values of layer `i` from the rows' frozen exit states."""
        start = time.perf_counter()
        rows = rows_mask.nonzero()[:, 0]
        attn = layer.self_attn
        x = layer.input_layernorm(h[rows])  # (rows, 1, width)
        shape = (rows.numel(), 1, -1, attn.head_dim)
        k = attn.k_proj(x).view(shape).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        c, s = cos[rows].unsqueeze(1), sin[rows].unsqueeze(1)
        k = k * c + rotate_half(k) * s  # rotary on keys, as LlamaAttention does
        buf.keys[i][rows, :, t : t + 1] = k
        buf.values[i][rows, :, t : t + 1] = v
        self.stats.kv_fill_s += time.perf_counter() - start


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
