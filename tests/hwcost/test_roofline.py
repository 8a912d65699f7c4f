"""Roofline terms from first principles, and the efficiency fit."""

from __future__ import annotations

import numpy as np
import pytest

from hwcost.catalog import Peaks, load_catalog
from hwcost.errors import NoEstimate
from hwcost.precision import Precision, parse_config
from hwcost.roofline import TERMS, Query, RooflineModel, attention_dims, prior_coefficients, terms
from hwcost.shape import parse_shape
from hwcost.store import SlotInfo, SubgraphInfo

P = Precision
PEAKS = Peaks({P.FP32: 10.0, P.BF16: 100.0, P.INT8: 200.0}, mem_gbps=1000.0, op_overhead_us=3.0)
COL = {n: i for i, n in enumerate(TERMS)}

MLP = SubgraphInfo("mlp", "LlamaMLP", (SlotInfo("Linear", 512, 2048), SlotInfo("Linear", 512, 2048),
                                       SlotInfo("Linear", 2048, 512)), {"stage": "unit"})
ATTN = SubgraphInfo("attn", "LlamaAttention", (SlotInfo("Linear", 512, 512), SlotInfo("Linear", 512, 128),
                                               SlotInfo("Linear", 512, 128), SlotInfo("Linear", 512, 512)),
                    {"stage": "unit", "head_dim": 64, "num_key_value_groups": 4,
                     "modules": ["LlamaRMSNorm", "LlamaAttention"]})


def q(sub, shape, cfg):
    return Query(sub, parse_shape(shape), parse_config(cfg))


def test_one_slot_is_the_larger_of_compute_and_memory():
    sub = SubgraphInfo("one", "Linear", (SlotInfo("Linear", 1024, 4096),), {})
    for tokens in (1, 4096):
        for p in (P.FP32, P.BF16, P.INT8):
            t = terms([q(sub, f"batch={tokens}", p.value)], PEAKS, P.FP32)[0]
            compute_us = 2 * tokens * 1024 * 4096 / (PEAKS.rate(p) * 1e12) * 1e6
            out_bytes = 4 if p == P.INT8 else p.bytes  # quantized slots dequantize to the carrier
            bytes_ = 1024 * 4096 * p.bytes + tokens * 1024 * p.bytes + tokens * 4096 * out_bytes
            mem_us = bytes_ / (PEAKS.mem_gbps * 1e9) * 1e6
            assert t[COL[f"slots_{p.value}"]] == pytest.approx(max(compute_us, mem_us))
            cast_out = 0 if p == P.INT8 else tokens * 4096 * (4 + p.bytes)
            convert = 0 if p == P.FP32 else (tokens * 1024 * (4 + p.bytes) + cast_out) / 1e6
            assert sum(t[COL[f"convert_{x.value}"]] for x in Precision) == pytest.approx(convert)
            assert t[COL[f"ops_{p.value}"]] == {P.FP32: 1, P.BF16: 3, P.INT8: 3}[p]
            assert t[COL["boundary"]] == 0


def test_decode_is_memory_bound_and_prefill_compute_bound():
    sub = SubgraphInfo("one", "Linear", (SlotInfo("Linear", 4096, 4096),), {})
    h100 = load_catalog()["H100-SXM"].peaks
    dec = terms([q(sub, "batch=1,kv=128,phase=decode", c) for c in ("bf16", "fp8_e4m3")], h100, P.BF16)
    # one token: the weights dominate, fp8 halves their bytes
    ratio = dec[1, COL["slots_fp8_e4m3"]] / dec[0, COL["slots_bf16"]]
    assert ratio == pytest.approx(0.5, rel=0.01)
    pre = terms([q(sub, "batch=8,seq=4096", c) for c in ("bf16", "fp8_e4m3")], h100, P.BF16)
    assert pre[1, COL["slots_fp8_e4m3"]] / pre[0, COL["slots_bf16"]] == pytest.approx(0.5, rel=0.01)


def test_boundaries_count_where_neighbouring_slots_differ():
    t = terms([q(MLP, "batch=4,seq=16", c) for c in ("bf16,bf16,bf16", "bf16,int8,bf16",
                                                      "int8,int8,bf16")], PEAKS, P.FP32)
    tokens = 64
    assert t[0, COL["boundary"]] == 0
    assert t[1, COL["boundary"]] == pytest.approx(tokens * (512 + 2048) * 4 / 1e6)
    assert t[2, COL["boundary"]] == pytest.approx(tokens * 2048 * 4 / 1e6)


def test_attention_core_from_partition_extra():
    assert attention_dims(ATTN) == (8, 2, 64)
    assert attention_dims(MLP) is None
    tail = SubgraphInfo("t", "LlamaAttention.tail", (SlotInfo("Linear", 512, 512),), {"stage": "tail"})
    assert attention_dims(tail) is None
    short, long_ = terms([q(ATTN, "batch=1,seq=64", "fp32,fp32,fp32,fp32"),
                          q(ATTN, "batch=1,seq=1024", "fp32,fp32,fp32,fp32")], PEAKS, P.FP32)
    # the core grows with the square of the sequence, the projections linearly
    assert long_[COL["attention"]] / short[COL["attention"]] > 200
    assert long_[COL["slots_fp32"]] / short[COL["slots_fp32"]] < 17


def test_a_precision_without_rate_is_refused():
    with pytest.raises(NoEstimate, match="no fp8_e4m3 rate"):
        terms([q(MLP, "batch=1", "fp8_e4m3,fp32,fp32")], PEAKS, P.FP32)


def test_unfitted_model_uses_priors_and_fit_recovers_efficiencies():
    queries = [q(sub, f"batch={b},seq={s}", c)
               for sub, cfgs in ((MLP, ("fp32,fp32,fp32", "bf16,bf16,bf16", "int8,bf16,fp32",
                                        "int8,int8,int8")),
                                 (ATTN, ("fp32,fp32,fp32,fp32", "bf16,int8,int8,bf16")))
               for c in cfgs for b in (1, 4) for s in (8, 64, 512)]
    t = terms(queries, PEAKS, P.FP32)
    model = RooflineModel(PEAKS)
    assert not model.fitted
    np.testing.assert_allclose(model.predict(t), t @ prior_coefficients(PEAKS))
    # latencies of a device whose kernels run at known efficiencies
    true = prior_coefficients(PEAKS) * np.linspace(0.6, 1.8, len(TERMS))
    y = t @ true
    model = RooflineModel(PEAKS, prior_weight=1e-6).fit(t, y)
    np.testing.assert_allclose(model.predict(t), y, rtol=1e-3)
    assert model.rel_error_ < 1e-3
    again = RooflineModel(PEAKS, prior_weight=1e-6).fit(t, y)
    np.testing.assert_array_equal(model.coef_, again.coef_)  # deterministic


def test_terms_never_measured_keep_their_prior():
    queries = [q(MLP, f"batch=1,seq={s}", "fp32,fp32,fp32") for s in (8, 64, 512)]
    t = terms(queries, PEAKS, P.FP32)
    y = 2.0 * (t @ prior_coefficients(PEAKS))
    model = RooflineModel(PEAKS).fit(t, y)
    for name in ("slots_bf16", "slots_int8", "convert_int8", "weights_bf16", "boundary", "attention"):
        assert model.coef_[COL[name]] == pytest.approx(prior_coefficients(PEAKS)[COL[name]])
