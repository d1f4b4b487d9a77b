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
from explorer.metrics import COST_AXES, axis_title

DATA = "rows"
QUALITY = "accuracy"
NO_LIMIT = None  # JSON has no infinity: a null budget means no limit


def records(df: pl.DataFrame, quality: str = QUALITY, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Chart rows: one per run, with every cost axis and the frontier status on each axis,
    from `explorer.frontier.points` (rows re-read at the filters, e.g. k)."""
    if df.height == 0 or quality not in df.columns:
        return []
    df = points(df, cost=COST_AXES, quality=quality, filters=filters)
    if df.height == 0:
        return []
    keep = ["config_hash", "model", "technique", "label", quality, f"{quality}_lo", f"{quality}_hi",
            *[c for c in COST_AXES if c in df.columns], *[f"status_{c}" for c in COST_AXES]]
    df = df.with_columns(label=label_expr(df))
    for axis in COST_AXES:  # the "not distinguishable" mark says how many problems per configuration would decide it
        if f"problems_to_decide_{axis}" in df.columns:
            n = pl.col(f"problems_to_decide_{axis}")
            decide = pl.lit("not distinguishable: about ") + n.cast(pl.String) + pl.lit(" problems each would decide")
            df = df.with_columns(pl.when(n.is_not_null()).then(decide).otherwise(pl.col(f"status_{axis}"))
                                 .alias(f"status_{axis}"))
    return df.select([c for c in keep if c in df.columns]).to_dicts()


def label_expr(df: pl.DataFrame) -> pl.Series:
    knobs = sorted(c for c in df.columns if c.startswith("knob_"))
    parts = [pl.col("model"), pl.col("technique")]
    for k in knobs:
        parts.append(pl.when(pl.col(k).is_not_null()).then(pl.lit(k[5:] + "=") + pl.col(k).cast(pl.String))
                     .otherwise(pl.lit("")))
    return df.select(pl.concat_str(parts, separator=" ").str.replace_all(r"\s+", " ").alias("label"))["label"]


def chart(rows: list[dict[str, Any]], *, budget: float = math.inf, cost_axis: str = "weight_bytes",
          quality: str = QUALITY) -> alt.LayerChart:
    budget_p = alt.param(name="budget", value=None if math.isinf(budget) else budget)
    axis_p = alt.param(name="cost_axis", value=cost_axis)
    pick = alt.selection_point(name="pick", fields=["config_hash"], on="click", clear="dblclick")
    axes = list(dict.fromkeys([*COST_AXES, cost_axis]))  # every axis: rows arriving later may have any of them
    base = (
        alt.Chart(alt.NamedData(name=DATA))
        .transform_fold(axes, as_=["cost_name", "cost"])
        .transform_filter("datum.cost_name == cost_axis && isValid(datum.cost) && datum.cost > 0")
        .transform_calculate(status="datum['status_' + cost_axis]",
                             fits="budget == null || datum.cost <= budget")
    )
    x = alt.X("cost:Q", scale=alt.Scale(type="log"), title="cost (the selected cost axis)")
    y = alt.Y(f"{quality}:Q", scale=alt.Scale(domain=[0, 1]), title=axis_title(quality))
    bars = base.mark_rule(opacity=0.5).encode(x=x, y=f"{quality}_lo:Q", y2=f"{quality}_hi:Q",
                                               color=alt.Color("model:N"))
    points = base.mark_point(filled=True, size=70).encode(
        x=x, y=y, color=alt.Color("model:N", title="model"), shape=alt.Shape("technique:N"),
        opacity=alt.condition("datum.fits", alt.value(1.0), alt.value(0.15)),
        stroke=alt.condition(pick, alt.value("black"), alt.value(None)),
        tooltip=["label:N", f"{quality}:Q", f"{quality}_lo:Q", f"{quality}_hi:Q", "cost:Q", "status:N"],
    ).add_params(pick)
    line = base.transform_filter("datum.status == 'frontier'").mark_line(
        interpolate="step-after", color="#444", strokeDash=[4, 3]).encode(x=x, y=y)
    rule = base.transform_filter("budget != null").transform_aggregate(n="count()").transform_calculate(
        b="budget").mark_rule(color="#d62728", strokeWidth=2).encode(x="b:Q")
    title = alt.Title(text="best accuracy per cost: the Pareto frontier",
                      subtitle="cost axis and budget are live params; dashed: frontier")
    return alt.layer(bars, points, line, rule, title=title).add_params(budget_p, axis_p).properties(
        width=430, height=280, datasets={DATA: rows}).configure_legend(orient="bottom", columns=4)


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
            chart(self.rows(store.frame()), budget=state.budget, cost_axis=state.cost_axis, quality=quality),
            embed_options={"renderer": "svg", "actions": False})
        self._spec = self.widget.spec
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

    def params(self) -> dict[str, Any]:
        b = self.state.budget
        return {"budget": None if math.isinf(b) else b, "cost_axis": self.state.cost_axis}

    def refresh(self, df: pl.DataFrame | None = None) -> None:
        """New rows into the chart on screen: same chart object, new data."""
        rows = self.shown = self.rows(self.store.frame() if df is None else df)
        self.widget.spec = with_rows(self._spec, rows, self.params())
        self.updates += 1

    def _on_filter(self, change) -> None:
        # A param change filters in the browser: no re-render, no run.
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
