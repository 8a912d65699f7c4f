"""The bundle file format: one self-describing Parquet file of cost tables.

Layout (``format_version`` 1). Each row is a record of one table; column ``record`` names the
table, and table ``T``'s column ``c`` is stored in column ``T_c`` (null in the rows of other
tables). Rows are sorted by natural key, each table in its own row groups, and refer to each
other by natural keys (device fingerprint, subgraph signature, model fingerprint), never by
database ids. The Parquet key-value metadata entry ``hwcost.store.bundle`` holds JSON: format and
schema versions, the hwcost version that wrote it, the device filter, per-table row counts and
columns, and a sha256 content checksum over a canonical binary form of the rows (see
:func:`content_checksum`). DuckDB reads a bundle directly: ``SELECT measurement_shape,
measurement_median_us FROM 'b.parquet' WHERE record = 'measurement'``.

This module knows files only; moving bundles in and out of a store is ``hwcost.store.exchange``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hwcost import __version__
from hwcost.bounds import (
    BUNDLE_ROWS_MAX,
)
from hwcost.errors import BundleInvalid, first_line
from hwcost.store import schema as _schema
from hwcost.store.bulk import ARROW_TYPES

FORMAT = "hwcost-bundle"
FORMAT_VERSION = 2
"""Version written. 2 added how each timing was taken (``PROVENANCE``); 1 is still read."""
READABLE_FORMATS = (1, 2)
META_KEY = b"hwcost.bundle"
CHECKSUM_ALGORITHM = "sha256-hwcost-1"
_TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class TableSpec:
    """How one store table travels in a bundle."""

    name: str
    cols: tuple[tuple[str, str], ...]  # (bundle column, kind), natural keys first
    key: tuple[str, ...]
    refs: tuple[tuple[str, str], ...] = ()  # (bundle column, referenced table)
    stamp: str | None = None  # timestamp column the "newer" rule compares
    nullable: tuple[str, ...] = ()
    device_filter: str | None = None  # store column the --device filter applies to
    insert_extra: tuple[tuple[str, str], ...] = ()  # store-only columns set on insert

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.cols]

    def store_col(self, col: str) -> str:
        return f"{col}_id" if col in dict(self.refs) else col

    @property
    def store_cols(self) -> list[tuple[str, str]]:
        return [(self.store_col(c), "int" if c in dict(self.refs) else k) for c, k in self.cols]


REFERENCED = ("device", "subgraph", "model")  # tables other tables refer to by natural key

# How a timing was taken (schema 4 in the store, bundle format 2): clock, quick, stable and
# the machine's state. Without them an imported row would read as a good timing.
_PROVENANCE_COLS = (("clock", "str"), ("quick", "bool"), ("stable", "bool"), ("load1", "float"),
                    ("cpu_mhz", "float"), ("threads", "int"))
_PROVENANCE_NULLABLE = ("load1", "cpu_mhz", "threads")
PROVENANCE = tuple(c for c, _ in _PROVENANCE_COLS) + ("baseline_us", "drift")
CLOCKS = ("wall", "thread", "unknown")
UNKNOWN_PROVENANCE = {"clock": "unknown", "quick": False, "stable": False}
"""What the timings of a format-1 bundle (which did not carry how they were taken) import as:
clock ``unknown`` and **not stable**, so no plan rests on them unless asked
(``--allow-unstable``), and any later timing of the same key replaces them; the machine's
figures are null."""
_NOW = (("created_at", ":now"),)

SPECS: tuple[TableSpec, ...] = (
    TableSpec(
        "device",
        (("fingerprint", "str"), ("kind", "str"), ("name", "str"), ("threads", "int"),
         ("flags", "str"), ("software", "str"), ("peaks", "str")),
        key=("fingerprint",), nullable=("threads",), device_filter="id",
        insert_extra=(("source", ":source"), *_NOW)),
    TableSpec(
        "subgraph",
        (("signature", "str"), ("kind", "str"), ("n_slots", "int"), ("slots", "str"),
         ("extra", "str")),
        key=("signature",), insert_extra=_NOW),
    TableSpec(
        "model",
        (("fingerprint", "str"), ("name", "str"), ("n_subgraphs", "int"), ("n_layers", "int")),
        key=("fingerprint",), insert_extra=_NOW),
    TableSpec(
        "checkpoint",
        (("model", "str"), ("digest", "str"), ("name", "str"), ("source", "str")),
        key=("model", "digest"), refs=(("model", "model"),), insert_extra=_NOW),
    TableSpec(
        "manifest_entry",
        (("model", "str"), ("position", "int"), ("subgraph", "str"), ("layer_names", "str")),
        key=("model", "position"), refs=(("model", "model"), ("subgraph", "subgraph"))),
    TableSpec(
        "measurement",
        (("device", "str"), ("subgraph", "str"), ("shape", "str"), ("config", "str"),
         ("median_us", "float"), ("spread_us", "float"), ("n_samples", "int"),
         ("measured_at", "ts"), ("host", "str"), ("campaign", "str"), ("tool_version", "str"),
         *_PROVENANCE_COLS, ("baseline_us", "float"), ("drift", "float")),
        key=("device", "subgraph", "shape", "config"),
        refs=(("device", "device"), ("subgraph", "subgraph")), stamp="measured_at",
        nullable=("campaign", *_PROVENANCE_NULLABLE, "baseline_us", "drift"),
        device_filter="device_id"),
    TableSpec(
        "model_latency",
        (("model", "str"), ("device", "str"), ("shape", "str"), ("config_hash", "str"),
         ("config", "str"), ("median_us", "float"), ("spread_us", "float"), ("n_samples", "int"),
         ("measured_at", "ts"), ("host", "str"), ("tool_version", "str"), *_PROVENANCE_COLS),
        key=("model", "device", "shape", "config_hash"),
        refs=(("model", "model"), ("device", "device")), stamp="measured_at",
        nullable=_PROVENANCE_NULLABLE, device_filter="device_id"),
    TableSpec(
        "sensitivity",
        (("model", "str"), ("checkpoint", "str"), ("quantizer", "str"),
         ("calib_fingerprint", "str"), ("layer", "str"), ("precision", "str"),
         ("method", "str"), ("loss_mse", "float"), ("stderr", "float"), ("n_samples", "int"),
         ("created_at", "ts")),
        key=("model", "checkpoint", "quantizer", "calib_fingerprint", "layer", "precision",
             "method"),
        refs=(("model", "model"),), stamp="created_at"),
)
SPEC = {s.name: s for s in SPECS}

SINCE: dict[str | tuple[str, str], int] = {
    "checkpoint": 3, ("sensitivity", "checkpoint"): 3, ("sensitivity", "quantizer"): 3}
"""Schema version that added a table or column. An older bundle lacks them: it is read with
``'unknown'`` in their place (as a migrated store holds) and its checksum skips them."""


FORMAT_SINCE: dict[tuple[str, str], int] = {
    **{("measurement", c): 2 for c in PROVENANCE},
    **{("model_latency", c): 2 for c, _ in _PROVENANCE_COLS}}
"""Bundle format that added a column: an older bundle lacks it, is read with
``UNKNOWN_PROVENANCE`` (or null) in its place, and its checksum skips it."""


def _in_version(table: str, col: str | None, version: int, fmt: int = FORMAT_VERSION) -> bool:
    return (SINCE.get(table, 1) <= version
            and (col is None or (SINCE.get((table, col), 1) <= version
                                 and FORMAT_SINCE.get((table, col), 1) <= fmt)))


@dataclass(frozen=True)
class ExportReport:
    """Result of :func:`export_bundle`."""

    path: str
    checksum: str
    rows: dict[str, int]
    device: str | None = None


# ------------------------------------------------------------------------------ checksum


def content_checksum(tables: dict[str, pa.Table], schema_version: int,
                     format_version: int = FORMAT_VERSION) -> str:
    """sha256 over a canonical binary form of the rows, independent of Parquet encoding.

    For the header ``hwcost-bundle\\0<format>\\0<schema>\\0`` and then, per table in the
    fixed order of ``SPECS``: ``name\\0rows\\0``, and per column ``name\\0``, one validity
    byte per row, then the values: int64 / float64 little-endian (nulls as 0, -0.0 as 0.0;
    booleans as int64 0/1), timestamps as int64 microseconds since the epoch (UTC), strings as
    int64 byte lengths followed by the concatenated UTF-8 bytes (nulls as empty). Columns the
    bundle's format or schema version does not have are left out.
    """
    h = hashlib.sha256(f"{FORMAT}\0{format_version}\0{schema_version}\0".encode())
    for spec in SPECS:
        if not _in_version(spec.name, None, schema_version, format_version):
            continue
        t = tables[spec.name]
        h.update(f"{spec.name}\0{t.num_rows}\0".encode())
        for name, kind in spec.cols:
            if not _in_version(spec.name, name, schema_version, format_version):
                continue
            col = t.column(name).combine_chunks() if t.num_rows else pa.array([], ARROW_TYPES[kind])
            h.update(f"{name}\0".encode())
            h.update(pc.is_valid(col).to_numpy(zero_copy_only=False).astype(np.uint8).tobytes())
            if kind == "str":
                col = col.fill_null("").cast(pa.large_string())
                h.update(pc.binary_length(col).to_numpy().astype("<i8").tobytes())
                h.update(_string_data(col))
            elif kind == "ts":
                ints = col.cast(_TS).cast(pa.int64()).fill_null(0)
                h.update(ints.to_numpy().astype("<i8").tobytes())
            elif kind in ("int", "bool"):
                vals = col.cast(pa.int64()) if kind == "bool" else col
                h.update(vals.fill_null(0).to_numpy().astype("<i8").tobytes())
            else:
                vals = col.fill_null(0.0).to_numpy().astype("<f8") + 0.0  # -0.0 -> 0.0
                h.update(vals.tobytes())
    return h.hexdigest()


def _string_data(col: pa.Array) -> bytes:
    """The concatenated UTF-8 bytes of a large_string array (no nulls)."""
    if len(col) == 0:
        return b""
    _, offsets, data = col.buffers()
    off = np.frombuffer(offsets, dtype="<i8")[col.offset:col.offset + len(col) + 1]
    return data.to_pybytes()[off[0]:off[-1]] if data is not None else b""

def _canonical(spec: TableSpec, t: pa.Table) -> pa.Table:
    """Cast to the bundle's column types and sort by natural key (byte order)."""
    arrays = []
    for name, kind in spec.cols:
        col = t.column(name)
        arrays.append(col.cast(_TS) if kind == "ts" else col.cast(ARROW_TYPES[kind]))
    t = pa.Table.from_arrays(arrays, names=spec.names)
    if t.num_rows > 1:
        t = t.take(pc.sort_indices(t, sort_keys=[(k, "ascending") for k in spec.key]))
    return t


