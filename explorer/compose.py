"""Composition: several techniques run as one configuration.

Each technique declares its roles where it registers (explorer/techniques/base.py),
and composition reads only those:

- CHANGES_WEIGHTS: its `prepare` changes the model (Quantize): runs first;
- DECODES: owns the decoding of a batch (`generate`): EarlyExit, Speculative;
- AGGREGATES: owns the evaluation and draws many samples per problem, through
  the configuration's decoder if there is one (Sampling);
- EVALUATES: owns the evaluation with a loop of its own (Speculative times the
  target alone between its repeats), so no other decoder can feed it.

A composition chains every `prepare` (weight changers first, so a draft or an
exit head sees the quantized model), lets the one decoder decode and the one
evaluator evaluate, handing the decoder to an aggregator as `evaluate(...,
decoder=)`: nothing is subclassed at run time. Two decoders or two evaluators
have no meaning together (whose loop would run?), nor does a technique twice,
and such lists are refused with the reason.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterable

from explorer.techniques.base import AGGREGATES, DECODES, EVALUATES, Baseline, Technique, roles_of

EVALUATORS = {AGGREGATES, EVALUATES}


def roles(technique: Technique) -> frozenset[str]:
    """The roles `technique` declared (checked against the hooks it overrides)."""
    return roles_of(type(technique))


def parts_of(technique: Technique) -> tuple[Technique, ...]:
    return technique.parts if isinstance(technique, Composed) else (technique,)


def decodes(technique: Technique) -> bool:
    """Whether (any part of) `technique` decodes or evaluates: a likelihood task would not see it."""
    return any(roles(p) & {DECODES, *EVALUATORS} for p in parts_of(technique))


def rank(technique: Technique) -> tuple[int, int, str]:
    """Canonical order: weight changers and other preparers, then the decoder, then the evaluator
    (so [S, Q] == [Q, S]); within a role, the declared `order`, then the name."""
    r = roles(technique)
    declared = getattr(technique, "declaration", None)
    return (2 if r & EVALUATORS else 1 if DECODES in r else 0, declared.order if declared else 0, technique.name)


def compose(*techniques: Technique | Iterable[Technique]) -> Technique:
    """One configuration from several techniques: `compose(Quantize(bits=4), Sampling(n=8))`.

    Baselines are dropped (they change nothing); a single technique comes back as itself.
    """
    parts = flat(techniques)
    if not parts:
        return Baseline()
    if len(parts) == 1:
        return parts[0]
    check(parts)
    return Composed(tuple(sorted(parts, key=rank)))


def flat(techniques) -> list[Technique]:
    parts: list[Technique] = []
    for t in techniques:
        if isinstance(t, Composed):
            parts.extend(t.parts)
        elif isinstance(t, Technique):
            parts.append(t)
        elif isinstance(t, (list, tuple)):
            parts.extend(flat(t))
        else:
            raise ValueError(f"compose: {t!r} is not a technique; give techniques such as explorer.Baseline()")
    return [p for p in parts if not isinstance(p, Baseline)]


def stack(*techniques: Technique | Iterable[Technique]) -> Technique:
    """`compose`, after an aggregator hands its declared knobs to the decoder it draws through.

    Sampling declares `hands_down=["temperature"]`: stacked on EarlyExit, the exiting model
    samples at sampling's temperature (compose alone refuses the mismatch, as code should
    say what it means; a lab's stack of controls means this).
    """
    parts = flat(techniques)
    decoders = [p for p in parts if DECODES in roles(p) and not roles(p) & EVALUATORS]
    for agg in [p for p in parts if AGGREGATES in roles(p)]:
        names = agg.declaration.hands_down if agg.declaration else ()
        for i, p in enumerate(parts):
            if any(p is d for d in decoders):
                fields = {f.name for f in dataclasses.fields(p)}
                given = {k: getattr(agg, k) for k in names if k in fields}
                parts[i] = dataclasses.replace(p, **given) if given else p
    return compose(*parts)


def check(parts: list[Technique]) -> None:
    """Refuse the lists that make no sense, saying why."""
    names = [p.name for p in parts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"compose: {', '.join(twice)} appears twice in {names}; one configuration applies each "
                         "technique once (sweep both settings as separate configurations instead)")
    for role, what in (({DECODES}, "decodes tokens (role 'decodes')"),
                       (EVALUATORS, "runs its own evaluation (role 'aggregates_samples' or 'evaluates')")):
        owners = [p.name for p in parts if roles(p) & role]
        if len(owners) > 1:
            raise ValueError(f"compose: {' and '.join(owners)} each {what}; a configuration can have only one, "
                             "so these cannot run together")
    decoder = next((p for p in parts if DECODES in roles(p) and not roles(p) & EVALUATORS), None)
    evaluator = next((p for p in parts if roles(p) & EVALUATORS), None)
    if decoder and evaluator and AGGREGATES not in roles(evaluator):
        raise ValueError(f"compose: {evaluator.name} evaluates with its own decoding loop, so "
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

    def models(self) -> list[str]:
        return [m for p in self.parts for m in p.models()]

    def prepare(self, model):
        for p in self.parts:
            model = p.prepare(model)
        return model

    def prepare_for(self, model, task):
        for p in self.parts:
            model = p.prepare_for(model, task)
        return model

    def generate(self, model, prompts: list[str], *, max_new_tokens: int, seed: int):
        decoder = self._one(DECODES)
        if decoder is None:
            return super().generate(model, prompts, max_new_tokens=max_new_tokens, seed=seed)
        return decoder.generate(model, prompts, max_new_tokens=max_new_tokens, seed=seed)

    def columns(self, model, generations: list) -> dict[str, Any]:
        decoder = self._one(DECODES)
        out: dict[str, Any] = {}
        for p in self.parts:  # a non-decoder's columns see generations that only its decoder could read
            if p is decoder or DECODES not in roles(p):
                out |= p.columns(model, generations)
        return out

    def variant_columns(self, model) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.parts:
            out |= p.variant_columns(model) if hasattr(p, "variant_columns") else {}
        return out

    def evaluate(self, model, task, examples, *, seed: int, repeats: int, batch_size: int) -> dict[str, Any]:
        evaluator = next((p for p in self.parts if roles(p) & EVALUATORS), None)
        decoder = next((p for p in self.parts if DECODES in roles(p) and p is not evaluator), None)
        if evaluator is None:
            return super().evaluate(model, task, examples, seed=seed, repeats=repeats, batch_size=batch_size)
        if decoder is not None and AGGREGATES in roles(evaluator):
            return evaluator.evaluate(model, task, examples, seed=seed, repeats=repeats, batch_size=batch_size,
                                      decoder=decoder)
        return evaluator.evaluate(model, task, examples, seed=seed, repeats=repeats, batch_size=batch_size)

    def estimate(self, model, task, examples, *, seed: int, repeats: int, batch_size: int) -> dict[str, Any]:
        evaluator = next((p for p in self.parts if roles(p) & EVALUATORS), None)
        if evaluator is None or AGGREGATES in roles(evaluator):  # nothing measured beside the task
            return self.evaluate(model, task, examples, seed=seed, repeats=repeats, batch_size=batch_size)
        return evaluator.estimate(model, task, examples, seed=seed, repeats=repeats, batch_size=batch_size)
