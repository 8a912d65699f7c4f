"""Fleet-scale queue behaviour with real processes on both backends: 32 claiming processes
never share a task; kill -9 of half the workers mid-campaign, restart, every task measured
exactly once; a v1 store's campaign gains its units when upgraded."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest
from sqlalchemy import text

from hwcost import fleet_worker
from hwcost.device import DeviceInfo
from hwcost.store import MeasurementIn, SlotInfo, SubgraphInfo, Unit, open_store

DEV = DeviceInfo("cpu", "Fleet test CPU", 2, ("avx2",), {"torch": "0"})
CONFIGS = ["fp32", "bf16", "int8"]
SHAPE = "batch=1,seq=8,phase=prefill"
# forkserver: children fork from a small server that imported hwcost once, not from pytest
# (forking a pytest process that holds torch 32 times copies gigabytes as children touch it)
CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(["hwcost.fleet_worker", "hwcost.store", "sqlalchemy"])


def _campaign(url: str, n_units: int) -> tuple[int, int]:
    sigs = [f"fleet{i:04d}" for i in range(n_units)]
    with open_store(url) as s:
        s.put_device(DEV)
        s.upsert_subgraphs([SubgraphInfo(g, "Linear", (SlotInfo("Linear", 4, 4),)) for g in sigs])
        cid = s.ensure_campaign("fleet", device=DEV.fingerprint, model=None)
        n = s.add_tasks(cid, [(g, SHAPE, c) for g in sigs for c in CONFIGS])
    return cid, n


def _measure(worker: str, log, delay: float):
    def measure(unit: Unit):
        time.sleep(delay)
        log.write("".join(f"{worker} {t.id}\n" for t in unit.tasks))
        log.flush()
        return [MeasurementIn(DEV.fingerprint, t.signature, t.shape, t.config, 10.0, 1.0, 3,
                              host=worker) for t in unit.tasks], {}
    return measure


def _worker(url: str, cid: int, name: str, log_path: str, delay: float, stale: float,
            start: float) -> None:
    """A worker process: claims units until none is left (``hwcost.fleet_worker.work``)."""
    time.sleep(max(0.0, start - time.time()))  # all start at once
    with open_store(url) as s, open(log_path, "a") as log:
        fleet_worker.work(s, cid, name, _measure(name, log, delay), stale_after_s=stale)
    os._exit(0)


def _start(url, cid, names, tmp_path, delay, stale, start=0.0):
    procs = {}
    for n in names:
        p = CTX.Process(target=_worker, args=(url, cid, n, str(tmp_path / f"{n}.log"), delay,
                                              stale, start))
        p.start()
        procs[n] = p
    return procs


def _measured_log(tmp_path) -> list[tuple[str, int]]:
    out = []
    for f in tmp_path.glob("*.log"):
        out += [(w, int(i)) for w, i in (line.split() for line in f.read_text().splitlines())]
    return out


def _stored(url: str, cid: int) -> dict[int, str]:
    """task id -> host of its stored measurement (the worker that wrote it)."""
    with open_store(url) as s, s.session() as ss:
        return dict(ss.execute(text(
            "SELECT t.id, m.host FROM campaign_task t JOIN measurement m "
            "ON m.subgraph_id = t.subgraph_id AND m.shape = t.shape AND m.config = t.config "
            "WHERE t.campaign_id = :c AND t.state = 'done'"), {"c": cid}).all())


@pytest.mark.slow
def test_32_processes_never_get_the_same_task(store_url, tmp_path):
    open_store(store_url).close()
    cid, n = _campaign(store_url, 160)
    procs = _start(store_url, cid, [f"p{i:02d}" for i in range(32)], tmp_path, 0.0, 60.0,
                   start=time.time() + 1.0)
    for p in procs.values():
        p.join(120)
        assert p.exitcode == 0
    log = _measured_log(tmp_path)
    ids = [i for _, i in log]
    assert len(ids) == len(set(ids)) == n  # no task handed to two processes
    with open_store(store_url) as s:
        assert s.campaign_progress(cid).done == n
        assert s.measurement_count() == n
        assert s.task_workers(cid) == {i: w for w, i in log}
    assert len({w for w, _ in log}) > 1


@pytest.mark.slow
def test_kill_half_the_workers_then_restart_every_task_measured_once(store_url, tmp_path):
    open_store(store_url).close()
    cid, n = _campaign(store_url, 90)
    names = [f"w{i}" for i in range(8)]
    # 0.2 s a task: the campaign takes ~10 s, so the kill lands mid-campaign even when this
    # process is starved by the rest of a full suite (at 0.05 s it once took ~2 s, a starved
    # poll missed it, and the victims had ended before the signal: ProcessLookupError)
    procs = _start(store_url, cid, names, tmp_path, 0.2, 1.0)
    with open_store(store_url) as s:
        deadline = time.time() + 60
        while s.campaign_progress(cid).done < n // 4 and time.time() < deadline:
            time.sleep(0.05)
        victims = names[::2]
        for v in victims:
            os.kill(procs[v].pid, signal.SIGKILL)
        for v in victims:
            procs[v].join()
        after_kill = s.campaign_progress(cid)
    assert 0 < after_kill.done < n
    # restart the killed workers under their names; the survivors keep going meanwhile
    procs.update(_start(store_url, cid, victims, tmp_path, 0.05, 1.0))
    for p in procs.values():
        p.join(120)
    assert all(procs[w].exitcode == 0 for w in names)
    with open_store(store_url) as s:
        assert s.campaign_progress(cid).to_dict() == {
            "pending": 0, "claimed": 0, "done": n, "failed": 0, "cancelled": 0, "total": n}
        assert s.measurement_count() == n  # every task's result stored exactly once
    stored = _stored(store_url, cid)
    assert len(stored) == n
    with open_store(store_url) as s:
        # the measurement kept is the one of the worker that closed the task
        assert stored == s.task_workers(cid)


def _v1_campaign(url: str) -> tuple[int, int]:
    """A real schema-1 store (the frozen v1 layout) holding a campaign of 4 (subgraph, shape)
    groups of 3 configs, in the states a v1 queue left them: one group with a failed task, one
    claimed by a worker (no heartbeat: v1 had none), one done, one pending."""
    from datetime import datetime, timezone

    from sqlalchemy import insert

    from hwcost.store.opening import _make_engine
    from tests.hwcost.schema_v1 import V1

    t0 = datetime(2026, 1, 2, tzinfo=timezone.utc)
    eng = _make_engine(url)
    V1.metadata.create_all(eng)
    t = V1.metadata.tables
    states = [["failed", "done", "done"], ["claimed"] * 3, ["done"] * 3, ["pending"] * 3]
    with eng.begin() as c:
        c.execute(insert(t["meta"]), [{"key": "schema_version", "value": "1"}])
        c.execute(insert(t["device"]), [{"id": 1, "fingerprint": DEV.fingerprint, "kind": "cpu",
                                         "name": DEV.name, "flags": "[]", "software": "{}",
                                         "peaks": "{}", "source": "local", "created_at": t0}])
        c.execute(insert(t["subgraph"]), [{"id": i + 1, "signature": f"fleet{i:04d}",
                                           "kind": "Linear", "n_slots": 1, "slots": "[]",
                                           "extra": "{}", "created_at": t0} for i in range(4)])
        c.execute(insert(t["campaign"]), [{"id": 1, "name": "fleet", "device_id": 1,
                                           "shapes": "[]", "precisions": "[]",
                                           "created_at": t0}])
        c.execute(insert(t["campaign_task"]), [
            {"id": 3 * g + k + 1, "campaign_id": 1, "subgraph_id": g + 1, "shape": SHAPE,
             "config": CONFIGS[k], "state": st,
             "worker": None if st == "pending" else "b",
             "claimed_at": None if st == "pending" else t0,
             "error": "boom" if st == "failed" else None}
            for g, row in enumerate(states) for k, st in enumerate(row)])
        if c.dialect.name == "postgresql":  # ids were given: move the sequences on
            for n in ("device", "subgraph", "campaign", "campaign_task"):
                c.execute(text(f"SELECT setval(pg_get_serial_sequence('{n}', 'id'), "
                               f"(SELECT MAX(id) FROM {n}))"))
    eng.dispose()
    return 1, 12


def test_a_v1_campaign_gains_units_when_upgraded(store_url):
    cid, n = _v1_campaign(store_url)
    with open_store(store_url) as s:
        assert s.schema_version() >= 2
        p = s.campaign_progress(cid)
        assert (p.total, p.pending, p.claimed, p.failed, p.done) == (n, 6, 0, 1, 5)
        with s.session() as ss:
            states = [r[0] for r in ss.execute(text(
                "SELECT state FROM campaign_unit ORDER BY id")).all()]
        assert states == ["failed", "pending", "done", "pending"]
        assert sorted(len(u.tasks) for u in s.claim_units(cid, "d", 5)) == [3, 3]
