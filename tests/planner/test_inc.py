"""The INC FP8 export: the quantizer the plan was scored with (dynamic maxabs_pcs_pow2), the
device's fp8 range, names both of INC's matchers read the same way (optimum-habana and
vLLM-gaudi naming), keys within INC's documented schema (always) and accepted by Neural
Compressor's own parser (when installed); and the emulation sensitivity scores equals INC's
quantizer math on random tensors, +-240 saturation included."""

from __future__ import annotations

import json
import re

import pytest
from hwcost.planner.inc import INC_SCHEMA, check_inc_schema, to_inc

from hwcost.catalog import fp8_e4m3_max
from hwcost.errors import HwcostError

BLOCK = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def llama_plan(prec_of, blocks: int = 12, device: str = "Gaudi2") -> dict:
    layers = {f"model.layers.{b}.{n}": prec_of(b, n) for b in range(blocks) for n in BLOCK}
    layers["lm_head"] = "bf16"
    return {"type": "hwcost.plan", "version": 1, "data": {
        "model": {"name": "m", "fingerprint": "f"},
        "device": {"fingerprint": "d", "name": device, "kind": "hpu"},
        "shape": "batch=1,seq=128,phase=prefill", "objective": "time", "baseline": "bf16",
        "layers": layers, "predicted": {"speedup": 1.3, "loss_mse": 0.01}}}


def fused_alike(b, n):
    """fp8 except block 1's MLP and block 2's attention (fused parts share one precision)."""
    if (b == 1 and n.startswith("mlp.")) or (b == 2 and n.startswith("self_attn.")):
        return "bf16"
    return "fp8_e4m3"


def inc_selects(cfg: dict, name: str, matcher) -> bool:
    """INC's should_quantize for a Linear named ``name`` (types lists empty)."""
    allow, block = cfg["allowlist"]["names"], cfg["blocklist"]["names"]
    return any(matcher(a, name) for a in allow) and not any(matcher(b, name) for b in block)


MATCHERS = {"regex (INC 3.x)": lambda pat, name: re.search(pat, name) is not None,
            "substring (INC 2.x)": lambda pat, name: pat in name}


