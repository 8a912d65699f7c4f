"""Workload plans: prefill plus decode steps priced as one problem; a plan for a
decode-heavy workload differs from the prefill-only plan when the decode tables say so."""

from __future__ import annotations

import itertools

import pytest
from hwcost.planner.objectives import Threshold
from hwcost.planner.plans import make_plan
from hwcost.planner.problem import build_problem
from hwcost.planner.workload import build_workload_problem

from hwcost.precision import config_key
from hwcost.store import MeasurementIn
from tests.planner.conftest import populate

# Decode steps read every weight once per token: here bf16 halves them and int8 (with its
# per-token activation quantization overhead) loses, the opposite of the prefill table.
_DECODE_SPEED = {"fp32": 1.0, "bf16": 0.5, "int8": 1.6}


def _decode_tables(store, m, kvs=(16, 20, 23)):
    rows = []
    model, manifest = store.manifest(m.fingerprint)
    subs = {info.signature: info for _, info in manifest}
    for kv in kvs:
        shape = f"batch=1,kv={kv},phase=decode"
        for sig, sub in subs.items():
            for cfg in itertools.product(("fp32", "bf16", "int8"), repeat=len(sub.slots)):
                t = 10.0 + 0.05 * kv + sum(s.in_features * s.out_features / 400.0 * _DECODE_SPEED[p]
                                           for s, p in zip(sub.slots, cfg))
                rows.append(MeasurementIn(m.device, sig, shape, config_key(cfg), t, 0.1, 15,
                                          host="fixture"))
    store.add_measurements(rows)


def test_workload_problem_is_the_weighted_sum_of_its_shapes(store):
    m = populate(store)
    _decode_tables(store, m)
    problem, pricing = build_workload_problem(store, m.name, m.device,
                                              "prompt=16,gen=9,batch=1")
    assert problem.shape == "workload:prompt=16,gen=9,batch=1"
    assert set(pricing.weights) == {"batch=1,seq=16,phase=prefill", "batch=1,kv=16,phase=decode",
                                    "batch=1,kv=20,phase=decode", "batch=1,kv=23,phase=decode"}
    assert sum(pricing.weights.values()) == pytest.approx(1 + 8)
    parts = {s: build_problem(store, m.name, m.device, s) for s in pricing.weights}
    for i, choice in enumerate(problem.choices):
        opt = choice.options[-1]
        expect = sum(w * next(o for o in parts[s].choices[i].options if o.key == opt.key).latency_us
                     for s, w in pricing.weights.items())
        assert opt.latency_us == pytest.approx(expect)
    # the tables are linear in kv: interpolating the middle bucket from the ends is exact
    assert pricing.interpolation_error[1] == pytest.approx(0, abs=1e-9)


def test_a_decode_heavy_workload_plans_differently_from_prefill(store):
    m = populate(store)
    _decode_tables(store, m)
    loose = Threshold(1.0, relative=True)  # everything allowed: only time decides
    prefill = make_plan(store, m.name, m.device, m.shape, loose)
    wl_problem, _ = build_workload_problem(store, m.name, m.device, "prompt=16,gen=9,batch=1")
    wl = make_plan(store, m.name, m.device, m.shape, loose, problem=wl_problem)
    assert set(prefill.solution.layers.values()) == {"int8"}
    assert set(wl.solution.layers.values()) == {"bf16"}
    # priced on the workload, the workload plan beats the prefill plan
    keyed = [{o.key: o for o in c.options} for c in wl_problem.choices]
    prefill_on_wl = sum(k[",".join(prefill.solution.layers[n] for n in c.layer_names)].latency_us
                        for k, c in zip(keyed, wl_problem.choices))
    assert sum(o.latency_us for o in wl.solution.chosen) < prefill_on_wl
    assert wl.document.shape == "workload:prompt=16,gen=9,batch=1"


