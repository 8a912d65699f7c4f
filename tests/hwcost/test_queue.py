"""Campaign work queue: idempotent tasks grouped in (subgraph, shape) units, exclusive unit
claims in one statement, heartbeats and stale recovery, one transaction per unit, retry and
cancel, per-worker status."""

from __future__ import annotations

import json
import threading
import time

import pytest

from hwcost.device import DeviceInfo
from hwcost.errors import StoreError
from hwcost.store import MeasurementIn, SlotInfo, SubgraphInfo, Task, open_store

DEV = DeviceInfo("cpu", "Test CPU", 2, ("avx2",), {"torch": "0"})
SIGS = [f"sig{i:02d}" for i in range(6)]
SHAPES = ["batch=1,seq=8,phase=prefill", "batch=1,seq=16,phase=prefill"]
CONFIGS = ["fp32", "bf16", "int8"]


def _setup(store) -> int:
    store.put_device(DEV)
    store.upsert_subgraphs([SubgraphInfo(s, "Linear", (SlotInfo("Linear", 4, 4),)) for s in SIGS])
    cid = store.ensure_campaign("c1", device=DEV.fingerprint, model=None,
                                shapes=SHAPES[:1], precisions=CONFIGS)
    return cid


def _all_tasks():
    return [(s, sh, c) for s in SIGS for sh in SHAPES for c in CONFIGS]


def _m(task: Task, us: float = 10.0) -> MeasurementIn:
    return MeasurementIn(DEV.fingerprint, task.signature, task.shape, task.config, us, 1.0, 5)


def test_campaigns_and_tasks_are_idempotent(store):
    cid = _setup(store)
    assert store.ensure_campaign("c1", device=DEV.fingerprint, model=None,
                                 shapes=SHAPES) == cid
    assert store.campaign_id("c1") == cid
    assert store.add_tasks(cid, _all_tasks()) == 36
    assert store.add_tasks(cid, _all_tasks()) == 0
    assert store.campaign_progress(cid).to_dict() == {
        "pending": 36, "claimed": 0, "done": 0, "failed": 0, "cancelled": 0, "total": 36}
    other = DeviceInfo("cpu", "Other CPU", 2)
    store.put_device(other)
    with pytest.raises(StoreError, match="campaign 'c1' exists for another model or device"):
        store.ensure_campaign("c1", device=other.fingerprint, model=None)
    with pytest.raises(StoreError, match="no campaign 'nope' in the store"):
        store.campaign_id("nope")


def test_a_claim_is_a_whole_unit_written_in_one_transaction(store):
    cid = _setup(store)
    store.add_tasks(cid, _all_tasks())
    a = store.claim_units(cid, "w1")
    b = store.claim_units(cid, "w2", 2)
    assert [len(u.tasks) for u in a + b] == [3, 3, 3]  # every config of a (subgraph, shape)
    assert (a[0].signature, a[0].shape) == (SIGS[0], SHAPES[0])
    assert [t.config for t in a[0].tasks] == CONFIGS  # baseline first, with its candidates
    assert not set(a[0].all_ids) & {i for u in b for i in u.all_ids}
    assert store.complete_unit(a[0], "w1", [_m(t) for t in a[0].tasks])
    assert not store.complete_unit(b[0], "w1", [_m(t) for t in b[0].tasks])  # not w1's
    assert store.measurement_count() == 3  # the refused completion wrote nothing
    fails = {b[1].tasks[0].id: "kernel missing\nsecond line"}
    assert store.complete_unit(b[1], "w2", [_m(t) for t in b[1].tasks[1:]], fails)
    p = store.campaign_progress(cid)
    assert (p.pending, p.claimed, p.done, p.failed) == (27, 3, 5, 1)
    st = store.campaign_statuses("c1")[0]
    assert {w: (s.done, s.failed, s.holding) for w, s in st.workers.items()} == {
        "w1": (3, 0, 0), "w2": (2, 1, 1)}
    assert store.retry_campaign(cid) == 1
    again = store.claim_units(cid, "w3", 20)
    assert b[1].id in [u.id for u in again]  # the failed task's unit is open again
    assert [t.config for u in again if u.id == b[1].id for t in u.tasks] == ["fp32"]
    assert [t.config for u in again if u.id == b[1].id for t in u.measured] == []


def test_stale_heartbeats_are_reclaimed_live_ones_are_not(store):
    cid = _setup(store)
    store.add_tasks(cid, _all_tasks()[:6])  # two units
    dead = store.claim_units(cid, "dead")
    live = store.claim_units(cid, "live")
    assert store.claim_units(cid, "w3", 5, stale_after_s=60) == []  # both beat recently
    time.sleep(0.3)
    assert store.heartbeat(cid, "live") == 1
    others = store.other_claims(cid, "w3", suspect_after_s=0.2)
    assert (others.live, others.suspect) == ({"live": 1}, {"dead": 1})
    taken = store.claim_units(cid, "w3", 5, stale_after_s=0.2)
    assert [u.id for u in taken] == [dead[0].id]
    assert not store.complete_unit(dead[0], "dead", [_m(t) for t in dead[0].tasks])
    assert store.complete_unit(taken[0], "w3", [_m(t) for t in taken[0].tasks])
    assert store.release_worker(cid, "live") == 3
    assert [u.id for u in store.claim_units(cid, "w4")] == [live[0].id]


