"""The one evaluation loop a generative run goes through, and accuracy with its interval.

Its own module so that techniques (whose default `evaluate` is this loop) and
`explorer.runs` (which calls techniques) both import it without importing each
other.
"""
from __future__ import annotations

from typing import Any

from explorer import tasks as T
from explorer.cost import flops_per_token, timed
from explorer.generate import example_seed
from explorer.stats import wilson


def evaluate(technique, model, task: T.Task, examples: list[T.Example], *,
             seed: int, repeats: int, batch_size: int) -> dict[str, Any]:
    """The one evaluation loop: decode in batches, verify, count, time."""
    n = len(examples)
    chunks = [examples[i : i + batch_size] for i in range(0, n, batch_size)]

    def decode_all():  # each prompt seeded by its index in the run, not its place in a batch
        return [technique.generate(model, [e.prompt for e in c], max_new_tokens=task.max_new_tokens,
                                   seed=[example_seed(seed, i * batch_size + j) for j in range(len(c))])
                for i, c in enumerate(chunks)]

    gens, wall, _ = timed(decode_all, repeats)
    texts = [t for g in gens for t in g.texts]
    correct = [task.verify(e, t) for e, t in zip(examples, texts)]
    prompt_len = sum(len(model.tokenizer(e.prompt)["input_ids"]) for e in examples) / n
    tokens = sum(g.tokens_generated for g in gens)
    row = accuracy_columns(examples, correct)
    row |= {
        "flops_per_token_analytic": flops_per_token(model.hf.config, prompt_len + tokens / n / 2),
        "tokens_generated": tokens,
        "wall_s": wall,
        "wall_s_per_token": wall / max(tokens, 1),
        "decode_path": decode_path(gens),
    }
    row |= technique.columns(model, gens)
    return row


def decode_path(gens) -> str | None:
    """Which forward decoded these generations (`explorer.generate.decoder`): "fused",
    "transformers", a wrapper's name, several joined by "+", or None if no loop recorded one."""
    paths = sorted({getattr(g, "decode_path", "") for g in gens} - {""})
    return "+".join(paths) or None


def accuracy_columns(examples: list[T.Example], correct: list[bool], prefix: str = "accuracy") -> dict[str, Any]:
    """Accuracy with its Wilson 95% interval, overall and per difficulty."""
    k, n = sum(correct), len(correct)
    lo, hi = wilson(k, n)
    row = {prefix: k / n, f"{prefix}_lo": lo, f"{prefix}_hi": hi, "interval": "wilson95", "correct": k}
    for d in sorted({e.difficulty for e in examples}):
        flags = [c for e, c in zip(examples, correct) if e.difficulty == d]
        row[f"{prefix}_d{d}"] = sum(flags) / len(flags)
    return row
