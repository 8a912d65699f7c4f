"""Element-wise variance of each format's quantization error, for the noise-model variant.

The noise model replaces the actual error ``Q_p(t) - t`` by independent zero-mean noise
with the variance of rounding to the format's grid at that element: ``step^2 / 12``, where
the step is the spacing of representable values around the element (the same scale
conventions as ``profiles.precisions``: per-row absmax scales for int8 and fp8).
"""

from __future__ import annotations

import torch
from hwcost.profiles.precisions import FP8_E4M3_MAX, FP8_E5M2_MAX, INT8_MAX, Emulation

from hwcost.precision import Precision

# (explicit mantissa bits, smallest normal exponent) of each floating format
_FLOAT_FORMATS = {
    Precision.BF16: (7, -126),
    Precision.FP16: (10, -14),
    Precision.FP8_E4M3: (3, -6),
    Precision.FP8_E5M2: (2, -14),
}
_FP8_MAX = {Precision.FP8_E4M3: FP8_E4M3_MAX, Precision.FP8_E5M2: FP8_E5M2_MAX}
_EPS = 1e-12


def _row_absmax(t: torch.Tensor) -> torch.Tensor:
    return t.abs().amax(dim=-1, keepdim=True).clamp_min(_EPS)


def error_variance(emu: Emulation, t: torch.Tensor) -> torch.Tensor:
    """Variance of ``emu``'s rounding error at each element of ``t`` (same shape and dtype)."""
    p = emu.precision
    if p is Precision.FP32:
        return torch.zeros_like(t)
    if p is Precision.INT8:
        step = _row_absmax(t) / INT8_MAX
        return (step * step / 12.0).expand_as(t).to(t.dtype)
    if p not in _FLOAT_FORMATS:
        raise ValueError(f"no noise model for {p}")
    mant_bits, min_exp = _FLOAT_FORMATS[p]
    scale = torch.ones((), dtype=t.dtype)
    if p in _FP8_MAX:
        scale = _row_absmax(t) / (emu.fp8_max or _FP8_MAX[p])
    _, exp = torch.frexp(t / scale)  # |v| = m * 2^exp with m in [0.5, 1): floor(log2|v|) = exp - 1
    exponent = (exp - 1).clamp_min(min_exp)  # subnormals share the smallest normal's spacing
    step = torch.ldexp(torch.ones_like(t), (exponent - mant_bits).to(t.dtype)) * scale
    return step * step / 12.0
