"""Timing harness: honest latencies of a few candidate callables on one device.

``time_interleaved`` is the one entry point. What it does and why:

- **threads**: on CPU the torch thread count is set explicitly for the run (the backend's
  default, all CPUs this process may use, unless ``threads`` says otherwise) and restored
  afterwards; it is recorded in every :class:`Timing` because it changes timings.
- **warm-up until stable**: every candidate runs until the median of its last few samples
  moves by less than ``warmup_tol`` (allocator, oneDNN primitive caches, lazy init, CPU clocks),
  bounded by ``warmup_max_s``.
- **samples of a sensible length**: a candidate faster than ``min_sample_us`` is called
  ``inner`` times back to back per sample, so timer and sync overhead stay small.
- **interleaved**: samples are taken round-robin, one per candidate per round, in an order
  that alternates direction each round and rotates every second round, so slow drift
  (thermal, other load) hits every candidate alike and cancels in their differences, and
  every candidate runs first in a round equally often. With several candidates each round
  starts with one untimed call of its first one, so that no sample directly follows the
  harness's work between rounds (the load reading), which leaves the caches colder for
  whoever runs next.
- **fresh inputs**: each call takes the next input of ``inputs`` (rotating), so a candidate is
  not flattered by finding its operands in cache from the previous call. With
  ``evict_bytes``, a buffer larger than the last-level cache is written before every sample
  (one call each), so weights come from memory too (campaigns do it when the model's
  weights exceed the cache: there a piece timed alone would otherwise read them hot).
- **synchronised**: on CUDA each sample is timed with CUDA events; elsewhere with
  ``perf_counter`` after ``backend.synchronize()`` (``torch.hpu.synchronize()`` on Gaudi).
- **median and spread**: the reported latency is the median; the spread is half the
  interquartile range. When any candidate's relative spread exceeds the policy's
  ``remeasure_spread``, the batch is measured again (fresh samples), up to ``max_seconds``;
  the batch with the lowest worst-case spread is kept whole, so candidates are still compared
  on the same rounds. Above the policy's ``max_spread`` (the refusal limit) the kept batch is
  not stable.
- **a quiet machine**: every batch is judged by a :class:`~profiles.stability.StabilityPolicy`
  on spread, the drift of the ``baseline`` candidate between the first and second half of its
  rounds, and the machine's load (runnable tasks per CPU, read once per round). A batch that
  fails on load or drift is measured again after a pause, within the policy's budget; when
  none passes, the timings come back with ``stable=False`` and ``reason`` (the figure that
  failed), and callers store them as unstable, never as good.
- **provenance**: each Timing records its clock, threads, spread, baseline drift, load (mean
  runnable tasks per CPU and the 1-minute load average) and the CPU frequency where readable.
- ``torch.inference_mode`` and the garbage collector paused while timing.
- **a steady allocator**: glibc's malloc thresholds are pinned (``profiles.allocator``), so
  whether a call's temporaries page-fault does not depend on what the process allocated
  before: a subgraph and the whole model are timed in the same steady state.
- **clock**: wall time by default. On a shared CPU, ``clock="thread"`` (or
  ``HWCOST_BENCH_CLOCK=thread``) with one torch thread times the calling thread's CPU time,
  which leaves out the time slices other processes take; each Timing records its clock.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from hwcost.profiles.allocator import steady_allocator
from hwcost.profiles.backends import Backend, get_backend
from hwcost.profiles.stability import (
    StabilityPolicy,
    Verdict,
    cpu_mhz,
    drift,
    drift_noise,
    judge,
    load1,
    usable_cpus,
)

CLOCK_ENV = "HWCOST_BENCH_CLOCK"
"""Environment variable choosing the default clock (``wall`` or ``thread``), so a whole
campaign on a shared machine can time CPU time without changing every caller."""


@dataclass(frozen=True)
class Timing:
    """One candidate's latency: median and half-IQR over ``n_samples`` samples (microseconds
    per call), the host threads used, how many calls each sample averaged (``inner``),
    whether the spread met the requested tolerance (``stable``) and the fastest sample
    (``min_us``: a diagnostic for contended machines, where stolen time only adds)."""

    median_us: float
    spread_us: float
    n_samples: int
    threads: int | None
    inner: int = 1
    stable: bool = True
    min_us: float | None = None
    clock: str = "wall"
    drift: float | None = None  # the baseline's relative drift between halves of the rounds
    load: float | None = None  # mean runnable tasks per usable CPU during the kept batch
    load1: float | None = None  # os.getloadavg()[0] at the end
    cpu_mhz: float | None = None  # mean current CPU frequency at the end, where readable
    reason: str = ""  # why the batch is not stable (empty when it is)
    # what ``load`` counted: "cpus 1" (our affinity, a strict subset), "machine" or "caller"
    load_scope: str = ""
    # the kept batch's samples, for merging passes (profiles.passes.merge_passes); not output
    samples_us: tuple[float, ...] = field(default=(), repr=False)

    @property
    def rel_spread(self) -> float:
        return self.spread_us / self.median_us if self.median_us > 0 else math.inf

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["samples_us"]
        return out


def summarize(samples_us: Sequence[float]) -> tuple[float, float]:
    """``(median, half interquartile range)`` of samples."""
    if not samples_us:
        raise ValueError("no samples")
    if len(samples_us) < 4:
        return statistics.median(samples_us), (max(samples_us) - min(samples_us)) / 2
    q1, q2, q3 = statistics.quantiles(samples_us, n=4, method="inclusive")
    return q2, (q3 - q1) / 2


@contextmanager
def _timing_context(backend: Backend, threads: int | None) -> Iterator[int]:
    """Threads pinned, inference mode, GC paused; yields the thread count in effect."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    gc_was_enabled = gc.isenabled()
    # no gc.collect() first: a full collection after importing transformers costs seconds
    # per call, and disabling is what keeps collection pauses out of the samples
    gc.disable()
    try:
        with torch.inference_mode():
            yield torch.get_num_threads()
    finally:
        if gc_was_enabled:
            gc.enable()
        torch.set_num_threads(before)


