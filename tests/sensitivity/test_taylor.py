"""The Taylor terms against finite differences, a slow per-sample reference, and additivity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hwcost.profiles.precisions import Emulation
from hwcost.sensitivity import (
    analyze,
    causal_lm_loss,
    direct_table,
    emulated,
    per_sample_losses,
    per_sample_terms,
    quantizable_layers,
)
from hwcost.sensitivity.layers import weight_matrix
from hwcost.sensitivity.taylor import shared_input_scales
from torch import nn

from hwcost.precision import Precision
from tests.sensitivity.conftest import tiny_gpt2, tiny_llama


@dataclass(frozen=True)
class SyntheticError(Emulation):
    """A small, smooth, deterministic error ``eps * |t| * sin(37 t + 1)`` (both signs of eps)."""

    eps: float = 1e-6

    def _qdq(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.eps * t.abs() * torch.sin(37.0 * t + 1.0)


def _central_difference(model, batches, config_plus, config_minus):
    with emulated(model, config_plus):
        up = per_sample_losses(model, batches).numpy()
    with emulated(model, config_minus):
        down = per_sample_losses(model, batches).numpy()
    return (up - down) / 2.0


# Llama's RMSNorm computes in float32 even in a float64 model, which adds ~1e-7 relative noise
# downstream: its perturbations must be well above that (eps=1e-2, central differences cancel
# the second order). GPT-2 computes everything in float64 and takes eps=1e-6.
FD_CASES = [("llama", 1e-2, 2e-3, 15), ("gpt2", 1e-6, 1e-6, 9)]
# all layers at once: the third-order remainder grows with the number of layers, so smaller eps
JOINT_CASES = [("llama", 1e-3, 2e-3), ("gpt2", 1e-5, 1e-5)]


@pytest.mark.parametrize(("arch", "eps", "rtol", "n_layers"), FD_CASES, ids=[c[0] for c in FD_CASES])
def test_terms_match_finite_differences_per_layer(batches, arch, eps, rtol, n_layers):
    model = tiny_llama() if arch == "llama" else tiny_gpt2()
    plus, minus = SyntheticError(Precision.FP32, eps=eps), SyntheticError(Precision.FP32, eps=-eps)
    terms = per_sample_terms(model, batches, precisions=[plus])
    assert len(terms.layers) == n_layers  # 2 blocks and the lm_head
    for layer in terms.layers:
        fd = _central_difference(model, batches, {layer: plus}, {layer: minus})
        d = terms.of(layer, "fp32")
        assert np.abs(d).max() > 0
        np.testing.assert_allclose(d, fd, rtol=rtol, atol=rtol * np.abs(fd).max())


@pytest.mark.parametrize(("arch", "eps", "rtol"), JOINT_CASES, ids=[c[0] for c in JOINT_CASES])
def test_first_order_terms_add_up_across_layers(batches, arch, eps, rtol):
    """Quantizing every layer at once changes L_n by the sum of the layers' terms (to first order)."""
    model = tiny_llama() if arch == "llama" else tiny_gpt2()
    plus, minus = SyntheticError(Precision.FP32, eps=eps), SyntheticError(Precision.FP32, eps=-eps)
    terms = per_sample_terms(model, batches, precisions=[plus])
    total = sum(terms.of(layer, "fp32") for layer in terms.layers)
    fd = _central_difference(model, batches, dict.fromkeys(terms.layers, plus),
                             dict.fromkeys(terms.layers, minus))
    np.testing.assert_allclose(total, fd, rtol=rtol, atol=rtol * np.abs(fd).max())


def _slow_reference(model, ids, precisions):
    """d_{l,n}(p) by an explicit loop over samples: one forward and autograd.grad per sample,
    the error terms written out with F.linear exactly as in the metric's definition."""
    from hwcost.profiles.precisions import emulation

    layers = quantizable_layers(model)
    out = {(name, p): [] for name in layers for p in precisions}
    for n in range(ids.shape[0]):
        captured: dict[str, tuple] = {}

        def hook(name, store=captured):
            def f(_m, args, y):
                store[name] = (args[0], y)
            return f

        handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
        loss = causal_lm_loss(model, ids[n:n + 1])[0]
        for h in handles:
            h.remove()
        names = list(captured)
        grads = torch.autograd.grad(loss, [captured[k][1] for k in names])
        for name, g in zip(names, grads):
            x = captured[name][0].detach()
            w = weight_matrix(layers[name]).detach()
            for p in precisions:
                emu = emulation(p)
                b = layers[name].bias
                y_hp = nn.functional.linear(x, w, b)
                dy = (nn.functional.linear(emu.activation(x) - x, w)
                      + nn.functional.linear(x, emu.weight(w) - w)
                      + (emu.output(y_hp) - y_hp))  # bf16 kernels return a rounded output
                if b is not None:
                    dy = dy + (emu.bias(b) - b)  # ... and store the bias rounded
                out[(name, p)].append(float((g * dy).sum()))
    return {k: np.array(v) for k, v in out.items()}


