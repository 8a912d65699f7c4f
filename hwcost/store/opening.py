"""Opening a store: URL checks, engines, schema creation and upgrades.

Every problem becomes one ``StoreError`` line with passwords redacted: an unparsable URL
(``sqlite:relative.db``, a port that is not a number), a file that is not a database, a
database that is not an hwcost store (refused before anything in it changes: an SQLite file
is switched to WAL only once it is known to be a store), a mangled ``schema_version``.

``read_only=True`` (commands that only read) opens an existing SQLite file with
``mode=ro``, so a store on a read-only file or disk can be listed, queried and planned from.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import StaticPool
from sqlmodel import SQLModel

from hwcost.errors import SchemaTooNew, StoreError, first_line
from hwcost.store.migrations import MIGRATIONS, pending
from hwcost.store.schema import SCHEMA_VERSION

__all__ = ["ENV_VAR", "default_url", "open_store", "redact_urls", "sqlite_path"]

ENV_VAR = "HWCOST_DB"


def default_url() -> str:
    """The URL used when none is given: ``HWCOST_DB`` or the embedded SQLite file."""
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    from platformdirs import user_data_dir

    return f"sqlite:///{Path(user_data_dir('hwcost')) / 'hwcost.db'}"


_URL_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)([^\s'\"]*)")


def redact_urls(message: str) -> str:
    """``message`` with the user and password of every URL in it replaced by ``***``.

    The credentials end at the *last* ``@`` of the URL, so a password with an unencoded
    ``@`` does not leak its tail.
    """
    def one(m: re.Match) -> str:
        rest = m.group(2)
        if "@" not in rest or rest.startswith("USER:PW@"):  # no secret, or the docs' placeholder
            return m.group(0)
        return f"{m.group(1)}***@{rest.rsplit('@', 1)[1]}"

    return _URL_IN_TEXT.sub(one, message)


def sqlite_path(url: str) -> str:
    """The file path of an ``sqlite:///PATH`` URL ('' or ':memory:' for memory)."""
    if not url.startswith("sqlite:///") and url not in ("sqlite://",):
        raise StoreError(f"cannot open store {redact_urls(url)}: SQLite URLs look like "
                         "sqlite:///relative/path.db or sqlite:////absolute/path.db")
    return url.split("///", 1)[1] if "///" in url else ""


