"""`Lab(store)`: controls, the live frontier, the best-under-budget card and a status line.

Controls write only to the `LabState`; the frontier, the card and the status
line only read from it; the `Runner` is the only thing that runs models.
"""
from __future__ import annotations

import html
import math
import warnings

import ipywidgets as w

import explorer as ex
from explorer.frontier import best_under_budget, with_derived
from explorer.store import Store
from explorer.techniques.sampling import read_at_k
from widgets.budget import BudgetSlider
from widgets.frontier import FrontierView
from widgets.runner import Runner
from widgets.state import COST_AXES, FILTERS, TECHNIQUES, THRESHOLDS, LabState

BITS = [2, 3, 4, 5, 6, 8, 16]
SAMPLES = [2, 4, 8, 16, 32, 64]
GROUPS = [("per channel", 0), ("32", 32), ("64", 64), ("128", 128)]


def bind(control: w.ValueWidget, state: LabState, name: str, *, before=None) -> w.ValueWidget:
    """Two-way link that respects the state's refusals: a refused value snaps the control back.
    `before()` runs before the state's value reaches the control (e.g. to widen its range)."""
    def to_state(change):
        setattr(state, name, change["new"])
        if getattr(state, name) != change["new"]:
            control.value = getattr(state, name)

    def to_control(change):
        if before is not None:
            before()
        if control.value != change["new"]:
            control.value = change["new"]

    control.value = getattr(state, name)
    control.observe(to_state, names="value")
    state.observe(to_control, names=name)
    return control


def link_threshold(slider: w.ValueWidget, state: LabState, criterion: str) -> None:
    def to_state(change):
        if state.criterion == criterion:
            setattr(state, "threshold", change["new"])
            if state.threshold != change["new"]:
                slider.value = state.threshold

    def to_slider(_=None):
        lo, hi, _default = THRESHOLDS[criterion]
        if state.criterion == criterion and lo <= state.threshold <= hi:
            slider.value = state.threshold

    to_slider()
    slider.observe(to_state, names="value")
    state.observe(to_slider, names=["threshold", "criterion"])


def controls(state: LabState) -> dict[str, w.Widget]:
    style = {"description_width": "90px"}
    c = {
        "technique": w.ToggleButtons(options=list(TECHNIQUES), description="technique", style=style),
        "task": w.Dropdown(options=list(ex.tasks.GENERATIVE), description="task", style=style),
        "models": w.SelectMultiple(options=ex.zoo.names(), description="models", rows=4, style=style),
        "bits": w.SelectionSlider(options=BITS, description="bits", style=style, continuous_update=False),
        "format": w.ToggleButtons(options=["int", "fp"], description="format", style=style),
        "group_size": w.Dropdown(options=GROUPS, description="group size", style=style),
        "criterion": w.Dropdown(options=["max_prob", "entropy", "agreement"], description="exit when", style=style),
        "draft": w.Dropdown(options=ex.zoo.names()[:-1], description="draft", style=style),
        "draft_len": w.IntSlider(min=1, max=8, description="draft length", style=style, continuous_update=False),
        "samples": w.SelectionSlider(options=SAMPLES, description="samples", style=style, continuous_update=False),
        "k": w.IntSlider(min=1, max=64, description="k", style=style),
        "cost_axis": w.Dropdown(options=list(COST_AXES), description="cost axis", style=style),
    }
    for name, control in c.items():
        # k's range follows the samples drawn, which may have grown just before k moves with them.
        widen = (lambda: setattr(c["k"], "max", max(c["k"].max, state.samples))) if name == "k" else None
        bind(control, state, name, before=widen)

    # One threshold slider per criterion, each on its own fixed scale (a slider whose range
    # moved would clamp and so write a threshold the user never chose); only the slider of
    # the current criterion writes to the state.
    for criterion, (lo, hi, _default) in THRESHOLDS.items():
        kind = w.IntSlider if criterion == "agreement" else w.FloatSlider
        slider = kind(min=lo, max=hi, description="threshold", style=style, continuous_update=False,
                      **({} if criterion == "agreement" else {"step": 0.01}))
        c[f"threshold_{criterion}"] = slider
        link_threshold(slider, state, criterion)
    # k's slider ends at the samples drawn; its maximum moves first, so a new k is never clamped.
    state.observe(lambda ch: setattr(c["k"], "max", max(ch["new"], 1)), names="samples")
    return c


