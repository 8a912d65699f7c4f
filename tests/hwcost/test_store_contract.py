"""The ``Store`` protocol's contract, run on every backend from one parametrised fixture
(``any_store_url``: an SQLite file, in-memory SQLite, PostgreSQL): round trips of each record
kind, natural-key lookups, idempotent writes, refusals of bad input with nothing written, the
queue's operations, and a reopen that finds everything again."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from hwcost.device import DeviceInfo
from hwcost.errors import (
    InvalidMeasurement,
    NoSensitivityTable,
    NoSuchDevice,
    NoSuchModel,
    SensitivityError,
    StoreError,
)
from hwcost.store import (
    CostRow,
    DeviceRef,
    Manifest,
    ManifestItem,
    MeasurementIn,
    ModelLatencyRecord,
    ModelRef,
    OtherClaims,
    SensitivityRow,
    SensitivityTable,
    SlotInfo,
    SqlStore,
    Store,
    SubgraphInfo,
    ValidationRecord,
    open_store,
)
from hwcost.store.schema import SCHEMA_VERSION, Plan

CPU = DeviceInfo("cpu", "Contract CPU", 4, ("avx2",), {"torch": "0"})
GPU = DeviceInfo("cuda", "Contract GPU", None, (), {"torch": "0"})
MLP = SubgraphInfo("sig-mlp", "LlamaMLP", (SlotInfo("Linear", 8, 16), SlotInfo("Linear", 16, 8)),
                   {"act": "silu"})
ATT = SubgraphInfo("sig-att", "Attention", (SlotInfo("Linear", 8, 24, bias=True),))
ITEMS = [ManifestItem(0, ATT.signature, ("l0.qkv",)), ManifestItem(1, MLP.signature, ("l0.up", "l0.down")),
         ManifestItem(2, ATT.signature, ("l1.qkv",)), ManifestItem(3, MLP.signature, ("l1.up", "l1.down"))]
SHAPE = "batch=1,seq=16,phase=prefill"


@pytest.fixture
def store(any_store_url):
    s = open_store(any_store_url)
    yield s
    s.close()


def _model(store: Store) -> ModelRef:
    store.put_model("fp-model", "contract-model", [ATT, MLP], ITEMS)
    return store.model("contract-model")


def _timing(dev: DeviceRef, sub: SubgraphInfo, cfg: str, us: float, **kw) -> MeasurementIn:
    return MeasurementIn(dev.fingerprint, sub.signature, SHAPE, cfg, us, us / 50, 9, **kw)


def test_the_sql_store_meets_the_protocol_and_its_schema_is_current(store):
    assert isinstance(store, Store) and isinstance(store, SqlStore)
    assert store.schema_version() == SCHEMA_VERSION


def test_devices_round_trip_and_resolve_by_natural_key(store):
    ref = store.put_device(CPU, peaks={"fp32_tflops": 1.5})
    assert ref == DeviceRef(CPU.fingerprint, "Contract CPU", "cpu", 4, "local")
    assert ref.peaks == {"fp32_tflops": 1.5}
    assert store.put_device(CPU) == ref  # idempotent by fingerprint
    assert store.device(CPU.fingerprint[:6]) == ref == store.device("Contract CPU")
    assert store.device(ref) == ref
    store.set_device_peaks(CPU.fingerprint, {"mem_gbps": 20.0})
    assert store.device(ref).peaks == {"fp32_tflops": 1.5, "mem_gbps": 20.0}
    store.put_device(GPU)
    with pytest.raises(NoSuchDevice, match="no device 'nope' in the store"):
        store.device("nope")
    with pytest.raises(NoSuchDevice, match="matches several devices"):
        store.device("")
    with pytest.raises(InvalidMeasurement, match="threads"):
        store.put_device(DeviceInfo("cpu", "Zero", 0))


def test_devices_are_listed_as_refs_with_their_stack_and_catalog_devices_recorded_once(store):
    from hwcost.catalog import load_catalog

    ref = store.put_device(CPU)
    assert (ref.flags, ref.software) == (tuple(sorted(CPU.flags)), CPU.software)
    h100 = load_catalog()["H100-SXM"]
    cat = store.put_catalog_device(h100)
    assert store.put_catalog_device(h100) == cat  # idempotent by the catalog fingerprint
    assert (cat.fingerprint, cat.kind, cat.source, cat.threads) == (h100.fingerprint, "cuda",
                                                                    "catalog", None)
    assert cat.software == {"catalog": h100.product} and cat.peaks == h100.peaks.to_json()
    assert store.devices() == [ref, cat]  # records, in the order they were recorded
    assert all(isinstance(d, DeviceRef) for d in store.devices())


def test_models_manifests_and_subgraphs_round_trip(store):
    model = _model(store)
    assert model == ModelRef("fp-model", "contract-model", 4, 6)
    assert store.put_model("fp-model", "contract-model", [ATT, MLP], ITEMS) is not None
    assert store.model("fp-mo") == model == store.model(model)
    man = store.model_manifest(model)
    assert isinstance(man, Manifest) and man.model == model and len(man) == 4
    assert [item for item, _ in man] == ITEMS
    assert [sub for _, sub in man] == [ATT, MLP, ATT, MLP]
    assert man.layer_names == ["l0.qkv", "l0.up", "l0.down", "l1.qkv", "l1.up", "l1.down"]
    assert store.subgraph(MLP.signature) == MLP
    with pytest.raises(StoreError, match="no subgraph"):
        store.subgraph("sig-none")
    with pytest.raises(NoSuchModel, match="no model 'other'"):
        store.model("other")
    with pytest.raises(StoreError, match="manifest names subgraphs not given"):
        store.put_model("fp-bad", "bad", [MLP], [ManifestItem(0, "sig-none", ("x",))])
    with pytest.raises(NoSuchModel):
        store.model("bad")  # nothing of the refused model was stored


def test_checkpoints_are_idempotent_and_need_a_digest(store):
    model = _model(store)
    first = store.put_checkpoint(model, "d" * 32, "base", "test")
    assert store.put_checkpoint(model, "d" * 32, "base", "test") == first
    assert [c.digest for c in store.checkpoints(model)] == ["d" * 32]
    with pytest.raises(StoreError, match="needs its weights digest"):
        store.put_checkpoint(model, "")


def test_measurements_round_trip_by_natural_key_and_stay_idempotent(store):
    dev, model = store.put_device(CPU), _model(store)
    rows = [_timing(dev, MLP, "fp32,fp32", 100.0), _timing(dev, MLP, "int8,int8", 60.0),
            _timing(dev, ATT, "fp32", 40.0)]
    assert store.add_measurements(rows) == 3
    assert store.add_measurements(rows) == 0  # a good stored row is kept
    assert store.measurement_count() == 3
    costs = store.model_costs(model, dev, SHAPE)
    assert [(c.position, c.config, c.median_us) for c in costs] == [
        (0, "fp32", 40.0), (1, "fp32,fp32", 100.0), (1, "int8,int8", 60.0),
        (2, "fp32", 40.0), (3, "fp32,fp32", 100.0), (3, "int8,int8", 60.0)]
    assert all(isinstance(c, CostRow) and c.good for c in costs)
    assert store.model_costs("contract-model", CPU.fingerprint[:8], SHAPE) == costs
    assert store.measured_configs(dev, SHAPE, [MLP.signature, ATT.signature]) == {
        MLP.signature: {"fp32,fp32", "int8,int8"}, ATT.signature: {"fp32"}}
    assert sorted((s.signature, c, m) for s, _, c, m, _ in store.device_measurements(dev)) == [
        (ATT.signature, "fp32", 40.0), (MLP.signature, "fp32,fp32", 100.0),
        (MLP.signature, "int8,int8", 60.0)]
    assert store.add_measurements([_timing(dev, ATT, "fp32", 41.0)], replace=True) == 1
    assert store.model_costs(model, dev, SHAPE)[0].median_us == 41.0


def test_a_quick_timing_is_kept_out_of_plans_and_replaced_by_a_full_one(store):
    dev, model = store.put_device(CPU), _model(store)
    store.add_measurements([_timing(dev, ATT, "fp32", 50.0, quick=True)])
    assert store.model_costs(model, dev, SHAPE) == []
    [row] = {c.config: c for c in store.model_costs(model, dev, SHAPE, allow_unstable=True)
             }.values()
    assert not row.good
    assert store.add_measurements([_timing(dev, ATT, "fp32", 45.0)]) == 1
    assert {c.median_us for c in store.model_costs(model, dev, SHAPE)} == {45.0}


@pytest.mark.parametrize("bad, match", [
    (dict(median_us=math.nan), "median_us=nan"),
    (dict(median_us=0.0), "a run cannot be free"),
    (dict(spread_us=-1.0), "spread_us=-1.0"),
    (dict(n_samples=0), "n_samples=0"),
    (dict(config="fp99"), "fp99"),
])
def test_bad_measurements_are_refused_with_nothing_written(store, bad, match):
    dev = store.put_device(CPU)
    _model(store)
    good = _timing(dev, ATT, "fp32", 40.0)
    fields = {**good.__dict__, **bad}
    with pytest.raises(Exception, match=match):
        store.add_measurements([good, MeasurementIn(**fields)])
    assert store.measurement_count() == 0


def test_measurements_of_unknown_devices_or_subgraphs_are_refused(store):
    dev = store.put_device(CPU)
    _model(store)
    with pytest.raises(NoSuchDevice, match="is not in the store"):
        store.add_measurements([MeasurementIn("f" * 16, ATT.signature, SHAPE, "fp32", 1.0, 0.1, 3)])
    with pytest.raises(StoreError, match="subgraph sig-none is not in the store"):
        store.add_measurements([MeasurementIn(dev.fingerprint, "sig-none", SHAPE, "fp32", 1.0, 0.1, 3)])
    assert store.measurement_count() == 0


def test_whole_model_latencies_and_learned_fits_round_trip(store):
    dev, model = store.put_device(CPU), _model(store)
    timing = ModelLatencyRecord(model.fingerprint, dev.fingerprint, SHAPE, "all:fp32", 500.0, 5.0,
                                9, host="h1", clock="thread", threads=2, load1=0.5)
    assert store.model_latency(model, dev, SHAPE, "all:fp32") is None
    assert store.put_model_latency(model, dev, SHAPE, "all:fp32", timing)
    back = store.model_latency("contract-model", CPU.fingerprint[:10], SHAPE, "all:fp32")
    assert back.measured_at is not None and back.tool_version
    assert replace(back, measured_at=None, tool_version="") == timing and back.good
    # a good row is kept unless replaced; a quick one is not good, and a later one replaces it
    assert not store.put_model_latency(model, dev, SHAPE, "all:fp32", replace(timing, median_us=9.0))
    assert store.put_model_latency(model, dev, SHAPE, "all:bf16", timing, quick=True)
    assert store.model_latency(model, dev, SHAPE, "all:bf16") is None
    assert store.model_latency(model, dev, SHAPE, "all:bf16", allow_unstable=True).quick
    assert store.put_model_latency(model, dev, SHAPE, "all:bf16", replace(timing, median_us=7.0))
    assert store.model_latency(model, dev, SHAPE, "all:bf16").median_us == 7.0
    assert store.model_latency(model, dev, SHAPE, "all:int8") is None
    for bad in (replace(timing, median_us=math.inf), replace(timing, n_samples=0)):
        with pytest.raises(InvalidMeasurement):
            store.put_model_latency(model, dev, SHAPE, "all:int4", bad)
    assert store.model_latency(model, dev, SHAPE, "all:int4", allow_unstable=True) is None
    with pytest.raises(NoSuchDevice):
        store.model_latency(model, "no-such-device", SHAPE, "all:fp32")

    store.put_learned_fit(dev, "s1", json.dumps({"n_train": 3}))
    store.put_learned_fit(dev, "s2", json.dumps({"n_train": 4}))
    assert store.learned_fit(dev, "s1") is None  # an older state's fit is dropped
    assert json.loads(store.learned_fit(dev, "s2")) == {"n_train": 4}



def test_a_sensitivity_table_is_read_one_way(store):
    model = _model(store)
    layers = store.model_manifest(model).layer_names
    with pytest.raises(NoSensitivityTable, match=(
            r"^no taylor sensitivity table for model 'contract-model'; run "
            r"`hwcost sensitivity contract-model --calib DATA` first$")):
        store.sensitivity_table(model)
    rows = [SensitivityRow(layer, "int8", 1e-4 * (i + 1), 1e-5, 8) for i, layer in enumerate(layers)]
    first = SensitivityTable(rows, "taylor", "cal", "c" * 32, "q1")
    assert store.put_sensitivity_table(model, first) == 6
    store.put_sensitivity_table(model, SensitivityTable(rows[:2], "taylor", "cal2", "d" * 32, "q1"))
    assert store.sensitivity_keys(model) == [("d" * 32, "q1", "cal2"), ("c" * 32, "q1", "cal")]
    # natural keys, a digest prefix, the model's name: the stored record comes back whole
    back = store.sensitivity_table("contract-model", checkpoint="ccc")
    assert back == first and back.model == model and isinstance(back.rows, tuple)
    assert store.sensitivity_table(model).checkpoint == "d" * 32  # the latest table
    assert len(store.sensitivity_table(model, calib_fingerprint="cal").rows) == 6
    # what is asked and missing is named, with the one command that computes it
    with pytest.raises(NoSensitivityTable, match=(
            r"^no noise sensitivity table of checkpoint cccccccccccc, quantizer q2 for model "
            r"'contract-model'; run `hwcost sensitivity contract-model --calib DATA` first$")):
        store.sensitivity_table(model, "noise", checkpoint="c" * 32, quantizer="q2")
    store.put_sensitivity_table(model, SensitivityTable(rows[:1], "taylor", "cal", "c" * 31 + "e",
                                                        "q1"))
    with pytest.raises(SensitivityError, match="'ccc' matches several checkpoints"):
        store.sensitivity_table(model, checkpoint="ccc")
    # bad rows or keys: refused, nothing written
    bad = SensitivityTable([*rows[:1], SensitivityRow(layers[1], "int8", math.nan, 0.0, 8)],
                           "taylor", "cal3", "c" * 32, "q1")
    with pytest.raises(InvalidMeasurement, match="sensitivity loss_mse=nan"):
        store.put_sensitivity_table(model, bad)
    with pytest.raises(SensitivityError, match="needs its calibration fingerprint"):
        store.put_sensitivity_table(model, SensitivityTable(rows, "taylor", "", "c" * 32, "q1"))
    with pytest.raises(NoSensitivityTable):
        store.sensitivity_table(model, calib_fingerprint="cal3")


def test_plans_and_validations_round_trip(store):
    dev, model = store.put_device(CPU), _model(store)
    mid, did = store.get_model(model).id, store.get_device(dev).id
    body = json.dumps({"type": "plan", "data": {"layers": {"l0.up": "int8"}}}, sort_keys=True)
    pid = store.add_plan(Plan(model_id=mid, device_id=did, shape=SHAPE, objective="time",
                              checkpoint="c" * 32, quantizer="q1", predicted_speedup=1.2,
                              body=body))
    assert store.get_plan(pid).body == body
    assert [p.id for p in store.plans_for(model, dev, SHAPE)] == [pid]
    assert store.plans_for(model, dev, SHAPE, checkpoint="other") == []
    with pytest.raises(StoreError, match=f"no plan {pid + 1} in the store"):
        store.get_plan(pid + 1)
    v = ValidationRecord(pid, dev.fingerprint, 100.0, 80.0, 1.25, checkpoint="c" * 32,
                         measured_loss_mse=2e-4, n_eval_samples=16, host="h1", quick=True)
    assert store.validations(pid) == []
    vid = store.put_validation(v)
    store.put_validation(replace(v, checkpoint="e" * 32, stable=False))
    [back] = store.validations(pid, checkpoint="c" * 32)
    assert back.id == vid and back.created_at is not None
    assert replace(back, id=None, created_at=None) == v
    assert [w.checkpoint for w in store.validations(pid)] == ["c" * 32, "e" * 32]  # oldest first
    # a plan or device not stored, or a latency that is no latency: refused, nothing written
    with pytest.raises(StoreError, match=f"no plan {pid + 1} in the store"):
        store.put_validation(replace(v, plan_id=pid + 1))
    with pytest.raises(NoSuchDevice):
        store.put_validation(replace(v, device="f" * 16))
    with pytest.raises(InvalidMeasurement, match="plan_us=nan"):
        store.put_validation(replace(v, plan_us=math.nan))
    assert len(store.validations(pid)) == 2


def test_the_queue_hands_out_each_unit_once_and_writes_it_whole(store):
    dev = store.put_device(CPU)
    _model(store)
    cid = store.ensure_campaign("c", device=dev.fingerprint, model=store.model("contract-model"),
                                shapes=[SHAPE], precisions=["fp32", "int8"])
    assert store.ensure_campaign("c", device=dev.fingerprint, model=None) == cid
    assert store.campaign_id("c") == cid
    tasks = [(ATT.signature, SHAPE, "fp32"), (ATT.signature, SHAPE, "int8"),
             (MLP.signature, SHAPE, "fp32,fp32")]
    assert store.add_tasks(cid, tasks) == 3 and store.add_tasks(cid, tasks) == 0
    first = store.claim_units(cid, "w1", 1)
    second = store.claim_units(cid, "w2", 5)
    assert [u.signature for u in first + second] == [ATT.signature, MLP.signature]
    assert store.claim_units(cid, "w3", 5) == []
    [unit] = first
    ms = [MeasurementIn(dev.fingerprint, t.signature, t.shape, t.config, 10.0, 0.1, 5)
          for t in unit.tasks]
    assert not store.complete_unit(unit, "w2", ms)  # not its unit: nothing written
    assert store.measurement_count() == 0
    assert store.complete_unit(unit, "w1", ms)
    assert store.measurement_count() == 2
    assert store.heartbeat(cid, "w2") == 1
    assert store.other_claims(cid, "w1", suspect_after_s=60) == OtherClaims({"w2": 1}, {})
    assert store.other_claims(cid, "w2", suspect_after_s=60) == OtherClaims({}, {})
    assert sorted(store.task_workers(cid).values()) == ["w1", "w1", "w2"]
    assert store.release_worker(cid, "w2") == 1
    assert store.campaign_progress(cid).to_dict() == {
        "pending": 1, "claimed": 0, "done": 2, "failed": 0, "cancelled": 0, "total": 3}
    [status] = store.campaign_statuses("c")
    assert (status.name, status.device, status.shapes) == ("c", dev.fingerprint, [SHAPE])
    assert status.progress == store.campaign_progress(cid) and not status.complete
    assert (status.workers["w1"].done, status.workers["w1"].holding) == (2, 0)
    assert store.campaign_statuses("d") == [] and store.campaign_statuses() == [status]
    assert store.cancel_campaign(cid) == 1 and store.retry_campaign(cid) == 1
    with pytest.raises(StoreError, match="tasks name subgraphs not in the store"):
        store.add_tasks(cid, [("sig-none", SHAPE, "fp32")])
    with pytest.raises(StoreError, match="no campaign 'd'"):
        store.campaign_id("d")


def test_a_reopened_store_holds_what_was_written(any_store_url):
    if any_store_url == "sqlite://":
        pytest.skip("an in-memory store ends with its connection")
    with open_store(any_store_url) as s:
        dev, model = s.put_device(CPU), _model(s)
        s.add_measurements([_timing(dev, MLP, "fp32,fp32", 100.0)])
        before = (s.model_manifest(model), s.model_costs(model, dev, SHAPE))
    with open_store(any_store_url) as s:
        assert s.device(CPU.fingerprint) == dev and s.model(model) == model
        assert (s.model_manifest(model), s.model_costs(model, dev, SHAPE)) == before
        assert s.schema_version() == SCHEMA_VERSION
