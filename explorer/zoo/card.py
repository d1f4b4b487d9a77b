"""Model cards for the zoo: facts, training budget, held-out accuracy per task and difficulty."""
from __future__ import annotations

import json
from pathlib import Path

from explorer import zoo
from explorer.zoo import family_facts  # noqa: F401  (the CLI's `explorer zoo list` reads it here)

EVAL_SEED = 20261126  # held-out problems for the card, never a training seed
EVAL_PER_LEVEL = 50


def measure(folder: Path, decode_ms: float | None = None) -> dict:
    import torch

    from explorer import tasks as T
    from explorer.models import load
    from explorer.runs import likelihood
    from explorer.zoo.recipe import evaluate, summary

    torch.set_num_threads(1)
    model = load(str(folder))
    acc = evaluate(model.hf, n_per_level=EVAL_PER_LEVEL, seed=EVAL_SEED)
    bpc = likelihood(model, T.get("shakespeare").text(), 10**6, repeats=1)["bits_per_char"]
    ms = decode_ms_per_token(model) if decode_ms is None else decode_ms
    return {"accuracy": acc, "summary": summary(acc), "bits_per_char": round(bpc, 4),
            "decode_ms_per_token": round(ms, 3), "params": model.facts.params,
            "layers": model.facts.layers, "width": model.facts.width, "weight_bytes": model.facts.weight_bytes}


def decode_ms_per_token(model, tokens: int = 32, repeats: int = 7) -> float:
    """Batch-1 greedy decoding of a text continuation: median milliseconds per new token."""
    import statistics
    import time

    from explorer import tasks as T
    from explorer.generate import generate

    prompt = T.get("shakespeare").text()[:24]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        g = generate(model.hf, model.tokenizer, [prompt], max_new_tokens=tokens)
        times.append((time.perf_counter() - t) / g.tokens_generated)
    return 1000 * statistics.median(times)


def decode_family(folders: list[Path], rounds: int = 9) -> dict[str, float]:
    """Decode ms/token of several models, interleaved round by round, medians.

    Timings on a shared machine drift; measuring the models side by side keeps
    their ratio honest even when the absolute numbers move.
    """
    import statistics

    import torch

    from explorer.models import load

    torch.set_num_threads(1)
    models = {Path(f).name: load(str(f)) for f in folders}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(decode_ms_per_token(model, repeats=1))
    return {name: statistics.median(t) for name, t in times.items()}


def write(folder: Path, decode_ms: float | None = None) -> dict:
    folder = Path(folder)
    training = json.loads((folder / "training.json").read_text())
    m = measure(folder, decode_ms)
    spec = zoo.spec(training["name"])
    (folder / "eval.json").write_text(json.dumps(m, indent=1))
    rows = "\n".join(
        f"| {task} | " + " | ".join(f"{a:.2f}" for a in levels.values()) + f" | {m['summary'][task]:.3f} |"
        for task, levels in m["accuracy"].items()
    )
    text = f"""---
license: cc-by-2.5
library_name: transformers
pipeline_tag: text-generation
---
# {spec.name}

A small Llama-architecture causal LM of the Trade-off Explorer's embedded family,
trained from scratch on this project's arithmetic and sorting tasks and on
Shakespeare's plays (text: Open Knowledge Foundation, shakespeare 0.6; The Tempest held out).
Character-level tokenizer shared by the whole family. Re-create with
`explorer zoo train {spec.name}`.

| fact | value |
| --- | --- |
| parameters | {m['params']:,} |
| layers x width | {m['layers']} x {m['width']} ({spec.heads} heads, MLP {spec.intermediate}) |
| weights (fp32) | {m['weight_bytes']:,} bytes |
| training steps x batch | {training['steps']:,} x {spec.batch} |
| training tokens (scored) | {training['train_tokens']:,} |
| training time | {training['train_seconds'] / 60:.1f} min wall on {training['threads']} CPU thread (a shared 2-core machine) |
| loss | next-token CE at the last layer + {0.5} x mean CE of earlier layers (LayerSkip-style) |
| decode, batch 1 | {m['decode_ms_per_token']:.2f} ms/token (32-token greedy continuation, 1 thread, median of rounds interleaved with the rest of the family) |
| held-out bits per char (The Tempest) | {m['bits_per_char']} |

Greedy exact-match accuracy on {EVAL_PER_LEVEL} fresh problems per cell (seed {EVAL_SEED}):

| task | d=1 | d=2 | d=3 | d=4 | d=5 | mean |
| --- | --- | --- | --- | --- | --- | --- |
{rows}

Mixed (mean over tasks): **{m['summary']['mixed']:.3f}**
"""
    (folder / "README.md").write_text(text)
    return m


