"""Speculative decoding: a small draft proposes, the target verifies, output unchanged.

Each round the draft proposes up to `draft_len` tokens one at a time; the target
scores them all in one forward call and keeps the longest prefix it accepts,
plus one token of its own (the correction at the first rejection, or a bonus
token when every proposal survives). Greedy: a proposal survives when it is the
target's argmax, so the output is the target's greedy output. Sampling: modified
rejection sampling (Leviathan et al. 2023, Chen et al. 2023): accept a proposal
x with probability min(1, p(x)/q(x)), else draw from norm(max(0, p - q)), so
every emitted token follows the target's distribution p exactly.

We write the loop instead of calling `generate(assistant_model=...)` because
transformers' assisted generation hides the statistics that explain the
speed-up, takes batch size 1 only, and reads its draft length from the draft's
generation_config. The benchmark (benchmarks/speculative.py) runs it as the peer.
"""
from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import torch

from explorer.generate import Generation, draw, per_row, positions, strip_eos, uniform
from explorer.layerwise import fused_decoder

# Beyond 32 proposals a round gains nothing: even at acceptance 0.9 the chance
# that all 32 survive is 3%, while the draft pays for every one of them.
MAX_DRAFT_LEN = 32

_PARAMS: "weakref.WeakKeyDictionary[torch.nn.Module, int]" = weakref.WeakKeyDictionary()


