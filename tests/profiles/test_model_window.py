"""A campaign times the whole model's baseline in the same interleaved rounds as every unique
piece's baseline config, and stores both from that window: the gains' microseconds (a ratio
to the in-group baseline times the piece's baseline row) and the predicted speedup's
denominator (the whole model) then agree on how fast the machine ran. Timed minutes apart on
a shared machine they disagreed by 20 % and every prediction carried it."""

from __future__ import annotations

import hwcost.profiles.bench as bench
import pytest
import torch
from hwcost.profiles.campaign import QUICK_TIMING, run_campaign
from hwcost.profiles.loading import LoadedModel
from transformers import LlamaConfig, LlamaForCausalLM

from hwcost.store import open_store
from tests.zoo import families

SHAPE = "batch=1,seq=8,phase=prefill"


def _tiny() -> LoadedModel:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, use_cache=False)
    return LoadedModel("tiny-window", LlamaForCausalLM(cfg).eval(), None, "test")


def _family(name: str):
    """A zoo family: biased q/k/v (qwen2), Conv1D (gpt2), a parallel residual (falcon), MoE
    (mixtral)."""
    return lambda: LoadedModel(f"window-{name}", getattr(families, name)()[0].eval(), None, "test")


def _record(monkeypatch, after=None) -> list:
    """The real harness, each call's (results, keyword arguments) recorded; ``after(results,
    inputs)`` runs right after each call."""
    calls = []
    real = bench.time_interleaved

    def spy(fns, inputs, backend="cpu", **kw):
        out = real(fns, inputs, backend, **kw)
        calls.append((out, kw))
        if after is not None:
            after(out, inputs)
        return out

    monkeypatch.setattr(bench, "time_interleaved", spy)
    return calls


MODELS = {"llama": _tiny, **{n: _family(n) for n in ("qwen2", "gpt2", "falcon", "mixtral")}}


def _campaign(store, family: str, shapes: list[str], precisions: str):
    """A quick campaign of a zoo family at ``shapes``, every task measured."""
    rep = run_campaign(store, MODELS[family](), "cpu", shapes, precisions, threads=1,
                       n_inputs=2, timing=QUICK_TIMING, progress=False)
    assert rep.failed == 0, rep.errors
    return rep


@pytest.mark.parametrize("family", list(MODELS))
def test_model_latency_and_piece_baselines_come_from_one_window(family, sqlite_url, monkeypatch):
    calls = _record(monkeypatch)
    with open_store(sqlite_url) as store:
        rep = _campaign(store, family, [SHAPE], "fp32,int8")
        window = [c for c, _ in calls if "model" in c]
        assert len(window) == 1, "one timing holds the whole model"
        window = window[0]
        rows = store.model_costs(rep.model_fingerprint, rep.device, SHAPE, allow_unstable=True)
        sigs = {r.signature for r in rows}
        assert sigs and sigs <= set(window), "every unique piece's baseline is in that window"
        for r in rows:
            if set(r.config.split(",")) == {"fp32"}:
                assert r.median_us == window[r.signature].median_us
                assert r.baseline_us == r.median_us
            else:  # configs keep the baseline of their own interleave group
                assert r.baseline_us and r.baseline_us != window[r.signature].median_us
        assert rep.baseline_us[SHAPE] == window["model"].median_us


