"""`Lab(store)`: controls, the live frontier, the best-under-budget card and a status line.

Controls write only to the `LabState`; the frontier, the card and the status
line only read from it; the `Runner` is the only thing that runs models.
"""
from __future__ import annotations

import html
import inspect
import math
import warnings

import ipywidgets as w

import explorer as ex
from explorer import palette
from explorer.frontier import best_under_budget, read_at, with_derived
from explorer.metrics import COST_AXES, axis_title, fmt, metric
from explorer.registry import loaded
from explorer.store import Store
from explorer.techniques import Knob, declaration, declarations
from widgets.budget import BudgetSlider
from widgets.frontier import FrontierView
from widgets.runner import Runner
from widgets.state import LabState, knob_owners, technique_names

STYLE = {"description_width": "90px"}


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


def link_scaled(slider: w.ValueWidget, state: LabState, knob: Knob, key) -> None:
    """A slider for `knob` on the scale it has when its `scale_by` knob is `key`: only the
    slider of the current scale writes to the state."""
    def to_state(change):
        if getattr(state, knob.scale_by) == key:
            setattr(state, knob.name, change["new"])
            if getattr(state, knob.name) != change["new"]:
                slider.value = getattr(state, knob.name)

    def to_slider(_=None):
        lo, hi, *_rest = knob.scales[key]
        value = getattr(state, knob.name)
        if getattr(state, knob.scale_by) == key and lo <= value <= hi:
            slider.value = value

    to_slider()
    slider.observe(to_state, names="value")
    state.observe(to_slider, names=[knob.name, knob.scale_by])


def model_names(extra=()) -> list[str]:
    """The models a lab offers: the zoo, the real models installed (SmolLM2), every model loaded in this
    kernel, and `extra` (folders, ids)."""
    from explorer.models import real_names

    return list(dict.fromkeys([*ex.zoo.names(), *real_names(), *loaded.keys(), *map(str, extra)]))


def task_names() -> list[str]:
    """The generative tasks registered now (a task registered in a notebook is listed too)."""
    listed = getattr(ex.tasks, "generative", None)
    return list(listed()) if callable(listed) else list(ex.tasks.GENERATIVE)


def slider(knob: Knob, lo, hi, step) -> w.ValueWidget:
    integer = all(float(v).is_integer() for v in (lo, hi, step or 1))
    kind = w.IntSlider if integer else w.FloatSlider
    extra = {} if integer else {"step": step or (hi - lo) / 100}
    return kind(min=lo, max=hi, description=knob.label, style=STYLE, continuous_update=False,
                tooltip=knob.unit or None, **extra)


def control_for(knob: Knob, models: list[str]) -> w.ValueWidget:
    """A control for a declared knob, from its declaration alone."""
    if knob.kind == "model":
        return w.Dropdown(options=models, description=knob.label, style=STYLE)
    if knob.options:
        labelled = any(isinstance(o, tuple) for o in knob.options)
        values = knob.values
        if labelled:
            pairs = [o if isinstance(o, tuple) else (str(o), o) for o in knob.options]
            return w.Dropdown(options=pairs, description=knob.label, style=STYLE)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return w.SelectionSlider(options=values, description=knob.label, style=STYLE, continuous_update=False)
        if len(values) <= 2:
            return w.ToggleButtons(options=values, description=knob.label, style=STYLE)
        return w.Dropdown(options=values, description=knob.label, style=STYLE)
    if knob.range is not None:
        return slider(knob, knob.range[0], knob.range[1], knob.step)
    return w.Text(description=knob.label, style=STYLE)


