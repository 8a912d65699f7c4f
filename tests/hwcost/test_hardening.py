"""The bad-input battery's leftovers (issue 16, item 4): bounded fields refused alike on both
backends with the store unchanged, a huge bundle refused before it is read, one-line errors
(no traceback) for broken stores, URLs, shapes and factories, passwords redacted, a
non-hwcost SQLite file left byte-identical, read-only opens, and `db query` limits."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from hwcost.app.main import cli
from hwcost.bounds import BUNDLE_ROWS_MAX, INT_MAX
from hwcost.device import DeviceInfo
from hwcost.errors import BundleInvalid, InvalidMeasurement, QueryTimeout, ReadOnlyViolation
from hwcost.store import MeasurementIn, open_store
from hwcost.store.exchange import export_bundle, import_bundle, read_bundle, write_bundle
from hwcost.store.query import run_query
from tests.synthetic import small_store

REPO = Path(__file__).resolve().parents[2]


def snapshot(store) -> object:
    """What must not change: the SQLite file bytes, or every PostgreSQL table in full."""
    if store.url.startswith("sqlite"):
        path = Path(store.url.split("///", 1)[1])
        return hashlib.sha256(b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"))
                                       if p.exists())).hexdigest()
    with store.engine.connect() as c:
        names = [r[0] for r in c.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"))]
        return {t: c.execute(text(f"SELECT * FROM {t} ORDER BY 1")).all() for t in names}


def _set(table: str, col: str, value):
    def change(tables):
        t = tables[table]
        vals = t.column(col).to_pylist()
        vals[0] = value
        tables[table] = t.set_column(t.schema.get_field_index(col), col,
                                     pa.array(vals, t.schema.field(col).type))
    return change


def _set_ts(table: str, col: str, micros: int):
    """A timestamp Python's datetime cannot even hold (year 20000), set as raw microseconds."""
    def change(tables):
        t = tables[table]
        us = t.column(col).cast(pa.int64()).to_pylist()
        us[0] = micros
        tables[table] = t.set_column(t.schema.get_field_index(col), col,
                                     pa.array(us, pa.int64()).cast(t.schema.field(col).type))
    return change


YEAR_20000_US = int((datetime(9999, 1, 1, tzinfo=timezone.utc).timestamp()
                     + 10001 * 365.25 * 86400) * 1e6)

BAD = [
    ("n_samples 3e9", _set("measurement", "n_samples", 3_000_000_000),
     f"measurement.n_samples=3000000000 is out of range (1..{INT_MAX})"),
    ("n_samples int64 max", _set("model_latency", "n_samples", 2**63 - 1),
     "model_latency.n_samples=9223372036854775807 is out of range"),
    ("threads 2**40", _set("device", "threads", 2**40),
     "device.threads=1099511627776 is out of range"),
    ("year 20000", _set_ts("measurement", "measured_at", YEAR_20000_US),
     "measurement.measured_at holds a timestamp outside 1970-01-01 .. 2200-01-01 UTC"),
    ("median 1.7e308", _set("measurement", "median_us", 1.7e308),
     "measurement.median_us=1.7e+308 is out of range (0..1e+12)"),
    ("loss 1e300", _set("sensitivity", "loss_mse", 1e300),
     "sensitivity.loss_mse=1e+300 is out of range"),
]


def test_each_new_bad_bundle_is_refused_with_the_store_unchanged(store, tmp_path):
    small_store(store)
    good = tmp_path / "good.parquet"
    export_bundle(store, good)
    before = snapshot(store)
    for name, change, msg in BAD:
        tables = read_bundle(good).tables
        change(tables)
        path = tmp_path / f"{name.replace(' ', '_')}.parquet"
        write_bundle(tables, path)  # a correct checksum: only the bounds can catch it
        with pytest.raises(BundleInvalid) as e:
            import_bundle(store, path, on_conflict="replace")
        assert msg in str(e.value), name
        assert "\n" not in str(e.value), name
        assert snapshot(store) == before, name


def test_out_of_range_values_are_refused_alike_on_both_backends(store):
    info = small_store(store)
    dev, sig = info.devices[0], info.subgraphs[0]
    before = snapshot(store)
    with pytest.raises(InvalidMeasurement, match=r"^n_samples=3000000000 is out of range "
                                                 r"\(1\.\.2147483647\)"):
        store.add_measurements([MeasurementIn(dev, sig, "batch=1,seq=8", "fp32,fp32", 10.0, 1.0,
                                              3_000_000_000)])
    with pytest.raises(InvalidMeasurement, match=r"median_us=1\.7e\+308 is out of range"):
        store.add_measurements([MeasurementIn(dev, sig, "batch=1,seq=8", "fp32,fp32", 1.7e308,
                                              1.0, 5)])
    with pytest.raises(InvalidMeasurement, match="threads=1099511627776 is out of range"):
        store.put_device(DeviceInfo("cpu", "Huge CPU", 2**40))
    assert snapshot(store) == before


