"""Timing in passes: the same candidates timed at several moments, each pass with its share
of the harness's options, merged into one timing per candidate.

A shared machine's level wanders by tens of percent over seconds to minutes (other tenants
of the shared cache and memory); a timing taken once carries its own moment's level. Timed
in passes spread over a longer span, every timing carries the same mixture of moments. The
campaign's groups (``TimingOptions.passes``, :func:`merge_passes`) and a workload's
whole-model windows (``TimingOptions.window_passes``, ``profiles.window.time_windows``,
:func:`mean_timing`) are timed so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from hwcost.profiles.stability import StabilityPolicy, judge, machine_busy


def share_of(kwargs: dict, share: int) -> dict:
    """The harness's options (``TimingOptions.kwargs()``) for one of ``share`` passes: its
    share of the samples (at least three), of the re-measuring time and of the stability
    policy's budget for waiting on a quiet machine, so passes take no longer than one."""
    if share <= 1:
        return kwargs
    policy = kwargs.get("policy") or StabilityPolicy.from_env()
    return {**kwargs, "min_samples": max(3, -(-kwargs["min_samples"] // share)),
            "max_seconds": kwargs["max_seconds"] / share,
            "policy": replace(policy, budget_s=policy.budget_s / share)}


def mean_timing(timings: Sequence[Any]) -> Any:
    """One Timing of several passes of the same candidate: the mean of their medians and
    spreads (means, so a sum of pieces' timings stays the mean of the passes' sums), their
    samples together, stable when every pass is, the largest drift."""
    first = timings[0]
    if len(timings) == 1:
        return first
    n = len(timings)
    mins = [t.min_us for t in timings if t.min_us is not None]
    drifts = [t.drift for t in timings if t.drift is not None]
    loads = [t.load for t in timings if t.load is not None]
    mhz = [t.cpu_mhz for t in timings if t.cpu_mhz is not None]
    return replace(first, median_us=sum(t.median_us for t in timings) / n,
                   spread_us=sum(t.spread_us for t in timings) / n,
                   n_samples=sum(t.n_samples for t in timings),
                   samples_us=tuple(x for t in timings for x in t.samples_us),
                   stable=all(t.stable for t in timings),
                   min_us=min(mins) if mins else None,
                   drift=max(drifts, key=abs) if drifts else None,
                   load=sum(loads) / len(loads) if loads else None,
                   load1=timings[-1].load1,
                   cpu_mhz=sum(mhz) / len(mhz) if mhz else None,
                   reason=next((t.reason for t in timings if t.reason), ""))


def merge_passes(passes: Sequence[Mapping[str, Any]], policy: Any = None) -> dict[str, Any]:
    """One interleaved group's timings over several passes (``{name: Timing}`` each) as one:
    each candidate's :func:`mean_timing`, with as its spread the half-IQR of every pass's
    samples over that pass's own median (times the mean): the measurement's scatter without
    the level moves between passes, which the passes are there to average. The group is
    judged again as one batch by ``policy`` (default ``StabilityPolicy.from_env()``):
    refused when a pass was refused for load or drift, or when its worst pooled spread is
    above the policy's ``max_spread``. A pass alone (a few samples) is not judged on its
    spread: three samples' range refused 800 of 816 timings that nine in one batch did not.
    Only candidates timed in every pass are kept."""
    from hwcost.profiles.bench import summarize

    keys = [k for k in passes[0] if all(k in p for p in passes)]
    if len(passes) == 1:
        return {k: passes[0][k] for k in keys}
    merged = {}
    for k in keys:
        runs = [p[k] for p in passes]
        m = mean_timing(runs)
        rel = [x / t.median_us for t in runs if t.median_us > 0 for x in t.samples_us]
        if rel:
            m = replace(m, spread_us=summarize(rel)[1] * m.median_us)
        merged[k] = m
    busy = next((t.reason for p in passes for t in p.values() if machine_busy(t.reason)), "")
    worst = max((m.rel_spread for m in merged.values()), default=0.0)
    reason = busy or judge(worst, 0.0, (), 1, policy or StabilityPolicy.from_env()).reason
    return {k: replace(m, stable=not reason, reason=reason) for k, m in merged.items()}
