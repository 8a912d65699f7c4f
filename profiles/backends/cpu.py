"""CPU backend: fp32 baseline, bf16 (oneDNN), int8 (``torch._int_mm``, VNNI) and fp8
(``torch._scaled_mm``, which ATen emulates on CPUs: stored and measured, not faster).

``torch._int_mm`` on CPU dispatches to oneDNN's int8 GEMM (VNNI): 256x768x768 takes 0.36 ms on
one core against 3.5 ms in fp32, and 380 ms in ATen's scalar fallback with oneDNN disabled.

Kernel choice for int8 (torch 2.13, 2 cores, AVX-512 VNNI, 256x256 layers): per-token
``torch._int_mm`` runs in ~100 us against ~80 us for ``quantized::linear_dynamic``
(fbgemm/x86, per-tensor asymmetric activations) and ~340 us for torchao's
Int8DynamicActivationInt8Weight in eager mode; fp32 takes ~220-300 us. ``_int_mm`` keeps the
registry's per-token symmetric activations (more accurate than per-tensor) at close to the
fbgemm speed, and avoids the quantized-tensor API that torch deprecates.
"""

from __future__ import annotations

import os
from functools import cache

import torch
from hwcost.profiles.backends.base import Backend, Deployment
from hwcost.profiles.backends.layers import CastLinear, Int8DynamicLinear, ScaledMMFp8Linear
from hwcost.profiles.backends.weight_only import Int4WeightOnlyLinear, Int8WeightOnlyLinear

from hwcost.precision import Precision

_CPU = torch.device("cpu")


def cpu_flags() -> set[str]:
    """ISA flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _float(dtype: torch.dtype, precision: Precision, kernel: str):
    return lambda w, b: CastLinear(w, b, precision, dtype, kernel, _CPU)


class CpuBackend(Backend):
    """The host CPU through torch's CPU kernels."""

    kind = "cpu"
    verification = ("verified: the test suite and bench/ run on x86 CPUs (AVX-512 BF16/VNNI) "
                    "with every change")

    def available(self) -> tuple[bool, str]:
        onednn = "oneDNN" if torch.backends.mkldnn.is_available() else "no oneDNN"
        return True, f"{torch.get_num_threads()} torch threads, {onednn}"

    @property
    def device(self) -> torch.device:
        return _CPU

    def default_threads(self) -> int:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1

    def deployments(self) -> dict[Precision, Deployment]:
        return _cpu_deployments()


@cache
def _cpu_deployments() -> dict[Precision, Deployment]:
    """The CPU registry (flags read once per process)."""
    flags = cpu_flags()
    bf16_unit = "AVX512-BF16" if "avx512_bf16" in flags else (
        "AMX-BF16" if "amx_bf16" in flags else "no native bf16 unit")
    int8_unit = "VNNI" if ({"avx512_vnni", "avx_vnni"} & flags) else "no VNNI"
    if not torch.backends.mkldnn.is_available():
        # without oneDNN, ATen's _int_mm is a scalar loop (~1000x slower): say so, still measure
        int8_unit += "; no oneDNN in this torch build: scalar fallback"
    return {
        Precision.FP32: Deployment(
            Precision.FP32, "aten linear fp32 (MKL/oneDNN sgemm)", torch.float32,
            _float(torch.float32, Precision.FP32, "fp32 sgemm")),
        Precision.BF16: Deployment(
            Precision.BF16, f"aten linear bf16 (oneDNN, {bf16_unit})", torch.bfloat16,
            _float(torch.bfloat16, Precision.BF16, f"oneDNN bf16 ({bf16_unit})")),
        Precision.INT8: Deployment(
            Precision.INT8, f"torch._int_mm int8 (oneDNN, {int8_unit}), per-token dynamic",
            torch.int8,
            lambda w, b: Int8DynamicLinear(w, b, f"torch._int_mm ({int8_unit})", _CPU)),
        Precision.FP8_E4M3: Deployment(
            Precision.FP8_E4M3, "torch._scaled_mm fp8 e4m3 row-wise (emulated on CPU)",
            torch.float8_e4m3fn,
            lambda w, b: ScaledMMFp8Linear(w, b, "torch._scaled_mm (CPU emulation)", _CPU),
            emulated=True),
        Precision.INT8_WO: Deployment(
            Precision.INT8_WO, "torch._weight_int8pack_mm int8 weight-only, bf16 activations",
            torch.int8,
            lambda w, b: Int8WeightOnlyLinear(w, b, "torch._weight_int8pack_mm (CPU)", _CPU)),
        Precision.INT4_WO: Deployment(
            Precision.INT4_WO, "torch._weight_int4pack_mm_for_cpu int4 weight-only (groups of "
            "32), bf16 activations", torch.uint8,
            lambda w, b: Int4WeightOnlyLinear(w, b, "torch._weight_int4pack_mm_for_cpu", _CPU)),
    }