def best_card(state: LabState, store: Store, df=None) -> str:
    df = store.frame() if df is None else df
    if df.height == 0 or "accuracy" not in df.columns:
        return "<div class='tx-card'>no runs yet</div>"
    df = df.filter((df["task"] == state.task) & df["accuracy"].is_not_null() & df["model"].is_in(list(state.models)))
    df = with_derived(read_at_k(df, state.k), COST_AXES)  # sampling rows at the k slider's k
    budget = state.budget if not math.isinf(state.budget) else float("inf")
    try:
        with warnings.catch_warnings():  # "nothing fits" is said on the card itself
            warnings.simplefilter("ignore", UserWarning)
            best = best_under_budget(df, budget=budget, cost=state.cost_axis, quality="accuracy")
    except ValueError as err:
        return f"<div class='tx-card'>{html.escape(str(err))}</div>"
    if best is None:
        return f"<div class='tx-card'>nothing fits a budget of {state.budget:.3g} {state.cost_axis}</div>"
    limit = "(no budget limit)" if math.isinf(state.budget) else f"under {state.budget:.3g} {state.cost_axis}"
    knobs = ", ".join(f"{k[5:]}={v}" for k, v in best.items() if k.startswith("knob_") and v is not None)
    return (f"<div class='tx-card'><b>best {html.escape(limit)}</b>: "
            f"{html.escape(best['model'])} {html.escape(best['technique'])} {html.escape(knobs)}<br>"
            f"accuracy {best['accuracy']:.3f} [{best['accuracy_lo']:.3f}, {best['accuracy_hi']:.3f}] at "
            f"{best[state.cost_axis]:.4g} {html.escape(state.cost_axis)}</div>")


