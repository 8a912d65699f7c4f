"""Is the machine quiet enough to time on? Readings of its state and the policy that judges them.

A timing harness can make a disturbed batch *look* precise (medians of interleaved samples are
robust), so spread alone does not catch a machine that is busy throughout. Three signals are
judged on every timed batch (``profiles.bench.time_interleaved``):

- **spread**: half the inter-quartile range over the median, per candidate;
- **drift** of the baseline: the median of its second half of rounds against its first half
  (slow changes: thermal throttling, a job that started or stopped mid-way), judged only
  where it exceeds what the samples' own scatter explains (:func:`drift_noise`);
- **load**: runnable tasks during the batch, ours included, per usable CPU, counted on the
  CPUs this process may use (:func:`runnable_tasks`): a benchmark pinned to CPU 1 is judged
  by what competes for CPU 1, not by tests running on CPU 0. Read once per round; it reacts
  within a round, where the 1-minute ``os.getloadavg`` lags by tens of seconds (it is only
  recorded).

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


def machine_runnable() -> float | None:
    """Tasks running or runnable right now on the whole machine (``procs_running`` of
    ``/proc/stat``), or None where it does not exist (not Linux)."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"procs_running"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


# field 39 of /proc/<pid>/task/<tid>/stat, counted from 1 (``processor``: the CPU the task
# last ran on, which for a runnable task is the run queue it waits in); after the ``(comm)``
# field the split starts at field 3 (``state``)
_PROCESSOR = 39 - 3


def runnable_threads(cpus: frozenset[int] | set[int]) -> list[int] | None:
    """Thread ids running or runnable right now (state ``R``) that are queued on one of
    ``cpus``, from every ``/proc/<pid>/task/<tid>/stat`` (about 5 ms for 100 threads), or None
    where ``/proc`` cannot be read. A thread that exits mid-scan is skipped."""
    try:
        pids = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return None
    found = []
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # exited, or not ours to read
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            # the command name may hold spaces and parentheses: split after the last ")"
            fields = raw[raw.rfind(b")") + 2:].split()
            if fields[:1] == [b"R"] and len(fields) > _PROCESSOR:
                try:
                    if int(fields[_PROCESSOR]) in cpus:
                        found.append(int(tid))
                except ValueError:
                    continue
    return found


def runnable_on(cpus: frozenset[int] | set[int]) -> float | None:
    """How many threads are running or runnable on ``cpus`` (:func:`runnable_threads`)."""
    found = runnable_threads(cpus)
    return None if found is None else float(len(found))


def _affinity() -> frozenset[int] | None:
    try:
        return frozenset(os.sched_getaffinity(0))
    except AttributeError:
        return None


def _pinned_cpus() -> frozenset[int] | None:
    """The CPUs this process may use when they are a strict subset of the machine's, else
    None (free to run anywhere, or affinity unknown)."""
    cpus = _affinity()
    if cpus is not None and len(cpus) < (os.cpu_count() or len(cpus)):
        return cpus
    return None


def load_scope() -> str:
    """Which reading :func:`runnable_tasks` takes here: ``"cpus 1,3"`` (the CPUs this process
    may use, a strict subset of the machine's) or ``"machine"`` (``procs_running``)."""
    cpus = _pinned_cpus()
    return "machine" if cpus is None else "cpus " + ",".join(str(c) for c in sorted(cpus))