def test_plan_cli_plans_a_workload_and_refuses_bad_workload_files(tiny_sqlite, tmp_path):
    from click.testing import CliRunner

    from hwcost.app.main import cli
    from hwcost.store import open_store

    url, m = tiny_sqlite
    with open_store(url) as s:
        _decode_tables(s, m)

    def run(*args):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    r = run("plan", m.name, "--device", m.device, "--workload", "prompt=16,gen=9,batch=1",
            "--max-loss-mse", "100%", "--db", url)
    assert r.exit_code == 0, r.output
    assert "workload:prompt=16,gen=9,batch=1, objective time" in r.output.splitlines()[0]
    assert "layers        13 bf16" in r.output
    bad = tmp_path / "w.csv"
    bad.write_text("prompt,gen,batch\n16,9,1\n16,,1\n")
    r = run("plan", m.name, "--device", m.device, "--workload", bad, "--max-loss-mse", "10%",
            "--db", url)
    assert r.exit_code == 1
    assert r.output == f"Error: {bad} line 3: missing field 'gen' (need prompt, gen, batch)\n"
    r = run("plan", m.name, "--device", m.device, "--max-loss-mse", "10%", "--db", url)
    assert r.output.startswith("Error: give one of --shape") and r.exit_code == 1
    with open_store(url) as s:
        assert len(s.plans_for(m.model_id, s.get_device(m.device).id,
                               "workload:prompt=16,gen=9,batch=1")) == 1


def test_run_refuses_a_workload_beyond_the_models_positions_before_storing(sqlite_url, tmp_path):
    from click.testing import CliRunner

    from hwcost.app.main import cli
    from hwcost.store import open_store

    # the demo model has 512 positions: the last decode step of 500 + 20 would need 519
    r = CliRunner().invoke(cli, ["run", "--workload", "prompt=500,gen=20,batch=1", "--db",
                                 sqlite_url, "--out", str(tmp_path / "out")],
                           catch_exceptions=False)
    assert r.exit_code == 1
    assert r.output.splitlines()[-1] == (
        "Error: shape batch=1,kv=518,phase=decode: a decode step at kv=518 needs position 519, "
        "beyond model 'demo''s 512 positions")
    with open_store(sqlite_url) as s:
        assert s.measurement_count() == 0 and not s.devices()


def test_gains_are_priced_in_the_microseconds_of_the_rounds_the_request_was_timed_in(store):
    """``measure_baseline`` stores the generate() request and, timed in its rounds, the
    model's own steps at the pricing shapes; the workload problem scales every shape's
    weight by those steps over the campaign's, so gains, latencies and the priced baseline
    are in the request's microseconds (a machine running 20 % faster when the request was
    timed gains 20 % fewer microseconds). Without the steps row nothing is scaled."""
    from types import SimpleNamespace

    m = populate(store)
    _decode_tables(store, m)
    wl = "prompt=16,gen=9,batch=1"
    key = f"workload:{wl}"
    plain, p0 = build_workload_problem(store, m.name, m.device, wl)
    assert p0.scale == 1.0 and p0.request_steps_us is None and p0.request_baseline_us is None
    priced = sum(w * p0.baseline_us[s] for s, w in p0.weights.items())
    assert plain.model_baseline_us == pytest.approx(priced)

    def row(us):
        return SimpleNamespace(median_us=us, spread_us=0.01 * us, n_samples=15)

    store.put_model_latency(m.name, m.device, key, "all:fp32", row(1.3 * priced))
    only_request, p1 = build_workload_problem(store, m.name, m.device, wl)
    assert p1.scale == 1.0 and p1.request_baseline_us == pytest.approx(1.3 * priced)
    store.put_model_latency(m.name, m.device, key, "steps:fp32", row(0.8 * priced))
    scaled, p2 = build_workload_problem(store, m.name, m.device, wl)
    assert p2.scale == pytest.approx(0.8) and p2.request_steps_us == pytest.approx(0.8 * priced)
    assert scaled.model_baseline_us == pytest.approx(1.3 * priced)  # the measured request
    for a, b in zip(only_request.choices, scaled.choices):
        for oa, ob in zip(a.options, b.options):
            assert ob.gain_us == pytest.approx(0.8 * oa.gain_us)
            assert ob.latency_us == pytest.approx(0.8 * oa.latency_us)


def _row(us):
    """A whole-model timing as put_model_latency takes it."""
    from types import SimpleNamespace

    return SimpleNamespace(median_us=us, spread_us=0.01 * us, n_samples=15)


def _unanchored_buckets(store, wl: str):
    """A populated model with decode tables, the workload's pricing before any whole-model
    row, and each decode bucket's problem with the pieces' own gains."""
    m = populate(store)
    _decode_tables(store, m)
    _, pricing = build_workload_problem(store, m.name, m.device, wl)
    return m, pricing, {s: build_problem(store, m.name, m.device, s, anchor=False)
                        for s in pricing.weights if "phase=decode" in s}


