"""Decode shapes: one step on a real KV cache, pieces in sequence equal the model's step,
campaigns measure decode shapes, bad decode shapes are refused before anything is stored."""

from __future__ import annotations

import pytest
import torch
from hwcost.profiles.campaign import QUICK_TIMING, run_campaign
from hwcost.profiles.decode import decode_inputs, find_caches, rewind, step_fn
from hwcost.profiles.loading import LoadedModel
from hwcost.profiles.partition import partition
from torch import nn

from hwcost.costs import model_table
from hwcost.errors import BadShape
from hwcost.shape import READS_KV, parse_shape, reads_kv

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


@pytest.mark.parametrize("family", ["llama", "falcon"])
def test_decode_round_trip_pieces_in_sequence_equal_the_models_step(family):
    """Falcon: a parallel residual, whose MLP branch's input is computed by running the
    attention branch again on the pass's cache (which must not count this step twice)."""
    lm = _family(family)
    shape = parse_shape(DECODE)
    with torch.no_grad():
        part = partition(lm.model, lm.inputs_for("batch=1,seq=8"))
        inp = lm.inputs_for(shape, seed=0)
        caps, ref = part.capture_stages(lm.model, inp)
        rewind(find_caches(inp), shape.kv)
        out = part.run_all(lm.model, caps)
    assert out.shape == ref.logits.shape == (2, 1, lm.model.config.vocab_size)
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
    # quick timings: stored, but planned on only when asked; the attention heads at the
    # decode shape, the rest (no cache read) at batch=2,phase=decode, whose baseline rows
    # the decode shape's window (whole step and pieces' baselines) stores at the decode key
    costs = store.model_costs(rep.model_fingerprint, rep.device, DECODE, allow_unstable=True)
    heads = [c for c in costs if c.position in (0, 3)]
    rest = [c for c in costs if c.position not in (0, 3)]
    assert len(heads) == 2 * 8 and all(c.median_us > 0 for c in costs)
    assert len(rest) == 5 and {c.config for c in rest} <= {"fp32", "fp32,fp32,fp32"}
    table = model_table(store, rep.model_fingerprint, rep.device, DECODE, ["fp32", "bf16"],
                        allow_unstable=True)
    assert sum(len(e.costs) for e in table.entries) == 2 * (8 + 2 + 8) + 2
    lat = store.model_latency(rep.model_fingerprint, rep.device, DECODE, "all:fp32",
                              allow_unstable=True)
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


def _family(name: str) -> LoadedModel:
    from tests import factories
    from tests.zoo import families

    if name == "llama":
        return _tiny()
    if name == "qwen2":  # biased q/k/v
        model, _ = factories.tiny_qwen2()
    elif name == "falcon":  # a parallel residual (attention and MLP branches)
        model, _, _ = families.falcon()
    else:  # gpt2: Conv1D layers, one fused c_attn
        model, _, _ = families.gpt2()
    return LoadedModel(name, model.eval(), None, "test")


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "falcon"])
def test_a_piece_reads_the_kv_cache_exactly_when_its_decode_inputs_hold_the_cache(family):
    """The partition's structural flag (an attention numbered by layer_idx) agrees with what a
    real decode pass hands each piece: only pieces flagged as reading the KV cache are given
    it, so the others may be timed once per batch without the KV length."""
    lm = _family(family)
    with torch.no_grad():
        part = partition(lm.model, lm.inputs_for("batch=1,seq=8"))
        inp = lm.inputs_for(DECODE, seed=0)
        caps = part.capture_inputs(lm.model, inp)
    flags = [p.extra[READS_KV] for p in part.pieces]
    given = [bool(find_caches(c.sides)) for c in caps]
    assert flags == given
    assert any(flags) and not all(flags)  # attention cores read it; MLPs and the head do not