def _bundle_schema(format_version: int = FORMAT_VERSION) -> pa.Schema:
    fields = [pa.field("record", pa.string(), nullable=False)]
    for spec in SPECS:
        for name, kind in spec.cols:
            if FORMAT_SINCE.get((spec.name, name), 1) > format_version:
                continue
            fields.append(pa.field(f"{spec.name}_{name}", _TS if kind == "ts" else ARROW_TYPES[kind]))
    return pa.schema(fields)

def write_bundle(tables: dict[str, pa.Table], path: str | os.PathLike, *,
                 device: str | None = None, schema_version: int | None = None,
                 format_version: int = FORMAT_VERSION) -> ExportReport:
    """Write natural-key tables (as :func:`read_tables` returns them) to a bundle file.

    The file is written next to ``path`` and renamed into place, so a failed export never
    leaves a half-written bundle. ``format_version`` 1 writes the older layout without how
    each timing was taken (for an older hwcost; it imports as unknown provenance).
    """
    if format_version not in READABLE_FORMATS:
        raise BundleInvalid(f"bundle format {format_version}; known: {READABLE_FORMATS}")
    tables = {s.name: _canonical(s, tables[s.name]) for s in SPECS}
    version = _schema.SCHEMA_VERSION if schema_version is None else schema_version
    checksum = content_checksum(tables, version, format_version)
    meta = {
        "format": FORMAT, "format_version": format_version, "schema_version": version,
        "hwcost_version": __version__, "created_at": datetime.now(timezone.utc).isoformat(),
        "device": device, "checksum": {"algorithm": CHECKSUM_ALGORITHM, "value": checksum},
        "tables": {s.name: {"rows": tables[s.name].num_rows, "key": list(s.key),
                            "columns": [[f"{s.name}_{c}", k] for c, k in s.cols
                                        if FORMAT_SINCE.get((s.name, c), 1) <= format_version]}
                   for s in SPECS},
    }
    schema = _bundle_schema(format_version).with_metadata(
        {META_KEY: json.dumps(meta, sort_keys=True)})
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd", write_page_checksum=True) as w:
            for spec in SPECS:
                t = tables[spec.name]
                n = t.num_rows
                if n == 0:
                    continue
                own = {f"{spec.name}_{c}": t.column(c) for c in spec.names
                       if f"{spec.name}_{c}" in schema.names}
                own["record"] = pa.repeat(spec.name, n)
                arrays = [own.get(f.name, pa.nulls(n, f.type)) for f in schema]
                w.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=1 << 20)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return ExportReport(str(path), checksum, {s.name: tables[s.name].num_rows for s in SPECS},
                        device)