@pytest.mark.parametrize("naming", ["hf", "vllm"])
def test_both_matchers_select_exactly_the_planned_fp8_layers(naming):
    doc = llama_plan(fused_alike)
    cfg = to_inc(doc, naming)
    check_inc_schema(cfg)
    assert cfg["dynamic_quantization"] is True and cfg["scale_method"] == "maxabs_pcs_pow2"
    assert cfg["allowlist"]["types"] == [] and cfg["blocklist"]["types"] == []
    if naming == "vllm":
        names = [f"model.layers.{b}.{n}" for b in range(12) for n in
                 ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")]
        want = {n: not ((".1.mlp" in n) or (".2.self_attn" in n)) for n in names}
        assert "model.layers.0.self_attn.qkv_proj" in cfg["allowlist"]["names"]
        assert not any(n.endswith(("q_proj", "k_proj", "gate_proj", ".up_proj"))
                       and "qkv" not in n and "gate_up" not in n for n in cfg["allowlist"]["names"])
    else:
        want = {n: p == "fp8_e4m3" for n, p in doc["data"]["layers"].items()}
    want["lm_head"] = False
    for label, matcher in MATCHERS.items():
        got = {n: inc_selects(cfg, n, matcher) for n in want}
        assert got == want, label


def test_refusals():
    with pytest.raises(HwcostError, match="vLLM fuses model.layers.0.mlp.gate_up_proj but the plan "
                                          "gives its parts different precisions"):
        to_inc(llama_plan(lambda b, n: "bf16" if n == "mlp.up_proj" else "fp8_e4m3"), "vllm")
    with pytest.raises(HwcostError, match="cannot express int8 layers"):
        to_inc(llama_plan(lambda b, n: "int8"))
    with pytest.raises(HwcostError, match="no fp8_e4m3 layer"):
        to_inc(llama_plan(lambda b, n: "bf16"))
    doc = llama_plan(lambda b, n: "fp8_e4m3", blocks=1)
    doc["data"]["layers"]["model.layers.0.mlp"] = "bf16"  # a prefix of fp8 layers' names
    with pytest.raises(HwcostError, match="blocklist name model.layers.0.mlp would also block"):
        to_inc(doc)
    with pytest.raises(HwcostError, match="not one INC reads"):
        check_inc_schema({"mode": "QUANTIZE", "scale_methods": "maxabs_hw"})
    with pytest.raises(HwcostError, match="only with dynamic_quantization"):
        check_inc_schema({"mode": "QUANTIZE", "scale_method": "maxabs_pcs_pow2"})


def test_device_fp8_range_comes_from_the_catalog():
    assert fp8_e4m3_max("Gaudi2") == 240.0 and fp8_e4m3_max("GAUDI3") == 448.0
    assert fp8_e4m3_max("HL-225H") == 240.0 and fp8_e4m3_max("", "hpu") == 240.0
    assert fp8_e4m3_max("H100") == 448.0


# --- Neural Compressor itself, when it is installed -------------------------------------

def test_neural_compressors_parser_accepts_the_config(tmp_path):
    pytest.importorskip("torch")
    inc_cfg = pytest.importorskip("neural_compressor.torch.quantization")
    qc = pytest.importorskip("neural_compressor.torch.algorithms.fp8_quant._quant_common.quant_config")
    from neural_compressor.torch.algorithms.fp8_quant._core.scale_methods.scale_method_parser import (
        parse_scale_method,
        validate_and_populate_scale_method,
    )

    for naming in ("hf", "vllm"):
        cfg = to_inc(llama_plan(fused_alike), naming)
        path = tmp_path / f"{naming}.json"
        path.write_text(json.dumps(cfg))
        loaded = inc_cfg.FP8Config.from_json_file(str(path))
        assert loaded.allowlist == cfg["allowlist"] and loaded.blocklist == cfg["blocklist"]
        assert loaded.quantize and loaded.scale_method == "maxabs_pcs_pow2"
        # every enum-valued key through INC's own string -> enum parser (Fp8cfg.parse's first
        # step; the rest of Fp8cfg.parse needs a Gaudi: INC refuses dynamic mode on a CPU)
        enums = {k: qc._get_enum_from_string(qc._config_to_enum[k], v, k)
                 for k, v in cfg.items() if k in qc._config_to_enum}
        method = parse_scale_method(enums["scale_method"])
        validate_and_populate_scale_method(method)
        assert enums["scale_method"] in qc.SUPPORTED_DYNAMIC_QUANTIZATION_SCALES
        # INC's own name matcher selects exactly the planned fp8 layers
        from neural_compressor.torch.algorithms.fp8_quant._core.utils import is_re_match

        layers = llama_plan(fused_alike)["data"]["layers"]
        if naming == "hf":
            got = {n: is_re_match(cfg["allowlist"]["names"], n)
                   and not is_re_match(cfg["blocklist"]["names"], n) for n in layers}
            assert got == {n: p == "fp8_e4m3" for n, p in layers.items()}


def test_our_schema_copy_matches_neural_compressors():
    qc = pytest.importorskip("neural_compressor.torch.algorithms.fp8_quant._quant_common.quant_config")
    for key, enum in qc._config_to_enum.items():
        assert key in INC_SCHEMA, key
        ours = {a.upper() for a in INC_SCHEMA[key]} - ({"AUTO"} if key == "mode" else set())
        assert ours == {m.name for m in enum}, key


# --- the emulation sensitivity scores is INC's quantizer ---------------------------------

def reference_inc_qdq(t, fmax: float, backoff: float):
    """INC's dynamic maxabs_pcs_pow2 math written out from its source (fp_utils,
    scales_method, round_scales_function): per-row maxabs / (fullscale * backoff), rounded
    up to a power of two, values divided, saturated at the fullscale, rounded to Gaudi's grid."""
    import torch

    s = t.float().abs().amax(-1, keepdim=True) / (fmax * backoff)
    s = torch.maximum(s, torch.tensor(torch.finfo(torch.bfloat16).tiny))
    s = torch.exp2(torch.ceil(torch.log2(s)))
    dtype = torch.float8_e4m3fnuz if fmax == 240.0 else torch.float8_e4m3fn
    q = (t.float() / s).clamp(-fmax, fmax).to(dtype)
    return q.float() * s


@pytest.mark.parametrize("fmax", [240.0, 448.0])
def test_emulation_equals_inc_math(fmax):
    torch = pytest.importorskip("torch")
    from hwcost.profiles.precisions import inc_fp8_cast, inc_fp8_emulation

    emu = inc_fp8_emulation(fmax)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=g) * torch.logspace(-3, 3, 64).unsqueeze(1)
    x[0, :4] = torch.tensor([1e-30, -1e-30, 0.0, 5.0])  # tiny values next to a large one
    w = torch.randn(48, 96, generator=g)
    assert torch.equal(emu.activation(x), reference_inc_qdq(x, fmax, 1.0))
    assert torch.equal(emu.weight(w), reference_inc_qdq(w, fmax, 0.5))
    # saturation: scaled values beyond the range become exactly +-fmax
    big = torch.tensor([fmax * 1.01, -fmax * 3, fmax, fmax - 1, 1e6])
    out = inc_fp8_cast(big, fmax).float()
    assert out[0] == fmax and out[1] == -fmax and out[2] == fmax and out[4] == fmax
    assert out.abs().max() == fmax


