"""Read-only SQL over the store, with DuckDB.

The statement is parsed by DuckDB first and refused unless it is exactly one SELECT. The
store's tables that it names are then copied (through Arrow) into a private in-memory DuckDB
with file access switched off and the configuration locked, and the query runs there: it
cannot write to the store, even by accident, and cannot read or write local files.

Besides the store's own tables (``device``, ``subgraph``, ``measurement``, ...), the view
``costs`` joins each measurement to its device and subgraph by natural key.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
from sqlalchemy import Boolean, DateTime, Float, Integer
from sqlmodel import SQLModel

import hwcost.store.schema  # noqa: F401  (registers the tables in SQLModel.metadata)
from hwcost.errors import QueryTimeout, ReadOnlyViolation, StoreError, first_line
from hwcost.store.bulk import read_rows

if TYPE_CHECKING:
    from hwcost.store.sql import SqlStore

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
    # A SELECT can still hide a write in a CTE (WITH x AS (DELETE ... RETURNING *) SELECT):
    # DuckDB's own syntax tree names every query node.
    con = duckdb.connect(":memory:")
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    except duckdb.Error as e:
        raise StoreError(f"cannot parse query: {first_line(e)}") from None
    finally:
        con.close()
    writes = sorted({n.removesuffix("_QUERY_NODE") for n in _node_types(tree)} & _WRITES)
    if writes:
        raise ReadOnlyViolation(f"db query is read-only: the SELECT holds a {writes[0]} "
                                "(in a WITH clause); only reads are allowed")


_WRITES = {"DELETE", "UPDATE", "INSERT", "MERGE_INTO"}


def _node_types(tree) -> set[str]:
    """Every ``type`` value of query nodes in DuckDB's JSON syntax tree."""
    out: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            t = node.get("type")
            if isinstance(t, str) and t.endswith("_NODE"):
                out.add(t)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def store_tables() -> dict[str, list[tuple[str, str]]]:
    """Store table name -> (column, kind) for every table of the schema."""
    out = {}
    for name, table in SQLModel.metadata.tables.items():
        cols = []
        for c in table.columns:
            t = c.type
            t = getattr(t, "impl", t)  # TypeDecorators (sqlmodel's UTCDateTime) by what they store
            t = t() if isinstance(t, type) else t
            # booleans travel as 0/1 integers (cast in the SELECT of run_query)
            kind = ("ts" if isinstance(t, DateTime)
                    else "int" if isinstance(t, (Integer, Boolean))
                    else "float" if isinstance(t, Float) else "str")
            cols.append((c.name, kind))
        out[name] = cols
    return out


DEFAULT_TIMEOUT_S = 60.0
"""`hwcost db query --timeout` default: a query running longer is interrupted."""
MAX_ROWS = 200_000
"""Most rows a query may return (they are held in Python to print them)."""
DEFAULT_MEMORY_LIMIT = "2GB"
"""DuckDB memory cap of a query (spilling to disk is off, so it fails instead of swapping)."""


def run_query(store: SqlStore, sql: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
              memory_limit: str = DEFAULT_MEMORY_LIMIT) -> QueryResult:
    """Run one read-only SELECT over a copy of the store's tables (see module docstring),
    interrupted after ``timeout_s`` seconds and capped at ``memory_limit`` of memory."""
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
                select_list = ", ".join(
                    f"CAST({c} AS INTEGER)" if isinstance(SQLModel.metadata.tables[name].c[c].type,
                                                          Boolean) else c for c, _ in cols)
                arrow = read_rows(conn, f"SELECT {select_list} FROM {name}", cols)
                con.register(f"_arrow_{name}", arrow)
                con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM "_arrow_{name}"')
                con.unregister(f"_arrow_{name}")
        if set(_VIEW_DEPS["costs"]) <= wanted:
            con.execute(COSTS_VIEW)
        for setting in ("SET python_enable_replacements = false",
                        f"SET memory_limit = '{_memory(memory_limit)}'",
                        "SET max_temp_directory_size = '0B'",
                        "SET enable_external_access = false", "SET lock_configuration = true"):
            con.execute(setting)
        timer = threading.Timer(timeout_s, con.interrupt)
        timer.start()
        try:
            with _ctrl_c_interrupts(con):
                cur = con.execute(sql)
            columns = [d[0] for d in cur.description]
            rows = cur.fetchmany(MAX_ROWS + 1)
            if len(rows) > MAX_ROWS:
                raise StoreError(f"query returns more than {MAX_ROWS} rows; aggregate or add "
                                 "a LIMIT")
            return QueryResult(columns, rows)
        except duckdb.InterruptException:
            if not timer.is_alive():
                raise QueryTimeout(f"query stopped after --timeout {timeout_s:g} s") from None
            raise QueryTimeout("query interrupted") from None
        except duckdb.OutOfMemoryException:
            raise StoreError(f"query needs more than its memory cap of {memory_limit}; "
                             "narrow it (WHERE, LIMIT) ") from None
        except duckdb.Error as e:
            raise StoreError(f"query failed: {first_line(e)}") from None
        except RuntimeError as e:  # DuckDB's answer to SIGINT (Ctrl-C) during a query
            if "interrupt" not in str(e).lower():
                raise
            raise QueryTimeout("query interrupted (Ctrl-C); nothing was changed") from None
        finally:
            timer.cancel()
    except KeyboardInterrupt:
        con.interrupt()
        raise QueryTimeout("query interrupted (Ctrl-C); nothing was changed") from None
    finally:
        con.close()


@contextmanager
def _ctrl_c_interrupts(con) -> Iterator[None]:
    """Make Ctrl-C stop a running DuckDB query at once. While the main thread sits in DuckDB's
    C code, Python's SIGINT handler cannot run until the query returns (after --timeout); the C
    level handler still writes to the wakeup fd, so a watcher thread reading it interrupts the
    query. The KeyboardInterrupt itself follows when control returns to Python."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    previous = signal.set_wakeup_fd(w)
    done = threading.Event()

    def watch() -> None:
        while data := os.read(r, 64):
            if signal.SIGINT in data:
                # DuckDB clears a pending interrupt when a query starts executing: a Ctrl-C
                # just before that was lost and the query ran to --timeout. Repeat it until
                # the query has returned.
                while not done.is_set():
                    con.interrupt()
                    done.wait(0.05)
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous)
        os.close(w)  # EOF ends the watcher
        watcher.join()
        os.close(r)


def _memory(limit: str) -> str:
    if not re.fullmatch(r"\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", limit.strip(), re.I):
        raise StoreError(f"memory limit {limit!r} must look like 512MB or 2GB")
    return limit.strip()
