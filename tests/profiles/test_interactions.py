"""Deployment interactions: one input conversion per shared tensor, float chains without
casts, and the compiled deployment (profiles/backends/interact.py)."""

from __future__ import annotations

import pytest
import torch
from hwcost.profiles.backends import apply_precisions, get_backend
from hwcost.profiles.backends.interact import compile_deployed, link_deployed, trace_dataflow
from torch.utils._python_dispatch import TorchDispatchMode

from hwcost.device import local_device
from tests.factories import tiny


class OpLog(TorchDispatchMode):
    """Counts every ATen op that runs (the kernels a forward dispatches)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _llama():
    model, inputs = tiny(2)
    from hwcost.shape import parse_shape

    return model.eval(), inputs(parse_shape("batch=2,seq=8"), 0)


def _linear_names(model, prefix=""):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and n.startswith(prefix)]


def test_shared_int8_activation_is_one_quantize_call_for_qkv():
    model, inp = _llama()
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 8, 32)
    cos_sin = model.model.rotary_emb(x, torch.arange(8).unsqueeze(0))
    qkv = {n: "int8" for n in ("q_proj", "k_proj", "v_proj")}
    shared = apply_precisions(attn, qkv, "cpu")
    alone = apply_precisions(attn, qkv, "cpu")
    for n in qkv:  # the same layers, unlinked: each quantizes its own input
        alone.get_submodule(n).share = None
    logs = {}
    outs = {}
    for tag, mod in (("shared", shared), ("alone", alone)):
        with torch.inference_mode(), OpLog() as log:
            outs[tag] = mod(x, position_embeddings=cos_sin, attention_mask=None)[0]
        logs[tag] = log.counts
    # quantize_int8_rows rounds once per call; the weights were quantized at deploy time
    assert logs["shared"]["aten.round"] == 1
    assert logs["alone"]["aten.round"] == 3
    assert logs["shared"]["aten._int_mm"] == logs["alone"]["aten._int_mm"] == 3
    assert torch.equal(outs["shared"], outs["alone"])  # sharing changes no number
    assert shared.q_proj.share is shared.k_proj.share is shared.v_proj.share


def test_whole_model_one_quantization_per_shared_input():
    model, inp = _llama()
    layers = _linear_names(model, "model.")
    deployed = apply_precisions(model, dict.fromkeys(layers, "int8"), "cpu")
    with torch.inference_mode(), OpLog() as log:
        deployed(**inp)
    # per block: q/k/v share one, o_proj one, gate/up share one, down one
    assert log.counts["aten.round"] == 4 * 2
    assert log.counts["aten._int_mm"] == 7 * 2


def test_different_formats_do_not_share():
    model, _ = _llama()
    mlp = model.model.layers[0].mlp
    d = apply_precisions(mlp, {"gate_proj": "int8", "up_proj": "fp8_e4m3"}, "cpu")
    assert d.gate_proj.share is None and d.up_proj.share is None


def test_bf16_chain_keeps_bf16_between_layers_and_casts_at_the_boundary():
    model, inp = _llama()
    flow = trace_dataflow(model, inp)
    mlp0 = "model.layers.0.mlp"
    assert flow.feeds[f"{mlp0}.gate_proj"] == {f"{mlp0}.down_proj"}
    assert f"{mlp0}.down_proj" in flow.escapes  # it feeds the residual stream
    assert "model.layers.0.self_attn.v_proj" in flow.escapes  # attention needs one dtype
    layers = _linear_names(model, "model.")
    deployed = apply_precisions(model, dict.fromkeys(layers, "bf16"), "cpu", flow)
    seen = {}
    hooks = [deployed.get_submodule(n).register_forward_hook(
        lambda m, a, y, n=n: seen.__setitem__(n, (a[0].dtype, y.dtype)))
        for n in (f"{mlp0}.gate_proj", f"{mlp0}.down_proj", "model.layers.0.self_attn.q_proj")]
    with torch.inference_mode():
        out = deployed(**inp).logits
    for h in hooks:
        h.remove()
    assert seen[f"{mlp0}.gate_proj"] == (torch.float32, torch.bfloat16)  # stays bf16
    assert seen[f"{mlp0}.down_proj"] == (torch.bfloat16, torch.float32)  # cast at the boundary
    assert seen["model.layers.0.self_attn.q_proj"][1] == torch.float32
    ref = model(**inp).logits
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    # a boundary inside the chain: down in fp32, so gate/up hand it fp32
    mixed = dict.fromkeys(layers, "bf16") | {f"{mlp0}.down_proj": "fp32"}
    d2 = apply_precisions(model, mixed, "cpu", flow)
    assert d2.get_submodule(f"{mlp0}.gate_proj").keep_dtype is None
    assert d2.get_submodule("model.layers.1.mlp.gate_proj").keep_dtype == torch.bfloat16
    with torch.inference_mode():
        d2(**inp)


def test_gpt2_conv1d_chain():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2,
                                       n_positions=32)).eval()
    inp = {"input_ids": torch.randint(0, 64, (1, 8))}
    flow = trace_dataflow(model, inp)
    assert flow.feeds["transformer.h.0.mlp.c_fc"] == {"transformer.h.0.mlp.c_proj"}
    assert "transformer.h.0.mlp.c_fc" not in flow.escapes
    names = ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    d = apply_precisions(model, dict.fromkeys(names, "bf16"), "cpu", flow)
    links = link_deployed({n: d.get_submodule(n) for n in names}, flow)
    assert links.chained == ("transformer.h.0.mlp.c_fc",)
    with torch.inference_mode():
        assert d(**inp).logits.dtype == torch.float32


def test_compiled_deployment_has_its_own_device_key():
    eager, compiled = local_device("cpu"), local_device("cpu", deployment="compiled")
    assert eager.fingerprint != compiled.fingerprint
    assert compiled.software["deployment"] == "compiled-linked"
    assert eager.software["deployment"] == "eager-linked"


@pytest.mark.slow
def test_compiled_deployment_matches_eager():
    model, inp = _llama()
    mlp = model.model.layers[0].mlp
    d = apply_precisions(mlp, {"gate_proj": "int8", "up_proj": "int8", "down_proj": "bf16"},
                         get_backend("cpu"))
    x = torch.randn(2, 8, 32)
    with torch.inference_mode():
        want = d(x)
        got = compile_deployed(d)(x)
    assert torch.allclose(got, want, rtol=2e-2, atol=2e-2)
