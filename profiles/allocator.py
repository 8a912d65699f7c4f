"""A steady host allocator while timing: glibc malloc's moving thresholds pinned.

glibc serves a block above ``M_MMAP_THRESHOLD`` (128 KiB at start) with a fresh ``mmap``,
whose pages fault in (the kernel zeroes them) on first touch and go back to the system on
``free``; it raises that threshold to the size of each such block freed, and trims the heap
top above ``M_TRIM_THRESHOLD``. So whether a forward pass's temporaries (a deployed layer's
quantized input, the upcast weight of an emulated fp8 GEMM, an int32 accumulator) cost page
faults depends on what the process allocated before. A subgraph timed after one history and
the whole model after another then pay different kernel time for the same work, and the
difference is neither noise nor additive: on the demo model, a mixed int8/fp8 configuration
took ~1300 minor faults (3.3 ms of system time, ~10 % of the forward) per whole-model call
after a profiling campaign, and its pieces almost none; with the thresholds pinned, no timed
call of either faults after warm-up.

:func:`steady_allocator` pins both (``mallopt``, which also turns glibc's adjustment off), so
freed blocks are reused and every candidate is timed in the steady state a long-running
server reaches (servers preload jemalloc or tcmalloc for the same reason). The harness
(``profiles.bench.time_interleaved``) calls it before timing. ``HWCOST_MALLOC=dynamic``
leaves glibc as it is (to compare); elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource

MALLOC_ENV = "HWCOST_MALLOC"
"""``dynamic`` leaves glibc's thresholds moving (the default process behaviour)."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30
"""Blocks up to this size come from the heap and are reused, not mapped per allocation."""
TRIM_THRESHOLD = 1 << 30
"""Free memory at the heap top the process keeps instead of returning it (and faulting it
back in on the next forward)."""

_state: dict[str, bool] = {}


def steady_allocator() -> bool:
    """Pin glibc's mmap and trim thresholds for the rest of the process (once); True when
    they are pinned, False where the allocator is not glibc's or ``HWCOST_MALLOC=dynamic``."""
    if "pinned" in _state:
        return _state["pinned"]
    pinned = False
    if os.environ.get(MALLOC_ENV, "").strip().lower() != "dynamic":
        libc = _glibc()
        if libc is not None:
            # the mmap threshold first: setting it is what turns the dynamic adjustment off
            pinned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                          and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _state["pinned"] = pinned
    return pinned


def minor_faults() -> int:
    """Minor page faults of the calling thread so far (of the process where the platform
    has no per-thread figure)."""
    who = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
    return resource.getrusage(who).ru_minflt


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        return libc
    except (OSError, AttributeError):
        return None
