"""Campaign task queue on the store: many workers, each task measured once.

Any number of processes, on any number of hosts, share a campaign through the store:

- :func:`ensure_campaign` gets or creates a campaign by name; :func:`add_tasks` adds
  (subgraph, shape, config) tasks idempotently.
- :func:`claim` hands out pending tasks to one worker. On PostgreSQL the rows are taken with
  ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent workers never get the same task and
  never wait on each other; on SQLite every transaction is ``BEGIN IMMEDIATE`` (one writer at
  a time), which serialises claims.
- :func:`complete` and :func:`fail` close tasks. A task whose measurement is already in the
  store (a worker died after writing it, before closing the task) is closed at claim time
  instead of being measured again.
- Stale claims (older than ``stale_after_s``, a worker killed or a host lost) return to
  pending at the next claim; :func:`release` returns a worker's own claims at once (a
  restarted worker of the same name).

Timestamps are UTC (the schema's UTCDateTime columns), so hosts in any zone agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, exists, func, select, update

from hwcost.errors import StoreError
from hwcost.schema import Campaign, CampaignTask, Device, Measurement, Subgraph
from hwcost.shape import parse_shape

STALE_AFTER_S = 900.0
"""Default age after which a claim is presumed dead and its task handed out again."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Task:
    """One (subgraph, shape, config) to measure, as claimed by a worker."""

    id: int
    signature: str
    shape: str
    config: str


@dataclass(frozen=True)
class Progress:
    """Task counts of a campaign by state."""

    pending: int = 0
    claimed: int = 0
    done: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.claimed + self.done + self.failed

    @property
    def open(self) -> int:
        return self.pending + self.claimed

    def to_dict(self) -> dict:
        return {"pending": self.pending, "claimed": self.claimed, "done": self.done,
                "failed": self.failed, "total": self.total}


def ensure_campaign(store, name: str, *, device: str, model_id: int | None,
                    shapes: Sequence[str] = (), precisions: Sequence[str] = ()) -> int:
    """Get or create the campaign ``name``; returns its id.

    An existing campaign must be for the same device and model (StoreError otherwise); its
    shape and precision lists grow to include the ones given.
    """
    if not name or not name.strip():
        raise StoreError("a campaign needs a non-empty name")
    shapes = [parse_shape(s).key for s in shapes]
    with store.session() as s:
        dev = s.scalars(select(Device).where(Device.fingerprint == device)).first()
        if dev is None:
            raise StoreError(f"device {device[:12]} is not in the store; record it first")
        found = s.scalars(select(Campaign).where(Campaign.name == name)).first()
        if found is None:
            store._insert_ignore(s, Campaign, [{
                "name": name, "model_id": model_id, "device_id": dev.id,
                "shapes": json.dumps(shapes), "precisions": json.dumps(list(precisions)),
                "created_at": _now()}], ["name"])
            found = s.scalars(select(Campaign).where(Campaign.name == name)).one()
        if found.device_id != dev.id or (model_id is not None and found.model_id not in
                                         (None, model_id)):
            raise StoreError(f"campaign {name!r} exists for another model or device; "
                             "choose another --campaign name")
        merged_shapes = _merge(json.loads(found.shapes), shapes)
        merged_prec = _merge(json.loads(found.precisions), precisions)
        if merged_shapes != json.loads(found.shapes) or merged_prec != json.loads(found.precisions):
            found.shapes, found.precisions = json.dumps(merged_shapes), json.dumps(merged_prec)
        return found.id


def _merge(old: list, new: Iterable) -> list:
    return old + [x for x in new if x not in old]


def campaign_id(store, name: str) -> int:
    """The id of the campaign ``name``; StoreError if there is none."""
    with store.session() as s:
        cid = s.scalar(select(Campaign.id).where(Campaign.name == name))
    if cid is None:
        raise StoreError(f"no campaign {name!r} in the store")
    return cid


