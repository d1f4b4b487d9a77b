"""The lab's one state store: what is selected, and nothing else.

Every control writes only here; every view reads only from here; only the
runner (widgets/runner.py) asks the engine for runs. A value set from code is
checked by the engine's own config classes (the same checks `explorer.run`
makes); a bad one is refused, the previous value stays, and the reason goes to
`status`.

Nothing here names a technique. The knobs are read from the technique registry
(each technique's `@technique(..., knobs=[...], filters=[...])` declaration):
each knob becomes a trait named by the knob (`state.bits`, `state.threshold`),
created when a `LabState` is made, so a technique registered before that, in
any file, has its knobs here too. Techniques that declare a knob of the same
name share it (draft length). `technique` is the selected technique and `stack`
the techniques composed with it (quantize + sampling), checked by the engine's
composition rules.
"""
from __future__ import annotations

import math
from typing import Any

import traitlets as t

import explorer as ex
from explorer.compose import stack as compose_stack
from explorer.metrics import COST_AXES
from explorer.techniques import Declaration, Knob, declaration, declarations, techniques

# Knobs of the lab itself that only filter what is shown: changing them never runs a model.
# Each technique's declared filters (a read-at hook's knobs) are filters too: `LabState.filters()`.
BASE_FILTERS = ("budget", "cost_axis")


def knob_owners() -> dict[str, list[tuple[Declaration, Knob]]]:
    """Each knob name a lab shows, with every technique that declares it (run knobs and filters)."""
    out: dict[str, list[tuple[Declaration, Knob]]] = {}
    for d in declarations():
        for k in (*d.knobs, *d.filters):
            out.setdefault(k.name, []).append((d, k))
    return out


def filter_names() -> tuple[str, ...]:
    return BASE_FILTERS + tuple(dict.fromkeys(f.name for d in declarations() for f in d.filters))


FILTERS = filter_names()  # as registered at import; LabState.filters() is always current


def technique_names() -> list[str]:
    return techniques.names()


