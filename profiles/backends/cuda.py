"""CUDA backend (H100 class): bf16 baseline, fp8 e4m3 (``torch._scaled_mm`` row-wise, FP8
tensor cores, sm_89+), int8 (``torch._int_mm``, cuBLASLt IMMA)."""

from __future__ import annotations

import torch
from hwcost.profiles.backends.base import Backend, Deployment
from hwcost.profiles.backends.layers import (
    CastLinear,
    Int8DynamicLinear,
    ScaledMMFp8Linear,
    check_gemm_dims,
)
from hwcost.profiles.backends.weight_only import Fp8WeightOnlyLinear

from hwcost.errors import UnsupportedPrecision
from hwcost.precision import Precision

# cuBLASLt int8 GEMM: more than 16 rows; FP8 GEMM: dims divisible by 16, compute capability 8.9+.
_INT8_MIN_ROWS = 17
_FP8_MIN_CAPABILITY = (8, 9)


class CudaBackend(Backend):
    """An NVIDIA GPU through torch's CUDA kernels (device ``cuda:index``)."""

    kind = "cuda"
    verification = ("UNVERIFIED: written against the documented torch APIs but never run on an "
                    "NVIDIA GPU; run bench/accel_check.sh on an H100/H200 to check it")

    def __init__(self, index: int = 0) -> None:
        self.index = index

    def available(self) -> tuple[bool, str]:
        if not torch.cuda.is_available():
            built = torch.version.cuda
            return False, ("torch.cuda.is_available() is False"
                           + ("" if built else " (this torch is a CPU-only build)"))
        if self.index >= torch.cuda.device_count():
            return False, f"no cuda:{self.index} ({torch.cuda.device_count()} devices)"
        return True, torch.cuda.get_device_name(self.index)

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.index)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def check_dtype(self, dtype: torch.dtype) -> None:
        """bf16 needs compute capability 8.0 (Ampere) or newer."""
        if dtype == torch.bfloat16 and torch.cuda.is_available() \
                and not torch.cuda.is_bf16_supported():
            cap = ".".join(map(str, torch.cuda.get_device_capability(self.index)))
            raise UnsupportedPrecision(f"cuda:{self.index} ({torch.cuda.get_device_name(self.index)}, "
                                       f"compute capability {cap}) has no bfloat16; the bf16 "
                                       "baseline needs compute capability 8.0 or newer")

    def fp8_supported(self) -> bool:
        """FP8 tensor cores exist (sm_89 Ada, sm_90 Hopper and newer)."""
        return (torch.cuda.is_available()
                and torch.cuda.get_device_capability(self.index) >= _FP8_MIN_CAPABILITY)

    def deployments(self) -> dict[Precision, Deployment]:
        dev = self.device

        def fp8(w, b):
            check_gemm_dims(w, 16, "torch._scaled_mm")
            return ScaledMMFp8Linear(w, b, "torch._scaled_mm row-wise (cuBLASLt FP8)", dev,
                                     out_dtype=torch.bfloat16)

        def int8(w, b):
            check_gemm_dims(w, 8, "torch._int_mm")
            return Int8DynamicLinear(w, b, "torch._int_mm (cuBLASLt IMMA)", dev,
                                     min_rows=_INT8_MIN_ROWS)

        table = {
            Precision.BF16: Deployment(
                Precision.BF16, "aten linear bf16 (cuBLAS)", torch.bfloat16,
                lambda w, b: CastLinear(w, b, Precision.BF16, torch.bfloat16, "cuBLAS bf16",
                                        dev)),
            Precision.FP8_E4M3: Deployment(
                Precision.FP8_E4M3, "torch._scaled_mm fp8 e4m3 row-wise scales (cuBLASLt)",
                torch.float8_e4m3fn, fp8),
            Precision.INT8: Deployment(
                Precision.INT8, "torch._int_mm int8 per-token dynamic (cuBLASLt)", torch.int8,
                int8),
            Precision.FP8_WO: Deployment(
                Precision.FP8_WO, "fp8 e4m3 weight-only: upcast to bf16, cuBLAS bf16 GEMM",
                torch.float8_e4m3fn,
                lambda w, b: Fp8WeightOnlyLinear(w, b, "fp8 weights, cuBLAS bf16", dev)),
        }
        if torch.cuda.is_available() and not self.fp8_supported():
            del table[Precision.FP8_E4M3]  # pre-Ada GPUs have no FP8 GEMM at all
        return table