def add_tasks(store, campaign: int, tasks: Iterable[tuple[str, str, str]]) -> int:
    """Add ``(signature, shape, config)`` tasks; existing ones are left as they are.

    Returns the number of tasks added. The subgraphs must already be in the store.
    """
    tasks = list(tasks)
    if not tasks:
        return 0
    with store.session() as s:
        ids = store._subgraph_ids(s, [t[0] for t in tasks])
        missing = {t[0] for t in tasks} - set(ids)
        if missing:
            raise StoreError(f"tasks name subgraphs not in the store: {sorted(missing)[:3]}")
        rows = [{"campaign_id": campaign, "subgraph_id": ids[sig], "shape": parse_shape(shape).key,
                 "config": cfg, "state": "pending"} for sig, shape, cfg in tasks]
        return store._insert_ignore(s, CampaignTask, rows,
                                    ["campaign_id", "subgraph_id", "shape", "config"])


def release(store, campaign: int, worker: str) -> int:
    """Return ``worker``'s claimed tasks to pending (a restarted worker of that name)."""
    with store.session() as s:
        res = s.execute(update(CampaignTask)
                        .where(CampaignTask.campaign_id == campaign, CampaignTask.state == "claimed",
                               CampaignTask.worker == worker)
                        .values(state="pending", worker=None, claimed_at=None))
        return res.rowcount or 0


def claim(store, campaign: int, worker: str, n: int = 1, *,
          stale_after_s: float = STALE_AFTER_S) -> list[Task]:
    """Claim up to ``n`` pending tasks for ``worker``, in insertion order.

    Claims older than ``stale_after_s`` go back to pending first. Tasks whose measurement
    is already stored (for the campaign's device) are marked done, not handed out.
    """
    if n < 1:
        raise ValueError("claim at least one task")
    while True:  # until a task to hand out, or none pending
        tasks, closed = _claim_once(store, campaign, worker, n, stale_after_s)
        if tasks or not closed:
            return tasks


def _claim_once(store, campaign: int, worker: str, n: int, stale_after_s: float
                ) -> tuple[list[Task], int]:
    """One claiming transaction: (tasks handed out, tasks closed as already measured)."""
    now = _now()
    with store.session() as s:
        device_id = s.scalar(select(Campaign.device_id).where(Campaign.id == campaign))
        if device_id is None:
            raise StoreError(f"no campaign with id {campaign}")
        s.execute(update(CampaignTask)
                  .where(CampaignTask.campaign_id == campaign, CampaignTask.state == "claimed",
                         CampaignTask.claimed_at < now - timedelta(seconds=stale_after_s))
                  .values(state="pending", worker=None, claimed_at=None))
        measured = exists().where(and_(
            Measurement.device_id == device_id, Measurement.subgraph_id == CampaignTask.subgraph_id,
            Measurement.shape == CampaignTask.shape, Measurement.config == CampaignTask.config))
        stmt = (select(CampaignTask.id, Subgraph.signature, CampaignTask.shape, CampaignTask.config,
                       measured.label("measured"))
                .join(Subgraph, Subgraph.id == CampaignTask.subgraph_id)
                .where(CampaignTask.campaign_id == campaign, CampaignTask.state == "pending")
                .order_by(CampaignTask.id).limit(n))
        if store.dialect == "postgresql":
            stmt = stmt.with_for_update(of=CampaignTask, skip_locked=True)
        rows = s.execute(stmt).all()
        done_ids = [r.id for r in rows if r.measured]
        tasks = [Task(r.id, r.signature, r.shape, r.config) for r in rows if not r.measured]
        if done_ids:
            s.execute(update(CampaignTask).where(CampaignTask.id.in_(done_ids))
                      .values(state="done", worker=worker, finished_at=now))
        if tasks:
            s.execute(update(CampaignTask).where(CampaignTask.id.in_([t.id for t in tasks]))
                      .values(state="claimed", worker=worker, claimed_at=now))
    return tasks, len(done_ids)