def test_a_huge_bundle_is_refused_from_its_footer_in_little_memory(sqlite_url, tmp_path):
    """30 M tiny rows in a few MB: refused before its rows are read (was 6.5 GB RSS). The
    refusal comes from the file's footer, before any store is touched: one backend is enough."""
    store_url = sqlite_url
    with open_store(store_url) as s:
        small_store(s)
        good = tmp_path / "good.parquet"
        export_bundle(s, good)
    meta = pq.read_schema(good).metadata
    n = 30_000_000
    big = tmp_path / "big.parquet"
    schema = pa.schema([("record", pa.dictionary(pa.int8(), pa.string()))]).with_metadata(meta)
    with pq.ParquetWriter(big, schema, compression="zstd") as w:
        chunk = pa.DictionaryArray.from_arrays(pa.nulls(1_000_000, pa.int8()).fill_null(0),
                                               pa.array(["measurement"]))
        for _ in range(n // 1_000_000):
            w.write_table(pa.Table.from_arrays([chunk], schema=schema))
    assert big.stat().st_size < 8_000_000
    # peak RSS from VmHWM (ru_maxrss would carry pytest's own peak across fork + exec)
    code = ("import re; from click.testing import CliRunner; "
            "from hwcost.app.main import cli; "
            f"r = CliRunner().invoke(cli, ['db', 'import', {str(big)!r}, '--db', {store_url!r}]); "
            "print(r.exit_code); print(r.output.strip()); "
            "print(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read())[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    code_, msg, rss_kb = out.stdout.strip().splitlines()
    assert code_ == "1"
    assert msg == (f"Error: invalid bundle big.parquet: {n} rows; bundles hold at most "
                   f"{BUNDLE_ROWS_MAX} (export large stores per device: hwcost db export "
                   "--device D)")
    assert int(rss_kb) < 500_000  # KiB: under 0.5 GB (was 6.5 GB)


def _one_line_error(args: list[str]) -> str:
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert res.output.count("\n") == 1 and res.output.startswith("Error: "), res.output
    return res.output.strip()


def test_broken_stores_and_urls_fail_in_one_line(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    msg = _one_line_error(["db", "ls", "--db", f"sqlite:///{junk}"])
    assert msg.startswith("Error: cannot open store sqlite:///") and "not a database" in msg
    bad_version = tmp_path / "abc.db"
    with open_store(f"sqlite:///{bad_version}") as s, s.engine.begin() as c:
        c.execute(text("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'"))
    assert "has schema_version 'abc', not a number" in _one_line_error(
        ["db", "ls", "--db", f"sqlite:///{bad_version}"])
    assert _one_line_error(["db", "ls", "--db", "sqlite:relative.db"]) == (
        "Error: cannot open store sqlite:relative.db: SQLite URLs look like "
        "sqlite:///relative/path.db or sqlite:////absolute/path.db")
    msg = _one_line_error(["db", "ls", "--db",
                           "postgresql+psycopg://u:s3cret@127.0.0.1:notaport/db"])
    assert msg.startswith("Error: cannot parse store URL "
                          "postgresql+psycopg://***@127.0.0.1:notaport/db")
    assert "s3cret" not in msg
    msg = _one_line_error(["db", "ls", "--db", "mysql://u:P@ss@w0rd@db.example/x"])
    assert msg == ("Error: unsupported store URL mysql://***@db.example/x; use sqlite:///PATH or "
                   "postgresql+psycopg://USER:PW@HOST/DB")


def test_a_foreign_sqlite_file_is_refused_byte_identical(tmp_path):
    import sqlite3

    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (x TEXT)")
    con.execute("INSERT INTO notes VALUES ('mine')")
    con.commit()
    con.close()
    before = path.read_bytes()
    assert "holds other tables (notes...), not an hwcost store" in _one_line_error(
        ["db", "init", "--db", f"sqlite:///{path}"])
    assert path.read_bytes() == before  # header too: not switched to WAL
    assert not Path(f"{path}-wal").exists()


@pytest.mark.parametrize(("shape", "message"), [
    ("garbage", "Error: cannot parse shape 'garbage': expected key=value pairs like "
                "'batch=1,seq=128' (bad part 'garbage')"),
    ("batch=1,batch=2",
     "Error: cannot parse shape 'batch=1,batch=2': field 'batch' is given twice"),
    (f"batch={10**30},seq=8",
     f"Error: cannot parse shape 'batch={10**30},seq=8': batch must be at most 1048576"),
])
def test_bad_shapes_fail_in_one_line(shape, message, sqlite_url):
    assert _one_line_error(["profile", "--shape", shape, "--db", sqlite_url]) == message


def test_a_factory_that_raises_fails_in_one_line(sqlite_url, monkeypatch, tmp_path):
    (tmp_path / "badfactory_q.py").write_text("def make():\n    raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _one_line_error(["profile", "badfactory_q:make", "--db", sqlite_url]) == (
        "Error: factory 'badfactory_q:make' raised RuntimeError: no GPU here")


def test_read_only_commands_open_read_only(sqlite_url):
    with open_store(sqlite_url) as s:
        small_store(s)
    path = Path(sqlite_url.split("///", 1)[1])
    before = path.read_bytes()  # closed: the write-ahead log is checkpointed into the file
    for args in (["db", "ls"], ["db", "query", "SELECT count(*) AS n FROM costs"],
                 ["campaign", "ls"]):
        res = CliRunner().invoke(cli, [*args, "--db", sqlite_url])
        assert res.exit_code == 0, res.output
    with open_store(sqlite_url, read_only=True) as ro:
        assert ro.read_only and ro.measurement_count() > 0
        wal = Path(f"{path}-wal")
        assert path.read_bytes() == before and (not wal.exists() or wal.stat().st_size == 0)
        with pytest.raises(Exception, match="the store is open read-only"):
            ro.set_device_peaks(ro.devices()[0].fingerprint, {"x": 1.0})


def test_db_query_refuses_hidden_writes_and_has_limits(store):
    small_store(store)
    with pytest.raises(ReadOnlyViolation, match="the SELECT holds a DELETE"):
        run_query(store, "WITH x AS (DELETE FROM measurement RETURNING *) SELECT * FROM x")
    with pytest.raises(ReadOnlyViolation, match="the SELECT holds a UPDATE"):
        run_query(store, "WITH x AS (UPDATE device SET name = 'y' RETURNING *) SELECT 1")
    # timestamps are typed alike on both backends
    r = run_query(store, "SELECT typeof(measured_at) AS t, typeof(created_at) AS c "
                         "FROM measurement, device LIMIT 1")
    assert r.rows == [("TIMESTAMP WITH TIME ZONE", "TIMESTAMP WITH TIME ZONE")]
    with pytest.raises(QueryTimeout, match=r"query stopped after --timeout 0\.5 s"):
        run_query(store, "SELECT count(*) FROM range(1e15::BIGINT) a, range(10) b", timeout_s=0.5)
    with pytest.raises(Exception, match="query returns more than 200000 rows"):
        run_query(store, "SELECT * FROM range(300000)")


def test_ctrl_c_during_a_query_is_one_line(sqlite_url):
    # A real Ctrl-C: SIGINT to a `hwcost db query` process, as a terminal sends it. (Not to the
    # pytest process: a library loaded by an earlier test may leave SIGINT at its default
    # action, and then the signal ends the whole test run.)
    with open_store(sqlite_url) as s:
        small_store(s)
    # As a terminal starts it: SIGINT at its default action. An ignored SIGINT is inherited
    # through exec, Python then keeps it ignored, and the query ran to --timeout: a pytest
    # worker's SIGINT can be ignored, depending on what ran in it before.
    proc = subprocess.Popen(
        [sys.executable, "-m", "hwcost.app", "db", "query", "--db", sqlite_url, "--timeout", "60",
         "SELECT count(*) FROM range(1e15::BIGINT) a, range(10) b"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        time.sleep(4.0)  # past the interpreter's start and into the query
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, (out, err)
    assert err.strip().splitlines() == ["Error: query interrupted (Ctrl-C); nothing was changed"]


_LATE_CTRL_C = """
import os, signal, sys, time, duckdb
import hwcost.store.query as q
from hwcost.store import open_store

real_connect = duckdb.connect

class LateCtrlC:
    # The Ctrl-C lands after the watcher is up, while the main thread is still on its way
    # into DuckDB (a no-op Python handler keeps KeyboardInterrupt out of the way, as C code
    # would): the watcher's first interrupt finds an idle connection, which DuckDB forgets.
    def __init__(self, con):
        self._con = con
    def __getattr__(self, name):
        return getattr(self._con, name)
    def execute(self, sql, *args):
        if "range(1e15" in sql:
            signal.signal(signal.SIGINT, lambda *_: None)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)
        return self._con.execute(sql, *args)

q.duckdb.connect = lambda *a, **k: LateCtrlC(real_connect(*a, **k))
t0 = time.monotonic()
try:
    q.run_query(open_store(sys.argv[1]), "SELECT count(*) FROM range(1e15::BIGINT) a", timeout_s=30)
except Exception as e:
    print(f"{e} after {time.monotonic() - t0:.1f} s")
"""


def test_a_ctrl_c_just_before_the_query_starts_still_stops_it(sqlite_url):
    # DuckDB clears an interrupt when a query starts: one sent just before was lost, and the
    # query ran to --timeout (the old watcher: "query stopped after --timeout 30 s").
    with open_store(sqlite_url) as s:
        small_store(s)
    out = subprocess.run([sys.executable, "-c", _LATE_CTRL_C, sqlite_url], capture_output=True,
                         text=True, timeout=120).stdout.strip()
    assert out.startswith("query interrupted"), out
    assert float(out.split(" after ")[1].split()[0]) < 10, out
