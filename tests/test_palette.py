"""One visual grammar: a model keeps its colour and a technique its shape, whatever else is on the chart."""
from __future__ import annotations

import subprocess
import sys

from explorer import palette, zoo


def test_zoo_models_take_okabe_ito_colours_in_order_of_size():
    assert [palette.model_color(m) for m in zoo.names()] == list(palette.OKABE_ITO[: len(zoo.names())])
    assert len(set(palette.OKABE_ITO)) == len(palette.OKABE_ITO)


def test_a_model_keeps_its_colour_whichever_models_share_the_chart():
    both = palette.color_scale(["zoo-l", "zoo-m"])
    alone = palette.color_scale(["zoo-m"])
    everyone = palette.color_scale(["zoo-m", "my-model", "zoo-xs", "zoo-l", "zoo-s"])
    colour = dict(zip(everyone["domain"], everyone["range"]))
    assert dict(zip(both["domain"], both["range"]))["zoo-m"] == alone["range"][0] == colour["zoo-m"]
    assert both["domain"] == ["zoo-m", "zoo-l"]  # legend smallest first, not A-Z or order of arrival
    assert everyone["domain"] == [*zoo.names(), "my-model"]
    assert colour["my-model"] not in [colour[m] for m in zoo.names()]
    assert palette.color_scale(["my-model"])["range"] == [colour["my-model"]]  # stable once seen


def test_models_outside_the_zoo_are_ordered_by_size_when_sizes_are_given():
    order = palette.model_order(["big-x", "zoo-s", "tiny-y"], sizes={"big-x": 3e8, "tiny-y": 1e6})
    assert order == ["zoo-s", "tiny-y", "big-x"]


def test_each_technique_keeps_one_shape_and_composites_get_their_own():
    names = ["baseline", "quantize", "early_exit", "speculative", "sampling", "self_speculative"]
    shapes = [palette.technique_shape(t) for t in names]
    assert len(set(shapes)) == len(shapes)
    combo = palette.technique_shape("quantize+sampling")
    assert combo not in shapes and combo == palette.technique_shape("quantize+sampling")
    scale = palette.shape_scale(["sampling", "quantize", "sampling"])
    assert scale == {"domain": ["sampling", "quantize"], "range": ["cross", "square"]}


def test_labels_read_as_words():
    assert palette.technique_label("early_exit+sampling") == "early exit + sampling"


def test_the_palette_imports_no_plotting_library():
    out = subprocess.run([sys.executable, "-c", "import sys, explorer.palette; "
                          "print(sorted(m for m in sys.modules if m.split('.')[0] in {'altair', 'ipywidgets', 'IPython'}))"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_the_lab_chart_speaks_the_grammar():
    from widgets.frontier import chart, rescaled

    spec = chart([], cost_axis="weight_bytes", models=["zoo-l", "zoo-m"], techniques=["quantize"]).to_dict()
    colors = [n["color"]["scale"] for n in _walk(spec) if isinstance(n.get("color"), dict) and "scale" in n["color"]]
    assert colors and all(c == palette.color_scale(["zoo-m", "zoo-l"]) for c in colors)
    # The clicked point alone gets the ring: an empty selection must not outline every point.
    strokes = [n["stroke"] for n in _walk(spec) if isinstance(n.get("stroke"), dict) and "condition" in n["stroke"]]
    assert strokes and strokes[0]["condition"]["empty"] is False
    # The budget is a dashed rule with its name written beside it, not red alone.
    assert any(n.get("type") == "rule" and n.get("strokeDash") for n in _walk(spec))
    assert any("'budget'" in str(n.get("word", "")) for n in _walk(spec) if "word" in n) or "'budget'" in str(spec)
    assert any(n.get("title") == "weights (MB)" for n in _walk(spec))
    # Adding a model later keeps zoo-m's colour.
    wider = rescaled(spec, ["zoo-xs", "zoo-m", "zoo-l"], ["quantize"])
    scale = next(n["color"]["scale"] for n in _walk(wider) if isinstance(n.get("color"), dict) and "scale" in n["color"])
    assert dict(zip(scale["domain"], scale["range"]))["zoo-m"] == palette.model_color("zoo-m")
