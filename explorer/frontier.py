"""Pareto frontiers and the budget question, over any pair of columns of a results frame.

Lower cost is better; a quality's direction comes from `explorer.metrics`
(bits per char: lower is better), or `maximize=True/False` overrides it. A point is on the
frontier when no other point is at least as good on both axes and strictly
better on one; exact ties all stay on.

Intervals travel with every point: `<quality>_lo` / `<quality>_hi` (the Wilson
or bootstrap bounds `explorer.run` writes). A dominated point whose interval
overlaps that of a frontier point at no greater cost is marked not
distinguishable: the evaluation cannot tell it from the frontier (Madaan et al.
2024, "Quantifying Variance in Evaluation Benchmarks").
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import polars as pl

from explorer.metrics import axis_title, higher_is_better, metric
from explorer.stats import problems_needed

FRONTIER, INDISTINGUISHABLE, DOMINATED = "frontier", "not distinguishable", "dominated"
KEEP = ("frontier", "all")


def frontier(df: pl.DataFrame, *, cost: str = "flops_per_token_analytic", quality: str = "accuracy",
             by: str | Sequence[str] | None = None, maximize: bool | None = None, keep: str = "frontier",
             lo: str | None = None, hi: str | None = None) -> pl.DataFrame:
    """The Pareto frontier of `df` (per group of `by` columns when given), sorted by cost.

    Every returned row carries `on_frontier`, `distinguishable` (False for a
    dominated point whose interval overlaps the frontier's), `frontier_status`
    ("frontier", "not distinguishable" or "dominated") and `<quality>_lo/_hi`
    (taken from `lo=`/`hi=` columns, else `<quality>_lo/_hi`, else the point
    itself). `keep="frontier"` returns the frontier rows only; `keep="all"` every
    row that has both values, which is what a chart draws. Rows missing the cost
    or the quality are left out.
    """
    if keep not in KEEP:
        raise ValueError(f"keep={keep!r}; valid: {', '.join(map(repr, KEEP))}")
    maximize = direction(quality, maximize)
    by = [by] if isinstance(by, str) else list(by or [])
    lo, hi = lo or f"{quality}_lo", hi or f"{quality}_hi"
    df = with_derived(df, [cost, quality])
    check_columns(df, [cost, quality, *by], "frontier")
    df = usable(df, cost, quality)
    df = df.with_columns(
        (pl.col(lo).cast(pl.Float64) if lo in df.columns else pl.col(quality).cast(pl.Float64)).alias(lo),
        (pl.col(hi).cast(pl.Float64) if hi in df.columns else pl.col(quality).cast(pl.Float64)).alias(hi),
    )
    groups = df.partition_by(by, maintain_order=True) if by and df.height else [df]
    out = pl.concat([mark(g, cost, quality, lo, hi, maximize) for g in groups], how="vertical_relaxed")
    out = out.sort([*by, cost, quality], descending=[False] * len(by) + [False, maximize], maintain_order=True)
    return out.filter(pl.col("on_frontier")) if keep == "frontier" else out


def mark(g: pl.DataFrame, cost: str, quality: str, lo: str, hi: str, maximize: bool) -> pl.DataFrame:
    """Add the frontier columns to one group."""
    c = g[cost].cast(pl.Float64).to_numpy()
    sign = 1.0 if maximize else -1.0
    q = sign * g[quality].cast(pl.Float64).to_numpy()
    # In "higher is better" terms: the worst and best plausible quality of each point.
    bound_lo = (g[lo] if maximize else -g[hi]).fill_null(np.nan).to_numpy()
    bound_hi = (g[hi] if maximize else -g[lo]).fill_null(np.nan).to_numpy()
    bound_lo = np.where(np.isnan(bound_lo), q, bound_lo)
    bound_hi = np.where(np.isnan(bound_hi), q, bound_hi)

    order = np.lexsort((-q, c))  # by cost, best quality first within a cost
    breaks = np.flatnonzero(np.diff(c[order])) + 1
    levels = np.split(order, breaks) if len(order) else []  # points of equal cost, cheapest level first
    on = np.zeros(len(c), dtype=bool)
    best_cheaper = -math.inf  # best quality among strictly cheaper points
    for level in levels:
        top = q[level[0]]
        if top > best_cheaper:
            on[level[q[level] == top]] = True
        best_cheaper = max(best_cheaper, top)

    # A dominated point is clearly worse only if some frontier point at no greater
    # cost has its worst plausible quality above this point's best plausible quality.
    distinguishable = on.copy()
    frontier_floor = -math.inf
    for level in levels:
        frontier_floor = max([frontier_floor, *bound_lo[level[on[level]]]])
        off = level[~on[level]]
        distinguishable[off] = frontier_floor > bound_hi[off]

    status = [FRONTIER if o else DOMINATED if d else INDISTINGUISHABLE for o, d in zip(on, distinguishable)]
    return g.with_columns(pl.Series("on_frontier", on), pl.Series("distinguishable", distinguishable),
                          pl.Series("frontier_status", status, dtype=pl.String),
                          pl.Series("problems_to_decide", to_decide(c, q, on, distinguishable, maximize),
                                    dtype=pl.Int64))


def to_decide(c: np.ndarray, q: np.ndarray, on: np.ndarray, distinguishable: np.ndarray,
              maximize: bool) -> list[int | None]:
    """For a not-distinguishable point on an accuracy (a proportion, higher is better): problems per
    configuration that would tell it from the best frontier point at no greater cost
    (`explorer.stats.problems_needed`, power 0.8, alpha 0.05). None elsewhere."""
    out: list[int | None] = [None] * len(c)
    if not maximize or not len(q) or q.min() < 0 or q.max() > 1:
        return out
    for i in np.flatnonzero(~distinguishable):
        rivals = q[on & (c <= c[i])]
        if rivals.size and 0 < q[i] < 1 and rivals.max() > q[i]:
            out[i] = problems_needed(rivals.max() - q[i], q[i])
    return out


def best_under_budget(df: pl.DataFrame, *, budget: float, cost: str = "flops_per_token_analytic",
                      quality: str = "accuracy", maximize: bool | None = None) -> dict[str, Any] | None:
    """The best row whose cost is at most `budget` (ties: the cheaper), or None when nothing fits.

    Best by the quality's own direction (`explorer.metrics.higher_is_better`: bits per char
    is better lower), unless `maximize=` says otherwise.

    A budget at exactly a row's cost fits. NaN, negative or non-numeric budgets
    raise ValueError. When nothing fits, a warning says what the cheapest row costs.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise ValueError(f"budget={budget!r}; give a number >= 0 in units of {cost!r}")
    if math.isnan(budget) or budget < 0:
        raise ValueError(f"budget={budget!r}; a budget is a number >= 0 in units of {cost!r} (not NaN)")
    maximize = direction(quality, maximize)
    df = with_derived(df, [cost, quality])
    check_columns(df, [cost, quality], "best_under_budget")
    rows = usable(df, cost, quality)
    fits = rows.filter(pl.col(cost).cast(pl.Float64) <= budget)
    if fits.height == 0:
        cheapest = rows[cost].min() if rows.height else None
        why = f"the cheapest of {rows.height} rows costs {cheapest:.4g}" if rows.height else "there are no rows"
        warnings.warn(f"best_under_budget: nothing fits budget={budget:.4g} {cost}; {why}", stacklevel=2)
        return None
    best = fits.sort([quality, cost], descending=[maximize, False], maintain_order=True)
    return best.row(0, named=True)


