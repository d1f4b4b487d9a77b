"""Number formats for `Quantize`, rounding onto their grids, and the real CPU kernels.

Three ways a quantized weight exists here:

- simulated: round-to-nearest onto the format's grid, one scale per group,
  dequantized back to float32. Exact in accuracy, says nothing about speed.
- bf16: parameters cast to bfloat16 and run by torch's bf16 matmuls.
- int8-dynamic: torch's dynamically quantized Linear (fbgemm/oneDNN int8 GEMM;
  activations quantized per call). torchao 0.18's
  `Int8DynamicActivationInt8WeightConfig` also runs on this CPU, but measured
  1.5 to 1.9 times slower than this kernel on zoo-m (batch-64 decoding, scoring),
  slower than float32 itself, and its int4 paths do not run here at all, so
  torch's own is the one we use.

Measured here (one thread, interleaved, medians): a bare bf16 matmul is 2.2 to
3.9 times faster than float32, but the zoo models are small enough that
per-layer overhead dominates, so end to end bf16 takes 0.76 to 0.95 of fp32's
time for batched work and 1.2 to 1.5 times it for batch-1 decoding.

Scales are stored as float16 (as GPTQ and AWQ checkpoints do) and the simulation
uses the float16-rounded scale, so the bytes counted reproduce the weights exactly.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import torch

SCALE_BITS = 16  # float16 scales
FP16_TINY, FP16_MAX = 2.0**-24, 65504.0


@dataclass(frozen=True)
class FloatFormat:
    """A sign bit, `exponent` bits and `mantissa` bits, with IEEE-style subnormals.

    `special` says which codes are not numbers: "finite" (none: OCP MX e2m1, e2m3,
    e3m2), "fn" (only the all-ones code is NaN: OCP e4m3) or "ieee" (the top
    exponent holds inf and NaN: e5m2, bf16, fp16).
    """

    exponent: int
    mantissa: int
    special: str = "finite"

    @property
    def bits(self) -> int:
        return 1 + self.exponent + self.mantissa

    @property
    def name(self) -> str:
        return f"e{self.exponent}m{self.mantissa}"

    def values(self) -> torch.Tensor:
        """The non-negative representable values, ascending (float64)."""
        e_bits, m_bits = self.exponent, self.mantissa
        bias = 2 ** (e_bits - 1) - 1
        top = 2**e_bits - (2 if self.special == "ieee" else 1)
        vals = [m / 2**m_bits * 2.0 ** (1 - bias) for m in range(2**m_bits)]  # subnormals and zero
        for e in range(1, top + 1):
            vals += [(1 + m / 2**m_bits) * 2.0 ** (e - bias) for m in range(2**m_bits)]
        if self.special == "fn":
            vals = vals[:-1]  # e4m3fn: S.1111.111 is NaN
        return torch.tensor(vals, dtype=torch.float64)


# 16-bit floats are plain casts (their range needs no scale); every narrower
# ExMy is simulated on its grid. The defaults per bit count follow OCP MX/FP8.
CAST_FORMATS = {"e8m7": torch.bfloat16, "e5m10": torch.float16}
ALIASES = {"bf16": "e8m7", "bfloat16": "e8m7", "fp16": "e5m10", "float16": "e5m10",
           "e4m3fn": "e4m3", "fp8": "e4m3", "fp4": "e2m1"}
DEFAULT_FP = {3: "e2m0", 4: "e2m1", 5: "e2m2", 6: "e3m2", 7: "e3m3", 8: "e4m3", 16: "e8m7"}
FP_BITS = tuple(DEFAULT_FP)
SPECIAL = {"e4m3": "fn", "e5m2": "ieee", "e8m7": "ieee", "e5m10": "ieee"}


def float_format(name: str, bits: int) -> FloatFormat:
    """Parse 'eXmY' (or an alias such as 'bf16') and check it has `bits` bits."""
    canon = ALIASES.get(str(name).lower(), str(name).lower())
    match = re.fullmatch(r"e(\d+)m(\d+)", canon)
    choices = ", ".join(f"{b}: {DEFAULT_FP[b]}" for b in FP_BITS)
    if not match or int(match[1]) < 1:
        raise ValueError(f"Quantize.fp_format={name!r}; valid: 'eXmY' with X >= 1 exponent bits and "
                         f"1 + X + Y == bits, or an alias {sorted(ALIASES)} (defaults by bits: {choices})")
    fmt = FloatFormat(int(match[1]), int(match[2]), SPECIAL.get(canon, "finite"))
    if fmt.bits != bits:
        raise ValueError(f"Quantize.fp_format={name!r} has {fmt.bits} bits but bits={bits}; "
                         f"formats with {bits} bits are e<X>m<{bits - 1}-X>, e.g. {DEFAULT_FP.get(bits)}")
    if bits == 16 and canon not in CAST_FORMATS:
        raise ValueError(f"Quantize.fp_format={name!r}; 16-bit float formats are 'e8m7' (bf16) and 'e5m10' (fp16)")
    return fmt


@dataclass(frozen=True)
class Grid:
    """What `quantize_weight` needs: a format's rounding rule."""

    kind: str  # "int", "fp" or "cast"
    bits: int
    symmetric: bool = True
    fmt: FloatFormat | None = None

    @property
    def has_scale(self) -> bool:
        return self.kind != "cast"


