"""One visual grammar for every chart: the lab, the budget explorer, the notebooks and the CLI.

- Each model keeps one colour wherever it appears. The zoo's models take Okabe and Ito's
  colour-blind-safe palette (Okabe & Ito 2008, *Color Universal Design*) in order of size, so the
  legend reads smallest to largest and zoo-m is the same green in every chart; any other model takes
  the next free colour, kept for the rest of the process (so two charts in one kernel agree).
- Each technique keeps one shape (a technique class may declare its own `marker`), so no meaning is
  carried by colour alone: the model is also named in the label and the tooltip.
- The selected point is drawn larger with a dark ring; other points keep no outline, so their colour
  shows.
- The budget is a dashed rule with a text label, not a red line alone.

This module returns plain values (hex strings, Vega shape names, {"domain", "range"} dicts); it
imports no plotting library, so the engine still runs without altair. The chart builders feed the
dicts to `alt.Scale(**...)`.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping

# Okabe-Ito, reordered so that neighbours in size differ in hue AND lightness (read under simulated
# deuteranopia, the blue/orange/green/purple run stays four distinct greys). Black is kept out of the
# model palette: it is the selection ring.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999")
ZOO = ("zoo-xs", "zoo-s", "zoo-m", "zoo-l")  # smallest first; explorer.zoo.names() is the source of truth
SELECTED = "#000000"  # the clicked point's ring
BUDGET = "#444444"  # the budget rule: dashed, labelled "budget", not a colour alone
BUDGET_DASH = (6, 4)
FRONTIER_DASH = (2, 2)
POINT_SIZE, SELECTED_SIZE = 80, 260

# Vega shape names. Single techniques first, then what composites draw from.
SHAPES = {
    "baseline": "circle",
    "quantize": "square",
    "early_exit": "triangle-up",
    "speculative": "diamond",
    "sampling": "cross",
    "self_speculative": "triangle-down",
    "prune": "triangle-right",
}
SPARE_SHAPES = ("triangle-left", "wedge", "stroke", "arrow")

_others: dict[str, str] = {}  # models outside the zoo, in order of first sight in this process


def _zoo_names() -> tuple[str, ...]:
    try:
        from explorer import zoo

        return tuple(zoo.names())
    except Exception:  # noqa: BLE001 - a broken zoo install must not stop a chart from drawing
        return ZOO


def model_order(models: Iterable[str], sizes: Mapping[str, float] | None = None) -> list[str]:
    """The models smallest first: the zoo in its order, then others by `sizes` (params) if given,
    else in order of first appearance. Duplicates are dropped."""
    zoo = _zoo_names()
    seen = list(dict.fromkeys(m for m in models if m is not None))
    ours = [m for m in zoo if m in seen]
    rest = [m for m in seen if m not in zoo]
    if sizes:
        rest.sort(key=lambda m: (sizes.get(m) is None, sizes.get(m) or 0.0))
    return ours + rest


def model_color(model: str) -> str:
    """This model's colour, the same in every chart of this process."""
    zoo = _zoo_names()
    if model in zoo:
        return OKABE_ITO[zoo.index(model) % len(OKABE_ITO)]
    if model not in _others:
        free = [c for c in OKABE_ITO[len(zoo):]] or list(OKABE_ITO)
        _others[model] = free[len(_others) % len(free)]
    return _others[model]


def technique_shape(technique: str) -> str:
    """This technique's Vega shape. A registered technique class may declare `marker`; a composite
    ("quantize+sampling") takes a spare shape chosen by a stable hash of its name."""
    declared = _declared_marker(technique)
    if declared:
        return declared
    if technique in SHAPES:
        return SHAPES[technique]
    return SPARE_SHAPES[zlib.crc32(technique.encode()) % len(SPARE_SHAPES)]


def _declared_marker(technique: str) -> str | None:
    if "+" in technique:
        return None
    try:
        from explorer.techniques import techniques

        cls = techniques.get(technique)
    except Exception:  # noqa: BLE001 - unknown names fall back to the table
        return None
    return getattr(cls, "marker", None)


def color_scale(models: Iterable[str], sizes: Mapping[str, float] | None = None) -> dict[str, list[str]]:
    """{"domain", "range"} for a model colour encoding: legend smallest first, fixed colours."""
    domain = model_order(models, sizes)
    return {"domain": domain, "range": [model_color(m) for m in domain]}


def shape_scale(techniques: Iterable[str]) -> dict[str, list[str]]:
    """{"domain", "range"} for a technique shape encoding."""
    domain = list(dict.fromkeys(t for t in techniques if t is not None))
    return {"domain": domain, "range": [technique_shape(t) for t in domain]}


def technique_label(technique: str) -> str:
    """What a person reads in a legend: "early exit", "quantize + sampling"."""
    return " + ".join(part.replace("_", " ") for part in technique.split("+"))
