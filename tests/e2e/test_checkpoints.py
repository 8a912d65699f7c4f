"""Two checkpoints of one architecture (a model and a fine-tune of it): every latency
measurement is shared, while sensitivity tables, plans and validations belong to each
checkpoint and are never reused for the other."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hwcost.app.main import cli
from hwcost.store import open_store


def _run(factory: str, tmp_path, url: str, data) -> dict:
    res = CliRunner().invoke(cli, [
        "run", f"tests.factories:{factory}", "--shape", "batch=1,seq=16", "--max-loss-mse",
        "50%", "--calib", str(data), "--eval-data", str(data), "--samples", "8", "--quick",
        "--out", str(tmp_path / factory), "--db", url, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output[res.output.index("{"):])


@pytest.mark.slow
def test_two_checkpoints_share_latencies_not_sensitivities_plans_or_validations(
        tmp_path, sqlite_url):
    data = tmp_path / "ids.npy"
    np.save(data, np.random.default_rng(0).integers(0, 64, (24, 16)))
    base = _run("tiny", tmp_path, sqlite_url, data)
    with open_store(sqlite_url) as s:
        n_measurements = s.measurement_count()
    tuned = _run("tiny_finetuned", tmp_path, sqlite_url, data)

    # one architecture, two checkpoints
    assert tuned["model_fingerprint"] == base["model_fingerprint"]
    assert tuned["checkpoint"] != base["checkpoint"]
    # latencies depend on structure only: nothing measured again
    assert tuned["measured_now"] == 0 and tuned["measurements_reused"] == base["measured_now"]
    # loss sensitivities, plans and validations depend on the weights: none reused
    assert not tuned["sensitivity_reused"]
    assert not tuned["plan_reused"] and not tuned["validation_reused"]
    assert tuned["plan_id"] != base["plan_id"]
    assert tuned["validation_id"] != base["validation_id"]
    with open_store(sqlite_url) as s:
        assert s.measurement_count() == n_measurements
        model = s.get_model(base["model_fingerprint"])
        a = {(r.layer, r.precision): r.loss_mse
             for r in s.sensitivity_table(model.fingerprint, checkpoint=base["checkpoint"]).rows}
        b = {(r.layer, r.precision): r.loss_mse
             for r in s.sensitivity_table(model.fingerprint, checkpoint=tuned["checkpoint"]).rows}
        assert a.keys() == b.keys() and a != b  # two tables, of different values
        plans = {p.id: p.checkpoint for p in s.plans_for(model.id, s.get_device(base["device"]).id,
                                                         "batch=1,seq=16")}
        assert plans[base["plan_id"]] == base["checkpoint"]
        assert plans[tuned["plan_id"]] == tuned["checkpoint"]
        assert set(plans.values()) == {base["checkpoint"], tuned["checkpoint"]}
        assert [v.checkpoint for v in s.validations(tuned["plan_id"])] == [tuned["checkpoint"]]
        assert {c.digest for c in s.checkpoints(model.id)} == {base["checkpoint"],
                                                              tuned["checkpoint"]}

    # the first checkpoint again: its own table, plan and validation come back
    again = _run("tiny", tmp_path, sqlite_url, data)
    assert again["measured_now"] == 0 and again["sensitivity_reused"]
    assert (again["plan_id"], again["validation_id"]) == (base["plan_id"], base["validation_id"])

    # `hwcost plan` on the architecture asks which checkpoint, and plans the one named
    # (--allow-unstable: these runs took --quick timings, which plans refuse by default)
    res = CliRunner().invoke(cli, ["plan", base["model_fingerprint"][:12], "--device",
                                   base["device"][:12], "--shape", "batch=1,seq=16",
                                   "--max-loss-mse", "50%", "--allow-unstable", "--db", sqlite_url])
    assert res.exit_code == 1
    assert "has sensitivity tables of 2 checkpoints" in res.output
    assert res.output.count("\n") == 1
    res = CliRunner().invoke(cli, ["plan", base["model_fingerprint"][:12], "--device",
                                   base["device"][:12], "--shape", "batch=1,seq=16",
                                   "--max-loss-mse", "50%", "--checkpoint",
                                   tuned["checkpoint"][:10], "--allow-unstable", "--db", sqlite_url,
                                   "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["data"]["model"]["checkpoint"] == tuned["checkpoint"]
    assert doc["data"]["sensitivity"]["checkpoint"] == tuned["checkpoint"]
