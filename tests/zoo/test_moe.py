"""MoE blocks: the experts of a block are one grouped slot (one precision for all of them),
the router is never quantized, the Taylor terms of the slot are right, the deployed experts
run real kernels that match the emulation, and the MAC objective counts active experts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hwcost.profiles.backends import deployed, get_backend
from hwcost.profiles.experts import DeployedExperts
from hwcost.profiles.partition import partition
from hwcost.sensitivity import emulated, per_sample_losses, per_sample_terms

from hwcost.precision import Precision
from tests.sensitivity.test_taylor import SyntheticError
from tests.zoo.families import mixtral, qwen3_moe

FAMILIES = {"mixtral": mixtral, "qwen3_moe": qwen3_moe}
EXPERTS = "model.layers.1.mlp.experts"


def _model(name, dtype=torch.float32):
    model, _inputs, extras = FAMILIES[name]()
    for m in model.modules():  # grouped_mm has no float64 kernel; the eager loop does
        cfg = getattr(m, "config", None)
        if cfg is not None:
            cfg._experts_implementation = "eager"
    return model.to(dtype).eval(), extras["calibration"][:2]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_experts_are_one_slot_and_the_router_none(name):
    model, _ = _model(name)
    part = partition(model, {"input_ids": torch.arange(16)[None], "use_cache": False})
    moe = [p for p in part.pieces if EXPERTS in p.layer_names]
    assert len(moe) == 1 and moe[0].layer_names == (EXPERTS,)
    assert not any("gate" in n and "proj" not in n for n in part.layer_names())  # no router
    slot = moe[0].slots[0]
    assert (slot.experts, slot.active, slot.in_features, slot.inner) == (4, 2, 64, 64 if
                                                                         name == "qwen3_moe"
                                                                         else 128)
    per_expert = 3 * slot.in_features * slot.inner
    assert slot.macs_per_token == 2 * per_expert  # top-2: active experts only
    assert slot.weight_params == 4 * per_expert  # every expert is stored


@pytest.mark.parametrize("name", list(FAMILIES))
def test_taylor_terms_of_the_experts_slot_match_finite_differences(name):
    model, batches = _model(name, torch.float64)
    eps = 1e-4  # RMSNorm computes in float32: perturbations well above its rounding
    plus, minus = SyntheticError(Precision.FP32, eps=eps), SyntheticError(Precision.FP32, eps=-eps)
    terms = per_sample_terms(model, batches, precisions=[plus], layers=[EXPERTS])
    with emulated(model, {EXPERTS: plus}):
        up = per_sample_losses(model, batches).numpy()
    with emulated(model, {EXPERTS: minus}):
        down = per_sample_losses(model, batches).numpy()
    fd = (up - down) / 2
    np.testing.assert_allclose(terms.of(EXPERTS, "fp32"), fd, rtol=2e-2,
                               atol=2e-2 * np.abs(fd).max())


@pytest.mark.parametrize("precision", ["bf16", "int8", "fp8_e4m3"])
def test_deployed_experts_run_real_kernels_and_match_the_emulation(precision):
    model, batches = _model("mixtral")
    backend = get_backend("cpu")
    ref = per_sample_losses(model, batches).numpy()
    with emulated(model, {EXPERTS: precision}):
        emu = per_sample_losses(model, batches).numpy()
    with deployed(model, {EXPERTS: precision}, backend) as m:
        layer = m.get_submodule(EXPERTS)
        assert isinstance(layer, DeployedExperts)
        assert layer.weight_dtype == backend.deployment(precision).weight_dtype
        assert len(layer.experts) == 4
        real = per_sample_losses(m, batches).numpy()
    assert type(model.get_submodule(EXPERTS)).__name__ == "MixtralExperts"  # restored
    change = np.abs(emu - ref).max()
    assert change > 0
    assert np.abs(real - emu).max() <= 0.05 * change + 1e-6
