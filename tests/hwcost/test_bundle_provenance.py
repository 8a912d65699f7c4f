"""Bundles carry how each timing was taken: an imported row keeps its clock, quick and stable
flags, the machine's figures and its in-group baseline, so an unstable timing stays out of
plans on the importing side too. A bundle of the older format (1, without them) imports as
unknown provenance: clock ``unknown`` and not stable, used only with ``--allow-unstable``.
On SQLite and PostgreSQL."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from hwcost.errors import BundleInvalid
from hwcost.store import MeasurementIn, open_store
from hwcost.store.bundle import META_KEY, read_bundle, write_bundle
from hwcost.store.exchange import export_bundle, import_bundle, read_tables
from hwcost.store.schema import Measurement, ModelLatency
from tests.synthetic import device, subgraph

COLS = ("clock", "quick", "stable", "load1", "cpu_mhz", "threads", "baseline_us", "drift")


def _fill(store) -> tuple[str, str]:
    dev = device(3)
    store.upsert_device(dev)
    sg = subgraph(4, n_slots=1)
    store.upsert_subgraphs([sg])
    common = dict(n_samples=9, clock="thread", threads=1, load1=3.5, cpu_mhz=2100.0)
    store.add_measurements([
        MeasurementIn(dev.fingerprint, sg.signature, "seq=8", ("fp32",), 100.0, 2.0,
                      baseline_us=100.0, drift=0.01, **common),
        MeasurementIn(dev.fingerprint, sg.signature, "seq=8", ("int8",), 60.0, 9.0,
                      stable=False, baseline_us=101.0, drift=0.2, **common),
        MeasurementIn(dev.fingerprint, sg.signature, "seq=8", ("bf16",), 80.0, 1.0,
                      quick=True, baseline_us=99.0, drift=0.0, **common),
    ])
    return dev.fingerprint, sg.signature


def _rows(store) -> dict[str, tuple]:
    with store.session() as s:
        return {m.config: tuple(getattr(m, c) for c in COLS)
                for m in s.scalars(select(Measurement))}


def test_provenance_travels_with_the_bundle(store, second_url, tmp_path):
    fp, _ = _fill(store)
    path = tmp_path / "b.parquet"
    export_bundle(store, path)
    b = read_bundle(path)
    assert b.format_version == 2
    assert b.tables["measurement"].column("stable").to_pylist().count(False) == 1
    with open_store(second_url) as dst:
        import_bundle(dst, path)
        assert _rows(dst) == _rows(store)
        assert _rows(dst)["int8"][:3] == ("thread", False, False)
        # only the full, stable timing is good on the importing side too
        assert [cfg for _, _, cfg, _, _ in dst.device_measurements(fp)] == ["fp32"]
        assert len(dst.device_measurements(fp, allow_unstable=True)) == 3
        # and the round trip is exact
        assert export_bundle(dst, tmp_path / "again.parquet").checksum == b.checksum


def test_a_bundle_without_provenance_imports_as_unknown_and_not_good(store, second_url,
                                                                      tmp_path):
    """Decision: a format-1 bundle says nothing about how its timings were taken, so they
    import as clock 'unknown', not quick, NOT stable (null machine figures): a plan does not
    rest on them unless --allow-unstable, and any later timing of the key replaces them."""
    fp, sig = _fill(store)
    old = tmp_path / "old.parquet"
    write_bundle(read_tables(store), old, format_version=1)
    meta = pq.ParquetFile(old).schema_arrow.metadata[META_KEY]
    assert b'"format_version": 1' in meta
    assert "measurement_stable" not in pq.ParquetFile(old).schema_arrow.names
    with open_store(second_url) as dst:
        import_bundle(dst, old)
        rows = _rows(dst)
        assert set(rows) == {"fp32", "int8", "bf16"}
        for r in rows.values():
            assert r == ("unknown", False, False, None, None, None, None, None)
        assert dst.device_measurements(fp) == []  # nothing good
        assert len(dst.device_measurements(fp, allow_unstable=True)) == 3
        # a later real timing of the key replaces the unknown row
        dst.add_measurements([MeasurementIn(fp, sig, "seq=8", ("fp32",), 98.0, 1.0, 9)])
        assert [cfg for _, _, cfg, _, _ in dst.device_measurements(fp)] == ["fp32"]
        with dst.session() as s:
            assert s.scalars(select(ModelLatency)).all() == []


def test_bad_provenance_is_refused(store, tmp_path):
    _fill(store)
    tables = read_tables(store)
    m = tables["measurement"]
    i = m.schema.get_field_index("clock")
    bad = dict(tables, measurement=m.set_column(i, "clock", pa.array(["sundial"] * m.num_rows)))
    write_bundle(bad, tmp_path / "bad.parquet")
    with pytest.raises(BundleInvalid, match="measurement.clock 'sundial' is not one of"):
        read_bundle(tmp_path / "bad.parquet")
