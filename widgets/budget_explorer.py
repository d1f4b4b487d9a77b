"""`BudgetExplorer`: what a fixed compute budget buys, over stored runs (nothing runs when it moves).

The budget notebook's explorer and its Voila app page (notebooks/app/budget.ipynb) are this one
widget: a judge (exact checker, majority vote, imperfect checker), a budget slider on analytic FLOPs
per problem, a card naming each model's best configuration within the budget, and the chart in the
one visual grammar (a model keeps its colour, a kind of configuration its technique's shape, the
budget is a labelled dashed rule). The card sits beside the chart, or below it when the page is
narrow, in a box of reserved height: its text changing length never moves the chart.
"""
from __future__ import annotations

import html
import math
import warnings

import altair as alt
import ipywidgets as w
import polars as pl

from explorer import palette
from explorer.frontier import best_under_budget
from explorer.frontier import points as frontier_points
from explorer.metrics import axis_title, fmt
from explorer.techniques import Baseline
from explorer.techniques.early_exit import EarlyExit
from explorer.techniques.sampling import Sampling

AGGREGATORS = {"pass": "pass@k (exact checker)", "majority": "majority vote (no checker)",
               "best_verifier": "best-of-k, imperfect checker"}
FLOPS = "flops_per_problem_analytic"  # the engine's column: its display name and number format
GREEDY, SAMPLES, EXITING = "greedy", "samples", palette.technique_label(EarlyExit.name)
KINDS = {GREEDY: Baseline.name, EXITING: EarlyExit.name, SAMPLES: Sampling.name}  # kind -> technique (its shape)

BUDGET_CSS = """<style>
.tx-budget-app .tx-budget-card { flex: 1 1 300px; max-width: 440px; min-height: 150px; padding-left: 8px; }
.tx-budget-app .tx-budget-chart { flex: 0 0 auto; }
.tx-budget-app .vega-embed { min-height: 420px; }
</style>"""


def points(rows: pl.DataFrame, aggregator: str = "pass") -> pl.DataFrame:
    """One point per configuration on the FLOPs-per-problem axis, from the engine's frontier points
    (explorer.frontier.points, which every chart draws from): a sampling row is read at each k <= n
    of its stored samples, judged by `aggregator`; nothing runs."""
    if aggregator not in AGGREGATORS:
        raise ValueError(f"aggregator={aggregator!r}; valid: {', '.join(AGGREGATORS)}")
    ks = list(range(1, int(rows["knob_n"].max() or 1) + 1)) if "knob_n" in rows.columns else [1]
    pts = frontier_points(rows, cost=FLOPS, filters={"k": ks, "aggregator": aggregator})
    technique = pl.col("technique")
    kind = (pl.when(technique == Sampling.name).then(pl.lit(SAMPLES))
            .when(technique == Baseline.name).then(pl.lit(GREEDY)).otherwise(pl.lit(EXITING)))
    k = pl.col("knob_k").fill_null(1).cast(pl.Int64) if "knob_k" in pts.columns else pl.lit(1, pl.Int64)
    threshold = pl.col("knob_threshold").cast(pl.String) if "knob_threshold" in pts.columns else pl.lit("")
    config = (pl.when(technique == Sampling.name)
              .then(k.cast(pl.String) + pl.when(k > 1).then(pl.lit(" samples")).otherwise(pl.lit(" sample")))
              .when(technique == Baseline.name).then(pl.lit(GREEDY))
              .otherwise(pl.lit(EXITING + " ") + threshold))
    return pts.select("model", config.alias("config"), kind.alias("kind"), k.alias("k"),
                      pl.col(FLOPS).alias("flops_per_problem"), "accuracy")


def best_per_model(rows: pl.DataFrame, aggregator: str, budget: float, kinds=(GREEDY, EXITING, SAMPLES)
                   ) -> pl.DataFrame:
    """Each model's best configuration within `budget` FLOPs per problem, best first."""
    pts = points(rows, aggregator).filter(pl.col("kind").is_in(list(kinds)))
    with warnings.catch_warnings():  # a model with nothing under the budget is simply left out
        warnings.simplefilter("ignore", UserWarning)
        best = [best_under_budget(pts.filter(pl.col("model") == m), budget=budget, cost="flops_per_problem")
                for m in pts["model"].unique(maintain_order=True)]
    best = [b for b in best if b is not None]
    return pl.DataFrame(best).sort("accuracy", descending=True) if best else pl.DataFrame()


