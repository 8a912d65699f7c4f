"""Sensitivity scores the deployed shared activation quantization: layers that read one tensor
(q/k/v) are one noise source, and the table's entries for the group add up to the loss MSE of
that deployment (real kernels, one quantize call)."""

from __future__ import annotations

import numpy as np
import torch
from hwcost.profiles.backends import deployed
from hwcost.sensitivity.loss import per_sample_losses
from hwcost.sensitivity.taylor import per_sample_terms, table_from_terms

from tests.sensitivity.conftest import tiny_llama

QKV = tuple(f"model.layers.0.self_attn.{p}_proj" for p in "qkv")


def test_qkv_is_one_group_and_its_sensitivity_matches_the_deployed_loss_mse():
    model = tiny_llama(torch.float32, seed=3)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 64, (48, 16), generator=gen)
    batches = [ids[i:i + 16] for i in range(0, 48, 16)]
    terms = per_sample_terms(model, batches, precisions=["int8"], layers=list(QKV))
    assert terms.groups == (QKV,)
    table = table_from_terms(terms, "taylor", squared=True)
    predicted = sum(r.loss_mse for r in table.rows)
    independent = sum(float(np.square(terms.values[n][0]).mean()) for n in QKV)

    ref = per_sample_losses(model, batches)
    with deployed(model, dict.fromkeys(QKV, "int8"), "cpu") as m:
        shares = {id(m.get_submodule(n).share) for n in QKV}
        assert len(shares) == 1 and None not in {m.get_submodule(n).share for n in QKV}
        got = per_sample_losses(m, batches)
    true = float(((got - ref) ** 2).mean())
    # the group's entries add up to its one-noise-source MSE, which is what the deployment does
    assert abs(predicted / true - 1) < 0.25, (predicted, true, independent)
    assert abs(predicted / true - 1) < abs(independent / true - 1), (predicted, true, independent)