@dataclass(frozen=True)
class Layout:
    """How one quantized weight is stored: its bytes follow from this alone."""

    shape: tuple[int, int]
    group_size: int  # columns per group along the last axis; the last group of a row may be shorter
    groups: int
    bits: int
    scale_bits: int
    zero_bits: int  # 0 for symmetric formats

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        """Packed codes plus scales plus zero points, each packed at its own width."""
        return (math.ceil(self.numel * self.bits / 8) + math.ceil(self.groups * self.scale_bits / 8)
                + math.ceil(self.groups * self.zero_bits / 8))


def quantize_weight(w: torch.Tensor, grid: Grid, group_size: int | None) -> tuple[torch.Tensor, Layout]:
    """Round a 2-D weight onto `grid`, one scale per `group_size` columns of each row.

    Returns the dequantized float32 weight and its storage layout. A row whose
    length `group_size` does not divide ends in one shorter group (as torch.split
    cuts), which gets its own scale.
    """
    w = w.detach().float()
    rows, cols = w.shape
    if grid.kind == "cast":
        deq = w.to(CAST_FORMATS[grid.fmt.name]).float()
        return deq, Layout((rows, cols), cols, rows, grid.bits, 0, 0)
    g = cols if group_size is None else group_size
    deq = torch.cat([round_groups(p, grid) for p in w.split(g, dim=1)], dim=1)
    groups = rows * math.ceil(cols / g)
    zero_bits = 0 if grid.symmetric else grid.bits
    return deq, Layout((rows, cols), g, groups, grid.bits, SCALE_BITS, zero_bits)


