"""Techniques: one module each, one shared interface.

A technique is a frozen config dataclass (validated on construction, so it is
hashable and feeds `config_hash`) with hooks that `explorer.run` calls:

- `prepare(model) -> Model`: the variant to run (a quantized copy, say);
- `generate(model, prompts, max_new_tokens=, seed=) -> Generation`: decode a batch;
- `columns(model, generations) -> dict`: the technique's own measurements over
  the list of batch generations;
- `variant_columns(model) -> dict`: measurements of the prepared model itself,
  added to every row whatever the task (Quantize: KL to the original, bytes);
- `evaluate(model, task, examples, seed=, repeats=, batch_size=) -> dict`: the whole
  evaluation of a generative task. The default (`explorer.runs.evaluate`) calls
  `generate` per batch, verifies, and computes accuracy and costs; a technique
  that needs another shape of evaluation (many samples per problem) overrides it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from explorer.registry import Registry


class Technique:
    name: ClassVar[str] = "baseline"

    def knobs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def prepare(self, model):
        return model

    def generate(self, model, prompts: list[str], *, max_new_tokens: int, seed: int):
        from explorer.generate import generate

        return generate(model.hf, model.tokenizer, prompts, max_new_tokens=max_new_tokens)

    def columns(self, model, generations: list) -> dict[str, Any]:
        return {}

    def variant_columns(self, model) -> dict[str, Any]:
        """Measurements of the prepared model itself, for any task kind (bytes, fidelity to the original)."""
        return {}

    def evaluate(self, model, task, examples, *, seed: int, repeats: int, batch_size: int) -> dict[str, Any]:
        from explorer.runs import evaluate

        return evaluate(self, model, task, examples, seed=seed, repeats=repeats, batch_size=batch_size)


techniques: Registry[type] = Registry("technique")


@techniques.register("baseline")
@dataclasses.dataclass(frozen=True)
class Baseline(Technique):
    """The model as loaded: full precision, greedy decoding."""

    name: ClassVar[str] = "baseline"
