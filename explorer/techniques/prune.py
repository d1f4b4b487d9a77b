"""Prune: remove FFN channels, attention heads or whole layers; or mask weights to zero.

Two kinds of pruning, and the row says which it measured:

- **Structured** (`ffn`, `heads`, `layers`): the matrices really shrink. Each
  decoder layer keeps the same number of FFN channels and of attention heads
  (so the model's config still describes it: `intermediate_size`,
  `num_attention_heads`, `num_hidden_layers` are updated and the analytic FLOPs
  follow); every `nn.Linear` is rebuilt smaller. Its weight bytes and its decode
  time are measured, like any model's.
- **Masks** (`mask="unstructured"` at `sparsity`, or `mask="2:4"`): weights set
  to zero in place. Dense CPU kernels multiply the zeros anyway, so accuracy is
  real but time and bytes are not what a sparse kernel would give: the row
  carries `weight_bytes_sparse_analytic` (a bitmap of kept weights plus their
  values; 2:4: half the values and 2 bits of index per kept value, the format
  sparse tensor cores read) and `flops_per_token_sparse_analytic` (2 FLOPs per
  nonzero matmul weight, no attention term), both analytic and named so.

Scores decide what goes (`score`):

- `"magnitude"`: the weights alone (an FFN channel's gate row, up row and down
  column; a head's q/k/v rows and o columns; a layer's output projections;
  per weight |W|);
- `"wanda"`: activation-aware (Sun et al. 2024, "A Simple and Effective Pruning
  Approach for LLMs"): |W| times the norm of the input it multiplies, from a
  calibration batch of the task (`calibration` examples, seeded apart from any
  evaluation: prompt plus reference answer). Removing FFN channel j deletes
  h_j w_j^T from the layer's output, whose norm is exactly ||h_j|| ||w_j||: that
  is its score. A head's score is ||X_head|| ||W_o[:, head]||. A whole layer's is
  its block influence, 1 - cos(input, output) (Men et al. 2024, ShortGPT).
  Unstructured and 2:4 masks compare weights within each output row, as Wanda does.

Models: Llama-style decoders (`model.layers[i].mlp.{gate,up,down}_proj`,
`self_attn.{q,k,v,o}_proj`): the zoo, SmolLM2, Qwen2, Mistral. Heads are pruned
by whole key/value groups, so grouped-query attention stays consistent.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, ClassVar

from explorer.techniques.base import CHANGES_WEIGHTS, Knob, Technique, technique
from explorer.cost import flops_per_token
from explorer.models import facts_of

SCORES = ("magnitude", "wanda")
MASKS = ("none", "unstructured", "2:4")
CALIBRATION_SEED = 1_000_003  # calibration problems are never the evaluation's (seeds 0, 1, ...)
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def fraction(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 <= x < 1


@technique(
    "prune", roles=[CHANGES_WEIGHTS], axis="weight_bytes",
    knobs=[Knob("ffn", "FFN pruned", 0.0, range=(0.0, 0.9), step=0.05, unit="of channels"),
           Knob("heads", "heads pruned", 0.0, range=(0.0, 0.9), step=0.05, unit="of heads"),
           Knob("layers", "layers removed", 0, range=(0, 7), step=1, unit="layers"),
           Knob("mask", "mask", "none", options=MASKS),
           Knob("sparsity", "mask sparsity", 0.0, range=(0.0, 0.9), step=0.05, unit="of weights"),
           Knob("score", "scores", "wanda", options=SCORES)],
    sweep=[{"ffn": [0.25, 0.5]}, {"mask": "2:4"}],
    order=-1,  # prune, then quantize what is left (APQ's order)
)
@dataclasses.dataclass(frozen=True)
class Prune(Technique):
    """Structured pruning (FFN channels, heads, layers) that shrinks the matrices, or sparsity masks.

    ffn        fraction of each layer's FFN channels removed, 0 <= ffn < 1
    heads      fraction of each layer's attention heads removed (whole key/value groups; one always stays)
    layers     whole decoder layers removed, 0 <= layers < depth (checked against the model)
    mask       "none", "unstructured" (the lowest `sparsity` of each row's weights zeroed) or "2:4"
               (two of every four consecutive weights of a row zeroed: sparsity 0.5)
    sparsity   fraction of weights masked, for mask="unstructured"
    score      "magnitude" or "wanda" (activation-aware, from `calibration` examples of the task)
    """

    name: ClassVar[str] = "prune"
    ffn: float = 0.0
    heads: float = 0.0
    layers: int = 0
    mask: str = "none"
    sparsity: float = 0.0
    score: str = "wanda"
    calibration: int = 32

    def __post_init__(self):
        for field in ("ffn", "heads"):
            if not fraction(getattr(self, field)):
                raise ValueError(f"Prune.{field}={getattr(self, field)!r}; valid: a fraction 0 <= {field} < 1 "
                                 f"(0.5 removes half of each layer's {'FFN channels' if field == 'ffn' else 'heads'})")
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 0:
            raise ValueError(f"Prune.layers={self.layers!r}; valid: an integer >= 0 (whole layers removed), "
                             "below the model's depth")
        if self.mask not in MASKS:
            raise ValueError(f"Prune.mask={self.mask!r}; valid: {', '.join(map(repr, MASKS))}")
        if not fraction(self.sparsity):
            raise ValueError(f"Prune.sparsity={self.sparsity!r}; valid: a fraction 0 <= sparsity < 1")
        if self.mask == "none" and self.sparsity:
            raise ValueError(f"Prune.sparsity={self.sparsity!r} with mask='none'; sparsity is for "
                             "mask='unstructured' (or use ffn=, heads= for structured pruning)")
        if self.mask == "2:4":
            if self.sparsity not in (0, 0.5):
                raise ValueError(f"Prune.sparsity={self.sparsity!r} with mask='2:4'; 2:4 keeps two of every "
                                 "four weights, sparsity 0.5 (leave sparsity at 0 or 0.5)")
            object.__setattr__(self, "sparsity", 0.5)  # the row records the sparsity that ran
        if self.score not in SCORES:
            raise ValueError(f"Prune.score={self.score!r}; valid: {', '.join(map(repr, SCORES))}")
        c = self.calibration
        if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= 1024:
            raise ValueError(f"Prune.calibration={c!r}; valid: an integer 1..1024 (examples of the task)")

    @property
    def structured(self) -> bool:
        return bool(self.ffn or self.heads or self.layers)

    @property
    def label(self) -> str:
        parts = [f"ffn{self.ffn:g}" * bool(self.ffn), f"heads{self.heads:g}" * bool(self.heads),
                 f"layers-{self.layers}" * bool(self.layers),
                 (f"{self.mask}{self.sparsity:g}" if self.mask == "unstructured" else self.mask) * (self.mask != "none")]
        return "prune-" + "-".join(p for p in parts if p) + f"-{self.score}" if any(parts) else "prune-none"

    # ----- applying it -----------------------------------------------------------------

    def prepare(self, model):
        """Prune without a task: magnitude scores only (Wanda needs a calibration batch)."""
        if self.score == "wanda" and self.needs_scores:
            raise ValueError("Prune(score='wanda') calibrates on a task: run it with explorer.run(model, task, "
                             "...), call prepare_for(model, task), or use score='magnitude'")
        return self.apply(model, None)

    def prepare_for(self, model, task):
        texts = calibration_texts(task, self.calibration) if self.score == "wanda" and self.needs_scores else None
        return self.apply(model, texts)

    @property
    def needs_scores(self) -> bool:
        return self.structured or self.mask != "none"

    def apply(self, model, texts: list[str] | None):
        """A new pruned `Model` (`model` is untouched); `texts` calibrate Wanda scores."""
        import torch


        blocks = decoder_layers(model.hf)
        depth = len(blocks)
        if self.layers >= depth:
            raise ValueError(f"Prune.layers={self.layers} for {model.name}, which has {depth} layers; "
                             f"valid: 0..{depth - 1}")
        if not self.needs_scores:
            return model
        if "quantize" in model.tags:
            raise ValueError(f"model {model.name!r} is quantized; prune the full-precision model, then quantize "
                             "(compose(Prune(...), Quantize(...)) does it in that order)")
        hf = copy.deepcopy(model.hf)
        stats = calibrate(hf, model.tokenizer, texts) if texts is not None else None
        with torch.no_grad():
            removed = self.drop_layers(hf, stats) if self.layers else []
            if self.ffn:
                self.prune_ffn(hf, stats, removed)
            if self.heads:
                self.prune_heads(hf, stats, removed)
            masked = self.apply_mask(hf, stats, removed) if self.mask != "none" else None
        hf.eval()
        facts = facts_of(hf, f"{model.facts.name}+{self.label}", model.facts.source,
                         f"{model.facts.revision}+{self.label}")
        info = {"label": self.label, "layers_removed": removed, "masked": masked,
                "dense_weight_bytes": model.facts.weight_bytes}
        return type(model)(hf, model.tokenizer, facts, {**model.tags, "prune": info})

    def drop_layers(self, hf, stats) -> list[int]:
        """Remove the `layers` least important decoder layers; returns their original indices."""
        import torch

        blocks = decoder_layers(hf)
        if stats is not None:
            importance = [stats["influence"][i] for i in range(len(blocks))]
        else:  # magnitude: what the layer writes into the residual stream
            importance = [float(b.self_attn.o_proj.weight.norm() + b.mlp.down_proj.weight.norm()) for b in blocks]
        order = sorted(range(len(blocks)), key=lambda i: importance[i])
        removed = sorted(order[: self.layers])
        kept = [b for i, b in enumerate(blocks) if i not in removed]
        for new, b in enumerate(kept):  # the KV cache is indexed by layer_idx
            b.self_attn.layer_idx = new
            if hasattr(b, "layer_idx"):
                b.layer_idx = new
        hf.model.layers = torch.nn.ModuleList(kept)
        c = hf.config
        if isinstance(getattr(c, "layer_types", None), list):
            c.layer_types = [t for i, t in enumerate(c.layer_types) if i not in removed]
        c.num_hidden_layers = len(kept)
        return removed

    def prune_ffn(self, hf, stats, removed: list[int]) -> None:
        blocks = decoder_layers(hf)
        size = blocks[0].mlp.down_proj.in_features
        keep_n = max(1, size - round(self.ffn * size))
        originals = [i for i in range(len(blocks) + len(removed)) if i not in removed]
        for block, orig in zip(blocks, originals):
            mlp = block.mlp
            wd = mlp.down_proj.weight
            if stats is not None:  # ||h_j|| ||W_down[:, j]||: the norm of what removing channel j deletes
                score = stats["inputs"][f"{orig}.mlp.down_proj"].sqrt() * wd.norm(dim=0)
            else:
                score = (mlp.gate_proj.weight.pow(2).sum(1) + mlp.up_proj.weight.pow(2).sum(1)
                         + wd.pow(2).sum(0)).sqrt()
            keep = score.topk(keep_n).indices.sort().values
            mlp.gate_proj = shrink(mlp.gate_proj, rows=keep)
            mlp.up_proj = shrink(mlp.up_proj, rows=keep)
            mlp.down_proj = shrink(mlp.down_proj, cols=keep)
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = keep_n
        hf.config.intermediate_size = keep_n

    def prune_heads(self, hf, stats, removed: list[int]) -> None:
        import torch

        c = hf.config
        blocks = decoder_layers(hf)
        heads = c.num_attention_heads
        kv = getattr(c, "num_key_value_heads", None) or heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
        group = heads // kv
        keep_groups = max(1, kv - round(self.heads * kv))
        originals = [i for i in range(len(blocks) + len(removed)) if i not in removed]
        for block, orig in zip(blocks, originals):
            attn = block.self_attn
            wo = attn.o_proj.weight  # (hidden, heads * head_dim)
            per_head_w = wo.reshape(wo.shape[0], heads, head_dim).pow(2).sum((0, 2))  # ||W_o[:, head]||^2
            if stats is not None:
                x = stats["inputs"][f"{orig}.self_attn.o_proj"].reshape(heads, head_dim).sum(1)  # ||X_head||^2
                per_head = (x * per_head_w).sqrt()
            else:
                qkv = [attn.q_proj.weight.reshape(heads, head_dim, -1).pow(2).sum((1, 2))]
                kv_w = (attn.k_proj.weight.reshape(kv, head_dim, -1).pow(2).sum((1, 2))
                        + attn.v_proj.weight.reshape(kv, head_dim, -1).pow(2).sum((1, 2)))
                qkv.append(kv_w.repeat_interleave(group))
                per_head = (per_head_w + sum(qkv)).sqrt()
            groups = per_head.reshape(kv, group).sum(1)
            keep = groups.topk(keep_groups).indices.sort().values
            q_heads = (keep[:, None] * group + torch.arange(group)).reshape(-1)
            q_rows = (q_heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
            kv_rows = (keep[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
            attn.q_proj = shrink(attn.q_proj, rows=q_rows)
            attn.k_proj = shrink(attn.k_proj, rows=kv_rows)
            attn.v_proj = shrink(attn.v_proj, rows=kv_rows)
            attn.o_proj = shrink(attn.o_proj, cols=q_rows)
        c.head_dim = head_dim  # explicit: hidden_size // heads no longer gives it
        c.num_attention_heads = keep_groups * group
        c.num_key_value_heads = keep_groups

    def apply_mask(self, hf, stats, removed: list[int]) -> dict[str, int]:
        """Zero weights of every decoder linear layer; returns the counts for the analytic costs."""
        blocks = decoder_layers(hf)
        originals = [i for i in range(len(blocks) + len(removed)) if i not in removed]
        total = zeros = 0
        for block, orig in zip(blocks, originals):
            for name in LINEARS:
                lin = block.get_submodule(name)
                w = lin.weight
                score = w.abs()
                if stats is not None and not (self.ffn or self.heads):
                    score = score * stats["inputs"][f"{orig}.{name}"].sqrt()[None, :]
                elif stats is not None:  # the calibration saw the unpruned shapes: rescore by magnitude
                    score = w.abs()
                keep = two_four(score) if self.mask == "2:4" else top_per_row(score, 1 - self.sparsity)
                w.mul_(keep)
                total += w.numel()
                zeros += int((w == 0).sum())
        return {"weights": total, "zeros": zeros}

    # ----- what the row carries ---------------------------------------------------------

    def variant_columns(self, model) -> dict[str, Any]:
        info = model.tags.get("prune")
        if info is None:
            return {}
        c = model.hf.config
        out: dict[str, Any] = {
            "prune_ffn_channels": c.intermediate_size, "prune_heads": c.num_attention_heads,
            "prune_layers": c.num_hidden_layers, "prune_layers_removed": list(info["layers_removed"]),
            "weight_bytes_dense": info["dense_weight_bytes"],
        }
        masked = info["masked"]
        if masked:
            kept = masked["weights"] - masked["zeros"]
            value_bytes = next(model.hf.parameters()).element_size()
            if self.mask == "2:4":  # the 2:4 compressed format: the kept half, 2 bits of index each
                stored = kept * value_bytes + kept * 2 / 8
            else:  # a bitmap of kept positions and the kept values
                stored = kept * value_bytes + masked["weights"] / 8
            out |= {
                "sparsity_measured": masked["zeros"] / masked["weights"],
                "weight_bytes_sparse_analytic": model.facts.weight_bytes - masked["weights"] * value_bytes + stored,
                "flops_per_token_sparse_analytic": flops_per_token(c, 0) - 2 * masked["zeros"],
            }
        return out


def decoder_layers(hf) -> list:
    """The decoder layers of a Llama-style model (refuses any other, naming what it supports)."""
    layers = getattr(getattr(hf, "model", None), "layers", None)
    if layers is None or not all(hasattr(b, "mlp") and hasattr(b, "self_attn") for b in layers):
        raise ValueError(f"Prune supports Llama-style decoders (model.layers[i].mlp / .self_attn: the zoo, "
                         f"SmolLM2, Qwen2, Mistral); {type(hf).__name__} is not one")
    for name in LINEARS:
        if not hasattr(layers[0].get_submodule(name.split(".")[0]), name.split(".")[1]):
            raise ValueError(f"Prune: {type(hf).__name__} has no {name}; it supports Llama-style decoders")
    return list(layers)


def shrink(lin, rows=None, cols=None):
    """A new, smaller nn.Linear holding the kept rows (outputs) and columns (inputs) of `lin`."""
    import torch

    w = lin.weight
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    bias = lin.bias[rows] if lin.bias is not None and rows is not None else lin.bias
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=w.dtype, device=w.device)
    new.weight.copy_(w)
    if bias is not None:
        new.bias.copy_(bias)
    return new


def top_per_row(score, keep: float):
    """A 0/1 mask keeping the `keep` fraction of highest scores of each row."""
    import torch

    k = max(1, round(keep * score.shape[1]))
    idx = score.topk(k, dim=1).indices
    return torch.zeros_like(score).scatter_(1, idx, 1.0)


def two_four(score):
    """A 0/1 mask keeping the two highest of every four consecutive weights of a row."""
    import torch

    rows, cols = score.shape
    if cols % 4:
        raise ValueError(f"Prune(mask='2:4'): a layer has {cols} inputs, not a multiple of 4")
    groups = score.reshape(rows, cols // 4, 4)
    idx = groups.topk(2, dim=2).indices
    return torch.zeros_like(groups).scatter_(2, idx, 1.0).reshape(rows, cols)


def calibration_texts(task, n: int) -> list[str]:
    """`n` texts of the task for Wanda's activation statistics, never the evaluation's problems."""
    if task.kind == "likelihood":
        text = task.text()[-2000:]  # the passage's tail: a run scores its first n characters
        return [text[i : i + 128] for i in range(0, len(text), 128)][:n]
    return [e.prompt + e.answer for e in task.examples(n, seed=CALIBRATION_SEED)]


def calibrate(hf, tokenizer, texts: list[str]) -> dict[str, Any]:
    """Per decoder layer: the summed squared input of every linear layer's columns, and each
    layer's block influence (1 - mean cosine between its input and output hidden states)."""
    import torch

    blocks = decoder_layers(hf)
    inputs: dict[str, torch.Tensor] = {}
    influence = [0.0] * len(blocks)
    count = [0]
    hooks = []

    def linear_hook(key):
        def hook(_mod, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            inputs[key] = inputs.get(key, 0) + x.pow(2).sum(0)
        return hook

    def block_hook(i):
        def hook(_mod, args, kwargs, out):
            x = (args[0] if args else kwargs["hidden_states"]).detach().float()
            y = (out[0] if isinstance(out, tuple) else out).detach().float()
            cos = torch.nn.functional.cosine_similarity(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), dim=-1)
            influence[i] += float((1 - cos).sum())
            if i == 0:
                count[0] += cos.numel()
        return hook

    for i, b in enumerate(blocks):
        hooks.append(b.register_forward_hook(block_hook(i), with_kwargs=True))
        for name in LINEARS:
            hooks.append(b.get_submodule(name).register_forward_pre_hook(linear_hook(f"{i}.{name}")))
    context = getattr(hf.config, "max_position_embeddings", None) or 2048
    try:
        with torch.inference_mode():
            for text in texts:  # one at a time: no padding in the statistics
                ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=context)["input_ids"]
                ids = ids.to(next(hf.parameters()).device)
                hf(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return {"inputs": inputs, "influence": [v / max(count[0], 1) for v in influence]}