DECODE = "batch=1,kv=12,phase=decode"
KV_FREE = "batch=1,phase=decode"


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "falcon"])
def test_a_decode_step_and_its_pieces_baselines_come_from_one_window(family, sqlite_url,
                                                                     monkeypatch):
    """At a decode shape the whole model's step and every piece's baseline step are timed in
    one window (the model not evicted: it runs on the caches its own previous step leaves,
    that step run untimed before each sample, as generate() runs steps). A piece
    that reads no KV cache keeps its configs under the KV-free key, and the cost table of the
    bucket takes its baseline from the window: the gain's ratio from its group, its
    microseconds from the bucket's rounds."""
    from hwcost.profiles.decode import find_caches

    from hwcost.costs import gain_of, model_table
    from hwcost.shape import reads_kv

    cache_lengths = []

    def after(out, inputs):
        if "model" in out:  # every step was rewound: the caches hold kv tokens still
            cache_lengths.extend(c.get_seq_length() for d in inputs
                                 for c in find_caches([d[k] for k in d if k == "model"]
                                                      + [getattr(d[k], "sides", None)
                                                         for k in d if k != "model"]))

    calls = _record(monkeypatch, after)
    with open_store(sqlite_url) as store:
        rep = _campaign(store, family, [SHAPE, DECODE], "fp32,bf16")
        windows = [(out, kw) for out, kw in calls if "model" in out]
        assert len(windows) == 2, "one window per shape"
        window, kw = windows[1]  # the decode shape's, after the prefill's
        assert kw["evict_skip"] == ("model",)
        assert set(kw["prepare"]) == {"model"}  # after its own previous step, untimed
        assert cache_lengths and set(cache_lengths) == {12}
        assert rep.baseline_us[DECODE] == window["model"].median_us
        _, manifest = store.manifest(rep.model_fingerprint)
        subs = {sub.signature: sub for _, sub in manifest}
        assert set(subs) <= set(window), "every unique piece's baseline is in that window"
        table = model_table(store, rep.model_fingerprint, rep.device, DECODE, ["fp32", "bf16"],
                            allow_unstable=True)
        kv_free = [s for s in subs if not reads_kv(subs[s].extra)]
        assert kv_free and len(kv_free) < len(subs)
        for entry in table.entries:
            base_key = ",".join(["fp32"] * len(entry.layer_names))
            base = entry.costs[base_key]
            assert base.latency_us == window[entry.signature].median_us
            other = next(e for k, e in entry.costs.items() if k != base_key)
            assert other.baseline_us != base.latency_us  # its own group's baseline
            assert gain_of(other, base) == pytest.approx(
                base.latency_us * (1 - other.latency_us / other.baseline_us))
        for sig in kv_free:  # configs measured once per batch, the baseline also per bucket
            at = {s: store.measured_configs(rep.device, s, [sig], allow_unstable=True)[sig]
                  for s in (DECODE, KV_FREE)}
            assert at[DECODE] == {",".join(["fp32"] * len(subs[sig].slots))}
            assert len(at[KV_FREE]) == 2 ** len(subs[sig].slots)


@pytest.mark.parametrize("family", ["llama", "gpt2", "falcon", "mixtral"])
def test_a_decode_shape_times_the_whole_model_in_each_precision_as_an_anchor(
        family, sqlite_url, monkeypatch):
    """The planner's anchors (planner.anchors): at a decode shape, the whole model with every
    layer in each other precision, timed beside the baseline model one precision at a time
    (one deployed copy at most), both after their own previous step, and stored as
    ``all:<precision>``: its ratio to that baseline times the window's baseline. A prefill
    shape has none in an eager campaign (a compiled one times them at every shape)."""
    from hwcost.profiles import campaign as campaign_mod

    calls = _record(monkeypatch)
    deployed = []  # (baseline precision, overrides) of every whole model deployed
    real_fn_of = campaign_mod._Measurer.model_fn_of

    def fn_of(self, shape, baseline, overrides=None):
        deployed.append((self.part.pieces[0].layer_names, baseline.value,
                         {n: p.value for n, p in (overrides or {}).items()}))
        return real_fn_of(self, shape, baseline, overrides)

    monkeypatch.setattr(campaign_mod._Measurer, "model_fn_of", fn_of)
    with open_store(sqlite_url) as store:
        rep = _campaign(store, family, [SHAPE, DECODE], "fp32,bf16,int8_wo")
        for kind in ("anchor", "first"):
            pairs = [(out, kw) for out, kw in calls if kind in out]
            assert len(pairs) == 2, "bf16 and int8_wo, at the decode shape only"
            for (out, kw), prec in zip(pairs, ("bf16", "int8_wo")):
                assert set(out) == {"baseline", kind}
                assert set(kw["prepare"]) == {"baseline", kind}
                assert kw["min_samples"] == 4 * QUICK_TIMING.min_samples  # 4x a config's
                key = f"{'all' if kind == 'anchor' else 'first'}:{prec}"
                row = store.model_latency(rep.model_fingerprint, rep.device, DECODE, key,
                                          allow_unstable=True)
                assert row.median_us == pytest.approx(
                    rep.baseline_us[DECODE] * out[kind].median_us / out["baseline"].median_us)
        # first:<p> deploys the first piece's layers in p and every other layer in fp32
        firsts = [(first, base, over) for first, base, over in deployed if over]
        assert [set(over.values()) for _, _, over in firsts] == [{"bf16"}, {"int8_wo"}]
        assert all(base == "fp32" and set(over) == set(first) for first, base, over in firsts)
        for prec in ("bf16", "int8_wo"):
            for kind in ("all", "first"):
                assert store.model_latency(rep.model_fingerprint, rep.device, SHAPE,
                                           f"{kind}:{prec}", allow_unstable=True) is None
        # a second run finds every row and times nothing again
        calls.clear()
        _campaign(store, family, [SHAPE, DECODE], "fp32,bf16,int8_wo")
        assert not [c for c, _ in calls if "model" in c or "anchor" in c]