def runnable_tasks() -> float | None:
    """Tasks running or runnable right now on the CPUs this process may use, ours included.

    When this process is pinned to a strict subset of the machine's CPUs (``taskset``,
    ``os.sched_setaffinity``) this counts the threads queued on those CPUs
    (:func:`runnable_on`), so work pinned to other CPUs is not counted; otherwise the
    whole machine's ``procs_running`` (:func:`machine_runnable`: the same meaning, cheaper).
    None where neither can be read (not Linux). :func:`load_scope` says which is used.
    """
    cpus = _pinned_cpus()
    n = runnable_on(cpus) if cpus is not None else None
    return n if n is not None else machine_runnable()


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
    cpus = sorted(_affinity() or range(os.cpu_count() or 1))
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
    cpus = _affinity()
    return max(1, len(cpus) if cpus is not None else os.cpu_count() or 1)


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
        drift_sigmas: a drift above ``max_drift`` is refused only when it also exceeds this
            many standard errors of the halves' difference (:func:`drift_noise`): a
            change the samples' scatter explains is not a machine that drifted.
        max_load: largest mean number of runnable tasks per usable CPU during a batch, ours
            included (None: not judged). 1.0 means every CPU busy; above it, someone waits.
        wait_s: pause before re-measuring a batch that failed on load or drift.
        budget_s: total seconds a call may spend waiting and re-measuring for a stable batch
            (0: judge and report, never wait).
        load_reader: returns the runnable-task count (default :func:`runnable_tasks`: on the
            CPUs this process may use); a parameter so a caller can read another source (a
            container's cgroup, say).
    """

    # 15 %: 5 % refused 132 of the demo's 136 timings on a quiet 2-core VM (the worst of 64
    # interleaved configs had 9.4 %); load and baseline drift still refuse a busy machine
    remeasure_spread: float = 0.05
    max_spread: float = 0.15
    max_drift: float = 0.05
    # 2: with 15 rounds at an 8 % spread one standard error of the halves' difference is
    # ~5 %, so the 5 % limit alone refused batches for noise (57 of 60 quiet timings of
    # bench/stability.py on a pinned, otherwise idle CPU, median drift 6.9 %, spread 7.7 %)
    drift_sigmas: float = 2.0
    max_load: float | None = 1.25
    wait_s: float = 2.0
    budget_s: float = 30.0
    load_reader: Callable[[], float | None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.max_drift < 0 or self.drift_sigmas < 0 or self.wait_s < 0 or self.budget_s < 0:
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
        """One load reading: the caller's ``load_reader``, else :func:`runnable_tasks`."""
        return (self.load_reader or runnable_tasks)()

    def load_scope(self) -> str:
        """What :meth:`read_load` counts: :func:`load_scope`, or ``"caller"`` for a
        caller-supplied reader."""
        return "caller" if self.load_reader is not None else load_scope()


DRIFT_MIN_SAMPLES = 8
"""Fewer samples judge no drift: halves of under four samples say nothing of a trend, and
their scatter's estimate nothing of the noise. A campaign pass of five samples (15 over
three passes) refused 30 of 60 timings of a quiet run for drift that way."""


def drift(samples_in_round_order: Sequence[float]) -> float:
    """Relative change between the medians of the first and the second half of the samples
    (0.0 for fewer than :data:`DRIFT_MIN_SAMPLES`)."""
    n = len(samples_in_round_order)
    if n < DRIFT_MIN_SAMPLES:
        return 0.0
    first = statistics.median(samples_in_round_order[: n // 2])
    second = statistics.median(samples_in_round_order[n // 2:])
    mid = statistics.median(samples_in_round_order)
    return abs(second - first) / mid if mid > 0 else math.inf


def drift_noise(samples_in_round_order: Sequence[float]) -> float:
    """How large a :func:`drift` the samples' own scatter explains: one standard error of the
    difference between the two halves' medians, relative to the median. Each half's median
    has a standard error of ~1.2533 sigma / sqrt(n) for normal scatter, sigma estimated from
    that half's own inter-quartile range (IQR / 1.349), so a step between the halves does
    not widen its own allowance. 0.0 where :func:`drift` judges none."""
    n = len(samples_in_round_order)
    mid = statistics.median(samples_in_round_order) if n else 0.0
    if n < DRIFT_MIN_SAMPLES or mid <= 0:
        return 0.0
    var = 0.0
    for half in (samples_in_round_order[: n // 2], samples_in_round_order[n // 2:]):
        q1, _, q3 = statistics.quantiles(half, n=4, method="inclusive")
        var += (1.2533 * (q3 - q1) / 1.349) ** 2 / len(half)
    return math.sqrt(var) / mid


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
        return machine_busy(self.reason)


def machine_busy(reason: str) -> bool:
    """Whether a refusal's reason (``Verdict.reason``, ``Timing.reason``) is the machine's
    load or drift rather than the samples' spread."""
    return bool(reason) and not reason.startswith("spread")


def judge(worst_spread: float, baseline_drift: float, load_readings: Sequence[float],
          cpus: int, policy: StabilityPolicy, drift_noise: float = 0.0) -> Verdict:
    """The verdict on one batch (refusal limits only; whether to re-measure a passing batch
    is :meth:`StabilityPolicy.remeasure`); the first failing signal names the reason.
    ``drift_noise`` is the drift the batch's scatter explains (:func:`drift_noise`)."""
    load = statistics.fmean(load_readings) / cpus if load_readings else None
    reason = ""
    if policy.max_load is not None and load is not None and load > policy.max_load:
        reason = f"load {load:.2f} runnable tasks per CPU > {policy.max_load:g}"
    elif baseline_drift > max(policy.max_drift, policy.drift_sigmas * drift_noise):
        if policy.drift_sigmas * drift_noise > policy.max_drift:
            reason = (f"baseline drift {baseline_drift:.1%} > {policy.drift_sigmas:g} standard "
                      f"errors of its samples' scatter ({policy.drift_sigmas * drift_noise:.1%})")
        else:
            reason = f"baseline drift {baseline_drift:.1%} > {policy.max_drift:.0%}"
    elif worst_spread > policy.max_spread:
        reason = f"spread {worst_spread:.1%} > {policy.max_spread:.0%}"
    return Verdict(worst_spread, baseline_drift, load, reason)