def test_batched_terms_equal_slow_per_sample_reference(llama64, ids):
    precisions = ["int8", "fp8_e4m3", "bf16"]
    ids = ids[:7]
    batches = [ids[:4], ids[4:]]  # uneven batches, tensors instead of dicts
    terms = per_sample_terms(llama64, batches, precisions=precisions)
    slow = _slow_reference(llama64, ids, precisions)
    table = analyze(llama64, batches, precisions=precisions)
    # layers reading one tensor (q/k/v, gate/up) share one quantization: their rows carry
    # their share of the group's one noise source, a per-(layer, precision) factor
    scale = shared_input_scales(terms)
    assert terms.groups and scale
    for layer in terms.layers:
        for i, p in enumerate(precisions):
            np.testing.assert_allclose(terms.of(layer, p), slow[(layer, p)], rtol=1e-9, atol=1e-15)
            row = table.get(layer, p)
            d2 = slow[(layer, p)] ** 2 * scale.get((layer, i), 1.0)
            assert row.n_samples == 7
            assert row.loss_mse == pytest.approx(d2.mean(), rel=1e-9)
            assert row.stderr == pytest.approx(d2.std(ddof=1) / np.sqrt(7), rel=1e-9)


def test_predicted_sums_are_exactly_additive(llama64, batches):
    table = analyze(llama64, batches, precisions=["bf16", "int8", "fp8_e4m3"])
    layers = table.layers
    a = {layer: "int8" for layer in layers[::2]}
    b = {layer: "fp8_e4m3" for layer in layers[1::2]}
    assert table.predict({**a, **b}) == pytest.approx(table.predict(a) + table.predict(b), rel=1e-14)
    expected = sum(table.get(layer, "int8").loss_mse for layer in layers)
    assert table.predict(dict.fromkeys(layers, "int8")) == pytest.approx(expected, rel=1e-14)
    assert table.predict({}) == 0.0
    assert table.predict(dict.fromkeys(layers, "fp32")) == 0.0  # the reference itself


def test_taylor_agrees_with_direct_measurement(llama64, batches):
    precs = ["int8", "fp8_e4m3"]
    taylor = analyze(llama64, batches, precisions=precs)
    direct = direct_table(llama64, batches, precisions=precs)
    assert [(r.layer, r.precision) for r in taylor.rows] == [(r.layer, r.precision) for r in direct.rows]
    # small errors: first order is close to the measured change, layer by layer, for layers
    # that quantize their own input (the direct table quantizes one layer at a time, so it
    # does not see the one shared quantization that q/k/v and gate/up rows are scaled to)
    shared = {g for group in per_sample_terms(llama64, batches, precisions=precs).groups
              for g in group}
    own = [i for i, r in enumerate(taylor.rows) if r.layer not in shared]
    assert len(own) >= 10
    t = np.array([taylor.rows[i].loss_mse for i in own])
    d = np.array([direct.rows[i].loss_mse for i in own])
    np.testing.assert_allclose(t, d, rtol=0.1)


def test_conv1d_layers_of_gpt2(ids):
    model = tiny_gpt2()
    layers = quantizable_layers(model)
    assert "transformer.h.0.attn.c_attn" in layers and "transformer.h.1.mlp.c_proj" in layers
    batches = [ids[:6], ids[6:]]
    taylor = analyze(model, batches, precisions=["int8"], layers=list(layers))
    direct = direct_table(model, batches, precisions=["int8"], layers=list(layers))
    for rt, rd in zip(taylor.rows, direct.rows):
        assert rt.loss_mse == pytest.approx(rd.loss_mse, rel=0.1)


def test_noise_model_is_close_to_actual_errors(llama64, batches):
    precs = ["int8", "fp8_e4m3"]
    taylor = analyze(llama64, batches, precisions=precs)
    noise = analyze(llama64, batches, precisions=precs, method="noise")
    assert noise.method == "noise"
    ratio = np.array([n.loss_mse / t.loss_mse for n, t in zip(noise.rows, taylor.rows)])
    # an expectation over rounding noise, not the actual rounding: same order of magnitude
    assert np.median(ratio) == pytest.approx(1.0, abs=0.5)
    assert ((ratio > 0.1) & (ratio < 10)).all()


def test_analyze_leaves_the_model_as_it_was(batches):
    model = tiny_llama(torch.float32)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analyze(model, batches, precisions=["int8"])
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_selected_layers_and_custom_loss():
    """Any model with a per-sample loss: a plain MLP regression, two of its layers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    model = model.double()
    x, y = torch.randn(20, 8, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)

    def loss_fn(m, batch):
        xb, yb = batch
        return (m(xb) - yb).square().squeeze(1)

    batches = [(x[:10], y[:10]), (x[10:], y[10:])]
    table = analyze(model, batches, loss_fn=loss_fn, precisions=["int8"], layers=["0", "4"])
    assert table.layers == ["0", "4"]
    direct = direct_table(model, batches, loss_fn=loss_fn, precisions=["int8"], layers=["0", "4"])
    for rt, rd in zip(table.rows, direct.rows):
        assert rt.loss_mse == pytest.approx(rd.loss_mse, rel=0.1)
