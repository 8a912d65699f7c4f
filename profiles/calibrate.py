"""CPU calibration microbenchmark: achieved matmul rate per precision and memory bandwidth.

The roofline of ``hwcost.roofline`` needs peak rates. A CPU has no datasheet figure worth
using (it depends on cores, clocks, ISA and the kernels torch picks), so ``hwcost device
calibrate`` measures what the deployed kernels achieve here, in well under 20 seconds:

- matmul rate per precision: a linear layer deployed with the CPU backend's real kernel for
  that precision (fp32 sgemm, oneDNN bf16, ``torch._int_mm`` int8 with per-token dynamic
  quantization, ``torch._scaled_mm`` fp8 which the CPU only emulates) at a compute-bound size,
  ``2*M*K*N / time``, best of two sizes;
- memory bandwidth: copying a buffer much larger than the last-level cache,
  ``2 * bytes / time`` (read plus write);
- per-op overhead: the latency of a tiny deployed fp32 linear layer.

The result is the ``Device.peaks`` JSON (``"<precision>_tflops"``, ``mem_gbps``,
``op_overhead_us``, ``source``), stored by ``Store.set_device_peaks``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch

from hwcost.precision import Precision

CALIBRATED = (Precision.FP32, Precision.BF16, Precision.INT8, Precision.FP8_E4M3)
_SIZES = ((256, 1024, 1024), (256, 2048, 2048))  # (tokens, in, out): compute-bound on a CPU
_COPY_BYTES = 256 * 2**20


def _median_us(fn: Callable[[], object], budget_s: float, min_reps: int = 3,
               max_reps: int = 50) -> float:
    """Median wall time of ``fn`` in microseconds after one warm-up call."""
    fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_reps or (time.perf_counter() - start < budget_s
                                      and len(samples) < max_reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)


def _deploy(linear: torch.nn.Linear, p: Precision) -> torch.nn.Module:
    """The CPU backend's deployment of ``p`` (plain torch casts if the backend is missing)."""
    try:
        from hwcost.profiles.backends import get_backend
    except ImportError:  # backend package absent: plain torch matmuls in the precision
        dtype = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16}.get(p)
        if dtype is None:
            raise
        return linear.to(dtype)
    return get_backend("cpu").deploy_linear(linear, p)


def matmul_tflops(p: Precision, budget_s: float = 1.5, seed: int = 0) -> float:
    """Achieved rate of ``p``'s deployed linear kernel, TFLOP/s (TOPS for int8)."""
    gen = torch.Generator().manual_seed(seed)
    best = 0.0
    for m, k, n in _SIZES:
        lin = torch.nn.Linear(k, n, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(n, k, generator=gen) * k ** -0.5)
        layer = _deploy(lin, p)
        x = torch.randn(m, k, generator=gen)
        with torch.inference_mode():
            us = _median_us(lambda layer=layer, x=x: layer(x), budget_s / len(_SIZES))
        best = max(best, 2.0 * m * k * n / (us * 1e6))
    return best


def memory_gbps(budget_s: float = 1.5) -> float:
    """Achieved copy bandwidth (read + write), GB/s."""
    src = torch.ones(_COPY_BYTES // 4)
    dst = torch.empty_like(src)
    us = _median_us(lambda: dst.copy_(src), budget_s)
    return 2.0 * _COPY_BYTES / (us * 1e3)


def op_overhead_us(budget_s: float = 0.5) -> float:
    """Latency of a tiny deployed fp32 linear layer: the per-op dispatch cost."""
    layer = _deploy(torch.nn.Linear(16, 16, bias=False), Precision.FP32)
    x = torch.randn(1, 16)
    with torch.inference_mode():
        return _median_us(lambda: layer(x), budget_s, min_reps=20, max_reps=2000)


def calibrate_cpu(threads: int | None = None, budget_s: float = 8.0) -> dict:
    """Measure this CPU; returns the ``Device.peaks`` JSON. ``threads`` sets torch's thread
    count for the run (it is part of the device fingerprint); None keeps torch's setting."""
    if threads is not None:
        torch.set_num_threads(threads)
    per = budget_s / (len(CALIBRATED) + 2)
    peaks: dict = {f"{p.value}_tflops": round(matmul_tflops(p, per), 6) for p in CALIBRATED}
    peaks["mem_gbps"] = round(memory_gbps(per), 3)
    peaks["op_overhead_us"] = round(op_overhead_us(min(per, 0.5)), 3)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    peaks["achieved"] = True  # measured rates, not datasheet peaks (see hwcost.catalog.Peaks)
    peaks["source"] = (f"calibrated {when} with {torch.get_num_threads()} threads "
                       "(profiles.calibrate: deployed kernels; fp8 emulated on CPU)")
    return peaks
