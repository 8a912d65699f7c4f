"""The SQL store: one code path for the embedded SQLite default and a shared PostgreSQL
(``postgresql+psycopg://user:pw@host/db``). This module holds the connection, devices,
subgraphs, models and checkpoints; measurements and results are in the sibling modules."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from hwcost.bounds import int_problem
from hwcost.errors import AmbiguousDevice, InvalidMeasurement, NoSuchDevice, NoSuchModel, StoreError
from hwcost.store.campaigns import CampaignMethods
from hwcost.store.measurements import MeasurementMethods
from hwcost.store.records import DeviceRef, Manifest, ManifestItem, ModelRef, SubgraphInfo
from hwcost.store.results import ResultMethods
from hwcost.store.rows import (
    catalog_row,
    device_ref,
    device_row,
    exact_row,
    insert_ignore,
    model_ref,
    subgraph_ids,
    subgraph_info,
)
from hwcost.store.schema import (
    UNKNOWN,
    Checkpoint,
    Device,
    ManifestEntry,
    Meta,
    Model,
    Subgraph,
    utcnow,
)

if TYPE_CHECKING:  # annotations only
    from hwcost.catalog import CatalogEntry
    from hwcost.device import DeviceInfo

__all__ = ["SqlStore"]


class SqlStore(MeasurementMethods, ResultMethods, CampaignMethods):
    """A connection to one cost database (SQLite or PostgreSQL through SQLAlchemy). Use
    :func:`open_store` to get one."""

    def __init__(self, url: str, engine: Engine):
        self.url = url
        self.engine = engine
        self.read_only = False  # opened read-only (hwcost.store.opening): writes fail in one line

    # -- lifecycle
    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> SqlStore:
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

    def _model_id(self, s: Session, ref: str | ModelRef | Model | int) -> int:
        if isinstance(ref, (int, Model)):  # an id or a row: the package's own handles
            return ref if isinstance(ref, int) else ref.id
        return self.get_model(ref, session=s).id

    def _device_id(self, s: Session, ref: str | DeviceRef | Device | int) -> int:
        if isinstance(ref, (int, Device)):
            return ref if isinstance(ref, int) else ref.id
        return self.get_device(ref, session=s).id

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
            insert_ignore(s, Device, [data], ["fingerprint"])
            found = s.scalars(select(Device).where(Device.fingerprint == dev.fingerprint)).one()
            if dev.peaks != "{}" and found.peaks != dev.peaks:
                merged = {**json.loads(found.peaks), **json.loads(dev.peaks)}
                found.peaks = json.dumps(merged, sort_keys=True)
            return found

    def put_device(self, info: DeviceInfo, *, peaks: dict | None = None,
                   source: str = "local") -> DeviceRef:
        """Record a device by fingerprint (idempotent; given peaks are merged in)."""
        return device_ref(self.upsert_device(device_row(info, peaks, source)))

    def put_catalog_device(self, entry: CatalogEntry) -> DeviceRef:
        """Record a catalog (datasheet) device by its catalog fingerprint (idempotent)."""
        return device_ref(self.upsert_device(catalog_row(entry)))

    def devices(self) -> list[DeviceRef]:
        """Every stored device, in the order they were recorded."""
        with self.session() as s:
            return [device_ref(d) for d in s.scalars(select(Device).order_by(Device.id))]

    def device(self, ref: str | DeviceRef) -> DeviceRef:
        """Resolve a device once: a fingerprint (or unique prefix) or an exact product name.
        Pass the :class:`DeviceRef` along; methods find it again by its exact fingerprint."""
        return device_ref(self.get_device(ref))

    def get_device(self, ref: str | DeviceRef | int, *, session: Session | None = None
                   ) -> Device:
        """The device row of a fingerprint (or unique prefix), an exact product name, a
        :class:`DeviceRef` (exact fingerprint) or an id (inside the store package)."""
        with self._reuse(session) as s:
            if isinstance(ref, (DeviceRef, Device, int)):
                return exact_row(s, Device, ref, NoSuchDevice)
            rows = (list(s.scalars(select(Device).where(Device.fingerprint.startswith(ref))))
                    or list(s.scalars(select(Device).where(Device.name == ref))))
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise NoSuchDevice(f"no device {ref!r} in the store; `hwcost db ls` lists devices, "
                               "`hwcost device --save` records this machine")
        names = ", ".join(d.fingerprint[:12] for d in rows)
        raise AmbiguousDevice(f"{ref!r} matches several devices ({names}); give more of the "
                              "fingerprint")

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
            insert_ignore(s, Subgraph, rows, ["signature"])
            return subgraph_ids(s, [i.signature for i in infos])

    def subgraph(self, signature: str) -> SubgraphInfo:
        with self.session() as s:
            row = s.scalars(select(Subgraph).where(Subgraph.signature == signature)).first()
        if row is None:
            raise StoreError(f"no subgraph {signature[:12]} in the store")
        return subgraph_info(row)

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
            if not insert_ignore(s, Model, [row], ["fingerprint"]):
                return s.scalar(select(Model.id).where(Model.fingerprint == fingerprint))
            model_id = s.scalar(select(Model.id).where(Model.fingerprint == fingerprint))
            s.add_all(ManifestEntry(model_id=model_id, position=m.position,
                                    subgraph_id=ids[m.signature],
                                    layer_names=json.dumps(list(m.layer_names)))
                      for m in manifest)
            return model_id

    def put_checkpoint(self, model: str | ModelRef | int, digest: str, name: str = "",
                       source: str = "") -> int:
        """Record one checkpoint (weights digest) of a stored model; idempotent, returns its id."""
        if not digest or digest == UNKNOWN:
            raise StoreError("a checkpoint needs its weights digest (profiles.checkpoint)")
        with self.session() as s:
            model_id = self._model_id(s, model)
            row = {"model_id": model_id, "digest": digest, "name": name, "source": source,
                   "created_at": utcnow()}
            insert_ignore(s, Checkpoint, [row], ["model_id", "digest"])
            return s.scalar(select(Checkpoint.id).where(Checkpoint.model_id == model_id,
                                                        Checkpoint.digest == digest))

    def checkpoints(self, model: str | ModelRef | int | None = None) -> list[Checkpoint]:
        """Recorded checkpoints (of one model when given), oldest first."""
        with self.session() as s:
            q = select(Checkpoint).order_by(Checkpoint.model_id, Checkpoint.id)
            if model is not None:
                q = q.where(Checkpoint.model_id == self._model_id(s, model))
            return list(s.scalars(q))

    def models(self) -> list[Model]:
        with self.session() as s:
            return list(s.scalars(select(Model).order_by(Model.id)))

    def model(self, ref: str | ModelRef) -> ModelRef:
        """Resolve a model once: a fingerprint (or unique prefix) or a name (latest wins)."""
        return model_ref(self.get_model(ref))

    def get_model(self, ref: str | ModelRef | int, *, session: Session | None = None) -> Model:
        """The model row of a fingerprint (or unique prefix), a name (latest wins), a
        :class:`ModelRef` (exact fingerprint) or an id (inside the store package)."""
        with self._reuse(session) as s:
            if isinstance(ref, (ModelRef, Model, int)):
                return exact_row(s, Model, ref, NoSuchModel)
            by_name = select(Model).where(Model.name == ref).order_by(Model.id.desc()).limit(1)
            rows = (list(s.scalars(select(Model).where(Model.fingerprint.startswith(ref))))
                    or list(s.scalars(by_name)))
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise NoSuchModel(f"no model {ref!r} in the store; `hwcost profile MODEL` records one, "
                              "`hwcost db ls` lists what is there")
        raise NoSuchModel(f"{ref!r} matches several models; give more of the fingerprint")

    def model_manifest(self, model: str | ModelRef) -> Manifest:
        """A model's subgraph instances in order, each with its structure (one transaction)."""
        with self.session() as s:
            return self._manifest(s, self.get_model(model, session=s))[1]

    def manifest(self, model_ref: str | ModelRef
                 ) -> tuple[Model, list[tuple[ManifestItem, SubgraphInfo]]]:
        """The model's row and its manifest items (:meth:`model_manifest` without the row)."""
        with self.session() as s:
            row, found = self._manifest(s, self.get_model(model_ref, session=s))
        return row, list(found.items)

    @staticmethod
    def _manifest(s: Session, model: Model) -> tuple[Model, Manifest]:
        rows = s.execute(select(ManifestEntry, Subgraph)
                         .join(Subgraph, Subgraph.id == ManifestEntry.subgraph_id)
                         .where(ManifestEntry.model_id == model.id)
                         .order_by(ManifestEntry.position)).all()
        return model, Manifest(model_ref(model), tuple(
            (ManifestItem(e.position, g.signature, tuple(json.loads(e.layer_names))),
             subgraph_info(g)) for e, g in rows))