def round_groups(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Quantize-dequantize each row of `x` (one group per row)."""
    if grid.kind == "fp":
        scale = fp16_scale(x.abs().amax(1, keepdim=True) / float(grid.fmt.values()[-1]))
        return round_to_grid(x / scale, grid.fmt.values().float()) * scale
    if grid.symmetric:
        qmax = 2 ** (grid.bits - 1) - 1  # restricted range: a grid symmetric about 0, 2^bits - 1 levels
        scale = fp16_scale(x.abs().amax(1, keepdim=True) / qmax)
        return torch.round(x / scale).clamp(-qmax, qmax) * scale
    qmax = 2**grid.bits - 1
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    scale = fp16_scale((hi - lo) / qmax)
    zero = torch.round(-lo / scale).clamp(0, qmax)  # an integer code, stored at `bits` bits
    return (torch.round(x / scale + zero).clamp(0, qmax) - zero) * scale


def fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    # An all-zero group would give scale 0; the floor keeps x / scale finite (and 0).
    return scale.clamp(FP16_TINY, FP16_MAX).to(torch.float16).float()


def round_to_grid(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Nearest of the non-negative `values` (ascending) in magnitude, sign kept.

    Ties go to the even code, as IEEE round-to-nearest-even does; magnitudes past
    the largest value saturate to it. Hand-written: torch casts only to its own
    float8 dtypes, not to an arbitrary ExMy.
    """
    a = x.abs()
    mids = (values[1:] + values[:-1]) / 2
    idx = torch.bucketize(a, mids)  # a in (mids[i-1], mids[i]] -> i
    at_mid = a == mids[idx.clamp(max=len(mids) - 1)]
    idx = torch.where(at_mid & (idx % 2 == 1), idx + 1, idx)
    return torch.sign(x) * values[idx.clamp(max=len(values) - 1)]


# ----- real kernels -------------------------------------------------------------------


def cast_bf16_(hf, keep: list[torch.nn.Module]) -> None:
    """Run `hf` in bfloat16, except the modules in `keep`, which stay float32.

    Parameters only: rotary `inv_freq` buffers stay float32, as transformers
    computes positions in float32 anyway. Kept modules get casts at their edges.
    """
    kept = {id(m) for m in keep}
    for mod in hf.modules():
        if id(mod) not in kept:
            for p in mod.parameters(recurse=False):
                p.data = p.data.to(torch.bfloat16)
    emb, head = hf.get_input_embeddings(), hf.get_output_embeddings()
    if id(emb) in kept:
        emb.register_forward_hook(lambda m, args, out: out.to(torch.bfloat16))
    if head is not None and id(head) in kept:
        head.register_forward_pre_hook(lambda m, args: tuple(a.float() for a in args))


class Int8DynamicLinear(torch.nn.Linear):
    """A Linear whose forward is torch's dynamic int8 kernel (fbgemm/oneDNN int8 GEMM).

    The kernel holds the int8 codes and a per-row scale; `weight` keeps their
    dequantized values so the model reads like any other (`.weight` of every
    quantized Linear is on its grid, whatever kernel runs it). `deq` must be on
    the simulated int8 grid (codes times a float16 scale): the real kernel and
    the simulation then hold the same weights and differ only in the kernel
    rounding activations to 8 bits (per tensor, on each call).
    """

    def __init__(self, linear: torch.nn.Linear, deq: torch.Tensor):
        import torch.ao.nn.quantized.dynamic as nnqd

        super().__init__(linear.in_features, linear.out_features, bias=False, device="meta")
        self.weight = torch.nn.Parameter(deq.float(), requires_grad=False)
        self.bias = linear.bias
        scale = fp16_scale(deq.abs().amax(1) / 127).double()
        with warnings.catch_warnings():
            # torch.ao.quantization is deprecated for torchao, whose int8 CPU path is slower here.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            codes = torch.quantize_per_channel(deq, scale, torch.zeros_like(scale, dtype=torch.long), 0,
                                               torch.qint8)
            self.kernel = nnqd.Linear(linear.in_features, linear.out_features, bias_=linear.bias is not None,
                                      dtype=torch.qint8)
            self.kernel.set_weight_bias(codes, None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x)

    def codes(self) -> torch.Tensor:
        """The weight as the int8 kernel holds it, dequantized."""
        return self.kernel.weight().dequantize()


def int8_weight_only_runs() -> bool:
    """Whether torch's CPU int8 weight-only matmul exists and runs here."""
    try:
        torch.ops.aten._weight_int8pack_mm(torch.zeros(1, 64, dtype=torch.bfloat16),
                                           torch.zeros(8, 64, dtype=torch.int8), torch.ones(8, dtype=torch.bfloat16))
        return True
    except (RuntimeError, AttributeError):
        return False


class Int8WeightOnlyLinear(torch.nn.Linear):
    """A Linear whose forward is torch's CPU int8 weight-only matmul (W8A16, bfloat16 activations).

    Holds the int8 codes and one scale per output row, as the simulated per-channel
    int8 grid does; `weight` keeps the simulation's float32 values. Unlike the
    dynamic int8 kernel it leaves activations unquantized: a real LLM's activation
    outlier channels (SmolLM2's) cost W8A8 0.6 bits/char, where weights alone cost
    0.005. What differs from the simulation: activations and scales are rounded to
    bfloat16 for the matmul (float32 activations take a path about 9x slower than
    the bfloat16 one here), and the output returns to float32.
    """

    def __init__(self, linear: torch.nn.Linear, deq: torch.Tensor):
        super().__init__(linear.in_features, linear.out_features, bias=False, device="meta")
        self.weight = torch.nn.Parameter(deq.float(), requires_grad=False)
        self.bias = linear.bias
        scale = fp16_scale(deq.abs().amax(1) / 127).float()
        codes = torch.round(deq.float() / scale.clamp_min(torch.finfo(torch.float32).tiny)[:, None])
        if not torch.allclose(codes * scale[:, None], deq.float(), rtol=0,
                              atol=1e-6 * float(deq.abs().max()) + 1e-12):
            raise ValueError("int8 kernel codes do not reproduce the simulated weights")  # a bug, not a user error
        self.codes8 = codes.clamp(-127, 127).to(torch.int8).contiguous()
        self.scales = scale.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.codes8, self.scales)
        y = y.reshape(*shape[:-1], -1).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def codes(self) -> torch.Tensor:
        """The weight as the kernel holds it (scales in bfloat16), in float32."""
        return self.codes8.float() * self.scales.float()[:, None]


