"""Gains anchored on whole-model runs in each uniform precision (planner.anchors):
the scales, the anchored problem, and the campaign rows the planner reads them from."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hwcost.planner.anchors import anchored, fit_anchors, scales_line
from hwcost.planner.problem import Choice, Option, Problem
from hwcost.planner.solve import predicted_speedup

SHAPE = "batch=1,kv=64,phase=decode"


def opt(cfg, gain, loss=0.0, unc=0.0):
    return Option(tuple(cfg.split(",")), 100.0 - gain, gain, loss, 4.0, 1.0, "measured", unc)


def problem():
    # two pieces: a one-layer one and a two-layer one (gate/up), fp32 / int8_wo / int4_wo
    one = [opt("fp32", 0), opt("int8_wo", 10, unc=1.0), opt("int4_wo", 14)]
    two = [opt("fp32,fp32", 0), opt("int8_wo,int8_wo", 30), opt("int4_wo,int4_wo", 36),
           opt("int8_wo,fp32", 15), opt("int4_wo,int8_wo", 33), opt("fp32,int4_wo", 18),
           opt("int8_wo,int4_wo", 33), opt("int4_wo,fp32", 18), opt("fp32,int8_wo", 15)]
    return Problem("m", "fp", "d", "D", "cpu", SHAPE, "fp32", ("fp32", "int8_wo", "int4_wo"),
                   [Choice(0, "a", "X", ("l0",), tuple(one)),
                    Choice(1, "b", "Y", ("l1", "l2"), tuple(two))], model_baseline_us=200.0)


def test_a_uniform_plan_is_priced_as_its_whole_model_measured():
    p = problem()
    # pieces: int8_wo gains 40 us in all, int4_wo 50; the whole model gained 60 and 45
    scales = fit_anchors(p, {"fp32": 200.0, "int8_wo": 140.0, "int4_wo": 155.0}).scales
    assert scales == pytest.approx({"int8_wo": 1.5, "int4_wo": 0.9})
    a = anchored(p, scales)
    for prec, whole in (("int8_wo", 140.0), ("int4_wo", 155.0)):
        picks = [next(i for i, o in enumerate(c.options) if set(o.config) == {prec})
                 for c in a.choices]
        assert sum(a.choices[s].options[i].gain_us for s, i in enumerate(picks)) == \
            pytest.approx(200.0 - whole)
        assert predicted_speedup(a, picks) == pytest.approx(200.0 / whole)
    by_key = {o.key: o for o in a.choices[1].options}
    # a mixed option: the mean of its non-baseline layers' scales; latency follows the gain
    assert by_key["int4_wo,int8_wo"].gain_us == pytest.approx(33 * (1.5 + 0.9) / 2)
    assert by_key["fp32,int4_wo"].gain_us == pytest.approx(18 * 0.9)
    assert by_key["fp32,fp32"].gain_us == 0.0
    for o in a.choices[1].options:
        assert o.latency_us == pytest.approx(100.0 - o.gain_us)
    assert a.choices[0].options[1].uncertainty_us == pytest.approx(1.5)  # scaled with its gain
    assert a.gain_scales == {SHAPE: scales}
    assert "int8_wo x1.50" in scales_line(a.gain_scales)


def test_scales_are_left_out_kept_at_one_or_clamped_where_the_ratio_means_nothing():
    p = problem()
    assert fit_anchors(p, {"int8_wo": 140.0}).scales == {}  # no baseline step
    assert fit_anchors(p, {"fp32": 200.0}).scales == {}  # no anchor
    assert fit_anchors(p, {"fp32": 200.0, "bf16": 150.0}).scales == {}  # not a planned precision
    # the whole model lost where the pieces gained: no gain at all, never a loss
    assert fit_anchors(p, {"fp32": 200.0, "int8_wo": 230.0}).scales == {"int8_wo": 0.0}
    assert fit_anchors(p, {"fp32": 200.0, "int8_wo": 0.1}).scales == {"int8_wo": 4.0}
    # pieces' gains under 1 % of the step: noise over noise, left at 1
    flat = Problem("m", "fp", "d", "D", "cpu", SHAPE, "fp32", ("fp32", "bf16"),
                   [Choice(0, "a", "X", ("l0",), (opt("fp32", 0), opt("bf16", 1.0)))])
    assert fit_anchors(flat, {"fp32": 200.0, "bf16": 150.0}).scales == {"bf16": 1.0}
    assert anchored(p, {}) is p and scales_line({}) is None


def test_build_problem_reads_the_campaigns_anchor_rows_and_can_leave_them_out(store):
    """The planner's decode problem: the pieces' gains from the table, anchored on the
    ``all:<precision>`` rows stored at that shape; ``anchor=False`` gives the pieces' own
    gains (a benchmark's diagnostic), and anchoring that gives the planner's problem, so one
    read of the table serves both."""
    from types import SimpleNamespace

    from hwcost.planner.problem import anchor_problem, build_problem

    from tests.planner.conftest import populate
    from tests.planner.test_workload import _decode_tables

    m = populate(store)
    _decode_tables(store, m, kvs=(16,))
    shape = "batch=1,kv=16,phase=decode"
    raw = build_problem(store, m.name, m.device, shape)
    assert raw.gain_scales == {}  # no whole-model rows yet: nothing to anchor on
    bf16 = sum(next(o for o in c.options if set(o.config) == {"bf16"}).gain_us
               for c in raw.choices)
    for prec, us in (("fp32", 400.0), ("bf16", 400.0 - 0.5 * bf16)):
        store.put_model_latency(m.name, m.device, shape, f"all:{prec}",
                                SimpleNamespace(median_us=us, spread_us=1.0, n_samples=15))
    planned = build_problem(store, m.name, m.device, shape)
    assert planned.gain_scales == {shape: {"bf16": pytest.approx(0.5)}}
    assert planned.presence_us == {}  # no first:<precision> row: no once-per-step cost
    unanchored = build_problem(store, m.name, m.device, shape, anchor=False)
    assert unanchored.gain_scales == {} and unanchored.choices == raw.choices
    again = anchor_problem(store, unanchored)
    assert again.choices == planned.choices and again.gain_scales == planned.gain_scales
    uniform = [next(j for j, o in enumerate(c.options) if set(o.config) == {"bf16"})
               for c in planned.choices]
    assert predicted_speedup(planned, uniform) == pytest.approx(400.0 / (400.0 - 0.5 * bf16))
    # the campaign's first:<precision> row: a once-per-step cost priced into every plan
    # using bf16; both anchors priced exactly
    first = min(raw.choices, key=lambda c: c.position)
    g1 = next(o for o in first.options if set(o.config) == {"bf16"}).gain_us
    store.put_model_latency(m.name, m.device, shape, "first:bf16",
                            SimpleNamespace(median_us=400.0 - (0.6 * g1 - 0.1 * bf16), spread_us=1.0,
                                            n_samples=15))
    costly = build_problem(store, m.name, m.device, shape)
    assert costly.presence_us == {shape: {"bf16": pytest.approx(0.1 * bf16)}}
    assert predicted_speedup(costly, uniform) == pytest.approx(400.0 / (400.0 - 0.5 * bf16))
    alone = [next(j for j, o in enumerate(c.options) if set(o.config) == {"bf16"})
             if c.position == first.position else 0
             for c in costly.choices]
    assert costly.baseline_us - costly.plan_gain_us(alone) == pytest.approx(
        400.0 - (0.6 * g1 - 0.1 * bf16))
    # a prefill shape without anchor rows (an eager campaign times none) is left as it is;
    # with them (a compiled campaign times them at every shape) it is anchored the same way
    assert anchor_problem(store, build_problem(store, m.name, m.device, m.shape)).gain_scales == {}
    pre = build_problem(store, m.name, m.device, m.shape, anchor=False)
    bf16 = sum(c.uniform("bf16").gain_us for c in pre.choices)
    whole = pre.subgraph_baseline_us
    assert 0 < 0.8 * bf16 < whole
    for prec, us in (("fp32", whole), ("bf16", whole - 0.8 * bf16)):
        store.put_model_latency(m.name, m.device, m.shape, f"all:{prec}",
                                SimpleNamespace(median_us=us, spread_us=1.0, n_samples=15))
    compiled = build_problem(store, m.name, m.device, m.shape)
    assert compiled.gain_scales == {m.shape: {"bf16": pytest.approx(0.8)}}
    uniform = [next(j for j, o in enumerate(c.options) if set(o.config) == {"bf16"})
               for c in compiled.choices]
    assert predicted_speedup(compiled, uniform) == pytest.approx(whole / (whole - 0.8 * bf16))
    # nor is a workload's problem (its buckets were)
    from hwcost.planner.workload import build_workload_problem

    wl, _ = build_workload_problem(store, m.name, m.device, "prompt=16,gen=1,batch=1")
    assert anchor_problem(store, wl) is wl


def test_pieces_summing_above_the_whole_step_are_put_in_its_microseconds():
    """Pieces timed alone (their weights evicted before each sample) sum above the whole
    model's decode step. Anchored, the gains are the whole step's microseconds, and so are
    the pieces' baselines: the problem's baseline is the whole step, a uniform plan's
    predicted speedup is its whole model's, and each option's latency stays its baseline
    less its gain."""
    from dataclasses import replace

    p = replace(problem(), model_baseline_us=160.0)  # the pieces' baselines sum to 200
    assert p.baseline_us == 200.0  # unanchored: the larger sum, as for any shape
    scales = fit_anchors(p, {"fp32": 160.0, "int8_wo": 112.0, "int4_wo": 124.0}).scales
    assert scales == pytest.approx({"int8_wo": 1.2, "int4_wo": 0.72})
    a = anchored(p, scales)
    assert a.baseline_us == pytest.approx(160.0) and a.subgraph_baseline_us == pytest.approx(160.0)
    assert [c.baseline.latency_us for c in a.choices] == pytest.approx([80.0, 80.0])
    for prec, whole in (("int8_wo", 112.0), ("int4_wo", 124.0)):
        picks = [next(i for i, o in enumerate(c.options) if set(o.config) == {prec})
                 for c in a.choices]
        assert predicted_speedup(a, picks) == pytest.approx(160.0 / whole)
    for c in a.choices:
        for o in c.options:
            assert o.latency_us == pytest.approx(c.baseline.latency_us - o.gain_us)


def test_an_anchored_problems_baseline_is_from_the_model_whatever_the_rounding():
    """Scaled to sum to the whole step, the pieces' baselines can sum an ulp above it; the
    baseline is still the model's (the label plans print and export)."""
    import random
    from dataclasses import replace

    rng = random.Random(0)
    for _ in range(50):
        p = problem()
        choices = [Choice(c.position, c.signature, c.kind, c.layer_names,
                          tuple(replace(o, latency_us=o.latency_us + rng.uniform(0, 50))
                                for o in c.options)) for c in p.choices]
        p = replace(p, choices=choices, model_baseline_us=rng.uniform(100.0, 300.0))
        a = anchored(p, {"int8_wo": 1.2})
        assert a.baseline_from == "model"
        assert a.baseline_us == pytest.approx(p.model_baseline_us)


def test_a_precisions_once_per_step_cost_is_fitted_from_its_first_piece_anchor():
    """With the whole model in ``p`` and with only its first piece in ``p``, each precision
    gets a scale and a once-per-step cost that price both anchors exactly; a plan pays the
    cost once for every precision it uses (Problem.plan_gain_us)."""
    p = problem()
    # the truth: int8_wo scales by 1.5 and costs 12 us once per step; int4_wo by 0.9, free.
    # pieces: int8_wo gains 10 (first piece) of 40, int4_wo 14 of 50
    whole = {"fp32": 200.0, "int8_wo": 200.0 - (1.5 * 40 - 12), "int4_wo": 200.0 - 0.9 * 50}
    first = {"int8_wo": 200.0 - (1.5 * 10 - 12), "int4_wo": 200.0 - 0.9 * 14}
    fit = fit_anchors(p, whole, first)
    assert fit.scales == pytest.approx({"int8_wo": 1.5, "int4_wo": 0.9})
    assert fit.presence_us == pytest.approx({"int8_wo": 12.0})  # int4_wo: none
    a = anchored(p, fit.scales, fit.presence_us)
    assert a.presence_us == {SHAPE: pytest.approx({"int8_wo": 12.0})}
    for prec in ("int8_wo", "int4_wo"):  # both anchors priced as measured
        uniform = a.picks_of({"l0": prec, "l1": prec, "l2": prec})
        assert predicted_speedup(a, uniform) == pytest.approx(200.0 / whole[prec])
        alone = a.picks_of({"l0": prec, "l1": "fp32", "l2": "fp32"})
        assert a.baseline_us - a.plan_gain_us(alone) == pytest.approx(first[prec])
    # a plan using both formats pays int8_wo's cost once, however many of its layers use it
    mixed = a.picks_of({"l0": "int8_wo", "l1": "int8_wo", "l2": "int4_wo"})
    assert a.plan_gain_us(mixed) == pytest.approx(10 * 1.5 + 33 * (1.5 + 0.9) / 2 - 12.0)
    assert a.presence_cost_us(a.picks_of({"l0": "fp32", "l1": "fp32", "l2": "fp32"})) == 0.0
    assert "int8_wo x1.50 +12 us/step, int4_wo x0.90" in scales_line(a.gain_scales,
                                                                      a.presence_us)
    # two costly formats in one step: the step pays the larger cost, not both
    both = replace(a, presence_us={SHAPE: {"int8_wo": 12.0, "int4_wo": 5.0}})
    assert both.presence_cost_us(mixed) == pytest.approx(12.0)
    assert both.presence_cost_us(both.picks_of({"l0": "int4_wo", "l1": "fp32",
                                                "l2": "int4_wo"})) == pytest.approx(5.0)


def test_a_negative_or_unfittable_cost_falls_back_to_the_one_anchor_scale():
    p = problem()
    whole = {"fp32": 200.0, "int8_wo": 140.0, "int4_wo": 155.0}
    # the first piece gained more than its share (noise): no negative cost, kappa from all:
    fit = fit_anchors(p, whole, {"int8_wo": 170.0})
    assert fit.presence_us == {} and fit.scales == pytest.approx({"int8_wo": 1.5, "int4_wo": 0.9})
    assert fit_anchors(p, whole).presence_us == {}  # no first: rows (an older campaign)
    assert fit_anchors(p, whole, {"int8_wo": 170.0}).scales == fit.scales
    # a first piece that is the whole model: the two anchors say one thing
    solo = Problem("m", "fp", "d", "D", "cpu", SHAPE, "fp32", ("fp32", "int8_wo"),
                   [Choice(0, "a", "X", ("l0",), (opt("fp32", 0), opt("int8_wo", 10)))],
                   model_baseline_us=200.0)
    assert fit_anchors(solo, {"fp32": 200.0, "int8_wo": 185.0},
                       {"int8_wo": 185.0}).presence_us == {}
