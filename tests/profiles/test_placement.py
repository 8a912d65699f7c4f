"""Placement: batches follow the model's device in every loss helper; large layers are scored
in chunks of rows with the same result as the whole weight at once."""

from __future__ import annotations

import torch
from hwcost.profiles.placement import baseline_dtype, follow_model, model_device, to_device
from hwcost.profiles.precisions import emulation
from hwcost.sensitivity import taylor
from hwcost.sensitivity.loss import per_sample_losses
from hwcost.sensitivity.taylor import taylor_scorer
from torch import nn


class _Recorder(nn.Module):
    """A model living on the meta device (a stand-in for a card this machine lacks)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, device="meta")


def test_batches_follow_the_model_device():
    model = _Recorder()
    assert model_device(model) == torch.device("meta")
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "n": 3, "x": [torch.zeros(1)]}
    moved = follow_model(batch, model)
    assert moved["input_ids"].device.type == "meta" and moved["x"][0].device.type == "meta"
    assert moved["n"] == 3
    cpu_t = torch.zeros(2)
    assert to_device(cpu_t, "cpu") is cpu_t  # already there: no copy

    seen = []

    def loss_fn(m, b):
        seen.append(b.device.type)
        return torch.zeros(b.shape[0])

    per_sample_losses(model, [torch.ones(2, 5, dtype=torch.long)], loss_fn)
    assert seen == ["meta"]


def test_baseline_dtype_per_device_kind():
    assert baseline_dtype("cpu") == torch.float32
    assert baseline_dtype("cpu", "bf16") == torch.bfloat16
    assert baseline_dtype("cuda") == torch.bfloat16 and baseline_dtype("hpu") == torch.bfloat16


def test_large_layers_are_scored_in_row_chunks_with_the_same_result(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 32, generator=gen, dtype=torch.float64)
    g = torch.randn(3, 5, 300, generator=gen, dtype=torch.float64)
    w = torch.randn(300, 32, generator=gen, dtype=torch.float64)
    emus = [emulation(p) for p in ("bf16", "int8", "fp8_e4m3")]
    whole = taylor_scorer(x, g, w, emus)
    monkeypatch.setattr(taylor, "CHUNK_ELEMENTS", 1)
    assert taylor._row_chunks(x, g, w, emus) < w.shape[0]  # the budget now forces chunks
    chunked = taylor_scorer(x, g, w, emus)
    torch.testing.assert_close(chunked, whole, rtol=1e-9, atol=1e-12)
    # the direct definition: <Q(W) - W, sum_t g_t^T x_t> per sample, plus the input terms
    ref = torch.stack([
        ((e.activation(x) - x) * (g @ w)).sum((1, 2))
        + ((e.output(x @ w.t()) - x @ w.t()) * g).sum((1, 2)) * e.rounds_output
        + torch.einsum("bto,bti,oi->b", g, x, e.weight(w) - w) for e in emus])
    torch.testing.assert_close(chunked, ref, rtol=1e-9, atol=1e-12)