@pytest.mark.parametrize("fmax", [240.0, 448.0])
def test_emulation_equals_neural_compressors_own_functions(fmax, monkeypatch):
    torch = pytest.importorskip("torch")
    # INC's torch implementation of the scale; on a Gaudi the same is a TPC kernel (cguid)
    monkeypatch.setenv("CALC_SCALE_WITH_CGUID", "False")
    pytest.importorskip("neural_compressor.torch.algorithms.fp8_quant")
    from hwcost.profiles.precisions import inc_fp8_emulation
    from neural_compressor.torch.algorithms.fp8_quant._core.common import QuantTensorType
    from neural_compressor.torch.algorithms.fp8_quant._core.fp_utils import GAUDI2, GAUDI3, get_fullscale
    from neural_compressor.torch.algorithms.fp8_quant._core.scale_methods.round_scales_function import (
        ScaleToPow2,
    )
    from neural_compressor.torch.algorithms.fp8_quant._core.scale_methods.scales_method import (
        MaxAbsDynamicPcs,
        MaxAbsPcs,
    )
    from torchao.quantization.quant_primitives import _quantize_affine_float8

    device = GAUDI2 if fmax == 240.0 else GAUDI3
    assert get_fullscale(torch.float8_e4m3fn, device) == fmax
    params = {"hp_dtype": torch.float32, "lp_dtype": torch.float8_e4m3fn}
    act = MaxAbsDynamicPcs(ScaleToPow2(), params, device, backoff=1.0)
    wgt = MaxAbsPcs(ScaleToPow2(), params, device, backoff=0.5)
    # INC's CPU Q/DQ op, with Gaudi 2's grid (its Q/DQ uses float8_e4m3fnuz's range there)
    lp = torch.float8_e4m3fnuz if fmax == 240.0 else torch.float8_e4m3fn
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 64, generator=g) * torch.logspace(-2, 4, 32).unsqueeze(1)
    w = torch.randn(16, 64, generator=g)
    emu = inc_fp8_emulation(fmax)
    xs = act.calc_scales(x, QuantTensorType.DYNAMIC)
    ws = wgt.calc_scales(w, QuantTensorType.CONST).reshape(-1, 1)
    inc_x = _quantize_affine_float8(x, xs, lp).float() * xs
    inc_w = _quantize_affine_float8(w, ws, lp).float() * ws
    assert torch.equal(emu.activation(x), inc_x)
    assert torch.equal(emu.weight(w), inc_w)
    # a calibrated (static) scale that new data exceeds: INC saturates at +-fmax, so do we
    from hwcost.profiles.precisions import inc_fp8_cast

    over = x * 4
    assert torch.equal(_quantize_affine_float8(over, xs, lp).float(),
                       inc_fp8_cast(over / xs, fmax).float())


def test_sensitivity_scores_the_inc_quantizer_of_the_target_device():
    """A Gaudi plan's fp8 rows come from INC's quantizer with the device's range: the table
    computed with the target's emulation differs from the registry's where it should."""
    torch = pytest.importorskip("torch")
    from hwcost.profiles.precisions import target_fp8_emulation
    from hwcost.sensitivity.taylor import analyze

    from tests.factories import tiny_qwen2

    g2, g3 = target_fp8_emulation("Gaudi2", "hpu"), target_fp8_emulation("Gaudi3", "hpu")
    assert (g2.scale_rounding, g2.fp8_max, g3.fp8_max) == ("pow2", 240.0, 448.0)
    h100 = target_fp8_emulation("H100", "cuda")
    assert (h100.scale_rounding, h100.fp8_max) == ("exact", 448.0)
    model = tiny_qwen2()[0]
    batches = [torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(i))
               for i in range(2)]
    inc = analyze(model, batches, precisions=[g2])
    plain = analyze(model, batches, precisions=["fp8_e4m3"])
    a = {r.layer: r.loss_mse for r in inc.rows}
    b = {r.layer: r.loss_mse for r in plain.rows}
    assert set(a) == set(b) and all(v > 0 and v == v for v in a.values())
    assert a != b  # pow2 scales and the weight backoff change the rounding errors


def test_plans_scored_with_another_quantizer_are_refused():
    from hwcost.quantizer import GAUDI2, INC_GAUDI2, INC_GAUDI3, parse_quantizer

    assert parse_quantizer("inc-gaudi2") == INC_GAUDI2
    assert parse_quantizer(INC_GAUDI2.key) == INC_GAUDI2 and INC_GAUDI2.key.endswith(",r=pow2")
    assert "r=" not in GAUDI2.key  # keys stored before scale_rounding existed are unchanged
    doc = llama_plan(fused_alike)
    doc["data"]["quantizer"] = INC_GAUDI2.key
    assert to_inc(doc)["allowlist"]["names"]
    for other in (GAUDI2, INC_GAUDI3):
        doc["data"]["quantizer"] = other.key
        with pytest.raises(HwcostError, match=f"scored with quantizer {other.key}, not with INC's "
                                              "on Gaudi2"):
            to_inc(doc)


def test_the_inc_quantizer_key_selects_the_inc_emulation():
    pytest.importorskip("torch")
    from hwcost.sensitivity.layers import as_emulation, quantizer_of

    from hwcost.quantizer import INC_GAUDI3

    emu = as_emulation("fp8_e4m3", INC_GAUDI3)
    assert (emu.scale_rounding, emu.fp8_max) == ("pow2", 448.0)
    assert as_emulation("int8", INC_GAUDI3).scale_rounding == "exact"
    assert quantizer_of([emu]) == INC_GAUDI3