def test_a_measured_task_is_closed_not_measured_again(store):
    cid = _setup(store)
    store.add_tasks(cid, _all_tasks()[:3])
    sig, shape, cfg = _all_tasks()[0]
    store.add_measurements([MeasurementIn(DEV.fingerprint, sig, shape, cfg, 10.0, 1.0, 5)])
    (unit,) = store.claim_units(cid, "w", 10)
    assert [t.config for t in unit.tasks] == ["bf16", "int8"]
    assert [t.config for t in unit.measured] == ["fp32"]
    assert store.complete_unit(unit, "w", [_m(t) for t in unit.tasks])
    assert store.campaign_progress(cid).done == 3


def test_cancel_stops_claims_and_retry_resumes(store):
    cid = _setup(store)
    store.add_tasks(cid, _all_tasks())
    held = store.claim_units(cid, "w")
    assert store.cancel_campaign(cid) == 33
    assert store.claim_units(cid, "w2", 5) == []
    assert store.complete_unit(held[0], "w", [_m(t) for t in held[0].tasks])
    st = store.campaign_statuses("c1")[0]
    assert (st.state, st.progress.cancelled, st.progress.done) == ("cancelled", 33, 3)
    assert store.retry_campaign(cid) == 33
    assert len(store.claim_units(cid, "w2", 20)) == 11


def test_new_tasks_reopen_a_closed_unit(store):
    cid = _setup(store)
    store.add_tasks(cid, _all_tasks()[:2])
    (u,) = store.claim_units(cid, "w")
    assert store.complete_unit(u, "w", [_m(t) for t in u.tasks])
    assert store.claim_units(cid, "w") == []
    assert store.add_tasks(cid, _all_tasks()[:3]) == 1
    (again,) = store.claim_units(cid, "w")
    assert (again.id, [t.config for t in again.tasks]) == (u.id, ["int8"])


def test_concurrent_threads_never_share_a_unit(store_url):
    with open_store(store_url) as s:
        cid = _setup(s)
        s.add_tasks(cid, _all_tasks())
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            with open_store(store_url) as s:
                mine = got.setdefault(name, [])
                while units := s.claim_units(cid, name, 2):
                    for u in units:
                        mine.extend(u.all_ids)
                        assert s.complete_unit(u, name, [_m(t) for t in u.tasks])
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ids = [i for v in got.values() for i in v]
    assert len(ids) == len(set(ids)) == 36
    with open_store(store_url) as s:
        assert s.campaign_progress(cid).done == 36
        assert s.measurement_count() == 36
        assert set(s.task_workers(cid).values()) <= set(got)


def test_campaign_cli_status_retry_cancel(sqlite_url):
    from click.testing import CliRunner

    from hwcost.app.main import cli

    with open_store(sqlite_url) as s:
        cid = _setup(s)
        s.add_tasks(cid, _all_tasks())
        (u,) = s.claim_units(cid, "w1")
        s.complete_unit(u, "w1", [_m(t) for t in u.tasks[1:]], {u.tasks[0].id: "boom"})
        s.claim_units(cid, "w2")
    run = CliRunner().invoke
    out = run(cli, ["campaign", "status", "c1", "--db", sqlite_url]).output.splitlines()
    assert out[0] == "campaign  c1 (open)"
    assert out[3] == "tasks     2/36 done (6%), 30 pending, 3 claimed, 1 failed"
    assert out[4].split() == ["worker", "done", "failed", "tasks_per_s", "holding", "last_heartbeat"]
    assert out[6].split()[:3] == ["w1", "2", "1"] and out[7].split()[:5] == ["w2", "0", "0", "-", "1"]
    res = run(cli, ["campaign", "retry", "c1", "--db", sqlite_url])
    assert (res.exit_code, res.output) == (0, "campaign c1: 1 task back to pending\n")
    res = run(cli, ["campaign", "cancel", "c1", "--db", sqlite_url])
    assert (res.exit_code, res.output) == (0, "campaign c1: 31 pending tasks cancelled\n")
    res = run(cli, ["campaign", "retry", "nope", "--db", sqlite_url])
    assert (res.exit_code, res.output) == (
        1, "Error: no campaign 'nope' in the store; `hwcost campaign ls` lists them\n")
    d = json.loads(run(cli, ["campaign", "status", "c1", "--db", sqlite_url, "--json"]).output)
    assert (d["state"], d["cancelled"], d["worker_stats"]["w2"]["holding"]) == ("open", 31, 1)
