"""The one generation loop: batched, KV-cached, greedy or sampled.

Techniques plug into this loop instead of copying it. We write it by hand
rather than call `model.generate` because every technique needs what
`generate` hides: per-step logits, exact token counts and the log-probability
of every sample.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import torch

from explorer.layerwise import fused_decoder

# A sampler: None (greedy), one torch.Generator for the whole batch, or one per row.
# Evaluations pass one per row, seeded per example (`samplers`), so a sample never
# depends on which other prompts shared its batch, nor on the batch size.
Sampler = Union[torch.Generator, Sequence[torch.Generator], None]


@dataclass
class Generation:
    tokens: list[list[int]]  # generated ids per prompt, up to and without end-of-sequence
    texts: list[str]
    logprobs: list[float]  # summed log-probability of each generated sequence (incl. eos)
    tokens_generated: int  # forward positions decoded, summed over the batch (incl. eos)
    steps: int  # decode steps taken (batched forward calls after the prompt)
    # Which forward ran the decode steps (`decode_path`): "fused", "transformers", or the wrapper's
    # name. Keyword-only, so subclasses' positional fields are unchanged; "" when a loop other than
    # `generate` built this (it did not record one).
    decode_path: str = field(default="", kw_only=True)


# The decode paths `generate` can take. "auto": the fused path when the model supports it, else
# the transformers forward. Rows always run "auto"; the others are for tests and benchmarks.
PATHS = ("auto", "fused", "transformers")


def decoder(model, path: str = "auto") -> tuple[Any, str]:
    """(the callable that decodes, its name) for a transformers model under `path`.

    "fused" is `explorer.layerwise.FusedDecoder`: decode steps as plain tensor
    operations on a preallocated K/V cache, for Llama-style stacks (the zoo, pruned
    or quantized zoo models, SmolLM2); its greedy tokens equal the transformers
    forward's (tests/test_fused.py). Anything else (a model it cannot run, or an
    object that is not a transformers model, such as early exit's wrapper) decodes
    through itself, named by its `decode_path` attribute or its type.

    Tried and left out: torch.compile of the fused layers (dynamic shapes) took 69 s (batch 1)
    and 115 s (batch 64) to compile on zoo-l, then ran at 0.72x and 0.93x the eager fused
    path's speed (CPU time; the per-layer guards hit the recompile limit), and every pruned or
    quantized variant would compile anew. The fused path's K/V cache is already static:
    preallocated, written in place, no per-step concatenation.
    """
    if path not in PATHS:
        raise ValueError(f"path={path!r}; valid: {', '.join(map(repr, PATHS))}")
    if not hasattr(model, "config") or not hasattr(model, "get_input_embeddings"):
        if path != "auto":
            raise ValueError(f"path={path!r} applies to a transformers model; got {type(model).__name__}")
        return model, str(getattr(model, "decode_path", type(model).__name__))
    if path == "transformers":
        return model, "transformers"
    fused = fused_decoder(model)
    if fused is None and path == "fused":
        raise ValueError(f"path='fused': {type(model).__name__} ({model.config.model_type}) is not a "
                         "Llama-style stack of Linear projections the fused path runs; use path='auto'")
    return (fused, "fused") if fused is not None else (model, "transformers")


def encode(tokenizer, prompts: list[str], context: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    longest = int(enc["attention_mask"].sum(-1).max())
    if longest > context:
        raise ValueError(
            f"prompt of {longest} tokens is longer than the model's context of {context} tokens"
        )
    return enc


def positions(mask: torch.Tensor) -> torch.Tensor:
    # Left padding: real tokens count positions from 0 wherever they start.
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: Sampler = None,
    path: str = "auto",
    stop_at_eos: bool = True,
) -> Generation:
    """Decode up to `max_new_tokens` per prompt, stopping each row at end-of-sequence.

    `generator`: one torch.Generator for the batch, or a list with one per prompt
    (`samplers(seed, n)`), which makes each prompt's samples independent of its batch.
    `path`: which forward decodes (`decoder`); the result's `decode_path` names it.
    stop_at_eos=False decodes every row for all `max_new_tokens` steps (benchmarks time a fixed
    number of steps this way; the tokens past an end-of-sequence then mean nothing).
    """
    check_temperature(temperature)
    model, decode_path = decoder(model, path)
    context = model.config.max_position_embeddings
    enc = encode(tokenizer, prompts, context - max_new_tokens)
    if generator is not None and not isinstance(generator, torch.Generator) and len(generator) != len(prompts):
        raise ValueError(f"{len(generator)} generators for {len(prompts)} prompts; give one per prompt")
    dev = getattr(model, "device", None) or torch.device("cpu")  # the model's device (load(..., device=))
    ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
    eos = tokenizer.eos_token_id
    batch = ids.shape[0]
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                use_cache=True, logits_to_keep=1)
    cache, logits = out.cache, out.logits[:, -1]
    done = torch.zeros(batch, dtype=torch.bool, device=dev)
    # Preallocated: each step writes a column of the tokens and passes a longer view of the mask.
    gen = torch.empty(batch, max_new_tokens, dtype=torch.long, device=dev)
    width = mask.shape[1]
    full_mask = torch.ones(batch, width + max_new_tokens, dtype=mask.dtype, device=dev)
    full_mask[:, :width] = mask
    logp = torch.zeros(batch, dtype=torch.float64)  # kept on the CPU: not every device has float64
    pos = positions(mask)[:, -1:]
    live = torch.zeros((), dtype=torch.long, device=dev)  # rows decoding, summed over steps
    steps = 0
    for step in range(max_new_tokens):
        nxt, lp = pick(logits, temperature, top_p, generator)
        live += (~done).sum()
        logp += torch.where(done, 0.0, lp).cpu().double()
        nxt = torch.where(done, eos, nxt)
        gen[:, step] = nxt
        if stop_at_eos:
            done |= nxt == eos
        if step == max_new_tokens - 1 or stop_at_eos and bool(done.all()):
            break
        pos = pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=full_mask[:, : width + step + 1], position_ids=pos,
                    cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]
        steps += 1
    gen, decoded = gen[:, : steps + 1], int(live)
    tokens = [strip_eos(row, eos) for row in gen.tolist()]
    texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return Generation(tokens, texts, logp.tolist(), decoded, steps, decode_path=decode_path)


def strip_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos)] if eos in row else row


def check_temperature(temperature) -> float:
    """0 (greedy) or a finite positive number; anything else is refused by name."""
    import math

    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature={temperature!r}; must be a finite number >= 0 (0 is greedy)")
    return temperature


def check_seed(seed, name: str = "seed") -> int:
    """A seed is a non-negative integer (not a bool, not a float)."""
    import numbers

    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"{name}={seed!r}; give a non-negative integer such as 0")
    return int(seed)


def example_seed(seed: int, index: int, *salt: int) -> int:
    """The seed of example `index` (and of its sample `salt`, if given) in a run seeded `seed`.

    A hash, not `seed + index`: neighbouring runs then share no streams.
    """
    key = ":".join(str(int(x)) for x in (seed, index, *salt)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def samplers(seeds: int | Sequence[int], rows: int | None = None) -> list[torch.Generator]:
    """One torch.Generator per row: `seeds` is a list of per-row seeds, or a run seed with `rows`
    rows (row i then gets `example_seed(seed, i)`)."""
    if not isinstance(seeds, (list, tuple)):
        seed = check_seed(seeds)
        if rows is None:
            raise ValueError("samplers(seed, rows): give the number of rows with a single seed")
        seeds = [example_seed(seed, i) for i in range(rows)]
    seeds = [check_seed(s, "seeds[i]") for s in seeds]
    if rows is not None and len(seeds) != rows:
        raise ValueError(f"{len(seeds)} seeds for {rows} rows; give one seed per row")
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def per_row(generator: Sampler, rows: torch.Tensor | None = None) -> Sampler:
    """The sampler for a subset of the batch (`rows`, original indices), whatever its kind."""
    if generator is None or isinstance(generator, torch.Generator) or rows is None:
        return generator
    return [generator[i] for i in rows.tolist()]


def uniform(shape: tuple[int, ...], generator: Sampler, active: torch.Tensor | None = None,
            lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform [0, 1) numbers, one row per batch row. With per-row generators each row draws
    from its own, only the rows in `active` draw, and a row draws only its first `lengths[i]`
    numbers of a [batch, k] shape; the rest are 0.5 and must go unused. So how many numbers a
    row takes depends on that row alone, never on the rest of its batch."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]} rows; give one per row")
    out = torch.full(shape, 0.5)
    for i, g in enumerate(generator):
        if active is not None and not bool(active[i]):
            continue
        if lengths is None:
            out[i] = torch.rand(shape[1:], generator=g)
        elif int(lengths[i]):
            out[i, : int(lengths[i])] = torch.rand(int(lengths[i]), generator=g)
    return out


def draw(probs: torch.Tensor, generator: Sampler, active: torch.Tensor | None = None) -> torch.Tensor:
    """One index per row from the rows of `probs` (need not be normalised)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator)[:, 0]
    # Inverse CDF with each row's own uniform: a row's draw reads its own stream only.
    cdf = probs.double().cumsum(-1)
    u = uniform((probs.shape[0],), generator, active).to(cdf.device, torch.float64) * cdf[:, -1]
    idx = torch.searchsorted(cdf, u[:, None], right=True)[:, 0]
    return idx.clamp(max=probs.shape[-1] - 1)


def pick(logits: torch.Tensor, temperature: float, top_p: float, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token and its log-probability under the (tempered, nucleus) sampling distribution."""
    logits = logits.float()
    if temperature == 0:
        lp = torch.log_softmax(logits, -1)
        nxt = lp.argmax(-1)
        return nxt, lp.gather(-1, nxt[:, None])[:, 0]
    lp = torch.log_softmax(logits / temperature, -1)
    if top_p < 1.0:
        lp = nucleus(lp, top_p)
    nxt = draw(lp.exp(), generator)
    return nxt, lp.gather(-1, nxt[:, None])[:, 0]


def nucleus(lp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p; renormalise."""
    sorted_lp, order = lp.sort(-1, descending=True)
    cum = sorted_lp.exp().cumsum(-1)
    drop = cum - sorted_lp.exp() >= top_p
    sorted_lp = sorted_lp.masked_fill(drop, float("-inf"))
    kept = torch.full_like(lp, float("-inf")).scatter(-1, order, sorted_lp)
    return torch.log_softmax(kept, -1)
