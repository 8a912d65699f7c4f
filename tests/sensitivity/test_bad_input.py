"""Bad input to analyze: a clear SensitivityError, and the model is left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hwcost.sensitivity import analyze, direct_table, measured_loss_mse
from torch import nn

from hwcost.errors import SensitivityError
from tests.sensitivity.conftest import tiny_llama


def _fails(message, *args, **kwargs):
    with pytest.raises(SensitivityError) as e:
        analyze(*args, **kwargs)
    assert str(e.value) == message


def test_loss_that_is_not_per_sample(llama64, batches):
    def mean_loss(model, batch):
        return model(input_ids=batch["input_ids"]).logits.mean()

    _fails("loss_fn must return one loss per sample, shape [5], got [] (a mean over the batch is "
           "not per-sample)", llama64, batches, loss_fn=mean_loss)

    def per_token(model, batch):
        return model(input_ids=batch["input_ids"]).logits.mean(-1)

    _fails("loss_fn must return one loss per sample, shape [5], got [5, 16] (a mean over the batch "
           "is not per-sample)", llama64, batches, loss_fn=per_token)


def test_model_without_quantizable_layer(batches):
    model = nn.Sequential(nn.Embedding(64, 8), nn.ReLU())
    _fails("model Sequential has no quantizable layer (nn.Linear or transformers Conv1D)",
           model, batches, loss_fn=lambda m, b: m(b["input_ids"]).sum((1, 2)))


def test_unknown_layer_and_method(llama64, batches):
    _fails("not a quantizable layer of the model: 'model.norm' (quantizable: nn.Linear and Conv1D "
           "modules, 15 found)", llama64, batches, layers=["model.norm"])
    _fails("unknown sensitivity method 'magic'; known: taylor, noise", llama64, batches,
           method="magic")


def test_nan_gradients(llama64, batches):
    def sqrt_of_zero(model, batch):
        logits = model(input_ids=batch["input_ids"]).logits
        # value 0 (finite), but d sqrt(u)/du at u = 0 is inf, times 0: NaN gradients
        return torch.sqrt((logits * 0.0).square().sum((1, 2)))

    with pytest.raises(SensitivityError, match=r"^non-finite gradient \(NaN or inf\) at layer lm_head"):
        analyze(llama64, batches, loss_fn=sqrt_of_zero)
    assert all(p.requires_grad for p in llama64.parameters())  # restored after the error


def test_non_finite_loss_and_vocabulary(llama64, batches):
    _fails("loss_fn returned non-finite losses (NaN or inf)", llama64, batches,
           loss_fn=lambda m, b: m(input_ids=b["input_ids"]).logits.sum((1, 2)) * float("inf"))
    bad = [{"input_ids": torch.full((2, 8), 64)}]
    _fails("token id 64 is outside the model's vocabulary of 64", llama64, bad)
    _fails("token ids must have shape [N, T] with T >= 2, got [2, 1]", llama64,
           [{"input_ids": torch.zeros(2, 1, dtype=torch.long)}])
    _fails("no calibration batches", llama64, [])


def test_batch_dimension_must_come_first(batches):
    class Flattening(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lin = nn.Embedding(64, 8), nn.Linear(8, 1)

        def forward(self, ids):  # drops a token: rows no longer split into samples
            return self.lin(self.emb(ids).reshape(-1, 8)[1:]).sum()[None].expand(ids.shape[0])

    _fails("layer lin: input has 79 rows for a batch of 5 samples; per-sample terms need the batch "
           "dimension first", Flattening(), batches, loss_fn=lambda m, b: m(b["input_ids"]))


def test_tokens_flattened_sample_by_sample_are_regrouped(batches):
    """OPT flattens [B, T, H] to [B*T, H] between its fc layers: the same terms as unflattened."""
    torch.manual_seed(0)
    emb, lin = nn.Embedding(64, 8), nn.Linear(8, 1)

    class Net(nn.Module):
        def __init__(self, flat):
            super().__init__()
            self.emb, self.lin, self.flat = emb, lin, flat

        def forward(self, ids):
            h = self.emb(ids)
            h = h.reshape(-1, 8) if self.flat else h
            return self.lin(h).view(ids.shape[0], -1).square().mean(1)

    from hwcost.sensitivity import per_sample_terms

    loss = lambda m, b: m(b["input_ids"])  # noqa: E731
    flat = per_sample_terms(Net(True), batches, loss, precisions=["int8"], layers=["lin"])
    plain = per_sample_terms(Net(False), batches, loss, precisions=["int8"], layers=["lin"])
    np.testing.assert_allclose(flat.of("lin", "int8"), plain.of("lin", "int8"), rtol=1e-6)
    assert np.abs(plain.of("lin", "int8")).max() > 0


def test_reference_functions_reject_bad_layers(batches):
    model = tiny_llama(torch.float32)
    with pytest.raises(SensitivityError, match="not a quantizable layer of the model: 'model.norm'"):
        measured_loss_mse(model, {"model.norm": "int8"}, batches)
    with pytest.raises(SensitivityError, match="has no quantizable layer"):
        direct_table(nn.Sequential(nn.ReLU()), batches)
