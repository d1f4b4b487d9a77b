"""Quantize: integer and floating-point weight formats from 2 to 16 bits.

`Quantize(bits=4, group_size=32).apply(model)` returns a new model whose weights
are on the 4-bit grid; the original is untouched. Accuracy is simulated (rounded
onto the grid, dequantized to float32) unless a real kernel for the format runs
on this CPU: bf16 (16-bit fp e8m7), int8-dynamic (8-bit symmetric int, one
scale per output channel) and int4-weight-only (4-bit int, symmetric or not,
groups of 32, 64, 128 or 256 columns: torch's CPU int4 matmul, bfloat16
activations; Linears it cannot take, and untied embeddings, stay simulated:
`kernel_linears` on the model's tags counts those it runs). The row's `kernel` column says which ran, and
`wall_s_is_kernel` says whether `wall_s` is that kernel's latency (True) or the
float32 time of a simulation (False), which says nothing about low-bit speed.

Bytes are counted from the format, not from the float32 simulation: codes packed
at `bits` bits, a float16 scale per group and, for asymmetric int, a zero point
per group at `bits` bits; every weight left unquantized (norms, kept embeddings or
LM head) at its own dtype.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, ClassVar

from explorer import quant_kernels as K
from explorer.techniques.base import CHANGES_WEIGHTS, Knob, Technique, technique
from explorer.cost import flops_per_token, matmul_params
from explorer.tasks import heldout_text

FORMATS = ("int", "fp")
KERNELS = ("auto", "simulated", "int8-dynamic")
INT_BITS = (2, 16)


@technique(
    "quantize", roles=[CHANGES_WEIGHTS], axis="weight_bytes",
    knobs=[Knob("bits", "bits", 8, range=(2, 16), step=1, options=(2, 3, 4, 5, 6, 8, 16), unit="bits"),
           Knob("format", "format", "int", options=FORMATS),
           Knob("group_size", "group size", None, unit="weights per scale",
                options=(("per channel", None), ("32", 32), ("64", 64), ("128", 128)))],
    sweep=[{"bits": [2, 4, 8]}],
)
@dataclasses.dataclass(frozen=True)
class Quantize(Technique):
    """Weight quantization. `bits`: 2..16 for int; 3..8 and 16 for fp.

    group_size: None gives one scale per output channel (per row of a weight);
    an integer gives one scale per that many consecutive input columns, and must
    divide the model's width (checked by `apply`, which knows the model).
    fp_format: 'eXmY' (None picks the default for `bits`: e2m1 at 4, e4m3 at 8,
    e8m7 = bf16 at 16); 'e5m2' is the other 8-bit choice. `embeddings` and
    `lm_head`: whether the token embedding table and the output head are
    quantized too (False keeps them at full precision, as GPTQ does).
    kernel: 'auto' runs a real kernel where one exists here (int8 and int4
    weight-only, bf16), else simulates; 'simulated' always simulates;
    'int8-dynamic' runs torch's W8A8 kernel, which rounds activations to 8 bits
    as well (fast, but a real LLM's activation outliers do not survive it).
    """

    name: ClassVar[str] = "quantize"

    bits: int = 8
    format: str = "int"
    group_size: int | None = None
    symmetric: bool = True
    fp_format: str | None = None
    embeddings: bool = True
    lm_head: bool = True
    kernel: str = "auto"

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"Quantize.format={self.format!r}; valid: {', '.join(map(repr, FORMATS))}")
        self._check_bits()
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size < 2):
            raise ValueError(f"Quantize.group_size={self.group_size!r}; valid: None (one scale per output "
                             "channel) or an integer >= 2 that divides the model's width, e.g. 32, 64, 128")
        for flag in ("symmetric", "embeddings", "lm_head"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"Quantize.{flag}={getattr(self, flag)!r}; valid: True or False")
        if self.kernel not in KERNELS:
            raise ValueError(f"Quantize.kernel={self.kernel!r}; valid: {', '.join(map(repr, KERNELS))}")
        if self.kernel == "int8-dynamic" and not (self.format == "int" and self.bits == 8 and self.symmetric
                                                  and self.group_size is None):
            raise ValueError("Quantize.kernel='int8-dynamic' runs symmetric per-channel 8-bit int only "
                             "(bits=8, format='int', group_size=None); use kernel='auto' or 'simulated'")
        if self.format == "int":
            if self.fp_format is not None:
                raise ValueError(f"Quantize.fp_format={self.fp_format!r} applies to format='fp' only; "
                                 "leave it None for format='int'")
            return
        if not self.symmetric:
            raise ValueError("Quantize.symmetric=False; float formats carry a sign bit and are symmetric, "
                             "so format='fp' needs symmetric=True")
        fmt = K.float_format(self.fp_format or K.DEFAULT_FP[self.bits], self.bits)
        if fmt.name in K.CAST_FORMATS and self.group_size is not None:
            raise ValueError(f"Quantize.group_size={self.group_size!r} with fp_format={fmt.name!r}: 16-bit "
                             "floats are plain casts with no scale; use group_size=None")
        object.__setattr__(self, "fp_format", fmt.name)  # the row records the format that ran

    def _check_bits(self):
        bits = self.bits
        if self.format == "int":
            if isinstance(bits, bool) or not isinstance(bits, int) or not INT_BITS[0] <= bits <= INT_BITS[1]:
                raise ValueError(f"Quantize.bits={bits!r}; valid range for format='int' is "
                                 f"{INT_BITS[0]}..{INT_BITS[1]} (an integer)")
        elif isinstance(bits, bool) or bits not in K.FP_BITS:
            raise ValueError(f"Quantize.bits={bits!r}; valid for format='fp': "
                             f"{', '.join(map(str, K.FP_BITS))} (3..8 and 16)")

    # ----- what the knobs mean -------------------------------------------------------

    @property
    def grid(self) -> K.Grid:
        if self.format == "int":
            return K.Grid("int", self.bits, self.symmetric)
        fmt = K.float_format(self.fp_format, self.bits)
        return K.Grid("cast" if fmt.name in K.CAST_FORMATS else "fp", self.bits, True, fmt)

    @property
    def resolved_kernel(self) -> str:
        """'bf16', 'int8-dynamic', 'int4-weight-only' or 'simulated': what `apply` will run."""
        if self.kernel == "simulated":
            return "simulated"
        if self.format == "fp" and self.fp_format == "e8m7":
            return "bf16"
        if self.format == "int" and self.bits == 8 and self.symmetric and self.group_size is None:
            # Weight-only by default: it computes what the simulation computes. W8A8 ('int8-dynamic')
            # also rounds activations, which a real LLM's outlier channels do not survive.
            if self.kernel == "int8-dynamic" or not K.int8_weight_only_runs():
                return "int8-dynamic"
            return "int8-weight-only"
        if self.format == "int" and self.bits == 4 and self.group_size in K.INT4_GROUPS and K.int4_kernel_runs():
            return "int4-weight-only"
        return "simulated"

    @property
    def label(self) -> str:
        fmt = f"int{self.bits}" + ("" if self.symmetric else "-asym") if self.format == "int" else \
            f"fp{self.bits}-{self.fp_format}"
        kept = "".join(s for s, on in (("-keepemb", not self.embeddings), ("-keephead", not self.lm_head),
                                       ("-sim", self.kernel == "simulated"),
                                       ("-w8a8", self.kernel == "int8-dynamic")) if on)
        return f"{fmt}-{'pc' if self.group_size is None else f'g{self.group_size}'}{kept}"

    # ----- the technique hooks ---------------------------------------------------------

    def prepare(self, model):
        return self.apply(model)

    def apply(self, model):
        """A new quantized `Model`; `model` is left untouched."""
        import torch

        if "quantize" in model.tags:
            raise ValueError(f"model {model.name!r} is already quantized ({model.tags['quantize']['label']}); "
                             "apply Quantize to the full-precision model")
        self.check_model(model)
        hf = copy.deepcopy(model.hf)
        kernel, grid = self.resolved_kernel, self.grid
        layouts, weight_bits = {}, {}
        with torch.no_grad():
            for name, mod in self.covered(hf):
                deq, layouts[name] = K.quantize_weight(mod.weight, grid, self.group_size)
                weight_bits[name] = self.bits
                if kernel == "int8-dynamic" and isinstance(mod, torch.nn.Linear):
                    parent, _, child = name.rpartition(".")
                    setattr(hf.get_submodule(parent), child, K.Int8DynamicLinear(mod, deq))
                elif kernel == "int8-weight-only" and type(mod) is torch.nn.Linear:
                    parent, _, child = name.rpartition(".")
                    setattr(hf.get_submodule(parent), child, K.Int8WeightOnlyLinear(mod, deq))
                elif kernel == "int4-weight-only" and K.int4_fits(mod, self.group_size):
                    parent, _, child = name.rpartition(".")
                    setattr(hf.get_submodule(parent), child,
                            K.Int4WeightOnlyLinear(mod, deq, self.symmetric, self.group_size))
                else:
                    mod.weight.copy_(deq)
            head = hf.get_output_embeddings()
            tied = type(head) is torch.nn.Linear and head.weight is hf.get_input_embeddings().weight and self.lm_head
            # A head tied to the (quantized) embeddings: the same codes, through the kernel too.
            if tied and kernel == "int4-weight-only" and K.int4_fits(head, self.group_size):
                hf.set_output_embeddings(K.Int4WeightOnlyLinear(head, head.weight.detach(), self.symmetric,
                                                                self.group_size))
            elif tied and kernel == "int8-dynamic":
                hf.set_output_embeddings(K.Int8DynamicLinear(head, head.weight.detach()))
            elif tied and kernel == "int8-weight-only":
                hf.set_output_embeddings(K.Int8WeightOnlyLinear(head, head.weight.detach()))
            if kernel == "bf16":
                # By weight, not name: a head tied to the embeddings is covered under the embeddings' name.
                cast = {id(m.weight) for n, m in named_weighted(hf) if n in layouts}
                K.cast_bf16_(hf, [m for n, m in named_weighted(hf) if id(m.weight) not in cast])
        hf.eval()
        weight_bytes = sum(lay.nbytes for lay in layouts.values()) + other_bytes(hf, layouts)
        quantized = sum(lay.numel for lay in layouts.values())
        on_kernel = sum(isinstance(m, (K.Int8DynamicLinear, K.Int8WeightOnlyLinear, K.Int4WeightOnlyLinear))
                        for m in hf.modules())
        info = {"label": self.label, "knobs": self.knobs(), "kernel": kernel, "layouts": layouts,
                "kernel_linears": on_kernel,  # Linears the kernel runs; other quantized weights are simulated
                "weight_bits": weight_bits, "quantized_params": quantized,
                "bits_per_weight": 8 * sum(lay.nbytes for lay in layouts.values()) / max(quantized, 1)}
        facts = dataclasses.replace(model.facts, name=f"{model.facts.name}+{self.label}",
                                    dtype=self.label, weight_bytes=weight_bytes,
                                    revision=f"{model.facts.revision}+{self.label}")
        # The full-precision model rides along (a reference, not a copy) for KL and top-1 agreement.
        tags = {**model.tags, "quantize": info, "full_precision": model}
        return type(model)(hf, model.tokenizer, facts, tags)

    def check_model(self, model) -> None:
        emb, head = model.hf.get_input_embeddings(), model.hf.get_output_embeddings()
        if head is not None and head.weight is emb.weight and self.embeddings != self.lm_head:
            raise ValueError(f"model {model.name!r} ties its LM head to its embeddings; "
                             f"set embeddings and lm_head alike (got {self.embeddings} and {self.lm_head})")
        width = model.facts.width
        if self.group_size is not None and width % self.group_size:
            valid = [g for g in range(2, width + 1) if width % g == 0]
            raise ValueError(f"Quantize.group_size={self.group_size} does not divide the width {width} of "
                             f"{model.name!r}; valid: None (per channel) or one of {valid}")

    def covered(self, hf) -> list[tuple[str, Any]]:
        """(name, module) of every weight this config quantizes; a tied weight once."""
        emb, head = hf.get_input_embeddings(), hf.get_output_embeddings()
        out, seen = [], set()
        for name, mod in named_weighted(hf):
            if (mod is emb and not self.embeddings) or (mod is head and not self.lm_head):
                continue
            if mod.weight.dim() == 2 and id(mod.weight) not in seen:
                seen.add(id(mod.weight))
                out.append((name, mod))
        return out

    def variant_columns(self, model) -> dict[str, Any]:
        info = model.tags["quantize"]
        return {"kernel": info["kernel"], "wall_s_is_kernel": info["kernel"] != "simulated",
                "bits_per_weight": info["bits_per_weight"], "quantized_params": info["quantized_params"],
                "bit_flops_per_token_analytic": bit_flops_per_token(model),
                **fidelity(model, model.tags["full_precision"])}


def named_weighted(hf):
    """(name, module) of the modules holding a matmul or lookup weight."""
    import torch

    return [(n, m) for n, m in hf.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]


def other_bytes(hf, layouts: dict) -> int:
    """Bytes of every parameter not quantized, at its own dtype (norms, kept modules, biases)."""
    covered = {f"{n}.weight" for n in layouts}
    seen, total = set(), 0
    for name, p in hf.named_parameters(remove_duplicate=False):
        if id(p) in seen or name in covered:
            seen.add(id(p))
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


def quantized_weights(model) -> dict[str, Any]:
    """{module name: float32 weight} of every quantized weight (each module's `.weight`, on its grid)."""
    return {name: model.hf.get_submodule(name).weight.detach().float() for name in model.tags["quantize"]["layouts"]}


def levels_per_group(weight, layout: K.Layout) -> int:
    """The largest number of distinct values in any group of `weight`."""
    w = weight.detach().float()
    most = 0
    for piece in w.split(layout.group_size, dim=1):
        ordered = piece.sort(dim=1).values
        most = max(most, int((ordered.diff(dim=1) != 0).sum(1).max()) + 1)
    return most


# ----- quality and analytic cost -------------------------------------------------------

ACTIVATION_BITS = {"int8-dynamic": 8, "int8-weight-only": 16, "bf16": 16, "int4-weight-only": 16, "simulated": 16}  # simulated: a W{bits}A16 kernel
REFERENCE_CACHE: dict[tuple, list] = {}


def windows(model, text: str) -> list:
    """`text` cut into context-sized windows, each after a beginning-of-sequence token (as runs.likelihood)."""
    import torch

    tok = model.tokenizer
    ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]  # long on purpose: no warning
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    window = min(model.facts.context, 256) - 1
    return [torch.tensor([[bos] + ids[i : i + window]]) for i in range(0, len(ids), window)]


def log_probs(model, xs: list) -> list:
    import torch

    with torch.inference_mode():
        return [torch.log_softmax(model.hf(input_ids=x).logits[0, :-1].float(), -1) for x in xs]


def fidelity(model, reference, text: str | None = None) -> dict[str, float]:
    """KL(full || quantized) and top-1 agreement of next-token distributions, and bits per character.

    On the held-out Shakespeare text by default. KL is in nats, averaged over
    token positions; these move before task accuracy does.
    """

    text = heldout_text() if text is None else text
    xs = windows(reference, text)
    key = (reference.facts.name, reference.facts.revision, id(reference.hf), text)
    ref = REFERENCE_CACHE.get(key) or log_probs(reference, xs)
    if sum(r.numel() for r in ref) <= 2**25:  # about 128 MB; a big-vocabulary model recomputes instead
        REFERENCE_CACHE.clear()
        REFERENCE_CACHE[key] = ref
    kl = agree = nll = nll_full = positions = 0.0
    for x, lp_ref, lp in zip(xs, ref, log_probs(model, xs)):
        target = x[0, 1:, None]
        kl += float((lp_ref.exp() * (lp_ref - lp)).sum())
        agree += float((lp.argmax(-1) == lp_ref.argmax(-1)).sum())
        nll -= float(lp.gather(-1, target).sum())
        nll_full -= float(lp_ref.gather(-1, target).sum())
        positions += target.numel()
    bits = 1 / (math.log(2) * len(text))
    return {"kl_vs_full_nats": kl / positions, "top1_agreement_vs_full": agree / positions,
            "heldout_bits_per_char": nll * bits, "heldout_bits_per_char_full": nll_full * bits}


def bit_flops_per_token(model, context: float = 128.0) -> float:
    """Analytic bit-FLOPs per token: each matmul's FLOPs times weight bits times activation bits.

    A full-precision model counts 32 x 32. Quantized weights count their `bits`
    against the activations their kernel uses (8 for int8-dynamic, 16 for bf16
    and for the W{bits}A16 kernel a simulation stands for); attention's
    activation-by-activation products count activation bits squared.
    """
    import torch


    info = model.tags.get("quantize")
    full = model.tags.get("full_precision", model)
    act = 32 if info is None else ACTIVATION_BITS[info["kernel"]]
    w_bits = {} if info is None else info["weight_bits"]
    total = 0.0
    for name, mod in full.hf.named_modules():
        if isinstance(mod, torch.nn.Linear):
            total += 2 * mod.in_features * mod.out_features * w_bits.get(name, 32) * act
    cfg = full.hf.config
    attention = flops_per_token(cfg, context) - 2 * matmul_params(cfg)
    return total + attention * act * act
