"""Precision registry, emulation half: quantize-dequantize functions that reproduce, in
high precision, the numbers a deployed low-precision layer computes with.

Sensitivity scores these; ``profiles.backends`` deploys the same formats with real kernels
and the backend tests check that deployed outputs match these emulations. One definition of
each format (scale granularity, rounding, range) lives here.

Conventions (shared with every backend's deployment):

- weights are quantized per output channel (row of ``W``, shape ``[out, in]``), symmetric;
- activations are quantized dynamically per token (row of ``x``), symmetric;
- bf16 and fp16 layers also return their output in the format (rounded), as the deployed
  kernels do; int8 and fp8 kernels accumulate and rescale in fp32;
- floating formats round to nearest even; fp8 scales map the row's absolute maximum to the
  format's largest finite value (448 for e4m3, 57344 for e5m2; 240 on Gaudi 2, see
  ``FP8_E4M3_GAUDI2_MAX``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hwcost.precision import INT4_GROUP, Precision, parse_precision

FP8_E4M3_MAX = 448.0
FP8_E4M3_GAUDI2_MAX = 240.0
FP8_E5M2_MAX = 57344.0
INT8_MAX = 127.0
_EPS = 1e-12
INC_WEIGHT_BACKOFF = 0.5
"""Intel Neural Compressor scales weights to half the fp8 range (``backoff`` of its
``maxabs_pcs_pow2`` weight config); activations use the whole range."""
_BF16_TINY = 1.1754943508222875e-38  # torch.finfo(torch.bfloat16).tiny, INC's scale floor


def _cast_roundtrip(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).to(t.dtype)


def _absmax_rows(t: torch.Tensor) -> torch.Tensor:
    return t.abs().amax(dim=-1, keepdim=True).clamp_min(_EPS)


def quantize_fp8_rows(t: torch.Tensor, dtype: torch.dtype, fmax: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scaled fp8: returns (fp8 tensor, float32 scale) with ``t ~= q * scale``."""
    scale = (_absmax_rows(t.float()) / fmax)
    q = (t.float() / scale).clamp(-fmax, fmax).to(dtype)
    return q, scale


