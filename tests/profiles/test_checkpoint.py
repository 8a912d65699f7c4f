"""Checkpoint digests and quantizer keys: equal weights hash equal, other weights do not;
the quantizer key is canonical and round-trips."""

from __future__ import annotations

import pytest
import torch
from hwcost.profiles.checkpoint import checkpoint_digest

from hwcost.errors import HwcostError
from hwcost.quantizer import DEFAULT, GAUDI2, Quantizer, parse_quantizer
from tests.factories import tiny, tiny_finetuned


def test_digest_follows_the_weights_not_the_object():
    a, _ = tiny()
    b, _ = tiny()
    assert checkpoint_digest(a) == checkpoint_digest(b)  # same weights, another instance
    assert checkpoint_digest(tiny_finetuned()[0]) != checkpoint_digest(a)
    name, p = next(iter(a.named_parameters()))
    with torch.no_grad():
        p.view(-1)[-1] += 1.0  # the last element is always sampled
    assert checkpoint_digest(a) != checkpoint_digest(b), name


def test_digest_of_bf16_weights_does_not_depend_on_the_load_dtype():
    m, _ = tiny()
    m = m.to(torch.bfloat16)
    d = checkpoint_digest(m)
    assert checkpoint_digest(m.float()) == d
    assert len(d) == 32 and int(d, 16) >= 0


def test_quantizer_keys():
    assert DEFAULT.key == "e4m3=448,e5m2=57344,w=per_channel,a=per_token"
    assert GAUDI2.key == "e4m3=240,e5m2=57344,w=per_channel,a=per_token"
    assert parse_quantizer(GAUDI2.key) == GAUDI2 == parse_quantizer("gaudi2")
    assert parse_quantizer(None) == DEFAULT == parse_quantizer("default")
    assert Quantizer(fp8_e4m3_max=240).fp8_max("fp8_e4m3") == 240 and DEFAULT.fp8_max("int8") is None
    for bad in ("e4m3=abc", "x=1", "e4m3=-1", "w=per_block"):
        with pytest.raises(HwcostError):
            parse_quantizer(bad)


def test_table_records_checkpoint_and_quantizer():
    from hwcost.sensitivity.taylor import analyze

    m, inputs = tiny()
    ids = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(0))
    t = analyze(m, [ids], precisions=["fp8_e4m3"], calib_fingerprint="c", quantizer=GAUDI2)
    d = analyze(m, [ids], precisions=["fp8_e4m3"], calib_fingerprint="c")
    assert t.checkpoint == d.checkpoint == checkpoint_digest(m)
    assert (t.quantizer, d.quantizer) == (GAUDI2.key, DEFAULT.key)
    layer = t.layers[0]
    assert t.get(layer, "fp8_e4m3").loss_mse != d.get(layer, "fp8_e4m3").loss_mse  # +-240 scored
