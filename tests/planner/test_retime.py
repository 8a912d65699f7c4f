"""Re-timing the few best candidate plans end to end (planner.retime): which candidates, and
which one is kept. Pure Python: the end-to-end timing is a callable here; bench/planner.py
times real compiled plans with it."""

from __future__ import annotations

import json
import math
import random

import pytest
from hwcost.planner.noise import drawn_gains, shrink_gains
from hwcost.planner.objectives import Constraints
from hwcost.planner.problem import Choice, Option, Problem
from hwcost.planner.retime import candidate_plans, keep_fastest, retime
from hwcost.planner.solve import solve

from hwcost.errors import HwcostError

SHAPE = "batch=1,seq=1,phase=prefill"


def opt(cfg, gain, loss, unc=0.0):
    return Option((cfg,), 100.0 - gain, gain, loss, 4.0, 1.0, "measured", unc)


def problem(*choices):
    return Problem("m", "fp", "d", "D", "cpu", SHAPE, "fp32", ("fp32", "bf16", "int8"),
                   [Choice(i, f"s{i}", "X", (f"l{i}",), tuple(c)) for i, c in enumerate(choices)])


def close_call():
    # one loss budget (1.0) for one of three layers: gains 10 +- 4, 9 +- 4, 8 +- 0.2
    return problem([opt("fp32", 0, 0), opt("int8", 10, 1.0, unc=4.0)],
                   [opt("fp32", 0, 0), opt("int8", 9, 1.0, unc=4.0)],
                   [opt("fp32", 0, 0), opt("int8", 8, 1.0, unc=0.2)])


def test_candidates_are_the_planned_one_first_then_distinct_plans_within_the_bound():
    p = close_call()
    cands = candidate_plans(p, 1.0, k=3, seed=0)
    assert cands[0].picks == solve(shrink_gains(p, 1.0), 1.0).picks  # what make_plan picks
    assert cands[0].origin == "shrunk"
    assert len({c.picks for c in cands}) == 3  # the draws found the other two close calls
    for c in cands:
        assert sum(p.choices[s].options[i].loss_mse for s, i in enumerate(c.picks)) <= 1.0
    assert {c.origin for c in cands[1:]} <= {"unshrunk", "drawn"}
    # sure gains: every draw gives the same plan, so there is nothing else to time
    sure = problem([opt("fp32", 0, 0), opt("int8", 10, 1.0)], [opt("fp32", 0, 0), opt("int8", 8, 1)])
    assert len(candidate_plans(sure, 1.0, k=4)) == 1
    with pytest.raises(HwcostError):
        candidate_plans(p, 1.0, k=0)


def test_a_uniform_plan_within_the_bound_is_a_candidate():
    # int8 everywhere is within the bound but the table prices it below the mixed optimum
    # (int8 on l0, bf16 on l1): the uniform plan is timed too, after the planned ones
    p = problem([opt("fp32", 0, 0), opt("bf16", 9, 0.1), opt("int8", 10, 0.5)],
                [opt("fp32", 0, 0), opt("bf16", 9, 0.1), opt("int8", 6, 0.5)])
    cands = candidate_plans(p, 1.0, k=4, seed=0)
    assert [c.layers(p) for c in cands[:1]] == [{"l0": "int8", "l1": "bf16"}]
    origin = {tuple(sorted(set(c.layers(p).values()))): c.origin for c in cands}
    assert origin[("int8",)] == "uniform" and origin[("bf16",)] == "uniform"
    assert [c.origin for c in cands].index("uniform") == 1
    ups = [c.predicted_speedup for c in cands if c.origin == "uniform"]
    assert ups == sorted(ups, reverse=True)  # best predicted first
    # over the bound (int8: 1.0 > 0.6), against a pin, or off: no uniform candidate
    assert all(set(c.layers(p).values()) != {"int8"} for c in candidate_plans(p, 0.6, k=4))
    pinned = Constraints(None, None, (("l0", "bf16"),))
    assert all(c.origin != "uniform" or set(c.layers(p).values()) == {"bf16"}
               for c in candidate_plans(p, 1.0, k=4, constraints=pinned))
    assert "uniform" not in {c.origin for c in candidate_plans(p, 1.0, k=4, uniform=False)}


def test_drawn_gains_vary_within_their_spread_and_identical_blocks_move_together():
    p = problem([opt("fp32", 0, 0), opt("int8", 10, 1.0, unc=2.0)],
                [opt("fp32", 0, 0), opt("int8", 10, 1.0, unc=2.0)])
    p.choices[1] = Choice(1, "s0", "X", ("l1",), p.choices[1].options)  # same signature
    rng = random.Random(0)
    draws = [drawn_gains(p, rng) for _ in range(400)]
    g = [d.choices[0].options[1].gain_us for d in draws]
    assert all(d.choices[0].options[1].gain_us == d.choices[1].options[1].gain_us for d in draws)
    mean = sum(g) / len(g)
    sd = (sum((x - mean) ** 2 for x in g) / len(g)) ** 0.5
    assert mean == pytest.approx(10.0, abs=0.3) and sd == pytest.approx(2.0, rel=0.15)
    assert all(d.choices[0].options[0].gain_us == 0.0 for d in draws)  # the baseline stays


