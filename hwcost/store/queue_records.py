"""Records of the campaign queue: what a worker claims (:class:`Unit` of :class:`Task`) and
what operators are shown (:class:`Progress`, :class:`CampaignStatus`, :class:`WorkerStats`,
:class:`OtherClaims`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from hwcost.enums import TaskState

__all__ = ["OPEN", "STALE_AFTER_S", "CampaignStatus", "OtherClaims", "Progress", "Task", "Unit",
           "WorkerStats"]

STALE_AFTER_S = 60.0
"""Default: a claim without a heartbeat for this long is presumed dead and handed out again."""

OPEN = (TaskState.PENDING.value, TaskState.CLAIMED.value)
"""Task states still waiting for a measurement."""


@dataclass(frozen=True)
class Task:
    """One (subgraph, shape, config) to measure, as claimed by a worker."""

    id: int
    signature: str
    shape: str
    config: str


@dataclass(frozen=True)
class Unit:
    """All the open tasks of one (subgraph, shape) of a campaign, claimed together.

    ``measured`` holds tasks whose measurement is already in the store (written by a direct
    run or an import): they are closed with the unit, not measured again.
    """

    id: int
    signature: str
    shape: str
    tasks: tuple[Task, ...]
    measured: tuple[Task, ...] = ()
    subgraph_id: int = 0
    device_id: int = 0  # the campaign's device: its measurements are written for it

    @property
    def all_ids(self) -> list[int]:
        return [t.id for t in self.tasks] + [t.id for t in self.measured]


@dataclass(frozen=True)
class Progress:
    """Task counts of a campaign by state."""

    pending: int = 0
    claimed: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.claimed + self.done + self.failed + self.cancelled

    @property
    def open(self) -> int:
        return self.pending + self.claimed

    def to_dict(self) -> dict:
        return {"pending": self.pending, "claimed": self.claimed, "done": self.done,
                "failed": self.failed, "cancelled": self.cancelled, "total": self.total}


@dataclass(frozen=True)
class OtherClaims:
    """Units held by other workers: ``live`` beat recently, ``suspect`` did not (they are
    handed out again once their heartbeat is older than the stale limit)."""

    live: dict[str, int]
    suspect: dict[str, int]


@dataclass(frozen=True)
class WorkerStats:
    """One worker's share of a campaign."""

    name: str
    done: int
    failed: int
    first_claim: datetime | None
    last_finish: datetime | None
    holding: int  # units it holds now
    last_heartbeat: datetime | None

    @property
    def tasks_per_s(self) -> float | None:
        """Tasks closed per second between its first claim and its last close."""
        if self.first_claim is None or self.last_finish is None:
            return None
        span = (utc(self.last_finish) - utc(self.first_claim)).total_seconds()
        return (self.done + self.failed) / span if span > 0 else None

    def to_dict(self) -> dict:
        rate = self.tasks_per_s
        return {"done": self.done, "failed": self.failed, "holding": self.holding,
                "tasks_per_s": None if rate is None else round(rate, 3),
                "last_heartbeat": _iso(self.last_heartbeat)}


def utc(t: datetime) -> datetime:
    """``t`` as an aware UTC time (SQLite hands back naive UTC)."""
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _iso(t: datetime | None) -> str | None:
    return None if t is None else utc(t).isoformat()


@dataclass(frozen=True)
class CampaignStatus:
    """A campaign with its task counts and who worked on it."""

    name: str
    model: str | None
    device: str
    shapes: list[str]
    progress: Progress
    workers: dict[str, WorkerStats]
    created_at: datetime

    @property
    def complete(self) -> bool:
        return self.progress.total > 0 and self.progress.open == 0

    @property
    def state(self) -> str:
        if self.progress.open:
            return "open"
        if self.progress.cancelled:
            return "cancelled"
        return "complete" if self.progress.total else "empty"

    def to_dict(self) -> dict:
        return {"name": self.name, "model": self.model, "device": self.device,
                "shapes": self.shapes, **self.progress.to_dict(), "complete": self.complete,
                "state": self.state,
                "workers": {w: s.done for w, s in self.workers.items()},
                "worker_stats": {w: s.to_dict() for w, s in self.workers.items()},
                "created_at": _iso(self.created_at)}
