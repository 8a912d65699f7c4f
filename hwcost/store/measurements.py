"""The SQL store's measurements, whole-model latencies and learned fits (a part of
:class:`hwcost.store.sql.SqlStore`)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence

from sqlalchemy import delete, func, select
from sqlmodel import Session

from hwcost.errors import InvalidMeasurement, NoSuchDevice, StoreError
from hwcost.precision import config_key
from hwcost.shape import parse_shape
from hwcost.store.records import (
    CostRow,
    DeviceRef,
    MeasurementIn,
    ModelLatencyRecord,
    ModelRef,
    SubgraphInfo,
    timing_problem,
)
from hwcost.store.rows import good, shape_key, subgraph_ids, subgraph_info, upsert
from hwcost.store.schema import Device, LearnedFit, ManifestEntry, Measurement, ModelLatency, Subgraph, utcnow

__all__ = ["MeasurementMethods"]


class MeasurementMethods:
    """Timings: subgraph measurements, whole-model latencies, learned fallback fits."""

    # -- measurements
    def add_measurements(self, items: Iterable[MeasurementIn], *, replace: bool = False,
                         session: Session | None = None) -> int:
        """Write measurements in one transaction (the caller's ``session`` when given); all
        are validated before any is written.

        A key (device, subgraph, shape, config) already present is kept unless ``replace``,
        or unless the stored row is quick or unstable: any later measurement replaces those
        (a full stable one makes the key good). Returns the number of rows written.
        """
        items = [m.validated() for m in items]
        if not items:
            return 0
        with self._reuse(session) as s:
            devs = dict(s.execute(select(Device.fingerprint, Device.id).where(
                Device.fingerprint.in_({m.device for m in items}))).all())
            sgs = subgraph_ids(s, [m.signature for m in items])
            rows = []
            for m in items:
                if m.device not in devs:
                    raise NoSuchDevice(f"device {m.device[:12]} is not in the store; record it first")
                if m.signature not in sgs:
                    raise StoreError(f"subgraph {m.signature[:12]} is not in the store")
                cfg = m.config if isinstance(m.config, str) else config_key(m.config)
                rows.append({
                    "device_id": devs[m.device], "subgraph_id": sgs[m.signature],
                    "shape": parse_shape(m.shape).key, "config": cfg,
                    "median_us": float(m.median_us), "spread_us": float(m.spread_us),
                    "n_samples": int(m.n_samples), "measured_at": m.measured_at or utcnow(),
                    "host": m.host, "campaign": m.campaign, "tool_version": m.tool_version,
                    "clock": m.clock, "quick": bool(m.quick), "stable": bool(m.stable),
                    "load1": m.load1, "cpu_mhz": m.cpu_mhz, "threads": m.threads,
                    "baseline_us": m.baseline_us, "drift": m.drift,
                })
            keys = ["device_id", "subgraph_id", "shape", "config"]
            # a quick or unstable row never stands in the way: the newer timing replaces it
            bad = None if replace else ~good(Measurement)
            return upsert(s, Measurement, rows, keys, replace=True, where=bad)

    def measurement_count(self) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(Measurement))

    def measured_configs(self, device: str | DeviceRef, shape: str, signatures: Sequence[str], *,
                         allow_unstable: bool = False) -> dict[str, set[str]]:
        """signature -> configs measured for it on this device and shape (full, stable
        timings only unless ``allow_unstable``)."""
        dev = self.get_device(device)
        shape = parse_shape(shape).key
        with self.session() as s:
            ids = subgraph_ids(s, signatures)
            by_id = {v: k for k, v in ids.items()}
            out: dict[str, set[str]] = {sig: set() for sig in signatures}
            sids = list(by_id)
            for i in range(0, len(sids), 500):
                chunk = sids[i:i + 500]
                q = (select(Measurement.subgraph_id, Measurement.config)
                     .where(Measurement.device_id == dev.id, Measurement.shape == shape,
                            Measurement.subgraph_id.in_(chunk)))
                if not allow_unstable:
                    q = q.where(good(Measurement))
                for sid, cfg in s.execute(q):
                    out[by_id[sid]].add(cfg)
        return out

    def model_costs(self, model_ref: str | ModelRef, device: str | DeviceRef, shape: str, *,
                    allow_unstable: bool = False) -> list[CostRow]:
        """All measured costs of a model's subgraph instances on one device and shape.

        One transaction: the model, the device, the manifest, and the measurements of its
        *distinct* subgraphs (the 32 identical blocks of a model share one set), expanded per
        instance here. Rows are ordered by position, then config. Quick or unstable rows
        are left out unless ``allow_unstable`` (``CostRow.good`` then tells them apart).
        """
        shape = parse_shape(shape).key
        with self.session() as c:  # one connection and transaction for all four queries
            model = self.get_model(model_ref, session=c)
            dev = self.get_device(device, session=c)
            manifest, measured = self._model_cost_rows(c.connection(), model.id, dev.id, shape,
                                                       allow_unstable)
        by_subgraph: dict[int, list[tuple]] = {}
        for r in measured:
            by_subgraph.setdefault(r[0], []).append(r[1:])
        return [CostRow(pos, *r[:6], bool(r[6])) for pos, sid in manifest
                for r in by_subgraph.get(sid, ())]

    @staticmethod
    def _model_cost_rows(c, model_id: int, device_id: int, shape: str, allow_unstable: bool):
        parts = select(ManifestEntry.subgraph_id).where(ManifestEntry.model_id == model_id)
        stmt = (select(Measurement.subgraph_id, Subgraph.signature, Measurement.config,
                       Measurement.median_us, Measurement.spread_us, Measurement.n_samples,
                       Measurement.baseline_us, good(Measurement))
                .join(Subgraph, Subgraph.id == Measurement.subgraph_id)
                .where(Measurement.device_id == device_id, Measurement.shape == shape,
                       Measurement.subgraph_id.in_(parts.distinct()))
                .order_by(Measurement.subgraph_id, Measurement.config))
        if not allow_unstable:
            stmt = stmt.where(good(Measurement))
        manifest = c.execute(select(ManifestEntry.position, ManifestEntry.subgraph_id)
                             .where(ManifestEntry.model_id == model_id)
                             .order_by(ManifestEntry.position)).all()
        measured = c.execute(stmt).all()  # fetchall: row-by-row iteration is 2x slower
        return manifest, measured

    def device_measurements(self, device: str | DeviceRef, *, allow_unstable: bool = False
                            ) -> list[tuple[SubgraphInfo, str, str, float, float]]:
        """Every measurement of a device as (subgraph, shape, config, median_us, spread_us):
        full stable timings only unless ``allow_unstable``."""
        dev = self.get_device(device)
        with self.session() as s:
            q = (select(Subgraph, Measurement.shape, Measurement.config,
                        Measurement.median_us, Measurement.spread_us)
                 .join(Measurement, Measurement.subgraph_id == Subgraph.id)
                 .where(Measurement.device_id == dev.id)
                 .order_by(Measurement.id))
            if not allow_unstable:
                q = q.where(good(Measurement))
            rows = s.execute(q).all()
            return [(subgraph_info(g), sh, cfg, med, spr) for g, sh, cfg, med, spr in rows]

    # -- whole-model latencies
    def put_model_latency(self, model: str | ModelRef, device: str | DeviceRef, shape: str,
                          config_hash: str, timing, *, config: str = "{}", quick: bool = False,
                          replace: bool = False) -> bool:
        """Write a whole-model latency from a timing (``profiles.bench.Timing``, a
        :class:`ModelLatencyRecord`, anything with ``median_us``, ``spread_us``,
        ``n_samples``; how, where and when it was taken when it says): the one place such rows
        are built. A stored row of the same key is kept unless ``replace`` or it is quick or
        unstable (then the new one replaces it). Returns whether the row was written."""
        from hwcost import __version__
        from hwcost.store.records import host_name

        for name in ("median_us", "spread_us"):
            v = getattr(timing, name)
            if v is None or math.isnan(v) or math.isinf(v) or v < 0:
                raise InvalidMeasurement(f"{name}={v!r} is not a finite non-negative latency")
        row = ModelLatency(
            model_id=0, device_id=0, shape=shape_key(shape), config_hash=config_hash,
            config=config, median_us=timing.median_us, spread_us=timing.spread_us,
            n_samples=timing.n_samples, host=getattr(timing, "host", "") or host_name(),
            tool_version=getattr(timing, "tool_version", "") or __version__,
            measured_at=getattr(timing, "measured_at", None) or utcnow(),
            quick=quick, threads=getattr(timing, "threads", None),
            # a workload's generate() timing (planner.generate) is judged and recorded less
            clock=getattr(timing, "clock", "wall"), stable=getattr(timing, "stable", True),
            load1=getattr(timing, "load1", None), cpu_mhz=getattr(timing, "cpu_mhz", None))
        problem = timing_problem(row)
        if problem:
            raise InvalidMeasurement(f"model latency {problem}")
        with self.session() as s:
            data = {**row.model_dump(exclude={"id"}), "model_id": self._model_id(s, model),
                    "device_id": self._device_id(s, device)}
            keys = ["model_id", "device_id", "shape", "config_hash"]
            bad = None if replace else ~good(ModelLatency)
            return bool(upsert(s, ModelLatency, [data], keys, replace=True, where=bad))

    def model_latency(self, model: str | ModelRef, device: str | DeviceRef, shape: str,
                      config_hash: str, *, allow_unstable: bool = False
                      ) -> ModelLatencyRecord | None:
        """The stored whole-model latency (full and stable unless ``allow_unstable``)."""
        with self.session() as s:
            m, d = self.get_model(model, session=s), self.get_device(device, session=s)
            q = select(ModelLatency).where(
                ModelLatency.model_id == m.id, ModelLatency.device_id == d.id,
                ModelLatency.shape == shape_key(shape),
                ModelLatency.config_hash == config_hash)
            if not allow_unstable:
                q = q.where(good(ModelLatency))
            row = s.scalars(q).first()
        if row is None:
            return None
        return ModelLatencyRecord(m.fingerprint, d.fingerprint, **{
            c: getattr(row, c) for c in ModelLatencyRecord.__dataclass_fields__
            if c not in ("model", "device")})

    # -- learned fallback fits (JSON data, never pickles)
    def learned_fit(self, device: str | DeviceRef | int, state: str) -> str | None:
        """The JSON of the device's learned model fitted on ``state``, if stored."""
        with self.session() as s:
            device_id = self._device_id(s, device)
            return s.scalar(select(LearnedFit.body).where(LearnedFit.device_id == device_id,
                                                          LearnedFit.state == state))

    def put_learned_fit(self, device: str | DeviceRef | int, state: str, body: str) -> None:
        """Keep ``body`` as the device's learned model for ``state``; fits of older states
        of the device are dropped (they can never be asked for again)."""
        json.loads(body)  # data, not anything else
        with self.session() as s:
            device_id = self._device_id(s, device)
            s.execute(delete(LearnedFit).where(LearnedFit.device_id == device_id,
                                               LearnedFit.state != state))
            upsert(s, LearnedFit, [{"device_id": device_id, "state": state, "body": body,
                                          "created_at": utcnow()}], ["device_id", "state"])

