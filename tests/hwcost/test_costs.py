"""Cost queries: measured wins, catalog devices answer from the roofline, fallbacks carry
their cross-validated error, bad input gets one clear line. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import time

import pytest

from hwcost.costs import CostModel, Estimate, latency, median_stderr, model_table, resolve_device
from hwcost.device import DeviceInfo
from hwcost.errors import BadConfig, BadShape, NoEstimate, NoSuchDevice, UnsupportedPrecision
from hwcost.precision import Precision, config_key
from hwcost.store import ManifestItem, MeasurementIn, SlotInfo, SubgraphInfo

P = Precision
ATTN = SubgraphInfo("attn-512", "LlamaAttention",
                    (SlotInfo("Linear", 512, 512), SlotInfo("Linear", 512, 128),
                     SlotInfo("Linear", 512, 128), SlotInfo("Linear", 512, 512)),
                    {"stage": "unit", "head_dim": 64, "num_key_value_groups": 4})
MLP = SubgraphInfo("mlp-512", "LlamaMLP", (SlotInfo("Linear", 512, 1536), SlotInfo("Linear", 512, 1536),
                                           SlotInfo("Linear", 1536, 512)), {"stage": "unit"})


def put_llama(store, name="toy", blocks=2) -> None:
    """A Llama-shaped manifest: identical blocks share their two subgraphs."""
    items = []
    for b in range(blocks):
        items.append(ManifestItem(2 * b, ATTN.signature,
                                  tuple(f"layers.{b}.self_attn.{n}_proj" for n in "qkvo")))
        items.append(ManifestItem(2 * b + 1, MLP.signature,
                                  tuple(f"layers.{b}.mlp.{n}_proj" for n in ("gate", "up", "down"))))
    store.put_model(f"fp-{name}", name, [ATTN, MLP], items)


CPU = DeviceInfo("cpu", "Test CPU (AVX-512)", 1, ("avx512_bf16",), {"torch": "test"})


def local_cpu(store, peaks=None) -> str:
    store.put_device(CPU, peaks=peaks)
    return CPU.fingerprint


@pytest.fixture(scope="module")
def mlp_timings():
    """Real timings of MLP's configs over fp32 and int8 at two shapes on this CPU (gate, up
    and down projections with the backend's deployed kernels, one thread), measured once."""
    import torch
    from hwcost.profiles.backends import get_backend

    torch.manual_seed(0)
    cpu = get_backend("cpu")
    lins = [torch.nn.Linear(s.in_features, s.out_features, bias=False) for s in MLP.slots]
    precs = (P.FP32, P.INT8)
    deployed = {(i, p): cpu.deploy_linear(lin, p) for i, lin in enumerate(lins) for p in precs}
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for shape in ("batch=1,seq=8", "batch=1,seq=32"):
                x = torch.randn(int(shape.split("seq=")[1]), 512)
                for cfg in itertools.product(precs, repeat=3):
                    g, u, d = (deployed[i, p] for i, p in enumerate(cfg))
                    run = lambda g=g, u=u, d=d, x=x: d(torch.nn.functional.silu(g(x)) * u(x))  # noqa: E731
                    run()
                    samples = []
                    for _ in range(5):
                        t0 = time.perf_counter()
                        run()
                        samples.append((time.perf_counter() - t0) * 1e6)
                    q1, med, q3 = statistics.quantiles(samples, n=4)
                    rows.append(MeasurementIn(CPU.fingerprint, MLP.signature, shape,
                                              config_key(cfg), med, (q3 - q1) / 2, 5))
    finally:
        torch.set_num_threads(threads)
    return rows


# ------------------------------------------------------------------ zero measurements