def quantize_int8_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: returns (int8 tensor, float32 scale) with ``t ~= q * scale``."""
    scale = _absmax_rows(t.float()) / INT8_MAX
    q = torch.round(t.float() / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def quantize_int8_rows_wo(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight-only int8: per-row symmetric with the scale rounded to bf16 first (the kernel,
    ``torch._weight_int8pack_mm``, takes bf16 scales), so ``w ~= q * scale`` exactly as it
    computes. Returns (int8 ``[out, in]``, bf16 scale ``[out, 1]``)."""
    scale = (_absmax_rows(w.float()) / INT8_MAX).to(torch.bfloat16)
    q = torch.round(w.float() / scale.float()).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def quantize_int4_groups(w: torch.Tensor, group: int = INT4_GROUP
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weight-only int4, asymmetric per group of ``group`` inputs of each row, with bf16 scale
    and zero as ``torch._weight_int4pack_mm_for_cpu`` takes them: ``w ~= (q - 8) * scale +
    zero``, ``q`` in 0..15. Returns (int32 q ``[out, in]``, bf16 scale and zero
    ``[out, in // group]``)."""
    out_f, in_f = w.shape
    if in_f % group:
        raise ValueError(f"int4 groups of {group} need the input width to be a multiple; got {in_f}")
    g = w.float().reshape(out_f, in_f // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp_min(_EPS).to(torch.bfloat16)
    zero = (lo + 8 * scale.float()).to(torch.bfloat16)
    q = torch.round((g - zero.float()[..., None]) / scale.float()[..., None]) + 8
    return q.clamp(0, 15).to(torch.int32).reshape(out_f, in_f), scale, zero


def _int4_qdq(w: torch.Tensor, group: int = INT4_GROUP) -> torch.Tensor:
    q, scale, zero = quantize_int4_groups(w, group)
    out_f, in_f = w.shape
    g = q.reshape(out_f, in_f // group, group).float() - 8
    return (g * scale.float()[..., None] + zero.float()[..., None]).reshape(out_f, in_f).to(w.dtype)


def _int8_wo_qdq(w: torch.Tensor) -> torch.Tensor:
    q, scale = quantize_int8_rows_wo(w)
    return (q.float() * scale.float()).to(w.dtype)


def _fp8_qdq(t: torch.Tensor, dtype: torch.dtype, fmax: float) -> torch.Tensor:
    q, scale = quantize_fp8_rows(t, dtype, fmax)
    return (q.float() * scale).to(t.dtype)


def inc_fp8_dtype(fmax: float) -> torch.dtype:
    """The torch dtype with Gaudi's e4m3 grid: Gaudi 2's e4m3 (range +-240, exponent bias 8)
    is ``float8_e4m3fnuz`` (INC's Q/DQ path uses its range there), Gaudi 3's ``float8_e4m3fn``."""
    return torch.float8_e4m3fnuz if fmax == FP8_E4M3_GAUDI2_MAX else torch.float8_e4m3fn


def inc_fp8_scale(t: torch.Tensor, fmax: float, backoff: float = 1.0) -> torch.Tensor:
    """INC's dynamic per-row scale (``MaxAbsDynamicPcs`` / ``MaxAbsPcs`` with ``ScaleToPow2``):
    ``2 ** ceil(log2(max(absmax / (fmax * backoff), bf16 tiny)))``, one per row, float32."""
    s = t.float().abs().amax(dim=-1, keepdim=True) / (fmax * backoff)
    return torch.exp2(torch.ceil(torch.log2(s.clamp_min(_BF16_TINY))))


def inc_fp8_cast(scaled: torch.Tensor, fmax: float) -> torch.Tensor:
    """Already-scaled values to Gaudi fp8: saturate at +-fmax, round to nearest even."""
    return scaled.float().clamp(-fmax, fmax).to(inc_fp8_dtype(fmax))


def quantize_fp8_inc(t: torch.Tensor, fmax: float, backoff: float = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """INC's dynamic fp8 quantization of rows: (fp8 tensor, power-of-two float32 scale)."""
    scale = inc_fp8_scale(t, fmax, backoff)
    # the scale is a power of two, so dividing is exact (INC multiplies by its inverse)
    return inc_fp8_cast(t.float() / scale, fmax), scale


def _int8_qdq(t: torch.Tensor) -> torch.Tensor:
    q, scale = quantize_int8_rows(t)
    return (q.float() * scale).to(t.dtype)


@dataclass(frozen=True)
class Emulation:
    """How one precision changes a linear layer's operands.

    ``weight(W)`` and ``activation(x)`` return tensors of the input's dtype holding the
    values the deployed kernel would compute with; ``rel_tol`` bounds the relative error of
    one matmul output against the fp32 result, used by tests and the backend checks.
    """

    precision: Precision
    fp8_max: float | None = None
    scale_rounding: str = "exact"
    """``exact``: fp8 scales map each row's absmax to ``fp8_max`` (the backends' kernels);
    ``pow2``: Intel Neural Compressor's dynamic ``maxabs_pcs_pow2`` quantizer (power-of-two
    per-token activation scales, per-channel weight scales with backoff 0.5, Gaudi's grid),
    see :func:`inc_fp8_emulation`."""

    def __post_init__(self) -> None:
        if self.scale_rounding not in ("exact", "pow2"):
            raise ValueError(f"scale_rounding {self.scale_rounding!r}; known: exact, pow2")
        if self.scale_rounding == "pow2" and self.precision is not Precision.FP8_E4M3:
            raise ValueError("pow2 (INC) scales are defined for fp8_e4m3 only")

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        if self.scale_rounding == "pow2":
            return self._inc_qdq(w, INC_WEIGHT_BACKOFF)
        p = self.precision
        if p is Precision.INT8_WO:
            return _int8_wo_qdq(w)
        if p is Precision.INT4_WO:
            return _int4_qdq(w)
        if p is Precision.FP8_WO:  # the layer upcasts its fp8 weight to bf16 per call
            return _cast_roundtrip(_fp8_qdq(w, torch.float8_e4m3fn, self.fp8_max or FP8_E4M3_MAX),
                                   torch.bfloat16)
        return self._qdq(w)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale_rounding == "pow2":
            return self._inc_qdq(x, 1.0)
        if self.precision.weight_only:  # activations are only cast to bf16
            return _cast_roundtrip(x, torch.bfloat16)
        return self._qdq(x)

    def _inc_qdq(self, t: torch.Tensor, backoff: float) -> torch.Tensor:
        q, scale = quantize_fp8_inc(t, self.fp8_max or FP8_E4M3_MAX, backoff)
        return (q.float() * scale).to(t.dtype)

    def _qdq(self, t: torch.Tensor) -> torch.Tensor:
        p = self.precision
        if p is Precision.FP32:
            return t
        if p is Precision.BF16:
            return _cast_roundtrip(t, torch.bfloat16)
        if p is Precision.FP16:
            return _cast_roundtrip(t, torch.float16)
        if p is Precision.FP8_E4M3:
            return _fp8_qdq(t, torch.float8_e4m3fn, self.fp8_max or FP8_E4M3_MAX)
        if p is Precision.FP8_E5M2:
            return _fp8_qdq(t, torch.float8_e5m2, self.fp8_max or FP8_E5M2_MAX)
        if p is Precision.INT8:
            return _int8_qdq(t)
        raise ValueError(f"no emulation for {p}")

    @property
    def rowwise_weight(self) -> bool:
        """Whether ``weight(W)[rows] == weight(W[rows])``: scales are per output row (int8,
        fp8), per group within a row (int4_wo) or there are none (float casts). Sensitivity
        then scores a large weight in chunks of rows instead of holding its whole error at
        once."""
        return True

    @property
    def rounds_output(self) -> bool:
        """Whether the deployed kernel returns its output in the format itself: float formats
        (bf16, fp16) compute and return in it, so the layer's output is rounded too; int8
        and fp8 kernels accumulate and rescale in fp32."""
        return self.precision in (Precision.BF16, Precision.FP16) or self.precision.weight_only

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """The layer's output as the deployed kernel returns it (see :attr:`rounds_output`)."""
        if self.precision is Precision.BF16 or self.precision.weight_only:
            return _cast_roundtrip(y, torch.bfloat16)
        if self.precision is Precision.FP16:
            return _cast_roundtrip(y, torch.float16)
        return y

    @property
    def rel_tol(self) -> float:
        return _REL_TOL[self.precision]

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
               ) -> torch.Tensor:
        """The emulated layer: ``R(Q(x) @ Q(W)^T + R(b))`` in x's dtype, ``R`` the output
        rounding of float formats (whose kernels also store the bias in the format)."""
        return self.output(torch.nn.functional.linear(self.activation(x), self.weight(w),
                                                      self.bias(b)))

    def bias(self, b: torch.Tensor | None) -> torch.Tensor | None:
        """The bias as the deployed layer stores it: in the format for bf16/fp16, else fp32."""
        return self.output(b) if b is not None and self.rounds_output else b


# Relative error (Frobenius) of one emulated matmul against fp32, with margin, for
# Gaussian-like operands: unit roundoff grows with sqrt of the reduction in practice.
_REL_TOL = {
    Precision.FP32: 1e-5,
    Precision.BF16: 2e-2,
    Precision.FP16: 5e-3,
    Precision.FP8_E4M3: 1e-1,
    Precision.FP8_E5M2: 2e-1,
    Precision.INT8: 5e-2,
    Precision.INT8_WO: 3e-2,
    Precision.INT4_WO: 2e-1,
    Precision.FP8_WO: 8e-2,
}


def emulation(precision: Precision | str, *, fp8_max: float | None = None) -> Emulation:
    """The registry's emulation for ``precision`` (``fp8_max`` overrides e.g. Gaudi 2's 240)."""
    return Emulation(parse_precision(precision), fp8_max)


def target_fp8_emulation(device_name: str, kind: str) -> Emulation:
    """The fp8 e4m3 emulation for a target device: on a Gaudi (``kind`` hpu) INC's quantizer
    (:func:`inc_fp8_emulation`) with the device's range from the catalog
    (``hwcost.catalog.fp8_e4m3_max``: 240 on Gaudi 2, 448 on Gaudi 3), elsewhere the
    registry's. Pass it to ``sensitivity.taylor.analyze(precisions=[...])`` to score what the
    INC export deploys."""
    from hwcost.catalog import fp8_e4m3_max

    if kind == "hpu":
        return inc_fp8_emulation(fp8_e4m3_max(device_name, kind))
    return Emulation(Precision.FP8_E4M3, fp8_e4m3_max(device_name, kind))


def inc_fp8_emulation(fp8_max: float) -> Emulation:
    """fp8 e4m3 as Intel Neural Compressor quantizes it on Gaudi with the config
    ``planner.inc`` exports (``scale_method: maxabs_pcs_pow2``, ``dynamic_quantization``):
    activations per token, weights per output channel, power-of-two scales, weights backed off
    to half the range, saturation at ``fp8_max`` (240 on Gaudi 2, 448 on Gaudi 3)."""
    return Emulation(Precision.FP8_E4M3, float(fp8_max), "pow2")
