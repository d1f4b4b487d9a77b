"""The technique interface, and how a technique declares itself.

A technique is a frozen config dataclass (validated on construction, so it is
hashable and feeds `config_hash`) with hooks that `explorer.run` calls:

- `prepare(model) -> Model`: the variant to run (a quantized copy, say);
- `models() -> list[str]`: other models it runs (a draft), whose weights key the row too;
- `generate(model, prompts, max_new_tokens=, seed=) -> Generation`: decode a batch; `seed` is
  one seed per prompt (`explorer.generate.example_seed`), or a run seed that row i
  turns into `example_seed(seed, i)`: a prompt's samples never depend on its batch;
- `prepare_for(model, task) -> Model`: what `explorer.run` calls; `prepare(model)` unless the
  technique needs the task too (a calibration batch drawn from it: Prune's Wanda scores);
- `columns(model, generations) -> dict`: the technique's own measurements over
  the list of batch generations;
- `variant_columns(model) -> dict`: measurements of the prepared model itself,
  added to every row whatever the task (Quantize: KL to the original, bytes);
- `evaluate(model, task, examples, seed=, repeats=, batch_size=) -> dict`: the whole
  evaluation of a generative task. The default (`explorer.runs.evaluate`) calls
  `generate` per batch, verifies, and computes accuracy and costs; a technique
  that needs another shape of evaluation (many samples per problem) overrides it;
- `estimate(...)`, same arguments: a first estimate on a few problems (the lab's, before the full
  run): `evaluate` without what a technique measures beside the task (a speculative run's
  target-alone timing and cost ratios); the default is `evaluate`.

It registers itself with `@technique(...)`, which declares, in its own file,
everything the lab, the CLI, sweeps and composition need to know about it
(torchao's config-type dispatch and lm-eval's typed registry are the models):

    @technique("quantize", roles=[CHANGES_WEIGHTS], axis="weight_bytes",
               knobs=[Knob("bits", "bits", 8, options=(2, 3, 4, 8, 16), unit="bits")],
               sweep=[{"bits": [2, 4, 8]}], view=None)
    @dataclass(frozen=True)
    class Quantize(Technique): ...

Roles say which hooks a technique owns, and composition (explorer/compose.py)
reads them, never the class hierarchy:

- CHANGES_WEIGHTS: `prepare` returns a model with other weights (runs first);
- DECODES: owns `generate` (one decoder per configuration);
- AGGREGATES: owns `evaluate`, drawing many samples per problem, and can draw
  them through another technique's decoder (`evaluate(..., decoder=)`);
- EVALUATES: owns `evaluate` with a loop of its own (no other decoder).

The declared roles must match the hooks the class overrides; registration
refuses a mismatch with the fix.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, ClassVar, Iterable, Mapping

from explorer import evaluation
from explorer import generate as generation
from explorer.registry import Registry

CHANGES_WEIGHTS, DECODES, AGGREGATES, EVALUATES = "changes_weights", "decodes", "aggregates_samples", "evaluates"
ROLES = (CHANGES_WEIGHTS, DECODES, AGGREGATES, EVALUATES)
KNOB_KINDS = ("value", "model")  # "model": a model name; the lab offers the models it lists


class Technique:
    name: ClassVar[str] = "baseline"
    roles: ClassVar[frozenset[str]] = frozenset()
    declaration: ClassVar["Declaration | None"] = None

    def knobs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def prepare(self, model):
        return model

    def models(self) -> list[str]:
        """Models this configuration runs besides the target (a draft), by name: the fingerprint of
        their weights goes into the row's key, so changed weights never reuse an old row."""
        return []

    def prepare_for(self, model, task):
        """The variant to run on `task`: `prepare(model)`, unless the technique calibrates on the task."""
        return self.prepare(model)

    def generate(self, model, prompts: list[str], *, max_new_tokens: int, seed: int):
        return generation.generate(model.hf, model.tokenizer, prompts, max_new_tokens=max_new_tokens)

    def columns(self, model, generations: list) -> dict[str, Any]:
        return {}

    def variant_columns(self, model) -> dict[str, Any]:
        """Measurements of the prepared model itself, for any task kind (bytes, fidelity to the original)."""
        return {}

    def evaluate(self, model, task, examples, *, seed: int, repeats: int, batch_size: int) -> dict[str, Any]:
        return evaluation.evaluate(self, model, task, examples, seed=seed, repeats=repeats, batch_size=batch_size)

    def estimate(self, model, task, examples, *, seed: int, repeats: int, batch_size: int) -> dict[str, Any]:
        """`evaluate` for a first estimate: a technique whose evaluation also measures things beside
        the task, at a fixed cost whatever the number of problems, leaves them out here."""
        return self.evaluate(model, task, examples, seed=seed, repeats=repeats, batch_size=batch_size)


