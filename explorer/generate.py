"""The one generation loop: batched, KV-cached, greedy or sampled.

Techniques plug into this loop instead of copying it. We write it by hand
rather than call `model.generate` because every technique needs what
`generate` hides: per-step logits, exact token counts and the log-probability
of every sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Generation:
    tokens: list[list[int]]  # generated ids per prompt, up to and without end-of-sequence
    texts: list[str]
    logprobs: list[float]  # summed log-probability of each generated sequence (incl. eos)
    tokens_generated: int  # forward positions decoded, summed over the batch (incl. eos)
    steps: int  # decode steps taken (batched forward calls after the prompt)


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
    generator: torch.Generator | None = None,
) -> Generation:
    """Decode up to `max_new_tokens` per prompt, stopping each row at end-of-sequence."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature!r}; must be >= 0 (0 is greedy)")
    context = model.config.max_position_embeddings
    enc = encode(tokenizer, prompts, context - max_new_tokens)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    eos = tokenizer.eos_token_id
    batch = ids.shape[0]
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                use_cache=True, logits_to_keep=1)
    cache, logits = out.cache, out.logits[:, -1]
    done = torch.zeros(batch, dtype=torch.bool)
    gen = torch.empty(batch, 0, dtype=torch.long)
    logp = torch.zeros(batch, dtype=torch.float64)
    pos = positions(mask)[:, -1:]
    decoded = steps = 0
    for step in range(max_new_tokens):
        nxt, lp = pick(logits, temperature, top_p, generator)
        decoded += int((~done).sum())
        logp += torch.where(done, 0.0, lp.double())
        nxt = torch.where(done, eos, nxt)
        gen = torch.cat([gen, nxt[:, None]], dim=1)
        done |= nxt == eos
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype)], dim=1)
        pos = pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                    cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]
        steps += 1
    tokens = [strip_eos(row, eos) for row in gen.tolist()]
    texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return Generation(tokens, texts, logp.tolist(), decoded, steps)


def strip_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos)] if eos in row else row


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
    nxt = torch.multinomial(lp.exp(), 1, generator=generator)[:, 0]
    return nxt, lp.gather(-1, nxt[:, None])[:, 0]


def nucleus(lp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p; renormalise."""
    sorted_lp, order = lp.sort(-1, descending=True)
    cum = sorted_lp.exp().cumsum(-1)
    drop = cum - sorted_lp.exp() >= top_p
    sorted_lp = sorted_lp.masked_fill(drop, float("-inf"))
    kept = torch.full_like(lp, float("-inf")).scatter(-1, order, sorted_lp)
    return torch.log_softmax(kept, -1)
