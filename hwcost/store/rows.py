"""SQL helpers private to the store package: bulk upserts, id lookups by natural key, the
"good timing" filter and row -> record conversion."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import false, select, true
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlmodel import Session, SQLModel

from hwcost.errors import StoreError
from hwcost.shape import parse_shape
from hwcost.store.records import DeviceRef, ModelRef, SlotInfo, SubgraphInfo
from hwcost.store.schema import Device, Model, Subgraph

if TYPE_CHECKING:
    from hwcost.catalog import CatalogEntry
    from hwcost.device import DeviceInfo

__all__: list[str] = []  # private to hwcost.store


def good(table):
    """SQL: rows a plan may rest on by default (full timings of a stable machine)."""
    return (table.stable == true()) & (table.quick == false())


def shape_key(shape: str) -> str:
    """A shape's canonical key; a workload key (``workload:...``, ``hwcost.workload``) as is."""
    return shape if str(shape).startswith("workload:") else parse_shape(shape).key


def dialect_insert(dialect: str):
    """The dialect's INSERT construct (it has ``on_conflict_do_*``)."""
    if dialect == "sqlite":
        return sqlite_dialect.insert
    if dialect == "postgresql":
        return pg_dialect.insert
    raise StoreError(f"unsupported database {dialect!r}; use sqlite:/// or postgresql+psycopg://")


def upsert(s: Session, table: type[SQLModel], rows: list[dict], keys: list[str], *,
           replace: bool = True, where=None) -> int:
    """INSERT ... ON CONFLICT DO UPDATE (``replace``; only stored rows matching ``where``
    when given) or DO NOTHING in chunks; returns rows inserted or updated."""
    if not rows:
        return 0
    ins = dialect_insert(s.get_bind().dialect.name)
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


def insert_ignore(s: Session, table: type[SQLModel], rows: list[dict], keys: list[str]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING in chunks; returns rows inserted."""
    return upsert(s, table, rows, keys, replace=False)


def subgraph_ids(s: Session, signatures: Sequence[str]) -> dict[str, int]:
    """signature -> id of the stored subgraphs among ``signatures``."""
    out: dict[str, int] = {}
    sigs = list(set(signatures))
    for i in range(0, len(sigs), 500):
        chunk = sigs[i:i + 500]
        out.update(s.execute(select(Subgraph.signature, Subgraph.id)
                             .where(Subgraph.signature.in_(chunk))).all())
    return out


def subgraph_info(row: Subgraph) -> SubgraphInfo:
    """A stored subgraph row as its record."""
    return SubgraphInfo(row.signature, row.kind,
                        tuple(SlotInfo.from_dict(d) for d in json.loads(row.slots)),
                        json.loads(row.extra))


def device_ref(row: Device) -> DeviceRef:
    """A stored device row as its record."""
    return DeviceRef(row.fingerprint, row.name, row.kind, row.threads, row.source,
                     json.loads(row.peaks or "{}"), tuple(json.loads(row.flags or "[]")),
                     json.loads(row.software or "{}"))


def device_row(info: DeviceInfo, peaks: dict | None = None, source: str = "local") -> Device:
    """The row of a device (this machine's, or one described by its fingerprint fields)."""
    return Device(fingerprint=info.fingerprint, kind=info.kind, name=info.name,
                  threads=info.threads, flags=json.dumps(sorted(info.flags)),
                  software=json.dumps(info.software, sort_keys=True),
                  peaks=json.dumps(peaks or {}, sort_keys=True), source=source)


def catalog_row(entry: CatalogEntry) -> Device:
    """The row of a catalog (datasheet) device: no threads, flags or software stack."""
    return Device(fingerprint=entry.fingerprint, kind=entry.kind, name=entry.name, threads=None,
                  flags="[]", software=json.dumps({"catalog": entry.product}),
                  peaks=json.dumps(entry.peaks.to_json(), sort_keys=True), source="catalog")


def model_ref(row: Model) -> ModelRef:
    """A stored model row as its record."""
    return ModelRef(row.fingerprint, row.name, row.n_subgraphs, row.n_layers)


def exact_row(s: Session, table: type[Device] | type[Model], ref, missing: type[Exception]):
    """The device or model row of a record (by its exact fingerprint), of an id or a row;
    ``missing`` (NoSuchDevice / NoSuchModel) when there is none."""
    if isinstance(ref, table):  # a row this store handed out
        return ref
    row = (s.get(table, ref) if isinstance(ref, int) else
           s.scalars(select(table).where(table.fingerprint == ref.fingerprint)).first())
    if row is None:
        what = getattr(ref, "fingerprint", str(ref))[:12]
        raise missing(f"{table.__tablename__} {what} is not in the store")
    return row
