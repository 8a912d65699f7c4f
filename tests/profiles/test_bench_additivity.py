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
    assert set(report["summary"]) == {"method", "method_unanchored", "per_layer", "macs",
                                      "method_absolute", "per_layer_absolute", "method_raw",
                                      "method_same_window", "method_same_window_context"}
    # an eager campaign times no anchors: the method's gains are the pieces' own
    eager = report["deployments"]["eager"]
    assert eager["anchor_scales"] == {} and eager["anchors_us"] == {}
    assert eager["compare_min_samples"] == 5  # --quick: the quick harness's samples
    assert len(eager["aa_abs_diff_pct"]) == 5 and all(x >= 0 for x in eager["aa_abs_diff_pct"])
    assert report["allocator"] == "pinned" or report["allocator"].startswith("dynamic")
    # config 0: the plain diagnostic; config 1: plain and with each piece after the one before
    row0, row1 = report["rows"]
    assert "same_window" in row0 and "same_window_context" not in row0
    assert {"same_window", "same_window_context"} <= set(row1)
    assert row1["same_window_context"]["measured_us"] > 0
    assert "| sum of subgraph gains (method; anchored where the campaign timed anchors, as " \
        "the planner prices) |" in (tmp_path / "additivity.md").read_text()


@pytest.mark.slow
def test_quick_compiled_run_anchors_the_methods_gains(additivity, tmp_path, monkeypatch):
    """Under the compiled deployment the campaign times the whole model in each uniform
    precision beside the fp32 model, and the method prices a config as the planner does:
    the pieces' gains anchored on those runs (planner.anchors)."""
    from hwcost.errors import ModelLoadError

    def no_demo(spec):
        raise ModelLoadError("no demo model in this test")

    monkeypatch.setattr(additivity, "load_model", no_demo)
    rc = additivity.main(["--compiled-configs", "2", "--layers", "1", "--seq", "16",
                          "--threads", "1", "--compiled-precisions", "fp32,int8", "--quick",
                          "--deployments", "compiled", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "additivity.json").read_text())
    run = report["deployments"]["compiled"]
    assert set(run["anchor_scales"]) == {"int8"}
    k = run["anchor_scales"]["int8"]
    assert 0.0 <= k <= 4.0
    # the campaign's whole int8 model, and the model with only its first piece in int8,
    # priced as they measured (both anchors exact); the pieces' own gains are not
    assert set(run["anchors_us"]) == {"all:int8", "first:int8"}
    if 0.0 < k < 4.0:  # a clamped scale (quick timings of a tiny model) prices no anchor
        assert run["uniform_priced_us"]["int8"] == pytest.approx(run["anchors_us"]["all:int8"])
    rows = run["rows"]
    if abs(k - 1.0) > 1e-6:
        assert [r["predicted_us"]["method"] for r in rows] != pytest.approx(
            [r["predicted_us"]["method_unanchored"] for r in rows], rel=1e-9)
    assert "Anchor scales" in (tmp_path / "additivity.md").read_text()


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_other_families_are_built_at_the_demos_widths(additivity, family):
    """``--family``: a biased-q/k/v Qwen2 and a Conv1D GPT-2 with a fused qkv, each with
    layers the benchmark prices (linear parameters, MAC counts) and a config key."""
    from hwcost.profiles.backends import linear_params

    loaded, desc = additivity.load_family(family, 1)
    assert family in desc and loaded.source == "config"
    model = loaded.model
    layer = ("model.layers.0.self_attn.q_proj" if family == "qwen2"
             else "transformer.h.0.attn.c_attn")
    w, b = linear_params(model.get_submodule(layer))
    assert b is not None and w.shape[1] == 256
    if family == "gpt2":
        assert w.shape[0] == 3 * 256  # q, k and v in one projection
    per_layer, attn = additivity.macs(model, [layer], 1, 16)
    assert per_layer[layer] == 16 * w.shape[0] * w.shape[1] and attn > 0
    with pytest.raises(ValueError, match="unknown family"):
        additivity.load_family("bloom", 1)
