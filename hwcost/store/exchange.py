"""Sharing cost tables: export a store (or one device of it) to a bundle file and merge a
bundle into a store. The file format is ``hwcost.store.bundle``.

Import validates everything before it writes anything (``hwcost.store.bundle.read_bundle``), then
merges in one transaction by natural key. Conflict rule (a key present in both with different
values): ``keep`` (default) keeps the store's row, ``replace`` takes the bundle's, ``newer``
takes the bundle's where its timestamp (``measured_at``/``created_at``) is later and keeps the
store's otherwise (tables without a timestamp keep). Every conflict is counted in the report
either way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import DateTime, bindparam, text

from hwcost.enums import ConflictRule
from hwcost.errors import HwcostError
from hwcost.store.bulk import drop_temp, insert_rows, load_temp, read_rows
from hwcost.store.bundle import (  # noqa: F401  (re-exported: the exchange API in one place)
    META_KEY,
    REFERENCED,
    SPEC,
    SPECS,
    Bundle,
    ExportReport,
    TableSpec,
    content_checksum,
    format_key,
    read_bundle,
    write_bundle,
)

if TYPE_CHECKING:
    from hwcost.store.sql import SqlStore

CONFLICT_RULES = tuple(ConflictRule.values())


# ------------------------------------------------------------------------------ reports


@dataclass
class TableReport:
    """What an import did to one table."""

    rows: int = 0  # rows of this table in the bundle
    new: int = 0  # keys the store did not have: inserted
    identical: int = 0  # keys present with equal values: nothing to do
    conflicting: int = 0  # keys present with different values
    replaced: int = 0  # conflicts resolved in the bundle's favour
    kept: int = 0  # conflicts resolved in the store's favour
    examples: list[str] = field(default_factory=list)  # a few conflicting keys


@dataclass
class ImportReport:
    """Result of :func:`import_bundle`."""

    path: str
    on_conflict: str
    checksum: str
    tables: dict[str, TableReport]
    seconds: dict[str, float] = field(default_factory=dict)  # validate, merge, commit

    @property
    def new(self) -> int:
        return sum(t.new for t in self.tables.values())

    @property
    def conflicting(self) -> int:
        return sum(t.conflicting for t in self.tables.values())

    def to_dict(self) -> dict:
        return {"path": self.path, "on_conflict": self.on_conflict, "checksum": self.checksum,
                "tables": {k: vars(v) for k, v in self.tables.items()},
                "seconds": self.seconds}


# ------------------------------------------------------------------------------ export


def read_tables(store: SqlStore, fingerprint: str | None = None) -> dict[str, pa.Table]:
    """Every exchanged table of the store as Arrow rows with natural keys (unsorted).

    ``fingerprint`` (a full device fingerprint) restricts the device-keyed tables (device,
    measurement, model_latency); subgraphs, models, manifests and sensitivities, which do not
    depend on a device, are always whole. Rows are read with integer ids, which Arrow then
    maps to natural keys: far cheaper than joining strings into every row in SQL.
    """
    out: dict[str, pa.Table] = {}
    keys: dict[str, tuple[pa.Array, pa.Array]] = {}  # table -> (ids, natural keys)
    with store.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")  # one snapshot
        with conn.begin():
            dev_id = None
            if fingerprint:
                dev_id = conn.execute(text("SELECT id FROM device WHERE fingerprint = :fp"),
                                      {"fp": fingerprint}).scalar_one()
            for spec in SPECS:
                cols = spec.store_cols
                if spec.name in REFERENCED:
                    cols = [("id", "int"), *cols]
                sql = f"SELECT {', '.join(c for c, _ in cols)} FROM {spec.name}"
                params = {}
                if dev_id is not None and spec.device_filter:
                    sql += f" WHERE {spec.device_filter} = :dev"
                    params = {"dev": dev_id}
                t = read_rows(conn, sql, cols, params)
                if spec.name in REFERENCED:
                    keys[spec.name] = (t.column("id").combine_chunks(),
                                       t.column(spec.key[0]).combine_chunks())
                    t = t.drop_columns(["id"])
                for col, target in spec.refs:
                    ids, names = keys[target]
                    i = t.schema.get_field_index(f"{col}_id")
                    t = t.set_column(i, col, pc.take(names, pc.index_in(t.column(i), value_set=ids)))
                out[spec.name] = t
    return out

def export_bundle(store: SqlStore, path: str | os.PathLike, device: str | None = None) -> ExportReport:
    """Write the store (or one device's part of it) to one self-describing Parquet file.

    ``device`` (fingerprint, unique prefix or name) limits the device-keyed tables to that
    device, see :func:`read_tables`.
    """
    fp = store.device(device).fingerprint if device else None
    return write_bundle(read_tables(store, fp), path, device=fp)

# ------------------------------------------------------------------------------ import


def import_bundle(store: SqlStore, path: str | os.PathLike, on_conflict: str = "keep") -> ImportReport:
    """Validate a bundle completely, then merge it into the store in one transaction.

    Rows are matched by natural key. ``on_conflict`` decides between a stored row and a
    bundle row with the same key and different values: ``keep`` (default), ``replace`` or
    ``newer`` (see the module docstring). Raises ``BundleInvalid`` and writes nothing when
    any check fails.
    """
    if on_conflict not in CONFLICT_RULES:
        raise HwcostError(f"on_conflict must be one of {', '.join(CONFLICT_RULES)}; "
                          f"got {on_conflict!r}")
    t0 = time.perf_counter()
    bundle = read_bundle(path)
    report = ImportReport(bundle.path, on_conflict, bundle.checksum, {})
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    t1 = time.perf_counter()
    with store.session() as s:
        conn = s.connection()
        ids: dict[str, dict[str, int]] = {}
        for spec in SPECS:
            t = _with_ids(spec, bundle.tables[spec.name], ids)
            report.tables[spec.name] = _merge(conn, spec, t, on_conflict, now, ids)
            if spec.name in REFERENCED:
                ids[spec.name] = _id_map(conn, spec)
            drop_temp(conn, f"imp_{spec.name}")
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    report.seconds = {"validate": round(t1 - t0, 3), "merge": round(t2 - t1, 3),
                      "commit": round(t3 - t2, 3)}
    return report


def _with_ids(spec: TableSpec, t: pa.Table, ids: dict[str, dict[str, int]]) -> pa.Table:
    """Replace natural-key references by the store's integer ids."""
    for col, target in spec.refs:
        mapping = ids[target]
        keys = pa.array(list(mapping), pa.string())
        values = pa.array(list(mapping.values()), pa.int64())
        idx = pc.index_in(t.column(col), value_set=keys)
        t = t.set_column(t.schema.get_field_index(col), f"{col}_id", pc.take(values, idx))
    return t


def _id_map(conn, spec: TableSpec) -> dict[str, int]:
    k = spec.key[0]
    rows = conn.execute(text(f"SELECT t.{k}, t.id FROM {spec.name} t "
                             f"JOIN imp_{spec.name} i ON i.{k} = t.{k}")).all()
    return dict(rows)


def _merge(conn, spec: TableSpec, t: pa.Table, rule: str, now: datetime,
           ids: dict[str, dict[str, int]]) -> TableReport:
    tmp = f"imp_{spec.name}"
    cols = spec.store_cols
    if t.num_rows >= _BULK_ROWS and not spec.insert_extra and \
            _load_into_empty(conn, spec.name, t, cols):
        return TableReport(rows=t.num_rows, new=t.num_rows)
    load_temp(conn, tmp, t, cols)
    keys = [spec.store_col(k) for k in spec.key]
    values = [c for c, _ in cols if c not in keys]
    same = "IS" if conn.dialect.name == "sqlite" else "IS NOT DISTINCT FROM"
    on = " AND ".join(f"i.{k} = t.{k}" for k in keys)
    equal = " AND ".join(f"i.{v} {same} t.{v}" for v in values) or "1 = 1"
    newer = f"i.{spec.stamp} > t.{spec.stamp}" if spec.stamp else "1 = 0"
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ANALYZE {tmp}")  # temp tables have no statistics otherwise
    row = conn.execute(text(
        f"SELECT COUNT(*), "
        f"COALESCE(SUM(CASE WHEN t.id IS NULL THEN 1 ELSE 0 END), 0), "
        f"COALESCE(SUM(CASE WHEN t.id IS NOT NULL AND NOT ({equal}) THEN 1 ELSE 0 END), 0), "
        f"COALESCE(SUM(CASE WHEN t.id IS NOT NULL AND NOT ({equal}) AND {newer} "
        f"THEN 1 ELSE 0 END), 0) "
        f"FROM {tmp} i LEFT JOIN {spec.name} t ON {on}")).one()
    total, new, conflicting, newer_n = (int(v) for v in row)
    rep = TableReport(rows=total, new=new, identical=total - new - conflicting,
                      conflicting=conflicting)
    if conflicting:
        sample = conn.execute(text(
            f"SELECT {', '.join('i.' + k for k in keys)} FROM {tmp} i JOIN {spec.name} t ON {on} "
            f"WHERE NOT ({equal}) ORDER BY {', '.join('i.' + k for k in keys)} LIMIT 3")).all()
        back = {f"{c}_id": {v: k for k, v in ids[tgt].items()} for c, tgt in spec.refs}
        rep.examples = [format_key(back[k].get(v, v) if k in back else v for k, v in zip(keys, r))
                        for r in sample]
    extra_cols = [c for c, _ in spec.insert_extra]
    target = ", ".join([c for c, _ in cols] + extra_cols)
    source = ", ".join([c for c, _ in cols] + [v for _, v in spec.insert_extra])
    sql = f"INSERT INTO {spec.name} ({target}) SELECT {source} FROM {tmp} WHERE true " \
          f"ON CONFLICT ({', '.join(keys)}) "
    differs = " OR ".join(f"NOT (excluded.{v} {same} {spec.name}.{v})" for v in values) or "1 = 0"
    sets = ", ".join(f"{v} = excluded.{v}" for v in values)
    if rule == ConflictRule.REPLACE and values:
        sql += f"DO UPDATE SET {sets} WHERE {differs}"
        rep.replaced = conflicting
    elif rule == ConflictRule.NEWER and spec.stamp:
        sql += f"DO UPDATE SET {sets} WHERE excluded.{spec.stamp} > {spec.name}.{spec.stamp}"
        rep.replaced = newer_n
    else:
        sql += "DO NOTHING"
    rep.kept = conflicting - rep.replaced
    params = {}
    if ":now" in source:
        params["now"] = now
    if ":source" in source:
        params["source"] = "imported"
    stmt = text(sql)
    if "now" in params:
        stmt = stmt.bindparams(bindparam("now", type_=DateTime()))
    if new or rep.replaced:
        conn.execute(stmt, params)
    return rep


_BULK_ROWS = 50_000


def _load_into_empty(conn, table: str, t: pa.Table, cols: Sequence[tuple[str, str]]) -> bool:
    """Fill an *empty* table straight from ``t``, with its secondary indexes (and on
    PostgreSQL its unique and foreign-key constraints) built once afterwards instead of row by
    row: several times faster for a million rows.

    Returns False, having written nothing, when the table holds rows. The table is locked
    first (SQLite: the import's ``BEGIN IMMEDIATE``; PostgreSQL: ACCESS EXCLUSIVE until
    commit), so no other writer can add a row meanwhile; the bundle's keys are unique
    (validated). Definitions come from the catalog, so what is rebuilt is exactly what was
    there, and all of it is one transaction with the rest of the import.
    """
    pg = conn.dialect.name == "postgresql"
    if pg:
        if conn.exec_driver_sql(f"SELECT 1 FROM {table} LIMIT 1").first() is not None:
            return False
        conn.exec_driver_sql(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    if conn.exec_driver_sql(f"SELECT 1 FROM {table} LIMIT 1").first() is not None:
        return False
    constraints, rebuild = [], []
    if pg:
        constraints = conn.execute(text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = "
            "CAST(:t AS regclass) AND contype IN ('u', 'f') ORDER BY contype DESC"),
            {"t": table}).all()
        indexes = conn.execute(text(
            "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = CAST(:t AS regclass) AND NOT x.indisprimary "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)"),
            {"t": table}).all()
    else:  # SQLite's UNIQUE (autoindex) cannot be dropped; its plain indexes can
        indexes = conn.execute(text(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t "
            "AND sql IS NOT NULL"), {"t": table}).all()
    for name, definition in constraints:  # unique first, then foreign keys
        conn.exec_driver_sql(f"ALTER TABLE {table} DROP CONSTRAINT {_quote_ident(name)}")
        rebuild.append(f"ALTER TABLE {table} ADD CONSTRAINT {_quote_ident(name)} {definition}")
    for name, definition in indexes:
        conn.exec_driver_sql(f"DROP INDEX {_quote_ident(name)}")
        rebuild.append(definition)
    insert_rows(conn, table, t, cols)
    for statement in rebuild:
        conn.exec_driver_sql(statement)
    if pg:
        conn.exec_driver_sql(f"ANALYZE {table}")  # fresh statistics for the planner
    return True


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