def test_a_precision_no_kernel_deploys_on_every_layer_has_no_anchor_and_is_not_sought_again(
        sqlite_url, monkeypatch):
    """int4_wo groups 32 inputs: a down_proj reading 48 cannot take it, so there is no whole
    model in int4_wo to time. The campaign leaves that anchor out, and a re-run of the
    finished campaign times no whole model again (it used to re-time the window each time,
    looking for the row it can never write)."""
    def model():
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
        return LoadedModel("tiny-int4-misfit", LlamaForCausalLM(cfg).eval(), None, "test")

    calls = _record(monkeypatch)
    with open_store(sqlite_url) as store:
        def campaign():
            return run_campaign(store, model(), "cpu", [DECODE], "fp32,int8_wo,int4_wo",
                                threads=1, n_inputs=2, timing=QUICK_TIMING, progress=False)
        rep = campaign()
        anchors = [out for out, _ in calls if "anchor" in out]
        assert len(anchors) == 1, "int8_wo only"
        key = rep.model_fingerprint, rep.device, DECODE
        assert store.model_latency(*key, "all:int8_wo", allow_unstable=True) is not None
        assert store.model_latency(*key, "all:int4_wo", allow_unstable=True) is None
        calls.clear()
        campaign()
        assert not [out for out, _ in calls if "model" in out or "anchor" in out]


BUCKETS = [SHAPE, DECODE, "batch=1,kv=16,phase=decode"]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "falcon"])
def test_a_workloads_windows_are_timed_in_rotating_passes_and_their_means_stored(
        family, sqlite_url, monkeypatch):
    """A campaign with a decode shape among several times the whole-model windows in passes
    over its shapes, each pass in another order and with its share of the samples, and
    stores the mean of the passes: the baseline, every piece's baseline row and each anchor
    (each pass's anchor its ratio to that pass's baseline times that pass's window). A
    memory-bound step's level wanders within a minute on a shared host, so the KV buckets
    of one request must see the same mixture of moments."""
    from dataclasses import replace

    from hwcost.profiles.decode import find_caches

    order = []

    def after(out, inputs):
        if "model" in out:
            caches = find_caches([d["model"] for d in inputs])
            order.append(caches[0].get_seq_length() if caches else "prefill")

    calls = _record(monkeypatch, after)
    timing = replace(QUICK_TIMING, window_passes=3, min_samples=6)
    with open_store(sqlite_url) as store:
        rep = run_campaign(store, MODELS[family](), "cpu", BUCKETS, "fp32,int8_wo", threads=1,
                           n_inputs=2, timing=timing, progress=False)
        assert rep.failed == 0, rep.errors
        assert order == ["prefill", 12, 16, 12, 16, "prefill", 16, "prefill", 12]
        windows = [(out, kw) for out, kw in calls if "model" in out]
        anchors = [(out, kw) for out, kw in calls if "anchor" in out]
        assert {kw["min_samples"] for _, kw in windows} == {3}  # 6 / 3 passes, at least 3
        assert {kw["min_samples"] for _, kw in anchors} == {8}  # 4 x 6 / 3 passes
        decode = [w for w, at in zip(windows, order) if at == 12]
        assert rep.window_passes_us[DECODE] == [w["model"].median_us for w, _ in decode]
        assert rep.baseline_us[DECODE] == pytest.approx(
            sum(w["model"].median_us for w, _ in decode) / 3)
        rows = store.model_costs(rep.model_fingerprint, rep.device, DECODE, allow_unstable=True)
        bases = [r for r in rows if set(r.config.split(",")) == {"fp32"}]
        assert bases
        for r in bases:
            assert r.median_us == pytest.approx(
                sum(w[r.signature].median_us for w, _ in decode) / 3)
        # anchors follow each decode window: pass by pass, the kv=12 ones; the uniform
        # anchor and the first-piece one beside it
        for name, key in (("anchor", "all:int8_wo"), ("first", "first:int8_wo")):
            timed = [(out, kw) for out, kw in calls if name in out]
            at12 = [a for a, at in zip(timed, [x for x in order if x != "prefill"]) if at == 12]
            want = sum(w["model"].median_us * a[name].median_us / a["baseline"].median_us
                       for (w, _), (a, _) in zip(decode, at12)) / 3
            row = store.model_latency(rep.model_fingerprint, rep.device, DECODE, key,
                                      allow_unstable=True)
            assert row.median_us == pytest.approx(want)


