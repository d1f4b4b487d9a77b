"""Small drafts for SmolLM2-135M: one distilled from the target's own outputs, one trained on plain text.

DistillSpec (Zhou et al. 2024) aligns a draft with its target by training it on
data the target generates: the draft then proposes what the target would say,
which is what speculative decoding accepts. To see what that buys, the recipe
trains two drafts of the same size, initialisation, steps and batch; only the
data differ:

- ``smollm2-draft-distilled``: SmolLM2's greedy replies to chat prompts (the
  natural-format tasks and "continue this text" requests), loss on the replies;
- ``smollm2-draft-text``: windows of Shakespeare's plays (The Tempest held out),
  loss on every token.

Both share SmolLM2's tokenizer (49,152 tokens), so they can draft for it. At
that vocabulary the embedding is nearly the whole model, so the drafts are
narrow (width 64, 2 layers), tie input and output embeddings, start from the
target's own embedding projected onto its top principal directions, and are
stored in fp16. `explorer zoo train smollm2-drafts` runs the recipe again.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

TARGET = "smollm2-135m"
from explorer.zoo import DRAFTS  # noqa: E402  (names: distilled, plain text)
DATA_SEED = 4242  # prompts the target answers for the distillation data; no evaluation uses it
EVAL_SEED = 31337  # held-out prompts for the acceptance comparison


@dataclass(frozen=True)
class DraftSpec:
    width: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    steps: int = 240
    batch: int = 16
    seq: int = 96  # tokens per plain-text window
    lr: float = 3e-3
    warmup: int = 20
    seed: int = 0
    task_prompts: int = 256  # distillation prompts: natural-format tasks
    text_prompts: int = 64  # distillation prompts: "continue this text"
    task_tokens: int = 20  # reply budget per task prompt
    text_tokens: int = 40  # reply budget per text prompt
    gen_batch: int = 64


def build(spec: DraftSpec, target_hf):
    """A Llama draft with the target's vocabulary and special tokens, its embedding from the target's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = target_hf.config
    config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=spec.width, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        max_position_embeddings=2048, rope_theta=getattr(c, "rope_theta", 10000.0),
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
        tie_word_embeddings=True, rms_norm_eps=1e-5,
    )
    torch.manual_seed(spec.seed)
    draft = LlamaForCausalLM(config)
    with torch.no_grad():
        draft.model.embed_tokens.weight.copy_(projected_embedding(target_hf, spec.width))
    return draft


def projected_embedding(target_hf, width: int) -> torch.Tensor:
    """The target's token embedding on its `width` top principal directions: tokens the target
    treats alike start alike in the draft, which a 3M-parameter draft could not learn in minutes."""
    e = target_hf.get_input_embeddings().weight.detach().float()
    centred = e - e.mean(0)
    _, vecs = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    proj = centred @ vecs[:, -width:].flip(-1)
    # Rescaled to a small spread: the tied head multiplies it with unit-RMS states, and at the
    # target's own scale the first logits were confidently wrong (loss above log(vocab)).
    return proj * (0.05 / proj.std())


# ---------------------------------------------------------------- data

def chat_prompts(tokenizer, spec: DraftSpec, seed: int, n_task: int, n_text: int,
                 text: str | None = None) -> list[tuple[str, int]]:
    """(prompt, reply budget): the natural-format tasks at difficulties 1..3, and text to continue."""
    from explorer import tasks as T

    out: list[tuple[str, int]] = []
    per = -(-n_task // (3 * len(T.GENERATIVE)))
    wrap = T.chat_wrapper(tokenizer)
    for name in T.GENERATIVE:
        task = T.get(name).with_format(T.NATURAL)
        for d in (1, 2, 3):
            out += [(wrap(task.fmt.prompt(p)), spec.task_tokens) for p in task.problems(per, seed, difficulty=d)]
    text = text if text is not None else plain_text()
    rng = random.Random(f"text-prompts:{seed}")
    for _ in range(n_text):
        i = rng.randrange(len(text) - 400)
        start = text.index(" ", i) + 1
        snippet = text[start : start + rng.randint(120, 300)]
        out.append((wrap(f"Continue this text:\n\n{snippet}"), spec.text_tokens))
    return out


def plain_text() -> str:
    """Shakespeare's plays as shipped for the zoo (The Tempest, the held-out play, left out)."""
    from explorer.zoo.recipe import corpus, find_text_dir

    return corpus(find_text_dir())


def target_replies(target, prompts: list[tuple[str, int]], batch: int, log=print) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reply ids + end-of-sequence) of the target's greedy replies, generated in batches."""
    from explorer.generate import generate

    tok = target.tokenizer
    out = []
    order = sorted(range(len(prompts)), key=lambda i: (prompts[i][1], len(prompts[i][0])))  # like with like
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        budget = max(prompts[i][1] for i in idx)
        g = generate(target.hf, tok, [prompts[i][0] for i in idx], max_new_tokens=budget)
        for i, reply in zip(idx, g.tokens):
            ended = len(reply) < budget
            out.append((tok(prompts[i][0])["input_ids"], reply + [tok.eos_token_id] * ended))
        log(f"distill: target replies {min(start + batch, len(order))}/{len(order)}")
    return out


