"""A campaign worker's loop over the queue (``hwcost.queue``): claim a unit, measure it,
write it, keep the claim alive with a heartbeat, take over dead workers' claims, and say what
is left when stopping. ``hwcost profile --worker`` runs it with real measurements; tests and
``bench/fleet.py`` with stand-ins."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from hwcost.queue import (
    STALE_AFTER_S,
    Heartbeat,
    Progress,
    Unit,
    claim,
    complete_unit,
    heartbeat_interval,
    other_claims,
    progress,
    release,
)


@dataclass(frozen=True)
class WorkResult:
    """What one worker's loop did and what it left: ``left`` is the campaign's task counts
    when it stopped, ``live`` the other workers still holding units then."""

    units: int
    measured: int
    failed: int
    lost: int
    left: Progress
    live: dict[str, int]


def work(store, campaign: int, worker: str, measure: Callable[[Unit], tuple[list, dict]], *,
         stale_after_s: float = STALE_AFTER_S,
         after_unit: Callable[[], None] | None = None) -> WorkResult:
    """Claim units one at a time until none is left, measuring each with ``measure(unit)``
    -> (measurements, {task id: error}) and writing it with :func:`complete_unit`, while a
    :class:`Heartbeat` keeps the claim alive.

    With nothing to claim, the worker waits while another worker's claim looks dead (no
    heartbeat for two beats) and takes it over once it is stale; it stops when the rest is
    held by live workers (they finish it) or nothing is open.
    """
    release(store, campaign, worker)  # a restarted worker of this name resumes its claims
    beat = heartbeat_interval(stale_after_s)
    units = measured = failed = lost = 0
    with Heartbeat(store, campaign, worker, beat):
        while True:
            got = claim(store, campaign, worker, 1, stale_after_s=stale_after_s)
            if not got:
                others = other_claims(store, campaign, worker, suspect_after_s=2 * beat)
                if others.suspect:
                    time.sleep(beat)
                    continue
                break
            for unit in got:
                rows, errors = measure(unit)
                if complete_unit(store, unit, worker, rows, errors):
                    units += 1
                    measured += len(rows)
                    failed += len(errors)
                else:
                    lost += len(unit.tasks)
            if after_unit is not None:
                after_unit()
    return WorkResult(units, measured, failed, lost, progress(store, campaign), others.live)


def what_is_left(name: str, left: Progress, live: dict[str, int]) -> str:
    """One line for a worker that stops: complete, or what remains and how to finish it."""
    if not left.open and not left.failed and not left.cancelled:
        return f"campaign {name} complete: {left.done}/{left.total} tasks done"
    parts = [f"{left.done}/{left.total} tasks done"]
    if left.claimed:
        parts.append(f"{left.claimed} claimed by live workers "
                     f"{', '.join(sorted(live)) or '-'}, who finish them")
    if left.pending:
        parts.append(f"{left.pending} pending")
    if left.failed:
        parts.append(f"{left.failed} failed (`hwcost campaign retry {name}` reopens them)")
    if left.cancelled:
        parts.append(f"{left.cancelled} cancelled (`hwcost campaign retry {name}` resumes)")
    return f"campaign {name} not complete: " + "; ".join(parts)