def test_a_single_shape_is_timed_in_one_window_whatever_the_passes(sqlite_url, monkeypatch):
    """Passes are for a workload's several shapes: one shape's window is timed once."""
    from dataclasses import replace

    calls = _record(monkeypatch)
    with open_store(sqlite_url) as store:
        rep = run_campaign(store, _tiny(), "cpu", [DECODE], "fp32,int8_wo", threads=1,
                           n_inputs=2, timing=replace(QUICK_TIMING, window_passes=3),
                           progress=False)
        assert len([c for c, _ in calls if "model" in c]) == 1
        assert rep.window_passes_us == {}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_a_compiled_campaign_anchors_a_prefill_shape_on_other_families(family, sqlite_url):
    """Under the compiled deployment the whole model fuses across its pieces' edges, so a
    compiled campaign times the anchors at a prefill shape too (``anchored_shape``), here on
    a Conv1D GPT-2 with a fused, biased qkv and on a BERT encoder; the planner's problem is
    anchored on them, each uniform plan priced as its whole model measured."""
    from hwcost.planner.problem import build_problem
    from hwcost.profiles.campaign import anchored_shape

    from hwcost.shape import parse_shape

    assert anchored_shape(parse_shape(SHAPE), "compiled")
    assert not anchored_shape(parse_shape(SHAPE), "eager")
    loaded = LoadedModel(f"compiled-{family}", getattr(families, family)()[0].eval(), None,
                         "test")
    with open_store(sqlite_url) as store:
        rep = run_campaign(store, loaded, "cpu", [SHAPE], "fp32,int8", threads=1, n_inputs=2,
                           timing=QUICK_TIMING, progress=False, deployment="compiled")
        assert rep.failed == 0, rep.errors
        key = rep.model_fingerprint, rep.device, SHAPE
        whole = {k: store.model_latency(*key, k, allow_unstable=True)
                 for k in ("all:fp32", "all:int8", "first:int8")}
        assert all(row is not None and row.median_us > 0 for row in whole.values())
        problem = build_problem(store, rep.model_fingerprint, rep.device, SHAPE,
                                precisions=["int8"], method=None, allow_unstable=True)
        k = problem.gain_scales[SHAPE]["int8"]
        assert problem.model_baseline_us == pytest.approx(whole["all:fp32"].median_us)
        if 0.0 < k < 4.0:  # a clamped scale (quick timings of a tiny model) prices no anchor
            uniform = problem.picks_of(dict.fromkeys(problem.layers, "int8"))
            assert problem.baseline_us - problem.plan_gain_us(uniform) == pytest.approx(
                whole["all:int8"].median_us)
