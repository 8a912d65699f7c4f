"""Backends: every available backend deploys each of its precisions with a real low-precision
kernel whose output matches the registry's emulation, weights stored in the low dtype."""

from __future__ import annotations

import pytest
import torch
from hwcost.profiles.backends import (
    DeployedLinear,
    all_backends,
    apply_precisions,
    backend_kinds,
    get_backend,
)
from hwcost.profiles.precisions import emulation
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hwcost.errors import BackendUnavailable, NoSuchDevice, UnknownLayer, UnknownPrecision
from hwcost.precision import CANDIDATES, WEIGHT_ONLY, Precision

CASES = [(b.kind, p) for b in all_backends() for p in b.precisions]


def _usable(kind: str):
    backend = get_backend(kind)
    ok, why = backend.available()
    if not ok:
        pytest.skip(f"{kind} backend unavailable: {why}")
    return backend


class OpLog(TorchDispatchMode):
    """Records every aten op with the dtypes of its tensor arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[torch.dtype, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat = [*args, *(kwargs or {}).values()]
        dtypes = tuple(a.dtype for a in flat if isinstance(a, torch.Tensor))
        self.calls.append((func.__name__, dtypes))
        return func(*args, **(kwargs or {}))


FLOAT_MM = ("linear", "addmm", "mm")
# The matmul op each precision must reach, and the dtype of its (first two) operands.
MATMUL = {
    ("cpu", Precision.FP32): (FLOAT_MM, torch.float32),
    ("cpu", Precision.BF16): (FLOAT_MM, torch.bfloat16),
    ("cpu", Precision.INT8): ("_int_mm", torch.int8),
    ("cpu", Precision.FP8_E4M3): ("_scaled_mm", torch.float8_e4m3fn),
    # weight-only: bf16 activations against int8 / packed int4 weights
    ("cpu", Precision.INT8_WO): ("_weight_int8pack_mm", (torch.bfloat16, torch.int8)),
    ("cpu", Precision.INT4_WO): ("_weight_int4pack_mm_for_cpu", (torch.bfloat16, torch.uint8)),
    ("cuda", Precision.FP8_WO): (FLOAT_MM, torch.bfloat16),
    ("cuda", Precision.BF16): (FLOAT_MM, torch.bfloat16),
    ("cuda", Precision.INT8): ("_int_mm", torch.int8),
    ("cuda", Precision.FP8_E4M3): ("_scaled_mm", torch.float8_e4m3fn),
    ("hpu", Precision.BF16): (FLOAT_MM, torch.bfloat16),
    ("hpu", Precision.FP8_E4M3): ("fp8_gemm_v2", torch.float8_e4m3fn),
}


def test_registry_kinds_and_cpu_precisions():
    assert backend_kinds() == ("cpu", "cuda", "hpu")
    for b in all_backends():
        assert (set(b.precisions) == set(CANDIDATES[b.kind]) | set(WEIGHT_ONLY.get(b.kind, ()))
                or b.kind == "cuda")
    assert get_backend("cpu").precisions == CANDIDATES["cpu"] + WEIGHT_ONLY["cpu"]
    assert get_backend("cpu").available()[0]
    assert get_backend("cpu").deployment("fp8_e4m3").emulated


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(NoSuchDevice, match="unknown device kind 'tpu'; known: cpu, cuda, hpu"):
        get_backend("tpu")


def test_unavailable_backends_say_why():
    cuda, hpu = get_backend("cuda"), get_backend("hpu")
    if not torch.cuda.is_available():
        assert cuda.available() == (False, "torch.cuda.is_available() is False"
                                    + ("" if torch.version.cuda else
                                       " (this torch is a CPU-only build)"))
        with pytest.raises(BackendUnavailable, match="backend cuda is unavailable: torch.cuda"):
            cuda.deploy_linear(nn.Linear(16, 16), "bf16")
    ok, why = hpu.available()
    if not ok:
        assert why.startswith(("habana_frameworks not installed", "habana_frameworks found no"))


@pytest.mark.parametrize(("kind", "precision"), CASES, ids=[f"{k}-{p.value}" for k, p in CASES])
def test_deployed_matches_emulation_and_stores_low_precision(kind, precision):
    backend = _usable(kind)
    torch.manual_seed(0)
    dev = backend.device
    layer = nn.Linear(256, 192).to(dev)
    x = torch.randn(3, 40, 256, device=dev) * 2.0
    if kind != "cpu":  # accelerators run their bf16 baseline on bf16 activations
        x = x.to(torch.bfloat16)
    deployed = backend.deploy_linear(layer, precision)
    dep = backend.deployment(precision)

    assert isinstance(deployed, DeployedLinear)
    assert deployed.weight.dtype == dep.weight_dtype
    assert deployed.weight.device.type == dev.type
    assert deployed.weight.element_size() == torch.tensor([], dtype=dep.weight_dtype).element_size()
    # no full-precision copy of the weights hides in the module (int4: two values a byte)
    per_byte = 2 if precision is Precision.INT4_WO else 1
    assert deployed.weight.numel() * per_byte == layer.weight.numel()
    big = [t for t in deployed.state_dict().values()
           if t.numel() * per_byte >= layer.weight.numel()]
    assert [t.dtype for t in big] == [dep.weight_dtype]

    with torch.inference_mode():
        y = deployed(x)
        emu = emulation(precision, fp8_max=backend.fp8_max())
        ref = emu.linear(x.float(), layer.weight.float(), layer.bias.float())
    assert y.shape == (3, 40, 192) and y.dtype == x.dtype
    err = ((y.float() - ref).norm() / ref.norm()).item()
    assert err <= emu.rel_tol, f"{kind}/{precision.value}: rel err {err:.3g} > {emu.rel_tol}"


@pytest.mark.parametrize(("kind", "precision"), CASES, ids=[f"{k}-{p.value}" for k, p in CASES])
def test_deployed_layer_runs_the_low_precision_kernel(kind, precision):
    backend = _usable(kind)
    deployed = backend.deploy_linear(nn.Linear(64, 32).to(backend.device), precision)
    x = torch.randn(32, 64, device=backend.device)
    with torch.inference_mode(), OpLog() as log:
        deployed(x)
    op, dtype = MATMUL[(kind, precision)]
    ops = op if isinstance(op, tuple) else (op,)
    hits = [d for name, d in log.calls if name.split(".")[0] in ops]
    assert hits, f"{op} not called; ops: {[n for n, _ in log.calls]}"
    assert hits[0][:2] == (dtype if isinstance(dtype, tuple) else (dtype, dtype))


def test_int8_is_exact_integer_arithmetic_per_token():
    """int8 output is the int32 product of the same integers the emulation rounds to, and each
    token is quantized on its own (an outlier token does not coarsen the others)."""
    backend = get_backend("cpu")
    torch.manual_seed(1)
    layer = nn.Linear(128, 64)
    deployed = backend.deploy_linear(layer, "int8")
    x = torch.randn(8, 128)
    x[3] *= 1000.0
    with torch.inference_mode():
        y = deployed(x)
        single = torch.cat([deployed(x[i:i + 1]) for i in range(8)])
        emu = emulation("int8").linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(y, single, rtol=0, atol=0)
    torch.testing.assert_close(y, emu, rtol=1e-5, atol=1e-4 * emu.abs().max().item())


def test_conv1d_is_deployed_with_its_weight_transposed():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(2)
    conv = Conv1D(96, 64)  # nf=96 outputs, nx=64 inputs; weight [64, 96]
    nn.init.normal_(conv.bias)
    x = torch.randn(2, 5, 64)
    backend = get_backend("cpu")
    for p in backend.precisions:
        with torch.inference_mode():
            y = backend.deploy_linear(conv, p)(x)
            emu = emulation(p)
            ref = emu.linear(x, conv.weight.t(), conv.bias)
        assert ((y - ref).norm() / ref.norm()).item() <= emu.rel_tol


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(3)
    return LlamaForCausalLM(cfg).eval()


def test_apply_precisions_replaces_named_layers_in_a_copy():
    model = _tiny_llama()
    ids = torch.randint(0, 64, (1, 16))
    plan = {"model.layers.0.mlp.down_proj": "int8", "model.layers.1.self_attn.q_proj": "bf16",
            "model.layers.1.mlp.up_proj": Precision.FP8_E4M3}
    deployed = apply_precisions(model, plan, "cpu")
    for name, p in plan.items():
        layer = deployed.get_submodule(name)
        assert isinstance(layer, DeployedLinear) and layer.precision == Precision(p)
        assert isinstance(model.get_submodule(name), nn.Linear)  # the original is untouched
    assert isinstance(deployed.get_submodule("model.layers.0.mlp.up_proj"), nn.Linear)
    with torch.inference_mode():
        a, b = model(ids).logits, deployed(ids).logits
    assert ((a - b).norm() / a.norm()).item() < 0.1
    same = apply_precisions(model, {}, get_backend("cpu"))
    with torch.inference_mode():
        torch.testing.assert_close(same(ids).logits, a)


def test_apply_precisions_rejects_bad_names_and_precisions():
    model = _tiny_llama()
    cpu = get_backend("cpu")
    with pytest.raises(UnknownLayer, match="no layer named 'model.layers.9.mlp' in LlamaForCausalLM"):
        apply_precisions(model, {"model.layers.9.mlp": "int8"}, cpu)
    with pytest.raises(UnknownLayer, match="layer 'model.norm' is a LlamaRMSNorm, not a linear"):
        cpu.apply_precisions(model, {"model.norm": "bf16"})
    with pytest.raises(UnknownPrecision, match="backend cpu cannot deploy fp16; it has: "
                                               "fp32, bf16, int8, fp8_e4m3"):
        apply_precisions(model, {"lm_head": "fp16"}, cpu)
    with pytest.raises(UnknownPrecision, match="unknown precision 'int4'"):
        apply_precisions(model, {"lm_head": "int4"}, cpu)


def test_sequential_names_are_relative_to_the_module():
    mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    out = apply_precisions(mlp, {"0": "bf16", "2": "int8"}, "cpu")
    assert out[0].weight.dtype == torch.bfloat16 and out[2].weight.dtype == torch.int8
    assert out(torch.randn(4, 32)).dtype == torch.float32


def _storages(model: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}


def test_deployed_swaps_in_place_and_restores_the_originals():
    from hwcost.profiles.backends import deployed

    model = _tiny_llama()
    ids = torch.randint(0, 64, (1, 16))
    plan = {"model.layers.0.mlp.down_proj": "int8", "lm_head": "bf16"}
    originals = {n: model.get_submodule(n) for n in plan}
    with torch.inference_mode():
        before = model(ids).logits
    with deployed(model, plan, "cpu") as m:
        assert m is model  # no copy: the same object, its layers swapped
        assert isinstance(model.get_submodule("lm_head"), DeployedLinear)
        assert model.get_submodule("model.layers.0.mlp.down_proj").weight.dtype == torch.int8
        with torch.inference_mode():
            during = model(ids).logits
    for n, layer in originals.items():
        assert model.get_submodule(n) is layer
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, before)
    assert not torch.equal(during, before)


def test_deployed_restores_on_error_and_checks_before_building():
    from hwcost.profiles.backends import deployed

    model = _tiny_llama()
    q = model.get_submodule("model.layers.0.self_attn.q_proj")
    with pytest.raises(RuntimeError, match="inside"), deployed(
            model, {"model.layers.0.self_attn.q_proj": "int8"}, "cpu"):
        raise RuntimeError("inside")
    assert model.get_submodule("model.layers.0.self_attn.q_proj") is q
    with pytest.raises(UnknownLayer), deployed(model, {"lm_head": "int8", "nope": "int8"}, "cpu"):
        pass
    assert isinstance(model.lm_head, nn.Linear)


def test_views_share_every_weight_they_do_not_deploy():
    model = _tiny_llama()
    view = apply_precisions(model, {"model.layers.1.mlp.up_proj": "int8"}, "cpu")
    up = model.get_submodule("model.layers.1.mlp.up_proj").weight.untyped_storage().data_ptr()
    assert _storages(model) - _storages(view) == {up}  # only the deployed layer differs
    # a layer already stored in its float precision is its own deployment: nothing is built
    same = apply_precisions(model, dict.fromkeys(["lm_head", "model.layers.0.mlp.up_proj"],
                                                 "fp32"), "cpu")
    assert same is model
    bf = _tiny_llama().to(torch.bfloat16)
    assert apply_precisions(bf, {"lm_head": "bf16"}, "cpu") is bf