@dataclasses.dataclass(frozen=True)
class Knob:
    """One knob as a person turns it: which config field it sets, its range and its unit.

    field    the config dataclass field it sets
    label    what a control calls it ("bits", "draft length")
    default  the value a new lab starts from
    range    (low, high) for a numeric knob; `step` its step
    options  the discrete values offered, plain or as (label, value) pairs
    unit     shown beside the value ("bits", "layers", "nats")
    name     the lab's name for it (default: `field`); techniques that declare a knob
             of the same name share one control (draft length, temperature)
    kind     "value", or "model" for a model name (the lab offers its models)
    scale_by / scales  a knob whose range depends on another knob of the same technique:
             scales[value of scale_by] = (low, high, default, step)
    upto     (filters) the knob name whose value bounds this one from above (k <= samples)
    """

    field: str
    label: str
    default: Any
    range: tuple[float, float] | None = None
    step: float | None = None
    options: tuple = ()
    unit: str = ""
    name: str | None = None
    kind: str = "value"
    scale_by: str | None = None
    scales: Mapping[Any, tuple] = dataclasses.field(default_factory=dict)
    upto: str | None = None

    def __post_init__(self):
        if not isinstance(self.field, str) or not self.field.isidentifier():
            raise ValueError(f"Knob.field={self.field!r}; give the config field's name")
        if self.name is None:
            object.__setattr__(self, "name", self.field)
        if not self.name.isidentifier():
            raise ValueError(f"Knob.name={self.name!r}; must be a Python identifier (it names a lab trait)")
        if self.kind not in KNOB_KINDS:
            raise ValueError(f"Knob.kind={self.kind!r}; valid: {', '.join(KNOB_KINDS)}")
        if self.range is not None:
            lo, hi = self.range
            if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi):
                raise ValueError(f"Knob {self.field!r}: range={self.range!r}; give (low, high) with low < high")
        object.__setattr__(self, "options", tuple(self.options))
        if self.scale_by is not None and not self.scales:
            raise ValueError(f"Knob {self.field!r}: scale_by={self.scale_by!r} needs scales")
        if self.scales:
            object.__setattr__(self, "scales", dict(self.scales))

    @property
    def values(self) -> list:
        """The option values (without labels)."""
        return [o[1] if isinstance(o, tuple) else o for o in self.options]

    def describe(self) -> str:
        """One line for `explorer techniques`: field, range or options, default, unit."""
        if self.scales:
            span = "; ".join(f"{k}: {lo}..{hi}" for k, (lo, hi, *_rest) in self.scales.items())
            span = f"by {self.scale_by} ({span})"
        elif self.options:
            span = "{" + ", ".join(map(repr, self.values)) + "}"
        elif self.range is not None:
            span = f"{self.range[0]}..{self.range[1]}" + (f" step {self.step}" if self.step else "")
        else:
            span = "a model name" if self.kind == "model" else "any"
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.field} ({self.label}): {span}{unit}, default {self.default!r}"


@dataclasses.dataclass(frozen=True)
class Declaration:
    """Everything about a technique that is not its code: see `technique(...)`."""

    name: str
    cls: type
    roles: frozenset[str]
    knobs: tuple[Knob, ...]
    filters: tuple[Knob, ...]
    axis: str
    view: str | None
    read_at: Callable | None
    sweep: tuple[dict, ...]
    hands_down: tuple[str, ...]
    order: int = 0

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else self.name

    def config(self, **values: Any) -> Technique:
        """The config from lab values by knob name (missing knobs take their defaults; the
        config's own __post_init__ checks them)."""
        fields = {k.field: values.get(k.name, k.default) for k in self.knobs}
        return self.cls(**fields)

    def detail_view(self) -> type | None:
        """The detail view's class, imported only now (the engine never imports Jupyter itself)."""
        if self.view is None:
            return None
        module, _, attr = self.view.partition(":")
        return getattr(importlib.import_module(module), attr)


techniques: Registry[type[Technique]] = Registry("technique", base=Technique)


def roles_of(cls: type) -> frozenset[str]:
    """The declared roles of a technique class, checked against the hooks it overrides."""
    declared = frozenset(getattr(cls, "roles", frozenset()))
    check_roles(cls, declared)
    return declared


