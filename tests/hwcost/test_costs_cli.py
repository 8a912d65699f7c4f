"""``hwcost coverage`` and ``hwcost device calibrate`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hwcost.app.main import cli
from hwcost.device import DeviceInfo
from hwcost.store import ManifestItem, MeasurementIn, SlotInfo, SubgraphInfo, open_store

SUB = SubgraphInfo("sig-mlp", "LlamaMLP", (SlotInfo("Linear", 256, 512), SlotInfo("Linear", 512, 256)),
                   {"stage": "unit"})
CPU = DeviceInfo("cpu", "Test CPU", 1, (), {"torch": "test"})


@pytest.fixture
def db(sqlite_url) -> str:
    with open_store(sqlite_url) as s:
        s.put_model("fp-tiny", "tiny", [SUB], [ManifestItem(0, SUB.signature, ("fc1", "fc2")),
                                                ManifestItem(1, SUB.signature, ("fc3", "fc4"))])
    return sqlite_url


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_coverage_of_a_catalog_device_is_all_roofline(db):
    r = invoke("coverage", "tiny", "--device", "H100-SXM", "--shape", "batch=1,seq=64", "--db", db)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("model fp-tiny  device H100-SXM (cat")
    assert lines[0].endswith(", catalog)  shape batch=1,seq=64,phase=prefill  "
                             "precisions bf16,fp8_e4m3,int8")
    assert lines[1].split() == ["pos", "signature", "layers", "configs", "measured", "learned",
                                "roofline", "not_good", "answers", "best", "best_source",
                                "gain_measured"]
    assert lines[3].split()[:9] == ["0", "sig-mlp", "2", "9", "0", "0", "9", "0", "roofline"]
    assert lines[-2] == "no learned model (too few measurements): fallbacks are roofline"
    assert lines[-1] == ("share of the predicted gain (fastest configs) resting on measurements: "
                         "0.0%")


def test_coverage_json_counts_measured_configs(db):
    with open_store(db) as s:
        s.put_device(CPU, peaks={"fp32_tflops": 0.1, "int8_tflops": 0.4, "mem_gbps": 20.0})
        s.add_measurements([MeasurementIn(CPU.fingerprint, SUB.signature, "batch=1,seq=64", cfg,
                                          us, 1.0, 5)
                            for cfg, us in (("fp32,fp32", 200.0), ("int8,int8", 120.0))])
    r = invoke("coverage", "tiny", "--device", CPU.fingerprint[:10], "--shape", "seq=64",
               "--json", "--db", db)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["precisions"] == ["fp32", "int8"] and out["baseline"] == "fp32"
    # two of each unit's four configs are measured: a partly measured unit takes every gain from
    # one fallback (never a measured baseline minus a roofline candidate), so only its baseline
    # latency is answered by a measurement
    assert [(g["measured"], g["roofline"], g["answers"]) for g in out["subgraphs"]] == \
        [(1, 3, "measured+roofline")] * 2
    best = out["subgraphs"][0]["best"]
    assert out["subgraphs"][0]["best_source"] == ("measured" if best == "fp32,fp32" else "roofline")
    assert out["device_source"] == "local" and out["learned_cv_mape"] is None
    assert 0.0 <= out["measured_share"] <= 1.0


@pytest.mark.parametrize("args,message", [
    (("--device", "MI300X", "--shape", "batch=1"),
     "Error: no device 'MI300X' in the store or the catalog (H100-SXM, H100-PCIe, H200, A100, "
     "Gaudi2, Gaudi3); on that machine run `hwcost profile MODEL --device KIND --shape SHAPE` "
     "(KIND: cpu, cuda or hpu), then `hwcost db export` there and `hwcost db import FILE` "
     "here\n"),
    (("--device", "H100-SXM", "--shape", "batch=1;seq=4"),
     "Error: cannot parse shape 'batch=1;seq=4': batch, seq and kv must be integers\n"),
    (("--device", "A100", "--shape", "batch=1", "--precisions", "bf16,fp8_e4m3"),
     None),
    (("--device", "H100-SXM", "--shape", "batch=1", "--precisions", "fp4"),
     "Error: unknown precision 'fp4'; known: fp32, bf16, fp16, fp8_e4m3, fp8_e5m2, int8, "
     "int8_wo, int4_wo, fp8_wo\n"),
])
def test_coverage_bad_input_is_one_line(db, args, message):
    r = invoke("coverage", "tiny", *args, "--db", db)
    assert r.exit_code == 1
    if message is None:  # the A100 line names its fingerprint; check the rest
        assert r.output.startswith("Error: device A100 (cat")
        assert r.output.endswith("has no rate and no measurement for fp8_e4m3 (it supports fp32, "
                                 "bf16, fp16, int8, int8_wo, int4_wo, fp8_wo); measure it on "
                                 "the device with `hwcost "
                                 "profile MODEL --device cuda --shape SHAPE --precisions "
                                 "fp8_e4m3`\n")
    else:
        assert r.output == message


def test_coverage_of_an_unknown_model(db):
    r = invoke("coverage", "nope", "--device", "H100-SXM", "--shape", "batch=1", "--db", db)
    assert r.exit_code == 1
    assert r.output == ("Error: no model 'nope' in the store; `hwcost profile MODEL` records one, "
                        "`hwcost db ls` lists what is there\n")


def test_calibrate_measures_and_stores_this_cpu(sqlite_url):
    import torch

    threads = torch.get_num_threads()
    try:
        r = invoke("device", "calibrate", "--threads", "1", "--budget", "1", "--json",
                   "--db", sqlite_url)
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    with open_store(sqlite_url) as s:
        dev = s.get_device(out["fingerprint"])
    peaks = json.loads(dev.peaks)
    assert peaks == out["peaks"] and dev.threads == 1
    for key in ("fp32_tflops", "bf16_tflops", "int8_tflops", "fp8_e4m3_tflops", "mem_gbps",
                "op_overhead_us"):
        assert peaks[key] > 0, key
    assert peaks["source"].startswith("calibrated ") and "with 1 threads" in peaks["source"]


def test_commands_have_help_and_docs():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    for args in (("coverage",), ("device", "calibrate")):
        r = invoke(*args, "--help")
        assert r.exit_code == 0 and len(r.output.splitlines()) > 5
        assert f"hwcost {' '.join(args)}" in docs
