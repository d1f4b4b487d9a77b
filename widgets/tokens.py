"""Technique views as anywidgets: each ES module sits beside its Python class.

They hold no data of their own beyond what they draw: a caller (the lab, or a
notebook) sets their traits from a run, and the front end redraws on change.
"""
from __future__ import annotations

import pathlib

import anywidget
import traitlets as t

HERE = pathlib.Path(__file__).parent


class SpecStreamView(anywidget.AnyWidget):
    """Speculative decoding, one target call at a time: drafted tokens kept (green),
    rejected (red, struck through) and the token the target added itself (blue)."""

    _esm = HERE / "spec_stream.js"
    _css = HERE / "views.css"
    calls = t.List(t.Dict()).tag(sync=True)  # [{"accepted": [str], "rejected": [str], "bonus": str}]
    title = t.Unicode("").tag(sync=True)

    @classmethod
    def from_row(cls, row: dict) -> "SpecStreamView":
        """The first prompt's token stream of a `Speculative` row, as stored (no re-run)."""
        calls = [{"accepted": list(c["accepted"]), "rejected": list(c["rejected"]), "bonus": c["bonus"]}
                 for c in row["spec_trace"]]
        return cls(calls=calls, title=f"{row['model']} checking drafts of {row.get('knob_draft')} "
                                      f"(draft length {row.get('knob_draft_len')}) on {row.get('task')}, problem 1:")


class ExitMapView(anywidget.AnyWidget):
    """Early exit, token by layer: each column is a generated token, filled up to the
    layer where it left."""

    _esm = HERE / "exit_map.js"
    _css = HERE / "views.css"
    tokens = t.List(t.Unicode()).tag(sync=True)
    exit_layers = t.List(t.Int()).tag(sync=True)  # 1-based layer each token left at
    n_layers = t.Int(1).tag(sync=True)
    title = t.Unicode("").tag(sync=True)

    @classmethod
    def from_row(cls, row: dict, example: int | None = None) -> "ExitMapView":
        """The token x layer map of one example of an `EarlyExit` row (no re-run). By default the
        problem with the most generated tokens: long enough to see which tokens leave early."""
        layers = row["exit_layers"]
        if example is None:
            # Longest first; among equally long ones (all addition answers are 7 tokens), the one whose
            # tokens leave at the most different layers: the pattern a class should see.
            example = max(range(len(layers)), key=lambda i: (len(layers[i]), len(set(layers[i])), -i)) if len(layers) else 0
        config = (f"{row['model']}, early exit when {row.get('knob_criterion')} passes {row.get('knob_threshold')}"
                  f" on {row.get('task')}, problem {example + 1} of {row.get('n_examples')}:")
        return cls(tokens=list(row["exit_tokens"][example]), exit_layers=list(layers[example]),
                   n_layers=int(row["model_layers"]), title=config)


class CurveView(anywidget.AnyWidget):
    """Quality over sample count k (pass@k, majority@k, best-of-k), with the slider's k marked."""

    _esm = HERE / "curves.js"
    _css = HERE / "views.css"
    curves = t.Dict().tag(sync=True)  # {"pass@k": [[k, value], ...], ...}
    k = t.Int(1).tag(sync=True)
    title = t.Unicode("").tag(sync=True)

    @classmethod
    def from_row(cls, row: dict, k: int = 1) -> "CurveView":
        """Every aggregator's curve over k from a `Sampling` row's stored samples (no generation)."""
        from explorer.techniques.sampling import curves

        frame = curves(row)
        series = {c.removesuffix("_at_k").replace("_", " ") + "@k": [[int(a), float(b)] for a, b in zip(frame["k"], frame[c])]
                  for c in frame.columns if c.endswith("_at_k")}
        return cls(curves=series, k=k, title=f"{row['model']} on {row['task']}, {row.get('knob_n')} samples")