def test_catalog_device_answers_everything_from_the_roofline(store):
    put_llama(store)
    tab = model_table(store, "toy", "H100-SXM", "batch=1,seq=128")
    dev = store.get_device("H100-SXM")
    assert dev.source == "catalog" and tab.device == dev.fingerprint
    assert tab.baseline == "bf16" and tab.precisions == ("bf16", "fp8_e4m3", "int8")
    assert [e.position for e in tab.entries] == [0, 1, 2, 3]
    for e in tab.entries:
        assert len(e.costs) == 3 ** len(e.slots)
        for est in e.costs.values():
            assert est.source == "roofline"
            assert est.latency_us > 0 and est.uncertainty_us == est.latency_us
    assert tab.measured_share() == 0.0
    # identical blocks share their estimates
    assert tab.entries[0].costs == tab.entries[2].costs
    # deterministic: a second table (a second catalog lookup) is identical
    again = model_table(store, "toy", "H100-SXM", "batch=1,seq=128")
    assert again.to_dict() == tab.to_dict()
    assert len([d for d in store.devices() if d.source == "catalog"]) == 1


def test_roofline_orders_precisions_as_the_datasheet_does(store):
    put_llama(store)
    wide = SubgraphInfo("mlp-4096", "LlamaMLP", (SlotInfo("Linear", 4096, 14336),
                                                 SlotInfo("Linear", 4096, 14336),
                                                 SlotInfo("Linear", 14336, 4096)), {})
    # a large prefill of a wide MLP is compute bound: Gaudi 2's fp8 MME is twice its bf16,
    # Gaudi 3 lists the same peak for both, so fp8 only adds its casts there
    big = "batch=8,seq=2048"
    fp8, bf16 = ("fp8_e4m3",) * 3, ("bf16",) * 3
    g2 = latency(store, "Gaudi2", wide, big, fp8).latency_us / latency(store, "Gaudi2", wide, big,
                                                                       bf16).latency_us
    g3 = latency(store, "Gaudi3", wide, big, fp8).latency_us / latency(store, "Gaudi3", wide, big,
                                                                       bf16).latency_us
    assert 0.5 < g2 < 0.6
    assert 1.0 < g3 < 1.25
    # decoding one token reads every weight: fp8 halves the bytes of a wide MLP...
    dec = "batch=1,kv=512,phase=decode"
    assert latency(store, "Gaudi2", wide, dec, fp8).latency_us < \
        0.9 * latency(store, "Gaudi2", wide, dec, bf16).latency_us
    # ...while a narrow one is launch-bound and quantizing only adds kernels
    small = model_table(store, "toy", "Gaudi2", dec)
    e = small.entries[1]
    assert small.precisions == ("bf16", "fp8_e4m3")
    assert e.costs["fp8_e4m3,fp8_e4m3,fp8_e4m3"].latency_us > small.baseline_us(e)


def test_a100_defaults_leave_out_fp8_and_refuse_it_explicitly(store):
    put_llama(store)
    tab = model_table(store, "toy", "A100", "batch=1,seq=64")
    assert tab.precisions == ("bf16", "int8")
    with pytest.raises(UnsupportedPrecision) as err:
        model_table(store, "toy", "A100", "batch=1,seq=64", ["bf16", "fp8_e4m3"])
    assert str(err.value).startswith("device A100 (")
    assert "has no rate and no measurement for fp8_e4m3 (it supports fp32, bf16, fp16, int8, " \
           "int8_wo, int4_wo, fp8_wo); " \
           "measure it on the device with `hwcost profile MODEL --device cuda --shape SHAPE " \
           "--precisions fp8_e4m3`" in str(err.value)


# ------------------------------------------------------------------ measurements win


def test_measured_entries_always_win(store, mlp_timings):
    put_llama(store)
    fp = local_cpu(store)
    rows = mlp_timings
    # a measured value the fallbacks would never produce: measured must still win
    odd = MeasurementIn(fp, ATTN.signature, "batch=1,seq=8", "fp32,fp32,fp32,fp32", 123456.0, 1.5, 3)
    store.add_measurements([*rows, odd])
    tab = model_table(store, "toy", fp, "batch=1,seq=8")
    assert tab.precisions == ("fp32", "int8")
    by_key = {(r.signature, r.config): r for r in rows if r.shape == "batch=1,seq=8"}
    for e in tab.entries:
        for key, est in e.costs.items():
            hit = by_key.get((e.signature, key))
            if hit is not None:  # MLP: every config measured, uncertainty the median's SE
                assert (est.latency_us, est.source) == (hit.median_us, "measured")
                assert est.uncertainty_us == median_stderr(hit.spread_us, hit.n_samples)
            elif e.signature == ATTN.signature and key == "fp32,fp32,fp32,fp32":
                assert est == Estimate(123456.0, "measured", median_stderr(1.5, 3))
            else:  # scaled to the measured baseline: the fallback's ratio times 123456
                assert est.source in ("learned", "roofline") and est.baseline_us == 123456.0
    assert latency(store, fp, ATTN, "batch=1,seq=8", ("fp32",) * 4).latency_us == 123456.0
    assert latency(store, "cpu", MLP, "seq=8,batch=1", "fp32,int8,fp32").source == "measured"
    mlp = tab.entries[1]
    assert tab.entry_measured_share(mlp) == 1.0
    choice = {e.position: tab.baseline_config(e) for e in tab.entries}
    choice[1] = choice[3] = "int8,int8,int8"
    assert tab.measured_share(choice) == 1.0  # every chosen gain is measured at both ends


