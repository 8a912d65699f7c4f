"""Read-only SQL over the store, with DuckDB.

The statement is parsed by DuckDB first and refused unless it is exactly one SELECT. The
store's tables that it names are then copied (through Arrow) into a private in-memory DuckDB
with file access switched off and the configuration locked, and the query runs there: it
cannot write to the store, even by accident, and cannot read or write local files.

Besides the store's own tables (``device``, ``subgraph``, ``measurement``, ...), the view
``costs`` joins each measurement to its device and subgraph by natural key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import duckdb
from sqlalchemy import DateTime, Float, Integer
from sqlmodel import SQLModel

import hwcost.schema  # noqa: F401  (registers the tables in SQLModel.metadata)
from hwcost.bulk import read_rows
from hwcost.errors import ReadOnlyViolation, StoreError, first_line

COSTS_VIEW = """
CREATE VIEW costs AS
SELECT d.fingerprint AS device, d.name AS device_name, d.kind AS device_kind,
       s.signature, s.kind AS subgraph_kind, m.shape, m.config, m.median_us, m.spread_us,
       m.n_samples, m.measured_at, m.host, m.campaign, m.tool_version
FROM measurement m JOIN device d ON d.id = m.device_id JOIN subgraph s ON s.id = m.subgraph_id
"""
_VIEW_DEPS = {"costs": ("measurement", "device", "subgraph")}


@dataclass(frozen=True)
class QueryResult:
    """Column names and rows of a query."""

    columns: list[str]
    rows: list[tuple]

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]


def check_read_only(sql: str) -> None:
    """Raise ``ReadOnlyViolation`` unless ``sql`` is exactly one SELECT statement.

    DuckDB's own parser decides (a regex would be fooled by comments and CTEs).
    """
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise StoreError(f"cannot parse query: {first_line(e)}") from None
    if len(statements) != 1:
        raise ReadOnlyViolation(f"db query runs exactly one SELECT statement; got "
                                f"{len(statements)} statements")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise ReadOnlyViolation(f"db query is read-only: only SELECT is allowed, got "
                                f"{kind.name}")


def store_tables() -> dict[str, list[tuple[str, str]]]:
    """Store table name -> (column, kind) for every table of the schema."""
    out = {}
    for name, table in SQLModel.metadata.tables.items():
        cols = []
        for c in table.columns:
            t = c.type
            kind = ("ts" if isinstance(t, DateTime) else "int" if isinstance(t, Integer)
                    else "float" if isinstance(t, Float) else "str")
            cols.append((c.name, kind))
        out[name] = cols
    return out


def run_query(store, sql: str) -> QueryResult:
    """Run one read-only SELECT over a copy of the store's tables (see module docstring)."""
    check_read_only(sql)
    tables = store_tables()
    words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", sql)}
    # Copy only the tables the text names (an optimisation; the check above is the guard).
    wanted = {t for t in tables if t in words}
    for view, deps in _VIEW_DEPS.items():
        if view in words:
            wanted.update(deps)
    con = duckdb.connect(":memory:")
    try:
        with store.engine.connect() as conn:
            for name in sorted(wanted):
                cols = tables[name]
                arrow = read_rows(conn, f"SELECT {', '.join(c for c, _ in cols)} FROM {name}", cols)
                con.register(f"_arrow_{name}", arrow)
                con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM "_arrow_{name}"')
                con.unregister(f"_arrow_{name}")
        if set(_VIEW_DEPS["costs"]) <= wanted:
            con.execute(COSTS_VIEW)
        for setting in ("SET python_enable_replacements = false",
                        "SET enable_external_access = false", "SET lock_configuration = true"):
            con.execute(setting)
        try:
            cur = con.execute(sql)
            columns = [d[0] for d in cur.description]
            return QueryResult(columns, cur.fetchall())
        except duckdb.Error as e:
            raise StoreError(f"query failed: {first_line(e)}") from None
    finally:
        con.close()
