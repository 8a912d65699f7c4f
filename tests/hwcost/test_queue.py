"""Campaign task queue: idempotent tasks, exclusive claims, stale recovery, progress."""

from __future__ import annotations

import threading

import pytest

from hwcost import queue
from hwcost.device import DeviceInfo
from hwcost.errors import StoreError
from hwcost.store import MeasurementIn, SlotInfo, SubgraphInfo, open_store

DEV = DeviceInfo("cpu", "Test CPU", 2, ("avx2",), {"torch": "0"})
SIGS = [f"sig{i:02d}" for i in range(6)]
SHAPES = ["batch=1,seq=8,phase=prefill", "batch=1,seq=16,phase=prefill"]
CONFIGS = ["fp32", "bf16", "int8"]


def _setup(store) -> int:
    store.upsert_device(DEV.to_row())
    store.upsert_subgraphs([SubgraphInfo(s, "Linear", (SlotInfo("Linear", 4, 4),)) for s in SIGS])
    cid = queue.ensure_campaign(store, "c1", device=DEV.fingerprint, model_id=None,
                                shapes=SHAPES[:1], precisions=CONFIGS)
    return cid


def _all_tasks():
    return [(s, sh, c) for s in SIGS for sh in SHAPES for c in CONFIGS]


def test_campaigns_and_tasks_are_idempotent(store):
    cid = _setup(store)
    assert queue.ensure_campaign(store, "c1", device=DEV.fingerprint, model_id=None,
                                 shapes=SHAPES) == cid
    assert queue.campaign_id(store, "c1") == cid
    assert queue.add_tasks(store, cid, _all_tasks()) == 36
    assert queue.add_tasks(store, cid, _all_tasks()) == 0
    assert queue.progress(store, cid).to_dict() == {
        "pending": 36, "claimed": 0, "done": 0, "failed": 0, "total": 36}
    other = DeviceInfo("cpu", "Other CPU", 2)
    store.upsert_device(other.to_row())
    with pytest.raises(StoreError, match="campaign 'c1' exists for another model or device"):
        queue.ensure_campaign(store, "c1", device=other.fingerprint, model_id=None)
    with pytest.raises(StoreError, match="no campaign 'nope' in the store"):
        queue.campaign_id(store, "nope")


def test_claim_complete_fail_and_progress(store):
    cid = _setup(store)
    queue.add_tasks(store, cid, _all_tasks())
    a = queue.claim(store, cid, "w1", 4)
    b = queue.claim(store, cid, "w2", 4)
    assert len(a) == 4 and len(b) == 4
    assert not {t.id for t in a} & {t.id for t in b}
    assert [(t.signature, t.shape, t.config) for t in a] == _all_tasks()[:4]
    assert queue.complete(store, [t.id for t in a], "w1") == 4
    assert queue.complete(store, [t.id for t in b], "w1") == 0  # not w1's tasks
    assert queue.fail(store, [b[0].id], "w2", "kernel missing\nsecond line") == 1
    p = queue.progress(store, cid)
    assert (p.pending, p.claimed, p.done, p.failed) == (28, 3, 4, 1)
    assert queue.retry_failed(store, cid) == 1
    assert queue.progress(store, cid).pending == 29


def test_stale_and_released_claims_return_to_pending(store):
    cid = _setup(store)
    queue.add_tasks(store, cid, _all_tasks()[:5])
    first = queue.claim(store, cid, "dead", 3)
    # a live claim is not handed out again...
    assert {t.id for t in queue.claim(store, cid, "w2", 10)} == {t.id for t in _rest(store, cid, first)}
    # ...but a stale one is
    again = queue.claim(store, cid, "w3", 10, stale_after_s=0)
    assert {t.id for t in again} == {t.id for t in first} | {t.id for t in _rest(store, cid, first)}
    assert queue.release(store, cid, "w3") == 5
    assert queue.progress(store, cid).pending == 5


def _rest(store, cid, first):
    ids = {t.id for t in first}
    workers = queue.task_workers(store, cid)
    return [queue.Task(i, "", "", "") for i in workers if i not in ids]


def test_a_measured_task_is_closed_not_handed_out(store):
    cid = _setup(store)
    queue.add_tasks(store, cid, _all_tasks()[:3])
    sig, shape, cfg = _all_tasks()[0]
    store.add_measurements([MeasurementIn(DEV.fingerprint, sig, shape, cfg, 10.0, 1.0, 5)])
    got = queue.claim(store, cid, "w", 10)
    assert [(t.signature, t.config) for t in got] == [(sig, "bf16"), (sig, "int8")]
    assert queue.progress(store, cid).done == 1


def test_concurrent_workers_never_share_a_task(store_url):
    with open_store(store_url) as s:
        cid = _setup(s)
        queue.add_tasks(s, cid, _all_tasks())
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            with open_store(store_url) as s:
                mine = got.setdefault(name, [])
                while batch := queue.claim(s, cid, name, 2):
                    mine.extend(t.id for t in batch)
                    queue.complete(s, [t.id for t in batch], name)
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
        assert queue.progress(s, cid).done == 36
        assert set(queue.task_workers(s, cid).values()) <= set(got)
