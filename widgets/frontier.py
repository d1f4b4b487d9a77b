"""The frontier chart: an `alt.JupyterChart` that stays on screen while its data changes.

Budget and cost axis are Vega-Lite params, so moving those sliders filters in
the browser with no re-render and no model run. New rows arrive by swapping
the data inside the existing spec (`jchart.spec`), which skips Altair's
re-validation of the whole chart; see benchmarks/lab.py for what each path costs.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import altair as alt
import polars as pl

from explorer.frontier import points
from explorer import palette
from explorer.metrics import COST_AXES, axis_title, fmt, metric

DATA = "rows"
QUALITY = "accuracy"
NO_LIMIT = None  # JSON has no infinity: a null budget means no limit


def records(df: pl.DataFrame, quality: str = QUALITY, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Chart rows: one per run, with every cost axis (stored, and scaled to its display unit as
    `shown_<axis>`, with its text as `text_<axis>`) and the frontier status on each axis,
    from `explorer.frontier.points` (rows re-read at the filters, e.g. k)."""
    if df.height == 0 or quality not in df.columns:
        return []
    df = points(df, cost=COST_AXES, quality=quality, filters=filters)
    if df.height == 0:
        return []
    axes = [c for c in COST_AXES if c in df.columns]
    keep = ["config_hash", "model", "technique", "technique_label", "label", "partial", quality,
            f"{quality}_lo", f"{quality}_hi", "interval_text", *axes, *[f"shown_{c}" for c in axes],
            *[f"text_{c}" for c in axes], *[f"status_{c}" for c in COST_AXES]]
    df = df.with_columns(label=label_expr(df),
                         technique_label=df["technique"].map_elements(palette.technique_label, return_dtype=pl.String),
                         interval_text=pl.format("{} to {}", pl.col(f"{quality}_lo").round(3), pl.col(f"{quality}_hi").round(3)),
                         **{f"shown_{c}": pl.col(c) * metric(c).scale for c in axes},
                         **{f"text_{c}": df[c].map_elements(lambda v, c=c: fmt(c, v), return_dtype=pl.String)
                            for c in axes})
    if "n_full" in df.columns:  # the runner's first estimate: said on the point itself, not only on the card
        rough = pl.col("partial").fill_null(False) & pl.col("n_full").is_not_null()
        df = df.with_columns(label=pl.when(rough).then(pl.format("{} (first estimate: {} of {} problems; refining)",
                                                                 "label", "n_examples", "n_full"))
                             .otherwise(pl.col("label")))
    for axis in COST_AXES:  # the "not distinguishable" mark says how many problems per configuration would decide it
        if f"problems_to_decide_{axis}" in df.columns:
            n = pl.col(f"problems_to_decide_{axis}")
            decide = pl.lit("not distinguishable: about ") + n.cast(pl.String) + pl.lit(" problems each would decide")
            df = df.with_columns(pl.when(n.is_not_null()).then(decide).otherwise(pl.col(f"status_{axis}"))
                                 .alias(f"status_{axis}"))
    return df.select([c for c in keep if c in df.columns]).to_dicts()


def label_expr(df: pl.DataFrame) -> pl.Series:
    knobs = sorted(c for c in df.columns if c.startswith("knob_"))
    technique = pl.col("technique").str.replace_all("_", " ").str.replace_all("+", " + ", literal=True)  # as the legend
    parts = [pl.col("model"), technique]
    for k in knobs:
        parts.append(pl.when(pl.col(k).is_not_null()).then(pl.lit(k[5:] + "=") + pl.col(k).cast(pl.String))
                     .otherwise(pl.lit("")))
    label = pl.concat_str(parts, separator=" ").str.replace_all(r"\s+", " ").str.strip_chars()
    return df.select(label.alias("label"))["label"]


def encodings(models: list[str], techniques: list[str]) -> dict[str, dict]:
    """The colour and shape scales of the one visual grammar (explorer.palette), for these models and
    techniques: a model's colour and a technique's shape never depend on what else is on the chart."""
    labels = [palette.technique_label(t) for t in techniques]
    shapes = palette.shape_scale(techniques)
    return {"color": palette.color_scale(models), "shape": {"domain": labels, "range": shapes["range"]}}


