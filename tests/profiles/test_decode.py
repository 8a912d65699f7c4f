"""Decode shapes: one step on a real KV cache, pieces in sequence equal the model's step,
campaigns measure decode shapes, bad decode shapes are refused before anything is stored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hwcost.errors import BadShape
from hwcost.shape import parse_shape
from profiles.campaign import QUICK_TIMING, run_campaign
from profiles.decode import decode_inputs, find_caches, rewind, step_fn
from profiles.loading import LoadedModel
from profiles.partition import partition

DECODE = "batch=2,kv=24,phase=decode"


def _tiny(layers: int = 2, positions: int = 64) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, use_cache=False,
                      max_position_embeddings=positions)
    return LoadedModel(f"tiny{layers}", LlamaForCausalLM(cfg).eval(), None, "test")


def test_decode_inputs_hold_a_real_cache_of_the_shapes_length():
    lm = _tiny()
    inp = lm.inputs_for(DECODE, seed=1)
    (cache,) = find_caches(inp)
    assert inp["input_ids"].shape == (2, 1) and inp["use_cache"] is True
    assert cache.get_seq_length() == 24
    assert cache.layers[0].keys.shape[0] == 2  # batch
    with torch.no_grad():
        a = lm.model(**inp).logits
        assert cache.get_seq_length() == 25  # the step appended its token
        rewind([cache], 24)
        assert cache.get_seq_length() == 24
        b = lm.model(**inp).logits
    assert torch.equal(a, b)  # rewound, the same step again gives the same logits


def test_decode_round_trip_pieces_in_sequence_equal_the_models_step():
    lm = _tiny()
    shape = parse_shape(DECODE)
    with torch.no_grad():
        part = partition(lm.model, lm.inputs_for("batch=1,seq=8"))
        inp = lm.inputs_for(shape, seed=0)
        caps, ref = part.capture_stages(lm.model, inp)
        rewind(find_caches(inp), shape.kv)
        out = part.run_all(lm.model, caps)
    assert out.shape == ref.logits.shape == (2, 1, 64)
    torch.testing.assert_close(out, ref.logits, rtol=0, atol=1e-6)
    # every attention piece appended to its own layer's cache once
    assert find_caches(inp)[0].get_seq_length() == shape.kv + 1


def test_step_fn_keeps_the_cache_at_kv_over_repeated_calls():
    lm = _tiny()
    inputs = [lm.inputs_for(DECODE, seed=s) for s in range(2)]
    step = step_fn(lambda inp: lm.model(**inp), inputs, 24)
    with torch.no_grad():
        for _ in range(3):
            for inp in inputs:
                step(inp)
    assert [find_caches(i)[0].get_seq_length() for i in inputs] == [24, 24]


def test_campaign_measures_decode_shapes_and_the_whole_step(store):
    lm = _tiny()
    rep = run_campaign(store, lm, "cpu", ["batch=1,seq=8", DECODE], precisions="fp32,bf16",
                       threads=1, n_inputs=2, timing=QUICK_TIMING, progress=False)
    assert rep.failed == 0 and rep.measured == rep.tasks == 40, rep.errors
    # quick timings: stored, but planned on only when asked
    costs = store.model_costs(rep.model_fingerprint, rep.device, DECODE, allow_unstable=True)
    assert len(costs) == 2 * (8 + 2 + 8) + 2 and all(c.median_us > 0 for c in costs)
    dev = store.get_device(rep.device)
    lat = store.model_latency(rep.model_id, dev.id, DECODE, "all:fp32", allow_unstable=True)
    assert lat is not None and lat.median_us == rep.baseline_us[DECODE] > 0


@pytest.mark.parametrize("model, shape, message", [
    (None, "batch=1,kv=64,phase=decode", "a decode step at kv=64 needs position 65, beyond "
     "model 'tiny2''s 64 positions"),
    ("mlp", "batch=1,kv=8,phase=decode", "model 'mlp' has no KV cache"),
])
def test_bad_decode_shapes_are_refused_before_anything_is_stored(store, model, shape, message):
    if model == "mlp":
        torch.manual_seed(0)
        lm = LoadedModel("mlp", nn.Sequential(nn.Linear(8, 8)), None, "test",
                         example={"input": torch.randn(2, 8)})
    else:
        lm = _tiny()
    with pytest.raises(BadShape, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_campaign(store, lm, "cpu", ["batch=1,seq=8", shape], precisions="fp32,bf16",
                     threads=1, timing=QUICK_TIMING, progress=False)
    assert store.measurement_count() == 0 and not store.devices()


def test_decode_inputs_refuse_a_model_without_cache():
    with pytest.raises(BadShape, match="has no KV cache"):
        decode_inputs(nn.Linear(4, 4), parse_shape("batch=1,kv=4,phase=decode"))
