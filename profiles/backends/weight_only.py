"""Weight-only deployed layers: int8 / int4 / fp8 weights, bf16 activations and output.

They quantize exactly as ``profiles.precisions`` emulates (``quantize_int8_rows_wo``,
``quantize_int4_groups``, ``quantize_fp8_rows``) and share one bf16 cast of their input with
bf16 layers reading the same tensor (``input_key`` ``("cast", bfloat16)``).

- ``int8_wo`` on CPU: ``torch._weight_int8pack_mm`` (int8 weights ``[out, in]``, bf16 scale
  per output channel, bf16 activations): ATen's CPU weight-only kernel (AVX-512 path).
- ``int4_wo`` on CPU: ``torch._weight_int4pack_mm_for_cpu`` on weights packed by
  ``torch._convert_weight_to_int4pack_for_cpu`` (two 4-bit values a byte), groups of 32
  inputs with a bf16 scale and zero each.
- ``fp8_wo`` on CUDA: fp8 e4m3 weights with a per-channel scale, upcast to bf16 inside the
  layer before a cuBLAS bf16 GEMM (no fused fp8-weight x bf16 kernel ships with torch): it
  halves the weight bytes stored and read, not the math. Code path untested on this machine.

In fp32, both CPU kernels take a scalar path that is many times slower than fp32 sgemm
(measured: ``_weight_int8pack_mm`` 2.7 s against 0.16 s for a 256x1024x2816 product), so the
formats are defined with bf16 activations, where they are vectorised.
"""

from __future__ import annotations

import torch
from hwcost.profiles.backends.layers import DeployedLinear
from hwcost.profiles.precisions import (
    FP8_E4M3_MAX,
    quantize_fp8_rows,
    quantize_int4_groups,
    quantize_int8_rows_wo,
)
from torch import nn

from hwcost.errors import BackendUnavailable
from hwcost.precision import INT4_GROUP, Precision

_BF16 = torch.bfloat16


class _WeightOnly(DeployedLinear):
    def _store_bias(self, bias: torch.Tensor | None, device: torch.device) -> None:
        self.register_buffer("bias", None if bias is None else bias.to(device, _BF16))

    @property
    def input_key(self) -> tuple:
        return ("cast", _BF16)

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(_BF16)

    def _add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias


class Int8WeightOnlyLinear(_WeightOnly):
    """int8 weights per output channel (bf16 scales), bf16 activations: ``torch._weight_int8pack_mm``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str,
                 device: torch.device) -> None:
        super().__init__(weight.shape[1], weight.shape[0])
        self.precision, self.kernel = Precision.INT8_WO, kernel
        q, scale = quantize_int8_rows_wo(weight)
        self.register_buffer("weight", q.to(device).contiguous())
        self.register_buffer("weight_scale", scale.reshape(-1).to(device).contiguous())
        self._store_bias(bias, device)

    def _forward_2d(self, x: torch.Tensor) -> torch.Tensor:
        return self._add_bias(torch._weight_int8pack_mm(x, self.weight, self.weight_scale))


class Int4WeightOnlyLinear(_WeightOnly):
    """int4 weights in groups of 32 inputs (bf16 scale and zero), bf16 activations:
    ``torch._weight_int4pack_mm_for_cpu`` on a packed uint8 weight (two values a byte)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str,
                 device: torch.device, group: int = INT4_GROUP) -> None:
        super().__init__(weight.shape[1], weight.shape[0])
        self.precision, self.kernel, self.group = Precision.INT4_WO, kernel, group
        if weight.shape[1] % group:
            raise BackendUnavailable(f"int4_wo needs the input width to be a multiple of {group}; "
                                     f"layer is {weight.shape[1]}->{weight.shape[0]}")
        q, scale, zero = quantize_int4_groups(weight, group)
        # the packing wants a multiple of 16 output channels: pad with zero rows (q = 8 with
        # zero point 0 dequantizes to exactly 0), drop their outputs after the matmul
        pad = -weight.shape[0] % 16
        if pad:
            q = torch.cat([q, torch.full((pad, q.shape[1]), 8, dtype=q.dtype)])
            scale = torch.cat([scale, torch.ones(pad, scale.shape[1], dtype=scale.dtype)])
            zero = torch.cat([zero, torch.zeros(pad, zero.shape[1], dtype=zero.dtype)])
        packed = torch._convert_weight_to_int4pack_for_cpu(q.to(device), 2)
        self.register_buffer("weight", packed)  # uint8 [out, in / 2]
        # [in / group, out, 2]: the kernel's scales-and-zeros layout
        sz = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
        self.register_buffer("scales_and_zeros", sz.to(device))
        self._store_bias(bias, device)

    def _forward_2d(self, x: torch.Tensor) -> torch.Tensor:
        y = torch._weight_int4pack_mm_for_cpu(x, self.weight, self.group, self.scales_and_zeros)
        return self._add_bias(y[:, :self.out_features])


class Fp8WeightOnlyLinear(_WeightOnly):
    """fp8 e4m3 weights per output channel, upcast to bf16 per call, bf16 GEMM (CUDA)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str,
                 device: torch.device, fp8_max: float = FP8_E4M3_MAX) -> None:
        super().__init__(weight.shape[1], weight.shape[0])
        self.precision, self.kernel = Precision.FP8_WO, kernel
        q, scale = quantize_fp8_rows(weight, torch.float8_e4m3fn, fp8_max)
        self.register_buffer("weight", q.to(device).contiguous())
        self.register_buffer("weight_scale", scale.to(device))  # [out, 1] float32
        self._store_bias(bias, device)

    def _forward_2d(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight.float() * self.weight_scale).to(_BF16)
        return self._add_bias(nn.functional.linear(x, w))