def controls(state: LabState, models: list[str] | None = None) -> dict[str, w.Widget]:
    """One control per lab knob, every one built from the technique registry's declarations."""
    models = model_names(state.models) if models is None else models
    c: dict[str, w.Widget] = {
        # Names a person reads ("early exit"), each meaning one registered technique.
        "technique": w.ToggleButtons(options=[(palette.technique_label(n), n) for n in technique_names()],
                                     description="technique", style=STYLE),
        "stack": w.SelectMultiple(options=[(palette.technique_label(n), n) for n in technique_names()
                                           if declaration(n).roles],
                                  description="stack with", rows=3, style=STYLE),
        "task": w.Dropdown(options=task_names(), description="task", style=STYLE),
        "models": w.SelectMultiple(options=models, description="models", rows=4, style=STYLE),
        "cost_axis": w.Dropdown(options=[(axis_title(a), a) for a in COST_AXES], description="cost axis",
                                style=STYLE),
    }
    bounded: dict[str, str] = {}  # filter -> the knob that bounds it from above
    for name, owners in knob_owners().items():
        if name not in state.trait_names():
            continue  # registered after this state was made
        knob = owners[0][1]
        if knob.scales:
            # One slider per scale, each on its own fixed range (a slider whose range moved would
            # clamp and so write a value the user never chose).
            for key, (lo, hi, _default, *step) in knob.scales.items():
                c[f"{name}_{key}"] = s = slider(knob, lo, hi, step[0] if step else None)
                link_scaled(s, state, knob, key)
            continue
        c[name] = control_for(knob, models)
        if knob.upto:
            bounded[name] = knob.upto
    for name, control in c.items():
        if name in bounded:  # its range follows the bound, which may have grown just before it moves
            upto = bounded[name]
            widen = (lambda ctl=control, upto=upto: setattr(ctl, "max", max(ctl.max, getattr(state, upto))))
            bind(control, state, name, before=widen)
        elif name in state.trait_names():
            if name == "stack":
                control.value = tuple(state.stack)
                control.observe(lambda ch: setattr(state, "stack", list(ch["new"])), names="value")
                state.observe(lambda ch, ctl=control: setattr(ctl, "value", tuple(ch["new"])), names="stack")
                continue
            bind(control, state, name)
    for name, upto in bounded.items():  # the filter's slider ends at its bound; its maximum moves first
        state.observe(lambda ch, ctl=c[name]: setattr(ctl, "max", max(ch["new"], 1)), names=upto)
        c[name].max = max(getattr(state, upto), 1)
    return c


def panel(state: LabState, c: dict[str, w.Widget]) -> list[w.Widget]:
    """The controls of the selected technique and of each one stacked on it (a shared knob once)."""
    out: list[w.Widget] = []
    for name in state.chosen():
        d = declaration(name)
        for knob in (*d.knobs, *d.filters):
            control = c.get(f"{knob.name}_{getattr(state, knob.scale_by)}" if knob.scales else knob.name)
            if control is not None and control not in out:
                out.append(control)
    return out


def best_card(state: LabState, store: Store, df=None) -> str:
    df = store.frame() if df is None else df
    if df.height == 0 or "accuracy" not in df.columns:
        return "<div class='tx-card'>no runs yet</div>"
    df = df.filter((df["task"] == state.task) & df["accuracy"].is_not_null() & df["model"].is_in(list(state.models)))
    df = with_derived(read_at(df, state.filter_values()), COST_AXES)  # rows re-read at the filters (k)
    budget = state.budget if not math.isinf(state.budget) else float("inf")
    try:
        with warnings.catch_warnings():  # "nothing fits" is said on the card itself
            warnings.simplefilter("ignore", UserWarning)
            best = best_under_budget(df, budget=budget, cost=state.cost_axis, quality="accuracy")
    except ValueError as err:
        return f"<div class='tx-card'>{html.escape(str(err))}</div>"
    if best is None:
        return (f"<div class='tx-card'>nothing fits a budget of {html.escape(fmt(state.cost_axis, state.budget))} "
                f"({html.escape(metric(state.cost_axis).label)})</div>")
    limit = "with no budget limit" if math.isinf(state.budget) else f"within {fmt(state.cost_axis, state.budget)}"
    knobs = ", ".join(knob_text(best))
    what = " ".join(x for x in (best["model"], str(best["technique"]).replace("_", " ").replace("+", " + "),
                                f"({knobs})" if knobs else "") if x)
    rough = (f"<br><i>first estimate from {best['n_examples']} of {best.get('n_full')} problems; refining</i>"
             if best.get("partial") else "")
    return (f"<div class='tx-card'><b>best {html.escape(limit)}</b>: {html.escape(what)}<br>"
            f"accuracy {best['accuracy']:.3f} (95% interval {best['accuracy_lo']:.3f} to {best['accuracy_hi']:.3f}) "
            f"at {html.escape(fmt(state.cost_axis, best[state.cost_axis]))} "
            f"({html.escape(metric(state.cost_axis).label)}){rough}</div>")


