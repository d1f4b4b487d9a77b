"""What each result column means to a person: its name, unit, scale and direction.

One table, read by the frontier (which way is better), the CLI and the charts
(axis titles with units, rounded numbers a person reads). A column missing from
the table still works: `metric()` guesses from its name and says nothing it
does not know (no unit). Add a row here rather than special-casing a column
elsewhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Kind = Literal["quality", "cost", "other"]


@dataclass(frozen=True)
class Metric:
    column: str
    label: str  # what a person calls it: "weights", "FLOPs per token"
    unit: str = ""  # the unit after `scale` is applied: "MB", "ms"
    scale: float = 1.0  # shown value = stored value * scale
    higher_is_better: bool = True
    kind: Kind = "other"
    analytic: bool = False  # computed from shapes, not measured

    @property
    def title(self) -> str:
        """Axis title: "weights (MB)", "FLOPs per token (analytic)"."""
        notes = [n for n in (self.unit, "analytic" if self.analytic else "") if n]
        return f"{self.label} ({', '.join(notes)})" if notes else self.label

    def format(self, value: float | int | None) -> str:
        """A rounded value with its unit: "14.3 MB", "0.836", "2.54e+06 FLOPs"."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        if isinstance(value, float) and math.isinf(value):
            return "no limit" if self.kind == "cost" else "inf"
        shown = float(value) * self.scale
        text = number(shown)
        return f"{text} {self.unit}" if self.unit else text


def number(x: float) -> str:
    """Three significant figures: "0.836", "14.3", "2.54M" (k/M/G/T from a million up), "1.2e-05"."""
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e6:
        digits = max(0, 2 - int(math.floor(math.log10(abs(x)))))
        text = f"{x:,.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    for power, suffix in ((12, "T"), (9, "G"), (6, "M")):
        if abs(x) >= 10**power and abs(x) < 1e15:
            return f"{x / 10**power:.3g}{suffix}"
    return f"{x:.3g}"


def _cost(column: str, label: str, unit: str = "", scale: float = 1.0, analytic: bool = False) -> Metric:
    return Metric(column, label, unit, scale, higher_is_better=False, kind="cost", analytic=analytic)


def _quality(column: str, label: str, unit: str = "", higher_is_better: bool = True) -> Metric:
    return Metric(column, label, unit, 1.0, higher_is_better=higher_is_better, kind="quality")


TABLE: dict[str, Metric] = {m.column: m for m in [
    # costs, in the order the lab offers them as axes
    _cost("weight_bytes", "weights", "MB", 1e-6),
    _cost("flops_per_token_analytic", "FLOPs per token", analytic=True),
    _cost("flops_per_problem_analytic", "FLOPs per problem", analytic=True),
    _cost("bytes_moved_per_problem_analytic", "bytes moved per problem", "MB", 1e-6, analytic=True),
    _cost("wall_s_per_token", "time per token", "ms", 1e3),
    _cost("wall_s", "time for the run", "s"),
    # more costs
    _cost("bit_flops_per_token_analytic", "bit-FLOPs per token", analytic=True),
    _cost("flops_per_token_full_analytic", "FLOPs per token at full depth", analytic=True),
    _cost("tokens_generated", "tokens generated"),
    _cost("bytes_moved_per_token_analytic", "bytes moved per token", "MB", 1e-6, analytic=True),
    _cost("wall_s_target_alone", "time for the target alone", "s"),
    _cost("bits_per_weight", "bits per weight", "bits"),
    _cost("cost_ratio_measured", "draft / target cost per call (measured)", "x"),
    _cost("verify_cost_ratio_measured", "verify / one-token call cost (measured)", "x"),
    _cost("exit_layer_mean", "mean exit layer", "layers"),
    _cost("kv_fill_share", "share of decode time filling skipped layers' K/V"),
    _cost("target_calls", "target calls"),
    _cost("draft_calls", "draft calls"),
    _cost("target_positions", "positions the target ran"),
    _cost("draft_positions", "positions the draft ran"),
    _cost("samples_drawn", "samples drawn"),
    _cost("generate_calls", "generate calls"),
    # qualities
    _quality("accuracy", "accuracy"),
    _quality("sample_accuracy", "accuracy of one sample"),
    _quality("bits_per_char", "bits per character", higher_is_better=False),
    _quality("heldout_bits_per_char", "held-out bits per character", higher_is_better=False),
    _quality("kl_vs_full_nats", "KL to full precision", "nats", higher_is_better=False),
    _quality("top1_agreement_vs_full", "top-1 agreement with full precision"),
    _quality("acceptance_rate", "draft acceptance rate"),
    _quality("speedup_measured", "measured speed-up", "x"),
    _quality("speedup_predicted", "predicted speed-up", "x"),
    _quality("tokens_per_target_call", "tokens per target call"),
    _quality("speedup_predicted_from_counts", "speed-up predicted from the counts", "x"),
    _quality("accuracy_target_alone", "accuracy of the target alone"),
    # a saving is better higher, though it is computed from costs
    Metric("flops_saving_analytic", "FLOPs saved", "", 1.0, higher_is_better=True, kind="quality", analytic=True),
]}

# The cost axes a lab or a chart offers, in this order.
COST_AXES: tuple[str, ...] = ("weight_bytes", "flops_per_token_analytic", "flops_per_problem_analytic",
                              "bytes_moved_per_problem_analytic", "wall_s_per_token", "wall_s")

_COST_SUFFIXES = ("_bytes", "_s", "_analytic", "_per_token", "_per_problem", "flops")
_LOWER_BETTER_QUALITIES = ("bits_per_char", "perplexity", "loss", "_nats", "error")


def metric(column: str) -> Metric:
    """The column's entry; a column the table lacks gets a guess from its name, with no unit."""
    if column in TABLE:
        return TABLE[column]
    base = column[:-3] if column.endswith(("_lo", "_hi")) else column
    if base != column and base in TABLE:
        m = TABLE[base]
        return Metric(column, f"{m.label} ({column[-2:]} bound)", m.unit, m.scale, m.higher_is_better, m.kind,
                      m.analytic)
    label = column.replace("_", " ")
    if column.startswith("tokens_generated_at_"):  # what k samples per problem generate (Sampling rows)
        return Metric(column, label, higher_is_better=False, kind="cost")
    if column.endswith(_COST_SUFFIXES) or "flops" in column:
        return Metric(column, label, higher_is_better=False, kind="cost", analytic=column.endswith("_analytic"))
    lower = any(s in column for s in _LOWER_BETTER_QUALITIES)
    return Metric(column, label, higher_is_better=not lower, kind="quality")


def higher_is_better(column: str) -> bool:
    return metric(column).higher_is_better


def axis_title(column: str) -> str:
    return metric(column).title


def fmt(column: str, value: float | int | None) -> str:
    return metric(column).format(value)
