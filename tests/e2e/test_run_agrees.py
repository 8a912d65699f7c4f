"""The README's main job tells the truth: ``hwcost run`` shows every stage with a progress bar
(profiling per interleave group with its configs and rounds, sensitivity per batch, validation
per timing round and per loss batch), and its summary's figures are those that ``hwcost plan
--json`` and ``hwcost validate --json`` print for the same plan on the same store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import hwcost.app.plan as plan_app
import hwcost.app.run as run_app
from hwcost.app.main import cli


def _json(res) -> dict:
    assert res.exit_code == 0, res.output
    out = res.stdout
    return json.loads(out[out.index("{"):])


# the tiny Llama with token files given on the command line, and a Qwen2 (biased q/k/v) whose
# factory carries its own calibration and held-out batches
MODELS = [pytest.param("tests.factories:tiny", "tiny", True, id="llama-npy"),
          pytest.param("tests.zoo.families:qwen2", "qwen2", False, id="qwen2-biased")]


@pytest.mark.slow
@pytest.mark.parametrize("spec, name, token_files", MODELS)
def test_run_shows_progress_and_agrees_with_plan_and_validate(spec, name, token_files, tmp_path,
                                                              sqlite_url, monkeypatch):
    data, held_args = [], []
    if token_files:
        calib, held = tmp_path / "calib.npy", tmp_path / "held.npy"
        np.save(calib, np.random.default_rng(0).integers(0, 64, (16, 16)))
        np.save(held, np.random.default_rng(1).integers(0, 64, (16, 16)))
        data, held_args = ["--calib", str(calib), "--eval-data", str(held)], ["--eval-data",
                                                                             str(held)]
    # an absolute bound no plan reaches: the closed loop keeps the first plan, which `hwcost
    # plan` with the same bound finds again (a loop that re-plans on scaled predictions ends
    # with a plan no plain `hwcost plan` makes)
    args = ["run", spec, "--shape", "batch=1,seq=16", "--max-loss-mse", "1", *data,
            "--samples", "8", "--quick",
            "--precisions", "fp32,bf16,int8", "--out", str(tmp_path / "out"), "--db", sqlite_url]
    # as in a terminal: bars on stderr (a pipe, CI's log or --json gets none)
    monkeypatch.setattr(run_app, "progress_enabled", lambda: True)
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    err = first.stderr
    for stage in ("loading model", "profiling what the store lacks", "sensitivity: computing",
                  "planning for loss MSE", "applying the plan with real kernels"):
        assert f"[hwcost run] {stage}" in err, err
    assert "timing " in err and " configs of " in err and "round " in err  # within a group
    assert f"{name}: 100%" in err  # the profile bar, per config
    assert "sensitivity: 100%" in err  # per calibration batch
    assert "validate: timing plan vs baseline:" in err  # per interleaved round
    assert "validate: loss MSE: 100%" in err  # per held-out batch, baseline and plan
    assert "<00:00" in err  # the bars' remaining time: [elapsed<remaining]

    run = _json(CliRunner().invoke(cli, [*args, "--json"]))  # everything reused, no bars
    assert run["plan_reused"] and run["validation_reused"] and len(run["loop_rounds"]) <= 1
    plan = _json(CliRunner().invoke(cli, [
        "plan", run["model_fingerprint"], "--device", run["device"], "--shape", "batch=1,seq=16",
        "--max-loss-mse", "1", "--precisions", "fp32,bf16,int8", "--allow-unstable",
        "--db", sqlite_url, "--json"]))
    monkeypatch.setattr(plan_app, "progress_enabled", lambda: True)  # --json wins
    val = CliRunner().invoke(cli, ["validate", str(run["plan_id"]), "--model", spec, *held_args,
                                   "--samples", "8", "--db", sqlite_url, "--json"])
    assert "validate:" not in val.stderr
    val = _json(val)
    # one plan, stored once, with one prediction: the figures the run's summary printed
    d = plan["data"]
    assert d["plan_id"] == val["plan_id"] == run["plan_id"]
    assert d["layers"] == run["layers"]
    for got in (d["predicted"]["speedup"], val["predicted_speedup"]):
        assert got == pytest.approx(run["predicted_speedup"], rel=1e-9)
    for got in (d["predicted"]["loss_mse"], val["predicted_loss_mse"]):
        assert got == pytest.approx(run["predicted_loss_mse"], rel=1e-9)
    # measured on the same held-out samples with the same kernels: the same loss MSE
    assert val["measured_loss_mse"] == pytest.approx(run["measured_loss_mse"], rel=1e-6)
