"""Campaign work queue on the store: many workers, each task measured once.

Any number of processes, on any number of hosts, share a campaign through the store:

- :func:`ensure_campaign` gets or creates a campaign by name; :func:`add_tasks` adds
  (subgraph, shape, config) tasks idempotently, grouped into **units**: all the configs of
  one (subgraph, shape), so a baseline and its candidates are timed together on one host.
- :func:`claim` hands whole units to one worker in one statement. On PostgreSQL that is
  ``WITH u AS (UPDATE campaign_unit ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED
  LIMIT n) RETURNING ...) UPDATE campaign_task ... FROM u RETURNING ...``: concurrent
  workers never get the same unit and never wait on each other. On SQLite the same two
  updates run in one ``BEGIN IMMEDIATE`` transaction (one writer at a time).
- A claimed unit carries a heartbeat (:class:`Heartbeat` refreshes it from a thread). A unit
  whose heartbeat is older than ``stale_after_s`` (its worker was killed, its host lost) is
  handed out again by the same claiming statement; nothing sweeps on every claim.
- :func:`complete_unit` writes a unit's measurements, closes its tasks and the unit in one
  transaction, and only while the worker still holds the unit (a worker presumed dead that
  comes back writes nothing: another worker owns the unit now).
- :func:`retry`, :func:`cancel` and :func:`release` change states for operators and restarted
  workers; :mod:`hwcost.fleet_status` reports progress and per-worker throughput.

Timestamps are UTC (the schema's UTCDateTime columns), so hosts in any zone agree.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from hwcost.store.queue_records import OPEN, STALE_AFTER_S, OtherClaims, Progress, Task, Unit

__all__ = ["OPEN", "STALE_AFTER_S", "Heartbeat", "OtherClaims", "Progress", "Task", "Unit", "add_tasks",
           "campaign_id", "cancel", "claim", "complete_unit", "ensure_campaign", "heartbeat",
           "heartbeat_interval", "other_claims", "progress", "release", "retry", "retry_failed",
           "task_workers"]


def heartbeat_interval(stale_after_s: float) -> float:
    """Seconds between heartbeats: several per stale period, so one slow beat is no death."""
    return max(0.05, min(10.0, stale_after_s / 6))


def ensure_campaign(store, name: str, *, device: str, model_id=None,
                    shapes: Sequence[str] = (), precisions: Sequence[str] = ()) -> int:
    """Get or create the campaign ``name`` (``model_id``: a ModelRef, a
    reference or None); returns its id (``Store.ensure_campaign``)."""
    return store.ensure_campaign(name, device=device, model=model_id, shapes=shapes,
                                 precisions=precisions)


def campaign_id(store, name: str) -> int:
    """The id of the campaign ``name``; StoreError if there is none."""
    return store.campaign_id(name)


def add_tasks(store, campaign: int, tasks: Iterable[tuple[str, str, str]]) -> int:
    """Add ``(signature, shape, config)`` tasks and their units idempotently;
    returns how many were new (``Store.add_tasks``)."""
    return store.add_tasks(campaign, tasks)


def claim(store, campaign: int, worker: str, n: int = 1, *,
          stale_after_s: float = STALE_AFTER_S) -> list[Unit]:
    """Claim up to ``n`` whole units for ``worker``; [] when nothing is
    claimable (``Store.claim_units``)."""
    return store.claim_units(campaign, worker, n, stale_after_s=stale_after_s)


def complete_unit(store, unit: Unit, worker: str, measurements: Sequence = (),
                  failed: dict[int, str] | None = None) -> bool:
    """Write a unit's measurements and close it in one transaction; False
    when ``worker`` no longer holds it (``Store.complete_unit``)."""
    return store.complete_unit(unit, worker, measurements, failed)


def heartbeat(store, campaign: int, worker: str) -> int:
    """Refresh the heartbeat of every unit ``worker`` holds; returns how many it holds."""
    return store.heartbeat(campaign, worker)


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
                heartbeat(self.store, self.campaign, self.worker)
            except Exception:  # noqa: BLE001 - the next beat retries; a dead store ends the run elsewhere
                pass

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def other_claims(store, campaign: int, worker: str, suspect_after_s: float) -> OtherClaims:
    """Units of the campaign claimed by workers other than ``worker``, by worker."""
    return store.other_claims(campaign, worker, suspect_after_s)


def release(store, campaign: int, worker: str) -> int:
    """Return ``worker``'s claimed units and tasks to pending (a restarted worker of that
    name). Returns the tasks released."""
    return store.release_worker(campaign, worker)


def retry(store, campaign: int) -> int:
    """Return a campaign's failed and cancelled tasks (and their units) to pending; returns
    the tasks reopened. Measurements already stored are kept."""
    return store.retry_campaign(campaign)


retry_failed = retry


def cancel(store, campaign: int) -> int:
    """Cancel a campaign's pending tasks: workers claim nothing more from it and exit once
    their current units are written. Returns the tasks cancelled (`retry` resumes them)."""
    return store.cancel_campaign(campaign)


def progress(store, campaign: int) -> Progress:
    """Counts of the campaign's tasks by state."""
    return store.campaign_progress(campaign)


def task_workers(store, campaign: int) -> dict[int, str | None]:
    """task id -> the worker that holds or closed it (for audits and tests)."""
    return store.task_workers(campaign)