class Decoder:
    """One side of speculative decoding: a causal LM, its KV cache and its attention mask.

    The loop reaches the draft and the target only through `start`, `extend`,
    `keep`, `select`, `params` and `vocab_size`, so anything that takes
    transformers' causal-LM call (input_ids, attention_mask, position_ids, cache)
    and returns `.logits` and `.cache` can be either side, including a view of
    the target's first k layers (LayerSkip). Subclass to share a cache or skip layers.

    Rows of a batch accept different numbers of proposals. Rather than re-pad,
    a rejected position stays in the cache with attention mask 0 (a hole; the
    position ids come from the mask, so later tokens are placed correctly), and
    trailing columns that no row keeps are cropped. At batch size 1 every
    rejected position is cropped, so the cache never holds a hole.
    """

    def __init__(self, hf):
        self.hf = hf
        self.cache = None
        self.mask: torch.Tensor | None = None  # 1 where a cached column is a real token

    @property
    def params(self) -> int:
        if self.hf not in _PARAMS:  # counted once per model: it is checked on every call
            _PARAMS[self.hf] = sum(p.numel() for p in self.hf.parameters())
        return _PARAMS[self.hf]

    @property
    def vocab_size(self) -> int:
        return self.hf.config.vocab_size

    @property
    def context(self) -> int:
        return getattr(self.hf.config, "max_position_embeddings", 2048)

    def start(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """A fresh cache holding the (left-padded) prefix `ids`; the logits after it [batch, vocab]."""
        from transformers import DynamicCache

        # Without a config the layers are made lazily: 0.2 ms less per call, same attention
        # (masks, sliding windows included, come from the model config, not the cache).
        self.cache = DynamicCache()
        self.mask = mask[:, :0].long()
        return self.extend(ids, mask.bool(), last_only=True)[:, -1] if ids.shape[1] else None

    def extend(self, tokens: torch.Tensor, valid: torch.Tensor | None, *, last_only: bool = False) -> torch.Tensor:
        """Run `tokens` [batch, k] on top of the cache; logits [batch, k or 1, vocab] in float32.
        `valid`: False at a pad position; None: every token is real."""
        valid = torch.ones_like(tokens, dtype=torch.bool) if valid is None else valid
        self.mask = torch.cat([self.mask, valid.long()], dim=1)
        pos = positions(self.mask)[:, -tokens.shape[1]:]
        out = self.hf(input_ids=tokens, attention_mask=self.mask, position_ids=pos, cache=self.cache,
                      use_cache=True, logits_to_keep=1 if last_only else 0)
        self.cache = out.cache
        return out.logits.float()

    def keep(self, kept: torch.Tensor) -> None:
        """Roll back: of the last `kept.shape[1]` cached columns, forget those where `kept` is False."""
        k = kept.shape[1]
        if k == 0:
            return
        self.mask[:, -k:] *= kept.long()
        used = kept.any(0).nonzero()
        drop = k - (int(used.max()) + 1 if used.numel() else 0)
        if drop:
            self.cache.crop(-drop)  # transformers 5: a negative count removes that many positions
            self.mask = self.mask[:, :-drop]

    def drop_last(self, k: int) -> None:
        """Forget the last k cached columns of every row (`keep` for the one-row loop, with an integer)."""
        if k:
            self.cache.crop(-k)
            self.mask = self.mask[:, :-k]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` of the batch (finished rows leave, so they cost nothing more)."""
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]

    def length(self) -> int:
        return self.cache.get_seq_length()


class FusedSide(Decoder):
    """A `Decoder` whose calls run `explorer.layerwise.FastLayer`s on a preallocated K/V buffer.

    The draft and the target of a round are called many times on a few positions
    each: at the zoo's sizes a call costs mostly per-operation overhead, and
    transformers' layers (mask building, cache objects, module dispatch) spent
    about twice what the arithmetic needs. Here each call is the fused layers'
    plain tensor operations on any number of new positions per row, attending
    over one (batch, kv heads, capacity, head dim) buffer per layer; rolling back
    is moving the length back (nothing is copied), and a hole (a rejected position
    of one row of a batch) is a column the mask hides, as in `Decoder`. The same
    arithmetic as transformers' layers (tested: greedy output equals the target
    alone's). `as_decoder` uses it wherever `fast_layers` can run the model.
    """

    def __init__(self, hf, layers, rope: tuple[torch.Tensor, torch.Tensor]):
        super().__init__(hf)
        self.layers = layers
        inner = hf.model
        self.embed, self.norm, self.head = inner.embed_tokens, inner.norm, hf.lm_head
        self.cos, self.sin = rope  # rotary cos and sin of every position, [context, head dim]
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.t = 0  # cached columns
        self.rows = 0

    # While every cached column of every row is a real token (no left padding, no hole; always so
    # at batch size 1) the side is `dense`: positions are column numbers, attention needs the causal
    # mask only, and no mask tensor is kept (it would be all ones: `mask` makes one when asked).
    @property
    def mask(self) -> torch.Tensor:
        return torch.ones(self.rows, self.t, dtype=torch.long) if self._mask is None else self._mask

    @mask.setter
    def mask(self, value) -> None:
        self._mask = value

    @property
    def dense(self) -> bool:
        return self._mask is None

    def start(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        self.keys, self.values, self.t, self.rows, self._mask = [], [], 0, ids.shape[0], None
        return self.extend(ids, mask.bool(), last_only=True)[:, -1] if ids.shape[1] else None

    def _room(self, b: int, k: int, like: torch.Tensor) -> None:
        need = self.t + k
        if self.keys and self.keys[0].shape[2] >= need:
            return
        cap = max(64, 2 * need)
        grown = []
        for bufs in (self.keys, self.values):
            new = []
            for i, layer in enumerate(self.layers):
                buf = like.new_empty(b, layer.kv_heads, cap, layer.head_dim)
                if bufs:
                    buf[:, :, : self.t] = bufs[i][:, :, : self.t]
                new.append(buf)
            grown.append(new)
        self.keys, self.values = grown

    @torch.inference_mode()  # its fused weights are inference tensors, whoever calls
    def extend(self, tokens: torch.Tensor, valid: torch.Tensor | None, *, last_only: bool = False) -> torch.Tensor:
        b, k = tokens.shape
        if self._mask is None and valid is not None and not bool(valid.all()):
            self._mask = torch.ones(b, self.t, dtype=torch.long)  # the first pad: from now on a mask is kept
        if self._mask is not None:
            self._mask = torch.cat([self._mask, torch.ones(b, k, dtype=torch.long) if valid is None
                                    else valid.long()], dim=1)
        t, total = self.t, self.t + k
        h = self.embed(tokens)
        self._room(b, k, h)
        # `hidden` (True: not attended): query i (column t + i) sees the real columns up to its
        # own, and itself always (a pad position attends to itself only, so it stays finite; no
        # real token reads it).
        if self.dense:
            cos, sin = self.cos[t:total], self.sin[t:total]  # (k, head dim): every row and head alike
            hidden = torch.ones(k, total, dtype=torch.bool).triu(t + 1) if k > 1 else None
        else:
            pos = positions(self.mask)[:, -k:]
            cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # (rows, 1, k, head dim)
            later = torch.ones(k, total, dtype=torch.bool).triu(t + 1)
            itself = torch.ones(k, total, dtype=torch.bool).tril(t) & ~torch.ones(k, total, dtype=torch.bool).tril(t - 1)
            hidden = ((~self.mask[:, None, :total].bool() | later) & ~itself)[:, None, None]  # (rows, 1, 1, k, total)
        for i, layer in enumerate(self.layers):
            h = fused_layer(layer, h, cos, sin, hidden, self.keys[i], self.values[i], t)
        self.t = total
        if last_only:
            h = h[:, -1:]
        return self.head(self.norm(h)).float()

    @torch.inference_mode()
    def keep(self, kept: torch.Tensor) -> None:
        """As `Decoder.keep`, for a `kept` that is a prefix of each row's columns (the loop's)."""
        k = kept.shape[1]
        if k == 0:
            return
        if self.dense and kept.shape[0] == 1:  # one row: the rest is cropped, never a hole
            drop = k - int(kept.sum())
        else:
            used = kept.any(0).nonzero()
            drop = k - (int(used.max()) + 1 if used.numel() else 0)
            if self.dense and k > drop and not bool(kept[:, : k - drop].all()):
                self._mask = torch.ones(self.rows, self.t, dtype=torch.long)  # a row kept fewer columns: a hole
            if self._mask is not None:
                self._mask[:, -k:] *= kept.long()
        self.drop_last(drop)

    def drop_last(self, k: int) -> None:
        if k:
            self.t -= k
            if self._mask is not None:
                self._mask = self._mask[:, :-k]

    @torch.inference_mode()
    def select(self, rows: torch.Tensor) -> None:
        self.keys = [x[rows] for x in self.keys]
        self.values = [x[rows] for x in self.values]
        self.rows = rows.numel()
        if self._mask is not None:
            self._mask = self._mask[rows]

    def length(self) -> int:
        return self.t


def fused_layer(layer, h, cos, sin, hidden, keys, values, t: int) -> torch.Tensor:
    """One decoder layer (a `FastLayer`) on k new positions per row; writes their K/V at t
    (`FastLayer.positions`, shared with the plain path's prefill)."""
    return layer.positions(h, cos, sin, hidden, keys, values, t)


# Rotary cos/sin tables per model (positions 0 .. context - 1), built once.
_ROPE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def fused_side(hf) -> FusedSide | None:
    """A fresh `FusedSide` for `hf`, or None where the fused decode path cannot run it.

    Its layers are the plain decode path's own (`explorer.layerwise.fused_decoder`: the same
    model types, the same fused copies for small models, rebuilt when a weight changes), so
    speculating costs no second copy of the weights."""
    fused = fused_decoder(hf) if hasattr(hf, "config") and hasattr(hf, "model") else None
    if fused is None:
        return None
    if hf not in _ROPE:
        with torch.inference_mode():
            n = getattr(hf.config, "max_position_embeddings", 2048)
            like = hf.model.embed_tokens.weight[:1, None]
            cos, sin = hf.model.rotary_emb(like, position_ids=torch.arange(n)[None])
        _ROPE[hf] = (cos[0], sin[0])
    return FusedSide(hf, fused.layers, _ROPE[hf])


class Draft:
    """What the speculative loop asks of a draft, whatever it is (transformers' CandidateGenerator).

    - `start(ids, mask)`: the (left-padded) prompts; nothing is computed yet;
    - `propose(cap, temperature, adaptive, eos, generator, stats)`: up to cap[i]
      proposals for row i, as (proposals [rows, g], the draft's distribution per
      position (a list of [rows, vocab], empty when greedy needs none), proposals
      per row); proposals stop at end-of-sequence;
    - `update(proposals, n, nxt)`: the target accepted the first n[i] of row i's
      proposals and then emitted nxt[i];
    - `select(rows)`: only these rows of the batch go on.

    `params` (0 for a model-free draft), `vocab_size` (None: any) and `context`
    are checked against the target before decoding. The loop's statistics and
    its lossless acceptance rule are the same for every draft.
    """

    params: int = 0
    vocab_size: int | None = None
    context: float = float("inf")
    kind = "model-free"  # the row's `draft_kind`

    def start(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        raise NotImplementedError

    def propose(self, cap, temperature, adaptive, eos, generator, stats: "SpecStats"):
        raise NotImplementedError

    def update(self, proposals: torch.Tensor, n: torch.Tensor, nxt: torch.Tensor) -> None:
        raise NotImplementedError

    def select(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    # The one-row greedy loop (`one_row_round`) asks through these, with Python integers; a draft
    # may answer them without tensors (`ModelDraft` does).
    def propose_row(self, cap: int, eos: int, stats: "SpecStats") -> list[int]:
        """Up to `cap` greedy proposals for the one live row."""
        return self.propose(torch.tensor([cap]), 0.0, None, eos, None, stats)[0][0].tolist()

    def update_row(self, proposals: list[int], n: int, nxt: int) -> None:
        """`update` for the one live row."""
        self.update(torch.tensor([proposals], dtype=torch.long).reshape(1, len(proposals)), torch.tensor([n]),
                    torch.tensor([nxt]))


class ModelDraft(Draft):
    """A causal LM drafting one token per forward (a smaller model, or the target's first k layers).

    Its first call reads the prompt and proposes; after verification it rolls its
    cache back to the accepted proposals and is fed the target's token next round.
    """

    kind = "model"

    def __init__(self, side):
        self.decoder = as_decoder(side)
        self.pending = self.valid = None  # tokens not yet in the draft's cache
        self.prompt_width = 0

    @property
    def params(self) -> int:
        return self.decoder.params

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    @property
    def context(self) -> int:
        return self.decoder.context

    def start(self, ids, mask) -> None:
        self.decoder.start(ids[:, :0], mask[:, :0])
        self.pending, self.valid = ids, mask.bool()
        self.prompt_width = ids.shape[1]

    def propose(self, cap, temperature, adaptive, eos, generator, stats):
        out = propose(self.decoder, self.pending, self.valid, cap, temperature, adaptive, eos, generator, stats)
        if self.prompt_width and out[0].shape[1]:  # the prompt's positions are not decoding work
            stats.draft_positions -= cap.shape[0] * (self.prompt_width - 1)
            self.prompt_width = 0
        return out

    def propose_row(self, cap: int, eos: int, stats) -> list[int]:
        out = propose_row(self.decoder, self.pending, self.valid, cap, eos, stats)
        if self.prompt_width and out:
            stats.draft_positions -= self.prompt_width - 1
            self.prompt_width = 0
        return out

    def update_row(self, proposals: list[int], n: int, nxt: int) -> None:
        g = len(proposals)
        if g:  # of the g - 1 proposals fed (the last never was), the first n stay
            self.decoder.drop_last(g - 1 - min(n, g - 1))
            # After a fully accepted round the draft reads its last proposal and the target's token.
            self.pending, self.valid = torch.tensor([[proposals[-1], nxt] if n == g else [nxt]]), None
        else:  # nothing was proposed, so the draft has not read what it was given
            self.pending = torch.cat([self.pending, torch.tensor([[nxt]])], 1)
            self.valid = None if self.valid is None else torch.cat([self.valid, torch.ones(1, 1, dtype=torch.bool)], 1)

    def update(self, proposals, n, nxt) -> None:
        g, live = proposals.shape[1], n.shape[0]
        one = torch.ones(live, 1, dtype=torch.bool)
        if g and live == 1:  # one row: the one-row loop's update, with integers
            self.update_row(proposals[0].tolist(), int(n[0]), int(nxt[0]))
        elif g:
            self.decoder.keep(torch.arange(g - 1)[None] < n[:, None])  # the last proposal was never fed
            full = n == g
            self.pending = torch.cat([proposals[:, -1:], nxt[:, None]], 1) if full.any() else nxt[:, None]
            self.valid = torch.cat([full[:, None], one], 1) if full.any() else one
        else:  # nothing was proposed, so the draft has not read what it was given
            valid = torch.ones_like(self.pending, dtype=torch.bool) if self.valid is None else self.valid
            self.pending, self.valid = torch.cat([self.pending, nxt[:, None]], 1), torch.cat([valid, one], 1)

    def select(self, rows) -> None:
        self.decoder.select(rows)
        self.pending, self.valid = self.pending[rows], None if self.valid is None else self.valid[rows]


class PromptLookup(Draft):
    """Model-free draft (prompt lookup decoding, Saxena 2023; transformers' `prompt_lookup_num_tokens`).

    For each row, find the most recent earlier occurrence of the last `max_ngram`
    tokens (prompt and output so far; shorter n-grams down to `min_ngram` when
    the longer ones do not recur) and propose the tokens that followed it. No
    forward pass at all: it pays off where the output copies from the input
    (summaries, code edits, extraction, repeated text). A row with no match
    proposes nothing, so that round is one plain decoding step. Its proposals are
    certain (q is one-hot), so sampled output still follows the target exactly:
    a proposal x is kept with probability p(x), else the token is drawn from p
    without x.
    """

    kind = "prompt_lookup"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not (isinstance(max_ngram, int) and isinstance(min_ngram, int) and 1 <= min_ngram <= max_ngram):
            raise ValueError(f"PromptLookup(max_ngram={max_ngram!r}, min_ngram={min_ngram!r}); valid: integers "
                             "with 1 <= min_ngram <= max_ngram, e.g. 3 and 1")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.history: list[list[int]] = []

    def start(self, ids, mask) -> None:
        self.history = [row[m.bool()].tolist() for row, m in zip(ids, mask)]

    def lookup(self, seq: list[int], k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of seq's final n-gram."""
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            tail = seq[-n:]
            for start in range(len(seq) - n - 1, -1, -1):  # latest match first, never the tail itself
                if seq[start : start + n] == tail:
                    return seq[start + n : start + n + k]
        return []

    def propose(self, cap, temperature, adaptive, eos, generator, stats):
        found = []
        for seq, k in zip(self.history, cap.tolist()):
            got = self.lookup(seq, k) if k > 0 else []
            if eos in got:  # proposals stop at end-of-sequence, as a model draft's do
                got = got[: got.index(eos) + 1]
            found.append(got)
        lens = torch.tensor([len(f) for f in found], dtype=torch.long)
        g = int(lens.max()) if found else 0
        proposals = torch.tensor([f + [0] * (g - len(f)) for f in found], dtype=torch.long).reshape(len(found), g)
        qs = []
        if (temperature or adaptive is not None) and g:
            onehot = torch.nn.functional.one_hot(proposals, self.vocab_size).float()  # certain proposals
            qs = list(onehot.unbind(1))
        return proposals, qs, lens

    def update(self, proposals, n, nxt) -> None:
        for seq, row, k, t in zip(self.history, proposals.tolist(), n.tolist(), nxt.tolist()):
            seq += row[:k] + [t]

    def select(self, rows) -> None:
        self.history = [self.history[i] for i in rows.tolist()]


DRAFTS = {"prompt_lookup": PromptLookup}  # model-free drafts, by the name `Speculative(draft=...)` takes


def as_draft(side) -> Draft:
    """A Draft as is; anything else (an explorer Model, a transformers model, a Decoder) drafts as a model."""
    return side if isinstance(side, Draft) else ModelDraft(side)


@dataclass
class SpecStats:
    """What explains the speed-up. Counts are summed over the rows of a batch.

    `acceptance_rate` is alpha of Leviathan et al.: accepted / judged, where a
    proposal is judged when every proposal before it in its round was accepted.
    Proposals after the first rejection are never judged, so accepted / drafted
    would understate alpha for long drafts.
    """

    draft_len: int
    target_calls: int = 0  # forwards of the target (the first reads the prompt too)
    draft_calls: int = 0  # forwards of the draft (the first reads the prompt too)
    drafted: int = 0  # proposals offered to the target
    judged: int = 0  # proposals the target decided on
    accepted: int = 0
    tokens: int = 0  # emitted tokens, end-of-sequence included
    eos_accepted: int = 0  # rounds ended by an accepted end-of-sequence (no token of the target's own)
    target_positions: int = 0  # token positions the target ran, the prompt's aside (for analytic FLOPs)
    draft_positions: int = 0
    steps: int = 0  # rounds: batched forwards of the target
    plain_steps: int = 0  # rounds a length plan ran without proposals (plain decoding: speculating would cost more)
    position_judged: list[int] = field(default_factory=list)
    position_accepted: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.position_judged = self.position_judged or [0] * self.draft_len
        self.position_accepted = self.position_accepted or [0] * self.draft_len

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.judged if self.judged else float("nan")

    @property
    def tokens_per_target_call(self) -> float:
        return self.tokens / self.target_calls if self.target_calls else float("nan")

    @property
    def position_acceptance(self) -> list[float]:
        """Acceptance at proposal position 1, 2, ..., given every earlier proposal was accepted."""
        return [a / j if j else float("nan") for a, j in zip(self.position_accepted, self.position_judged)]

    @classmethod
    def total(cls, parts: list["SpecStats"]) -> "SpecStats":
        out = cls(max(p.draft_len for p in parts))
        for p in parts:
            for f in fields(cls):
                if f.name == "draft_len":
                    continue
                a, b = getattr(out, f.name), getattr(p, f.name)
                setattr(out, f.name, [x + y for x, y in zip(a, b)] if isinstance(a, list) else a + b)
        return out

    def columns(self) -> dict:
        # tokens and steps are the row's tokens_generated and the Generation's steps already
        counts = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ("draft_len", "tokens", "steps", "position_judged", "position_accepted")}
        mode = ("plain" if self.plain_steps == self.steps else "speculative" if not self.plain_steps else "mixed")
        return counts | {"spec_mode": mode, "acceptance_rate": self.acceptance_rate,
                         "tokens_per_target_call": self.tokens_per_target_call,
                         "acceptance_by_position": self.position_acceptance}


@dataclass
class Speculation(Generation):
    stats: SpecStats = None  # type: ignore[assignment]
    trace: list | None = None  # the rounds of `speculative_generate(trace=...)`, if asked for
    plan: "LengthPlan | None" = None  # the length plan this batch ran under, if any


@dataclass(frozen=True)
class ModeTrial:
    """One batch decoded both ways on its own prompts, in turn: CPU seconds of each pass.

    The length plan's cost model prices one round; a whole call also pays what both modes pay
    alike (the prompt's call), rounds cut short by short answers, and the loop's per-round
    bookkeeping. At batch 8 on the zoo (zoo-l, addition) it promised 1.25x where the calls ran
    at 1.0-1.08x. The trial times the calls themselves, and speculation runs only where the
    median pass clears `TRIAL_MARGIN` and all but one in five passes were faster: a decision
    outside the trial's own noise, so it comes out the same in every process unless the gain
    sits on the margin. The margin also covers the trial's optimism: on a loaded machine its
    gain ran 0-5% above the benchmark's interleaved figure for the same batches.
    """

    plain: tuple[float, ...]
    speculative: tuple[float, ...]

    @property
    def ratios(self) -> list[float]:
        """Each pass's plain seconds over its speculative seconds (above 1: speculation was faster)."""
        return [p / s for p, s in zip(self.plain, self.speculative)]

    @property
    def gain(self) -> float:
        return statistics.median(self.ratios)

    def pays(self, margin: float | None = None) -> bool:
        r = sorted(self.ratios)
        return bool(r) and statistics.median(r) >= (TRIAL_MARGIN if margin is None else margin) and r[len(r) // 5] > 1.0

    def describe(self) -> str:
        r = self.ratios
        return (f"trial {self.gain:.2f}x over plain ({len(r)} passes {min(r):.2f}-{max(r):.2f}; "
                f"speculates at >= {TRIAL_MARGIN:.2f}x with 4 in 5 passes > 1)")


@dataclass(frozen=True)
class LengthPlan:
    """Costs measured at one batch size, to choose each round's draft length (0: plain decoding).

    `verify[g]` is one target call over g + 1 tokens per row in units of a one-token
    call (verify[0] = 1), `cost_ratio` a draft call in the same unit. At batch 1 on a
    CPU verifying a few tokens costs little more than one; at batch 64 the target is
    compute-bound and verifying g + 1 tokens costs nearly g + 1 calls, so no draft
    length can pay. A round of length g yields (1 - a^(g+1)) / (1 - a) tokens
    (Leviathan) for g c + verify[g]; the plan picks the g that yields most per unit,
    with `alpha` the acceptance seen so far, and 0 when nothing beats one token per call.
    `alpha`: the acceptance a call starts from (its running rate takes over as proposals are
    judged): the draft's acceptance measured on the batch the plan was made for, or, when None,
    `PRIOR_ALPHA`. `trial`, when the plan was tried on the batch (`trial_modes`): whether
    speculating paid.
    """

    cost_ratio: float
    verify: tuple[float, ...]
    trial: ModeTrial | None = None
    alpha: float | None = None

    @property
    def prior(self) -> float:
        return PRIOR_ALPHA if self.alpha is None else self.alpha

    def best(self, alpha: float) -> int:
        def rate(g):
            return predicted_speedup(alpha, g, self.cost_ratio) * (g * self.cost_ratio + 1) / (
                g * self.cost_ratio + self.verify[g])

        g = max(range(len(self.verify)), key=lambda g: (rate(g), -g))
        # The loop's own work per round (rollback, bookkeeping per row) is not in these costs:
        # speculate only where the model promises a clear gain.
        return g if rate(g) >= PLAN_MARGIN else 0

    def speculates(self) -> bool:
        """Whether a batch under this plan speculates at all: a length pays at the prior acceptance,
        and, where it was tried, speculating ran clearly faster than plain decoding."""
        return self.best(self.prior) > 0 and (self.trial is None or self.trial.pays())

    def describe(self) -> str:
        """What the row records: the mode and why, from the measured costs and the trial."""
        g = self.best(self.prior)
        mode = "plain" if not self.speculates() else f"draft_len {g}"
        source = "" if self.alpha is None else " (measured on the batch)"
        return (f"{mode} at acceptance {self.prior:.2f}{source}; draft call {self.cost_ratio:.2f}, verify 1..{len(self.verify)} "
                "tokens " + "/".join(f"{v:.2f}" for v in self.verify) + " one-token target calls"
                + (f"; {self.trial.describe()}" if self.trial is not None else ""))


def trial_modes(plain, speculative, *, passes: int | None = None, clock=time.thread_time) -> ModeTrial:
    """Time `plain()` and `speculative()` (each decodes the same batch) `passes` times each, after one
    untimed call of each; the order alternates from pass to pass, so neither always goes first."""
    passes = TRIAL_PASSES if passes is None else passes
    seconds: tuple[list, list] = ([], [])
    for i in range(passes + 1):
        for side in ((0, 1) if i % 2 else (1, 0)):
            t = clock()
            (plain, speculative)[side]()
            if i:
                seconds[side].append(clock() - t)
    return ModeTrial(tuple(seconds[0]), tuple(seconds[1]))


# Until a call has judged proposals of its own, the plan assumes this acceptance (the zoo's
# drafts reach 0.5-0.95); after that the call's running rate, pulled toward it by 4 proposals.
PRIOR_ALPHA, PRIOR_WEIGHT = 0.7, 4
PLAN_MARGIN = 1.1  # a length is chosen only if it promises at least 10% more tokens per unit of cost
# A batch speculates only if its trial's median pass ran this much faster than plain decoding.
TRIAL_MARGIN, TRIAL_PASSES = 1.07, 7
TRIAL_PROMPTS = 64  # the most prompts a trial decodes per pass (whole batches of the plan's size)


@torch.inference_mode()
def plan_lengths(target, draft, input_ids, *, max_len: int, attention_mask=None, calls: int = 7,
                 clock=time.thread_time) -> LengthPlan:
    """Measure a `LengthPlan` on top of these prompts (their batch size): medians of `calls` calls.

    In this thread's CPU time by default: on a shared machine, wall-clock time of a few
    calls also counts waits for a core, which made batch-64 verification look cheap."""
    ids, mask = as_batch(input_ids, attention_mask)
    tgt = as_decoder(target)
    drf = None if draft is None or isinstance(draft, Draft) and not isinstance(draft, ModelDraft) else (
        as_decoder(draft.decoder if isinstance(draft, ModelDraft) else draft))
    tgt.start(ids, mask)
    if drf is not None:
        drf.start(ids, mask)
    widths = {w: [] for w in range(1, max_len + 2)}
    d = []
    for _ in range(calls + 1):
        for w in widths:
            widths[w].append(step_seconds(tgt, w, clock))
        if drf is not None:
            d.append(step_seconds(drf, 1, clock))
    one = statistics.median(widths[1][1:])
    verify = tuple(statistics.median(v[1:]) / one for v in widths.values())
    return LengthPlan(statistics.median(d[1:]) / one if d else 0.0, (1.0,) + verify[1:])


def predicted_speedup(alpha: float, draft_len: int, cost_ratio: float) -> float:
    """Leviathan et al. (2023), Theorem 3.8: (1 - alpha^(g+1)) / ((1 - alpha)(g c + 1)).

    The expected tokens per target call over the cost of one round (g draft calls
    at c each plus one target call), in units of a target call.
    """
    g = draft_len
    tokens = g + 1.0 if alpha >= 1 else (1 - alpha ** (g + 1)) / (1 - alpha)
    return tokens / (g * cost_ratio + 1)


def check_knobs(draft_len, temperature, max_new_tokens, adaptive) -> None:
    if isinstance(draft_len, bool) or not isinstance(draft_len, int) or not 1 <= draft_len <= MAX_DRAFT_LEN:
        raise ValueError(f"draft_len={draft_len!r}; valid range is 1..{MAX_DRAFT_LEN} (proposals per round)")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < float("inf"):
        raise ValueError(f"temperature={temperature!r}; must be a finite number >= 0 (0 is greedy)")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}; must be a positive integer")
    if adaptive is not None and (isinstance(adaptive, bool) or not isinstance(adaptive, (int, float))
                                 or not 0 < adaptive < 1):
        raise ValueError(f"adaptive={adaptive!r}; valid: None (fixed draft length) or a confidence "
                         "threshold strictly between 0 and 1")


def hf_of(side):
    """The model `as_decoder(side)` runs, without building its decoder."""
    return side.hf if isinstance(side, Decoder) else getattr(side, "hf", side)


def as_decoder(side) -> Decoder:
    if isinstance(side, Decoder):
        return side
    hf = getattr(side, "hf", side)  # an explorer Model, or a transformers model
    return fused_side(hf) or Decoder(hf)


# Target models and the draft models already checked against each other: comparing two
# vocabularies costs more than a round of decoding, and a benchmark calls the loop per prompt.
# Per target model: weak references to (draft model, target tokenizer, draft tokenizer) passed.
_CHECKED: "weakref.WeakKeyDictionary[torch.nn.Module, list]" = weakref.WeakKeyDictionary()


def _ref(x):
    return weakref.ref(x) if x is not None else (lambda: None)


def check_pair(target, draft) -> None:
    """Refuse, with a reason, a draft that cannot speed up this target losslessly."""
    if isinstance(draft, Draft) and not isinstance(draft, ModelDraft):
        return  # model-free: it proposes the target's own token ids
    if isinstance(draft, ModelDraft):
        draft = draft.decoder
    t_hf, d_hf = hf_of(target), hf_of(draft)  # not as_decoder: that checks every weight for a change
    key = (d_hf, getattr(target, "tokenizer", None), getattr(draft, "tokenizer", None))
    if any(all(r() is x for r, x in zip(refs, key)) for refs in _CHECKED.get(t_hf, ())):
        return
    check_models(target, draft)
    _CHECKED.setdefault(t_hf, []).append(tuple(_ref(x) for x in key))


def check_models(target, draft) -> None:
    tv, dv = vocab_of(target), vocab_of(draft)
    if tv is not None and dv is not None and tv != dv:
        differ = len(set(tv.items()) ^ set(dv.items()))
        raise ValueError(f"draft and target tokenizers differ ({len(dv)} vs {len(tv)} tokens, {differ} "
                         "token-id pairs not shared); speculative decoding needs one shared vocabulary, "
                         "e.g. two models of the zoo")
    t, d = as_decoder(target), as_decoder(draft)
    if t.vocab_size != d.vocab_size:
        raise ValueError(f"draft vocab_size={d.vocab_size} but target vocab_size={t.vocab_size}; "
                         "they must score the same token ids")
    if d.params >= t.params:
        raise ValueError(f"draft has {d.params:,} parameters, not fewer than the target's {t.params:,}; "
                         "the draft must be smaller than the target (e.g. zoo-xs drafting for zoo-m)")


def vocab_of(side) -> dict | None:
    tok = getattr(side, "tokenizer", None)
    return tok.get_vocab() if tok is not None else None


def as_batch(input_ids, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), left padded: a tensor, a tokenizer's output, one list of ids or a list of lists."""
    if isinstance(input_ids, Mapping):
        input_ids, attention_mask = input_ids["input_ids"], input_ids.get("attention_mask", attention_mask)
    if isinstance(input_ids, (list, tuple)) and input_ids and isinstance(input_ids[0], (list, tuple)):
        longest = max(len(r) for r in input_ids)
        ids = torch.tensor([[0] * (longest - len(r)) + list(r) for r in input_ids], dtype=torch.long)
        mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in input_ids], dtype=torch.long)
    else:
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        ids = ids[None] if ids.dim() == 1 else ids
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).long()
        mask = mask[None] if mask.dim() == 1 else mask
    if ids.dim() != 2 or ids.shape != mask.shape or ids.shape[1] == 0:
        raise ValueError(f"input_ids of shape {tuple(ids.shape)} (mask {tuple(mask.shape)}); "
                         "give a non-empty [batch, length] tensor with a matching attention_mask")
    if not bool(mask[:, -1].all()):
        raise ValueError("every prompt must end with a real token: pad on the left (padding_side='left')")
    return ids, mask


def eos_of(target) -> int:
    tok = getattr(target, "tokenizer", None)
    eos = tok.eos_token_id if tok is not None else getattr(as_decoder(target).hf.config, "eos_token_id", None)
    return eos[0] if isinstance(eos, (list, tuple)) else (-1 if eos is None else eos)


@torch.inference_mode()
def speculative_generate(target, draft, input_ids, *, draft_len: int, temperature: float,
                         max_new_tokens: int, generator=None,
                         adaptive: float | None = None, attention_mask=None,
                         trace: list | None = None, plan: LengthPlan | None = None) -> Speculation:
    """Decode with `draft` proposing and `target` verifying; the output is the target's.

    `target` is an explorer Model, a transformers causal LM or a `Decoder`; `draft` is one of
    those too, or any `Draft` (a model-free `PromptLookup()`, say).
    `adaptive=tau` (SpecDec++-style): a row stops proposing once the draft's own
    probability that all its proposals this round survive (the product of its
    probabilities for them) falls below tau; `draft_len` still caps the round.
    Returns the tokens (as `explorer.generate.generate` does) and `stats`.
    `generator`: a torch.Generator, or one per prompt (`explorer.generate.samplers`), so a
    prompt's samples do not depend on its batch.
    `trace`: a list to append one record per row per target call, `{"row", "accepted",
    "rejected", "bonus"}` (token ids; `bonus` is the target's own token, or None when the
    round ended on an accepted end-of-sequence): the token stream a learner can watch.
    `plan`: a `LengthPlan` measured at this batch size; each round's length is then the
    plan's best for the acceptance seen so far, capped by `draft_len` (0: a plain step).
    """
    check_knobs(draft_len, temperature, max_new_tokens, adaptive)
    check_pair(target, draft)
    tgt, drf = as_decoder(target), as_draft(draft)
    if drf.vocab_size is None:
        drf.vocab_size = tgt.vocab_size
    ids, mask = as_batch(input_ids, attention_mask)
    longest = int(mask.sum(-1).max())
    context = int(min(tgt.context, drf.context))
    if longest + max_new_tokens > context:
        raise ValueError(f"prompt of {longest} tokens plus max_new_tokens={max_new_tokens} is longer than the "
                         f"context of {context} tokens")
    eos, batch = eos_of(target), ids.shape[0]
    stats = SpecStats(draft_len)
    out: list[list[int]] = [[] for _ in range(batch)]
    logp = [0.0] * batch
    # Neither model runs the prompt on its own: the draft's first call reads the prompt
    # and proposes, and the target's first call reads the prompt and verifies, as
    # transformers' assisted generation does. Every target call then yields tokens.
    tgt.start(ids[:, :0], mask[:, :0])
    drf.start(ids, mask)
    rows = torch.arange(batch)
    t_next, t_valid = ids, mask.bool()  # not yet in the target's cache
    one_row = ONE_ROW and not temperature and adaptive is None and plan is None
    scored: list = []  # the one-row rounds' (logits, emitted tokens): log-probabilities at the end
    while rows.numel():
        live = rows.numel()
        if live == 1 and one_row:
            r = int(rows[0])
            if t_valid is not None and bool(t_valid.all()):
                t_valid = None
            if one_row_round(tgt, drf, t_next, t_valid, r, out, scored, draft_len, max_new_tokens, eos, stats,
                             trace):
                logp[r] += row_logprob(scored)
                break
            t_next, t_valid = out[r][-1], None
            continue
        left = torch.tensor([max_new_tokens - len(out[r]) for r in rows.tolist()])
        cap = (left - 1).clamp(max=draft_len)  # never propose past max_new_tokens
        if plan is not None:
            alpha = (stats.accepted + plan.prior * PRIOR_WEIGHT) / (stats.judged + PRIOR_WEIGHT)
            g_plan = plan.best(alpha)
            cap = cap.clamp(max=g_plan)
            stats.plain_steps += g_plan == 0
        # per_row: with one generator per prompt, each live row keeps drawing from its own.
        drafts, qs, lens = drf.propose(cap, temperature, adaptive, eos, per_row(generator, rows), stats)
        g = drafts.shape[1]
        logits = tgt.extend(torch.cat([t_next, drafts], 1),
                            torch.cat([t_valid, torch.ones(live, g, dtype=torch.bool)], 1))[:, -g - 1:]
        n, nxt = verify(logits, drafts, qs, lens, temperature, per_row(generator, rows))
        stats.steps += 1
        stats.target_calls += live
        stats.target_positions += live * (g + 1)
        record(stats, n, lens)
        tgt.keep(torch.arange(g + 1)[None] <= n[:, None])
        drf.update(drafts, n, nxt)
        t_next, t_valid = nxt[:, None], torch.ones(live, 1, dtype=torch.bool)
        lp = torch.log_softmax(logits / temperature if temperature else logits, -1)
        if trace is not None:
            trace.extend(rounds(rows, drafts, n, lens, nxt, eos))
        done = emit(out, logp, rows, drafts, n, nxt, lp, eos, max_new_tokens, stats)
        rows, t_next, t_valid = drop_done(done, rows, (t_next, t_valid), tgt, drf)
    tokens = [strip_eos(r, eos) for r in out]
    tok = getattr(target, "tokenizer", None)
    texts = tok.batch_decode(tokens, skip_special_tokens=True) if tok is not None else []
    return Speculation(tokens, texts, logp, stats.tokens, stats.steps, stats, trace,
                       decode_path="fused" if isinstance(tgt, FusedSide) else "transformers")


# Greedy rounds of a single row (batch size 1, or the last row of a batch) take `one_row_round`:
# the same proposals, verification, statistics and output, with Python integers between the
# model calls. False runs every round through the batched code (tests compare the two).
ONE_ROW = True


def one_row_round(tgt: Decoder, drf: Draft, t_next, t_valid, r: int, out, scored: list, draft_len: int,
                  max_new_tokens: int, eos: int, stats: SpecStats, trace) -> bool:
    """One greedy round for the one live row `r` (fixed draft length); whether it is finished.

    `t_next`: the tokens the target has not read yet, a [1, k] tensor (`t_valid` False at a pad,
    None: all real) or the one token (an int) it emitted last round. Appends this round's
    (logits, emitted tokens) to `scored` (`row_logprob` sums them once the row is done)."""
    cap = min(max_new_tokens - len(out[r]) - 1, draft_len)
    prop = drf.propose_row(cap, eos, stats)
    g = len(prop)
    if isinstance(t_next, int):
        logits = tgt.extend(torch.tensor([[t_next, *prop]]), None)[0]
    else:
        drafts = torch.tensor([prop], dtype=torch.long).reshape(1, g)
        valid = None if t_valid is None else torch.cat([t_valid, torch.ones(1, g, dtype=torch.bool)], 1)
        logits = tgt.extend(torch.cat([t_next, drafts], 1), valid)[0, -g - 1:]
    best = logits.argmax(-1).tolist()
    n = 0
    while n < g and prop[n] == best[n]:
        n += 1
    nxt = best[n]
    stats.steps += 1
    stats.target_calls += 1
    stats.target_positions += g + 1
    stats.drafted += g
    stats.judged += min(n + 1, g)
    stats.accepted += n
    for j in range(min(n + 1, g)):
        stats.position_judged[j] += 1
        stats.position_accepted[j] += j < n
    tgt.drop_last(g - n)  # it read t_next and g proposals; keeps t_next and the n accepted
    drf.update_row(prop, n, nxt)
    new = prop[:n] + [nxt]
    ended = eos in new[:n]  # proposals stop at end-of-sequence, so it can only be the last
    if trace is not None:
        trace.append({"row": r, "accepted": prop[:n], "rejected": prop[n:g], "bonus": None if ended else nxt})
    if ended:
        stats.eos_accepted += 1
        new = new[:n]
    scored.append((logits[: len(new)], new))
    out[r] += new
    stats.tokens += len(new)
    return new[-1] == eos or len(out[r]) >= max_new_tokens


def row_logprob(scored: list) -> float:
    """The log-probability of the tokens `one_row_round` emitted, from their rounds' logits, in one go."""
    if not scored:
        return 0.0
    logits = torch.cat([x for x, _ in scored])
    tokens = torch.tensor([t for _, new in scored for t in new])
    return float(torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).double().sum())


@torch.inference_mode()
def decode_alone(target, input_ids, *, max_new_tokens: int, attention_mask=None) -> list[list[int]]:
    """Greedy tokens of the target alone, one token per call through the same `Decoder` the
    speculative loop verifies with (`as_decoder`): the baseline in the unit its costs are measured in
    (`measure_costs`), so measured and predicted speed-ups compare like with like."""
    tgt = as_decoder(target)
    ids, mask = as_batch(input_ids, attention_mask)
    eos = eos_of(target)
    nxt = tgt.start(ids, mask).argmax(-1)
    out = [[] for _ in range(ids.shape[0])]
    rows, one = torch.arange(ids.shape[0]), torch.ones(ids.shape[0], 1, dtype=torch.bool)
    for step in range(max_new_tokens):
        done = []
        for i, (r, t) in enumerate(zip(rows.tolist(), nxt.tolist())):
            out[r].append(t)
            done.append(t == eos or len(out[r]) >= max_new_tokens)
        if all(done):
            break
        if any(done):
            keep = torch.tensor([not d for d in done]).nonzero()[:, 0]
            tgt.select(keep)
            rows, nxt, one = rows[keep], nxt[keep], one[keep]
        nxt = tgt.extend(nxt[:, None], one, last_only=True)[:, -1].argmax(-1)
    return [strip_eos(r, eos) for r in out]


def drop_done(done, rows, pending, tgt: Decoder, drf: Draft):
    """Finished rows leave the batch (and both caches), so they cost nothing more."""
    if not done.any():
        return (rows, *pending)
    keep = (~done).nonzero()[:, 0]
    if keep.numel():
        tgt.select(keep)
        drf.select(keep)
    return (rows[keep], *(p[keep] for p in pending))


def propose(drf: Decoder, x, valid, cap, temperature, adaptive, eos, generator, stats: SpecStats):
    """Draft up to cap[i] tokens for row i: (drafts [b, g], draft distributions, proposals per row)."""
    b = x.shape[0]
    if b == 1 and not temperature and adaptive is None:
        return propose_one(drf, x, valid, int(cap[0]), eos, stats)
    drafts: list[torch.Tensor] = []
    qs: list[torch.Tensor] = []
    going, sure = cap > 0, torch.ones(b)
    lens = torch.zeros(b, dtype=torch.long)
    one = torch.ones(b, 1, dtype=torch.bool)
    # Greedy with a fixed length needs no probabilities at all: argmax only.
    needs_q = bool(temperature) or adaptive is not None
    for j in range(int(cap.max())):
        if not going.any():
            break
        logits = drf.extend(x, valid, last_only=True)[:, -1]
        stats.draft_calls += b
        stats.draft_positions += b * x.shape[1]
        if needs_q:
            q = torch.softmax(logits / (temperature or 1.0), -1)
            d = draw(q, generator, going) if temperature else logits.argmax(-1)
            qs.append(q)
            sure = sure * q.gather(-1, d[:, None])[:, 0]
        else:
            d = logits.argmax(-1)
        drafts.append(d)
        lens += going
        # Stopping looks only at tokens already proposed, never at the next one, so
        # the rejection sampling below stays exact (a rule that peeked would bias q).
        going &= (j + 1 < cap) & (d != eos)
        if adaptive is not None:
            going &= sure >= adaptive
        x, valid = d[:, None], one
    return (torch.stack(drafts, 1) if drafts else torch.empty(b, 0, dtype=torch.long)), qs, lens


def propose_one(drf: Decoder, x, valid, cap: int, eos: int, stats: SpecStats):
    """`propose` for one row, greedy, fixed length: the same proposals, with Python integers
    between the draft's calls instead of a handful of small tensor operations per proposal."""
    out = propose_row(drf, x, valid, cap, eos, stats)
    return torch.tensor([out], dtype=torch.long).reshape(1, len(out)), [], torch.tensor([len(out)])


def propose_row(drf: Decoder, x, valid, cap: int, eos: int, stats: SpecStats) -> list[int]:
    """Up to `cap` greedy proposals for one row, as integers; `valid` None: every token of x is real."""
    out: list[int] = []
    for _ in range(cap):
        d = int(drf.extend(x, valid, last_only=True).argmax())  # logits (1, 1, vocab): the token's index
        stats.draft_calls += 1
        stats.draft_positions += x.shape[1]
        out.append(d)
        if d == eos:
            break
        x, valid = torch.tensor([[d]]), None
    return out


def verify(logits, drafts, qs, lens, temperature, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted proposals per row, the target's own next token per row)."""
    b, g = drafts.shape
    offered = torch.arange(g)[None] < lens[:, None]
    if not temperature:
        best = logits.argmax(-1)
        n = ((drafts == best[:, :g]) & offered).long().cumprod(1).sum(1)
        return n, best.gather(1, n[:, None])[:, 0]
    p = torch.softmax(logits / temperature, -1)
    q = torch.stack(qs, 1) if qs else p[:, :0]
    pd = p[:, :g].gather(-1, drafts[..., None])[..., 0]
    qd = q.gather(-1, drafts[..., None])[..., 0]
    u = uniform((b, g), generator, lengths=lens)
    n = ((u * qd < pd) & offered).long().cumprod(1).sum(1)  # accept with probability min(1, p/q)
    at = torch.arange(b)
    pn = p[at, n]
    rejected = n < lens
    qn = torch.cat([q, torch.zeros_like(p[:, :1])], 1)[at, n]
    resid = (pn - qn).clamp(min=0)
    # A row that stopped proposing early (all accepted) draws its bonus from p, not the residual.
    resid = torch.where(rejected[:, None] & (resid.sum(-1, keepdim=True) > 0), resid, pn)
    return n, draw(resid / resid.sum(-1, keepdim=True), generator)


def record(stats: SpecStats, n: torch.Tensor, lens: torch.Tensor) -> None:
    for k, g in zip(n.tolist(), lens.tolist()):  # plain ints: a few rows, a few positions
        judged = min(k + 1, g)
        stats.drafted += g
        stats.judged += judged
        stats.accepted += k
        for j in range(judged):
            stats.position_judged[j] += 1
            stats.position_accepted[j] += j < k


def rounds(rows, drafts, n, lens, nxt, eos) -> list[dict]:
    """One trace record per row of this target call: what was kept, what was thrown away."""
    out = []
    for r, row, k, g, t in zip(rows.tolist(), drafts.tolist(), n.tolist(), lens.tolist(), nxt.tolist()):
        kept = row[:k]
        ended = eos in kept  # an accepted end-of-sequence ends the round with no token of the target's
        out.append({"row": r, "accepted": kept, "rejected": row[k:g], "bonus": None if ended else t})
    return out


def emit(out, logp, rows, drafts, n, nxt, lp, eos, max_new_tokens, stats: SpecStats) -> torch.Tensor:
    """Append each row's accepted proposals and the target's token; which rows are finished."""
    # Row i emits drafts[i, :n_i] then nxt_i: column n_i of `emitted` holds nxt_i.
    emitted = torch.cat([drafts, nxt[:, None]], 1).scatter(1, n[:, None], nxt[:, None])
    cum = lp.gather(-1, emitted[..., None])[..., 0].double().cumsum(1).tolist()
    done = []
    for i, (r, k, row) in enumerate(zip(rows.tolist(), n.tolist(), emitted.tolist())):
        new = row[: k + 1]
        if eos in new[:k]:  # proposals stop at end-of-sequence, so it can only be the last
            stats.eos_accepted += 1
            new = new[:k]
        out[r] += new
        logp[r] += cum[i][len(new) - 1]
        stats.tokens += len(new)
        done.append(new[-1] == eos or len(out[r]) >= max_new_tokens)
    return torch.tensor(done, dtype=torch.bool)


def step_seconds(side: Decoder, width: int, clock=time.perf_counter) -> float:
    """Seconds of one cached forward of `width` tokens on top of `side`'s cache, then rolled back."""
    tokens = side.mask.new_ones(side.mask.shape[0], width)  # any token: cost does not depend on it
    valid = tokens.bool()
    t = clock()
    side.extend(tokens, valid, last_only=width == 1)
    seconds = clock() - t
    side.keep(~valid)
    return seconds


@dataclass(frozen=True)
class Costs:
    cost_ratio: float  # c: one draft forward over one target forward, one token each
    verify_ratio: float  # one target forward over draft_len + 1 tokens over one of 1 token


@torch.inference_mode()
def measure_costs(target, draft, input_ids, *, draft_len: int, attention_mask=None, calls: int = 30,
                  clock=time.perf_counter) -> Costs:
    """Leviathan's c, and what his model leaves out: a verification call costs more than one token.

    Each call is timed where it runs, in steady state: blocks of 16 rounds as the loop runs
    them (the draft's `draft_len` one-token calls in a row, then the target's verification
    call of draft_len + 1 tokens), and blocks of 16 of the target alone's one-token calls
    back to back, as `decode_alone` runs them (the unit); the second half of each block
    counts. A call timed after the other kind is slow for several calls (zoo-l one token:
    1.80 ms right after a round, 1.39 ms five calls later, 1.34 ms in steady decoding,
    loaded machine; a verification of 3+ positions reads oneDNN's copy of the weights, a
    one-token call MKL's), so timing single calls in turn overstated the unit and
    understated c and v.
    Blocks of both kinds alternate, so a noisy neighbour slows every side alike; medians.
    `calls`: about how many calls of each kind are timed.
    `clock=time.process_time` counts CPU seconds only, for a machine shared with others.
    `draft=None` (a model-free draft): cost ratio 0, the verification's cost alone.
    """
    ids, mask = as_batch(input_ids, attention_mask)
    tgt = as_decoder(target)
    drf = None if draft is None else as_decoder(draft.decoder if isinstance(draft, ModelDraft) else draft)
    tgt.start(ids, mask)
    if drf is not None:
        drf.start(ids, mask)
    one, wide, d = [], [], []
    size = 16  # calls per block; the first half of each settles
    for _ in range(max(2, -(-calls // (size // 2)))):
        for i in range(size):
            drafted = [step_seconds(drf, 1, clock) for _ in range(draft_len)] if drf is not None else []
            verified = step_seconds(tgt, draft_len + 1, clock)
            if i >= size // 2:
                d += drafted
                wide.append(verified)
        for i in range(size):
            seconds = step_seconds(tgt, 1, clock)
            if i >= size // 2:
                one.append(seconds)
    t = statistics.median(one)
    return Costs(statistics.median(d) / t if d else 0.0, statistics.median(wide) / t)
