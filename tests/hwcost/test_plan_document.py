"""A plan's document is a frozen, typed record (:class:`hwcost.store.PlanDocument`) whose JSON
is byte for byte what the code before it stored and exported: documents stored by that code
(``plan_documents_v1.json``: three plans of the planner fixture, made and saved by the dict
code) read back and are written again unchanged, the planner builds the same bytes, any
version-1 document round-trips, and a malformed one is one ``PlanInvalid`` line."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwcost.errors import PlanInvalid
from hwcost.store import PlanDocument, PlanRecord
from tests.planner.conftest import populate

OLD = json.loads((Path(__file__).parent / "plan_documents_v1.json").read_text())


def _dumps(doc: PlanDocument) -> str:
    return json.dumps(doc.to_json(), sort_keys=True)


@pytest.mark.parametrize("name", sorted(OLD))
def test_documents_stored_by_the_previous_code_read_back_byte_for_byte(name):
    body, exported = OLD[name]["stored_body"], OLD[name]["exported"]
    doc = PlanDocument.from_json(json.loads(body))
    assert _dumps(doc) == body
    assert json.dumps(PlanDocument.from_json(json.loads(exported)).to_json(), indent=2,
                      sort_keys=True) == exported
    # read by attribute, typed
    assert doc.device.kind == "cpu" and doc.baseline == "fp32" and doc.plan_id is None
    assert isinstance(doc.predicted.speedup, float) and doc.solver.status == "optimal"
    assert dict(doc.layers) == json.loads(body)["data"]["layers"]
    assert [s.layers for s in doc.subgraphs] == [tuple(s["layers"]) for s in
                                                 json.loads(body)["data"]["subgraphs"]]


def test_a_stored_document_goes_through_the_store_unchanged(store):
    populate(store)  # the fixture the old documents were planned on: same fingerprints
    for name in sorted(OLD):
        body = OLD[name]["stored_body"]
        pid = store.put_plan(PlanRecord.of_document(PlanDocument.from_json(json.loads(body))))
        stored = store.plan(pid)
        assert _dumps(stored.document) == body
        assert stored.predicted_speedup == json.loads(body)["data"]["predicted"]["speedup"]


def test_the_planner_builds_the_bytes_the_dict_code_built(sqlite_url):
    from hwcost.planner.objectives import Constraints, parse_threshold
    from hwcost.planner.plans import make_plan

    from hwcost.store import open_store

    with open_store(sqlite_url) as store:
        m = populate(store)
        made = {
            "time_pinned": make_plan(store, m.name, m.device, m.shape, parse_threshold("10%"),
                                     constraints=Constraints(pins=(("lm_head", "fp32"),))),
            "memory": make_plan(store, m.name, m.device, m.shape, parse_threshold("0.5"), "memory"),
            "unbounded_scaled": make_plan(store, m.name, m.device, m.shape, None, loss_scale=1.7),
        }
    for name, result in made.items():
        old = json.loads(OLD[name]["stored_body"])
        new = result.document.to_json()
        new["data"]["solver"]["wall_s"] = old["data"]["solver"]["wall_s"]  # the solver's clock
        assert json.dumps(new, sort_keys=True) == OLD[name]["stored_body"], name


_num = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False))
_opt_num = st.one_of(st.none(), _num)
_text = st.text(max_size=8)


def _some(keys: dict) -> st.SearchStrategy[dict]:
    """Objects with any subset of these keys (older and hand-written plans lack some)."""
    return st.fixed_dictionaries({}, optional=keys)


_PREDICTED = _some({k: _opt_num for k in (
    "baseline_us", "plan_us", "speedup", "gain_us", "loss_mse", "weight_bytes", "measured_share",
    "speedup_rel_error", "p_not_fastest", "latency_stderr_us", "gain_shrink_sigmas",
    "loss_scale")} | {"baseline_from": st.one_of(st.none(), _text),
                      "rivals": st.one_of(st.none(), st.integers(0, 99)),
                      "from_a_newer_minor": st.lists(st.integers(), max_size=2)})
_SUBGRAPH = _some({"position": st.integers(0, 99), "signature": _text, "kind": _text,
                   "layers": st.lists(_text, max_size=3), "config": st.lists(_text, max_size=3),
                   "gain_us": _num, "loss_mse": _num, "layer_loss_mse": st.lists(_num, max_size=3),
                   "source": _text})
_LAYERS = st.dictionaries(st.text(min_size=1, max_size=10),
                          st.sampled_from(["fp32", "bf16", "int8", "fp8_e4m3"]), min_size=1,
                          max_size=6)
_DATA = st.fixed_dictionaries(
    {"model": st.fixed_dictionaries({"name": _text, "fingerprint": _text},
                                    optional={"checkpoint": st.one_of(st.none(), _text)}),
     "device": st.fixed_dictionaries({"fingerprint": _text, "kind": _text},
                                     optional={"name": _text}),
     "shape": _text, "objective": st.sampled_from(["time", "memory"]),
     "baseline": st.sampled_from(["fp32", "bf16"]), "layers": _LAYERS, "predicted": _PREDICTED},
    optional={"quantizer": st.one_of(st.none(), _text), "precisions": st.lists(_text, max_size=3),
              "max_loss_mse": _opt_num, "threshold": st.one_of(st.none(), _text),
              "constraints": _some({"max_loss_mse": _opt_num, "max_weight_bytes": _opt_num,
                                    "pins": st.lists(st.lists(_text, min_size=2, max_size=2),
                                                     max_size=2),
                                    "groups": st.lists(st.lists(_text, max_size=3), max_size=2)}),
              "subgraphs": st.lists(_SUBGRAPH, max_size=3),
              "solver": _some({"status": _text, "gap": _opt_num, "wall_s": _num}),
              "sensitivity": _some({k: _text for k in ("method", "calib_fingerprint",
                                                       "checkpoint", "quantizer")}),
              "notes": st.lists(_text, max_size=2), "threshold_abs": _num,
              "plan_id": st.integers(1, 10**6), "unknown_to_this_version": _text})


@settings(max_examples=150, deadline=None)
@given(_DATA)
def test_any_version_1_document_round_trips_byte_for_byte(data):
    doc = {"type": "hwcost.plan", "version": 1, "data": data}
    text = json.dumps(doc, sort_keys=True)
    record = PlanDocument.from_json(json.loads(text))
    assert _dumps(record) == text
    assert PlanDocument.from_json(record.to_json()) == record
    assert record.with_plan_id(7).to_json()["data"]["plan_id"] == 7


def _bad(mutate) -> str:
    doc = json.loads(OLD["time_pinned"]["stored_body"])
    mutate(doc)
    with pytest.raises(PlanInvalid) as e:
        PlanDocument.from_json(doc)
    return str(e.value)


def test_a_malformed_document_is_one_plan_invalid_line_not_a_key_error():
    assert _bad(lambda d: d["data"]["model"].pop("fingerprint")) == \
        "plan field 'model.fingerprint' is missing or not a str"
    assert _bad(lambda d: d["data"]["predicted"].update(speedup="1.2x")) == \
        "plan field 'predicted.speedup' is missing or not a number or null"
    assert _bad(lambda d: d["data"]["subgraphs"][1].update(layers="q_proj")) == \
        "plan field 'subgraphs[1].layers' is missing or not a list of str"
    assert _bad(lambda d: d["data"]["subgraphs"][1].update(position=True)) == \
        "plan field 'subgraphs[1].position' is missing or not a whole number or null"
    assert _bad(lambda d: d["data"].update(subgraphs=[{}, 3])) == \
        "plan field 'subgraphs' is missing or not a list of dicts"
    assert _bad(lambda d: d["data"].update(solver=[])) == \
        "plan field 'solver' is missing or not a dict or null"
    assert _bad(lambda d: d.update(version=2)) == \
        "plan version 2 is newer than this hwcost reads (1); upgrade hwcost"
    assert _bad(lambda d: d["data"].update(layers={})) == "plan assigns no layer"


def test_a_malformed_stored_document_is_one_error_naming_the_plan(store_url):
    from sqlalchemy import create_engine, text

    from hwcost.store import open_store

    body = json.loads(OLD["memory"]["stored_body"])
    good = PlanRecord.of_document(PlanDocument.from_json(body))
    with open_store(store_url) as store:
        populate(store)
        pid, bad = store.put_plan(good), store.put_plan(good)
    del body["data"]["device"]["kind"]
    engine = create_engine(store_url)  # a row written by something else than this hwcost
    with engine.begin() as c:
        c.execute(text("UPDATE plan SET body = :body WHERE id = :id"),
                  {"body": json.dumps(body), "id": bad})
    engine.dispose()
    with open_store(store_url) as store:
        with pytest.raises(PlanInvalid, match=rf"^stored plan {bad} cannot be read: plan field "
                                              r"'device.kind' is missing or not a str$"):
            store.plan(bad)
        assert store.plan(pid).document == good.document


def test_the_record_is_frozen():
    doc = PlanDocument.from_json(json.loads(OLD["unbounded_scaled"]["stored_body"]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        doc.shape = "batch=2"  # type: ignore[misc]
    with pytest.raises(TypeError):
        doc.layers["lm_head"] = "fp32"  # type: ignore[index]
    changed = doc.updated(threshold_abs=None)  # set: written, as null
    assert "threshold_abs" not in doc.to_json()["data"]
    assert changed.to_json()["data"]["threshold_abs"] is None
    assert copy.deepcopy(doc) == doc
