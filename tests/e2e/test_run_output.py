"""What `hwcost run` says: each stage says whether it computes or reuses, the summary
explains its terms, held-out data equal to the calibration data is warned about, and a table
computed with `hwcost sensitivity --samples N` is reused by `run --calib-samples N`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hwcost.app.main import cli
from hwcost.app.main_job import RunSummary, _same_data_warning
from hwcost.app.run import summary_lines


def test_same_data_warning(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    assert _same_data_warning(str(a), str(b), "m:f") == []
    assert _same_data_warning(str(a), None, "m:f") == []
    assert _same_data_warning(str(a), str(tmp_path / "." / "a.npy"), "m:f") == [
        f"warning: held-out data {tmp_path / '.' / 'a.npy'} is the calibration data: the measured loss "
        "MSE is not on unseen samples (give --eval-data another file)"]


def test_summary_says_what_each_term_means():
    s = RunSummary(
        model="demo", model_fingerprint="a" * 32, checkpoint="c" * 32, quantizer="q",
        device="d" * 32, device_name="Xeon", shape="batch=1,seq=128,phase=prefill",
        threshold="10%", measured_now=0, measurements_reused=13, sensitivity_reused=True,
        plan_id=4, plan_reused=True, layers={}, precision_counts={"bf16": 10, "int8": 3},
        predicted_speedup=1.5, measured_speedup=1.4, predicted_loss_mse=1e-3,
        measured_loss_mse=2e-3, measured_share=0.5, baseline_us=100.0, plan_us=70.0,
        validation_id=2, validation_reused=True, plan_file="p.json", plot_file="p.png",
        warnings=["warning: w1"], notes=["n1"], cost_sources={"measured": 3, "roofline": 2})
    lines = summary_lines(s)
    assert "plan               id 4 in the store (reused): 10 bf16, 3 int8 (bound: loss MSE <= 10%)" in lines
    assert ("validation         id 2 in the store (reused): the plan applied with real kernels "
            "and measured against the baseline") in lines
    assert ("measured share     50% of the predicted gain rests on costs measured on Xeon "
            "(subgraph costs: 3 measured, 2 roofline)") in lines
    assert any(line.startswith("loss MSE           predicted 0.001, measured 0.002 (mean squared "
                               "change of each sample's loss") for line in lines)
    assert "note               n1" in lines  # warnings are printed after these lines


@pytest.mark.slow
def test_run_reuses_a_table_of_the_same_calibration_and_says_so(tmp_path, sqlite_url):
    ids = tmp_path / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(0, 64, (24, 16)))
    held = tmp_path / "held.npy"
    np.save(held, np.random.default_rng(1).integers(0, 64, (24, 16)))
    from hwcost.profiles.backends import get_backend

    precs = ",".join(p.value for p in get_backend("cpu").precisions)  # what `run` plans over
    res = CliRunner().invoke(cli, ["sensitivity", "tests.factories:tiny", "--calib", str(ids),
                                   "--samples", "8", "--precisions", precs,
                                   "--db", sqlite_url])
    assert res.exit_code == 0, res.output
    args = ["run", "tests.factories:tiny", "--shape", "batch=1,seq=16", "--max-loss-mse", "50%",
            "--calib", str(ids), "--samples", "8", "--quick", "--db", sqlite_url]
    same = CliRunner().invoke(cli, [*args, "--calib-samples", "8", "--eval-data", str(ids),
                                    "--out", str(tmp_path / "out"), "--json"])
    assert same.exit_code == 0, same.output
    s = json.loads(same.output[same.output.index("{"):])
    assert s["sensitivity_reused"]  # the table `hwcost sensitivity --samples 8` stored
    assert "[hwcost run] sensitivity: reusing the stored table for" in same.output
    assert (f"warning: held-out data {ids} is the calibration data: the measured loss MSE is "
            "not on unseen samples (give --eval-data another file)") in s["warnings"]
    other = CliRunner().invoke(cli, [*args, "--calib-samples", "6", "--eval-data", str(held),
                                     "--out", str(tmp_path / "out2")])
    assert other.exit_code == 0, other.output
    assert "[hwcost run] sensitivity: computing" in other.output  # 6 samples: another table
    assert "is the calibration data" not in other.output
    assert "sensitivity        computed and stored (per-layer loss MSE per precision)" in other.output