def complete(store, task_ids: Sequence[int], worker: str) -> int:
    """Mark tasks done (call after their measurements are written). Returns tasks closed."""
    return _close(store, task_ids, worker, "done", None)


def fail(store, task_ids: Sequence[int], worker: str, error: str) -> int:
    """Mark tasks failed with a one-line reason; they are not retried automatically."""
    return _close(store, task_ids, worker, "failed", error.strip().splitlines()[0][:500]
                  if error.strip() else "failed")


def _close(store, task_ids: Sequence[int], worker: str, state: str, error: str | None) -> int:
    if not task_ids:
        return 0
    with store.session() as s:
        res = s.execute(update(CampaignTask)
                        .where(CampaignTask.id.in_(list(task_ids)), CampaignTask.worker == worker,
                               CampaignTask.state == "claimed")
                        .values(state=state, finished_at=_now(), error=error))
        return res.rowcount or 0


def retry_failed(store, campaign: int) -> int:
    """Return a campaign's failed tasks to pending."""
    with store.session() as s:
        res = s.execute(update(CampaignTask)
                        .where(CampaignTask.campaign_id == campaign, CampaignTask.state == "failed")
                        .values(state="pending", worker=None, claimed_at=None, error=None))
        return res.rowcount or 0


def progress(store, campaign: int) -> Progress:
    """Counts of the campaign's tasks by state."""
    with store.session() as s:
        rows = s.execute(select(CampaignTask.state, func.count())
                         .where(CampaignTask.campaign_id == campaign)
                         .group_by(CampaignTask.state)).all()
    return Progress(**{state: int(n) for state, n in rows})


def task_workers(store, campaign: int) -> dict[int, str | None]:
    """task id -> the worker that holds or closed it (for audits and tests)."""
    with store.session() as s:
        return dict(s.execute(select(CampaignTask.id, CampaignTask.worker)
                              .where(CampaignTask.campaign_id == campaign)).all())


@dataclass(frozen=True)
class CampaignStatus:
    """A campaign with its task counts and who worked on it."""

    name: str
    model: str | None
    device: str
    shapes: list[str]
    progress: Progress
    workers: dict[str, int]  # worker -> tasks done
    created_at: datetime

    @property
    def complete(self) -> bool:
        return self.progress.total > 0 and self.progress.open == 0

    def to_dict(self) -> dict:
        return {"name": self.name, "model": self.model, "device": self.device,
                "shapes": self.shapes, **self.progress.to_dict(), "complete": self.complete,
                "workers": self.workers, "created_at": self.created_at.isoformat()}


def campaigns(store) -> list[CampaignStatus]:
    """Every campaign in the store with its progress, oldest first."""
    from hwcost.schema import Model

    with store.session() as s:
        rows = s.execute(select(Campaign, Device.fingerprint, Model.name)
                         .join(Device, Device.id == Campaign.device_id)
                         .outerjoin(Model, Model.id == Campaign.model_id)
                         .order_by(Campaign.id)).all()
        done = s.execute(select(CampaignTask.campaign_id, CampaignTask.worker, func.count())
                         .where(CampaignTask.state == "done")
                         .group_by(CampaignTask.campaign_id, CampaignTask.worker)).all()
        states = s.execute(select(CampaignTask.campaign_id, CampaignTask.state, func.count())
                           .group_by(CampaignTask.campaign_id, CampaignTask.state)).all()
    by_campaign: dict[int, dict[str, int]] = {}
    for cid, worker, n in done:
        by_campaign.setdefault(cid, {})[worker or "-"] = int(n)
    counts: dict[int, dict[str, int]] = {}
    for cid, state, n in states:
        counts.setdefault(cid, {})[state] = int(n)
    return [CampaignStatus(c.name, model, dev, json.loads(c.shapes), Progress(**counts.get(c.id, {})),
                           dict(sorted(by_campaign.get(c.id, {}).items())), c.created_at)
            for c, dev, model in rows]
