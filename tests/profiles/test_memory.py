"""Memory up front: sizes, the refusal line, the calibration batch that keeps the sensitivity
step within about 1.5x the weights, and the per-step formula's shape."""

from __future__ import annotations

import pytest
import torch
from hwcost.profiles.memory import (
    GiB,
    batch_within_budget,
    calib_batch_size,
    parse_bytes,
    require_fits,
    saved_per_token,
    step_peaks,
)

from hwcost.errors import DoesNotFit, ModelLoadError

LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16,
            "vocab_size": 32000, "num_attention_heads": 16, "num_key_value_heads": 8}


def test_sizes_and_the_one_line_refusal():
    assert parse_bytes("8GiB") == 8 * 2**30 and parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes("1000") == 1000
    with pytest.raises(ModelLoadError, match="is not a size"):
        parse_bytes("lots")
    assert require_fits("m", 1000, torch.bfloat16, "cpu", (4000, "MemAvailable")) == 2000
    with pytest.raises(DoesNotFit, match=r"^model big needs 3\.73 GiB for its 1000\.0 M weights "
                                         r"in float32; cuda device has 1\.00 GiB free \(test\)$"):
        require_fits("big", 10**9, torch.float32, "cuda device", (2**30, "test"))
    assert require_fits("m", 10**12, torch.float32, "x", (None, "unknown")) == 4 * 10**12


def test_calibration_batch_keeps_activations_within_half_the_weights():
    per_token = saved_per_token(LLAMA_1B, 4)
    weights = 953_000_000 * 4
    b = batch_within_budget(per_token, weights, 128)
    assert b == 4 and b * 128 * per_token <= weights / 2 < (b + 1) * 128 * per_token
    assert batch_within_budget(per_token, 10**6, 128) == 2  # the 1 GiB floor for small models
    assert batch_within_budget(per_token, 10**15, 128) == 8  # never more than the default
    from tests.factories import tiny

    model, _ = tiny()
    assert calib_batch_size(model, 128) == 8
    assert calib_batch_size(torch.nn.Linear(4, 4), 128) == 8  # no config: the default


def test_step_peaks_grow_with_the_model_and_put_the_weights_first():
    small = step_peaks({**LLAMA_1B, "hidden_size": 1024, "intermediate_size": 2816}, 300_000_000)
    big = step_peaks(LLAMA_1B, 953_000_000)
    for step, v in big.items():
        assert v >= 953_000_000 * 4 and v > small[step]
    assert big["sensitivity"] == max(big.values()) or big["validate"] == max(big.values())
    assert max(big.values()) / GiB < 8  # the 1B fits this 24 GiB machine with room