def reply_batches(pairs, spec: DraftSpec, pad: int):
    """Batch `step` of the distillation data: prompt+reply rows, loss on the reply only."""
    def make(step: int):
        rng = random.Random(f"distilled:{spec.seed}:{step}")
        rows = [pairs[rng.randrange(len(pairs))] for _ in range(spec.batch)]
        width = max(len(p) + len(r) for p, r in rows)
        ids = torch.full((len(rows), width), pad)
        labels = torch.full((len(rows), width), -100)
        for j, (p, r) in enumerate(rows):
            ids[j, : len(p) + len(r)] = torch.tensor(p + r)
            labels[j, len(p) - 1 : len(p) + len(r) - 1] = torch.tensor(r)  # position t predicts token t+1
        return ids, labels
    return make


def text_batches(token_ids: list[int], spec: DraftSpec):
    """Batch `step` of the plain-text data: windows of `seq` tokens, loss on every next token."""
    data = torch.tensor(token_ids)

    def make(step: int):
        rng = random.Random(f"text:{spec.seed}:{step}")
        starts = [rng.randrange(len(data) - spec.seq - 1) for _ in range(spec.batch)]
        ids = torch.stack([data[s : s + spec.seq] for s in starts])
        labels = torch.cat([ids[:, 1:], torch.full((len(starts), 1), -100)], 1)
        return ids, labels
    return make


# ---------------------------------------------------------------- training

def train(draft, batches, spec: DraftSpec, log=print) -> dict:
    """AdamW with warm-up and cosine decay; the output head runs only where a label is scored
    (the 49,152-way head is most of the cost, and the distillation rows score only replies)."""
    opt = torch.optim.AdamW(draft.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.0)
    draft.train()
    t0, history, scored = time.perf_counter(), [], 0
    for step in range(spec.steps):
        lr = spec.lr * min(1.0, (step + 1) / spec.warmup)
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / spec.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        ids, labels = batches(step)
        # Right padding and causal attention: pads come after every scored position, so no mask.
        h = draft.model(input_ids=ids).last_hidden_state
        keep = labels != -100
        loss = torch.nn.functional.cross_entropy(draft.lm_head(h[keep]), labels[keep])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        opt.step()
        scored += int(keep.sum())
        if step % 20 == 0 or step == spec.steps - 1:
            history.append((step, round(loss.item(), 4)))
            log(f"distill: step {step}/{spec.steps} loss {loss.item():.3f}")
    draft.eval()
    return {"steps": spec.steps, "scored_tokens": scored, "train_seconds": round(time.perf_counter() - t0, 1),
            "loss_history": history}


# ---------------------------------------------------------------- acceptance

def eval_prompts(tokenizer, n_task: int = 24, n_text: int = 8) -> list[tuple[str, int]]:
    """Held-out: problems of another seed, and text to continue from The Tempest (no draft trained on it)."""
    from explorer.tasks import heldout_text

    return chat_prompts(tokenizer, DraftSpec(), EVAL_SEED, n_task, n_text, text=heldout_text())


def acceptance(target, draft, prompts: list[tuple[str, int]], draft_len: int = 4, batch: int = 16,
               reference: dict | None = None) -> dict:
    """Greedy speculative decoding of `prompts`: the draft's acceptance rate, tokens per target call,
    and whether every output equals the target's own greedy output. `reference`: a dict that keeps
    the target's own outputs between calls (several drafts, one target run)."""
    from explorer.generate import generate
    from explorer.speculative import SpecStats, speculative_generate

    tok = target.tokenizer
    reference = {} if reference is None else reference
    parts, same = [], True
    for budget in sorted({b for _, b in prompts}):
        texts = [p for p, b in prompts if b == budget]
        for i in range(0, len(texts), batch):
            chunk = texts[i : i + batch]
            enc = tok(chunk, return_tensors="pt", padding=True)
            spec = speculative_generate(target, draft, enc["input_ids"], attention_mask=enc["attention_mask"],
                                        draft_len=draft_len, temperature=0.0, max_new_tokens=budget)
            key = (budget, tuple(chunk))
            if key not in reference:
                reference[key] = generate(target.hf, tok, chunk, max_new_tokens=budget).tokens
            same &= spec.tokens == reference[key]
            parts.append(spec.stats)
    total = SpecStats.total(parts)
    return {"acceptance_rate": total.acceptance_rate, "tokens_per_target_call": total.tokens_per_target_call,
            "identical_to_target": bool(same), "prompts": len(prompts)}


# ---------------------------------------------------------------- the recipe