def chart(pts: pl.DataFrame, budget: float, task: str) -> alt.LayerChart:
    """Accuracy per FLOPs per problem; what the budget cannot buy is dimmed in the browser (a param)."""
    pts = pts.with_columns(flops_text=pts["flops_per_problem"].map_elements(lambda v: fmt(FLOPS, v),
                                                                             return_dtype=pl.String))
    colors = palette.color_scale(pts["model"].unique().to_list())
    kinds = list(KINDS)
    base = alt.Chart(pts).transform_calculate(fits="datum.flops_per_problem <= budget")
    x = alt.X("flops_per_problem:Q", scale=alt.Scale(type="log"), title=axis_title(FLOPS), axis=alt.Axis(format="~s"))
    y = alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title=f"accuracy on {task}")
    color = alt.Color("model:N", scale=alt.Scale(**colors),
                      legend=alt.Legend(orient="bottom", direction="horizontal", symbolOpacity=1))
    lines = base.transform_filter(f"datum.kind == '{SAMPLES}'").mark_line(opacity=0.5).encode(
        x=x, y=y, color=color, order="k:Q")
    pick = alt.selection_point(name="pick", fields=["model", "config"], on="click", clear="dblclick")
    dots = base.mark_point(filled=True).encode(
        x=x, y=y, color=color,
        # The clicked point: larger, with the dark ring, as in the lab.
        size=alt.condition(pick, alt.value(palette.SELECTED_SIZE), alt.value(palette.POINT_SIZE), empty=False),
        stroke=alt.condition(pick, alt.value(palette.SELECTED), alt.value(None), empty=False),
        strokeWidth=alt.condition(pick, alt.value(2.5), alt.value(0), empty=False),
        shape=alt.Shape("kind:N", title="configuration", legend=alt.Legend(orient="bottom", direction="horizontal"),
                        scale=alt.Scale(domain=kinds, range=[palette.technique_shape(KINDS[k]) for k in kinds])),
        opacity=alt.condition("datum.fits", alt.value(1.0), alt.value(0.15)),
        tooltip=["model", alt.Tooltip("config", title="configuration"), alt.Tooltip("accuracy", format=".3f"),
                 alt.Tooltip("flops_text", title="FLOPs per problem")],
    ).add_params(pick)
    # The budget: a dashed rule with its name on it, not a colour alone.
    limit = alt.Chart(pl.DataFrame({"x": [0]})).transform_calculate(b="budget", word="'budget'")
    rule = limit.mark_rule(color=palette.BUDGET, strokeWidth=2, strokeDash=list(palette.BUDGET_DASH)).encode(
        x=alt.X("b:Q"))
    word = limit.mark_text(align="left", dx=4, dy=-6, color=palette.BUDGET, fontWeight="bold").encode(
        x="b:Q", y=alt.value(0), text="word:N")
    return alt.layer(lines, dots, rule, word).add_params(alt.param(name="budget", value=budget)).properties(
        width=480, height=300, title="accuracy per FLOPs per problem; dashed: the budget")


class BudgetExplorer(w.VBox):
    """`BudgetExplorer(rows, task="sort")`: the judge, the budget and the card over `rows` (a sweep's
    rows of greedy, early-exit and sampling runs). The budget starts at one greedy answer of
    `reference` and moves only when the user moves it."""

    def __init__(self, rows: pl.DataFrame, *, task: str, reference: str = "zoo-l", title: str | None = None):
        if rows.height == 0:
            raise ValueError("rows is empty; give the rows of a sweep (explorer.sweep) with greedy runs")
        self.rows, self.task, self.reference = rows, task, reference
        greedy = points(rows).filter(pl.col("kind") == GREEDY)
        ref = greedy.filter(pl.col("model") == reference)
        if ref.height != 1:
            raise ValueError(f"reference={reference!r} has {ref.height} greedy rows on {task}; valid: "
                             f"{', '.join(greedy['model'].to_list()) or 'none (no greedy run in rows)'}")
        self.reference_cost = ref["flops_per_problem"].item()
        costs = points(rows)["flops_per_problem"]
        alt.JupyterChart.enable_offline()  # Vega from the package, not a CDN: a workshop room may have no network
        self.budget = w.FloatLogSlider(value=self.reference_cost, min=math.log10(costs.min()) - 0.1,
                                       max=math.log10(costs.max()) + 0.1, step=0.05, description="budget",
                                       readout_format=".3s", continuous_update=False, layout=w.Layout(width="520px"))
        self.judge = w.ToggleButtons(options=[(label, key) for key, label in AGGREGATORS.items()], value="pass",
                                     description="judge", style={"button_width": "auto"})
        self.card = w.HTML(self.card_html(self.judge.value, self.budget.value))
        self.card.add_class("tx-budget-card")
        self.view = alt.JupyterChart(chart(points(rows, self.judge.value), self.budget.value, task),
                                     embed_options={"renderer": "svg", "actions": False})
        self.view.add_class("tx-budget-chart")
        self.budget.observe(self._on_budget, names="value")
        self.judge.observe(self._on_judge, names="value")
        heading = w.HTML(f"<h3>{html.escape(title)}</h3>") if title else None
        body = w.HBox([self.view, self.card], layout=w.Layout(flex_flow="row wrap", align_items="flex-start"))
        super().__init__([w.HTML(BUDGET_CSS), *([heading] if heading else []), self.judge, self.budget, body])
        self.add_class("tx-budget-app")

    def card_html(self, aggregator: str, budget: float) -> str:
        best = best_per_model(self.rows, aggregator, budget)
        esc = html.escape  # model and configuration names come from the store: never raw HTML
        share = f"({budget / self.reference_cost:.2g} x one {esc(self.reference)} answer)"
        if best.height == 0:
            return (f"<div class='budget-card'><b>{fmt(FLOPS, budget)} FLOPs per problem</b> {share} buys "
                    "nothing: the cheapest answer costs more.</div>")
        top = best.row(0, named=True)
        lines = "".join(f"<li>{esc(r['model'])}: {esc(r['config'])}, accuracy {r['accuracy']:.3f} "
                        f"({fmt(FLOPS, r['flops_per_problem'])} FLOPs)</li>" for r in best.iter_rows(named=True))
        return (f"<div class='budget-card'><b>{fmt(FLOPS, budget)} FLOPs per problem</b> {share}, judged by "
                f"{esc(AGGREGATORS[aggregator])}: best is <b>{esc(top['model'])} with {esc(top['config'])}</b> "
                f"({top['accuracy']:.3f}).<ul>{lines}</ul></div>")

    def _on_budget(self, change) -> None:
        self.view.params.budget = change["new"]  # a Vega param: the chart dims in the browser, no re-render
        self.card.value = self.card_html(self.judge.value, change["new"])

    def _on_judge(self, change) -> None:
        self.view.chart = chart(points(self.rows, change["new"]), self.budget.value, self.task)
        self.card.value = self.card_html(change["new"], self.budget.value)