# ------------------------------------------------------------------------------ read + validate


@dataclass(frozen=True)
class Bundle:
    """A bundle read and fully validated; ``tables`` hold natural-key rows per table."""

    path: str
    schema_version: int
    checksum: str
    device: str | None
    tables: dict[str, pa.Table]
    format_version: int = FORMAT_VERSION


def read_bundle(path: str | os.PathLike) -> Bundle:
    """Read and validate a bundle; raise ``BundleInvalid`` (one line) on any problem."""
    path = Path(path)
    where = path.name

    def bad(msg: str) -> BundleInvalid:
        return BundleInvalid(f"invalid bundle {where}: {msg}")

    if not path.is_file():
        raise BundleInvalid(f"no bundle file {str(path)!r}")
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)
        raw_meta = (pf.schema_arrow.metadata or {}).get(META_KEY)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise bad(f"not a readable Parquet file ({first_line(e)}); truncated or corrupt?"
                  ) from None
    if raw_meta is None:
        raise bad("no hwcost.store.bundle metadata; not an hwcost bundle")
    if pf.metadata.num_rows > BUNDLE_ROWS_MAX:
        raise bad(f"{pf.metadata.num_rows} rows; bundles hold at most {BUNDLE_ROWS_MAX} "
                  "(export large stores per device: hwcost db export --device D)")
    try:
        meta = json.loads(raw_meta)
        fmt, fver = meta["format"], int(meta["format_version"])
        version, checksum = int(meta["schema_version"]), str(meta["checksum"]["value"])
    except (ValueError, KeyError, TypeError):
        raise bad("hwcost.bundle metadata is not valid JSON with format, schema_version "
                  "and checksum") from None
    if fmt != FORMAT or fver not in READABLE_FORMATS:
        raise bad(f"format {fmt!r} version {fver}; this hwcost reads {FORMAT} versions "
                  f"{', '.join(map(str, READABLE_FORMATS))}")
    if version > _schema.SCHEMA_VERSION:
        raise bad(f"schema version {version} is newer than this hwcost's "
                  f"{_schema.SCHEMA_VERSION}; upgrade hwcost (pip install -U hwcost)")
    if version < 1:
        raise bad(f"schema version {version} is not a valid version")
    names = set(pf.schema_arrow.names)
    missing = [f"{s.name}_{c}" for s in SPECS for c in s.names
               if f"{s.name}_{c}" not in names and _in_version(s.name, c, version, fver)]
    if "record" not in names:
        missing.insert(0, "record")
    if missing:
        raise bad(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing[:4])}"
                  + (" ..." if len(missing) > 4 else ""))
    try:
        whole = pf.read(columns=["record"] + [f"{s.name}_{c}" for s in SPECS for c in s.names
                                              if f"{s.name}_{c}" in names])
    except (pa.ArrowException, OSError, ValueError) as e:
        raise bad(f"cannot read its rows ({first_line(e)}); truncated or corrupt?") from None
    records = whole.column("record")
    unknown = set(pc.unique(records).to_pylist()) - set(SPEC)
    if unknown:
        raise bad(f"unknown record type {sorted(map(str, unknown))[0]!r}")
    tables: dict[str, pa.Table] = {}
    for spec in SPECS:
        sub = _rows_of(whole.select([f"{spec.name}_{c}" for c in spec.names
                                     if f"{spec.name}_{c}" in names]),
                       pc.equal(records, spec.name))
        arrays = []
        for name, kind in spec.cols:
            if f"{spec.name}_{name}" not in names:  # added after this bundle's version
                arrays.append(_filler(spec.name, name, kind, sub.num_rows))
                continue
            col = sub.column(f"{spec.name}_{name}")
            arrays.append(_cast_column(col, kind, f"{spec.name}_{name}", bad))
        tables[spec.name] = pa.Table.from_arrays(arrays, names=spec.names)
        expected = _declared_rows(meta, spec.name)
        if expected is not None and expected != sub.num_rows:
            raise bad(f"{spec.name} has {sub.num_rows} rows, its metadata says {expected}; "
                      "truncated?")
    actual = content_checksum(tables, version, fver)
    if actual != checksum:
        raise bad(f"checksum mismatch (stored {checksum[:12]}, content {actual[:12]}); "
                  "the file was changed or damaged")
    from hwcost.store.bundle_checks import validate

    validate(tables, bad)
    return Bundle(str(path), version, checksum, meta.get("device"), tables, fver)


