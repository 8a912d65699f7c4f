"""Noise-aware planning (shrunk gains, chance the plan is not the fastest, measured-only),
relative bounds over the formats the plan may use, and the closed loop on the loss bound."""

from __future__ import annotations

import pytest
from hwcost.planner.closed_loop import plan_within_bound
from hwcost.planner.noise import chance_not_fastest, measured_only, shrink_gains
from hwcost.planner.objectives import lowest_precision_mse, parse_threshold, usable_reference_mse
from hwcost.planner.problem import Choice, Option, Problem
from hwcost.planner.solve import solve

from hwcost.errors import NoEstimate

SHAPE = "batch=1,seq=1,phase=prefill"


def opt(cfg, gain, loss, unc=0.0, source="measured"):
    return Option((cfg,), 100.0 - gain, gain, loss, 4.0, 1.0, source, unc)


def problem(*choices):
    return Problem("m", "fp", "d", "D", "cpu", SHAPE, "fp32", ("fp32", "bf16", "int8", "fp8_e4m3"),
                   [Choice(i, f"s{i}", "X", (f"l{i}",), tuple(c)) for i, c in enumerate(choices)])


def test_relative_bound_ignores_a_format_that_is_never_faster():
    # int8 gains and costs 1 loss per layer; the emulated fp8 is slower and costs 11
    p = problem(*[[opt("fp32", 0, 0), opt("bf16", 5, 0.1), opt("int8", 10, 1.0),
                   opt("fp8_e4m3", -20, 11.0)] for _ in range(3)])
    assert lowest_precision_mse(p) == pytest.approx(33.0)  # the old reference: all fp8
    assert usable_reference_mse(p) == pytest.approx(3.0)  # the fastest plan: all int8
    ten, fifty = parse_threshold("10%"), parse_threshold("50%")
    assert ten.resolve(p) == pytest.approx(0.3) and fifty.resolve(p) == pytest.approx(1.5)
    assert solve(p, ten.resolve(p)).layers != solve(p, fifty.resolve(p)).layers
    assert ten.describe(p) == "10% (loss MSE 0.3)"


def test_shrunk_gains_prefer_a_sure_gain_and_report_the_chance_of_losing():
    # one loss budget, two ways to spend it: a large gain within its noise, a sure smaller one
    p = problem([opt("fp32", 0, 0), opt("int8", 10, 1.0, unc=20.0)],
                [opt("fp32", 0, 0), opt("int8", 8, 1.0, unc=0.5)])
    assert solve(p, 1.0).layers == {"l0": "int8", "l1": "fp32"}  # bets on the noisy gain
    sure = solve(shrink_gains(p, 1.0), 1.0)
    assert sure.layers == {"l0": "fp32", "l1": "int8"}
    bet = solve(p, 1.0).picks
    # rivals: one-subgraph changes within the bound, and the plans named in `others`
    noisy = chance_not_fastest(p, bet, 1.0, others=[sure.picks])
    safe = chance_not_fastest(p, sure.picks, 1.0, others=[bet])
    assert 0.35 < noisy < 0.6  # nearly a coin flip: 10 +- 20 against 8 +- 0.5
    assert safe == pytest.approx(1 - noisy, abs=0.05)
    assert chance_not_fastest(p, sure.picks, 1.0) == 0.0  # no rival within one change
    # no noise: the best plan is the fastest for sure
    q = problem([opt("fp32", 0, 0), opt("int8", 10, 1.0)], [opt("fp32", 0, 0), opt("int8", 8, 1)])
    assert chance_not_fastest(q, solve(q, 1.0).picks, 1.0) == 0.0


def test_measured_only_drops_estimates_and_refuses_an_unmeasured_baseline():
    p = problem([opt("fp32", 0, 0), opt("int8", 10, 1.0, source="learned"), opt("bf16", 3, 0.1)])
    assert [o.config for o in measured_only(p).choices[0].options] == [("fp32",), ("bf16",)]
    bad = problem([opt("fp32", 0, 0, source="roofline"), opt("int8", 10, 1.0)])
    with pytest.raises(NoEstimate, match="measured-only"):
        measured_only(bad)


class _Result:
    def __init__(self, p, sol):
        self.problem, self.solution = p, sol


def test_closed_loop_rescales_until_the_measured_loss_is_within_the_bound():
    p = problem(*[[opt("fp32", 0, 0), opt("int8", 10 + i, 1.0)] for i in range(4)])
    truth = 1.6  # the deployed loss is 1.6x the first-order prediction

    def plan(scale):
        return _Result(p, solve(p, 2.0 / scale))

    def measure(layers):
        return truth * sum(1.0 for v in layers.values() if v == "int8")

    lines = []
    loop = plan_within_bound(plan, measure, 2.0, report=lines.append)
    assert [r.within for r in loop.rounds] == [False, True]
    assert loop.rounds[0].measured_mse == pytest.approx(3.2)
    assert loop.rounds[1].loss_scale == pytest.approx(1.6)
    assert loop.measured_over_bound <= 1.0 and len(lines) == 2
    assert "over" in lines[0] and "within" in lines[1]


def test_a_rival_pays_the_once_per_step_costs_of_the_precisions_it_adds():
    """A rival that adds bf16 on one more subgraph gains 3 us there but pays bf16's 10 us
    once-per-step cost: never faster than the plan without bf16, however the gains are
    drawn (a whole rival likewise)."""
    from dataclasses import replace

    def piece(i, bf16, int8, unc=0.5):
        return Choice(i, f"s{i}", "X", (f"l{i}",),
                      (Option(("fp32",), 100.0, 0.0, 0.0, 4.0, 1.0, "measured"),
                       Option(("bf16",), 100.0 - bf16, bf16, 0.1, 2.0, 1.0, "measured", unc),
                       Option(("int8",), 100.0 - int8, int8, 1.0, 1.0, 1.0, "measured", unc)))

    p = Problem("m", "fp", "d", "D", "cpu", "batch=1,kv=8,phase=decode", "fp32",
                ("fp32", "bf16", "int8"), [piece(0, 3.0, 8.0), piece(1, 3.0, 2.0)],
                model_baseline_us=200.0,
                presence_us={"batch=1,kv=8,phase=decode": {"bf16": 10.0}})
    plan = solve(p, 1.5).picks
    assert p.choices[1].options[plan[1]].config == ("fp32",)
    both_bf16 = (1, 1)
    assert chance_not_fastest(p, plan, 1.5, others=[both_bf16]) == 0.0
    # without the cost the rival adding bf16 on l1 always gains 3 us more
    free = replace(p, presence_us={})
    assert chance_not_fastest(free, plan, 1.5) == 1.0