def test_the_measured_fastest_is_kept_only_beyond_the_noise():
    p = close_call()
    cands = candidate_plans(p, 1.0, k=3, seed=0)
    got = keep_fastest(cands, [100.0, 97.0, 96.0], [0.5, 0.5, 0.5])
    assert got.kept == 2 and got.best is cands[2]
    assert "1.042x the planned one" in got.line()
    # 1.5 faster with standard errors of 1 each: within two standard errors of the
    # difference (2.83), the planned one stays
    assert keep_fastest(cands, [100.0, 98.5, 101.0], [1.0, 1.0, 1.0]).kept == 0
    assert "kept the planned one" in keep_fastest(cands, [100.0, 98.5, 101.0], [1.0] * 3).line()
    # only the candidates beyond the noise compete: the fastest of them
    assert keep_fastest(cands, [100.0, 95.0, 94.0], [0.1, 0.1, 4.0]).kept == 1
    assert keep_fastest(cands, [100.0, 100.0, 101.0]).kept == 0  # a tie: the planned one
    assert keep_fastest(cands, [100.0, 99.5, 101.0], min_gain=0.01).kept == 0  # within 1 %
    with pytest.raises(HwcostError):
        keep_fastest(cands, [1.0])
    with pytest.raises(HwcostError):
        keep_fastest(cands, [1.0, 2.0, 3.0], [1.0])


def test_an_unstable_timing_never_moves_the_plan():
    # a loaded machine timed candidate 2 far faster: its standard error is infinite
    # (hwcost.app.main_job._plan_timer), so the planned one stays and the line says why
    cands = candidate_plans(close_call(), 1.0, k=3, seed=0)
    assert keep_fastest(cands, [100.0, 97.0, 60.0], [0.5, 0.5, 0.5]).kept == 2
    # one unstable timing makes the interleaved batch suspect: no candidate is kept over
    # the planned one, not even one timed stably
    got = keep_fastest(cands, [100.0, 97.0, 60.0], [0.5, 0.5, math.inf])
    assert got.kept == 0 and got.unstable
    assert "not stable" in got.line() and "kept the planned one" in got.line()
    d = got.to_dict()
    assert d["stable"] is False and d["candidates"][2]["stderr_us"] is None
    json.dumps(d, allow_nan=False)  # valid JSON for --json


def test_an_unstable_batch_is_timed_again_and_the_first_stable_one_decides():
    p = close_call()
    batches = []

    def time_plans(plans, unstable_batches):
        batches.append(dict(plans))
        se = math.inf if len(batches) <= unstable_batches else 0.5
        # the truth: layer 0's int8 is 5 % faster than the planned plan
        return {n: (90.0 if lay["l0"] == "int8" else 95.0, se) for n, lay in plans.items()}

    # the first batch unstable, the second stable: the second decides, and says so
    got = retime(p, 1.0, lambda plans: time_plans(plans, 1), k=3, seed=0)
    assert len(batches) == 2 and batches[0] == batches[1]  # the same candidates again
    assert not got.unstable and got.attempts == 2 and got.best.layers(p)["l0"] == "int8"
    assert "batch 2: the earlier ones were timed on an unstable machine" in got.line()
    assert got.to_dict()["attempts"] == 2
    # unstable in every batch: timed ``attempts`` times, and the planned one stays
    batches.clear()
    got = retime(p, 1.0, lambda plans: time_plans(plans, 99), k=3, seed=0, attempts=3)
    assert len(batches) == 3 and got.unstable and got.kept == 0 and got.attempts == 3
    assert "(3 batches), but the machine was not stable" in got.line()
    # a stable first batch is the only one
    batches.clear()
    assert retime(p, 1.0, lambda plans: time_plans(plans, 0), k=3, seed=0).attempts == 1
    assert len(batches) == 1
    with pytest.raises(HwcostError, match="attempt"):
        retime(p, 1.0, lambda plans: time_plans(plans, 0), k=3, attempts=0)


def test_retime_times_every_candidate_in_one_call_by_layer_map():
    p = close_call()
    calls = []

    def time_plans(plans):
        calls.append(dict(plans))
        # the end-to-end truth: layer 0's int8 fuses with its neighbours, the others do not
        return {n: (90.0 if lay["l0"] == "int8" else 95.0, 0.5) for n, lay in plans.items()}

    got = retime(p, 1.0, time_plans, k=3, seed=0)
    assert len(calls) == 1 and len(calls[0]) == 3
    assert got.kept != 0 and got.best.layers(p)["l0"] == "int8"
    assert got.to_dict()["kept"] == got.kept and len(got.to_dict()["candidates"]) == 3


def test_make_plan_keeps_the_measured_fastest_and_says_so_in_its_notes():
    from hwcost.planner.objectives import parse_threshold
    from hwcost.planner.plans import make_plan

    p = close_call()
    planned = make_plan(None, None, None, SHAPE, parse_threshold("1.0"), problem=p)
    assert planned.solution.layers["l2"] == "int8" and planned.retimed is None

    def time_plans(plans):
        return {n: 90.0 if lay["l0"] == "int8" else 95.0 for n, lay in plans.items()}

    got = make_plan(None, None, None, SHAPE, parse_threshold("1.0"), problem=p,
                    retime=time_plans, retime_k=3)
    assert got.solution.layers == {"l0": "int8", "l1": "fp32", "l2": "fp32"}
    assert dict(got.document.layers) == got.solution.layers
    assert got.solution.loss_mse <= 1.0
    assert any("re-timed 3 candidate plans end to end: kept" in n for n in got.document.notes)
