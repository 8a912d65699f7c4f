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

from hwcost import fleet_worker, queue
from hwcost.device import DeviceInfo
from hwcost.store import MeasurementIn, SlotInfo, SubgraphInfo, open_store

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
        s.upsert_device(DEV.to_row())
        s.upsert_subgraphs([SubgraphInfo(g, "Linear", (SlotInfo("Linear", 4, 4),)) for g in sigs])
        cid = queue.ensure_campaign(s, "fleet", device=DEV.fingerprint, model_id=None)
        n = queue.add_tasks(s, cid, [(g, SHAPE, c) for g in sigs for c in CONFIGS])
    return cid, n


def _measure(worker: str, log, delay: float):
    def measure(unit: queue.Unit):
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
        assert queue.progress(s, cid).done == n
        assert s.measurement_count() == n
        assert queue.task_workers(s, cid) == {i: w for w, i in log}
    assert len({w for w, _ in log}) > 1


@pytest.mark.slow
def test_kill_half_the_workers_then_restart_every_task_measured_once(store_url, tmp_path):
    open_store(store_url).close()
    cid, n = _campaign(store_url, 90)
    names = [f"w{i}" for i in range(8)]
    procs = _start(store_url, cid, names, tmp_path, 0.05, 1.0)
    with open_store(store_url) as s:
        deadline = time.time() + 60
        while queue.progress(s, cid).done < n // 4 and time.time() < deadline:
            time.sleep(0.05)
        victims = names[::2]
        for v in victims:
            os.kill(procs[v].pid, signal.SIGKILL)
        for v in victims:
            procs[v].join()
        after_kill = queue.progress(s, cid)
    assert 0 < after_kill.done < n
    # restart the killed workers under their names; the survivors keep going meanwhile
    procs.update(_start(store_url, cid, victims, tmp_path, 0.05, 1.0))
    for p in procs.values():
        p.join(120)
    assert all(procs[w].exitcode == 0 for w in names)
    with open_store(store_url) as s:
        assert queue.progress(s, cid).to_dict() == {
            "pending": 0, "claimed": 0, "done": n, "failed": 0, "cancelled": 0, "total": n}
        assert s.measurement_count() == n  # every task's result stored exactly once
    stored = _stored(store_url, cid)
    assert len(stored) == n
    with open_store(store_url) as s:
        # the measurement kept is the one of the worker that closed the task
        assert stored == queue.task_workers(s, cid)


def test_a_v1_campaign_gains_units_when_upgraded(store_url):
    cid, n = _campaign(store_url, 4)
    with open_store(store_url) as s:
        (u,) = queue.claim(s, cid, "a")
        queue.complete_unit(s, u, "a", [], {u.tasks[0].id: "boom"})
        queue.claim(s, cid, "b")  # a v1 claim: released by the upgrade (it has no heartbeat)
        (done,) = queue.claim(s, cid, "c")
        queue.complete_unit(s, done, "c")
        with s.engine.begin() as c:  # back to the v1 layout
            c.execute(text("DROP TABLE campaign_unit"))
            c.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    with open_store(store_url) as s:
        assert s.schema_version() >= 2
        p = queue.progress(s, cid)
        assert (p.total, p.pending, p.claimed, p.failed, p.done) == (n, 6, 0, 1, 5)
        with s.session() as ss:
            states = [r[0] for r in ss.execute(text(
                "SELECT state FROM campaign_unit ORDER BY id")).all()]
        assert states == ["failed", "pending", "done", "pending"]
        assert sorted(len(u.tasks) for u in queue.claim(s, cid, "d", 5)) == [3, 3]