def test_fallbacks_report_their_cross_validated_error(store, mlp_timings):
    put_llama(store)
    fp = local_cpu(store)
    store.add_measurements(mlp_timings)  # 16 real timings at two shapes
    cm = CostModel(store, fp)
    lm = cm.learned
    assert lm is not None and lm.n_train_ == 16
    est = cm.estimate(MLP, "batch=1,seq=16", "int8,fp32,int8")  # a shape nobody measured
    winner = "learned" if lm.cv_mape_ <= lm.roofline_cv_mape_ else "roofline"
    assert est.source == winner
    assert est.cv_error == (lm.cv_mape_ if winner == "learned" else lm.roofline_cv_mape_)
    assert est.uncertainty_us > 0
    again = CostModel(store, fp).estimate(MLP, "batch=1,seq=16", "int8,fp32,int8")
    assert again == est  # retrained from the store: the same answer
    # a precision never measured on a device without peaks is refused, not guessed
    with pytest.raises(UnsupportedPrecision, match="no rate and no measurement for bf16"):
        cm.estimate(MLP, "batch=1,seq=16", "bf16,fp32,int8")


def test_calibrated_device_without_measurements_uses_its_peaks(store):
    put_llama(store)
    fp = local_cpu(store, peaks={"fp32_tflops": 0.1, "bf16_tflops": 0.2, "int8_tflops": 0.5,
                                 "fp8_e4m3_tflops": 0.03, "mem_gbps": 20.0, "op_overhead_us": 7.0,
                                 "source": "calibrated"})
    tab = model_table(store, "toy", fp, "batch=1,seq=64")
    assert tab.precisions == ("fp32", "bf16", "fp8_e4m3", "int8")
    assert {est.source for e in tab.entries for est in e.costs.values()} == {"roofline"}
    mlp = tab.entries[1]
    assert mlp.costs["fp8_e4m3,fp8_e4m3,fp8_e4m3"].latency_us > tab.baseline_us(mlp)  # emulated


# ------------------------------------------------------------------ bad input


def test_unknown_device_names_what_is_missing(store):
    put_llama(store)
    with pytest.raises(NoSuchDevice) as err:
        latency(store, "MI300X", MLP, "batch=1", "bf16,bf16,bf16")
    assert str(err.value) == (  # no `--device cpu` advice for an accelerator
        "no device 'MI300X' in the store or the catalog (H100-SXM, H100-PCIe, H200, A100, "
        "Gaudi2, Gaudi3); on that machine run `hwcost profile MODEL --device KIND --shape "
        "SHAPE` (KIND: cpu, cuda or hpu), then `hwcost db export` there and `hwcost db import "
        "FILE` here")
    with pytest.raises(NoSuchDevice, match=r"run `hwcost profile MODEL --device cuda --shape"):
        latency(store, "cuda", MLP, "batch=1", "bf16,bf16,bf16")
    assert store.devices() == []  # nothing stored


def test_device_without_measurements_or_peaks_is_refused(store):
    fp = local_cpu(store)
    with pytest.raises(NoEstimate, match=r"has no measurements and no peak rates; measure it with "
                                         r"`hwcost profile MODEL --device \.\.\. --shape SHAPE` or"):
        latency(store, fp, MLP, "batch=1", "fp32,fp32,fp32")


