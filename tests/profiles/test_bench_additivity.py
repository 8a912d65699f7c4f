"""Smoke run of bench/additivity.py on a one-layer Llama: the whole pipeline (campaign into a
scratch store, per-layer proxy, MAC proxy, configs applied with real kernels) runs and
reports what it promises. Numbers from a --quick run mean nothing and are not checked."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "additivity.py"


@pytest.fixture(scope="module")
def additivity():
    spec = importlib.util.spec_from_file_location("bench_additivity", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_random_configs_are_diverse_and_seeded(additivity):
    import random

    layers = [f"l{i}" for i in range(40)]
    a = additivity.random_configs(layers, 10, random.Random(0))
    assert a == additivity.random_configs(layers, 10, random.Random(0))
    fp32_share = [sum(p.value == "fp32" for p in c.values()) / 40 for c in a]
    assert max(fp32_share) - min(fp32_share) > 0.3  # from mostly-fp32 to mostly-low configs


def test_quick_run_writes_results_and_target_line(additivity, tmp_path, monkeypatch, capsys):
    from hwcost.errors import ModelLoadError

    def no_demo(spec):
        raise ModelLoadError("no demo model in this test")

    monkeypatch.setattr(additivity, "load_model", no_demo)  # always the small config model
    rc = additivity.main(["--configs", "2", "--layers", "1", "--seq", "16", "--threads", "1",
                          "--precisions", "fp32,int8", "--same-window", "1", "--context-configs", "1",
                          "--quick",
                          "--deployments", "eager",
                          "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    *_, first, last = out.strip().splitlines()
    assert re.fullmatch(r"target: additivity_median_abs_err = \d+\.\d\d % \(goal <= 3\) "
                        r"(met|missed)", first)
    assert re.fullmatch(r"target: additivity_method_over_per_layer_err = \d+\.\d\d x "
                        r"\(goal <= 0\.5\) (met|missed)", last)
    report = json.loads((tmp_path / "additivity.json").read_text())
    assert report["shape"] == "batch=1,seq=16,phase=prefill" and report["threads"] == 1
    assert report["n_configs"] == 2 and len(report["rows"]) == 2
    # one layer: attention head (3 slots), tail (1), MLP (3), lm_head (1); 2 precisions
    assert report["n_subgraph_configs_measured"] == 8 + 2 + 8 + 2
    assert report["precisions"] == ["fp32", "int8"]
    assert set(report["summary"]) == {"method", "per_layer", "macs", "method_absolute",
                                      "per_layer_absolute", "method_raw",
                                      "method_same_window", "method_same_window_context"}
    assert report["allocator"] == "pinned" or report["allocator"].startswith("dynamic")
    # config 0: the plain diagnostic; config 1: plain and with each piece after the one before
    row0, row1 = report["rows"]
    assert "same_window" in row0 and "same_window_context" not in row0
    assert {"same_window", "same_window_context"} <= set(row1)
    assert row1["same_window_context"]["measured_us"] > 0
    assert "| sum of subgraph gains (method) |" in (tmp_path / "additivity.md").read_text()
