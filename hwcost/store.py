"""The cost database: open by URL, upsert in batches, query costs.

One code path serves the embedded SQLite default and a shared PostgreSQL
(``postgresql+psycopg://user:pw@host/db``). URL resolution: explicit argument, then the
``HWCOST_DB`` environment variable, then ``sqlite:///<user data dir>/hwcost.db``.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, delete, false, func, select, true
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel

from hwcost import __version__
from hwcost.bounds import LATENCY_MAX_US, LOSS_MAX, float_problem, int_problem, ts_problem
from hwcost.errors import InvalidMeasurement, NoSuchDevice, NoSuchModel, StoreError
from hwcost.precision import config_key, parse_config
from hwcost.schema import (
    UNKNOWN,
    Checkpoint,
    Device,
    LearnedFit,
    ManifestEntry,
    Measurement,
    Meta,
    Model,
    ModelLatency,
    Plan,
    Sensitivity,
    Subgraph,
    Validation,
    utcnow,
)
from hwcost.shape import parse_shape

ENV_VAR = "HWCOST_DB"


def default_url() -> str:
    """The URL used when none is given: ``HWCOST_DB`` or the embedded SQLite file."""
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    from platformdirs import user_data_dir

    return f"sqlite:///{Path(user_data_dir('hwcost')) / 'hwcost.db'}"


def host_name() -> str:
    """The host recorded with each measurement: ``HWCOST_HOST`` (for containers whose
    hostnames mean nothing to a fleet's operators), else the machine's hostname."""
    return os.environ.get("HWCOST_HOST") or socket.gethostname()


# ---------------------------------------------------------------- data crossing the boundary



def timing_problem(t) -> str | None:
    """What is out of its stored range in a timing (a measurement or a whole-model latency):
    median and spread in microseconds, sample count, time taken; None when all is in range."""
    return (float_problem("median_us", t.median_us, LATENCY_MAX_US)
            or float_problem("spread_us", t.spread_us, LATENCY_MAX_US)
            or int_problem("n_samples", t.n_samples, 1)
            or ts_problem("measured_at", t.measured_at))


@dataclass(frozen=True)
class SlotInfo:
    """One quantizable layer position inside a subgraph (structure only, no names)."""

    op: str
    in_features: int
    out_features: int
    bias: bool = False
    experts: int = 0
    """MoE experts of a block as one slot: how many (0 for a plain linear layer), ..."""
    active: int = 0
    """... how many each token is routed to (top-k), ..."""
    inner: int = 0
    """... and their intermediate width (gate_up: hidden -> 2 inner, down: inner -> hidden)."""

    @property
    def weight_params(self) -> int:
        """Parameters stored: every expert of an MoE slot (all are in memory)."""
        if self.experts:
            return self.experts * 3 * self.in_features * self.inner
        return self.in_features * self.out_features

    @property
    def macs_per_token(self) -> int:
        """Multiply-accumulates per token: the active experts only for an MoE slot."""
        if self.experts:
            return self.active * 3 * self.in_features * self.inner
        return self.in_features * self.out_features

    def to_dict(self) -> dict:
        d = {
            "op": self.op, "in_features": self.in_features, "out_features": self.out_features,
            "bias": self.bias, "macs_per_token": self.macs_per_token,
            "weight_params": self.weight_params,
        }
        if self.experts:  # only then: plain layers keep their signatures
            d.update(experts=self.experts, active=self.active, inner=self.inner)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SlotInfo:
        return cls(d["op"], int(d["in_features"]), int(d["out_features"]), bool(d["bias"]),
                   int(d.get("experts", 0)), int(d.get("active", 0)), int(d.get("inner", 0)))


@dataclass(frozen=True)
class SubgraphInfo:
    """A subgraph's signature and structure, as the partitioner produces it."""

    signature: str
    kind: str
    slots: tuple[SlotInfo, ...]
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ManifestItem:
    """One subgraph instance in a model, with the module name of each slot."""

    position: int
    signature: str
    layer_names: tuple[str, ...]


@dataclass(frozen=True)
class MeasurementIn:
    """A measurement to write. Latencies in microseconds."""

    device: str  # fingerprint
    signature: str
    shape: str
    config: tuple[str, ...] | str
    median_us: float
    spread_us: float
    n_samples: int
    host: str = field(default_factory=lambda: host_name())
    campaign: str | None = None
    tool_version: str = __version__
    measured_at: datetime | None = None
    # how it was taken (see hwcost.schema.Measurement)
    clock: str = "wall"
    quick: bool = False
    stable: bool = True
    load1: float | None = None
    cpu_mhz: float | None = None
    threads: int | None = None
    baseline_us: float | None = None
    drift: float | None = None

    @property
    def good(self) -> bool:
        """A full, stable timing: what plans rest on by default."""
        return self.stable and not self.quick

    def validated(self) -> MeasurementIn:
        for name in ("median_us", "spread_us"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v) or v < 0:
                raise InvalidMeasurement(
                    f"{name}={v!r} for {self.signature[:12]} {self.shape} [{self.config}] "
                    "is not a finite non-negative latency")
        if self.median_us == 0:
            raise InvalidMeasurement(f"median_us=0 for {self.signature[:12]}: a run cannot be free")
        if self.n_samples < 1:
            raise InvalidMeasurement(f"n_samples={self.n_samples} must be >= 1")
        problem = timing_problem(self)
        if problem:
            raise InvalidMeasurement(f"{problem} for {self.signature[:12]} {self.shape}")
        if self.baseline_us is not None and not (math.isfinite(self.baseline_us)
                                                 and self.baseline_us > 0):
            raise InvalidMeasurement(f"baseline_us={self.baseline_us!r} for "
                                     f"{self.signature[:12]} is not a finite positive latency")
        parse_shape(self.shape)
        cfg = self.config if isinstance(self.config, str) else config_key(self.config)
        parse_config(cfg)
        return self


@dataclass(frozen=True)
class CostRow:
    """A measured cost of one subgraph instance of a model."""

    position: int
    signature: str
    config: str
    median_us: float
    spread_us: float
    n_samples: int
    baseline_us: float | None = None  # the baseline config timed in the same group
    good: bool = True  # full and stable


def _good(table):
    """SQL: rows a plan may rest on by default (full timings of a stable machine)."""
    return (table.stable == true()) & (table.quick == false())


# ---------------------------------------------------------------------------- the store


def _shape_key(shape: str) -> str:
    """A shape's canonical key; a workload key (``workload:...``, ``hwcost.workload``) as is."""
    return shape if str(shape).startswith("workload:") else parse_shape(shape).key


class Store:
    """A connection to one cost database. Use :func:`open_store` to get one."""

    def __init__(self, url: str, engine: Engine):
        self.url = url
        self.engine = engine
        self.read_only = False  # opened read-only (hwcost.opening): writes fail in one line

    # -- lifecycle
    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        try:
            with Session(self.engine, expire_on_commit=False) as s:
                with s.begin():
                    yield s
        except OperationalError as e:
            if self.read_only and "readonly" in str(e.orig).replace("-", "").lower():
                raise StoreError("the store is open read-only (a read-only file or command); "
                                 "nothing was written") from None
            raise

    @contextmanager
    def _reuse(self, session: Session | None) -> Iterator[Session]:
        """The caller's session when given (one transaction, one round trip less), else a
        new one."""
        if session is not None:
            yield session
        else:
            with self.session() as s:
                yield s

    def schema_version(self) -> int:
        with self.session() as s:
            row = s.get(Meta, "schema_version")
            return int(row.value) if row else 0

    # -- devices
    def upsert_device(self, dev: Device) -> Device:
        """Insert a device by fingerprint, or return the stored one (filling missing peaks)."""
        problem = int_problem("threads", dev.threads, 1)
        if problem:
            raise InvalidMeasurement(f"device {dev.fingerprint[:12]}: {problem}")
        with self.session() as s:
            # INSERT ... ON CONFLICT DO NOTHING, then read: concurrent workers recording the
            # same device at once (PostgreSQL) must not fail on the unique fingerprint.
            data = dev.model_dump(exclude={"id"})
            self._insert_ignore(s, Device, [data], ["fingerprint"])
            found = s.scalars(select(Device).where(Device.fingerprint == dev.fingerprint)).one()
            if dev.peaks != "{}" and found.peaks != dev.peaks:
                merged = {**json.loads(found.peaks), **json.loads(dev.peaks)}
                found.peaks = json.dumps(merged, sort_keys=True)
            return found

    def devices(self) -> list[Device]:
        with self.session() as s:
            return list(s.scalars(select(Device).order_by(Device.id)))

    def get_device(self, ref: str, *, session: Session | None = None) -> Device:
        """Find a device by fingerprint (or unique prefix) or by exact product name."""
        with self._reuse(session) as s:
            rows = list(s.scalars(select(Device).where(Device.fingerprint.startswith(ref))))
            if not rows:
                rows = list(s.scalars(select(Device).where(Device.name == ref)))
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise NoSuchDevice(f"no device {ref!r} in the store; `hwcost db ls` lists devices, "
                               "`hwcost device --save` records this machine")
        names = ", ".join(d.fingerprint[:12] for d in rows)
        raise NoSuchDevice(f"{ref!r} matches several devices ({names}); give more of the fingerprint")

    def set_device_peaks(self, fingerprint: str, peaks: dict) -> None:
        with self.session() as s:
            dev = s.scalars(select(Device).where(Device.fingerprint == fingerprint)).one()
            dev.peaks = json.dumps({**json.loads(dev.peaks), **peaks}, sort_keys=True)

    # -- subgraphs and models
    def upsert_subgraphs(self, infos: Iterable[SubgraphInfo]) -> dict[str, int]:
        """Get-or-create subgraphs by signature; returns signature -> id."""
        infos = list({i.signature: i for i in infos}.values())
        rows = [{
            "signature": i.signature, "kind": i.kind, "n_slots": len(i.slots),
            "slots": json.dumps([sl.to_dict() for sl in i.slots]),
            "extra": json.dumps(i.extra, sort_keys=True), "created_at": utcnow(),
        } for i in infos]
        with self.session() as s:
            self._insert_ignore(s, Subgraph, rows, ["signature"])
            return self._subgraph_ids(s, [i.signature for i in infos])

    def _subgraph_ids(self, s: Session, signatures: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        sigs = list(set(signatures))
        for i in range(0, len(sigs), 500):
            chunk = sigs[i:i + 500]
            out.update(s.execute(select(Subgraph.signature, Subgraph.id)
                                 .where(Subgraph.signature.in_(chunk))).all())
        return out

    def subgraph(self, signature: str) -> SubgraphInfo:
        with self.session() as s:
            row = s.scalars(select(Subgraph).where(Subgraph.signature == signature)).first()
        if row is None:
            raise StoreError(f"no subgraph {signature[:12]} in the store")
        return _subgraph_info(row)

    def put_model(self, fingerprint: str, name: str, subgraphs: Sequence[SubgraphInfo],
                  manifest: Sequence[ManifestItem]) -> int:
        """Store a model's subgraphs and manifest (idempotent by fingerprint); returns its id."""
        ids = self.upsert_subgraphs(subgraphs)
        missing = {m.signature for m in manifest} - set(ids)
        if missing:
            raise StoreError(f"manifest names subgraphs not given: {sorted(missing)[:3]}")
        with self.session() as s:
            n_layers = sum(len(m.layer_names) for m in manifest)
            row = {"fingerprint": fingerprint, "name": name, "n_subgraphs": len(manifest),
                   "n_layers": n_layers, "created_at": utcnow()}
            # Insert-or-ignore so two processes storing the same model at once both succeed;
            # only the one that inserted the model writes its manifest.
            if not self._insert_ignore(s, Model, [row], ["fingerprint"]):
                return s.scalar(select(Model.id).where(Model.fingerprint == fingerprint))
            model_id = s.scalar(select(Model.id).where(Model.fingerprint == fingerprint))
            s.add_all(ManifestEntry(model_id=model_id, position=m.position,
                                    subgraph_id=ids[m.signature],
                                    layer_names=json.dumps(list(m.layer_names)))
                      for m in manifest)
            return model_id

    def put_checkpoint(self, model_id: int, digest: str, name: str = "", source: str = "") -> int:
        """Record one checkpoint (weights digest) of a stored model; idempotent, returns its id."""
        if not digest or digest == UNKNOWN:
            raise StoreError("a checkpoint needs its weights digest (profiles.checkpoint)")
        with self.session() as s:
            row = {"model_id": model_id, "digest": digest, "name": name, "source": source,
                   "created_at": utcnow()}
            self._insert_ignore(s, Checkpoint, [row], ["model_id", "digest"])
            return s.scalar(select(Checkpoint.id).where(Checkpoint.model_id == model_id,
                                                        Checkpoint.digest == digest))

    def checkpoints(self, model_id: int | None = None) -> list[Checkpoint]:
        """Recorded checkpoints (of one model when given), oldest first."""
        with self.session() as s:
            q = select(Checkpoint).order_by(Checkpoint.model_id, Checkpoint.id)
            if model_id is not None:
                q = q.where(Checkpoint.model_id == model_id)
            return list(s.scalars(q))

    def sensitivity_keys(self, model_id: int, method: str = "taylor"
                         ) -> list[tuple[str, str, str]]:
        """Distinct (checkpoint, quantizer, calib_fingerprint) of a model's stored tables,
        newest first."""
        with self.session() as s:
            last = func.max(Sensitivity.id)
            rows = s.execute(select(Sensitivity.checkpoint, Sensitivity.quantizer,
                                    Sensitivity.calib_fingerprint, last)
                             .where(Sensitivity.model_id == model_id,
                                    Sensitivity.method == method)
                             .group_by(Sensitivity.checkpoint, Sensitivity.quantizer,
                                       Sensitivity.calib_fingerprint)
                             .order_by(last.desc())).all()
        return [(c, q, f) for c, q, f, _ in rows]

    def models(self) -> list[Model]:
        with self.session() as s:
            return list(s.scalars(select(Model).order_by(Model.id)))

    def get_model(self, ref: str, *, session: Session | None = None) -> Model:
        """Find a model by fingerprint (or unique prefix) or by name (latest wins)."""
        with self._reuse(session) as s:
            rows = list(s.scalars(select(Model).where(Model.fingerprint.startswith(ref))))
            if not rows:
                rows = list(s.scalars(select(Model).where(Model.name == ref)
                                      .order_by(Model.id.desc())))[:1]
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise NoSuchModel(f"no model {ref!r} in the store; `hwcost profile MODEL` records one, "
                              "`hwcost db ls` lists what is there")
        raise NoSuchModel(f"{ref!r} matches several models; give more of the fingerprint")

    def manifest(self, model_ref: str) -> tuple[Model, list[tuple[ManifestItem, SubgraphInfo]]]:
        """A model's subgraph instances in order, each with its structure."""
        model = self.get_model(model_ref)
        with self.session() as s:
            rows = s.execute(select(ManifestEntry, Subgraph)
                             .join(Subgraph, Subgraph.id == ManifestEntry.subgraph_id)
                             .where(ManifestEntry.model_id == model.id)
                             .order_by(ManifestEntry.position)).all()
        return model, [(ManifestItem(e.position, g.signature, tuple(json.loads(e.layer_names))),
                        _subgraph_info(g)) for e, g in rows]

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
            sgs = self._subgraph_ids(s, [m.signature for m in items])
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
            bad = None if replace else ~_good(Measurement)
            return self._upsert(s, Measurement, rows, keys, replace=True, where=bad)

    def measurement_count(self) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(Measurement))

    def measured_configs(self, device: str, shape: str, signatures: Sequence[str], *,
                         allow_unstable: bool = False) -> dict[str, set[str]]:
        """signature -> configs measured for it on this device and shape (full, stable
        timings only unless ``allow_unstable``)."""
        dev = self.get_device(device)
        shape = parse_shape(shape).key
        with self.session() as s:
            ids = self._subgraph_ids(s, signatures)
            by_id = {v: k for k, v in ids.items()}
            out: dict[str, set[str]] = {sig: set() for sig in signatures}
            sids = list(by_id)
            for i in range(0, len(sids), 500):
                chunk = sids[i:i + 500]
                q = (select(Measurement.subgraph_id, Measurement.config)
                     .where(Measurement.device_id == dev.id, Measurement.shape == shape,
                            Measurement.subgraph_id.in_(chunk)))
                if not allow_unstable:
                    q = q.where(_good(Measurement))
                for sid, cfg in s.execute(q):
                    out[by_id[sid]].add(cfg)
        return out

    def model_costs(self, model_ref: str, device: str, shape: str, *,
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
                       Measurement.baseline_us, _good(Measurement))
                .join(Subgraph, Subgraph.id == Measurement.subgraph_id)
                .where(Measurement.device_id == device_id, Measurement.shape == shape,
                       Measurement.subgraph_id.in_(parts.distinct()))
                .order_by(Measurement.subgraph_id, Measurement.config))
        if not allow_unstable:
            stmt = stmt.where(_good(Measurement))
        manifest = c.execute(select(ManifestEntry.position, ManifestEntry.subgraph_id)
                             .where(ManifestEntry.model_id == model_id)
                             .order_by(ManifestEntry.position)).all()
        measured = c.execute(stmt).all()  # fetchall: row-by-row iteration is 2x slower
        return manifest, measured

    def device_measurements(self, device: str, *, allow_unstable: bool = False
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
                q = q.where(_good(Measurement))
            rows = s.execute(q).all()
            return [(_subgraph_info(g), sh, cfg, med, spr) for g, sh, cfg, med, spr in rows]

    # -- whole-model latencies
    def add_model_latency(self, row: ModelLatency, *, replace: bool = False) -> bool:
        """Write a whole-model latency. A stored row of the same key is kept unless
        ``replace`` or it is quick or unstable (then the new one replaces it). Returns
        whether the row was written."""
        for name in ("median_us", "spread_us"):
            v = getattr(row, name)
            if v is None or math.isnan(v) or math.isinf(v) or v < 0:
                raise InvalidMeasurement(f"{name}={v!r} is not a finite non-negative latency")
        problem = timing_problem(row)
        if problem:
            raise InvalidMeasurement(f"model latency {problem}")
        data = row.model_dump(exclude={"id"})
        with self.session() as s:
            keys = ["model_id", "device_id", "shape", "config_hash"]
            bad = None if replace else ~_good(ModelLatency)
            return bool(self._upsert(s, ModelLatency, [data], keys, replace=True, where=bad))

    def model_latency(self, model_id: int, device_id: int, shape: str, config_hash: str, *,
                      allow_unstable: bool = False) -> ModelLatency | None:
        """The stored whole-model latency (full and stable unless ``allow_unstable``)."""
        with self.session() as s:
            q = select(ModelLatency).where(
                ModelLatency.model_id == model_id, ModelLatency.device_id == device_id,
                ModelLatency.shape == _shape_key(shape),
                ModelLatency.config_hash == config_hash)
            if not allow_unstable:
                q = q.where(_good(ModelLatency))
            return s.scalars(q).first()

    # -- learned fallback fits (JSON data, never pickles)
    def learned_fit(self, device_id: int, state: str) -> str | None:
        """The JSON of the device's learned model fitted on ``state``, if stored."""
        with self.session() as s:
            return s.scalar(select(LearnedFit.body).where(LearnedFit.device_id == device_id,
                                                          LearnedFit.state == state))

    def put_learned_fit(self, device_id: int, state: str, body: str) -> None:
        """Keep ``body`` as the device's learned model for ``state``; fits of older states
        of the device are dropped (they can never be asked for again)."""
        json.loads(body)  # data, not anything else
        with self.session() as s:
            s.execute(delete(LearnedFit).where(LearnedFit.device_id == device_id,
                                               LearnedFit.state != state))
            self._upsert(s, LearnedFit, [{"device_id": device_id, "state": state, "body": body,
                                          "created_at": utcnow()}], ["device_id", "state"])

    # -- sensitivities
    def add_sensitivities(self, rows: Sequence[Sensitivity], *, replace: bool = True) -> int:
        """Write a sensitivity table in one transaction (all rows validated first)."""
        for r in rows:
            for name in ("loss_mse", "stderr"):
                v = getattr(r, name)
                if v is None or math.isnan(v) or math.isinf(v) or v < 0:
                    raise InvalidMeasurement(
                        f"sensitivity {name}={v!r} for {r.layer} [{r.precision}] is not finite >= 0")
            problem = (float_problem("loss_mse", r.loss_mse, LOSS_MAX)
                       or float_problem("stderr", r.stderr, LOSS_MAX)
                       or int_problem("n_samples", r.n_samples, 1))
            if problem:
                raise InvalidMeasurement(f"sensitivity {problem} for {r.layer} [{r.precision}]")
        data = [r.model_dump(exclude={"id"}) for r in rows]
        keys = ["model_id", "checkpoint", "quantizer", "calib_fingerprint", "layer",
                "precision", "method"]
        with self.session() as s:
            return self._upsert(s, Sensitivity, data, keys, replace=replace)

    def sensitivities(self, model_id: int, method: str = "taylor",
                      calib_fingerprint: str | None = None, *, checkpoint: str | None = None,
                      quantizer: str | None = None) -> list[Sensitivity]:
        """A model's sensitivity rows for one method, checkpoint and quantizer.

        ``checkpoint`` / ``quantizer`` / ``calib_fingerprint`` left as None take those of the
        latest stored table among the ones matching what is given; a table of one checkpoint
        is never mixed with another's."""
        with self.session() as s:
            q = select(Sensitivity).where(Sensitivity.model_id == model_id,
                                          Sensitivity.method == method)
            for col, value in ((Sensitivity.checkpoint, checkpoint),
                               (Sensitivity.quantizer, quantizer),
                               (Sensitivity.calib_fingerprint, calib_fingerprint)):
                if value is not None:
                    q = q.where(col == value)
            latest = s.scalars(q.order_by(Sensitivity.created_at.desc(),
                                          Sensitivity.id.desc())).first()
            if latest is None:
                return []
            q = q.where(Sensitivity.checkpoint == latest.checkpoint,
                        Sensitivity.quantizer == latest.quantizer,
                        Sensitivity.calib_fingerprint == latest.calib_fingerprint)
            return list(s.scalars(q.order_by(Sensitivity.id)))

    # -- plans and validations
    def add_plan(self, plan: Plan) -> int:
        with self.session() as s:
            s.add(plan)
            s.flush()
            return plan.id

    def get_plan(self, plan_id: int) -> Plan:
        with self.session() as s:
            plan = s.get(Plan, plan_id)
        if plan is None:
            raise StoreError(f"no plan {plan_id} in the store")
        return plan

    def plans_for(self, model_id: int, device_id: int, shape: str, *,
                  checkpoint: str | None = None, quantizer: str | None = None) -> list[Plan]:
        """Plans of a model on a device and shape (of one checkpoint and quantizer when
        given), oldest first."""
        with self.session() as s:
            q = select(Plan).where(Plan.model_id == model_id, Plan.device_id == device_id,
                                   Plan.shape == _shape_key(shape))
            if checkpoint is not None:
                q = q.where(Plan.checkpoint == checkpoint)
            if quantizer is not None:
                q = q.where(Plan.quantizer == quantizer)
            return list(s.scalars(q.order_by(Plan.id)))

    def validations_for(self, plan_id: int, *, checkpoint: str | None = None
                        ) -> list[Validation]:
        """Validations of a plan (measured with one checkpoint's weights when given), oldest
        first."""
        with self.session() as s:
            q = select(Validation).where(Validation.plan_id == plan_id)
            if checkpoint is not None:
                q = q.where(Validation.checkpoint == checkpoint)
            return list(s.scalars(q.order_by(Validation.id)))

    def add_validation(self, v: Validation) -> int:
        with self.session() as s:
            s.add(v)
            s.flush()
            return v.id

    # -- bulk helpers shared by every writer
    def _insert_ignore(self, s: Session, table: type[SQLModel], rows: list[dict],
                       keys: list[str]) -> int:
        """INSERT ... ON CONFLICT DO NOTHING in chunks; returns rows inserted."""
        return self._upsert(s, table, rows, keys, replace=False)

    def _upsert(self, s: Session, table: type[SQLModel], rows: list[dict],
                keys: list[str], *, replace: bool = True, where=None) -> int:
        """INSERT ... ON CONFLICT DO UPDATE (``replace``; only stored rows matching ``where``
        when given) or DO NOTHING in chunks; returns rows inserted or updated."""
        if not rows:
            return 0
        ins = _dialect_insert(self.dialect)
        n = 0
        step = max(1, 30000 // max(1, len(rows[0])))  # stay under bound-parameter limits
        for i in range(0, len(rows), step):
            stmt = ins(table).values(rows[i:i + step])
            if replace:
                update = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
                stmt = stmt.on_conflict_do_update(index_elements=keys, set_=update, where=where)
            else:
                stmt = stmt.on_conflict_do_nothing(index_elements=keys)
            n += len(s.execute(stmt.returning(table.id)).all())  # rowcount is -1 on psycopg
        return n


def _dialect_insert(dialect: str):
    if dialect == "sqlite":
        return sqlite_dialect.insert
    if dialect == "postgresql":
        return pg_dialect.insert
    raise StoreError(f"unsupported database {dialect!r}; use sqlite:/// or postgresql+psycopg://")


def _subgraph_info(row: Subgraph) -> SubgraphInfo:
    return SubgraphInfo(row.signature, row.kind,
                        tuple(SlotInfo.from_dict(d) for d in json.loads(row.slots)),
                        json.loads(row.extra))


# ------------------------------------------------------------------------------- opening
# (hwcost.opening: URLs, engines, schema creation and upgrades; re-exported here)

from hwcost.opening import _redact, open_store  # noqa: E402,F401
