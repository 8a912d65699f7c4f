"""The campaign work queue's SQL (a part of :class:`hwcost.store.sql.SqlStore`): its
operations are store methods; a worker's loop over them, with the heartbeat thread, is
:mod:`hwcost.fleet_worker`, which describes the protocol.

Timestamps are UTC (the schema's UTCDateTime columns), so hosts in any zone agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, case, exists, func, or_, select, text, update

from hwcost.errors import StoreError
from hwcost.shape import parse_shape
from hwcost.store.queue_records import (
    OPEN,
    STALE_AFTER_S,
    CampaignStatus,
    OtherClaims,
    Progress,
    Task,
    Unit,
    WorkerStats,
    utc,
)
from hwcost.store.rows import dialect_insert, insert_ignore, subgraph_ids
from hwcost.store.schema import (
    Campaign,
    CampaignTask,
    CampaignUnit,
    Device,
    Measurement,
    Model,
    Subgraph,
)

__all__ = ["OPEN", "CampaignMethods", "STALE_AFTER_S"]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _merge(old: list, new: Iterable) -> list:
    return old + [x for x in new if x not in old]


def _has_task(*states: str):
    return exists().where(and_(CampaignTask.campaign_id == CampaignUnit.campaign_id,
                               CampaignTask.subgraph_id == CampaignUnit.subgraph_id,
                               CampaignTask.shape == CampaignUnit.shape,
                               CampaignTask.state.in_(states)))


_PG_CLAIM = text("""
WITH u AS (
  UPDATE campaign_unit SET state = 'claimed', worker = :worker, claimed_at = :now,
         heartbeat_at = :now
  WHERE id IN (SELECT id FROM campaign_unit
               WHERE campaign_id = :cid
                 AND (state = 'pending' OR (state = 'claimed' AND heartbeat_at < :cutoff))
               ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED)
  RETURNING id, subgraph_id, shape)
UPDATE campaign_task t SET state = 'claimed', worker = :worker, claimed_at = :now
FROM u, subgraph s
WHERE t.campaign_id = :cid AND t.subgraph_id = u.subgraph_id AND t.shape = u.shape
  AND t.state IN ('pending', 'claimed') AND s.id = u.subgraph_id
RETURNING u.id AS unit_id, t.id, s.signature, t.shape, t.config, t.subgraph_id,
  (SELECT device_id FROM campaign WHERE id = :cid) AS device_id,
  set_config('synchronous_commit', 'off', true) AS async_commit,
  EXISTS (SELECT 1 FROM measurement m
          WHERE m.device_id = (SELECT device_id FROM campaign WHERE id = :cid)
            AND m.subgraph_id = t.subgraph_id AND m.shape = t.shape
            AND m.config = t.config) AS measured