def check_roles(cls: type, declared: Iterable[str]) -> None:
    declared = set(declared)
    bad = sorted(declared - set(ROLES))
    if bad:
        raise ValueError(f"technique {cls.__name__}: unknown role {', '.join(map(repr, bad))}; valid: {', '.join(ROLES)}")
    owns = {"generate": cls.generate is not Technique.generate, "evaluate": cls.evaluate is not Technique.evaluate,
            "prepare": cls.prepare is not Technique.prepare or cls.prepare_for is not Technique.prepare_for}
    problems = []
    if owns["generate"] != (DECODES in declared):
        problems.append(f"it {'overrides' if owns['generate'] else 'does not override'} generate, so "
                        f"{'declare' if owns['generate'] else 'do not declare'} the role {DECODES!r}")
    evaluating = declared & {AGGREGATES, EVALUATES}
    if owns["evaluate"] != bool(evaluating):
        problems.append(f"it {'overrides' if owns['evaluate'] else 'does not override'} evaluate, so "
                        f"{'declare one of' if owns['evaluate'] else 'do not declare'} the roles "
                        f"{AGGREGATES!r} or {EVALUATES!r}")
    if len(evaluating) > 1:
        problems.append(f"declare one of {AGGREGATES!r} and {EVALUATES!r}, not both")
    if CHANGES_WEIGHTS in declared and not owns["prepare"]:
        problems.append(f"it declares {CHANGES_WEIGHTS!r} but does not override prepare")
    if problems:
        raise ValueError(f"technique {cls.__name__}: {'; '.join(problems)} (roles={sorted(declared)})")


def technique(name: str, *, roles: Iterable[str] = (), knobs: Iterable[Knob] = (), filters: Iterable[Knob] = (),
              axis: str = "flops_per_token_analytic", view: str | None = None, read_at: Callable | None = None,
              sweep: Iterable[Mapping[str, Any]] = (), hands_down: Iterable[str] = (), order: int = 0):
    """Register a technique class under `name`, with its declaration.

    roles       which hooks it owns (CHANGES_WEIGHTS, DECODES, AGGREGATES, EVALUATES)
    knobs       the knobs a lab shows, each a `Knob` on a config field
    filters     knobs that only re-read stored rows (no run): passed to `read_at`
    axis        the cost column it moves by default (the lab's axis when it is selected)
    view        its detail view, lazily as "module:Class" (a class with `from_row(row, **filters)`)
    read_at     `read_at(df, **filters) -> df`: its stored rows re-read at the filter values
    sweep       the knob grids of the default sweep, e.g. [{"bits": [2, 4, 8]}]
    hands_down  (AGGREGATES) its knobs the decoder it draws through must share (temperature)
    order       its place among composed techniques of the same role, lower first (a pruner
                before a quantizer); ties go by name, so a composition has one canonical order
    """
    def deco(cls: type) -> type:
        techniques.check(cls)
        if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):
            raise TypeError(f"technique {name!r}: {cls.__name__} must be a frozen dataclass "
                            "(@dataclasses.dataclass(frozen=True)), so a config is hashable and keys its row")
        own = cls.__dict__.get("name")
        if isinstance(own, str) and own != name:
            raise ValueError(f"technique {name!r}: {cls.__name__}.name is {own!r}; use one name")
        declared = frozenset(roles)
        check_roles(cls, declared)
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        knob_list, filter_list = tuple(knobs), tuple(filters)
        for k in knob_list:
            if not isinstance(k, Knob):
                raise TypeError(f"technique {name!r}: knob {k!r} is not an explorer.techniques.Knob")
            if k.field not in fields:
                raise ValueError(f"technique {name!r}: knob {k.field!r} is not a field of {cls.__name__}; "
                                 f"its fields: {', '.join(sorted(fields))}")
            if k.scale_by is not None and k.scale_by not in {o.field for o in knob_list}:
                raise ValueError(f"technique {name!r}: knob {k.field!r} scales by {k.scale_by!r}, not one of its knobs")
        if filter_list and read_at is None:
            raise ValueError(f"technique {name!r}: filters {[f.name for f in filter_list]} need a read_at hook")
        if view is not None and (not isinstance(view, str) or view.count(":") != 1):
            raise ValueError(f"technique {name!r}: view={view!r}; name it lazily as 'module:Class'")
        for grid in sweep:
            unknown = set(grid) - fields
            if unknown:
                raise ValueError(f"technique {name!r}: sweep grid {grid!r} names {sorted(unknown)}, not fields")
        if hands_down and AGGREGATES not in declared:
            raise ValueError(f"technique {name!r}: hands_down is for a technique with the role {AGGREGATES!r}")
        cls.name = name
        cls.roles = declared
        cls.declaration = Declaration(name, cls, declared, knob_list, filter_list, axis, view, read_at,
                                      tuple(dict(g) for g in sweep), tuple(hands_down), int(order))
        techniques.register(name)(cls)
        return cls

    return deco


def declaration(name: str) -> Declaration:
    """The declaration of a registered technique (KeyError, with the nearest name, if unknown)."""
    return techniques.get(name).declaration


def declarations() -> list[Declaration]:
    """Every registered technique's declaration, in registration order."""
    return [cls.declaration for _, cls in techniques.items() if cls.declaration is not None]


@technique("baseline", axis="weight_bytes")
@dataclasses.dataclass(frozen=True)
class Baseline(Technique):
    """The model as loaded: full precision, greedy decoding."""

    name: ClassVar[str] = "baseline"