def chart(rows: list[dict[str, Any]], *, budget: float = math.inf, cost_axis: str = "weight_bytes",
          quality: str = QUALITY, models: list[str] | None = None, techniques: list[str] | None = None
          ) -> alt.LayerChart:
    """The frontier in the one visual grammar. The x axis is in the cost's display unit (MB, ms);
    `budget` stays in the column's own unit (bytes, seconds), as the state holds it, and the
    `cost_scale` param converts it where the chart compares or draws it."""
    models = list(dict.fromkeys([*(models or []), *(r["model"] for r in rows)]))
    techniques = list(dict.fromkeys([*(techniques or []), *(r["technique"] for r in rows)]))
    scales = encodings(models, techniques)
    budget_p = alt.param(name="budget", value=None if math.isinf(budget) else budget)
    axis_p = alt.param(name="cost_axis", value=cost_axis)
    scale_p = alt.param(name="cost_scale", value=metric(cost_axis).scale)
    pick = alt.selection_point(name="pick", fields=["config_hash"], on="click", clear="dblclick")
    axes = list(dict.fromkeys([*COST_AXES, cost_axis]))  # every axis: rows arriving later may have any of them
    base = (
        alt.Chart(alt.NamedData(name=DATA))
        .transform_fold([f"shown_{a}" for a in axes], as_=["cost_name", "cost"])
        .transform_filter("datum.cost_name == 'shown_' + cost_axis && isValid(datum.cost) && datum.cost > 0")
        .transform_calculate(status="datum['status_' + cost_axis]", cost_text="datum['text_' + cost_axis]",
                             fits="budget == null || datum.cost <= budget * cost_scale")
    )
    x = alt.X("cost:Q", scale=alt.Scale(type="log"), title=axis_title(cost_axis),
              axis=alt.Axis(format=tick_format(cost_axis)))
    y = alt.Y(f"{quality}:Q", scale=alt.Scale(domain=[0, 1]), title=axis_title(quality))
    color = alt.Color("model:N", title="model", scale=alt.Scale(**scales["color"]),
                      legend=alt.Legend(orient="bottom", direction="horizontal", columns=4, symbolType="circle",
                                        symbolOpacity=1))
    shape = alt.Shape("technique_label:N", title="technique", scale=alt.Scale(**scales["shape"]),
                      legend=alt.Legend(orient="bottom", direction="horizontal", columns=3))
    bars = base.mark_rule(opacity=0.45, strokeWidth=1.5).encode(  # dashed: a first estimate's interval
        x=x, y=f"{quality}_lo:Q", y2=f"{quality}_hi:Q", color=color,
        strokeDash=alt.condition("datum.partial", alt.value([3, 2]), alt.value([1, 0])))
    points = base.mark_point(filled=True, opacity=1).encode(
        x=x, y=y, color=color, shape=shape,
        opacity=alt.condition("datum.fits", alt.value(1.0), alt.value(0.2)),
        size=alt.condition(pick, alt.value(palette.SELECTED_SIZE), alt.value(palette.POINT_SIZE), empty=False),
        stroke=alt.condition(pick, alt.value(palette.SELECTED), alt.value(None), empty=False),
        strokeWidth=alt.condition(pick, alt.value(2.5), alt.value(0), empty=False),
        tooltip=[alt.Tooltip("label:N", title="configuration"),
                 alt.Tooltip(f"{quality}:Q", title=axis_title(quality), format=".3f"),
                 alt.Tooltip("interval_text:N", title="95% interval"),
                 alt.Tooltip("cost_text:N", title="cost"),
                 alt.Tooltip("status:N", title="frontier")],
    ).add_params(pick)
    line = base.transform_filter("datum.status == 'frontier'").mark_line(
        interpolate="step-after", color="#444", strokeDash=list(palette.FRONTIER_DASH)).encode(x=x, y=y)
    # The budget: a dashed rule with its name written on it, not a colour alone.
    limit = base.transform_filter("budget != null").transform_aggregate(n="count()").transform_calculate(
        b="budget * cost_scale", word="'budget'")
    rule = limit.mark_rule(color=palette.BUDGET, strokeWidth=2, strokeDash=list(palette.BUDGET_DASH)).encode(x="b:Q")
    word = limit.mark_text(align="left", dx=4, dy=-6, color=palette.BUDGET, fontWeight="bold").encode(
        x="b:Q", y=alt.value(0), text="word:N")
    title = alt.Title(text="best accuracy per cost: the Pareto frontier",
                      subtitle="dotted: the frontier; dashed: the budget; bars: 95% intervals")
    return alt.layer(bars, points, line, rule, word, title=title).add_params(budget_p, axis_p, scale_p).properties(
        width=430, height=280, datasets={DATA: rows}).configure_legend(labelLimit=160)


def tick_format(cost_axis: str) -> str:
    """Tick labels a person reads: 2M FLOPs, not 2,000,000; 0.25 MB, not 250m."""
    return "~g" if metric(cost_axis).unit else "~s"


