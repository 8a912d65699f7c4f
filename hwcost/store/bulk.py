"""Bulk moves between the store and Apache Arrow.

``read_rows`` runs one SELECT and returns its rows as an Arrow table; ``load_temp`` fills a
temporary table from an Arrow table. Both use the raw DBAPI connection under SQLAlchemy
(``fetchall``/``executemany`` on SQLite, ``COPY ... CSV`` on PostgreSQL) because the ORM is
far too slow at a million rows. The SQL text here is static; values travel as bound
parameters or as COPY data, never spliced into SQL.

Column kinds: ``str``, ``int``, ``float``, ``ts`` (timestamps, UTC: naive text on SQLite,
timestamptz on PostgreSQL; Arrow ``timestamp[us, tz=UTC]`` here), ``bool`` (0/1 on SQLite,
boolean on PostgreSQL).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from sqlalchemy import Connection

ARROW_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(),
               "ts": pa.timestamp("us", tz="UTC"), "bool": pa.bool_()}
_SQL_TYPES = {"str": "TEXT", "int": "BIGINT", "float": "DOUBLE PRECISION", "ts": "TIMESTAMP",
              "bool": "BOOLEAN"}
# PostgreSQL keeps timestamps as timestamptz (sessions run in UTC, see hwcost.store)
_PG_TYPES = {**_SQL_TYPES, "ts": "TIMESTAMP WITH TIME ZONE"}
# SQLAlchemy's SQLite DateTime stores this exact text; imported rows must match it byte for
# byte so that comparisons and ordering agree with rows written through the ORM.
_SQLITE_TS_FORMAT = "%Y-%m-%d %H:%M:%S"  # Arrow's %S carries the microseconds

Columns = Sequence[tuple[str, str]]


def _raw(conn: Connection):
    return conn.connection.driver_connection


def _pg_params(sql: str) -> str:
    """Turn ``:name`` placeholders into psycopg's ``%(name)s`` (our SQL has no ``::`` casts)."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)


def read_rows(conn: Connection, sql: str, columns: Columns,
              params: Mapping[str, object] | None = None) -> pa.Table:
    """Rows of ``sql`` (a SELECT) as an Arrow table with the given column names and kinds."""
    params = dict(params or {})
    schema = pa.schema([(n, ARROW_TYPES[k]) for n, k in columns])
    if conn.dialect.name == "postgresql":
        return _read_pg(conn, sql, schema, params)
    cur = _raw(conn).cursor()
    try:
        cur.execute(sql, params)
        rows = cur.fetchall()
    finally:
        cur.close()
    if not rows:
        return schema.empty_table()
    # Tuples straight into one struct array: no Python-level transposition. Timestamps
    # arrive as SQLAlchemy's naive UTC text and are parsed by Arrow.
    raw_types = {"ts": pa.string(), "bool": pa.int64()}  # SQLite: text and 0/1
    text_schema = pa.struct([(n, raw_types.get(k, ARROW_TYPES[k])) for n, k in columns])
    arr = pa.array(rows, text_schema)
    del rows
    arrays = []
    for (_, kind), field_arr in zip(columns, arr.flatten()):
        if kind == "ts":
            field_arr = field_arr.cast(pa.timestamp("us")).cast(ARROW_TYPES["ts"])
        elif kind == "bool":
            field_arr = field_arr.cast(pa.bool_())
        arrays.append(field_arr)
    return pa.Table.from_arrays(arrays, schema=schema)


def _read_pg(conn: Connection, sql: str, schema: pa.Schema, params: dict) -> pa.Table:
    raw = _raw(conn)
    with raw.cursor() as cur:
        # shortest exact text for floats, ISO timestamps: what pyarrow parses back exactly
        cur.execute("SET LOCAL extra_float_digits = 1")
        cur.execute("SET LOCAL DateStyle = 'ISO, YMD'")
        buf = io.BytesIO()
        with cur.copy(f"COPY ({_pg_params(sql)}) TO STDOUT WITH (FORMAT csv)", params) as cp:
            for chunk in cp:
                buf.write(chunk)
    if buf.tell() == 0:
        return schema.empty_table()
    buf.seek(0)
    return pacsv.read_csv(
        buf,
        read_options=pacsv.ReadOptions(column_names=schema.names, block_size=1 << 24),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=schema, null_values=[""], strings_can_be_null=True,
            quoted_strings_can_be_null=False, true_values=["t", "true"],
            false_values=["f", "false"]))


def load_temp(conn: Connection, name: str, table: pa.Table, columns: Columns) -> None:
    """Create temporary table ``name`` with ``columns`` and fill it from ``table``.

    The table lives until :func:`drop_temp` (SQLite) or the end of the transaction
    (PostgreSQL, ``ON COMMIT DROP``).
    """
    pg = conn.dialect.name == "postgresql"
    types = _PG_TYPES if pg else _SQL_TYPES
    ddl = ", ".join(f"{n} {types[k]}" for n, k in columns)
    raw = _raw(conn)
    cur = raw.cursor()
    try:
        if pg:
            cur.execute(f"CREATE TEMP TABLE {name} ({ddl}) ON COMMIT DROP")
        else:
            cur.execute(f"DROP TABLE IF EXISTS temp.{name}")
            cur.execute(f"CREATE TEMP TABLE {name} ({ddl})")
    finally:
        cur.close()
    insert_rows(conn, name if pg else f"temp.{name}", table, columns)


def insert_rows(conn: Connection, name: str, table: pa.Table, columns: Columns) -> None:
    """Append the rows of ``table`` (its ``columns``) to table ``name``: COPY on PostgreSQL,
    one ``executemany`` on SQLite."""
    names = [n for n, _ in columns]
    data = table.select(names)
    if not data.num_rows:
        return
    # Timestamps travel as the store's own text form on both backends.
    for i, (n, k) in enumerate(columns):
        if k == "ts":
            col = data.column(i)
            if col.type.tz is not None:
                col = col.cast(pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us"))
            data = data.set_column(i, n, pc.strftime(col, format=_SQLITE_TS_FORMAT))
    raw = _raw(conn)
    if conn.dialect.name == "postgresql":
        sink = io.BytesIO()
        pacsv.write_csv(data, sink, pacsv.WriteOptions(include_header=False))
        with raw.cursor() as cur, cur.copy(
                f"COPY {name} ({', '.join(names)}) FROM STDIN WITH (FORMAT csv)") as cp:
            cp.write(sink.getvalue())
        return
    cur = raw.cursor()
    try:
        cols = [c.to_pylist() for c in data.columns]
        marks = ", ".join("?" * len(names))
        cur.executemany(f"INSERT INTO {name} ({', '.join(names)}) VALUES ({marks})", zip(*cols))
    finally:
        cur.close()


def drop_temp(conn: Connection, name: str) -> None:
    """Drop a temporary table made by :func:`load_temp` (a no-op where it is already gone)."""
    if conn.dialect.name == "sqlite":
        cur = _raw(conn).cursor()
        try:
            cur.execute(f"DROP TABLE IF EXISTS temp.{name}")
        finally:
            cur.close()
