"""Synthetic store content for tests and benchmarks (``bench/store.py``, ``bench/fleet.py``,
which run from the repository root); not part of the installed package.

Devices, subgraphs and a model whose structure is made up but whose rows are written through
the real store API (``small_store``), or in bulk for storage benchmarks (``fill_grid``).
Nothing here is a measurement of real hardware.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from hwcost.precision import config_key
from hwcost.quantizer import DEFAULT as DEFAULT_QUANTIZER
from hwcost.store import (
    ManifestItem,
    MeasurementIn,
    ModelLatencyRecord,
    SensitivityRow,
    SensitivityTable,
    SlotInfo,
    Store,
    SubgraphInfo,
    open_store,
)
from hwcost.store.schema import Device

PRECISIONS = ("fp32", "bf16", "int8", "fp8_e4m3")
SHAPES = ("batch=1,seq=128,phase=prefill", "batch=1,kv=512,phase=decode",
          "batch=8,seq=32,phase=prefill")
_T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _hex(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def device(i: int, kind: str = "cpu") -> Device:
    """A made-up device row; ``i`` picks a distinct fingerprint."""
    return Device(fingerprint=_hex("device", i, kind), kind=kind, name=f"Synthetic {kind} {i}",
                  threads=8 * (i + 1), flags=json.dumps(["avx512_bf16", "avx512f"]),
                  software=json.dumps({"python": "3.11", "torch": "2.13.0"}, sort_keys=True),
                  peaks=json.dumps({"bf16_tflops": 10.0 + i}, sort_keys=True))


def subgraph(i: int, n_slots: int = 2, width: int = 64) -> SubgraphInfo:
    """A made-up subgraph with ``n_slots`` linear slots."""
    slots = tuple(SlotInfo("linear", width * (j + 1), width * (j + 2), bias=j % 2 == 0)
                  for j in range(n_slots))
    return SubgraphInfo(_hex("subgraph", i, n_slots, width), f"Block{i % 3}", slots,
                        {"heads": 4, "index": i})


@dataclass(frozen=True)
class SmallStore:
    """What :func:`small_store` wrote."""

    devices: tuple[str, ...]
    subgraphs: tuple[str, ...]
    model: str
    n_measurements: int


def small_store(store: Store, seed: int = 0, n_devices: int = 2, n_subgraphs: int = 3,
                n_positions: int = 6) -> SmallStore:
    """Fill ``store`` with a little of everything, through the public Store API."""
    rng = random.Random(seed)
    devs = [store.upsert_device(device(i)).fingerprint for i in range(n_devices)]
    sgs = [subgraph(i) for i in range(n_subgraphs)]
    manifest = [ManifestItem(p, sgs[p % n_subgraphs].signature,
                             (f"layers.{p}.a", f"layers.{p}.b")) for p in range(n_positions)]
    model_fp = _hex("model", seed, n_subgraphs, n_positions)
    model_id = store.put_model(model_fp, f"synthetic-{seed}", sgs, manifest)
    items = []
    for d, sg, shape in itertools.product(devs, sgs, SHAPES[:2]):
        for cfg in itertools.product(PRECISIONS[:3], repeat=len(sg.slots)):
            items.append(MeasurementIn(
                d, sg.signature, shape, config_key(cfg), round(rng.uniform(5, 500), 3),
                round(rng.uniform(0, 5), 3), rng.randint(3, 50), host=f"host{rng.randint(0, 3)}",
                campaign=rng.choice([None, "c1", "c2"]), tool_version="0.1.0",
                measured_at=_T0 + timedelta(seconds=rng.randint(0, 10**6),
                                            microseconds=rng.randint(0, 999999))))
    store.add_measurements(items)
    store.put_model_latency(model_fp, devs[0], SHAPES[0], "all:bf16", ModelLatencyRecord(
        model_fp, devs[0], SHAPES[0], "all:bf16", median_us=1234.5, spread_us=12.25,
        n_samples=20, host="host0", tool_version="0.1.0", measured_at=_T0))
    ckpt = _hex("checkpoint", seed)[:32]
    store.put_checkpoint(model_id, ckpt, f"synthetic-{seed}", "tests.synthetic")
    store.put_sensitivity_table(model_fp, SensitivityTable(
        [SensitivityRow(f"layers.{p}.{s}", prec, rng.uniform(0, 1e-3), rng.uniform(0, 1e-4), 16)
         for p in range(n_positions) for s in "ab" for prec in ("bf16", "int8")],
        "taylor", "calib0", ckpt, DEFAULT_QUANTIZER.key),
        replace=False)  # built again, the store keeps its rows (and their created_at) as they are
    return SmallStore(tuple(devs), tuple(s.signature for s in sgs), model_fp, len(items))


def fill_grid(store: Store, n_devices: int, n_subgraphs: int, shapes: list[str],
              n_slots: int = 2, precisions: tuple[str, ...] = PRECISIONS,
              model_positions: int = 0) -> int:
    """Bulk-write a full device x subgraph x shape x config grid of measurements.

    For storage benchmarks: one INSERT ... SELECT from a temporary table per device, no ORM.
    With ``model_positions`` a model whose manifest cycles through the first subgraphs is
    stored too (fingerprint ``grid-model``). Returns the number of measurements written.
    """
    import pyarrow as pa  # only here: the concurrency workers start faster without it
    from sqlalchemy import text

    from hwcost.store.bulk import drop_temp, load_temp

    for i in range(n_devices):
        store.upsert_device(device(i))
    sgs = [subgraph(i, n_slots) for i in range(n_subgraphs)]
    ids = store.upsert_subgraphs(sgs)
    if model_positions:
        manifest = [ManifestItem(p, sgs[p % min(n_subgraphs, 50)].signature,
                                 tuple(f"layers.{p}.{j}" for j in range(n_slots)))
                    for p in range(model_positions)]
        store.put_model("grid-model", "grid-model", sgs, manifest)
    configs = [config_key(c) for c in itertools.product(precisions, repeat=n_slots)]
    sg_ids = [ids[s.signature] for s in sgs]
    n_per_dev = len(sg_ids) * len(shapes) * len(configs)
    rng = random.Random(0)
    total = 0
    cols = [("device_id", "int"), ("subgraph_id", "int"), ("shape", "str"), ("config", "str"),
            ("median_us", "float"), ("spread_us", "float"), ("n_samples", "int"),
            ("measured_at", "ts"), ("host", "str"), ("campaign", "str"), ("tool_version", "str")]
    for i in range(n_devices):
        dev_id = store.get_device(device(i).fingerprint).id
        grid = list(itertools.product(sg_ids, shapes, configs))
        t = pa.table({
            "device_id": pa.array([dev_id] * n_per_dev, pa.int64()),
            "subgraph_id": pa.array([g[0] for g in grid], pa.int64()),
            "shape": pa.array([g[1] for g in grid], pa.string()),
            "config": pa.array([g[2] for g in grid], pa.string()),
            "median_us": pa.array([rng.uniform(1, 1000) for _ in grid], pa.float64()),
            "spread_us": pa.array([rng.uniform(0, 10) for _ in grid], pa.float64()),
            "n_samples": pa.array([10] * n_per_dev, pa.int64()),
            "measured_at": pa.array([_T0 + timedelta(microseconds=k) for k in range(n_per_dev)],
                                    pa.timestamp("us", tz="UTC")),
            "host": pa.array([f"host{k % 8}" for k in range(n_per_dev)], pa.string()),
            "campaign": pa.array(["grid"] * n_per_dev, pa.string()),
            "tool_version": pa.array(["0.1.0"] * n_per_dev, pa.string()),
        })
        names = ", ".join(c for c, _ in cols)
        with store.session() as s:
            conn = s.connection()
            load_temp(conn, "grid_rows", t, cols)
            conn.execute(text(f"INSERT INTO measurement ({names}) SELECT {names} FROM grid_rows "
                              "WHERE true ON CONFLICT DO NOTHING"))
            drop_temp(conn, "grid_rows")
        total += n_per_dev
    return total


def overlap_keys() -> list[tuple[str, str, str]]:
    """The (signature, shape, config) grid :func:`concurrent_writer` draws from (108 keys)."""
    sgs = [subgraph(i) for i in range(4)]
    return [(sg.signature, shape, config_key(cfg)) for sg in sgs for shape in SHAPES
            for cfg in itertools.product(PRECISIONS[:3], repeat=2)]


def overlap_value(key: tuple[str, str, str]) -> float:
    """The latency every writer records for ``key``, so overlapping writes agree."""
    return 1.0 + int(_hex(*key)[:6], 16) / 1000


def concurrent_writer(url: str, worker: int, n_keys: int, stride: int, barrier,
                      batch: int = 10) -> None:
    """One of several processes writing overlapping measurements to one store at once.

    Worker ``w`` records the device, subgraphs and model (all shared), waits for the others,
    then writes keys ``w*stride .. w*stride+n_keys-1`` of :func:`overlap_keys` in
    transactions of ``batch`` rows. Used by the concurrency tests (multiprocessing, spawn).
    """
    store = open_store(url)
    try:
        dev = store.upsert_device(device(0)).fingerprint
        sgs = [subgraph(i) for i in range(4)]
        manifest = [ManifestItem(p, sgs[p % 4].signature, (f"l{p}.a", f"l{p}.b")) for p in range(8)]
        store.put_model(_hex("overlap-model"), "overlap", sgs, manifest)
        mine = overlap_keys()[worker * stride: worker * stride + n_keys]
        barrier.wait(timeout=120)
        for i in range(0, len(mine), batch):
            store.add_measurements(
                MeasurementIn(dev, sig, shape, cfg, overlap_value((sig, shape, cfg)), 0.5, 7,
                              host=f"worker{worker}", campaign="overlap")
                for sig, shape, cfg in mine[i:i + batch])
    finally:
        store.close()


def scratch_pg_database(admin_url: str, prefix: str = "hwcost_tmp"):
    """Create an empty PostgreSQL database next to ``admin_url`` (a role that may CREATE
    DATABASE); return its URL and a function that drops it. For tests and benchmarks."""
    import time
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"  # generated, never user input: safe to quote
    eng = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        # An autovacuum worker (not ours to terminate, so FORCE fails) may still be analysing
        # a freshly written database: retry for a while.
        for attempt in range(40):
            try:
                with eng.connect() as c:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                break
            except DBAPIError:
                if attempt == 39:
                    raise
                time.sleep(0.5)
        eng.dispose()

    return f"{admin_url.rsplit('/', 1)[0]}/{name}", drop
