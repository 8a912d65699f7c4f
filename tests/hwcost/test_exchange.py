"""Sharing bundles: round trips, idempotence, conflicts and every kind of bad bundle, on
SQLite and PostgreSQL (the ``store`` / ``store_url`` fixtures)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from hwcost.errors import BundleInvalid
from hwcost.store import MeasurementIn, open_store, schema
from hwcost.store.exchange import (
    META_KEY,
    SPECS,
    export_bundle,
    import_bundle,
    read_bundle,
    write_bundle,
)
from tests.synthetic import device, small_store, subgraph

TABLES = [t.__tablename__ for t in schema.ALL_TABLES]


def snapshot(store) -> object:
    """What must not change: the SQLite file bytes, or every PostgreSQL table in full."""
    url = store.url
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        parts = [p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists()]
        return hashlib.sha256(b"".join(parts)).hexdigest()
    with store.engine.connect() as c:
        return {t: c.execute(text(f"SELECT * FROM {t} ORDER BY 1")).all() for t in TABLES}


@pytest.fixture
def bundle(store, tmp_path) -> Path:
    small_store(store)
    path = tmp_path / "b.parquet"
    export_bundle(store, path)
    return path


def test_export_import_export_same_content_and_second_import_adds_nothing(
        store, second_url, bundle, tmp_path):
    first = read_bundle(bundle)
    with open_store(second_url) as dst:
        rep = import_bundle(dst, bundle)
        assert {k: (v.new, v.identical, v.conflicting) for k, v in rep.tables.items()} == {
            k: (first.tables[k].num_rows, 0, 0) for k in first.tables}
        again = export_bundle(dst, tmp_path / "again.parquet")
        assert again.checksum == first.checksum
        n_before = dst.measurement_count()
        before = snapshot(dst)
        rep2 = import_bundle(dst, bundle)
        assert rep2.new == 0 and rep2.conflicting == 0
        assert rep2.tables["measurement"].identical == first.tables["measurement"].num_rows
        assert dst.measurement_count() == n_before
        if not dst.url.startswith("sqlite"):
            assert snapshot(dst) == before
        # provenance survives: host, campaign, measured_at, tool_version of every row
        src_rows = {tuple(r.values()) for r in first.tables["measurement"].to_pylist()}
        dst_rows = {tuple(r.values()) for r in read_bundle(tmp_path / "again.parquet")
                    .tables["measurement"].to_pylist()}
        assert src_rows == dst_rows
        assert {d.source for d in dst.devices()} == {"imported"}


def test_device_filter_exports_one_device(store, tmp_path):
    info = small_store(store)
    rep = export_bundle(store, tmp_path / "one.parquet", device=info.devices[1][:8])
    b = read_bundle(tmp_path / "one.parquet")
    assert rep.device == info.devices[1] == b.device
    assert set(b.tables["measurement"].column("device").to_pylist()) == {info.devices[1]}
    assert b.tables["device"].num_rows == 1
    assert b.tables["measurement"].num_rows == info.n_measurements // 2
    assert b.tables["subgraph"].num_rows == len(info.subgraphs)


def _conflicting_bundle(store, tmp_path, shift_s: int) -> tuple[Path, int]:
    """A bundle whose first device's measurements have other latencies, measured
    ``shift_s`` seconds later than the stored ones."""
    tables = read_bundle(_export(store, tmp_path / "base.parquet")).tables
    m = tables["measurement"]
    first = m.column("device")[0].as_py()
    mine = pc.equal(m.column("device"), first)
    m = m.set_column(m.schema.get_field_index("median_us"), "median_us",
                     pc.if_else(mine, pc.multiply(m.column("median_us"), 2.0), m.column("median_us")))
    shifted = pc.add(m.column("measured_at"), pa.scalar(shift_s * 10**6, pa.duration("us")))
    m = m.set_column(m.schema.get_field_index("measured_at"), "measured_at",
                     pc.if_else(mine, shifted, m.column("measured_at")))
    tables["measurement"] = m
    path = tmp_path / f"conflict{shift_s}.parquet"
    write_bundle(tables, path)
    return path, pc.sum(mine).as_py()


def _export(store, path: Path) -> Path:
    export_bundle(store, path)
    return path


def _medians(store, path: Path) -> dict[str, float]:
    export_bundle(store, path)
    return {r["device"] + r["subgraph"] + r["shape"] + r["config"]: r["median_us"]
            for r in read_bundle(path).tables["measurement"].to_pylist()}


def test_conflict_rules(store, tmp_path):
    small_store(store)
    base = _export(store, tmp_path / "base0.parquet")
    before = _medians(store, tmp_path / "x.parquet")
    for rule, later, taken in [("keep", True, False), ("replace", False, True),
                               ("newer", True, True), ("newer", False, False)]:
        import_bundle(store, base, on_conflict="replace")  # back to the original rows
        assert _medians(store, tmp_path / "x.parquet") == before
        path, n = _conflicting_bundle(store, tmp_path, 3600 if later else -3600)
        rep = import_bundle(store, path, on_conflict=rule)
        t = rep.tables["measurement"]
        assert (t.new, t.conflicting, t.identical) == (0, n, t.rows - n), rule
        assert (t.replaced, t.kept) == ((n, 0) if taken else (0, n)), rule
        assert len(t.examples) == 3
        after = _medians(store, tmp_path / "y.parquet")
        assert sum(after[k] != v for k, v in before.items()) == (n if taken else 0), rule
        assert all(after[k] in (v, 2 * v) for k, v in before.items())


# ------------------------------------------------------------------ bad bundles


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Rewrite a bundle with ``change(tables)`` applied and a *correct* checksum, so that
    only the content check can catch what was changed."""
    tables = read_bundle(src).tables
    change(tables)
    write_bundle(tables, dst)
    return dst


