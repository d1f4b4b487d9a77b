"""`BudgetSlider`: the compute budget, on the scale of the cost axis in use.

A log slider whose range fits the costs of the runs shown on the current cost
axis (bytes, FLOPs and seconds differ by ten orders of magnitude), whose top end
means "no limit", and whose readout names the unit. It writes only `state.budget`,
and only when the user moves it: refitting the range (new runs, a model removed
or added, another task) never moves the budget, since the range always keeps the
budget inside it, and the value the front end echoes back after a programmatic
change is not taken for a move. A new cost axis resets the budget to no limit,
since a budget in bytes means nothing in seconds, and the status line says so.
"""
from __future__ import annotations

import html

import math
from typing import Callable, Iterable

import ipywidgets as w

from explorer.metrics import fmt, metric

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
        self._echo: float | None = None  # the value last set from Python, which the front end sends back
        self.reset: str | None = None  # the budget the last cost-axis change reset, if any
        self.slider.observe(self._moved, names="value")
        state.observe(self._show, names="budget")
        state.observe(self._axis, names="cost_axis")
        self.fit()

    def fit(self, costs: Iterable[float] | None = None) -> None:
        """Fit the range to the costs on screen (a decade either side); keep the budget where it is."""
        given = self.costs() if costs is None else costs
        values = [c for c in given if isinstance(c, (int, float)) and c > 0 and math.isfinite(c)]
        b = self.state.budget
        if values and math.isfinite(b) and b > 0:
            values.append(b)  # the budget stays inside the range, so a refit never clamps (moves) it
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
        new, half_step = change["new"], self.slider.step / 2
        if new <= 0:
            return
        if self._echo is not None and abs(math.log10(new) - math.log10(self._echo)) < half_step:
            return  # our own value back from the front end, maybe rounded to a step: not a move
        self._echo = None
        want = math.inf if math.log10(new) >= self.slider.max - half_step else new
        self.state.budget = want
        if self.state.budget != want:
            self._show()  # refused: the slider snaps back

    def _show(self, _=None) -> None:
        b = self.state.budget
        self._fitting = True
        try:
            self.slider.value = self._top() if math.isinf(b) else min(max(b, 10 ** self.slider.min), self._top())
            self._echo = self.slider.value
        finally:
            self._fitting = False
        m = metric(self.state.cost_axis)
        text = "no limit" if math.isinf(b) else f"≤ {fmt(self.state.cost_axis, b)}"
        self.label.value = (f"<span class='tx-budget-readout' style='white-space: nowrap'>{html.escape(text)} "
                            f"<small>{html.escape(m.label)}</small></span>")

    def _axis(self, change=None) -> None:
        was = self.state.budget
        # What was reset, for the status line: a budget of 14.3 MB means nothing in FLOPs.
        self.reset = fmt(change["old"], was) if change is not None and math.isfinite(was) else None
        self.state.budget = math.inf
        self.fit()