# Costs derived from any row's own columns, so every technique is priced on one axis. Per token
# hides what repeated sampling spends, so the budget question is asked per problem:
# generated tokens per problem (all samples of it) times the analytic FLOPs of each.
DERIVED = {
    "flops_per_problem_analytic":
        pl.col("flops_per_token_analytic") * pl.col("tokens_generated") / pl.col("n_examples"),
}


def direction(quality: str, maximize: bool | None) -> bool:
    """Whether higher `quality` is better: `maximize` when given, else the metric's own direction."""
    if maximize is None:
        return higher_is_better(quality)
    if not isinstance(maximize, bool):
        raise ValueError(f"maximize={maximize!r}; give True, False, or None for the quality's own direction")
    return maximize


def with_derived(df: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """`df` plus any of `columns` that is a derived cost it lacks and can compute."""
    add = [DERIVED[c].alias(c) for c in columns if c in DERIVED and c not in df.columns
           and all(n in df.columns for n in DERIVED[c].meta.root_names())]
    return df.with_columns(add) if add else df


def usable(df: pl.DataFrame, cost: str, quality: str) -> pl.DataFrame:
    """Rows with a finite cost and quality (a failed or foreign row has nulls there)."""
    finite = [pl.col(c).cast(pl.Float64).is_not_null() & pl.col(c).cast(pl.Float64).is_finite() for c in (cost, quality)]
    return df.filter(finite[0] & finite[1])


def check_columns(df: pl.DataFrame, columns: list[str], who: str) -> None:
    if not isinstance(df, pl.DataFrame):
        raise ValueError(f"{who}: df={type(df).__name__}; give a polars DataFrame such as Store.frame() returns")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{who}: no column {', '.join(map(repr, missing))}; columns: {', '.join(df.columns)}")
    for c in columns[:2]:
        if not df.schema[c].is_numeric():
            raise ValueError(f"{who}: column {c!r} is {df.schema[c]}, not numeric")



def read_at(df: pl.DataFrame, filters: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """`df` with each technique's rows re-read at the filter values it declares (no run).

    A technique whose rows can be read again at another setting declares filters and a
    `read_at` hook (Sampling: `k`, any k <= the n samples it drew). `filters` maps filter
    names to values; a technique none of whose filters is given is left as stored.
    A filter given as a list reads every row at each value (a sampling row at k = 1, 2, 4, ...:
    one point per k, as a budget chart draws them); rows the filter leaves alone appear once.
    """
    import itertools

    from explorer.techniques import declarations

    for d in declarations():
        given = {f.field: filters[f.name] for f in d.filters if filters and f.name in filters}
        if d.read_at is None or not given or not df.height:
            continue
        lists = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in given.items()}
        combos = [dict(zip(lists, c)) for c in itertools.product(*lists.values())]
        parts = [d.read_at(df, **c) for c in combos]
        if len(parts) > 1:
            key = ["config_hash", *[f"knob_{k}" for k in lists if f"knob_{k}" in df.columns]]
            df = pl.concat(parts, how="diagonal_relaxed").unique(subset=key, keep="first", maintain_order=True)
        else:
            df = parts[0]
    return df


def points(df: pl.DataFrame, *, cost: str | Sequence[str] = "flops_per_problem_analytic",
           quality: str = "accuracy", by: str | Sequence[str] | None = None, maximize: bool | None = None,
           filters: Mapping[str, Any] | None = None, keep: str = "all") -> pl.DataFrame:
    """The points every chart draws: the one place a frontier chart's data is computed.

    Rows re-read at `filters` (each technique's read-at hook, e.g. {"k": 4}), derived costs
    added, rows without the quality dropped, then each point's frontier status. With one
    `cost` column: `frontier(..., keep=keep)` (columns `on_frontier`, `frontier_status`).
    With several: one row per run and a `status_<cost>` column for each cost the rows have
    (the lab's chart switches axes in the browser). `maximize=None` takes the quality's
    direction from explorer.metrics (bits per char: lower is better).
    """
    maximize = higher_is_better(quality) if maximize is None else maximize
    df = read_at(df, filters)
    if isinstance(cost, str):
        return frontier(df, cost=cost, quality=quality, by=by, maximize=maximize, keep=keep)
    costs = list(cost)
    if df.height == 0 or quality not in df.columns:
        return pl.DataFrame()
    df = with_derived(df.filter(pl.col(quality).is_not_null()), costs)
    out = df = df.with_row_index("_point")  # one key per point (a run read at several k is several points)
    for axis in costs:
        if axis not in df.columns or df[axis].is_null().all() or not df.schema[axis].is_numeric():
            continue
        marked = frontier(df.select([c for c in ("_point", axis, quality, f"{quality}_lo", f"{quality}_hi", *(
            [by] if isinstance(by, str) else list(by or []))) if c in df.columns]),
            cost=axis, quality=quality, by=by, maximize=maximize, keep="all")
        extra = [pl.col("problems_to_decide").alias(f"problems_to_decide_{axis}")] \
            if "problems_to_decide" in marked.columns else []
        out = out.join(marked.select("_point", pl.col("frontier_status").alias(f"status_{axis}"), *extra),
                       on="_point", how="left")
    return out.sort("_point").drop("_point")


def chart(df: pl.DataFrame, *, cost: str = "flops_per_token_analytic", quality: str = "accuracy",
          by: str | None = None, maximize: bool | None = None, color: str = "model",
          filters: Mapping[str, Any] | None = None):
    """An altair chart of `points(...)`: every point with its interval, the frontier as a step
    line, one panel per `by`; axis titles and units from explorer.metrics.

    altair is imported here, not at module import: the engine must run without it.
    """
    import altair as alt

    pts = points(df, cost=cost, quality=quality, by=by, maximize=maximize, filters=filters, keep="all")
    lo, hi = f"{quality}_lo", f"{quality}_hi"
    wanted = ["model", "task", "technique", color, by, cost, quality, lo, hi, "frontier_status", "on_frontier"]
    data = pts.select([c for c in dict.fromkeys(wanted) if c and c in pts.columns])
    # The one visual grammar (explorer.palette): a model keeps its colour and a technique its shape in
    # every chart; the frontier status shows as opacity and in the tooltip.
    from explorer import palette

    if color == "model" and "model" in data.columns:
        color_enc = alt.Color("model:N", scale=alt.Scale(**palette.color_scale(data["model"].to_list())))
    elif color in data.columns:
        color_enc = alt.Color(f"{color}:N")
    else:
        color_enc = alt.value(palette.OKABE_ITO[0])
    shape_enc = (alt.Shape("technique:N", scale=alt.Scale(**palette.shape_scale(data["technique"].to_list())))
                 if "technique" in data.columns else alt.value("circle"))
    # The axis in the unit its title names (MB, not bytes): the column scaled by its metric.
    shown = f"{cost} ({metric(cost).unit})" if metric(cost).unit else cost
    if shown != cost:
        data = data.with_columns((pl.col(cost) * metric(cost).scale).alias(shown))
    x = alt.X(f"{shown}:Q", scale=alt.Scale(type="log"), title=axis_title(cost),
              axis=alt.Axis(format="~g" if metric(cost).unit else "~s"))
    bars = alt.Chart().mark_rule(opacity=0.4).encode(x=x, y=alt.Y(f"{lo}:Q", title=axis_title(quality)), y2=f"{hi}:Q",
                                                     color=color_enc)
    # The tooltip in words and rounded numbers: "accuracy 0.836", not "accuracy_lo: 0.8359375".
    names = {"model": ("model", None), "task": ("task", None), "technique": ("technique", None),
             quality: (axis_title(quality), ".3f"), lo: ("95% interval from", ".3f"), hi: ("95% interval to", ".3f"),
             shown: (axis_title(cost), ".3~g" if metric(cost).unit else ".3~s"), "frontier_status": ("frontier", None)}
    tips = [alt.Tooltip(c, title=t, **({"format": f} if f else {})) for c, (t, f) in names.items() if c in data.columns]
    dots = alt.Chart().mark_point(filled=True, size=60).encode(
        x=x, y=f"{quality}:Q", color=color_enc, tooltip=tips, shape=shape_enc,
        opacity=alt.Opacity("frontier_status:N", title="frontier",
                            scale=alt.Scale(domain=[FRONTIER, INDISTINGUISHABLE, DOMINATED], range=[1.0, 0.6, 0.25])))
    line = alt.Chart().mark_line(color="black", interpolate="step-after").encode(x=x, y=f"{quality}:Q") \
        .transform_filter("datum.on_frontier")
    layered = alt.layer(bars, dots, line, data=data).properties(width=420, height=300)
    return layered.facet(column=f"{by}:N") if by else layered.properties(
        title=f"{axis_title(quality)} vs {axis_title(cost)}")
