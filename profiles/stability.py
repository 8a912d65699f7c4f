"""Is the machine quiet enough to time on? Readings of its state and the policy that judges them.

A timing harness can make a disturbed batch *look* precise (medians of interleaved samples are
robust), so spread alone does not catch a machine that is busy throughout. Three signals are
judged on every timed batch (``profiles.bench.time_interleaved``):

- **spread**: half the inter-quartile range over the median, per candidate;
- **drift** of the baseline: the median of its second half of rounds against its first half
  (slow changes: thermal throttling, a job that started or stopped mid-way);
- **load**: runnable tasks on the machine during the batch, ours included, per usable CPU
  (``procs_running`` of ``/proc/stat``, read once per round; it reacts within a round, where
  the 1-minute ``os.getloadavg`` lags by tens of seconds and is only recorded).

Spread has two limits: above ``remeasure_spread`` a batch is measured again (fresh samples,
within the harness's ``max_seconds``) in the hope of a tighter one; above ``max_spread`` the
batch is refused. A batch that fails on load, drift or ``max_spread`` is measured again after a
pause, within the policy's budget; a batch that still fails is returned with ``stable=False``
and the reason, which callers store as unstable.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STABILITY_ENV = "HWCOST_STABILITY"
"""Environment variable choosing the default :class:`StabilityPolicy` (see ``from_env``)."""


def runnable_tasks() -> float | None:
    """Tasks running or runnable right now on the whole machine (``procs_running``), or None
    where ``/proc/stat`` does not exist (not Linux)."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"procs_running"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def load1() -> float | None:
    """The 1-minute load average (recorded with each measurement), or None if unavailable."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def cpu_mhz() -> float | None:
    """Mean current frequency of the CPUs this process may use, in MHz: ``cpufreq`` in
    ``/sys`` when the kernel exposes it, else ``cpu MHz`` of ``/proc/cpuinfo``; None when
    neither says (VMs often hide it)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    vals = []
    for c in cpus:
        p = Path(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq")
        try:
            vals.append(float(p.read_text()) / 1000.0)
        except (OSError, ValueError):
            break
    if vals:
        return round(statistics.fmean(vals), 1)
    try:
        mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.startswith("cpu MHz")]
    except (OSError, ValueError, IndexError):
        return None
    picked = [mhz[c] for c in cpus if c < len(mhz)] or mhz
    return round(statistics.fmean(picked), 1) if picked else None


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class StabilityPolicy:
    """When a timed batch counts as stable, and how long to wait for one that is not.

    Args:
        remeasure_spread: half-IQR / median above which a batch is measured again while the
            harness's ``max_seconds`` lasts (the tightest batch is kept); below it a batch is
            taken at once. Re-measuring, not refusing.
        max_spread: half-IQR / median above which the kept batch is refused: stored as
            unstable, never as good. A batch above it is re-measured within ``budget_s`` too.
        max_drift: largest relative change of the baseline's median between the first and
            the second half of a batch's rounds (``inf``: not judged).
        max_load: largest mean number of runnable tasks per usable CPU during a batch, ours
            included (None: not judged). 1.0 means every CPU busy; above it, someone waits.
        wait_s: pause before re-measuring a batch that failed on load or drift.
        budget_s: total seconds a call may spend waiting and re-measuring for a stable batch
            (0: judge and report, never wait).
        load_reader: returns the runnable-task count (default :func:`runnable_tasks`); a
            parameter so a caller can read another source (a container's cgroup, say).
    """

    # 15 %: 5 % refused 132 of the demo's 136 timings on a quiet 2-core VM (the worst of 64
    # interleaved configs had 9.4 %); load and baseline drift still refuse a busy machine
    remeasure_spread: float = 0.05
    max_spread: float = 0.15
    max_drift: float = 0.05
    max_load: float | None = 1.25
    wait_s: float = 2.0
    budget_s: float = 30.0
    load_reader: Callable[[], float | None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.max_drift < 0 or self.wait_s < 0 or self.budget_s < 0:
            raise ValueError("stability limits must be non-negative")
        if not 0 < self.remeasure_spread <= self.max_spread:
            raise ValueError(f"spread limits must satisfy 0 < remeasure_spread "
                             f"({self.remeasure_spread}) <= max_spread ({self.max_spread})")
        if self.max_load is not None and self.max_load <= 0:
            raise ValueError("max_load must be positive (runnable tasks per CPU)")

    @classmethod
    def lenient(cls) -> StabilityPolicy:
        """Judge spread only, never wait: for tests and smoke runs on a shared machine."""
        return cls(max_drift=math.inf, max_load=None, wait_s=0.0, budget_s=0.0)

    @classmethod
    def from_env(cls) -> StabilityPolicy:
        """The default policy: ``$HWCOST_STABILITY`` = ``strict`` (the default: judge, wait
        up to 30 s), ``report`` (judge load, drift and spread; never wait) or ``lenient``
        (spread only, never wait)."""
        mode = os.environ.get(STABILITY_ENV, "strict")
        if mode == "strict":
            return cls()
        if mode == "report":
            return cls(wait_s=0.0, budget_s=0.0)
        if mode == "lenient":
            return cls.lenient()
        raise ValueError(f"{STABILITY_ENV}={mode!r}; known: strict, report, lenient")

    def remeasure(self, worst_spread: float) -> bool:
        """Whether a batch with this worst relative spread is worth measuring again."""
        return worst_spread > self.remeasure_spread

    def read_load(self) -> float | None:
        return (self.load_reader or runnable_tasks)()


def drift(samples_in_round_order: Sequence[float]) -> float:
    """Relative change between the medians of the first and the second half of the samples."""
    n = len(samples_in_round_order)
    if n < 4:
        return 0.0
    first = statistics.median(samples_in_round_order[: n // 2])
    second = statistics.median(samples_in_round_order[n // 2:])
    mid = statistics.median(samples_in_round_order)
    return abs(second - first) / mid if mid > 0 else math.inf


@dataclass(frozen=True)
class Verdict:
    """How one timed batch fared: the figures and, when it failed, why (one phrase)."""

    worst_spread: float
    drift: float
    load: float | None  # mean runnable tasks per usable CPU
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason

    @property
    def machine_busy(self) -> bool:
        """Failed on load or drift: waiting may help, re-measuring at once will not."""
        return bool(self.reason) and not self.reason.startswith("spread")


def judge(worst_spread: float, baseline_drift: float, load_readings: Sequence[float],
          cpus: int, policy: StabilityPolicy) -> Verdict:
    """The verdict on one batch (refusal limits only; whether to re-measure a passing batch
    is :meth:`StabilityPolicy.remeasure`); the first failing signal names the reason."""
    load = statistics.fmean(load_readings) / cpus if load_readings else None
    reason = ""
    if policy.max_load is not None and load is not None and load > policy.max_load:
        reason = f"load {load:.2f} runnable tasks per CPU > {policy.max_load:g}"
    elif baseline_drift > policy.max_drift:
        reason = f"baseline drift {baseline_drift:.1%} > {policy.max_drift:.0%}"
    elif worst_spread > policy.max_spread:
        reason = f"spread {worst_spread:.1%} > {policy.max_spread:.0%}"
    return Verdict(worst_spread, baseline_drift, load, reason)
