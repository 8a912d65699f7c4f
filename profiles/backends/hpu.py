"""HPU backend (Intel Gaudi 2/3): bf16 baseline and fp8 e4m3 through
``torch.ops.hpu.fp8_gemm_v2`` (the op Intel Neural Compressor's FP8 flow also lowers to).

Gaudi 2's E4M3 saturates at +-240, Gaudi 3's at +-448: the scales map each row's absolute
maximum to that value (``profiles.precisions.FP8_E4M3_GAUDI2_MAX``), and the emulation used
against it is ``emulation("fp8_e4m3", fp8_max=backend.fp8_max())``.

Synchronisation: in lazy mode (``PT_HPU_LAZY_MODE=1``, the bridge's default before 1.21) ops
are only recorded until ``htcore.mark_step()`` hands the graph to the device, so
:meth:`HpuBackend.synchronize` calls ``mark_step()`` first and then waits with
``torch.hpu.synchronize()``; without the first, a timing loop would time the recording and the
deferred graph would run (or be dropped) outside it. In eager mode ``mark_step()`` is a no-op.

Not run on a Gaudi yet: ``bench/hpu_check.sh`` is the check to run on one.
"""

from __future__ import annotations

import importlib
from functools import cache

import torch
from hwcost.profiles.backends.base import Backend, Deployment
from hwcost.profiles.backends.layers import CastLinear, HpuFp8Linear
from hwcost.profiles.precisions import FP8_E4M3_GAUDI2_MAX, FP8_E4M3_MAX

from hwcost.precision import Precision


@cache
def _habana() -> tuple[object | None, str]:
    """``(habana_frameworks.torch.hpu, "")``, or ``(None, why not)``."""
    try:
        importlib.import_module("habana_frameworks.torch.core")
        hthpu = importlib.import_module("habana_frameworks.torch.hpu")
    except ImportError as e:
        return None, f"habana_frameworks not installed ({e.msg})"
    return hthpu, ""


@cache
def _htcore() -> object | None:
    """``habana_frameworks.torch.core`` (it has ``mark_step``), or None without the bridge."""
    try:
        return importlib.import_module("habana_frameworks.torch.core")
    except ImportError:
        return None


class HpuBackend(Backend):
    """An Intel Gaudi card through the Habana PyTorch bridge (device ``hpu:index``)."""

    kind = "hpu"
    verification = ("UNVERIFIED: written against the documented habana_frameworks and Neural "
                    "Compressor APIs but never run on a Gaudi; run bench/hpu_check.sh on one")

    def __init__(self, index: int = 0) -> None:
        self.index = index

    def available(self) -> tuple[bool, str]:
        hthpu, why = _habana()
        if hthpu is None:
            return False, why
        if not hthpu.is_available():
            return False, "habana_frameworks found no Gaudi device"
        return True, hthpu.get_device_name()

    def device_name(self) -> str:
        hthpu, _ = _habana()
        return hthpu.get_device_name() if hthpu is not None and hthpu.is_available() else ""

    @property
    def device(self) -> torch.device:
        return torch.device("hpu", self.index)

    def synchronize(self) -> None:
        """Flush the lazy graph (``htcore.mark_step()``), then wait for the device."""
        core = _htcore()
        if core is not None:
            core.mark_step()
        torch.hpu.synchronize()

    def fp8_max(self) -> float:
        """240 on Gaudi 2 (and when the generation is unknown: the safe range), 448 on Gaudi 3."""
        return FP8_E4M3_MAX if "GAUDI3" in self.device_name().upper() else FP8_E4M3_GAUDI2_MAX

    def deployments(self) -> dict[Precision, Deployment]:
        dev = self.device
        return {
            Precision.BF16: Deployment(
                Precision.BF16, "aten linear bf16 (MME)", torch.bfloat16,
                lambda w, b: CastLinear(w, b, Precision.BF16, torch.bfloat16, "MME bf16", dev)),
            Precision.FP8_E4M3: Deployment(
                Precision.FP8_E4M3, "torch.ops.hpu.fp8_gemm_v2 fp8 e4m3, per-token/per-channel "
                "scales (MME FP8)", torch.float8_e4m3fn,
                lambda w, b: HpuFp8Linear(w, b, "torch.ops.hpu.fp8_gemm_v2", dev,
                                          fp8_max=self.fp8_max())),
        }
