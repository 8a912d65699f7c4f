"""What sensitivity scores is what is deployed: on this CPU, the emulation of each format
reproduces the deployed layer's output, bf16's output rounding included."""

from __future__ import annotations

import pytest
import torch
from hwcost.profiles.backends import get_backend
from hwcost.profiles.precisions import emulation
from torch import nn


@pytest.mark.parametrize(("precision", "max_rel", "min_exact"), [
    ("bf16", 1e-4, 0.99),    # oneDNN bf16 returns a bf16 output: the emulation rounds it too
    ("int8", 1e-6, 0.0),     # int32 accumulation is exact; rescaling differs only in order
])
def test_emulated_layer_matches_the_deployed_kernel(precision, max_rel, min_exact):
    torch.manual_seed(0)
    lin = nn.Linear(256, 384, bias=True)
    x = torch.randn(48, 256)
    deployed = get_backend("cpu").deploy_linear(lin, precision)
    with torch.inference_mode():
        got = deployed(x).float()
        want = emulation(precision).linear(x, lin.weight, lin.bias)
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < max_rel
    assert (got == want).float().mean().item() >= min_exact


def test_bf16_output_rounding_is_part_of_the_emulation():
    emu = emulation("bf16")
    y = torch.randn(1000, dtype=torch.float32)
    assert emu.rounds_output and not emulation("int8").rounds_output
    assert torch.equal(emu.output(y), y.to(torch.bfloat16).float())
