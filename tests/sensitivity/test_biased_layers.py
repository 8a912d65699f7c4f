"""Biased nn.Linear (Qwen2's q/k/v) and GPT-2's biased Conv1D in every precision path: the
Taylor terms against the slow per-sample reference, the noise and Fisher scores against their
definitions, and the emulation against the CPU backend's real kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hwcost.profiles.backends import apply_precisions, get_backend
from hwcost.profiles.precisions import emulation
from hwcost.sensitivity import emulated, per_sample_losses, per_sample_terms, quantizable_layers
from hwcost.sensitivity.layers import weight_matrix
from hwcost.sensitivity.noise import error_variance
from hwcost.sensitivity.taylor import fisher_scorer, noise_scorer

from tests.sensitivity.conftest import tiny_gpt2, tiny_qwen2
from tests.sensitivity.test_taylor import _slow_reference

PRECISIONS = ["bf16", "fp16", "int8", "fp8_e4m3", "fp8_e5m2"]
MODELS = {"qwen2": tiny_qwen2, "gpt2": tiny_gpt2}


def _biased(model) -> list[str]:
    return [n for n, m in quantizable_layers(model).items() if m.bias is not None]


@pytest.mark.parametrize("arch", list(MODELS))
def test_taylor_terms_of_biased_layers_equal_the_slow_reference(arch, ids):
    model = MODELS[arch]()
    assert _biased(model), "the model must have biased layers"
    ids = ids[:3]
    terms = per_sample_terms(model, [ids[:2], ids[2:]], precisions=PRECISIONS)
    slow = _slow_reference(model, ids, PRECISIONS)
    for layer in _biased(model):
        for p in PRECISIONS:
            np.testing.assert_allclose(terms.of(layer, p), slow[(layer, p)], rtol=1e-9,
                                       atol=1e-15)


def _layer_io(model, layer, ids):
    """x, g (the loss' gradient at the layer's output), W and b of one layer on one batch."""
    from hwcost.sensitivity.loss import causal_lm_loss

    mod = dict(model.named_modules())[layer]
    seen = {}
    h = mod.register_forward_hook(lambda _m, a, y: seen.update(x=a[0], y=y))
    loss = causal_lm_loss(model, ids).sum()
    h.remove()
    (g,) = torch.autograd.grad(loss, seen["y"])
    x = seen["x"].detach()
    return (x.reshape(x.shape[0], -1, x.shape[-1]), g.reshape(g.shape[0], -1, g.shape[-1]),
            weight_matrix(mod).detach(), mod.bias.detach())


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("precision", PRECISIONS)
def test_noise_and_fisher_scores_count_the_stored_bias(arch, precision, ids):
    model = MODELS[arch]()
    layer = _biased(model)[0]
    x, g, w, b = _layer_io(model, layer, ids[:4])
    emu = emulation(precision)
    # Fisher: sum g^2 (Y_q - Y)^2 with Y_q the emulated layer, its stored bias included
    dy = emu.linear(x, w, b) - torch.nn.functional.linear(x, w, b)
    want = (g.square() * dy.square()).sum(dim=(1, 2))
    got = fisher_scorer(x, g, w, [emu], b=b)[0]
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9)
    # noise: the bias term is var(db) (sum_t g)^2, present exactly for formats storing it rounded
    with_b = noise_scorer(x, g, w, [emu], b=b)[0]
    y = torch.nn.functional.linear(x, w, b)
    expected = ((error_variance(emu, x) * (g @ w).square()).sum(dim=(1, 2))
                + torch.stack([(error_variance(emu, w) * (g[i].t() @ x[i]).square()).sum()
                               for i in range(x.shape[0])]))
    if emu.rounds_output:
        expected = expected + (error_variance(emu, y) * g.square()).sum(dim=(1, 2))
        expected = expected + g.sum(1).square() @ error_variance(emu, b)
    np.testing.assert_allclose(with_b.numpy(), expected.numpy(), rtol=1e-9)
    assert torch.isfinite(with_b).all() and (with_b > 0).all()


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("precision", ["bf16", "int8", "fp8_e4m3"])
def test_emulated_biased_model_matches_the_cpu_deployment(arch, precision, ids):
    model = MODELS[arch](dtype=torch.float32)
    layers = dict.fromkeys(quantizable_layers(model), precision)
    batches = [ids[:6]]
    ref = per_sample_losses(model, batches).numpy()
    with emulated(model, layers):
        emu = per_sample_losses(model, batches).numpy()
    deployed = apply_precisions(model, layers, get_backend("cpu"))
    real = per_sample_losses(deployed, batches).numpy()
    assert np.isfinite(real).all()
    change = np.abs(emu - ref).max()
    assert change > 0
    # the emulation reproduces the deployed kernels' numbers up to summation order
    assert np.abs(real - emu).max() <= 0.05 * change + 1e-5