def save(draft, tokenizer, out: Path, facts: dict, card: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    draft.to(torch.float16).save_pretrained(out)  # fp16 on disk: the embedding is 49,152 x width
    draft.float()
    tokenizer.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(facts, indent=1))
    (out / "README.md").write_text(card)


def main(out: str | Path | None = None, *, spec: DraftSpec = DraftSpec(), threads: int = 1, log=print) -> dict:
    """Train both drafts (same size, init, steps), measure their acceptance, write them with cards."""
    from explorer.models import load
    from explorer.zoo import weights_root

    torch.set_num_threads(threads)
    root = Path(out) if out else weights_root()
    t0 = time.perf_counter()
    target = load(TARGET)
    tok = target.tokenizer
    prompts = chat_prompts(tok, spec, DATA_SEED, spec.task_prompts, spec.text_prompts)
    with torch.inference_mode():
        pairs = target_replies(target, prompts, spec.gen_batch, log)
    gen_seconds = time.perf_counter() - t0
    text_ids = tok(plain_text()[:600_000])["input_ids"]
    results = {}
    eval_set = eval_prompts(tok)
    for name, batches in ((DRAFTS[0], reply_batches(pairs, spec, tok.pad_token_id)),
                          (DRAFTS[1], text_batches(text_ids, spec))):
        draft = build(spec, target.hf)
        facts = train(draft, batches, spec, log) | {"name": name, "spec": asdict(spec), "threads": threads}
        if name == DRAFTS[0]:
            facts |= {"distill_prompts": len(prompts), "distill_seconds": round(gen_seconds, 1),
                      "distill_reply_tokens": sum(len(r) for _, r in pairs)}
        with torch.inference_mode():
            facts["acceptance"] = acceptance(target, draft, eval_set)
        log(f"distill: {name} acceptance {facts['acceptance']}")
        params = sum(p.numel() for p in draft.parameters())
        save(draft, tok, root / name, facts, card(name, facts, params))
        results[name] = facts
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    return results


def remeasure(root: str | Path | None = None, threads: int = 1, log=print) -> dict:
    """Measure the shipped drafts' acceptance again on the held-out prompts and rewrite their cards."""
    from explorer.models import load
    from explorer.zoo import weights_root

    torch.set_num_threads(threads)
    root = Path(root) if root else weights_root()
    target = load(TARGET)
    prompts, reference, out = eval_prompts(target.tokenizer), {}, {}
    for name in DRAFTS:
        folder = root / name
        facts = json.loads((folder / "training.json").read_text())
        draft = load(str(folder))
        with torch.inference_mode():
            facts["acceptance"] = acceptance(target, draft, prompts, reference=reference)
        log(f"distill: {name} acceptance {facts['acceptance']}")
        (folder / "training.json").write_text(json.dumps(facts, indent=1))
        (folder / "README.md").write_text(card(name, facts, draft.facts.params))
        out[name] = facts["acceptance"]
    return out


def card(name: str, facts: dict, params: int) -> str:
    distilled = name == DRAFTS[0]
    data = ("SmolLM2-135M-Instruct's own greedy replies (DistillSpec) to "
            f"{facts.get('distill_prompts')} chat prompts: the natural-format tasks (difficulties 1-3, "
            f"seed {DATA_SEED}) and 'continue this text' requests on Shakespeare; loss on the replies "
            f"({facts.get('distill_reply_tokens'):,} reply tokens, generated in {facts.get('distill_seconds')} s)"
            if distilled else
            "windows of Shakespeare's plays (shakespeare 0.6; The Tempest held out), loss on every token")
    a = facts["acceptance"]
    s = facts["spec"]
    return f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
---
# {name}

A draft model for speculative decoding with SmolLM2-135M-Instruct (`explorer.load("smollm2-135m")`), trained
by the Trade-off Explorer's recipe (`explorer zoo train smollm2-drafts`, explorer/zoo/distill.py). It shares
SmolLM2's tokenizer, so it can propose tokens for it; it is not a useful model on its own.

| fact | value |
| --- | --- |
| parameters | {params:,} (the tied 49,152 x {s['width']} embedding is most of them) |
| layers x width | {s['layers']} x {s['width']} ({s['heads']} heads, {s['kv_heads']} KV heads, MLP {s['intermediate']}) |
| stored as | fp16 safetensors |
| initialisation | SmolLM2's token embedding projected on its top {s['width']} principal directions |
| data | {data} |
| training | {facts['steps']} steps x batch {s['batch']}, {facts['scored_tokens']:,} scored tokens, {facts['train_seconds'] / 60:.1f} min on {facts['threads']} CPU thread (a shared 2-core machine) |
| acceptance (greedy, draft length 4) | {a['acceptance_rate']:.3f} on {a['prompts']} held-out chat prompts (seed {EVAL_SEED}); {a['tokens_per_target_call']:.2f} tokens per target call; output identical to the target's: {a['identical_to_target']} |
"""