""")


def _claim_sqlite(s, args: dict) -> list:
    """The claim as two updates in one BEGIN IMMEDIATE transaction (SQLite has no
    data-modifying CTE); the write lock serialises claimers."""
    picked = select(CampaignUnit.id).where(
        CampaignUnit.campaign_id == args["cid"],
        or_(CampaignUnit.state == "pending",
            and_(CampaignUnit.state == "claimed", CampaignUnit.heartbeat_at < args["cutoff"]))
    ).order_by(CampaignUnit.id).limit(args["n"])
    units = s.execute(update(CampaignUnit).where(CampaignUnit.id.in_(picked.scalar_subquery()))
                      .values(state="claimed", worker=args["worker"], claimed_at=args["now"],
                              heartbeat_at=args["now"])
                      .returning(CampaignUnit.id, CampaignUnit.subgraph_id, CampaignUnit.shape)
                      .execution_options(synchronize_session=False)).all()
    if not units:
        return []
    device_id = s.scalar(select(Campaign.device_id).where(Campaign.id == args["cid"]))
    of_unit = {(u.subgraph_id, u.shape): u.id for u in units}
    in_units = or_(*(and_(CampaignTask.subgraph_id == sg, CampaignTask.shape == sh)
                     for sg, sh in of_unit))
    rows = s.execute(update(CampaignTask)
                     .where(CampaignTask.campaign_id == args["cid"],
                            CampaignTask.state.in_(OPEN), in_units)
                     .values(state="claimed", worker=args["worker"], claimed_at=args["now"])
                     .returning(CampaignTask.id, CampaignTask.subgraph_id, CampaignTask.shape,
                                CampaignTask.config)
                     .execution_options(synchronize_session=False)).all()
    # (SQLite's RETURNING cannot hold a correlated subquery: the measured check is a query)
    measured = set(s.execute(select(Measurement.subgraph_id, Measurement.shape, Measurement.config)
                             .where(Measurement.device_id == device_id,
                                    Measurement.subgraph_id.in_({sg for sg, _ in of_unit}),
                                    Measurement.shape.in_({sh for _, sh in of_unit}))).all())
    sigs = dict(s.execute(select(Subgraph.id, Subgraph.signature)
                          .where(Subgraph.id.in_({sg for sg, _ in of_unit}))).all())
    return [_Row(of_unit[r.subgraph_id, r.shape], r.id, sigs[r.subgraph_id], r.shape, r.config,
                 (r.subgraph_id, r.shape, r.config) in measured, r.subgraph_id, device_id)
            for r in rows]


@dataclass(frozen=True)
class _Row:
    unit_id: int
    id: int
    signature: str
    shape: str
    config: str
    measured: bool
    subgraph_id: int
    device_id: int


def _measurement_row(unit: Unit, m) -> dict:
    from hwcost.precision import config_key
    from hwcost.store.schema import utcnow

    cfg = m.config if isinstance(m.config, str) else config_key(m.config)
    if m.signature != unit.signature or parse_shape(m.shape).key != unit.shape:
        raise ValueError(f"measurement of {m.signature[:12]} {m.shape} given for unit "
                         f"{unit.signature[:12]} {unit.shape}")
    return {"device_id": unit.device_id, "subgraph_id": unit.subgraph_id, "shape": unit.shape,
            "config": cfg, "median_us": float(m.median_us), "spread_us": float(m.spread_us),
            "n_samples": int(m.n_samples), "measured_at": m.measured_at or utcnow(),
            "host": m.host, "campaign": m.campaign, "tool_version": m.tool_version}


_PG_COMPLETE = text("""
WITH held AS (
  UPDATE campaign_unit SET state = :unit_state, finished_at = :now
  WHERE id = :uid AND worker = :worker AND state = 'claimed' RETURNING id),
ins AS (
  INSERT INTO measurement (device_id, subgraph_id, shape, config, median_us, spread_us,
                           n_samples, measured_at, host, campaign, tool_version)
  SELECT :device_id, :subgraph_id, :shape, x.config, x.median_us, x.spread_us, x.n_samples,
         x.measured_at, x.host, x.campaign, x.tool_version
  FROM unnest(CAST(:configs AS text[]), CAST(:medians AS float8[]), CAST(:spreads AS float8[]),
              CAST(:ns AS int[]), CAST(:ats AS timestamptz[]), CAST(:hosts AS text[]),
              CAST(:campaigns AS text[]), CAST(:versions AS text[]))
       AS x(config, median_us, spread_us, n_samples, measured_at, host, campaign, tool_version)
  WHERE EXISTS (SELECT 1 FROM held)
  ON CONFLICT (device_id, subgraph_id, shape, config) DO NOTHING),
ok AS (
  UPDATE campaign_task SET state = 'done', finished_at = :now, error = NULL
  WHERE id = ANY(CAST(:ok_ids AS int[])) AND EXISTS (SELECT 1 FROM held)),
bad AS (
  UPDATE campaign_task SET state = 'failed', finished_at = :now, error = f.error
  FROM unnest(CAST(:failed_ids AS int[]), CAST(:errors AS text[])) AS f(id, error)
  WHERE campaign_task.id = f.id AND EXISTS (SELECT 1 FROM held))
