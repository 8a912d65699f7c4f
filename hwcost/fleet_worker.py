"""A campaign worker's loop over the store's work queue: claim a unit, measure it, write it,
keep the claim alive with a heartbeat, take over dead workers' claims, and say what is left
when stopping. ``hwcost profile --worker`` runs it with real measurements; tests and
``bench/fleet.py`` with stand-ins.

The queue itself is the store's (``Store.ensure_campaign``, ``add_tasks``, ``claim_units``,
``complete_unit``, ``heartbeat``, ``release_worker``, ... ; its SQL in
``hwcost/store/campaigns.py``): any number of processes on any number of hosts share a
campaign through the store. Tasks (subgraph, shape, config) are grouped into **units**, all
the configs of one (subgraph, shape), so a baseline and its candidates are timed together on
one host; a claim hands whole units to one worker in one statement (``FOR UPDATE SKIP LOCKED``
on PostgreSQL, one ``BEGIN IMMEDIATE`` transaction on SQLite). A claimed unit carries a
heartbeat (:class:`Heartbeat` refreshes it from a thread); a unit whose heartbeat is older
than ``stale_after_s`` (its worker was killed, its host lost) is handed out again by the same
claiming statement. A unit's measurements and its closing are written in one transaction,
and only while the worker still holds it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from hwcost.store import STALE_AFTER_S, Progress, Unit

__all__ = ["Heartbeat", "WorkResult", "heartbeat_interval", "what_is_left", "work"]


def heartbeat_interval(stale_after_s: float) -> float:
    """Seconds between heartbeats: several per stale period, so one slow beat is no death."""
    return max(0.05, min(10.0, stale_after_s / 6))


class Heartbeat:
    """A daemon thread that beats for ``worker`` every ``interval`` seconds while it runs
    (``with Heartbeat(...):``). A failed beat is retried at the next one: a store hiccup
    shorter than the stale limit costs nothing."""

    def __init__(self, store, campaign: int, worker: str, interval: float):
        self.store, self.campaign, self.worker, self.interval = store, campaign, worker, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{worker}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.store.heartbeat(self.campaign, self.worker)
            except Exception:  # noqa: BLE001 - the next beat retries; a dead store ends the run elsewhere
                pass

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


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
    -> (measurements, {task id: error}) and writing it with ``Store.complete_unit``, while a
    :class:`Heartbeat` keeps the claim alive.

    With nothing to claim, the worker waits while another worker's claim looks dead (no
    heartbeat for two beats) and takes it over once it is stale; it stops when the rest is
    held by live workers (they finish it) or nothing is open.
    """
    store.release_worker(campaign, worker)  # a restarted worker of this name resumes its claims
    beat = heartbeat_interval(stale_after_s)
    units = measured = failed = lost = 0
    with Heartbeat(store, campaign, worker, beat):
        while True:
            got = store.claim_units(campaign, worker, 1, stale_after_s=stale_after_s)
            if not got:
                others = store.other_claims(campaign, worker, suspect_after_s=2 * beat)
                if others.suspect:
                    time.sleep(beat)
                    continue
                break
            for unit in got:
                rows, errors = measure(unit)
                if store.complete_unit(unit, worker, rows, errors):
                    units += 1
                    measured += len(rows)
                    failed += len(errors)
                else:
                    lost += len(unit.tasks)
            if after_unit is not None:
                after_unit()
    return WorkResult(units, measured, failed, lost, store.campaign_progress(campaign),
                      others.live)


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
