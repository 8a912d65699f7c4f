"""Problems built from a real store (SQLite and PostgreSQL): options, pins, groups,
thresholds, fallbacks, stored plans."""

from __future__ import annotations

import json

import pytest
from hwcost.planner.objectives import Constraints, lowest_precision_mse, parse_threshold
from hwcost.planner.plans import make_plan, save_plan
from hwcost.planner.problem import build_problem
from hwcost.planner.solve import solve

from hwcost.device import DeviceInfo
from hwcost.errors import HwcostError, Infeasible
from hwcost.store import UNKNOWN, ModelLatencyRecord, SensitivityRow, SensitivityTable

from .conftest import populate


def test_problem_from_store(store, tiny):
    p = build_problem(store, tiny.name, tiny.device, tiny.shape)
    assert p.precisions == ("fp32", "bf16", "int8")
    assert [len(c.options) for c in p.choices] == [81, 9, 81, 9, 3]
    assert p.layers == tiny.layers
    for c in p.choices:
        assert c.baseline.config == ("fp32",) * len(c.layer_names)
        assert c.baseline.gain_us == 0 and c.baseline.loss_mse == 0
        assert {o.source for o in c.options} == {"measured"}
    # loss MSE of an option is the sum of its layers' rows
    rows = {(r.layer, r.precision): r.loss_mse for r in store.sensitivity_table(tiny.name).rows}
    mlp = p.choices[1]
    opt = next(o for o in mlp.options if o.config == ("int8", "bf16"))
    assert opt.loss_mse == pytest.approx(rows[(mlp.layer_names[0], "int8")]
                                         + rows[(mlp.layer_names[1], "bf16")])
    assert opt.weight_bytes == 64 * 256 * 1 + 256 * 64 * 2


def test_pins_and_groups_respected(store, tiny):
    p = build_problem(store, tiny.name, tiny.device, tiny.shape)
    cons = Constraints(pins=(("lm_head", "fp32"), ("*.down_proj", "bf16")),
                       groups=(("*.q_proj", "*.k_proj", "*.v_proj"),))
    sol = solve(p, 0.5 * lowest_precision_mse(p), "time", cons)
    layers = sol.layers
    assert layers["lm_head"] == "fp32"
    assert all(v == "bf16" for k, v in layers.items() if k.endswith("down_proj"))
    tied = {v for k, v in layers.items() if k.endswith(("q_proj", "k_proj", "v_proj"))}
    assert len(tied) == 1
    # without the constraints the optimum differs (they bind)
    free = solve(p, 0.5 * lowest_precision_mse(p))
    assert free.layers != layers and free.gain_us >= sol.gain_us


def test_bad_pins_are_clear(store, tiny):
    p = build_problem(store, tiny.name, tiny.device, tiny.shape)
    with pytest.raises(HwcostError, match="pin pattern 'nothing' matches no layer of 'tiny'"):
        solve(p, 1.0, "time", Constraints(pins=(("nothing", "fp32"),)))
    with pytest.raises(HwcostError, match="fp8_e4m3 is not among the planned precisions"):
        solve(p, 1.0, "time", Constraints(pins=(("lm_head", "fp8_e4m3"),)))


def test_relative_threshold(store, tiny):
    p = build_problem(store, tiny.name, tiny.device, tiny.shape)
    rows = {(r.layer, r.precision): r.loss_mse for r in store.sensitivity_table(tiny.name).rows}
    all_int8 = sum(v for (_, prec), v in rows.items() if prec == "int8")
    assert lowest_precision_mse(p) == pytest.approx(all_int8)
    assert parse_threshold("10%").resolve(p) == pytest.approx(0.1 * all_int8)
    sol = solve(p, parse_threshold("10%").resolve(p))
    assert sol.loss_mse <= 0.1 * all_int8
    assert sol.predicted_speedup > 1.0


def test_infeasible_reports_smallest_loss(store, tiny):
    p = build_problem(store, tiny.name, tiny.device, tiny.shape)
    rows = {(r.layer, r.precision): r.loss_mse for r in store.sensitivity_table(tiny.name).rows}
    with pytest.raises(Infeasible) as e:
        solve(p, 1e-12, "time", Constraints(pins=(("lm_head", "int8"),)))
    assert e.value.min_loss_mse == pytest.approx(rows[("lm_head", "int8")])
    assert str(e.value) == (f"no plan has predicted loss MSE <= 1e-12; the smallest achievable is "
                            f"{rows[('lm_head', 'int8')]:.4g}")


def test_objectives_differ(store, tiny):
    p = build_problem(store, tiny.name, tiny.device, tiny.shape)
    bound = 0.3 * lowest_precision_mse(p)
    mem = solve(p, bound, "memory")
    time_ = solve(p, bound, "time")
    assert mem.weight_bytes <= time_.weight_bytes
    assert time_.gain_us >= mem.gain_us


def test_memory_budget(store, tiny):
    p = build_problem(store, tiny.name, tiny.device, tiny.shape)
    full = sum(c.baseline.weight_bytes for c in p.choices)
    sol = solve(p, None, "time", Constraints(max_weight_bytes=0.3 * full))
    assert sol.weight_bytes <= 0.3 * full


