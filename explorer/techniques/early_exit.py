"""Early exit: each generated token leaves at the first layer confident enough.

The zoo was trained with a next-token loss at every layer through the shared
final norm and LM head (LayerSkip), so every layer predicts. `EarlyExit` reads
that prediction after each layer and stops the token there when the criterion
holds (CALM, Schuster et al. 2022). The saving is real: the layers above are
not run for that token; the keys and values they owe later tokens are filled
by CALM's state propagation (explorer/layerwise.py explains and times it).

The row carries the exit layer of every generated token (`exit_layers`: per
example, per token, end-of-sequence included) for the token x layer view, their
mean and histogram, and FLOPs per token counting exactly what ran.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from explorer.generate import Generation
from explorer.layerwise import CRITERIA, ExitingModel, ExitRule, ExitStats
from explorer.techniques.base import DECODES, Knob, Technique, technique
from explorer.cost import flops_per_token
from explorer.generate import generate, samplers


@dataclass
class ExitGeneration(Generation):
    exits: ExitStats | None = None  # every decoded token's exit layer, K/V fill time


@technique(
    "early_exit", roles=[DECODES], axis="flops_per_token_analytic", view="widgets.tokens:ExitMapView",
    knobs=[Knob("criterion", "exit when", "max_prob", options=CRITERIA),
           # Each criterion's threshold on its own scale: (low, high, default, step).
           Knob("threshold", "threshold", 0.9, scale_by="criterion",
                scales={"max_prob": (0.5, 1.0, 0.9, 0.01), "entropy": (0.0, 3.0, 0.5, 0.01),
                        "agreement": (1, 7, 2, 1)})],
    sweep=[{"threshold": [0.6, 0.9]}],
)
@dataclass(frozen=True)
class EarlyExit(Technique):
    """Leave at the first layer whose prediction meets `criterion` (never before `min_layers`).

    criterion  "max_prob": top-1 probability > threshold, threshold in [0, 1] (1 never exits);
               "entropy": entropy in nats < threshold, threshold >= 0 (0 never exits);
               "agreement": the top-1 token unchanged for `threshold` more layers, an integer >= 1.
    min_layers the earliest layer a token may leave at, 1..depth (checked against the model).
    temperature 0 decodes greedily; above 0 samples from the exit layer's prediction
               (the criterion always reads the untempered prediction).
    """

    name: ClassVar[str] = "early_exit"
    criterion: str = "max_prob"
    threshold: float = 0.9
    min_layers: int = 1
    temperature: float = 0.0

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise ValueError(f"EarlyExit.criterion={self.criterion!r}; valid: {', '.join(CRITERIA)}")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ValueError(f"EarlyExit.threshold={t!r}; must be a finite number")
        if self.criterion == "max_prob" and not 0 <= t <= 1:
            raise ValueError(f"EarlyExit.threshold={t!r} for criterion 'max_prob'; valid range is 0..1")
        if self.criterion == "entropy" and t < 0:
            raise ValueError(f"EarlyExit.threshold={t!r} for criterion 'entropy' (nats); valid range is >= 0")
        if self.criterion == "agreement" and (t < 1 or t != int(t)):
            raise ValueError(f"EarlyExit.threshold={t!r} for criterion 'agreement' (layers that must agree); "
                             "valid: an integer >= 1")
        m = self.min_layers
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"EarlyExit.min_layers={m!r}; valid: an integer from 1 to the model's depth")
        tp = self.temperature
        if isinstance(tp, bool) or not isinstance(tp, (int, float)) or not 0 <= tp < math.inf:
            raise ValueError(f"EarlyExit.temperature={tp!r}; valid range is >= 0 (0 is greedy)")

    def rule(self) -> ExitRule:
        return ExitRule(self.criterion, float(self.threshold), self.min_layers)

    def runner(self, model) -> ExitingModel:
        """The model wrapped to exit early; raises ValueError if min_layers exceeds its depth."""
        return ExitingModel(model.hf, self.rule(), model.tokenizer.eos_token_id)

    def prepare(self, model):
        self.runner(model)  # fail before any decoding: unsupported model or min_layers too deep
        return model

    def generate(self, model, prompts: list[str], *, max_new_tokens: int, seed: int):
        runner = self.runner(model)
        generator = samplers(seed, len(prompts)) if self.temperature > 0 else None  # one per prompt
        gen = generate(runner, model.tokenizer, prompts, max_new_tokens=max_new_tokens,
                       temperature=float(self.temperature), generator=generator)
        return ExitGeneration(**vars(gen), exits=runner.stats)

    def columns(self, model, generations: list) -> dict[str, Any]:
        exits = [row for g in generations for row in g.exits.per_row()]
        words = [token_strings(model.tokenizer, toks, len(e))
                 for g in generations for toks, e in zip(g.tokens, g.exits.per_row())]
        prompt = [p for g in generations for p in g.exits.prompt_tokens]
        config = model.hf.config
        depth = config.num_hidden_layers
        flat = [e for row in exits for e in row]
        n_tok = max(len(flat), 1)
        context = sum(prompt) / max(len(prompt), 1) + len(flat) / max(len(exits), 1) / 2
        cost = exit_flops(config, context, flat, self.rule().first_head())
        fill_s = sum(g.exits.kv_fill_s for g in generations)
        decode_s = sum(g.exits.decode_s for g in generations)
        return {
            "exit_layer_mean": sum(flat) / n_tok,
            "exit_layer_counts": [flat.count(k) for k in range(1, depth + 1)],  # tokens leaving at layer 1..depth
            "exit_layers": exits,
            "exit_tokens": words,  # the token each exit layer belongs to, for the token x layer view
            **cost,
            "flops_saving_analytic": 1 - cost["flops_per_token_analytic"] / cost["flops_per_token_full_analytic"],
            "kv_fill_s": fill_s,  # measured inside the first repeat's decoding
            "kv_fill_share": fill_s / decode_s if decode_s else 0.0,
        }


def token_strings(tokenizer, ids: list[int], n: int) -> list[str]:
    """Each generated token as text; the end-of-sequence token (decoded, not returned) is appended."""
    words = [tokenizer.decode([i]) for i in ids]
    return words + [tokenizer.eos_token or "<eos>"] * (n - len(words))


def exit_flops(config, context: float, exit_layers: list[int], first_head: int) -> dict[str, float]:
    """Analytic FLOPs per token counting what ran: layers to the exit, K/V fills above, every LM head read."""
    depth, d = config.num_hidden_layers, config.hidden_size
    n = max(len(exit_layers), 1)
    mean_exit = sum(exit_layers) / n if exit_layers else depth
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    kv_width = (config.num_key_value_heads or config.num_attention_heads) * head_dim
    fills = sum(depth - e for e in exit_layers) / n
    heads = sum(max(e - first_head + 1, 1) for e in exit_layers) / n if exit_layers else 1
    kv_fill = 2 * 2 * d * kv_width * fills  # K and V projections of every skipped layer
    extra_heads = 2 * d * config.vocab_size * (heads - 1)  # flops_per_token counts one head
    ran = flops_per_token(config, context, layers_run=mean_exit)
    return {"flops_per_token_analytic": ran + kv_fill + extra_heads,
            "flops_per_token_full_analytic": flops_per_token(config, context),
            "kv_fill_flops_per_token_analytic": kv_fill,
            "exit_head_flops_per_token_analytic": extra_heads}
