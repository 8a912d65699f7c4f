"""Planning with noisy gains: every gain carries a spread, and the plan should not bet on it.

- :func:`shrink_gains`: each option's time gain moved toward zero by ``k`` times its standard
  error (candidate and baseline spreads combined), so a gain smaller than its noise is not
  worth a layer's loss budget. The plan is chosen on the shrunk gains; its prediction is still
  reported with the unshrunk ones (the best estimate).
- :func:`chance_not_fastest`: the probability that the chosen plan is not the fastest among
  its rivals (the unshrunk optimum and every plan that changes one subgraph and still meets
  the bound), by sampling each gain from a normal with its spread. A lower bound on the chance
  against every plan; small when the chosen plan's lead is large against its noise.
- :func:`measured_only`: the problem restricted to measured costs (``--measured-only``).

Pure Python and numpy-free: the planner runs without torch or numpy on a laptop.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from hwcost.errors import NoEstimate
from planner.problem import Choice, Problem


def gain_sigma(choice: Choice, index: int) -> float:
    """Standard error of option ``index``'s gain: its spread and the baseline's, combined
    (zero for the baseline itself)."""
    if index == 0:
        return 0.0
    o, b = choice.options[index], choice.baseline
    return math.hypot(o.uncertainty_us, b.uncertainty_us)


def shrink_gains(problem: Problem, k: float = 1.0) -> Problem:
    """A copy of ``problem`` whose time gains are shrunk toward zero by ``k`` standard errors
    (``sign(g) * max(0, |g| - k * sigma)``); ``k = 0`` returns ``problem`` itself."""
    if k <= 0:
        return problem
    choices = []
    for c in problem.choices:
        opts = [c.options[0]]
        for i, o in enumerate(c.options[1:], start=1):
            g, s = o.gain_us, k * gain_sigma(c, i)
            shrunk = math.copysign(max(0.0, abs(g) - s), g)
            opts.append(replace(o, gain_us=shrunk))
        choices.append(replace(c, options=tuple(opts)))
    return replace(problem, choices=choices)


def measured_only(problem: Problem) -> Problem:
    """``problem`` with only the measured options (NoEstimate when a subgraph's baseline is
    not measured: its gains cannot be measured either)."""
    choices = []
    for c in problem.choices:
        if c.baseline.source != "measured":
            raise NoEstimate(f"--measured-only: the baseline of subgraph {c.signature[:12]} "
                             f"({', '.join(c.layer_names)}) is not measured; run `hwcost "
                             "profile` for this device and shape")
        choices.append(replace(c, options=tuple(o for o in c.options
                                                if o.source == "measured")))
    return replace(problem, choices=choices)


def _rivals(problem: Problem, picks: tuple[int, ...], bound: float | None,
            others: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    out = {tuple(p) for p in others if tuple(p) != tuple(picks)}
    loss = sum(c.options[i].loss_mse for c, i in zip(problem.choices, picks))
    for s, c in enumerate(problem.choices):
        here = c.options[picks[s]].loss_mse
        for j, o in enumerate(c.options):
            if j == picks[s]:
                continue
            if bound is not None and loss - here + o.loss_mse > bound * (1 + 1e-9):
                continue
            alt = list(picks)
            alt[s] = j
            out.add(tuple(alt))
    return sorted(out)


def chance_not_fastest(problem: Problem, picks: tuple[int, ...], bound: float | None, *,
                       others: list[tuple[int, ...]] = (), samples: int = 2000,
                       seed: int = 0) -> float:
    """P(some rival plan gains more than ``picks``) when each option's gain is normal around
    its estimate with :func:`gain_sigma`; rivals: ``others`` and every one-subgraph change of
    ``picks`` that meets ``bound``. Options are sampled independently (one draw per option per
    sample, shared by every plan that uses it)."""
    rivals = _rivals(problem, picks, bound, list(others))
    if not rivals:
        return 0.0
    # only the subgraphs where some rival differs matter: their options are drawn
    rng = random.Random(seed)
    varying = sorted({s for r in rivals for s, (a, b) in enumerate(zip(r, picks)) if a != b})
    used = {s: sorted({picks[s]} | {r[s] for r in rivals}) for s in varying}
    lose = 0
    for _ in range(samples):
        draw = {}
        for s in varying:
            c = problem.choices[s]
            for i in used[s]:
                draw[s, i] = rng.gauss(c.options[i].gain_us, gain_sigma(c, i))
        mine = sum(draw[s, picks[s]] for s in varying)
        if any(sum(draw[s, r[s]] for s in varying) > mine for r in rivals):
            lose += 1
    return lose / samples
