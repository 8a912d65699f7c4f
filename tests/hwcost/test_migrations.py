"""Schema migrations: an older store is upgraded in place (one transaction), a newer one is
refused and left untouched. A test migration (adds a column) is registered by monkeypatch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, text

import hwcost.store.opening
import hwcost.store.schema
from hwcost.app.main import cli
from hwcost.errors import SchemaTooNew
from hwcost.store import migrations, open_store
from hwcost.store.migrations import MIGRATIONS, schema_status
from tests.synthetic import small_store

V = hwcost.store.schema.SCHEMA_VERSION


def sqlite_hash(url: str) -> str:
    """Hash of an SQLite store's bytes (main file and write-ahead log)."""
    path = Path(url.split("///", 1)[1])
    return hashlib.sha256(b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"))
                                   if p.exists())).hexdigest()


def _bump(monkeypatch, migration) -> None:
    """Pretend this hwcost is one schema version newer, with ``migration`` to get there."""
    monkeypatch.setitem(MIGRATIONS, V, migration)
    monkeypatch.setattr(hwcost.store.schema, "SCHEMA_VERSION", V + 1)
    monkeypatch.setattr(hwcost.store.opening, "SCHEMA_VERSION", V + 1)


def _add_note(conn) -> None:
    conn.execute(text("ALTER TABLE device ADD COLUMN note TEXT"))
    conn.execute(text("UPDATE device SET note = 'migrated'"))


def _columns(url: str, table: str) -> set[str]:
    with open_store(url, upgrade=False) as s:
        return {c["name"] for c in inspect(s.engine).get_columns(table)}


def test_older_store_is_upgraded_in_place(store_url, monkeypatch):
    with open_store(store_url) as s:
        info = small_store(s)
    _bump(monkeypatch, _add_note)
    with open_store(store_url, upgrade=False) as s:
        st = schema_status(s)
    assert (st.stored, st.current, st.pending) == (V, V + 1, [V])
    runner = CliRunner()
    r = runner.invoke(cli, ["db", "status", "--db", store_url])
    assert r.output == f"schema version {V} (this hwcost: {V + 1})\npending migrations: {V}->{V + 1}\n"
    r = runner.invoke(cli, ["db", "migrate", "--db", store_url])
    assert (r.exit_code, r.output) == (0, f"migrated schema {V} -> {V + 1} (1 migration)\n")
    with open_store(store_url) as s:
        assert s.schema_version() == V + 1
        assert s.measurement_count() == info.n_measurements
        with s.engine.connect() as c:
            assert c.execute(text("SELECT DISTINCT note FROM device")).all() == [("migrated",)]
    assert "note" in _columns(store_url, "device")
    r = runner.invoke(cli, ["db", "status", "--db", store_url])
    assert r.output == f"schema version {V + 1} (this hwcost: {V + 1})\npending migrations: none\n"
    r = runner.invoke(cli, ["db", "migrate", "--db", store_url])
    assert r.output == f"schema version {V + 1} is current; nothing to migrate\n"


def test_opening_upgrades_and_a_failing_migration_changes_nothing(store_url, monkeypatch):
    with open_store(store_url) as s:
        small_store(s)

    def broken(conn) -> None:
        _add_note(conn)
        raise RuntimeError("migration bug")

    _bump(monkeypatch, broken)
    with pytest.raises(RuntimeError, match="migration bug"):
        open_store(store_url)
    with open_store(store_url, upgrade=False) as s:
        assert s.schema_version() == V
    assert "note" not in _columns(store_url, "device")
    monkeypatch.setitem(MIGRATIONS, V, _add_note)
    with open_store(store_url) as s:  # a plain open upgrades
        assert s.schema_version() == V + 1
    assert "note" in _columns(store_url, "device")


def test_newer_store_is_refused_and_untouched(store_url):
    with open_store(store_url) as s:
        small_store(s)
        with s.session() as sess:
            sess.execute(text("UPDATE meta SET value = :v WHERE key = 'schema_version'"),
                         {"v": str(V + 1)})
    before = sqlite_hash(store_url) if store_url.startswith("sqlite") else None
    msg = (f"store has schema version {V + 1}, this hwcost reads up to {V}: upgrade hwcost "
           "(pip install -U hwcost)")
    with pytest.raises(SchemaTooNew) as e:
        open_store(store_url)
    assert str(e.value) == msg
    for args in (["db", "ls"], ["db", "status"], ["db", "migrate"], ["db", "init"]):
        r = CliRunner().invoke(cli, [*args, "--db", store_url])
        assert (r.exit_code, r.output) == (1, f"Error: {msg}\n"), args
    if before is not None:
        assert sqlite_hash(store_url) == before
    else:  # PostgreSQL: the version row is still the newer one, nothing was migrated
        from sqlalchemy import create_engine

        eng = create_engine(store_url)
        with eng.connect() as c:
            assert c.execute(text("SELECT value FROM meta")).scalar() == str(V + 1)
            assert "note" not in {x["name"] for x in inspect(c).get_columns("device")}
        eng.dispose()


def test_pending_lists_the_steps():
    assert migrations.pending(1, 3) == [1, 2]
    assert migrations.pending(2, 2) == []


def test_schema_3_store_gains_measurement_provenance_with_no_row_lost(store_url):
    """A store of layout 3 (no provenance columns, no learned_fit) upgrades in place:
    every row kept, old rows read as full stable wall-clock timings."""
    from hwcost.store.schema import SCHEMA_VERSION

    assert SCHEMA_VERSION >= 4
    with open_store(store_url) as s:
        info = small_store(s)
        with s.engine.connect() as c:
            n_lat = c.execute(text("SELECT count(*) FROM model_latency")).scalar()
        with s.engine.begin() as c:  # take it back to the schema-3 layout
            for table, cols in (("measurement", ("clock", "quick", "stable", "load1", "cpu_mhz",
                                                 "threads", "baseline_us", "drift")),
                                ("model_latency", ("clock", "quick", "stable", "load1",
                                                   "cpu_mhz", "threads")),
                                ("validation", ("quick", "stable"))):
                for col in cols:
                    c.execute(text(f"ALTER TABLE {table} DROP COLUMN {col}"))
            c.execute(text("DROP TABLE learned_fit"))
            c.execute(text("UPDATE meta SET value = '3' WHERE key = 'schema_version'"))
    with open_store(store_url, upgrade=False) as s:
        assert schema_status(s).pending[0] == 3
    with open_store(store_url) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.measurement_count() == info.n_measurements
        with s.engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM model_latency")).scalar() == n_lat
            assert c.execute(text("SELECT DISTINCT clock, quick, stable FROM measurement")
                             ).all() in ([("wall", False, True)], [("wall", 0, 1)])
        assert len(s.device_measurements(info.devices[0])) > 0  # they count as good
        assert "learned_fit" in inspect(s.engine).get_table_names()