class LabState(t.HasTraits):
    models = t.List(t.Unicode(), default_value=list(ex.zoo.names()))
    task = t.Unicode("addition")
    technique = t.Unicode()  # default: the first technique registered after the baseline
    stack = t.List(t.Unicode())  # techniques composed with `technique` (quantize + sampling)
    n = t.Int(64)
    seed = t.Int(0)
    # filters
    budget = t.Float(math.inf)
    cost_axis = t.Unicode("weight_bytes")
    # what the lab tells the user
    status = t.Unicode("")
    busy = t.Bool(False)
    progress = t.Float(0.0)
    selected = t.Dict()  # the row a user clicked on the frontier

    def __new__(cls, *args, **kwargs):
        # One trait per declared knob: the class is completed from the registry as it is now.
        if cls is LabState:
            cls = with_knobs()
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, **kwargs: Any):
        chosen = kwargs.get("technique", self.technique)
        if "cost_axis" not in kwargs and chosen in techniques:
            kwargs["cost_axis"] = declaration(chosen).axis  # the axis the selected technique moves
        super().__init__(**kwargs)

    @t.default("technique")
    def _first_technique(self):
        names = technique_names()
        return names[1] if len(names) > 1 else names[0]

    # ----- what the registry says -----------------------------------------------------

    def knob_names(self) -> list[str]:
        return [n for n in knob_owners() if n in self.trait_names()]

    def filters(self) -> tuple[str, ...]:
        return filter_names()

    def chosen(self, **override: Any) -> list[str]:
        """The selected technique and the ones stacked on it, by name."""
        return [override.get("technique", self.technique), *override.get("stack", self.stack)]

    def knob_values(self, name: str, **override: Any) -> dict[str, Any]:
        """The lab's values of technique `name`'s knobs and filters, by knob name."""
        d = declaration(name)
        return {k.name: override.get(k.name, getattr(self, k.name, k.default)) for k in (*d.knobs, *d.filters)}

    def configs(self) -> dict[str, Any]:
        """Each registered technique's config at the lab's current knob values (None if invalid)."""
        out = {}
        for d in declarations():
            try:
                out[d.name] = d.config(**self.knob_values(d.name))
            except (ValueError, TypeError):
                out[d.name] = None
        return out

    def technique_config(self, **override: Any):
        """The engine's config for the selection: the technique, composed with the stack
        (raises ValueError if invalid)."""
        parts = [declaration(n).config(**self.knob_values(n, **override)) for n in self.chosen(**override)]
        return compose_stack(*parts)

    def filter_values(self, name: str | None = None) -> dict[str, Any]:
        """Current values of the declared filters (of technique `name`, or of all), by filter name."""
        ds = [declaration(name)] if name else declarations()
        return {f.name: getattr(self, f.name, f.default) for d in ds for f in d.filters}

    # ----- checks ---------------------------------------------------------------------

    def refuse(self, name: str, value: Any, reason: str) -> None:
        self.status = f"refused {name}={value!r}: {reason}"

    def _checked(self, proposal, check) -> Any:
        name, value = proposal["trait"].name, proposal["value"]
        try:
            check(value)
        except (ValueError, KeyError, TypeError) as err:
            self.refuse(name, value, str(err.args[0]) if err.args else str(err))
            return getattr(self, name)  # keep the previous value
        return value

    def _check_knob(self, name: str, value: Any) -> None:
        # Checked against every technique that declares it, even one not selected now, so a
        # value set now is valid when the user switches to that technique.
        for d, knob in knob_owners().get(name, []):
            if knob in d.filters:
                self._check_filter(knob, value)
                continue
            values = self.knob_values(d.name, **{name: value})
            for other in d.knobs:  # a knob on the scale of this one is checked at that scale's default
                if other.scale_by == knob.field and value in other.scales:
                    lo, hi, default, *_ = other.scales[value]
                    if not in_scale(values[other.name], other.scales[value]):
                        values[other.name] = default
            d.config(**values)

    def _check_filter(self, knob: Knob, value: Any) -> None:
        if knob.options:
            if value not in knob.values:
                raise ValueError(f"valid: {', '.join(map(repr, knob.values))}")
            return
        lo = knob.range[0] if knob.range else -math.inf
        hi = getattr(self, knob.upto) if knob.upto else (knob.range[1] if knob.range else math.inf)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            bound = f"the {hi} {knob.upto} drawn" if knob.upto else hi
            raise ValueError(f"{knob.name} must be between {lo} and {bound}")

    def _v_knob(self, proposal):
        name = proposal["trait"].name
        return self._checked(proposal, lambda value: self._check_knob(name, value))

    def _knob_moved(self, change) -> None:
        name = change["name"]
        for d, knob in knob_owners().get(name, []):
            for other in (*d.knobs, *d.filters):
                # a knob on this one's scale moves onto the new scale (agreement counts layers)
                if other.scale_by == knob.field and change["new"] in other.scales:
                    scale = other.scales[change["new"]]
                    if not in_scale(getattr(self, other.name), scale):
                        setattr(self, other.name, scale[2])
                # a filter bounded by this knob follows it (k was at the top: stays at the top)
                if other.upto == name:
                    current = getattr(self, other.name)
                    if current == change["old"] or current > change["new"]:
                        setattr(self, other.name, change["new"])

    @t.validate("budget")
    def _v_budget(self, proposal):
        def check(b):
            if math.isnan(b) or b < 0:
                raise ValueError("a budget is a cost of zero or more (inf: no limit)")
        return self._checked(proposal, check)

    @t.validate("cost_axis")
    def _v_cost(self, proposal):
        def check(axis):
            if axis not in COST_AXES:
                raise ValueError(f"valid cost axes: {', '.join(COST_AXES)}")
        return self._checked(proposal, check)

    @t.validate("technique")
    def _v_technique(self, proposal):
        return self._checked(proposal, lambda value: self.technique_config(technique=value, stack=[]))

    @t.observe("technique")
    def _technique_moved(self, change):
        # Keep what still composes with the new technique; say what was dropped.
        kept: list[str] = []
        for name in self.stack:
            try:
                if name != change["new"]:
                    self.technique_config(stack=[*kept, name])
                    kept.append(name)
            except (ValueError, KeyError, TypeError):
                pass
        if kept != list(self.stack):
            self.stack = kept

    @t.validate("stack")
    def _v_stack(self, proposal):
        def check(names):
            if self.technique in names:
                raise ValueError(f"{self.technique} is the technique itself; stack others on it")
            self.technique_config(stack=list(names))
        return self._checked(proposal, check)

    @t.validate("task")
    def _v_task(self, proposal):
        return self._checked(proposal, ex.tasks.get)

    @t.validate("models")
    def _v_models(self, proposal):
        def check(models):
            if not models:
                raise ValueError("choose at least one model")
        return self._checked(proposal, check)

    @t.validate("n")
    def _v_n(self, proposal):
        return self._checked(proposal, ex.tasks.check_n)

    @t.validate("seed")
    def _v_seed(self, proposal):  # a negative seed would fail deep in numpy after the runs
        from explorer.generate import check_seed

        return self._checked(proposal, check_seed)


def in_scale(value: Any, scale: tuple) -> bool:
    lo, hi, _default, *step = scale
    integer = bool(step) and float(step[0]).is_integer()
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
            and (not integer or float(value).is_integer()))


_classes: dict[tuple, type] = {}


def with_knobs() -> type:
    """`LabState` with one trait per declared knob and filter, its checks and observers
    (made once per state of the registry)."""
    owners = knob_owners()
    key = tuple(id(d) for d in declarations())
    if key not in _classes:
        names = [n for n in owners if n not in LabState.class_trait_names()]
        namespace: dict[str, Any] = {name: t.Any(owners[name][0][1].default) for name in names}
        if names:
            namespace["_v_knob"] = t.validate(*names)(LabState._v_knob)
            namespace["_knob_moved"] = t.observe(*names)(LabState._knob_moved)
        namespace["__module__"] = __name__
        namespace["__qualname__"] = "LabState"
        _classes[key] = type("LabState", (LabState,), namespace)
    return _classes[key]
