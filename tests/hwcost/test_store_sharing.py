"""The store on both backends: reopen round trip, idempotent writes, 8 concurrent writer
processes, and a hypothesis round-trip property through export and import."""

from __future__ import annotations

import multiprocessing as mp
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from hwcost.store import MeasurementIn, open_store
from hwcost.store.exchange import export_bundle, import_bundle, read_bundle
from hwcost.store.schema import Measurement
from tests.synthetic import (
    PRECISIONS,
    SHAPES,
    concurrent_writer,
    device,
    overlap_keys,
    overlap_value,
    small_store,
    subgraph,
)


def test_reopen_round_trip_and_idempotent_writes(store_url, tmp_path):
    with open_store(store_url) as s:
        info = small_store(s)
        first = export_bundle(s, tmp_path / "a.parquet")
        costs = s.model_costs(info.model, info.devices[0], SHAPES[0])
    with open_store(store_url) as s:
        assert export_bundle(s, tmp_path / "b.parquet").checksum == first.checksum
        assert s.model_costs(info.model, info.devices[0], SHAPES[0]) == costs
        assert len(costs) == 6 * 9  # 6 instances x 9 configs, identical blocks share rows
        # writing the same rows again keeps one of each
        again = small_store(s)
        assert again.n_measurements == info.n_measurements
        assert s.measurement_count() == info.n_measurements
        assert export_bundle(s, tmp_path / "c.parquet").checksum == first.checksum


def test_eight_processes_writing_overlapping_measurements(store_url):
    with open_store(store_url):  # create the schema once; the workers race on everything else
        pass
    ctx = mp.get_context("spawn")
    n_workers, n_keys, stride = 8, 30, 10
    barrier = ctx.Barrier(n_workers)
    procs = [ctx.Process(target=concurrent_writer, args=(store_url, w, n_keys, stride, barrier))
             for w in range(n_workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0] * n_workers
    expected = overlap_keys()[: (n_workers - 1) * stride + n_keys]
    with open_store(store_url) as s:
        with s.engine.connect() as c:
            rows = c.execute(text(
                "SELECT s.signature, m.shape, m.config, m.median_us FROM measurement m "
                "JOIN subgraph s ON s.id = m.subgraph_id")).all()
            n_dev = c.execute(text("SELECT COUNT(*) FROM device")).scalar_one()
            n_models = c.execute(text("SELECT COUNT(*) FROM model")).scalar_one()
            n_manifest = c.execute(text("SELECT COUNT(*) FROM manifest_entry")).scalar_one()
        assert len(rows) == len(set((r[0], r[1], r[2]) for r in rows)) == len(expected) == 100
        assert {(r[0], r[1], r[2]) for r in rows} == set(expected)
        assert all(r[3] == overlap_value((r[0], r[1], r[2])) for r in rows)
        assert (n_dev, n_models, n_manifest) == (1, 1, 8)


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                max_size=10)
_ROW = st.tuples(
    st.floats(min_value=0, max_value=1e12, exclude_min=True, allow_nan=False,
              allow_infinity=False),
    st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False),
    st.integers(1, 10**9), _TEXT, st.none() | _TEXT,
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
_KEY = st.tuples(st.integers(0, 1), st.integers(0, 2), st.sampled_from(SHAPES),
                 st.tuples(st.sampled_from(PRECISIONS), st.sampled_from(PRECISIONS)))


def _clear_measurements(s) -> None:
    with s.session() as sess:
        sess.execute(Measurement.__table__.delete())


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.dictionaries(_KEY, _ROW, max_size=25))
def test_round_trip_property(store, second_url, tmp_path, data):
    devs = [store.upsert_device(device(i)).fingerprint for i in range(2)]
    sgs = [subgraph(i) for i in range(3)]
    store.upsert_subgraphs(sgs)
    _clear_measurements(store)
    store.add_measurements(
        MeasurementIn(devs[d], sgs[g].signature, shape, cfg, med, spr, n, host=host,
                      campaign=camp, measured_at=at.replace(tzinfo=timezone.utc))
        for (d, g, shape, cfg), (med, spr, n, host, camp, at) in data.items())
    a = export_bundle(store, tmp_path / "a.parquet")
    with open_store(second_url) as dst:
        _clear_measurements(dst)
        first = import_bundle(dst, tmp_path / "a.parquet")
        assert first.tables["measurement"].new == len(data)
        assert export_bundle(dst, tmp_path / "b.parquet").checksum == a.checksum
        second = import_bundle(dst, tmp_path / "a.parquet")
        assert second.new == 0 and second.conflicting == 0
        with dst.engine.connect() as c:
            assert c.execute(select(func.count()).select_from(Measurement)).scalar() == len(data)
    got = {(r["device"], r["subgraph"], r["shape"], r["config"]):
           (r["median_us"], r["spread_us"], r["n_samples"], r["host"], r["campaign"],
            r["measured_at"])
           for r in read_bundle(tmp_path / "b.parquet").tables["measurement"].to_pylist()}
    want = {(devs[d], sgs[g].signature, shape, ",".join(cfg)):
            (med, spr, n, host, camp, at.replace(tzinfo=timezone.utc))
            for (d, g, shape, cfg), (med, spr, n, host, camp, at) in data.items()}
    assert got == want
