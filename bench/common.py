"""Set-up the timing benchmarks share (``bench/additivity.py``, ``bench/decode.py``); they run
from the repository root, which they put on ``sys.path``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from hwcost.profiles.backends import get_backend
from hwcost.profiles.bench import CLOCK_ENV


class CpuTiming(NamedTuple):
    """What a CPU benchmark times with, and the load average before it started."""

    load_before: tuple[float, float, float]
    backend: Any
    threads: int


def cpu_timing(threads: int | None, clock: str, error: Callable[[str], Any]) -> CpuTiming:
    """Read the load average, set torch's threads (default: the backend's) and the clock that
    every timing of this process uses, campaign and generate() timings included. ``error``
    (``ArgumentParser.error``) refuses the thread clock with more than one thread: it counts
    the calling thread's CPU time only."""
    load_before = os.getloadavg()
    backend = get_backend("cpu")
    threads = threads or backend.default_threads()
    torch.set_num_threads(threads)
    if clock == "thread" and threads != 1:
        error("--clock thread needs --threads 1")
    os.environ[CLOCK_ENV] = clock
    return CpuTiming(load_before, backend, threads)