# Space reserved for what changes length (card, status, note): the chart below or beside them must not jump.
LAB_CSS = """<style>
.tx-lab .tx-card-box { min-height: 88px; max-width: 620px; }  /* three lines: best, accuracy, "first estimate" */
.tx-lab .tx-status-box { min-height: 22px; }
.tx-lab .tx-note { color: var(--jp-ui-font-color2, #555); font-size: 12px; }
.tx-lab .tx-right { flex: 1 1 560px; }
.tx-lab .tx-controls { flex: 0 1 380px; }
.tx-lab .vega-embed { min-height: 440px; }  /* the drawing grows 5-20 px with a legend row or the budget label */
</style>"""


def knob_text(row: dict) -> list[str]:
    """The row's knobs a person set in the lab, as "bits 4", "draft zoo-xs" (the declared knobs only)."""
    out = []
    for name in str(row.get("technique", "")).split("+"):
        if name not in technique_names():
            continue
        for k in declaration(name).knobs:
            for column in (f"knob_{name}_{k.field}", f"knob_{k.field}"):
                if row.get(column) is not None:
                    out.append(f"{k.label} {row[column]}")
                    break
    return out


def comparable(df, state: LabState):
    """The rows this lab compares: its task, its n and seed (a first estimate counts by the n it stands
    for). Runs of other notebooks at another n are left out unless the user asks for every stored run."""
    import polars as pl

    if df.height == 0 or "n_examples" not in df.columns:
        return df
    n = pl.col("n_full") if "n_full" in df.columns else pl.lit(None)
    stands_for = pl.when(n.is_not_null()).then(n).otherwise(pl.col("n_examples"))
    return df.filter((stands_for == state.n) & (pl.col("seed") == state.seed))