def _filler(table: str, col: str, kind: str, n: int) -> pa.ChunkedArray:
    """The values an older bundle's rows get for a column it lacks: ``unknown`` for the
    checkpoint and quantizer keys, ``UNKNOWN_PROVENANCE`` (or null) for how a timing was
    taken."""
    if (table, col) in FORMAT_SINCE:
        value = UNKNOWN_PROVENANCE.get(col)
        if value is None:
            return pa.chunked_array([pa.nulls(n, ARROW_TYPES[kind])])
        return pa.chunked_array([pa.repeat(pa.scalar(value, ARROW_TYPES[kind]), n)])
    return pa.chunked_array([pa.repeat(_schema.UNKNOWN, n)], ARROW_TYPES[kind])


def _rows_of(t: pa.Table, mask: pa.ChunkedArray) -> pa.Table:
    """The rows of ``t`` where ``mask`` holds: a zero-copy slice when they are contiguous (as
    the writer lays them out), a filtered copy otherwise."""
    idx = pc.indices_nonzero(mask)
    n = len(idx)
    if n == 0:
        return t.slice(0, 0)
    first, last = idx[0].as_py(), idx[n - 1].as_py()
    if last - first + 1 == n:
        return t.slice(first, n)
    return t.filter(mask)


def _declared_rows(meta: dict, table: str) -> int | None:
    try:
        return int(meta["tables"][table]["rows"])
    except (KeyError, TypeError, ValueError):
        return None


def _cast_column(col: pa.ChunkedArray, kind: str, name: str, bad) -> pa.ChunkedArray:
    t = col.type
    ok = {"str": pa.types.is_string(t) or pa.types.is_large_string(t),
          "int": pa.types.is_integer(t),
          "float": pa.types.is_floating(t),
          "ts": pa.types.is_timestamp(t),
          "bool": pa.types.is_boolean(t)}[kind]
    if not ok:
        raise bad(f"column {name} has type {t}, expected {kind}")
    if kind == "ts":
        if t.tz is None:
            raise bad(f"column {name} is a timestamp without time zone; bundles store UTC")
        return col.cast(_TS)
    return col.cast(ARROW_TYPES[kind])


def format_key(values) -> str:
    return "(" + ", ".join(str(v)[:24] for v in values) + ")"
