"""Plan documents round-trip and are validated on read; the torchao export is what torchao
reads (INC: test_inc.py; the report: test_report.py)."""

from __future__ import annotations

import copy
import json

import pytest
from hwcost.planner.export import PLAN_TYPE, read_plan_document, to_torchao, validate_plan
from hypothesis import given, settings
from hypothesis import strategies as st

from hwcost.errors import PlanInvalid


def doc_for(layers: dict[str, str], baseline: str = "bf16") -> dict:
    return {"type": PLAN_TYPE, "version": 1, "data": {
        "model": {"name": "m", "fingerprint": "f"},
        "device": {"fingerprint": "d", "name": "Gaudi2", "kind": "hpu"},
        "shape": "batch=1,seq=128,phase=prefill", "objective": "time", "baseline": baseline,
        "layers": layers, "predicted": {"speedup": 1.2, "loss_mse": 0.01}}}


names = st.text(alphabet="abcdefghij._0123456789", min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(names, st.sampled_from(["fp32", "bf16", "fp8_e4m3", "int8"]), min_size=1,
                       max_size=12))
def test_plan_json_round_trip(tmp_path_factory, layers):
    doc = doc_for(layers)
    path = tmp_path_factory.mktemp("p") / "plan.json"
    path.write_text(json.dumps(doc))
    assert read_plan_document(path).to_json() == doc


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(type="other"), "not an hwcost plan: type is 'other', expected 'hwcost.plan'"),
    (lambda d: d.update(version=2), "plan version 2 is newer than this hwcost reads (1); upgrade hwcost"),
    (lambda d: d["data"].pop("layers"), "plan field 'layers' is missing or not a dict"),
    (lambda d: d["data"]["layers"].update(x="int4"), "plan layer x has unknown precision 'int4'"),
    (lambda d: d.pop("data"), "plan has no 'data' object"),
])
def test_invalid_plans_are_refused(mutate, message):
    doc = doc_for({"a": "bf16"})
    mutate(doc)
    with pytest.raises(PlanInvalid) as e:
        validate_plan(doc)
    assert str(e.value) == message


def test_not_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(PlanInvalid, match=r"is not valid JSON \(Expecting property name"):
        read_plan_document(p)


def test_torchao_mapping_loads_and_applies():
    torch = pytest.importorskip("torch")
    core = pytest.importorskip("torchao.core.config")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    doc = doc_for({"0": "int8", "1": "fp32", "2": "bf16", "3": "fp8_e4m3"}, baseline="fp32")
    out = to_torchao(doc)["data"]
    assert out["casts"] == {"2": "bfloat16"}
    assert out["modules"] == {"0": {"config": "Int8DynamicActivationInt8WeightConfig"},
                              "3": {"config": "Float8DynamicActivationFloat8WeightConfig"}}
    cfg = core.config_from_dict(out["quantize"])
    fqn = cfg.fqn_to_config if hasattr(cfg, "fqn_to_config") else cfg.module_fqn_to_config
    assert isinstance(fqn["0.weight"], Int8DynamicActivationInt8WeightConfig)
    # the int8 part applies on this CPU (fp8 needs an accelerator): weights become int8
    model = torch.nn.Sequential(*(torch.nn.Linear(64, 64) for _ in range(3)))
    only_int8 = copy.deepcopy(out["quantize"])
    only_int8["_data"]["fqn_to_config"].pop("3.weight")
    quantize_(model, core.config_from_dict(only_int8), filter_fn=None)
    w = model[0].weight
    inner = getattr(w, "qdata", None)
    if inner is None:
        inner = getattr(getattr(w, "tensor_impl", None), "int_data", None)
    assert inner is not None and inner.dtype == torch.int8
    assert model(torch.randn(2, 64)).shape == (2, 64)