def _cpu0_caches() -> list[tuple[int, int, str]]:
    """CPU 0's caches from ``/sys``: (level, size in bytes, ``shared_cpu_list``); empty where
    the kernel does not say."""
    out = []
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((d / "level").read_text())
            size = (d / "size").read_text().strip()
            shared = (d / "shared_cpu_list").read_text().strip()
            unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
            out.append((level, int(size.rstrip("KMG")) * unit, shared))
        except (OSError, ValueError):
            continue
    return out


def last_level_cache_bytes(backend: Backend) -> int | None:
    """Size of the device's last-level cache: the highest ``cache/index*`` level of CPU 0 in
    ``/sys`` on CPU, ``L2_cache_size`` on CUDA; None when unknown."""
    if backend.kind == "cuda":
        return int(torch.cuda.get_device_properties(backend.device).L2_cache_size) or None
    if backend.kind != "cpu":
        return None
    return max(((level, n) for level, n, _ in _cpu0_caches()), default=(0, 0))[1] or None


def last_level_cache_cpus(backend: Backend) -> int:
    """How many CPUs share CPU 0's last-level cache (its ``shared_cpu_list`` in ``/sys``);
    1 elsewhere or unknown."""
    if backend.kind != "cpu":
        return 1
    caches = _cpu0_caches()
    if not caches:
        return 1
    _, _, shared = max(caches)
    n = 0
    for part in shared.split(","):
        lo, _, hi = part.partition("-")
        try:
            n += int(hi or lo) - int(lo) + 1
        except ValueError:
            return 1
    return max(1, n)


def private_cache_bytes(backend: Backend) -> int | None:
    """Size of the largest CPU cache level private to one core (CPU 0's caches whose
    ``shared_cpu_list`` names one CPU: the L2 on most x86 parts); None elsewhere or unknown."""
    if backend.kind != "cpu":
        return None
    private = [(level, n) for level, n, shared in _cpu0_caches()
               if "," not in shared and "-" not in shared]
    return max(private, default=(0, 0))[1] or None