INT4_GROUPS = (32, 64, 128, 256)  # group sizes torch's CPU int4 matmul takes


def int_codes(x: torch.Tensor, bits: int, symmetric: bool, group_size: int):
    """Integer codes, scales and zero points of `round_groups` on groups of `group_size` columns.

    Returns (codes (rows, cols) int, scale (rows, groups), zero (rows, groups)) with
    dequantized = (codes - zero) * scale, exactly `quantize_weight`'s float32 values.
    """
    rows, cols = x.shape
    g = x.float().reshape(rows, cols // group_size, group_size)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = fp16_scale(g.abs().amax(-1) / qmax)
        codes = torch.round(g / scale[..., None]).clamp(-qmax, qmax)
        zero = torch.zeros_like(scale)
    else:
        qmax = 2**bits - 1
        lo, hi = g.amin(-1), g.amax(-1)
        scale = fp16_scale((hi - lo) / qmax)
        zero = torch.round(-lo / scale).clamp(0, qmax)
        codes = torch.round(g / scale[..., None] + zero[..., None]).clamp(0, qmax)
    return codes.reshape(rows, cols), scale, zero


def int4_kernel_runs() -> bool:
    """Whether torch's CPU int4 weight-only matmul exists and runs here."""
    try:
        w = torch.randint(0, 16, (32, 64), dtype=torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(w, 2)
        sz = torch.zeros(2, 32, 2, dtype=torch.bfloat16)
        torch.ops.aten._weight_int4pack_mm_for_cpu(torch.zeros(1, 64, dtype=torch.bfloat16), packed, 32, sz)
        return True
    except (RuntimeError, AttributeError):
        return False


class Int4WeightOnlyLinear(torch.nn.Linear):
    """A Linear whose forward is torch's CPU int4 weight-only matmul (W4A16, bfloat16 activations).

    Holds the 4-bit codes packed two to a byte and, per group of `group_size`
    input columns, a scale and a zero (torch's layout: w = (q - 8) * scale + zero,
    q in 0..15; our symmetric codes -7..7 are q - 8 with zero 0, our asymmetric
    codes c with zero point z are q = c with zero (8 - z) * scale). `weight` keeps
    the simulated quantizer's float32 values. What differs from the simulation:
    activations, scales and zeros are rounded to bfloat16 for the matmul (the
    kernel takes them in its activation dtype; float32 activations take a
    reference path here 60x slower), and the output returns to float32.
    """

    def __init__(self, linear: torch.nn.Linear, deq: torch.Tensor, symmetric: bool, group_size: int):
        super().__init__(linear.in_features, linear.out_features, bias=False, device="meta")
        self.weight = torch.nn.Parameter(deq.float(), requires_grad=False)
        self.bias = linear.bias
        codes, scale, zero = int_codes(linear.weight.detach(), 4, symmetric, group_size)
        q = (codes + 8) if symmetric else codes
        z = zero * 0 if symmetric else (8 - zero) * scale
        back = ((q.reshape(scale.shape[0], scale.shape[1], -1) - 8) * scale[..., None] + z[..., None]).reshape(deq.shape)
        if not torch.allclose(back, deq.float(), rtol=0, atol=1e-6 * float(deq.abs().max()) + 1e-12):
            raise ValueError("int4 kernel codes do not reproduce the simulated weights")  # a bug, not a user error
        self.group_size = group_size
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 2)
        self.scales_zeros = torch.stack([scale, z], -1).transpose(0, 1).contiguous().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.packed,
                                                       self.group_size, self.scales_zeros)
        y = y.reshape(*shape[:-1], -1).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> torch.Tensor:
        """The weight as the kernel holds it (scales and zeros in bfloat16), in float32."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, self.group_size,
                                                          self.scales_zeros).float().T


def int4_fits(mod, group_size: int) -> bool:
    """Whether torch's int4 kernel takes this Linear (its groups must tile the input columns)."""
    if type(mod) is not torch.nn.Linear or mod.in_features % group_size:
        return False
    try:
        w = torch.zeros(mod.out_features, mod.in_features, dtype=torch.int32)
        torch.ops.aten._convert_weight_to_int4pack_for_cpu(w, 2)
        return True
    except RuntimeError:
        return False