def _check_url(url: str) -> str:
    """``url`` with ``postgresql://`` mapped to psycopg; StoreError (one line) if unusable."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if not (url.startswith("sqlite") or url.startswith("postgresql")):
        raise StoreError(f"unsupported store URL {redact_urls(url)}; use sqlite:///PATH or "
                         "postgresql+psycopg://USER:PW@HOST/DB")
    if url.startswith("sqlite"):
        sqlite_path(url)  # the form, checked with a message that shows the right one
    try:
        parsed = make_url(url)
        _ = parsed.port  # a non-numeric port fails here
    except (ArgumentError, ValueError) as e:
        raise StoreError(f"cannot parse store URL {redact_urls(url)}: "
                         f"{redact_urls(first_line(e))}") from None
    return url


def _make_engine(url: str, *, read_only: bool = False) -> Engine:
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        exists = path not in ("", ":memory:") and Path(path).is_file()
        # a file this process cannot write is opened read-only whatever the command: reads
        # work, a write fails in one line (the store is read-only)
        ro = exists and (read_only or not os.access(path, os.W_OK))
        if path and path != ":memory:" and not ro:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the store's folder {Path(path).parent}: "
                                 f"{e.strerror}") from None
        if ro:
            # mode=ro never writes; immutable=1 also reads a WAL store on a read-only disk
            # where SQLite cannot create the -shm file.
            flag = "mode=ro" if os.access(Path(path).parent, os.W_OK) else "immutable=1"
            engine = create_engine(f"sqlite:///file:{Path(path).resolve()}?{flag}&uri=true",
                                   connect_args={"timeout": 60, "check_same_thread": False})
        elif path in ("", ":memory:"):
            # one in-memory database per store: every session and thread shares its one
            # connection (each new connection would be a new, empty database)
            engine = create_engine(url, poolclass=StaticPool,
                                   connect_args={"timeout": 60, "check_same_thread": False})
        else:
            engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            # Let SQLAlchemy drive transactions; BEGIN IMMEDIATE below takes the write lock up
            # front, so concurrent writers queue on busy_timeout instead of failing mid-way.
            # WAL is switched on in open_store, once the file is known to be a store.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            if not ro:
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN" if ro else "BEGIN IMMEDIATE")

        engine.info_read_only = ro  # type: ignore[attr-defined]
        return engine
    # UTC sessions: naive timestamps (bulk COPY, imports) mean UTC whatever the server's
    # TimeZone, and timestamptz values come back as +00. The pool keeps connections open
    # between claims (workers make thousands); pre-ping replaces ones the server dropped.
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                         connect_args={"options": "-c timezone=UTC", "connect_timeout": 30})


def open_store(url: str | None = None, *, create: bool = True, upgrade: bool = True,
               read_only: bool = False):
    """Open (and create or upgrade) the store at ``url``; returns a :class:`hwcost.store.sql.SqlStore`.

    ``upgrade=False`` opens an older store as it is (to report its version and pending
    migrations); only an upgraded store should be written to. ``read_only=True`` opens an
    existing SQLite file without writing to it (no WAL switch, no upgrade: an older store
    must be migrated first). Raises ``SchemaTooNew`` for a store written by a newer hwcost,
    ``StoreError`` when the database cannot be reached or is not a store.
    """
    from hwcost.store.sql import SqlStore

    url = _check_url(url or default_url())
    engine = _make_engine(url, read_only=read_only)
    ro = getattr(engine, "info_read_only", False)
    try:
        if ro:
            _check_read_only(engine)
        else:
            _ensure_schema(engine, create=create, upgrade=upgrade)
            if engine.dialect.name == "sqlite":
                _wal(engine)
    except (SchemaTooNew, StoreError):
        engine.dispose()
        raise
    except (DBAPIError, sqlite3.Error) as e:
        engine.dispose()
        orig = getattr(e, "orig", e)
        raise StoreError(f"cannot open store {redact_urls(url)}: "
                         f"{redact_urls(first_line(orig))}") from None
    store = SqlStore(url, engine)
    store.read_only = ro
    return store


_WAL_WAIT_S = 60.0  # as long as busy_timeout: other openers hold the lock for milliseconds


def _wal(engine: Engine) -> None:
    """Switch an SQLite store to WAL (persistent in the file; a no-op when it is already).

    The switch needs an exclusive lock, and SQLite asks for it without calling the busy
    handler: while another process opening the same new store holds a read or write lock,
    it fails at once with "database is locked". So the switch is retried, with a random
    pause, for as long as busy_timeout would have waited.
    """
    deadline = time.monotonic() + _WAL_WAIT_S
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        while True:
            try:
                if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                    cur.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as e:
                if not _is_busy(e) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.005, 0.05))
        cur.close()
    finally:
        raw.close()


def _is_busy(e: sqlite3.OperationalError) -> bool:
    return "locked" in str(e) or "busy" in str(e)


def _check_read_only(engine: Engine) -> None:
    stored = _stored_version(engine, engine)
    where = redact_urls(str(engine.url))
    if stored is None:
        raise StoreError(f"no hwcost store at {where}")
    if stored > SCHEMA_VERSION:
        raise SchemaTooNew(f"store has schema version {stored}, this hwcost reads up to "
                           f"{SCHEMA_VERSION}: upgrade hwcost (pip install -U hwcost)")
    if stored < SCHEMA_VERSION:
        raise StoreError(f"store has schema version {stored} and is opened read-only; "
                         "`hwcost db migrate` upgrades it first")


_SCHEMA_LOCK = 0x6877636F7374  # "hwcost": PostgreSQL advisory lock key for schema changes


def _ensure_schema(engine: Engine, *, create: bool, upgrade: bool = True) -> None:
    if _stored_version(engine, engine) == SCHEMA_VERSION:
        return  # the common case: no lock, no transaction beyond one read
    # Create or migrate under a lock, re-checking inside it, so that workers opening a new
    # shared store at the same moment do it once (SQLite: BEGIN IMMEDIATE serialises them).
    with engine.begin() as c:
        if c.dialect.name == "postgresql":
            c.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
        stored = _stored_version(engine, c)
        if stored is not None:
            if stored > SCHEMA_VERSION:
                raise SchemaTooNew(f"store has schema version {stored}, this hwcost reads up to "
                                   f"{SCHEMA_VERSION}: upgrade hwcost (pip install -U hwcost)")
            if stored < SCHEMA_VERSION and upgrade:
                _migrate(c, stored)
            return
        names = set(inspect(c).get_table_names())
        if names and not names & {"device", "measurement"}:
            raise StoreError(f"database at {redact_urls(str(engine.url))} holds other tables "
                             f"({', '.join(sorted(names)[:3])}...), not an hwcost store")
        if not create:
            raise StoreError(f"no hwcost store at {redact_urls(str(engine.url))}; "
                             "`hwcost db init` makes one")
        SQLModel.metadata.create_all(c)
        _set_version(c, SCHEMA_VERSION)


def _stored_version(engine: Engine, conn) -> int | None:
    """The store's schema version; None when there is no ``meta`` table (no store yet)."""
    if conn is engine:
        with engine.connect() as c:  # one connection for the check and the read
            return _stored_version(engine, c)
    if "meta" not in set(inspect(conn).get_table_names()):
        return None
    row = conn.execute(text("SELECT value FROM meta WHERE key = :k"),
                       {"k": "schema_version"}).first()
    if row is None:
        return 0
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise StoreError(f"store at {redact_urls(str(engine.url))} has schema_version "
                         f"{str(row[0])[:20]!r}, not a number: damaged, or not an hwcost "
                         "store") from None


def _migrate(c, stored: int) -> None:
    steps = pending(stored, SCHEMA_VERSION)
    missing = [v for v in steps if v not in MIGRATIONS]
    if missing:
        raise StoreError(f"no migration from schema version {missing[0]}; this store cannot be "
                         "upgraded by this hwcost")
    for v in steps:
        MIGRATIONS[v](c)
    SQLModel.metadata.create_all(c)  # tables added since; existing ones are left alone
    _set_version(c, SCHEMA_VERSION)


def _set_version(c, version: int) -> None:
    c.execute(text("DELETE FROM meta WHERE key = :k"), {"k": "schema_version"})
    c.execute(text("INSERT INTO meta (key, value) VALUES (:k, :v)"),
              {"k": "schema_version", "v": str(version)})
