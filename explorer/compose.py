"""Composition: several techniques run as one configuration.

Each technique's role is read from the hooks it overrides (explorer/techniques):

- a *preparer* changes the model (`prepare`): Quantize;
- a *decoder* owns the decoding of a batch (`generate`): EarlyExit, Speculative;
- an *evaluator* owns the whole evaluation (`evaluate`): Sampling.

A composition chains every `prepare` (preparers first, so a draft or an exit
head sees the quantized model), lets the one decoder decode and the one
evaluator evaluate. Two decoders or two evaluators have no meaning together
(whose loop would run?), nor does a technique twice, and such lists are refused
with the reason. An evaluator draws with a decoder only when it says it can:
its class sets `accepts_decoder = True` and calls `self.generate(...)` for
every batch it decodes; composition then routes those calls to the decoder.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterable

from explorer.techniques import Baseline, Technique

PREPARE, DECODE, EVALUATE = "prepare", "decode", "evaluate"


def roles(technique: Technique) -> set[str]:
    cls = type(technique)
    out = {PREPARE} if cls.prepare is not Technique.prepare else set()
    if cls.generate is not Technique.generate:
        out.add(DECODE)
    if cls.evaluate is not Technique.evaluate:
        out.add(EVALUATE)
    return out


def rank(technique: Technique) -> int:
    """Canonical order: preparers, then the decoder, then the evaluator (so [S, Q] == [Q, S])."""
    r = roles(technique)
    return 2 if EVALUATE in r else 1 if DECODE in r else 0


def compose(*techniques: Technique | Iterable[Technique]) -> Technique:
    """One configuration from several techniques: `compose(Quantize(bits=4), Sampling(n=8))`.

    Baselines are dropped (they change nothing); a single technique comes back as itself.
    """
    parts: list[Technique] = []
    for t in techniques:
        if isinstance(t, Composed):
            parts.extend(t.parts)
        elif isinstance(t, Technique):
            parts.append(t)
        elif isinstance(t, (list, tuple)):
            parts.extend(compose(*t).parts if len(t) else [])
        else:
            raise ValueError(f"compose: {t!r} is not a technique; give techniques such as explorer.Baseline()")
    parts = [p for p in parts if not isinstance(p, Baseline)]
    if not parts:
        return Baseline()
    if len(parts) == 1:
        return parts[0]
    check(parts)
    return Composed(tuple(sorted(parts, key=rank)))


def check(parts: list[Technique]) -> None:
    """Refuse the lists that make no sense, saying why."""
    names = [p.name for p in parts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"compose: {', '.join(twice)} appears twice in {names}; one configuration applies each "
                         "technique once (sweep both settings as separate configurations instead)")
    for role, what in ((DECODE, "decodes tokens (overrides generate)"),
                       (EVALUATE, "runs its own evaluation (overrides evaluate)")):
        owners = [p.name for p in parts if role in roles(p)]
        if len(owners) > 1:
            raise ValueError(f"compose: {' and '.join(owners)} each {what}; a configuration can have only one, "
                             "so these cannot run together")
    decoder = next((p for p in parts if DECODE in roles(p) and EVALUATE not in roles(p)), None)
    evaluator = next((p for p in parts if EVALUATE in roles(p)), None)
    if decoder and evaluator and not getattr(type(evaluator), "accepts_decoder", False):
        raise ValueError(f"compose: {evaluator.name} draws its samples with its own decoding loop, so "
                         f"{decoder.name}'s decoding would be silently ignored; this combination is refused")
    if decoder and evaluator and hasattr(evaluator, "check_decoder"):
        evaluator.check_decoder(decoder)  # e.g. samples drawn greedily would all be the same


@dataclasses.dataclass(frozen=True)
class Composed(Technique):
    """Techniques applied together; build it with `compose(...)`, which checks that they fit."""

    parts: tuple[Technique, ...]
    name: ClassVar[str]  # per instance, below: "quantize+sampling"

    def __post_init__(self):
        if not isinstance(self.parts, tuple) or len(self.parts) < 2:
            raise ValueError(f"Composed.parts={self.parts!r}; use explorer.compose(...) with two or more techniques")
        check(list(self.parts))

    @property
    def name(self) -> str:  # type: ignore[override]
        return "+".join(p.name for p in self.parts)

    def __repr__(self) -> str:
        return f"compose({', '.join(map(repr, self.parts))})"

    def knobs(self) -> dict[str, Any]:
        """Every part's knobs; a knob two parts share (temperature) is prefixed with each part's name."""
        each = [(p.name, p.knobs()) for p in self.parts]
        counts: dict[str, int] = {}
        for _, k in each:
            for key in k:
                counts[key] = counts.get(key, 0) + 1
        return {(f"{name}_{key}" if counts[key] > 1 else key): v for name, k in each for key, v in k.items()}

    def _one(self, role: str) -> Technique | None:
        return next((p for p in self.parts if role in roles(p)), None)

    def prepare(self, model):
        for p in self.parts:
            model = p.prepare(model)
        return model

    def generate(self, model, prompts: list[str], *, max_new_tokens: int, seed: int):
        decoder = self._one(DECODE)
        if decoder is None:
            return super().generate(model, prompts, max_new_tokens=max_new_tokens, seed=seed)
        return decoder.generate(model, prompts, max_new_tokens=max_new_tokens, seed=seed)

    def columns(self, model, generations: list) -> dict[str, Any]:
        decoder = self._one(DECODE)
        out: dict[str, Any] = {}
        for p in self.parts:  # a non-decoder's columns see generations that only its decoder could read
            if p is decoder or DECODE not in roles(p):
                out |= p.columns(model, generations)
        return out

    def variant_columns(self, model) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.parts:
            out |= p.variant_columns(model) if hasattr(p, "variant_columns") else {}
        return out

    def evaluate(self, model, task, examples, *, seed: int, repeats: int, batch_size: int) -> dict[str, Any]:
        evaluator, decoder = self._one(EVALUATE), self._one(DECODE)
        if evaluator is None:
            return super().evaluate(model, task, examples, seed=seed, repeats=repeats, batch_size=batch_size)
        if decoder is not None and decoder is not evaluator:
            evaluator = with_decoder(evaluator, decoder)
        return evaluator.evaluate(model, task, examples, seed=seed, repeats=repeats, batch_size=batch_size)


def with_decoder(evaluator: Technique, decoder: Technique) -> Technique:
    """A copy of `evaluator` whose `generate` is `decoder`'s (for evaluators with accepts_decoder)."""
    cls = type(evaluator)
    routed = type(f"{cls.__name__}Via{type(decoder).__name__}", (cls,), {
        "generate": lambda self, *a, **kw: decoder.generate(*a, **kw),
        "decoder": decoder,  # for the decoder's own columns (exit layers, ...)
        "__module__": cls.__module__,
    })
    copy = object.__new__(routed)
    copy.__dict__.update(evaluator.__dict__)  # frozen dataclass: same field values, no re-validation needed
    return copy
