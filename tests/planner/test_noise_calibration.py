"""``p_not_fastest`` is a probability that means what it says.

Synthetic cost tables with known noise: every config of a subgraph is timed as the harness
times it (interleaved rounds sharing a drift factor, each config's median and half-IQR over its
samples, the baseline timed in every group), stored as the planner reads it (medians, the
standard errors ``hwcost.costs.median_stderr`` derives, gains as in-group ratios). The plan
is the best one on the estimates; the reported chance that a rival is faster is then compared
with how often a rival truly is (the true latencies are known here).
"""

from __future__ import annotations

import itertools
import math
import random
import statistics

from hwcost.planner.noise import chance_not_fastest, gain_sigma, plan_stderr_us, rivals
from hwcost.planner.problem import Choice, Option, Problem
from hypothesis import given, settings
from hypothesis import strategies as st

from hwcost.costs import Estimate, gain_of, median_stderr

PRECS = ("fp32", "bf16", "int8")
N = 9  # samples per config, as bench/fallbacks.py takes


def _group(true_us: dict[str, float], rel_noise: float, rng: random.Random
           ) -> dict[str, tuple[float, float]]:
    """One interleaved group: per round a drift factor shared by every config, per sample
    its own noise; (median, half-IQR) per config."""
    samples: dict[str, list[float]] = {k: [] for k in true_us}
    level = rng.uniform(0.9, 1.1)  # this group's machine state: cancels in its ratios
    for _ in range(N):
        drift = level * (1 + rng.gauss(0, 0.02))
        for k, t in true_us.items():
            samples[k].append(t * drift * (1 + rng.gauss(0, rel_noise)))
    out = {}
    for k, s in samples.items():
        q1, med, q3 = statistics.quantiles(s, n=4, method="inclusive")
        out[k] = (med, (q3 - q1) / 2)
    return out


def _measured_choice(pos: int, base_us: float, ratios: dict[str, float], loss: dict[str, float],
                     rel_noise: float, rng: random.Random) -> Choice:
    """A one-slot subgraph: the baseline row from one group, the candidates from another
    (with its own baseline), as a campaign of several groups stores them."""
    true = {p: base_us * ratios[p] for p in PRECS}
    g0 = _group({"fp32": true["fp32"]}, rel_noise, rng)
    g1 = _group(true, rel_noise, rng)
    bmed, bspr = g0["fp32"]
    base = Estimate(bmed, "measured", median_stderr(bspr, N))
    inb, inb_spr = g1["fp32"]
    options = [Option(("fp32",), bmed, 0.0, 0.0, 4.0, 1.0, "measured", base.uncertainty_us)]
    for p in PRECS[1:]:
        med, spr = g1[p]
        est = Estimate(med, "measured", median_stderr(spr, N), baseline_us=inb,
                       ref_rel_stderr=median_stderr(inb_spr, N) / inb)
        options.append(Option((p,), med, gain_of(est, base), loss[p], 2.0, 1.0, "measured",
                              est.uncertainty_us, ref_rel_stderr=est.ref_rel_stderr))
    return Choice(pos, f"sig{pos}", "Linear", (f"l{pos}",), tuple(options))


def _problem(choices) -> Problem:
    return Problem("m", "fp", "d", "D", "cpu", "batch=1,seq=8,phase=prefill", "fp32", PRECS,
                   list(choices))


def _best(problem: Problem, gains, bound: float) -> tuple[int, ...]:
    """The plan with the largest total gain within the bound (brute force, few subgraphs)."""
    plans = [p for p in itertools.product(*(range(len(c.options)) for c in problem.choices))
             if sum(c.options[i].loss_mse for c, i in zip(problem.choices, p)) <= bound]
    return max(plans, key=lambda p: sum(gains[s][i] for s, i in enumerate(p)))


def test_median_stderr_matches_the_spread_of_medians():
    rng = random.Random(1)
    meds, ses = [], []
    for _ in range(1500):
        s = [100 + rng.gauss(0, 10) for _ in range(15)]
        q1, med, q3 = statistics.quantiles(s, n=4, method="inclusive")
        meds.append(med)
        ses.append(median_stderr((q3 - q1) / 2, 15))
    ratio = statistics.median(ses) / statistics.pstdev(meds)
    assert 0.8 < ratio < 1.2  # about half the per-sample half-IQR, not the half-IQR itself
    assert median_stderr(3.0, 1) == 3.0


