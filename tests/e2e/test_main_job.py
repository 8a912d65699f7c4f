"""The main job, ``hwcost run``, end to end on a small real model: profile, sensitivity, plan,
apply with real kernels, validate; then again, reusing everything from the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from hwcost.app.main import cli
from hwcost.store import open_store


def test_run_goes_from_nothing_to_a_validated_plan_and_reuses_it(tmp_path, sqlite_url):
    data = tmp_path / "ids.npy"
    np.save(data, np.random.default_rng(0).integers(0, 64, (24, 16)))
    args = ["run", "tests.factories:tiny", "--shape", "batch=1,seq=16", "--max-loss-mse", "50%",
            "--calib", str(data), "--eval-data", str(data), "--samples", "8", "--quick",
            "--out", str(tmp_path / "out"), "--db", sqlite_url, "--json"]

    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    s1 = json.loads(first.output[first.output.index("{"):])
    assert s1["measured_now"] > 0 and s1["measurements_reused"] == 0
    assert not s1["sensitivity_reused"] and not s1["validation_reused"]
    assert s1["measured_share"] == 1.0  # every config was measured
    assert s1["measured_speedup"] > 0 and s1["plan_us"] > 0 and s1["baseline_us"] > 0
    assert s1["predicted_loss_mse"] >= 0 and s1["measured_loss_mse"] >= 0
    assert set(s1["layers"].values()) <= {"fp32", "bf16", "int8", "fp8_e4m3"}
    # --quick plans on quick timings and says so; a regression would be flagged, not shown
    assert s1["allow_unstable"] and any(w.startswith("--quick: the plan rests on quick")
                                        for w in s1["warnings"])
    assert s1["slower_than_baseline"] == (s1["measured_speedup"] < 1
                                          and set(s1["layers"].values()) != {"fp32"})
    assert s1["speedup_rel_error"] >= 0.05
    plan = json.loads(Path(s1["plan_file"]).read_text())
    assert plan["type"] == "hwcost.plan" and plan["data"]["layers"] == s1["layers"]
    assert Path(s1["plot_file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with open_store(sqlite_url) as s:  # the closed loop may store a re-planned round or two
        first_plans = len(s.plans_for(s.get_model(s1["model_fingerprint"]).id,
                                      s.get_device(s1["device"]).id, "batch=1,seq=16"))
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    s2 = json.loads(second.output[second.output.index("{"):])
    assert s2["measured_now"] == 0 and s2["measurements_reused"] == s1["measured_now"]
    assert s2["sensitivity_reused"] and s2["plan_reused"] and s2["validation_reused"]
    assert (s2["plan_id"], s2["validation_id"]) == (s1["plan_id"], s1["validation_id"])
    for key in ("predicted_speedup", "measured_speedup", "predicted_loss_mse",
                "measured_loss_mse"):  # the same validated plan reports the same numbers
        assert s2[key] == s1[key]
    with open_store(sqlite_url) as s:
        model = s.get_model(s1["model_fingerprint"])
        dev = s.get_device(s1["device"])
        # nothing duplicated by the second run
        assert len(s.plans_for(model.id, dev.id, "batch=1,seq=16")) == first_plans >= 1


def test_run_refuses_an_impossible_bound_with_one_line(tmp_path, sqlite_url):
    data = tmp_path / "ids.npy"
    np.save(data, np.random.default_rng(0).integers(0, 64, (24, 16)))
    res = CliRunner().invoke(cli, ["run", "tests.factories:tiny", "--shape", "batch=1,seq=16",
                                   "--max-loss-mse", "-1", "--calib", str(data), "--quick",
                                   "--db", sqlite_url])
    assert res.exit_code == 1
    assert res.output.splitlines()[-1].startswith("Error: loss-MSE threshold must be")


def test_run_refuses_what_cannot_run_here_before_storing_anything(tmp_path, sqlite_url,
                                                                   monkeypatch):
    data = tmp_path / "ids.npy"
    np.save(data, np.random.default_rng(0).integers(0, 64, (24, 16)))
    base = ["--shape", "batch=1,seq=16", "--calib", str(data), "--quick", "--db", sqlite_url]
    # a checkpoint larger than the memory this process may use: refused with both figures
    monkeypatch.setenv("HWCOST_MEMORY_LIMIT", "1MiB")
    res = CliRunner().invoke(cli, ["run", *base])
    assert res.exit_code == 1
    last = res.output.splitlines()[-1]
    assert last.startswith("Error: model demo needs ") and "GiB for its" in last
    assert "in float32; this host has 0.00 GiB free (HWCOST_MEMORY_LIMIT)" in last
    monkeypatch.delenv("HWCOST_MEMORY_LIMIT")
    # a device that is not here: refused with the backend's reason
    res = CliRunner().invoke(cli, ["run", "tests.factories:tiny", "--device", "cuda", *base])
    assert res.exit_code == 1
    assert res.output.splitlines()[-1].startswith("Error: backend cuda is unavailable: ")
    with open_store(sqlite_url) as s:
        assert s.models() == [] and s.devices() == []  # nothing half-written