def _set(table: str, col: str, value, row: int = 0):
    def change(tables):
        t = tables[table]
        vals = t.column(col).to_pylist()
        vals[row] = value
        tables[table] = t.set_column(t.schema.get_field_index(col), col,
                                     pa.array(vals, t.schema.field(col).type))
    return change


def _raw_rewrite(src: Path, dst: Path, change) -> Path:
    """Rewrite the Parquet file itself, keeping the original metadata (and checksum)."""
    t = pq.read_table(src)
    t = change(t)
    pq.write_table(t.replace_schema_metadata(pq.read_schema(src).metadata), dst)
    return dst


def _bad_bundles(good: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    raw = good.read_bytes()
    cases = {}
    (tmp / "trunc.parquet").write_bytes(raw[: len(raw) // 2])
    cases["truncated"] = (tmp / "trunc.parquet", "not a readable Parquet file")
    mid = bytearray(raw)
    for i in range(len(raw) // 3, len(raw) // 3 + 64):
        mid[i] ^= 0xFF
    (tmp / "corrupt.parquet").write_bytes(bytes(mid))
    cases["corrupt"] = (tmp / "corrupt.parquet", "invalid bundle corrupt.parquet")
    (tmp / "text.parquet").write_text("device,median_us\nx,1\n")
    cases["not parquet"] = (tmp / "text.parquet", "not a readable Parquet file")

    def tamper(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index("measurement_median_us")
        col = t.column(i)
        return t.set_column(i, "measurement_median_us", pc.multiply(col, 1.5))
    cases["checksum"] = (_raw_rewrite(good, tmp / "tampered.parquet", tamper), "checksum mismatch")
    cases["missing column"] = (
        _raw_rewrite(good, tmp / "nocol.parquet", lambda t: t.drop_columns(["measurement_config"])),
        "missing column measurement_config")
    newer = tmp / "newer.parquet"
    write_bundle(read_bundle(good).tables, newer, schema_version=schema.SCHEMA_VERSION + 1)
    cases["newer schema"] = (newer, f"schema version {schema.SCHEMA_VERSION + 1} is newer")
    no_meta = tmp / "nometa.parquet"
    pq.write_table(pq.read_table(good).replace_schema_metadata(None), no_meta)
    cases["no metadata"] = (no_meta, "not an hwcost bundle")
    for name, change, msg in [
        ("nan", _set("measurement", "median_us", float("nan")), "NaN or infinite"),
        ("inf", _set("measurement", "spread_us", float("inf")), "NaN or infinite"),
        ("negative", _set("measurement", "median_us", -3.0), "negative values"),
        ("zero", _set("measurement", "median_us", 0.0), "zero latencies"),
        ("negative loss", _set("sensitivity", "loss_mse", -1e-3), "negative values"),
        ("precision", _set("measurement", "config", "bf16,int9"), "unknown precision 'int9'"),
        ("slot count", _set("measurement", "config", "bf16"), "has 1 precisions"),
        ("sens precision", _set("sensitivity", "precision", "fp4"), "unknown precision 'fp4'"),
        ("shape", _set("measurement", "shape", "batch=one,phase=prefill"), "measurement.shape"),
        ("device ref", _set("measurement", "device", "ffffffffffffffff"), "does not hold"),
        ("subgraph ref", _set("manifest_entry", "subgraph", "0" * 16), "does not hold"),
        ("null", _set("measurement", "host", None), "missing value"),
        ("nul", _set("measurement", "host", "a\0b"), "NUL character"),
        ("json", _set("subgraph", "slots", "[{"), "invalid JSON"),
        ("n_samples", _set("measurement", "n_samples", 0), "n_samples must be >= 1"),
        ("duplicate", lambda ts: ts.__setitem__(
            "measurement", pa.concat_tables([ts["measurement"], ts["measurement"].slice(0, 1)])),
         "duplicate key"),
    ]:
        path = tmp / f"{name.replace(' ', '_')}.parquet"
        cases[name] = (_rewrite(good, path, change), msg)
    return cases


def test_every_bad_bundle_is_refused_and_the_store_is_unchanged(store, bundle, tmp_path):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    cases = _bad_bundles(bundle, bad_dir)
    before = snapshot(store)
    for name, (path, msg) in cases.items():
        with pytest.raises(BundleInvalid) as e:
            import_bundle(store, path, on_conflict="replace")
        assert msg in str(e.value), name
        assert "\n" not in str(e.value), name
        assert snapshot(store) == before, name
    # and into an empty store: still nothing written
    (tmp_path / "empty").mkdir()
    if store.url.startswith("sqlite"):
        with open_store(f"sqlite:///{tmp_path / 'empty' / 's.db'}") as empty:
            empty_before = snapshot(empty)
            for path, _ in cases.values():
                with pytest.raises(BundleInvalid):
                    import_bundle(empty, path)
            assert snapshot(empty) == empty_before
            assert empty.measurement_count() == 0


def test_missing_file_and_bad_rule(store, tmp_path):
    with pytest.raises(BundleInvalid, match="no bundle file"):
        import_bundle(store, tmp_path / "nope.parquet")
    with pytest.raises(Exception, match="on_conflict must be one of keep, replace, newer"):
        import_bundle(store, tmp_path / "nope.parquet", on_conflict="merge")


def test_bundle_is_self_describing_and_readable_by_duckdb(bundle):
    import duckdb

    meta = json.loads(pq.read_schema(bundle).metadata[META_KEY])
    assert meta["format"] == "hwcost-bundle" and meta["schema_version"] == schema.SCHEMA_VERSION
    assert meta["checksum"]["algorithm"] == "sha256-hwcost-1"
    assert set(meta["tables"]) == {s.name for s in SPECS}
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{bundle}') "
                   "WHERE record = 'measurement' AND measurement_median_us > 0").fetchall()[0][0]
    assert n == meta["tables"]["measurement"]["rows"] > 0


def test_measurements_written_through_store_api_round_trip(store, second_url, tmp_path):
    """Rows added with add_measurements (aware datetimes, None campaign) survive exactly."""
    store.upsert_device(device(5))
    sg = subgraph(7, n_slots=1)
    store.upsert_subgraphs([sg])
    store.add_measurements([MeasurementIn(device(5).fingerprint, sg.signature,
                                          "seq=64,batch=2", ("int8",), 1e-300, 0.0, 1,
                                          host="h\u00e9\"st,\n2", campaign=None)])
    export_bundle(store, tmp_path / "a.parquet")
    with open_store(second_url) as dst:
        import_bundle(dst, tmp_path / "a.parquet")
        (sub, shape, cfg, med, spr), = dst.device_measurements(device(5).fingerprint)
        assert (sub, shape, cfg, med, spr) == (sg, "batch=2,seq=64,phase=prefill", "int8",
                                               1e-300, 0.0)
        assert export_bundle(dst, tmp_path / "b.parquet").checksum == \
            read_bundle(tmp_path / "a.parquet").checksum


def test_bulk_load_into_an_empty_table_rebuilds_its_indexes(
        store, second_url, bundle, tmp_path, monkeypatch):
    """Large imports into an empty table build indexes (and constraints) once,
    afterwards; the result must be the same rows and the same catalog."""
    from hwcost.store import exchange

    def catalog(s):
        with s.engine.connect() as c:
            if s.dialect == "sqlite":
                return sorted(c.execute(text("SELECT type, name, sql FROM sqlite_master WHERE "
                                             "tbl_name = 'measurement'")).all())
            return sorted(c.execute(text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = "
                "'measurement'::regclass UNION ALL SELECT regexp_replace(indexdef, "
                "'INDEX \\S+ ON', 'INDEX ON') FROM pg_indexes WHERE tablename = 'measurement'"))
                .scalars())

    monkeypatch.setattr(exchange, "_BULK_ROWS", 1)
    with open_store(second_url) as dst:
        before = catalog(dst)
        assert len(before) >= 3  # the table or pkey, the unique key, the lookup index, ...
        rep = import_bundle(dst, bundle)
        assert rep.tables["measurement"].new == read_bundle(bundle).tables["measurement"].num_rows
        assert catalog(dst) == before
        assert export_bundle(dst, tmp_path / "bulk.parquet").checksum == read_bundle(bundle).checksum
        again = import_bundle(dst, bundle)  # not empty now: the ordinary path, nothing new
        assert again.new == 0 and again.tables["measurement"].identical == rep.tables["measurement"].new