def encodings_in(node) -> list[dict]:
    """Every `encoding` dict in a Vega-Lite spec, at any depth (layers, concats, facets), to edit in
    place. Collected before the caller edits any (a list, not a generator, so no dict changes size
    while it is walked). Written by hand: altair edits a chart object, not a spec dict."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("encoding"), dict):
                found.append(node["encoding"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(node)
    return found


def retitled(spec: dict, cost_axis: str) -> dict:
    """A copy of `spec` whose x axis names `cost_axis` with its unit (a title is not a param)."""
    new = copy.deepcopy({k: v for k, v in spec.items() if k != "datasets"})
    new["datasets"] = spec.get("datasets", {})

    for enc in encodings_in(new):
        if isinstance(enc.get("x"), dict) and enc["x"].get("field") == "cost":
            enc["x"]["title"] = axis_title(cost_axis)
            enc["x"].setdefault("axis", {})["format"] = tick_format(cost_axis)
    return new


def rescaled(spec: dict, models: list[str], techniques: list[str]) -> dict:
    """`spec` with the colour and shape scales for these models and techniques (same grammar)."""
    scales = encodings(models, techniques)

    for enc in encodings_in(spec):
        for channel, field in (("color", "model"), ("shape", "technique_label")):
            e = enc.get(channel)
            if isinstance(e, dict) and e.get("field") == field and isinstance(e.get("scale"), dict):
                e["scale"] = dict(scales[channel])
    return spec


def with_rows(spec: dict, rows: list[dict[str, Any]], params: dict[str, Any]) -> dict:
    """A copy of `spec` with new data and the params' current values, for `jchart.spec`."""
    new = copy.copy(spec)
    new["datasets"] = {DATA: rows}
    new["params"] = [dict(p, value=params.get(p["name"], p.get("value"))) if "select" not in p else p
                     for p in spec.get("params", [])]
    return new


class FrontierView:
    """The live frontier for a `LabState`: `.widget` is the `alt.JupyterChart` to display."""

    def __init__(self, state, store, *, quality: str = QUALITY):
        # The Vega libraries come from a CDN unless bundled: a workshop room may have no network.
        alt.JupyterChart.enable_offline()
        self.state, self.store, self.quality = state, store, quality
        self.widget = alt.JupyterChart(
            chart(self.rows(store.frame()), budget=state.budget, cost_axis=state.cost_axis, quality=quality,
                  models=list(state.models), techniques=self.techniques()),
            embed_options={"renderer": "svg", "actions": False})
        self._spec = self.widget.spec
        self._df = None  # the frame the rows on screen came from
        self.shown = self.widget.spec.get("datasets", {}).get(DATA, [])  # the rows on screen
        self.updates = 0
        state.observe(self._on_filter, names=["budget", "cost_axis"])
        # A declared filter (k) re-reads stored rows: no run.
        state.observe(lambda _: self.refresh(), names=[f for f in state.filters() if f in state.trait_names()
                                                      and f not in ("budget", "cost_axis")])
        self.widget.selections.observe(self._on_pick, names="pick")
        # A page reload re-renders the chart from its spec and the front end reports the spec's
        # param values back as if the user had set them: the state is the truth, so restore it.
        self.widget.observe(self._guard, names="_params")

    def rows(self, df: pl.DataFrame) -> list[dict[str, Any]]:
        if df.height == 0 or "task" not in df.columns:
            return []
        df = df.filter((pl.col("task") == self.state.task) & pl.col("model").is_in(list(self.state.models)))
        return records(df, self.quality, self.state.filter_values())  # e.g. sampling points at the k slider's k

    def techniques(self, rows: list[dict[str, Any]] = ()) -> list[str]:
        """The techniques with a shape in the legend: the selection's, and any on the chart."""
        try:
            chosen = [self.state.technique_config().name]
        except (ValueError, KeyError, AttributeError):
            chosen = []
        return list(dict.fromkeys(["baseline", *chosen, *(r["technique"] for r in rows)]))

    def params(self) -> dict[str, Any]:
        b = self.state.budget
        return {"budget": None if math.isinf(b) else b, "cost_axis": self.state.cost_axis,
                "cost_scale": metric(self.state.cost_axis).scale}

    def refresh(self, df: pl.DataFrame | None = None) -> None:
        """New rows into the chart on screen: same chart object, new data (and the colour and shape
        scales for the models and techniques now shown, in the same grammar)."""
        df = self._df = self.store.frame() if df is None else df
        rows = self.shown = self.rows(df)
        spec = with_rows(self._spec, rows, self.params())
        self.widget.spec = rescaled(spec, list(self.state.models), self.techniques(rows))
        self.updates += 1

    def _on_filter(self, change) -> None:
        if change["name"] == "cost_axis":
            # The axis title names the quantity and its unit: a title is not a param, so this one
            # change re-sends the spec (the budget is reset with it anyway).
            self._spec = retitled(self._spec, self.state.cost_axis)
            self.refresh(self._df)  # the rows last given (a lab's comparable rows), re-drawn
            return
        # A budget move filters in the browser: no re-render, no run.
        setattr(self.widget.params, change["name"], self.params()[change["name"]])

    def _guard(self, change) -> None:
        # Runs after altair copied the front end's values into `params`; one corrected dict back.
        want = self.params()
        new = change["new"] or {}
        wrong = {k: want[k] for k, v in new.items() if k in want and v != want[k]}
        if wrong:
            self.widget._params = {**new, **wrong}

    def _on_pick(self, change) -> None:
        picked = [v.get("config_hash") for v in (change["new"].value or [])]
        if not picked:
            return
        df = self.store.frame()
        match = df.filter(pl.col("config_hash") == picked[0])
        if match.height:
            self.state.selected = match.to_dicts()[0]
