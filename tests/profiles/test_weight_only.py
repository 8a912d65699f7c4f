"""Weight-only formats: int8 / int4 weights really stored, the real CPU kernels computing what
the emulation says, and sensitivity scoring them (weight error plus the bf16 activations)."""

from __future__ import annotations

import pytest
import torch
from hwcost.profiles.backends import DeployedLinear, apply_precisions, get_backend
from hwcost.profiles.precisions import emulation, quantize_int4_groups, quantize_int8_rows_wo
from torch import nn

from hwcost.precision import INT4_GROUP, WEIGHT_ONLY, Precision

CPU_WO = [p.value for p in WEIGHT_ONLY["cpu"]]


def _layer(in_f: int = 256, out_f: int = 96) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(in_f, out_f)
    nn.init.normal_(layer.bias)
    return layer


@pytest.mark.parametrize("precision", CPU_WO)
def test_weight_only_layers_store_low_bit_weights_and_match_the_emulation(precision):
    layer = _layer()
    deployed = get_backend("cpu").deploy_linear(layer, precision)
    assert isinstance(deployed, DeployedLinear) and deployed.precision == Precision(precision)
    sd = deployed.state_dict()
    if precision == "int8_wo":
        assert sd["weight"].dtype == torch.int8 and sd["weight"].shape == (96, 256)
        assert sd["weight_scale"].dtype == torch.bfloat16
    else:  # two 4-bit values a byte: the stored weight is half as many bytes as int8
        assert sd["weight"].dtype == torch.uint8 and sd["weight"].numel() == 96 * 256 // 2
        assert sd["scales_and_zeros"].shape == (256 // INT4_GROUP, 96, 2)
    weight_bytes = sum(t.numel() * t.element_size() for k, t in sd.items() if k != "bias")
    # int4: 4 bits plus a bf16 scale and zero per 32 values = 5 bits a weight
    assert weight_bytes <= layer.weight.numel() * (1.07 if precision == "int8_wo" else 0.625)
    x = torch.randn(5, 7, 256)
    with torch.inference_mode():
        y = deployed(x)
        ref = emulation(precision).linear(x, layer.weight, layer.bias)
    assert y.dtype == torch.float32 and y.shape == (5, 7, 96)
    # the same integers and scales: only the kernel's bf16 arithmetic differs
    assert ((y - ref).norm() / ref.norm()).item() < 5e-3


def test_int4_pads_odd_output_widths_and_refuses_odd_input_widths():
    from hwcost.errors import BackendUnavailable

    layer = _layer(64, 264)  # a vocabulary-sized lm_head: 264 is not a multiple of 16
    deployed = get_backend("cpu").deploy_linear(layer, "int4_wo")
    x = torch.randn(3, 64)
    with torch.inference_mode():
        y, ref = deployed(x), emulation("int4_wo").linear(x, layer.weight, layer.bias)
    assert y.shape == (3, 264) and ((y - ref).norm() / ref.norm()).item() < 5e-3
    with pytest.raises(BackendUnavailable, match="multiple of 32; layer is 40->8"):
        get_backend("cpu").deploy_linear(nn.Linear(40, 8), "int4_wo")


def test_quantizers_round_trip_their_integers():
    w = torch.randn(64, 128)
    q, s = quantize_int8_rows_wo(w)
    assert q.dtype == torch.int8 and q.abs().max() == 127 and s.dtype == torch.bfloat16
    q4, scale, zero = quantize_int4_groups(w)
    assert q4.min() >= 0 and q4.max() <= 15 and scale.shape == zero.shape == (64, 128 // 32)
    deq = emulation("int4_wo").weight(w)
    # int4 is coarser than int8: per group, at most half a step off
    step = scale.float().repeat_interleave(32, dim=1)
    assert ((deq - w).abs() <= step / 2 + 1e-2 * step).all()
    assert (deq - w).norm() > (emulation("int8_wo").weight(w) - w).norm() * 4
    with pytest.raises(ValueError, match="multiple"):
        quantize_int4_groups(torch.randn(4, 40))


def test_emulation_changes_weights_and_casts_activations_only():
    emu = emulation("int8_wo")
    x = torch.randn(4, 64)
    assert torch.equal(emu.activation(x), x.bfloat16().float())
    assert emu.rounds_output and Precision.INT8_WO.weight_only and not Precision.INT8.weight_only
    assert Precision.INT4_WO.bytes == 0.5 and Precision.INT4_WO.bits == 4


def test_sensitivity_scores_weight_only_formats_int4_above_int8():
    from hwcost.sensitivity import per_sample_terms
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (4, 16))
    terms = per_sample_terms(model, [ids[:2], ids[2:]], precisions=["int8_wo", "int4_wo"])
    layer = "model.layers.0.mlp.down_proj"
    int8, int4 = terms.of(layer, "int8_wo"), terms.of(layer, "int4_wo")
    assert (int8 ** 2).mean() < (int4 ** 2).mean()


def test_a_model_deployed_weight_only_runs_decode_on_its_cache():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(cfg).eval()
    plan = {"model.layers.0.mlp.down_proj": "int4_wo", "model.layers.0.self_attn.q_proj": "int8_wo"}
    deployed = apply_precisions(model, plan, "cpu")
    ids = torch.randint(0, 64, (2, 12))
    with torch.inference_mode():
        a = model.generate(ids, max_new_tokens=4, do_sample=False)
        b = deployed.generate(ids, max_new_tokens=4, do_sample=False)
    assert a.shape == b.shape == (2, 16)
