"""The lab's one state store: what is selected, and nothing else.

Every control writes only here; every view reads only from here; only the
runner (widgets/runner.py) asks the engine for runs. A value set from code is
checked by the engine's own config classes (the same checks `explorer.run`
makes); a bad one is refused, the previous value stays, and the reason goes to
`status`.
"""
from __future__ import annotations

import math
from typing import Any

import traitlets as t

import explorer as ex

TECHNIQUES = ("baseline", "quantize", "early_exit", "speculative", "sampling")
# Per problem prices repeated sampling honestly (k samples cost k times the tokens).
COST_AXES = ("weight_bytes", "flops_per_problem_analytic", "flops_per_token_analytic", "wall_s_per_token", "wall_s")
# Each technique knob and the technique whose config checks it.
KNOB_OWNER = {"bits": "quantize", "format": "quantize", "group_size": "quantize",
              "threshold": "early_exit",
              "draft": "speculative", "draft_len": "speculative", "samples": "sampling"}
# Each exit criterion's threshold scale for the lab's slider: (low, high, default).
THRESHOLDS = {"max_prob": (0.5, 1.0, 0.9), "entropy": (0.0, 3.0, 0.5), "agreement": (1, 7, 2)}
# Knobs that only filter what is shown: changing them never runs a model.
FILTERS = ("budget", "cost_axis", "k")


class LabState(t.HasTraits):
    models = t.List(t.Unicode(), default_value=list(ex.zoo.names()))
    task = t.Unicode("addition")
    technique = t.Unicode("quantize")
    n = t.Int(64)
    seed = t.Int(0)
    # quantize
    bits = t.Int(8)
    format = t.Unicode("int")
    group_size = t.Int(0)  # 0: one scale per output channel
    # early exit
    criterion = t.Unicode("max_prob")
    threshold = t.Float(0.9)
    # speculative
    draft = t.Unicode("zoo-xs")
    draft_len = t.Int(4)
    # repeated sampling: `samples` are drawn once, `k` only filters
    samples = t.Int(16)
    k = t.Int(16)  # every sample drawn; moving `samples` moves k with it when k was at the top
    # filters
    budget = t.Float(math.inf)
    cost_axis = t.Unicode("weight_bytes")
    # what the lab tells the user
    status = t.Unicode("")
    busy = t.Bool(False)
    progress = t.Float(0.0)
    selected = t.Dict()  # the row a user clicked on the frontier

    def technique_config(self, **override: Any):
        """The engine's config for the selected technique (raises ValueError if invalid)."""
        v = {name: override.get(name, getattr(self, name)) for name in self.trait_names()}
        kind = v["technique"]
        if kind == "baseline":
            return ex.Baseline()
        if kind == "quantize":
            return ex.Quantize(bits=v["bits"], format=v["format"], group_size=v["group_size"] or None)
        if kind == "early_exit":
            return ex.EarlyExit(criterion=v["criterion"], threshold=v["threshold"])
        if kind == "speculative":
            return ex.Speculative(draft=v["draft"], draft_len=v["draft_len"])
        if kind == "sampling":
            return ex.Sampling(n=v["samples"], temperature=1.0)
        raise ValueError(f"technique={kind!r}; valid: {', '.join(TECHNIQUES)}")

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

    @t.validate("criterion")
    def _v_criterion(self, proposal):
        # Checked with that criterion's own default threshold; the observer below moves the
        # threshold onto the new criterion's scale (agreement counts layers, entropy is in nats).
        return self._checked(proposal, lambda value: self.technique_config(
            technique="early_exit", criterion=value, threshold=THRESHOLDS.get(value, (0, 1, 0.9))[2]))

    @t.observe("criterion")
    def _criterion_moved(self, change):
        lo, hi, default = THRESHOLDS[change["new"]]
        if not lo <= self.threshold <= hi or (change["new"] == "agreement") != float(self.threshold).is_integer():
            self.threshold = default

    @t.validate(*KNOB_OWNER)
    def _v_knob(self, proposal):
        # Checked against its own technique even when another one is selected,
        # so a value set now is valid when the user switches to that technique.
        name = proposal["trait"].name
        return self._checked(
            proposal, lambda value: self.technique_config(technique=KNOB_OWNER[name], **{name: value}))

    @t.validate("k")
    def _v_k(self, proposal):
        def check(k):
            if not 1 <= k <= self.samples:
                raise ValueError(f"k must be between 1 and the {self.samples} samples drawn")
        return self._checked(proposal, check)

    @t.observe("samples")
    def _samples_moved(self, change):
        if self.k == change["old"] or self.k > change["new"]:
            self.k = change["new"]

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
        return self._checked(proposal, lambda value: self.technique_config(technique=value))

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
