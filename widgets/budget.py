"""`BudgetSlider`: the compute budget, on the scale of the cost axis in use.

A log slider whose range fits the costs of the runs shown on the current cost
axis (bytes, FLOPs and seconds differ by ten orders of magnitude), whose top end
means "no limit", and whose readout names the unit. It writes only `state.budget`;
a new cost axis resets the budget to no limit, since a budget in bytes means
nothing in seconds.
"""
from __future__ import annotations

import html

import math
from typing import Callable, Iterable

import ipywidgets as w

STEPS = 120  # positions along the slider


class BudgetSlider(w.HBox):
    def __init__(self, state, costs: Callable[[], Iterable[float]], *, style: dict | None = None):
        """`costs()` gives the costs, on `state.cost_axis`, of the runs on screen."""
        self.state, self.costs = state, costs
        self.slider = w.FloatLogSlider(min=3, max=9, step=6 / STEPS, value=1e9, readout=False,
                                       description="budget", style=style or {}, continuous_update=True,
                                       layout=w.Layout(width="250px"))
        self.label = w.HTML()
        super().__init__([self.slider, self.label])
        self.add_class("tx-budget")
        self._fitting = False
        self.slider.observe(self._moved, names="value")
        state.observe(self._show, names="budget")
        state.observe(self._axis, names="cost_axis")
        self.fit()

    def fit(self, costs: Iterable[float] | None = None) -> None:
        """Fit the range to the costs on screen (a decade either side); keep the budget where it is."""
        given = self.costs() if costs is None else costs
        values = [c for c in given if isinstance(c, (int, float)) and c > 0 and math.isfinite(c)]
        lo, hi = ((math.floor(math.log10(min(values))) - 1, math.ceil(math.log10(max(values))) + 1)
                  if values else (3, 9))
        self._fitting = True
        try:
            with self.slider.hold_sync():
                # Widen before narrowing so the value is never outside [min, max] in between.
                self.slider.min, self.slider.max = min(lo, self.slider.min), max(hi, self.slider.max)
                self.slider.min, self.slider.max = lo, hi
                self.slider.step = (hi - lo) / STEPS
        finally:
            self._fitting = False
        self._show()

    def _top(self) -> float:
        return 10 ** self.slider.max

    def _moved(self, change) -> None:
        if self._fitting:
            return
        want = math.inf if change["new"] >= self._top() * (1 - 1e-9) else change["new"]
        self.state.budget = want
        if self.state.budget != want:
            self._show()  # refused: the slider snaps back

    def _show(self, _=None) -> None:
        b = self.state.budget
        self._fitting = True
        try:
            self.slider.value = self._top() if math.isinf(b) else min(max(b, 10 ** self.slider.min), self._top())
        finally:
            self._fitting = False
        text = "no limit" if math.isinf(b) else f"≤ {b:.3g}"
        self.label.value = (f"<span class='tx-budget-readout' style='white-space: nowrap'>{text} "
                            f"<small>{html.escape(self.state.cost_axis)}</small></span>")

    def _axis(self, _=None) -> None:
        self.state.budget = math.inf
        self.fit()