def test_anchored_decode_buckets_are_priced_in_the_whole_steps_microseconds(store):
    """At decode the pieces, each timed alone after a buffer that evicts its weights, sum
    above the whole model's step (here 1/0.7 of it), and the anchors put the gains in the
    whole step's microseconds. The workload is then priced from the whole steps: the request's
    steps, timed as fast as the campaign's whole steps, give a scale of 1, not the pieces'
    excess, and a uniform plan's decode gain is its whole model's."""
    row = _row
    wl = "prompt=16,gen=9,batch=1"
    m, pricing, raws = _unanchored_buckets(store, wl)
    whole = {}
    for s, raw in raws.items():
        pieces_bf16 = sum(next(o for o in c.options if set(o.config) == {"bf16"}).gain_us
                          for c in raw.choices)
        whole[s] = (0.7 * raw.subgraph_baseline_us, 0.7 * pieces_bf16)
        store.put_model_latency(m.name, m.device, s, "all:fp32", row(whole[s][0]))
        store.put_model_latency(m.name, m.device, s, "all:bf16", row(whole[s][0] - whole[s][1]))
    _, anchored_pricing = build_workload_problem(store, m.name, m.device, wl)
    for s, (step, _) in whole.items():
        assert anchored_pricing.baseline_us[s] == pytest.approx(step)
    priced = sum(w * anchored_pricing.baseline_us[s] for s, w in pricing.weights.items())
    key = f"workload:{wl}"
    store.put_model_latency(m.name, m.device, key, "all:fp32", row(1.1 * priced))
    store.put_model_latency(m.name, m.device, key, "steps:fp32", row(priced))
    problem, p = build_workload_problem(store, m.name, m.device, wl)
    assert p.scale == pytest.approx(1.0)
    prefill = build_problem(store, m.name, m.device, "batch=1,seq=16,phase=prefill")
    uniform = [next(o for o in c.options if set(o.config) == {"bf16"}) for c in problem.choices]
    prefill_gain = sum(next(o for o in c.options if set(o.config) == {"bf16"}).gain_us
                       for c in prefill.choices)
    decode_gain = sum(pricing.weights[s] * g for s, (_, g) in whole.items())
    assert sum(o.gain_us for o in uniform) == pytest.approx(prefill_gain + decode_gain)


def test_a_workload_pays_each_buckets_once_per_step_cost_at_every_step(store):
    """A decode bucket's once-per-step costs (its first:<precision> anchor, planner.anchors)
    enter the workload as its weight (the steps it prices) times the cost; the prefill has
    none. A plan using bf16 pays that sum once, however many of its layers are bf16."""
    row = _row
    wl = "prompt=16,gen=9,batch=1"
    m, pricing, raws = _unanchored_buckets(store, wl)
    costs = {}
    for s, raw in raws.items():
        gains = [next(o for o in c.options if set(o.config) == {"bf16"}).gain_us
                 for c in sorted(raw.choices, key=lambda c: c.position)]
        step, kappa, costs[s] = raw.subgraph_baseline_us, 0.8, 0.02 * raw.subgraph_baseline_us
        store.put_model_latency(m.name, m.device, s, "all:fp32", row(step))
        store.put_model_latency(m.name, m.device, s, "all:bf16",
                                row(step - (kappa * sum(gains) - costs[s])))
        store.put_model_latency(m.name, m.device, s, "first:bf16",
                                row(step - (kappa * gains[0] - costs[s])))
    problem, _ = build_workload_problem(store, m.name, m.device, wl)
    want = sum(pricing.weights[s] * c for s, c in costs.items())
    assert problem.presence_us == {s: {"bf16": pytest.approx(pricing.weights[s] * c)}
                                   for s, c in costs.items()}
    layers = problem.layers
    one = problem.picks_of({n: "bf16" if i == 0 else "fp32" for i, n in enumerate(layers)})
    assert problem.presence_cost_us(one) == pytest.approx(want)
    everywhere = problem.picks_of(dict.fromkeys(layers, "bf16"))
    assert problem.presence_cost_us(everywhere) == pytest.approx(want)
    assert problem.plan_gain_us(everywhere) == pytest.approx(
        sum(c.options[i].gain_us for c, i in zip(problem.choices, everywhere)) - want)