SELECT count(*) AS held, set_config('synchronous_commit', 'off', true) FROM held
""")


def _async_commit(s) -> None:
    """PostgreSQL: this transaction's commit does not wait for its WAL flush. Queue state and
    a unit's results commit together, so a server crash can only forget the last fraction
    of a second of them whole (those units are claimed again and re-measured); it never
    keeps half of a unit. Worth it: the flush, not the work, bounds the claims a second."""
    s.execute(text("SET LOCAL synchronous_commit TO OFF"))


def _by_reason(failed: dict[int, str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for tid, err in failed.items():
        reason = err.strip().splitlines()[0][:500] if err.strip() else "failed"
        out.setdefault(reason, []).append(tid)
    return out


class CampaignMethods:
    """The queue's operations: campaigns, tasks, claims, heartbeats, completion."""

    def ensure_campaign(self, name: str, *, device: str, model=None,
                        shapes: Sequence[str] = (), precisions: Sequence[str] = ()) -> int:
        """Get or create the campaign ``name``; returns its id.

        An existing campaign must be for the same device and model (StoreError otherwise); its
        shape and precision lists grow to include the ones given.
        """
        if not name or not name.strip():
            raise StoreError("a campaign needs a non-empty name")
        shapes = [parse_shape(s).key for s in shapes]
        with self.session() as s:
            # the model: a ModelRef, a reference, or (inside the store package) an id
            model_id = None if model is None else self._model_id(s, model)
            dev = s.scalars(select(Device).where(Device.fingerprint == device)).first()
            if dev is None:
                raise StoreError(f"device {device[:12]} is not in the store; record it first")
            found = s.scalars(select(Campaign).where(Campaign.name == name)).first()
            if found is None:
                insert_ignore(s, Campaign, [{
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

    def campaign_id(self, name: str) -> int:
        """The id of the campaign ``name``; StoreError if there is none."""
        with self.session() as s:
            cid = s.scalar(select(Campaign.id).where(Campaign.name == name))
        if cid is None:
            raise StoreError(f"no campaign {name!r} in the store; `hwcost campaign ls` lists them")
        return cid

    def add_tasks(self, campaign: int, tasks: Iterable[tuple[str, str, str]]) -> int:
        """Add ``(signature, shape, config)`` tasks and their units; existing ones are left as
        they are (a cancelled task stays cancelled). A closed unit that gains a new task opens
        again. Returns the number of tasks added. The subgraphs must already be in the self.
        """
        tasks = list(tasks)
        if not tasks:
            return 0
        with self.session() as s:
            ids = subgraph_ids(s, [t[0] for t in tasks])
            missing = {t[0] for t in tasks} - set(ids)
            if missing:
                raise StoreError(f"tasks name subgraphs not in the store: {sorted(missing)[:3]}")
            rows = [{"campaign_id": campaign, "subgraph_id": ids[sig], "shape": parse_shape(shape).key,
                     "config": cfg, "state": "pending"} for sig, shape, cfg in tasks]
            units = list({(r["subgraph_id"], r["shape"]): {
                "campaign_id": campaign, "subgraph_id": r["subgraph_id"], "shape": r["shape"],
                "state": "pending"} for r in rows}.values())
            insert_ignore(s, CampaignUnit, units, ["campaign_id", "subgraph_id", "shape"])
            added = insert_ignore(s, CampaignTask, rows,
                                         ["campaign_id", "subgraph_id", "shape", "config"])
            if added:
                s.execute(update(CampaignUnit)
                          .where(CampaignUnit.campaign_id == campaign,
                                 CampaignUnit.state.in_(("done", "failed")), _has_task("pending"))
                          .values(state="pending", worker=None, claimed_at=None, heartbeat_at=None)
                          .execution_options(synchronize_session=False))
            return added

    def claim_units(self, campaign: int, worker: str, n: int = 1, *,
              stale_after_s: float = STALE_AFTER_S) -> list[Unit]:
        """Claim up to ``n`` units (pending, or claimed with a heartbeat older than
        ``stale_after_s``) for ``worker``, oldest first; one statement on PostgreSQL.

        Returns the units with their open tasks; [] when nothing is claimable.
        """
        if n < 1:
            raise ValueError("claim at least one unit")
        now = _now()
        cutoff = now - timedelta(seconds=stale_after_s)
        args = {"cid": campaign, "worker": worker, "now": now, "cutoff": cutoff, "n": n}
        with self.session() as s:
            if self.dialect == "postgresql":  # (the statement also turns off the commit's flush)
                rows = s.execute(_PG_CLAIM, args).all()
            else:
                rows = _claim_sqlite(s, args)
        units: dict[int, list] = {}
        for r in rows:
            units.setdefault(r.unit_id, []).append(r)
        out = []
        for uid in sorted(units):
            rs = sorted(units[uid], key=lambda r: r.id)
            todo = tuple(Task(r.id, r.signature, r.shape, r.config) for r in rs if not r.measured)
            done = tuple(Task(r.id, r.signature, r.shape, r.config) for r in rs if r.measured)
            out.append(Unit(uid, rs[0].signature, rs[0].shape, todo, done, rs[0].subgraph_id,
                            rs[0].device_id))
        return out

    def complete_unit(self, unit: Unit, worker: str, measurements: Sequence = (),
                      failed: dict[int, str] | None = None) -> bool:
        """Write ``unit``'s measurements (``hwcost.self.MeasurementIn`` of the unit's subgraph
        and shape, all validated first), mark its tasks done (or failed, task id -> one-line
        reason) and close the unit, in one transaction.

        Returns False, writing nothing, when ``worker`` no longer holds the unit (its heartbeat
        went stale and another worker claimed it).
        """
        failed = failed or {}
        rows = [_measurement_row(unit, m.validated()) for m in measurements]
        now = _now()
        if self.dialect == "postgresql":
            return self._complete_pg(unit, worker, rows, failed, now)
        with self.session() as s:
            held = s.execute(update(CampaignUnit)
                             .where(CampaignUnit.id == unit.id, CampaignUnit.worker == worker,
                                    CampaignUnit.state == "claimed")
                             .values(state="failed" if failed else "done", finished_at=now)
                             .returning(CampaignUnit.id)
                             .execution_options(synchronize_session=False)).first()
            if held is None:
                return False
            if rows:
                # one executemany of one cached statement (not a VALUES list compiled per unit)
                ins = dialect_insert(self.dialect)(Measurement).on_conflict_do_nothing(
                    index_elements=["device_id", "subgraph_id", "shape", "config"])
                s.connection().execute(ins, rows)
            ok = [i for i in unit.all_ids if i not in failed]
            if ok:
                s.execute(update(CampaignTask).where(CampaignTask.id.in_(ok))
                          .values(state="done", finished_at=now, error=None)
                          .execution_options(synchronize_session=False))
            for reason, ids in _by_reason(failed).items():
                s.execute(update(CampaignTask).where(CampaignTask.id.in_(ids))
                          .values(state="failed", finished_at=now, error=reason)
                          .execution_options(synchronize_session=False))
        return True

    def _complete_pg(self, unit: Unit, worker: str, rows: list[dict], failed: dict[int, str],
                     now: datetime) -> bool:
        """complete_unit on PostgreSQL: one statement (and its commit) for the whole unit."""
        reasons = {tid: r for r, ids in _by_reason(failed).items() for tid in ids}
        col = {k: [r[k] for r in rows] for k in ("config", "median_us", "spread_us", "n_samples",
                                                 "measured_at", "host", "campaign", "tool_version")}
        args = {"unit_state": "failed" if failed else "done", "now": now, "uid": unit.id,
                "worker": worker, "device_id": unit.device_id, "subgraph_id": unit.subgraph_id,
                "shape": unit.shape, "configs": col["config"], "medians": col["median_us"],
                "spreads": col["spread_us"], "ns": col["n_samples"], "ats": col["measured_at"],
                "hosts": col["host"], "campaigns": col["campaign"], "versions": col["tool_version"],
                "ok_ids": [i for i in unit.all_ids if i not in failed],
                "failed_ids": list(reasons), "errors": list(reasons.values())}
        with self.engine.begin() as c:
            return bool(c.execute(_PG_COMPLETE, args).scalar())

    def heartbeat(self, campaign: int, worker: str) -> int:
        """Refresh the heartbeat of every unit ``worker`` holds; returns how many it holds."""
        with self.session() as s:
            if self.dialect == "postgresql":
                _async_commit(s)
            res = s.execute(update(CampaignUnit)
                            .where(CampaignUnit.campaign_id == campaign, CampaignUnit.worker == worker,
                                   CampaignUnit.state == "claimed")
                            .values(heartbeat_at=_now())
                            .execution_options(synchronize_session=False))
            return res.rowcount or 0

    def other_claims(self, campaign: int, worker: str, suspect_after_s: float) -> OtherClaims:
        """Units of the campaign claimed by workers other than ``worker``, by worker."""
        cutoff = _now() - timedelta(seconds=suspect_after_s)
        with self.session() as s:
            rows = s.execute(select(CampaignUnit.worker, CampaignUnit.heartbeat_at)
                             .where(CampaignUnit.campaign_id == campaign,
                                    CampaignUnit.state == "claimed", CampaignUnit.worker != worker)
                             ).all()
        rows = [(w, hb is None or utc(hb) < cutoff, 1) for w, hb in rows]
        live: dict[str, int] = {}
        suspect: dict[str, int] = {}
        for w, old, n in rows:
            d = suspect if old else live
            d[w] = d.get(w, 0) + int(n)
        return OtherClaims(live, suspect)

    def release_worker(self, campaign: int, worker: str) -> int:
        """Return ``worker``'s claimed units and tasks to pending (a restarted worker of that
        name). Returns the tasks released."""
        with self.session() as s:
            s.execute(update(CampaignUnit)
                      .where(CampaignUnit.campaign_id == campaign, CampaignUnit.state == "claimed",
                             CampaignUnit.worker == worker)
                      .values(state="pending", worker=None, claimed_at=None, heartbeat_at=None)
                      .execution_options(synchronize_session=False))
            res = s.execute(update(CampaignTask)
                            .where(CampaignTask.campaign_id == campaign, CampaignTask.state == "claimed",
                                   CampaignTask.worker == worker)
                            .values(state="pending", worker=None, claimed_at=None)
                            .execution_options(synchronize_session=False))
            return res.rowcount or 0

    def retry_campaign(self, campaign: int) -> int:
        """Return a campaign's failed and cancelled tasks (and their units) to pending; returns
        the tasks reopened. Measurements already stored are kept."""
        with self.session() as s:
            res = s.execute(update(CampaignTask)
                            .where(CampaignTask.campaign_id == campaign,
                                   CampaignTask.state.in_(("failed", "cancelled")))
                            .values(state="pending", worker=None, claimed_at=None, finished_at=None,
                                    error=None)
                            .execution_options(synchronize_session=False))
            s.execute(update(CampaignUnit)
                      .where(CampaignUnit.campaign_id == campaign,
                             CampaignUnit.state.in_(("failed", "cancelled", "done")),
                             _has_task("pending"))
                      .values(state="pending", worker=None, claimed_at=None, heartbeat_at=None,
                              finished_at=None)
                      .execution_options(synchronize_session=False))
            return res.rowcount or 0

    def cancel_campaign(self, campaign: int) -> int:
        """Cancel a campaign's pending tasks: workers claim nothing more from it and exit once
        their current units are written. Returns the tasks cancelled (`retry` resumes them)."""
        now = _now()
        with self.session() as s:
            s.execute(update(CampaignUnit)
                      .where(CampaignUnit.campaign_id == campaign, CampaignUnit.state == "pending")
                      .values(state="cancelled", finished_at=now)
                      .execution_options(synchronize_session=False))
            res = s.execute(update(CampaignTask)
                            .where(CampaignTask.campaign_id == campaign,
                                   CampaignTask.state == "pending")
                            .values(state="cancelled", finished_at=now)
                            .execution_options(synchronize_session=False))
            return res.rowcount or 0

    def campaign_progress(self, campaign: int) -> Progress:
        """Counts of the campaign's tasks by state."""
        with self.session() as s:
            rows = s.execute(select(CampaignTask.state, func.count())
                             .where(CampaignTask.campaign_id == campaign)
                             .group_by(CampaignTask.state)).all()
        return Progress(**{state: int(n) for state, n in rows})

    def task_workers(self, campaign: int) -> dict[int, str | None]:
        """task id -> the worker that holds or closed it (for audits and tests)."""
        with self.session() as s:
            return dict(s.execute(select(CampaignTask.id, CampaignTask.worker)
                                  .where(CampaignTask.campaign_id == campaign)).all())

    def campaign_statuses(self, name: str | None = None) -> list[CampaignStatus]:
        """Every campaign (or the one called ``name``) with its progress and workers, oldest
        first; three grouped queries whatever the number of campaigns."""
        with self.session() as s:
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