def test_pieces_without_a_cache_are_measured_once_for_every_kv_bucket(store):
    lm = _family("qwen2")
    kvs = ["batch=2,kv=8,phase=decode", "batch=2,kv=20,phase=decode"]
    rep = run_campaign(store, lm, "cpu", ["batch=1,seq=8", *kvs], precisions="fp32,bf16",
                       threads=1, n_inputs=1, timing=QUICK_TIMING, progress=False)
    assert rep.failed == 0, rep.errors
    _, manifest = store.manifest(rep.model_fingerprint)
    reading = {sub.signature for _, sub in manifest if reads_kv(sub.extra)}
    kv_free = {sub.signature for _, sub in manifest} - reading
    assert reading and kv_free
    for sig, n_slots in {(s.signature, len(s.slots)) for _, s in manifest}:
        done = {shape: store.measured_configs(rep.device, shape, [sig], allow_unstable=True)[sig]
                for shape in [*kvs, "batch=2,phase=decode"]}
        if sig in kv_free:  # configs timed once per batch; per KV length only the baseline
            # step of that bucket's window (whole model and pieces' baselines)
            assert len(done["batch=2,phase=decode"]) == 2 ** n_slots
            assert done[kvs[0]] == done[kvs[1]] == {",".join(["fp32"] * n_slots)}
        else:
            assert len(done[kvs[0]]) == len(done[kvs[1]]) == 2 ** n_slots
            assert not done["batch=2,phase=decode"]
    # the planner's tables find every config measured at both KV lengths, and the pieces
    # that read no cache carry the same timing at both
    tables = [model_table(store, rep.model_fingerprint, rep.device, s, ["fp32", "bf16"],
                          allow_unstable=True) for s in kvs]
    for a, b in zip(*(t.entries for t in tables)):
        assert all(e.source == "measured" for e in [*a.costs.values(), *b.costs.values()])
        if a.signature in kv_free:  # the same ratios; microseconds of each bucket's window
            assert a.costs.keys() == b.costs.keys()
            assert all((a.costs[k].latency_us, a.costs[k].baseline_us)
                       == (b.costs[k].latency_us, b.costs[k].baseline_us)
                       for k in a.costs if "bf16" in k)
    # a second run has nothing left to measure
    again = run_campaign(store, lm, "cpu", ["batch=1,seq=8", *kvs], precisions="fp32,bf16",
                         threads=1, n_inputs=1, timing=QUICK_TIMING, progress=False)
    assert again.measured == 0 and again.already == again.tasks == rep.tasks