class Lab(w.VBox):
    """The dashboard. `Lab(store)` or `Lab("results/")`; `Lab()` uses the per-user store."""

    def __init__(self, store: Store | str | None = None, *, state: LabState | None = None,
                 autostart: bool = True, **selection):
        self.store = store if isinstance(store, Store) else Store(store)
        self.state = state or LabState(**selection)
        self.frontier = FrontierView(self.state, self.store)
        self.card = w.HTML()
        self.status = w.HTML()
        self.progress = w.FloatProgress(min=0, max=1, layout=w.Layout(width="200px"))
        self.controls = controls(self.state)
        c = self.controls
        c["budget"] = BudgetSlider(self.state, self._costs, style={"description_width": "90px"})
        panels = {
            "baseline": [],
            "quantize": [c["bits"], c["format"], c["group_size"]],
            "speculative": [c["draft"], c["draft_len"]],
            "sampling": [c["samples"], c["k"]],
        }
        knobs = w.VBox()

        def show_panel(_=None):
            if self.state.technique == "early_exit":
                knobs.children = [c["criterion"], c[f"threshold_{self.state.criterion}"]]
            else:
                knobs.children = panels[self.state.technique]

        show_panel()
        self.state.observe(show_panel, names=["technique", "criterion"])
        self.state.observe(lambda ch: self._status(), names=["status", "busy"])
        self.state.observe(lambda ch: setattr(self.progress, "value", ch["new"]), names="progress")
        self.state.observe(lambda ch: self._card(), names=["budget", "cost_axis", "task", "k", "models"])
        self.state.observe(self._filtered, names=list(FILTERS))
        self.state.observe(lambda ch: self.select(ch["new"]), names="selected")
        left = w.VBox([c["technique"], c["task"], c["models"], knobs, c["cost_axis"], c["budget"]],
                      layout=w.Layout(min_width="380px"))
        self.detail = w.VBox()  # the technique's own view of its latest run
        self._frame = None  # the store as of the last refresh
        self.state.observe(self._k_moved, names="k")
        right = w.VBox([self.frontier.widget, self.card, self.detail])
        super().__init__([w.HBox([left, right]), w.HBox([self.progress, self.status])])
        self.add_class("tx-lab")
        # Started only once assigned: with every run cached, schedule() refreshes at once,
        # and the refresh reads self.runner.
        self.runner = Runner(self.state, self.store, on_rows=self.refresh, autostart=False)
        if autostart:
            self.runner.schedule()

    def select(self, row: dict) -> None:
        """Put a clicked run's configuration into the state (its rows are cached: no new run)."""
        if not row:
            return
        knobs = {"group_size": 0} if row.get("technique") == "quantize" else {}
        for key, value in row.items():
            name = key[5:] if key.startswith("knob_") else None
            name = {"n": "samples"}.get(name, name) if row.get("technique") == "sampling" else name
            if name in self.state.trait_names() and value is not None:
                knobs[name] = value
        with self.state.hold_trait_notifications():
            if row.get("technique") in TECHNIQUES:
                self.state.technique = row["technique"]
            for name, value in knobs.items():
                setattr(self.state, name, value)
        self.state.status = f"selected {row.get('model')} {row.get('technique')} from the chart"

    def _costs(self) -> list:
        """Costs of the runs on screen, on the selected cost axis (for the budget slider's range)."""
        return [r.get(self.state.cost_axis) for r in self.frontier.shown]

    def refresh(self) -> None:
        # One read of the store per refresh; filter moves (budget, cost axis, k) reuse it, since
        # new rows only arrive through a refresh.
        df = self._frame = self.store.frame()
        self.frontier.refresh(df)
        self.controls["budget"].fit()
        self._card(df)
        self._detail(df)

    def current_row(self, df=None) -> dict | None:
        """The stored row of the selected technique on the largest selected model, if run."""
        try:
            jobs = [j for j in self.runner.jobs() if j.technique.name == self.state.technique]
        except (ValueError, KeyError):
            return None
        df = self.store.frame() if df is None else df
        if df.height == 0:
            return None
        for job in reversed(jobs):  # the models as chosen; the last is the largest in the zoo's order
            match = df.filter(df["config_hash"] == job.config_hash)
            if match.height:
                return match.to_dicts()[0]
        return None

    def _detail(self, df=None) -> None:
        from widgets.tokens import CurveView, ExitMapView, SpecStreamView

        row = self.current_row(df)
        view = None
        if row is not None and row.get("technique") == "early_exit" and row.get("exit_layers"):
            view = ExitMapView.from_row(row)
        elif row is not None and row.get("technique") == "sampling" and row.get("samples") is not None:
            view = CurveView.from_row(row, k=min(self.state.k, int(row.get("knob_n") or 1)))
        elif row is not None and row.get("technique") == "speculative" and row.get("spec_trace"):
            view = SpecStreamView.from_row(row)
        self.detail.children = [view] if view is not None else []

    def _filtered(self, change) -> None:
        """A filter moved: say what it shows (no run starts); a run in flight keeps the status line."""
        if self.state.busy:
            return
        s = self.state
        if change["name"] == "k":
            s.status = f"k={s.k}: sampling points read from their stored samples, no new run"
            return
        shown = [c for c in self._costs() if c is not None and c == c and c > 0]
        fits = sum(c <= s.budget for c in shown)
        limit = "no budget" if math.isinf(s.budget) else f"budget {s.budget:.3g} {s.cost_axis}"
        s.status = f"{limit}: {fits} of {len(shown)} runs fit, no new run"

    def _k_moved(self, change) -> None:
        # The k slider only moves the marker on stored curves: no run, no new view.
        for view in self.detail.children:
            if hasattr(view, "k"):
                view.k = change["new"]

    def _card(self, df=None) -> None:
        self.card.value = best_card(self.state, self.store, self._frame if df is None else df)

    def _status(self) -> None:
        mark = "⏳ " if self.state.busy else ""
        self.status.value = f"<span class='tx-status'>{mark}{html.escape(self.state.status)}</span>"