def test_missing_sensitivity_is_a_clear_error(store):
    m = populate(store, name="nosens", with_sensitivity=False)
    with pytest.raises(HwcostError, match=r"no taylor sensitivity table for model 'nosens'; run "
                                          r"`hwcost sensitivity nosens --calib DATA` first"):
        build_problem(store, m.name, m.device, m.shape)
    # rows for some layers only: named
    store.put_sensitivity_table(m.name, SensitivityTable(
        [SensitivityRow("lm_head", "int8", 1e-3, 1e-4, 8)], "taylor", "c", UNKNOWN, UNKNOWN))
    with pytest.raises(HwcostError, match="has no int8 rows for 12 layer"):
        build_problem(store, m.name, m.device, m.shape)


def test_the_cost_side_alone_needs_no_sensitivity_table(store):
    """``method=None``: the problem a benchmark of the cost table prices plans with; the
    same options and gains as the planner's, every loss 0."""
    bare = populate(store, name="costonly", with_sensitivity=False)
    with pytest.raises(HwcostError, match="needs its precisions named"):
        build_problem(store, bare.name, bare.device, bare.shape, method=None)
    p = build_problem(store, bare.name, bare.device, bare.shape, precisions=["int8"],
                      method=None)
    assert p.precisions == ("fp32", "int8") and p.sensitivity == {}
    assert all(o.loss_mse == 0.0 for c in p.choices for o in c.options)
    m = populate(store, name="costonly2")  # the same costs (seed 0), with a table
    full = build_problem(store, m.name, m.device, m.shape, precisions=["int8"])
    assert [[(o.key, o.gain_us) for o in c.options] for c in full.choices] == \
        [[(o.key, o.gain_us) for o in c.options] for c in p.choices]


def test_unmeasured_configs_fall_back_and_are_labelled(store):
    m = populate(store, name="partial", skip_configs=4)
    p = build_problem(store, m.name, m.device, m.shape)
    sources = {o.source for c in p.choices for o in c.options}
    assert "measured" in sources and sources - {"measured"}
    sol = solve(p, 0.5 * lowest_precision_mse(p))
    manual = sum(abs(o.gain_us) for o in sol.chosen if o.source == "measured") / \
        sum(abs(o.gain_us) for o in sol.chosen)
    assert sol.measured_share == pytest.approx(manual)


def test_imported_device_plans_the_same(store, tiny):
    # A device the store knows only from an imported bundle: same rows, source "imported".
    other = DeviceInfo("cpu", "Remote CPU (imported)", 8, (), {"python": "3.11"})
    store.put_device(other, source="imported")
    from hwcost.store import MeasurementIn

    local = build_problem(store, tiny.name, tiny.device, tiny.shape)
    rows = [MeasurementIn(other.fingerprint, c.signature, tiny.shape, o.key, o.latency_us, 0.5, 15)
            for c in local.choices[:2] + local.choices[4:] for o in c.options]
    store.add_measurements(rows)
    remote = build_problem(store, tiny.name, other.fingerprint, tiny.shape)
    bound = 0.2 * lowest_precision_mse(local)
    assert solve(remote, bound).picks == solve(local, bound).picks


def test_plan_is_stored(store, tiny):
    res = make_plan(store, tiny.name, tiny.device, tiny.shape, parse_threshold("20%"),
                    constraints=Constraints(pins=(("lm_head", "fp32"),)))
    pid = save_plan(store, res)
    row = store.get_plan(pid)
    body = json.loads(row.body)
    assert body["type"] == "hwcost.plan" and body["version"] == 1
    assert body["data"]["layers"] == res.solution.layers
    assert body["data"]["constraints"]["pins"] == [["lm_head", "fp32"]]
    assert row.predicted_speedup == pytest.approx(res.solution.predicted_speedup)
    assert row.measured_share == pytest.approx(1.0)
    assert row.max_loss_mse == pytest.approx(0.2 * lowest_precision_mse(res.problem))


def test_whole_model_baseline(store, tiny):
    p = build_problem(store, tiny.name, tiny.device, tiny.shape)
    assert p.baseline_us == p.subgraph_baseline_us and p.baseline_from == "subgraphs"
    for us, expect in ((p.subgraph_baseline_us * 1.5, "model"), (p.subgraph_baseline_us * 0.5,
                                                                   "subgraphs")):
        timing = ModelLatencyRecord(tiny.fingerprint, tiny.device, tiny.shape, "all:fp32", us,
                                    1.0, 9)
        # a good row is only replaced when asked
        store.put_model_latency(tiny.name, tiny.device, tiny.shape, "all:fp32", timing,
                                replace=True)
        q = build_problem(store, tiny.name, tiny.device, tiny.shape)
        assert q.baseline_from == expect
        assert q.baseline_us == max(us, q.subgraph_baseline_us)
        sol = solve(q, None)
        assert sol.predicted_speedup == pytest.approx(q.baseline_us / (q.baseline_us - sol.gain_us))
