"""planner.deploy: the plan's layers run with the backend's kernels (dtypes as planned, bf16
layers of an fp32 model included), forward passes run, and a saved deployment loads back to
the same outputs; ``hwcost deploy`` does the same from the command line."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from hwcost.planner.deploy import deploy, deployed_layers, load_deployed, save_deployed  # noqa: E402

from hwcost.app.main import cli  # noqa: E402
from hwcost.errors import HwcostError, UnknownLayer  # noqa: E402
from tests.factories import plan_for, tiny_qwen2  # noqa: E402


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("cycle", [("int8", "bf16", "fp32"), ("bf16",), ("fp8_e4m3", "int8")])
def test_deploy_runs_every_layer_in_its_planned_precision(cycle):
    model = tiny_qwen2()[0]
    doc = plan_for(model, cycle)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = logits(model, ids)
    out = deploy(model, doc)
    got = deployed_layers(out)
    assert {n: d.precision for n, d in got.items()} == doc["data"]["layers"]
    want_dtype = {"int8": "torch.int8", "bf16": "torch.bfloat16", "fp32": "torch.float32",
                  "fp8_e4m3": "torch.float8_e4m3fn"}
    assert all(d.weight_dtype == want_dtype[d.precision] for d in got.values())
    y = logits(out, ids)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert 0 < (y - ref).norm() / ref.norm() < 0.1


def test_in_place_deployment_is_restored():
    from hwcost.planner.deploy import deployed_in_place

    model = tiny_qwen2()[0]
    doc = plan_for(model)
    ids = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(3))
    before, view = logits(model, ids), logits(deploy(model, doc), ids)
    with deployed_in_place(model, doc) as m:
        assert m is model
        assert {n: d.precision for n, d in deployed_layers(m).items()} == doc["data"]["layers"]
        assert torch.equal(logits(m, ids), view)
    assert set(d.precision for d in deployed_layers(model).values()) == {"fp32"}
    assert torch.equal(logits(model, ids), before)


def test_deploy_on_the_demo_model():
    from hwcost.profiles.loading import load_model

    model = load_model(None).model
    doc = plan_for(model, ("bf16", "int8", "int8", "fp32"))
    out = deploy(model, doc)
    assert {n: d.precision for n, d in deployed_layers(out).items()} == doc["data"]["layers"]
    ids = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(4))
    y, ref = logits(out, ids), logits(model, ids)
    assert torch.isfinite(y).all() and (y - ref).norm() / ref.norm() < 0.1


def test_save_and_load_round_trip(tmp_path):
    model = tiny_qwen2()[0]
    doc = plan_for(model)
    out = deploy(model, doc)
    save_deployed(out, doc, tmp_path / "dep")
    manifest = json.loads((tmp_path / "dep" / "hwcost-deploy.json").read_text())
    assert manifest["plan"] == doc and set(manifest["layers"]) == set(doc["data"]["layers"])
    back = load_deployed(tmp_path / "dep", tiny_qwen2()[0])
    ids = torch.randint(0, 128, (1, 10), generator=torch.Generator().manual_seed(2))
    assert torch.equal(logits(back, ids), logits(out, ids))


def test_bad_plans_fail_before_anything_is_built(tmp_path):
    model = tiny_qwen2()[0]
    with pytest.raises(UnknownLayer, match="no layer named 'nope'"):
        deploy(model, {"nope": "int8"})
    with pytest.raises(HwcostError, match="is not a deployed model"):
        load_deployed(tmp_path, model)


def test_cli_deploy_writes_a_loadable_model(tmp_path):
    model = tiny_qwen2()[0]
    doc = plan_for(model)
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    res = CliRunner().invoke(cli, ["deploy", str(tmp_path / "plan.json"), "tests.factories:tiny_qwen2",
                                   "-o", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert {n: d["precision"] for n, d in out["layers"].items()} == doc["data"]["layers"]
    assert (tmp_path / "out" / "model.safetensors").is_file()
    back = load_deployed(tmp_path / "out", tiny_qwen2()[0])
    assert {n: d.precision for n, d in deployed_layers(back).items()} == doc["data"]["layers"]
    bad = CliRunner().invoke(cli, ["deploy", str(tmp_path / "nope.json"), "-o", str(tmp_path / "x")])
    assert bad.exit_code != 0 and bad.output.startswith("Error: ") and len(bad.output.splitlines()) == 1