def test_bad_shapes_and_configs(store):
    put_llama(store)
    with pytest.raises(BadShape, match="cannot parse shape 'batch=one'"):
        latency(store, "H100-SXM", MLP, "batch=one", "bf16,bf16,bf16")
    with pytest.raises(BadShape, match="unknown field 'tokens'"):
        model_table(store, "toy", "H100-SXM", "tokens=5")
    with pytest.raises(BadConfig, match="has 2 precisions; subgraph mlp-512 \\(LlamaMLP\\) has 3 slots"):
        latency(store, "H100-SXM", MLP, "batch=1", "bf16,bf16")


def test_two_local_cpus_need_a_fingerprint(store):
    local_cpu(store)
    store.put_device(DeviceInfo("cpu", "Other CPU", 4))
    assert resolve_device(store, CPU.fingerprint[:8]).name == CPU.name
    with pytest.raises(NoSuchDevice, match="several cpu devices in the store"):
        resolve_device(store, "cpu")


def test_cost_queries_never_import_torch(store_url):
    """Planning on a laptop: the whole query path runs without torch."""
    code = f"""
import sys
from hwcost.costs import model_table
from hwcost.store import open_store, ManifestItem, SlotInfo, SubgraphInfo
s = open_store({store_url!r})
sub = SubgraphInfo("m", "MLP", (SlotInfo("Linear", 64, 64),), {{}})
s.put_model("fp", "tiny", [sub], [ManifestItem(0, "m", ("fc",))])
tab = model_table(s, "tiny", "Gaudi3", "batch=1,seq=16")
import hwcost.app.main
assert len(tab.entries[0].costs) == 2
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().replace("'", '"')) == []


def test_learned_fit_is_cached_in_the_store_and_refitted_when_the_data_change(store, mlp_timings):
    import json

    from sqlalchemy import func, select

    from hwcost.store.schema import LearnedFit

    put_llama(store)
    fp = local_cpu(store)
    store.add_measurements(mlp_timings)
    first = CostModel(store, fp)
    assert first.learned is not None and not first.learned_from_store  # fitted, then kept
    body = store.learned_fit(first.device, first.fit_state())
    assert json.loads(body)["n_train"] == 16
    second = CostModel(store, fp)
    assert second.learned is not None and second.learned_from_store  # read, not refitted
    q = "batch=1,seq=16"
    assert second.estimate(MLP, q, "int8,fp32,int8") == first.estimate(MLP, q, "int8,fp32,int8")
    # a newer measurement is a new store state: refitted once, the old fit dropped
    store.add_measurements([MeasurementIn(fp, MLP.signature, "batch=1,seq=64", "fp32,fp32,fp32",
                                          900.0, 5.0, 15)])
    third = CostModel(store, fp)
    assert third.learned.n_train_ == 17 and not third.learned_from_store
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(LearnedFit)) == 1


def test_decode_tables_read_kv_free_rows_only_for_subgraphs_that_read_no_cache(store):
    """Attention cores are looked up at the full decode key; a subgraph flagged as reading no
    KV cache at ``batch=B,phase=decode`` (timed once for every KV length); one stored before
    the flag existed keeps its full keys (its KV-free rows are not taken for it)."""
    dev = DeviceInfo("cpu", "Test CPU (kv keys)", 2, ("avx512_bf16",), {"python": "3.11"})
    store.put_device(dev)
    slot = (SlotInfo("Linear", 64, 64),)
    subs = [SubgraphInfo("sig-attn", "Attention", slot, {"kv_cache": True}),
            SubgraphInfo("sig-mlp", "MLP", slot, {"kv_cache": False}),
            SubgraphInfo("sig-old", "MLP", slot, {})]
    store.put_model("fp-kv", "kv", subs, [ManifestItem(i, s.signature, (f"l{i}",))
                                          for i, s in enumerate(subs)])
    rows = []
    for cfg, t in (("fp32", 10.0), ("bf16", 6.0)):
        for kv in (16, 32):
            rows.append(MeasurementIn(dev.fingerprint, "sig-attn", f"batch=1,kv={kv},phase=decode",
                                      cfg, t + kv, 0.1, 15, host="fixture"))
        for sig in ("sig-mlp", "sig-old"):
            rows.append(MeasurementIn(dev.fingerprint, sig, "batch=1,phase=decode", cfg, t, 0.1,
                                      15, host="fixture"))
    store.add_measurements(rows)
    tabs = {kv: {e.signature: e for e in model_table(store, "fp-kv", dev.fingerprint,
                                                     f"batch=1,kv={kv},phase=decode",
                                                     ["fp32", "bf16"]).entries}
            for kv in (16, 32)}
    for kv, tab in tabs.items():
        assert tab["sig-attn"].costs["bf16"].latency_us == 6.0 + kv
        assert {c: e.latency_us for c, e in tab["sig-mlp"].costs.items()} == {"fp32": 10.0,
                                                                             "bf16": 6.0}
        assert all(e.source == "measured" for e in tab["sig-mlp"].costs.values())
        assert all(e.source != "measured" for e in tab["sig-old"].costs.values())
    cm = CostModel(store, dev.fingerprint)
    assert cm.estimate(subs[1], "batch=1,kv=900,phase=decode", "bf16").source == "measured"
    assert cm.estimate(subs[2], "batch=1,kv=900,phase=decode", "bf16").source != "measured"


def test_a_partly_measured_unit_takes_every_gain_from_one_source(store, mlp_timings):
    """A gain is never a measured baseline minus a learned candidate: when some config of a
    (subgraph, shape) unit is unmeasured, every config of the unit comes from one fallback,
    as its ratio to the fallback's own baseline estimate times the measured baseline."""
    from hwcost.costs import gain_of
    from hwcost.roofline import Query
    from hwcost.shape import parse_shape

    put_llama(store)
    fp = local_cpu(store)
    shape = "batch=1,seq=8"
    dropped = {"int8,int8,int8", "fp32,int8,fp32"}
    store.add_measurements([r for r in mlp_timings
                            if not (r.shape == shape and r.config in dropped)])
    tab = model_table(store, "toy", fp, shape)
    mlp = next(e for e in tab.entries if e.signature == MLP.signature)
    base_key = "fp32,fp32,fp32"
    base = mlp.costs[base_key]
    measured = {r.config: r for r in mlp_timings if r.shape == shape}
    assert base.source == "measured" and base.latency_us == measured[base_key].median_us
    others = {k: e for k, e in mlp.costs.items() if k != base_key}
    sources = {e.source for e in others.values()}
    assert len(sources) == 1 and sources < {"learned", "roofline"}  # one source, not measured
    # a candidate that was measured is not mixed in: it too comes from the fallback
    assert others["int8,fp32,fp32"].latency_us != measured["int8,fp32,fp32"].median_us
    cm = CostModel(store, fp)
    cfgs = [tuple(k.split(",")) for k in sorted(mlp.costs)]
    from hwcost.precision import parse_config
    qs = [Query(MLP, parse_shape(shape), parse_config(",".join(c))) for c in cfgs]
    fb = dict(zip(sorted(mlp.costs), cm.estimate_units([qs])[0]))
    for k, e in others.items():
        assert e.source == fb[k].source
        ratio = fb[k].latency_us / fb[base_key].latency_us
        assert gain_of(e, base) == pytest.approx(base.latency_us * (1 - ratio))
        assert tab.gain(mlp, k) == pytest.approx(base.latency_us * (1 - ratio))
    # a single query of an unmeasured config is answered as the table answers it: scaled to
    # the unit's measured baseline, not the fallback's own level
    for k in dropped:
        one = cm.estimate(MLP, shape, k)
        assert one.source == others[k].source and one.baseline_us == base.latency_us
        assert one.latency_us == pytest.approx(others[k].latency_us)
        assert one.latency_us == pytest.approx(fb[k].latency_us / fb[base_key].latency_us
                                               * base.latency_us)
    # the fully measured shape stays measured, each gain against its in-group baseline
    full = model_table(store, "toy", fp, "batch=1,seq=32")
    mlp32 = next(e for e in full.entries if e.signature == MLP.signature)
    assert {e.source for e in mlp32.costs.values()} == {"measured"}
    assert full.entry_measured_share(mlp32) == 1.0