def test_decode_pieces_are_timed_with_the_private_cache_flushed_as_in_the_model():
    """A decode step is memory-bound: in the model the other layers' weights pass through a
    core's private cache between two calls of a piece, so a piece of a model whose weights
    exceed that cache (but fit the shared one) is timed after reading what the rest of the
    model reads (embedding tables excluded: a step reads one row); a prefill piece of the
    same model is not (compute-bound, and the rule of the last-level cache is unchanged)."""
    from hwcost.profiles.backends import get_backend
    from hwcost.profiles.bench import last_level_cache_bytes, private_cache_bytes
    from hwcost.profiles.campaign import TimingOptions, _Measurer

    backend = get_backend("cpu")
    llc, private = last_level_cache_bytes(backend), private_cache_bytes(backend)
    lm = _tiny()
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    part = partition(lm.model, lm.inputs_for("batch=1,seq=8"))
    m = _Measurer(lm, part, backend, 1, TimingOptions(), 1)
    read = sum(m._cache.slot_bytes.values()) + m._cache.other_bytes
    assert read == weights - lm.model.model.embed_tokens.weight.numel() * 4
    assert m.evict_bytes("batch=1,seq=8") == (2 * llc if llc and weights > llc else 0)
    if private and read > private and llc and read <= llc:
        assert m.evict_bytes(DECODE) == read
    elif not llc or read <= llc:
        assert m.evict_bytes(DECODE) == 0  # fits the private cache: as in the model
    off = _Measurer(lm, part, backend, 1, TimingOptions(cold_cache=False), 1)
    assert off.evict_bytes(DECODE) == 0


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_decode_pieces_find_their_weights_where_a_deployment_in_their_format_leaves_them(
        family):
    """At a decode shape a piece's config is timed after reading what the rest of the model
    reads deployed in that config's format: the real deployed bytes (int4_wo < int8_wo <
    fp32, scales included). A model whose fp32 weights exceed the last-level cache but fit
    in it in int4_wo has its fp32 pieces read from memory and its int4_wo pieces from that
    cache (on the wide Llama, 107 MB fp32 / 24 MB int4_wo and a 32 MB L3, the int4_wo step
    took 3.60 ms after its own previous step, 4.25 ms after a 64 MB read)."""
    import dataclasses

    from hwcost.profiles.backends import get_backend
    from hwcost.profiles.campaign import TimingOptions, _Measurer

    from tests.zoo.families import FAMILIES

    backend = get_backend("cpu")
    lm = LoadedModel(family, FAMILIES[family]()[0].eval(), None, "test")
    part = partition(lm.model, lm.inputs_for("batch=1,seq=8"))
    m = _Measurer(lm, part, backend, 1, TimingOptions(), 1)
    sig = max(m.reps, key=lambda s: len(m.reps[s].layer_names))
    names = m.reps[sig].layer_names
    cfg = {p: ",".join([p] * len(names)) for p in ("fp32", "int8_wo", "int4_wo")}
    size = {p: m.config_bytes(sig, c) for p, c in cfg.items()}
    own = m._cache.layers_bytes(names)
    assert size["int4_wo"] < size["int8_wo"] < size["fp32"] == own
    slots, other = sum(m._cache.slot_bytes.values()), m._cache.other_bytes
    total = slots + other
    # the other slot layers in int4_wo, the rest (norms; not the embedding table) as they are
    rest4 = (slots - own) * size["int4_wo"] / own + other
    # caches sized around this model: fp32 beyond the last level, int4_wo within it
    llc = int(total * 0.6)
    m._cache = dataclasses.replace(m._cache, llc=llc, llc_share=llc, private=1)
    assert m.evict_bytes(DECODE, sig, cfg["fp32"]) == m.evict_bytes(DECODE, sig) == 2 * llc
    assert rest4 < llc and m.evict_bytes(DECODE, sig, cfg["int4_wo"]) == llc  # the floor
    assert m.evict_bytes("batch=1,seq=8", sig, cfg["int4_wo"]) == 2 * llc  # prefill: weights
    # a model within the cache share: every format reads at least the baseline's rest
    m._cache = dataclasses.replace(m._cache, llc=2 * total, llc_share=2 * total)
    assert m.evict_bytes(DECODE, sig, cfg["int4_wo"]) == total - own
    assert m.evict_bytes(DECODE, sig, cfg["fp32"]) == total - own
    # a cache shared with another CPU: only this process's share counts
    m._cache = dataclasses.replace(m._cache, llc=llc, llc_share=int(rest4 * 0.9))
    assert m.evict_bytes(DECODE, sig, cfg["int4_wo"]) == 2 * llc


def test_candidates_read_their_own_eviction_sizes(monkeypatch):
    """``time_interleaved(evict_bytes={name: bytes})``: each candidate reads its own prefix of
    one buffer before each sample; one without a size, or in ``evict_skip``, reads none."""
    from hwcost.profiles import bench

    calls: list[str] = []
    reads: list[tuple[int, int]] = []  # (calls so far, bytes read)
    real = bench._Evictor.__call__
    monkeypatch.setattr(bench._Evictor, "__call__",
                        lambda self: (reads.append((len(calls), self.buf.numel() * 4)),
                                      real(self)))
    fns = {n: (lambda name: lambda x: calls.append(name))(n) for n in ("a", "b", "c", "d")}
    bench.time_interleaved(fns, [0], "cpu", threads=1, min_samples=3, warmup_max_s=0.0,
                           max_seconds=0.0, evict_skip=("d",),
                           evict_bytes={"a": 1 << 16, "b": 1 << 12, "d": 1 << 20})
    # a read is followed by the call it prepared
    by_name: dict[str, set[int]] = {}
    for at, nbytes in reads:
        by_name.setdefault(calls[at], set()).add(nbytes)
    assert by_name == {"a": {1 << 16}, "b": {1 << 12}}