class _Evictor:
    """Reads a buffer before a sample, so the sample finds its weights where the other layers
    of a model leave them: in memory when the buffer exceeds the last-level cache, out of a
    core's private cache when it exceeds that.

    Read, not written: in a model the other layers read their weights, which leaves clean
    lines; a written buffer leaves dirty ones, which a sample then writes back for every
    line it brings in, so a candidate that reads more bytes paid more. Measured on the wide
    Llama's decode step (107 MB of weights, kv=256, one window with the whole model): the
    pieces' int8_wo/int4_wo gains summed to 1.10x/1.09x the model's after a written buffer,
    1.02x/0.99x after a read one."""

    def __init__(self, backend: Backend, nbytes: int, buf: torch.Tensor | None = None) -> None:
        self.buf = buf if buf is not None else torch.ones(max(1, nbytes // 4),
                                                           dtype=torch.float32,
                                                           device=backend.device)
        self.backend = backend
        self.backend.synchronize()  # filled once: read since, its lines are clean ones

    def sized(self, nbytes: int) -> _Evictor:
        """An evictor reading the first ``nbytes`` of this one's buffer (no new memory)."""
        return _Evictor(self.backend, nbytes, self.buf[:max(1, nbytes // 4)])

    def __call__(self) -> None:
        self.last = self.buf.sum()
        self.backend.synchronize()


class _Runner:
    """Calls one candidate on rotating inputs and times samples on the backend's clock."""

    def __init__(self, fn: Callable[[Any], Any], inputs: Sequence[Any], backend: Backend,
                 offset: int, clock: str = "wall",
                 before: Callable[[], Any] | None = None) -> None:
        self.fn, self.inputs, self.backend = fn, inputs, backend
        self.i = offset  # candidates start at different inputs
        self.inner = 1
        self.cuda = backend.kind == "cuda"
        self.now = time.thread_time if clock == "thread" else time.perf_counter
        # run untimed before every sample (an _Evictor, or a caller's ``prepare``): samples
        # are then one call each, each after it
        self.before = before

    def _calls(self, n: int) -> None:
        fn, inputs = self.fn, self.inputs
        for _ in range(n):
            fn(inputs[self.i % len(inputs)])
            self.i += 1

    def rewarm(self) -> None:
        """One untimed call (none when every sample has its own untimed work before it)."""
        if self.before is None:
            self._calls(1)

    def sample(self) -> float:
        """Microseconds per call, averaged over ``inner`` calls."""
        if self.before is not None:
            self.inner = 1
            self.before()
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            self._calls(self.inner)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e3 / self.inner
        self.backend.synchronize()
        t0 = self.now()
        self._calls(self.inner)
        self.backend.synchronize()
        return (self.now() - t0) * 1e6 / self.inner


def _order(names: list[str], round_no: int) -> list[str]:
    """Round-robin order that alternates direction each round and rotates every second
    round, so that over ``2 * len(names)`` rounds every candidate runs first (and last) equally
    often and follows each of its neighbours alike.

    (Rotating every round and reversing every other one cancels out for an even number of
    candidates: two candidates always ran in the same order, and of four only the even
    positions ever ran first. The first sample of a round follows the harness's own work
    between rounds, the load reading, which on a pinned CPU scans every thread's
    ``/proc`` entry: measured on a compiled whole model, a 1-3 % penalty for whoever runs
    first, so the first of two candidates read slower in every round.)"""
    k = (round_no // 2) % len(names)
    rotated = names[k:] + names[:k]
    return rotated if round_no % 2 == 0 else rotated[::-1]


def _warm_up(runners: dict[str, _Runner], min_sample_us: float, tol: float, window: int,
             max_s: float) -> None:
    deadline = time.perf_counter() + max_s
    for r in runners.values():  # first calls: lazy init, primitive creation
        r.sample()
    for r in runners.values():
        r.inner = max(1, math.ceil(min_sample_us / max(r.sample(), 1e-3)))
    history: dict[str, list[float]] = {n: [] for n in runners}
    pending = set(runners)
    round_no = 0
    while pending and time.perf_counter() < deadline:
        for name in _order(list(runners), round_no):
            history[name].append(runners[name].sample())
        round_no += 1
        for name in list(pending):
            h = history[name]
            if len(h) >= 2 * window:
                prev, last = statistics.median(h[-2 * window:-window]), statistics.median(h[-window:])
                if abs(last - prev) <= tol * prev:
                    pending.discard(name)
    # recalibrate on warm timings: the first calls overstate the cost of a fast candidate
    for name, r in runners.items():
        if history[name]:
            warm = statistics.median(history[name][-window:])
            r.inner = max(1, math.ceil(min_sample_us / max(warm, 1e-3)))


def time_interleaved(
    fns: Mapping[str, Callable[[Any], Any]],
    inputs: Sequence[Any],
    backend: Backend | str = "cpu",
    *,
    threads: int | None = None,
    warmup_tol: float = 0.05,
    warmup_window: int = 3,
    warmup_max_s: float = 2.0,
    min_samples: int = 15,
    max_seconds: float = 5.0,
    min_sample_us: float = 200.0,
    clock: str | None = None,
    baseline: str | None = None,
    policy: StabilityPolicy | None = None,
    evict_bytes: int | Mapping[str, int] = 0,
    evict_skip: Collection[str] = (),
    prepare: Mapping[str, Callable[[], Any]] | None = None,
    on_round: Callable[[int, int], None] | None = None,
) -> dict[str, Timing]:
    """Time each callable of ``fns`` on ``inputs``, interleaved; see the module docstring.

    Args:
        fns: name -> callable taking one element of ``inputs``.
        inputs: distinct inputs, used in rotation (give several so caches don't flatter).
        backend: the device the callables run on (decides sync and the clock).
        threads: CPU threads to time with (default: the backend's default, all usable CPUs).
        warmup_tol, warmup_window, warmup_max_s: warm-up ends when the medians of two
            consecutive windows of samples agree within ``warmup_tol``, or after the time limit.
        min_samples: samples per candidate in one measurement batch.
        max_seconds: time budget for re-measuring a batch whose spread is above the
            policy's ``remeasure_spread`` (at least one batch is always taken).
        min_sample_us: a sample averages enough calls to last at least this long.
        clock: ``wall`` (default), or ``thread``: the calling thread's CPU time, which leaves
            out the time other processes hold the CPU. Only for the CPU backend with one
            thread (the ops then run on the calling thread); it does not count sleeping or
            waiting, so it is for compute on a shared machine, not for I/O. Default:
            ``$HWCOST_BENCH_CLOCK``, else ``wall``.
        baseline: the name in ``fns`` whose drift between rounds is judged (default: the
            worst drift of all candidates).
        evict_bytes: when positive, write a buffer of this many bytes (choose more than
            the last-level cache, :func:`last_level_cache_bytes`) before every sample, and
            time one call per sample: weights are then read from memory, as they are in a
            model too large for the cache, instead of flattering memory-bound candidates.
            A mapping gives each candidate its own size (absent or 0: none), read from one
            buffer: at a decode shape a piece in a smaller format finds its weights where a
            deployment in that format leaves them (``profiles.campaign``).
        evict_skip: names in ``fns`` timed without that eviction (a whole model, whose own
            pass leaves the caches as it runs them).
        prepare: name -> a callable run untimed before each of that candidate's samples,
            instead of any eviction: e.g. the same decode step, so a whole model finds the
            caches as its previous step in ``generate()`` leaves them.
        policy: when a batch is re-measured, when it is stable and how long to wait for
            one (default :meth:`StabilityPolicy.from_env`: spread 5 % re-measure / 15 %
            refusal, load, drift, 30 s budget).
        on_round: called after every round (one sample of each callable) with the rounds
            taken and the rounds planned so far (``min_samples`` per batch; a batch measured
            again adds as many): a progress bar's tick, no timing depends on it.

    Returns:
        name -> :class:`Timing` (microseconds per call). ``stable`` is False, with
        ``reason``, when no batch passed the policy within its budget.
    """
    if not fns:
        raise ValueError("no callables to time")
    if not inputs:
        raise ValueError("no inputs to time with")
    if min_samples < 3:
        raise ValueError("min_samples must be at least 3")
    if baseline is not None and baseline not in fns:
        raise ValueError(f"baseline {baseline!r} is not one of the callables")
    policy = policy or StabilityPolicy.from_env()
    backend = get_backend(backend)
    backend.require()
    if threads is None:
        threads = backend.default_threads()
    clock = clock or os.environ.get(CLOCK_ENV) or "wall"
    if clock not in ("wall", "thread"):
        raise ValueError(f"unknown clock {clock!r}; known: wall, thread")
    if clock == "thread" and (backend.kind != "cpu" or threads != 1):
        raise ValueError("the thread CPU-time clock needs the cpu backend and threads=1 "
                         f"(got {backend.kind}, threads={threads})")
    steady_allocator()  # before warm-up: the steady state is then reached while warming up
    names = list(fns)
    cpus = usable_cpus()
    start = time.perf_counter()
    with _timing_context(backend, threads) as used_threads:
        sizes = (dict.fromkeys(names, evict_bytes) if isinstance(evict_bytes, int)
                 else {n: int(evict_bytes.get(n, 0)) for n in names})
        sizes = {n: 0 if n in evict_skip else b for n, b in sizes.items()}
        evict = _Evictor(backend, max(sizes.values())) if max(sizes.values()) > 0 else None
        prepare = prepare or {}
        runners = {n: _Runner(fns[n], inputs, backend, offset=k, clock=clock,
                              before=prepare.get(n) or (evict.sized(sizes[n])
                                                        if evict and sizes[n] > 0 else None))
                   for k, n in enumerate(names)}
        _warm_up(runners, min_sample_us, warmup_tol, warmup_window, warmup_max_s)
        best: tuple[tuple, dict[str, list[float]], Verdict] | None = None
        round_no = 0
        while True:
            batch: dict[str, list[float]] = {n: [] for n in names}
            loads: list[float] = []
            for _ in range(min_samples):
                order = _order(names, round_no)
                # one untimed call first: the round's first sample then follows a candidate's
                # call like every other sample, not the load reading's sweep through /proc
                # (a lone candidate has no rival to be unfair to: it is not worth doubling
                # a whole model's timing)
                if len(order) > 1:
                    runners[order[0]].rewarm()
                for name in order:
                    batch[name].append(runners[name].sample())
                round_no += 1
                if on_round is not None:
                    on_round(round_no, min_samples * (1 + (round_no - 1) // min_samples))
                reading = policy.read_load()
                if reading is not None:
                    loads.append(reading)
            worst = max(_rel(batch[n]) for n in names)
            # the baseline's drift, or without one the drift that stands out most from its
            # own scatter
            moved, noise = max(((drift(batch[n]), drift_noise(batch[n]))
                                for n in ([baseline] if baseline else names)),
                               key=lambda d: d[0] - policy.drift_sigmas * d[1])
            verdict = judge(worst, moved, loads, cpus, policy, drift_noise=noise)
            rank = (not verdict.ok, worst)  # a stable batch first, then the tightest
            if best is None or rank < best[0]:
                best = (rank, batch, verdict)
            spent = time.perf_counter() - start
            if verdict.ok:
                # passed the refusal limits; above the re-measure limit try for a tighter
                # batch while max_seconds lasts (the best one is kept either way)
                if not policy.remeasure(worst) or spent > max_seconds:
                    break
                continue
            if verdict.machine_busy and spent + policy.wait_s < policy.budget_s:
                time.sleep(policy.wait_s)  # let the other job pass before measuring again
                continue
            if spent > max(max_seconds, policy.budget_s):
                break
    _, kept, verdict = best
    extra = {"drift": round(verdict.drift, 5), "load": _round(verdict.load), "load1": load1(),
             "cpu_mhz": cpu_mhz(), "reason": verdict.reason, "load_scope": policy.load_scope()}
    out = {}
    for n in names:
        median, spread = summarize(kept[n])
        out[n] = Timing(median, spread, len(kept[n]), used_threads, runners[n].inner, verdict.ok,
                        min(kept[n]), clock, **extra, samples_us=tuple(kept[n]))
    return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _rel(samples: list[float]) -> float:
    median, spread = summarize(samples)
    return spread / median if median > 0 else math.inf


def time_one(fn: Callable[[Any], Any], inputs: Sequence[Any], backend: Backend | str = "cpu",
             **kwargs: Any) -> Timing:
    """:func:`time_interleaved` for a single callable."""
    return time_interleaved({"fn": fn}, inputs, backend, **kwargs)["fn"]