def test_reported_chance_is_calibrated_on_tables_with_known_noise():
    rng = random.Random(7)
    reported, truth = [], []
    for _ in range(160):
        choices, true_gains = [], []
        for s in range(3):
            base = rng.uniform(100, 1000)
            ratios = {"fp32": 1.0, "bf16": rng.uniform(0.8, 1.0), "int8": rng.uniform(0.75, 1.0)}
            loss = {"bf16": rng.uniform(0.1, 1.0), "int8": rng.uniform(0.5, 2.0)}
            choices.append(_measured_choice(s, base, ratios, loss, 0.1, rng))
            true_gains.append([base * (1 - ratios[p]) for p in PRECS])
        p = _problem(choices)
        bound = 2.0
        est = [[o.gain_us for o in c.options] for c in p.choices]
        picks = _best(p, est, bound)
        riv = rivals(p, picks, bound)
        chance = chance_not_fastest(p, picks, bound, samples=400, seed=len(reported))
        beaten = any(true_gains[s][j] > true_gains[s][picks[s]] for s, j in riv.single)
        reported.append(chance)
        truth.append(float(beaten))
    mean_p, freq = statistics.fmean(reported), statistics.fmean(truth)
    # not pinned: the figure spreads over the range as the margins do
    assert 0.05 < mean_p < 0.95
    assert sum(0.1 < r < 0.9 for r in reported) >= 20
    # calibrated on average and where it is confident
    assert abs(mean_p - freq) < 0.1, (mean_p, freq)
    sure = [t for r, t in zip(reported, truth) if r < 0.1]
    doubt = [t for r, t in zip(reported, truth) if r > 0.5]
    assert sure and statistics.fmean(sure) < 0.2
    assert doubt and statistics.fmean(doubt) > 0.4
    # and it carries information: better than always saying the average (Brier score)
    brier = statistics.fmean((r - t) ** 2 for r, t in zip(reported, truth))
    assert brier < statistics.fmean((freq - t) ** 2 for t in truth)


@st.composite
def _noisy_problems(draw):
    n = draw(st.integers(1, 4))
    choices = []
    for s in range(n):
        sig = f"sig{draw(st.integers(0, max(0, s - 1)))}" if s and draw(st.booleans()) \
            else f"sig{s}"
        base = draw(st.floats(50, 500))
        opts = [Option(("fp32",), base, 0.0, 0.0, 4.0, 1.0, "measured", base * 0.01)]
        for p in PRECS[1:]:
            r = draw(st.floats(0.5, 1.2))
            opts.append(Option((p,), base * r, base * (1 - r), draw(st.floats(0.0, 1.0)), 2.0,
                               1.0, "measured", base * r * draw(st.floats(0.0, 0.1)),
                               ref_rel_stderr=0.01))
        choices.append((sig, opts))
    # identical signatures share their options (one row in the store)
    first = {}
    out = []
    for i, (sig, opts) in enumerate(choices):
        opts = first.setdefault(sig, opts)
        out.append(Choice(i, sig, "Linear", (f"l{i}",), tuple(opts)))
    return _problem(out), draw(st.floats(0.2, 3.0))


def _scaled(p: Problem, k: float) -> Problem:
    from dataclasses import replace

    return replace(p, choices=[replace(c, options=tuple(
        replace(o, uncertainty_us=o.uncertainty_us * k, ref_rel_stderr=o.ref_rel_stderr * k)
        for o in c.options)) for c in p.choices])


@settings(max_examples=25, deadline=None)
@given(_noisy_problems())
def test_chance_is_a_probability_that_grows_with_the_noise(case):
    p, bound = case
    gains = [[o.gain_us for o in c.options] for c in p.choices]
    picks = _best(p, gains, bound)
    chances = [chance_not_fastest(_scaled(p, k), picks, bound, samples=200)
               for k in (0.0, 1.0, 3.0)]
    assert all(0.0 <= c <= 1.0 for c in chances)
    assert chances[0] == 0.0  # exact gains: the best plan is the fastest of its rivals
    assert chances[0] <= chances[1] <= chances[2]  # common random numbers: monotone
    # the plan's time error: zero without noise, and identical blocks add up linearly
    assert plan_stderr_us(_scaled(p, 0.0), picks) == 0.0
    sigmas = [gain_sigma(c, i) for c, i in zip(p.choices, picks)]
    assert plan_stderr_us(p, picks) <= sum(sigmas) * (1 + 1e-9)
    assert plan_stderr_us(p, picks) >= math.sqrt(sum(s * s for s in sigmas)) * (1 - 1e-9) - 1e-9
