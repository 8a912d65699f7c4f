"""What a campaign's fleet is doing: progress, and per worker tasks done and failed,
throughput and last heartbeat (``hwcost campaign ls`` / ``status``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import case, func, select

from hwcost.queue import Progress
from hwcost.schema import Campaign, CampaignTask, CampaignUnit, Device, Model


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
        span = (_utc(self.last_finish) - _utc(self.first_claim)).total_seconds()
        return (self.done + self.failed) / span if span > 0 else None

    def to_dict(self) -> dict:
        rate = self.tasks_per_s
        return {"done": self.done, "failed": self.failed, "holding": self.holding,
                "tasks_per_s": None if rate is None else round(rate, 3),
                "last_heartbeat": _iso(self.last_heartbeat)}


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _iso(t: datetime | None) -> str | None:
    return None if t is None else _utc(t).isoformat()


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


def campaigns(store, name: str | None = None) -> list[CampaignStatus]:
    """Every campaign in the store (or the one called ``name``) with its progress, oldest
    first; three grouped queries whatever the number of campaigns."""
    with store.session() as s:
        q = (select(Campaign, Device.fingerprint, Model.name)
             .join(Device, Device.id == Campaign.device_id)
             .outerjoin(Model, Model.id == Campaign.model_id).order_by(Campaign.id))
        if name is not None:
            q = q.where(Campaign.name == name)
        rows = s.execute(q).all()
        ids = [c.id for c, _, _ in rows]
        if not ids:
            return []
        per_worker = s.execute(
            select(CampaignTask.campaign_id, CampaignTask.worker,
                   func.sum(case((CampaignTask.state == "done", 1), else_=0)),
                   func.sum(case((CampaignTask.state == "failed", 1), else_=0)),
                   func.min(CampaignTask.claimed_at), func.max(CampaignTask.finished_at))
            .where(CampaignTask.campaign_id.in_(ids), CampaignTask.worker.is_not(None))
            .group_by(CampaignTask.campaign_id, CampaignTask.worker)).all()
        held = s.execute(
            select(CampaignUnit.campaign_id, CampaignUnit.worker, func.count(),
                   func.max(CampaignUnit.heartbeat_at))
            .where(CampaignUnit.campaign_id.in_(ids), CampaignUnit.state == "claimed")
            .group_by(CampaignUnit.campaign_id, CampaignUnit.worker)).all()
        states = s.execute(select(CampaignTask.campaign_id, CampaignTask.state, func.count())
                           .where(CampaignTask.campaign_id.in_(ids))
                           .group_by(CampaignTask.campaign_id, CampaignTask.state)).all()
    holding = {(cid, w): (int(n), hb) for cid, w, n, hb in held}
    workers: dict[int, dict[str, WorkerStats]] = {}
    for cid, w, done, failed, first, last in per_worker:
        n, hb = holding.pop((cid, w), (0, None))
        workers.setdefault(cid, {})[w] = WorkerStats(w, int(done or 0), int(failed or 0), first,
                                                     last, n, hb)
    for (cid, w), (n, hb) in holding.items():
        workers.setdefault(cid, {})[w] = WorkerStats(w, 0, 0, None, None, n, hb)
    counts: dict[int, dict[str, int]] = {}
    for cid, state, n in states:
        counts.setdefault(cid, {})[state] = int(n)
    return [CampaignStatus(c.name, model, dev, json.loads(c.shapes),
                           Progress(**counts.get(c.id, {})),
                           dict(sorted(workers.get(c.id, {}).items())), c.created_at)
            for c, dev, model in rows]