class Lab(w.VBox):
    """The dashboard. `Lab(store)` or `Lab("results/")`; `Lab()` uses the per-user store.

    `models=[...]` selects models (zoo names, folders, Hub ids); the list offered is the
    zoo, every model loaded in this kernel (`explorer.load`), and those given. Every
    control, panel and detail view comes from the technique registry.
    """

    def __init__(self, store: Store | str | None = None, *, state: LabState | None = None,
                 autostart: bool = True, **selection):
        self.store = store if isinstance(store, Store) else Store(store)
        self.state = state or LabState(**selection)
        self.frontier = FrontierView(self.state, self.store)
        self.card = w.HTML()
        self.status = w.HTML()
        self.progress = w.FloatProgress(min=0, max=1, layout=w.Layout(width="200px"))
        self.controls = controls(self.state, model_names(self.state.models))
        c = self.controls
        c["budget"] = BudgetSlider(self.state, self._costs, style=STYLE)
        knobs = self.knobs = w.VBox()  # the panel: the knobs of the selected and stacked techniques
        scales = sorted({k.scale_by for d in declarations() for k in d.knobs if k.scale_by})

        def show_panel(_=None):
            knobs.children = panel(self.state, c)

        show_panel()
        self.state.observe(show_panel, names=["technique", "stack", *[n for n in scales if n in self.state.trait_names()]])
        self.state.observe(self._default_axis, names="technique")
        self.state.observe(lambda ch: self._status(), names=["status", "busy"])
        self.state.observe(lambda ch: setattr(self.progress, "value", ch["new"]), names="progress")
        # The bar shows only while runs are going (its space stays reserved): an idle page has no bars.
        self.progress.layout.visibility = "visible" if self.state.busy else "hidden"
        self.state.observe(lambda ch: setattr(self.progress.layout, "visibility", "visible" if ch["new"] else "hidden"),
                           names="busy")
        filters = [f for f in self.state.filters() if f in self.state.trait_names()]
        self.state.observe(lambda ch: self._card(), names=["task", "models", *filters])
        self.state.observe(self._filtered, names=filters)
        self.state.observe(lambda ch: self.select(ch["new"]), names="selected")
        left = w.VBox([c["technique"], c["stack"], c["task"], c["models"], knobs, c["cost_axis"], c["budget"]],
                      layout=w.Layout(min_width="380px"))
        self.detail = w.VBox()  # the technique's own view of its latest run
        self._selecting = False
        self._frame = None  # the store as of the last refresh
        self.state.observe(self._filter_moved, names=[f for f in filters if f not in ("budget", "cost_axis")])
        # Runs of other notebooks (another n, another seed) stay out of the chart unless asked for.
        self.every_run = w.Checkbox(value=False, description="show every stored run", indent=False)
        self.note = w.HTML()
        self.every_run.observe(lambda _: self.refresh(), names="value")
        self.card.add_class("tx-card-box")
        self.status.add_class("tx-status-box")
        self.detail.add_class("tx-detail")
        right = w.VBox([self.frontier.widget, w.HBox([self.every_run, self.note], layout=w.Layout(
            align_items="center")), self.card, self.detail], layout=w.Layout(min_width="0"))
        right.add_class("tx-right")
        left.add_class("tx-controls")
        # Wraps when narrow (a sidebar open): the controls then sit above the chart, never beside a
        # chart cut off at the edge.
        top = w.HBox([left, right], layout=w.Layout(flex_flow="row wrap", align_items="flex-start"))
        super().__init__([top, w.HBox([self.progress, self.status])])
        self.add_class("tx-lab")
        self._css = w.HTML(LAB_CSS)  # reserved heights: the layout does not jump when text changes
        self.children = (self._css, *self.children)
        # Started only once assigned: with every run cached, schedule() refreshes at once,
        # and the refresh reads self.runner.
        self.runner = Runner(self.state, self.store, on_rows=self.refresh, autostart=False)
        self.runner.models.update({name: m for name, m in loaded.items() if name in self.state.models})
        if autostart:
            self.runner.schedule()

    def select(self, row: dict) -> None:
        """Put a clicked run's configuration into the state (its rows are cached: no new run)."""
        if not row:
            return
        names = [n for n in str(row.get("technique", "")).split("+") if n]
        known = [n for n in names if n in technique_names()]
        knobs: dict = {}
        for name in known:
            for knob in (*declaration(name).knobs, *declaration(name).filters):
                # a composed row prefixes a knob two of its parts share: knob_<technique>_<field>
                for column in (f"knob_{name}_{knob.field}", f"knob_{knob.field}"):
                    if column in row and knob.name in self.state.trait_names():
                        if row[column] is not None or None in knob.values:
                            knobs[knob.name] = row[column]
                        break
        self._selecting = True
        try:
            self._apply(known, knobs)
        finally:
            self._selecting = False
        technique = palette.technique_label(str(row.get("technique")))  # "early exit", as the buttons say
        self.state.status = f"selected {row.get('model')} {technique} from the chart"

    def _apply(self, known: list[str], knobs: dict) -> None:
        with self.state.hold_trait_notifications():
            if known:
                self.state.stack = []
                self.state.technique = known[0]
            for name, value in knobs.items():
                setattr(self.state, name, value)
            if known:
                self.state.stack = known[1:]

    def _default_axis(self, change) -> None:
        """A technique chosen with its control: show the cost axis it moves (the budget starts over).
        A point clicked on the chart keeps the axis it was clicked on."""
        if not self._selecting:
            self.state.cost_axis = declaration(change["new"]).axis

    def _costs(self) -> list:
        """Costs of the runs on screen, on the selected cost axis (for the budget slider's range)."""
        return [r.get(self.state.cost_axis) for r in self.frontier.shown]

    def refresh(self) -> None:
        # One read of the store per refresh; filter moves (budget, cost axis, k) reuse it, since
        # new rows only arrive through a refresh.
        everything = self.runner.frame()  # stored rows + first estimates still being refined
        df = self._frame = everything if self.every_run.value else comparable(everything, self.state)
        self._note(everything, df)
        self.frontier.refresh(df)
        self.controls["budget"].fit()
        self._card(df)
        self._detail(df)

    def current_row(self, df=None) -> dict | None:
        """The stored row of the selection on the largest selected model, if run."""
        try:
            name = self.state.technique_config().name
            jobs = [j for j in self.runner.jobs() if j.technique.name == name]
        except (ValueError, KeyError):
            return None
        df = self.store.frame() if df is None else df
        if df.height == 0:
            return None
        picked = (self.state.selected or {}).get("config_hash")
        if picked in {j.config_hash for j in jobs}:  # the point the user clicked, while it is still selected
            match = df.filter(df["config_hash"] == picked)
            if match.height:
                return match.to_dicts()[0]
        for job in reversed(jobs):  # the models as chosen; the last is the largest in the zoo's order
            match = df.filter(df["config_hash"] == job.config_hash)
            if match.height:
                return match.to_dicts()[0]
        return None

    def views(self, row: dict) -> list:
        """Each selected technique's detail view of `row`, where its declaration names one and the
        row has what it draws (imported only now: explorer never imports Jupyter)."""
        out = []
        for name in self.state.chosen():
            d = declaration(name)
            cls = d.detail_view()
            if cls is None:
                continue
            accepts = inspect.signature(cls.from_row).parameters
            filters = {f.field: self.bounded(f, row) for f in d.filters if f.field in accepts}
            try:
                out.append(cls.from_row(row, **filters))
            except (KeyError, TypeError, ValueError, IndexError):
                continue  # this row lacks what the view draws (a run from before the view existed)
        return out

    def bounded(self, knob: Knob, row: dict):
        """A filter's value, no higher than the row's own bound (k <= the n samples it drew)."""
        value = getattr(self.state, knob.name, knob.default)
        if knob.upto and isinstance(value, (int, float)):
            owner = next((k for d in declarations() for k in d.knobs if k.name == knob.upto), None)
            top = row.get(f"knob_{owner.field}") if owner else None
            if isinstance(top, (int, float)):
                value = min(value, int(top))
        return value

    def _note(self, everything, shown) -> None:
        """Say what the chart leaves out, or that it mixes runs of different n (never silently)."""
        import polars as pl

        def mine(df):
            if df.height == 0 or "task" not in df.columns:
                return df.head(0)
            return df.filter((pl.col("task") == self.state.task) & pl.col("model").is_in(list(self.state.models)))

        every, kept = mine(everything), mine(shown)
        ns = sorted(set(kept["n_examples"].to_list())) if kept.height else []
        if self.every_run.value:
            text = (f"every stored run: n = {', '.join(map(str, ns))} problems side by side (intervals differ)"
                    if len(ns) > 1 else "every stored run")
        else:
            hidden = every.height - kept.height
            text = (f"runs at n = {self.state.n}, seed {self.state.seed}"
                    + (f"; {hidden} stored at another n or seed, hidden" if hidden > 0 else ""))
        self.note.value = f"<span class='tx-note'>{html.escape(text)}</span>"

    def _detail(self, df=None) -> None:
        row = self.current_row(df)
        self.detail.children = self.views(row) if row is not None else []

    def _filtered(self, change) -> None:
        """A filter moved: say what it shows (no run starts); a run in flight keeps the status line."""
        if self.state.busy:
            return
        s = self.state
        if change["name"] not in ("budget", "cost_axis"):
            s.status = f"{change['name']}={change['new']}: rows re-read from what is stored, no new run"
            return
        shown = [c for c in self._costs() if c is not None and c == c and c > 0]
        fits = sum(c <= s.budget for c in shown)
        if change["name"] == "cost_axis":
            reset = self.controls["budget"].reset
            s.status = (f"cost axis: {axis_title(s.cost_axis)}"
                        + (f"; the budget ({reset}) was reset to no limit" if reset else "")
                        + f"; {len(shown)} runs shown, no new run")
            return
        limit = "no budget" if math.isinf(s.budget) else f"budget ≤ {fmt(s.cost_axis, s.budget)}"
        s.status = f"{limit}: {fits} of {len(shown)} runs fit, no new run"

    def _filter_moved(self, change) -> None:
        # A declared filter (k) only moves the marker on stored curves: no run, no new view.
        for view in self.detail.children:
            if view.has_trait(change["name"]) if hasattr(view, "has_trait") else hasattr(view, change["name"]):
                setattr(view, change["name"], change["new"])

    def _card(self, df=None) -> None:
        self.card.value = best_card(self.state, self.store, self._frame if df is None else df)

    def _status(self) -> None:
        mark = "⏳ " if self.state.busy else ""
        self.status.value = f"<span class='tx-status'>{mark}{html.escape(self.state.status)}</span>"
