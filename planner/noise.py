"""Planning with noisy gains: every gain carries a standard error, and the plan should not bet
on it.

Each option's uncertainty is the **standard error** of its latency (of a median of
interleaved samples, ``hwcost.costs.median_stderr``, or a fallback's cross-validated error),
and ``ref_rel_stderr`` that of the reference its gain is a ratio to (the baseline timed in its
group, or a fallback's own baseline estimate). The noise model, used everywhere here: option
``i`` of a subgraph gains

    g_i - u_i * z_i + L_i * r_i * z_ref

with ``z`` standard normal, one ``z_i`` per (subgraph signature, config) and one ``z_ref``
per signature: identical blocks share one row (their errors add linearly, not in
quadrature), and a subgraph's options share their reference.

- :func:`shrink_gains`: each option's time gain moved toward zero by ``k`` times its standard
  error, so a gain smaller than its noise is not worth a layer's loss budget. The plan is
  chosen on the shrunk gains; its prediction is still reported with the unshrunk ones.
- :func:`chance_not_fastest`: the probability that some rival plan is faster than the chosen
  one (Monte Carlo over the model above). Rivals: the plans named (the unshrunk optimum) and
  every plan that changes one subgraph and still meets the bound. A lower bound on the
  chance against every plan within the bound.
- :func:`plan_stderr_us`: the standard error of a plan's predicted time.
- :func:`drawn_gains`: the problem with its gains drawn once from the model above
  (``planner.retime`` solves several draws for the candidate plans it times end to end).
- :func:`measured_only`: the problem restricted to measured costs (``--measured-only``).

Pure Python: the planner runs without torch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from hwcost.planner.problem import Choice, Option, Problem

from hwcost.errors import NoEstimate


def _ref_term(o: Option) -> float:
    """How much one standard error of the reference moves option ``o``'s gain (microseconds)."""
    return o.latency_us * o.ref_rel_stderr


def gain_sigma(choice: Choice, index: int) -> float:
    """Standard error of option ``index``'s gain: its own and its reference's (zero for the
    baseline itself)."""
    if index == 0:
        return 0.0
    o = choice.options[index]
    return math.hypot(o.uncertainty_us, _ref_term(o))


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


def drawn_gains(problem: Problem, rng: random.Random) -> Problem:
    """A copy of ``problem`` whose time gains are one draw of the noise model above (one
    ``z`` per (signature, config) and one per signature's reference, as
    :func:`chance_not_fastest` draws them): the problem as the table might have measured it.
    ``planner.retime`` solves several to find the plans worth timing end to end."""
    z_own: dict[tuple[str, str], float] = {}
    z_ref: dict[str, float] = {}
    choices = []
    for c in problem.choices:
        zr = z_ref.setdefault(c.signature, rng.gauss(0.0, 1.0))
        opts = [c.options[0]]
        for o in c.options[1:]:
            z = z_own.setdefault((c.signature, o.key), rng.gauss(0.0, 1.0))
            opts.append(replace(o, gain_us=o.gain_us - o.uncertainty_us * z + _ref_term(o) * zr))
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


def plan_stderr_us(problem: Problem, picks: Sequence[int]) -> float:
    """Standard error of the predicted time of ``picks`` (of its summed gains; the baseline
    is common to every plan). Instances of one signature in one config share a row, so their
    errors add linearly; a signature's options share their reference."""
    own: dict[tuple[str, str], float] = {}
    ref: dict[str, float] = {}
    for c, i in zip(problem.choices, picks):
        if i == 0:
            continue
        o = c.options[i]
        own[c.signature, o.key] = own.get((c.signature, o.key), 0.0) + o.uncertainty_us
        ref[c.signature] = ref.get(c.signature, 0.0) + _ref_term(o)
    return math.sqrt(sum(v * v for v in own.values()) + sum(v * v for v in ref.values()))


@dataclass(frozen=True)
class Rivals:
    """The plans the chosen one is compared with: ``single`` (position, option) changes of
    one subgraph, and ``whole`` other plans (full picks)."""

    single: tuple[tuple[int, int], ...]
    whole: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.single) + len(self.whole)


def rivals(problem: Problem, picks: Sequence[int], bound: float | None,
           others: Sequence[Sequence[int]] = ()) -> Rivals:
    """``others`` (less the plan itself) and every one-subgraph change of ``picks`` whose
    loss MSE meets ``bound``."""
    picks = tuple(picks)
    whole = sorted({tuple(p) for p in others if tuple(p) != picks})
    loss = sum(c.options[i].loss_mse for c, i in zip(problem.choices, picks))
    single = []
    for s, c in enumerate(problem.choices):
        here = c.options[picks[s]].loss_mse
        for j, o in enumerate(c.options):
            if j == picks[s]:
                continue
            if bound is not None and loss - here + o.loss_mse > bound * (1 + 1e-9):
                continue
            alt = list(picks)
            alt[s] = j
            if tuple(alt) in whole:
                continue
            single.append((s, j))
    return Rivals(tuple(single), tuple(whole))


def chance_not_fastest(problem: Problem, picks: Sequence[int], bound: float | None, *,
                       others: Sequence[Sequence[int]] = (), samples: int = 2000,
                       seed: int = 0) -> float:
    """P(some rival plan gains more than ``picks``) under the noise model of this module;
    rivals as :func:`rivals`. Deterministic for a ``seed``."""
    picks = tuple(picks)
    riv = rivals(problem, picks, bound, others)
    if not len(riv):
        return 0.0
    varying = sorted({s for s, _ in riv.single}
                     | {s for r in riv.whole for s, (a, b) in enumerate(zip(r, picks)) if a != b})
    used = {s: sorted({picks[s]} | {j for t, j in riv.single if t == s}
                      | {r[s] for r in riv.whole}) for s in varying}
    ch = problem.choices
    # a rival using another set of precisions pays other once-per-step costs (exact, not drawn)
    own_cost = problem.presence_cost_us(picks)
    single_cost = {(s, j): problem.presence_cost_us(picks[:s] + (j,) + picks[s + 1:]) - own_cost
                   for s, j in riv.single}
    whole_cost = [problem.presence_cost_us(r) - own_cost for r in riv.whole]
    rng = random.Random(seed)
    gauss = rng.gauss
    lose = 0
    for _ in range(samples):
        z_own: dict[tuple[str, str], float] = {}
        z_ref: dict[str, float] = {}
        gain: dict[tuple[int, int], float] = {}
        for s in varying:
            c = ch[s]
            zr = z_ref.get(c.signature)
            if zr is None:
                zr = z_ref[c.signature] = gauss(0.0, 1.0)
            for i in used[s]:
                if i == 0:
                    gain[s, i] = 0.0
                    continue
                o = c.options[i]
                z = z_own.get((c.signature, o.key))
                if z is None:
                    z = z_own[c.signature, o.key] = gauss(0.0, 1.0)
                gain[s, i] = o.gain_us - o.uncertainty_us * z + _ref_term(o) * zr
        if any(gain[s, j] - single_cost[s, j] > gain[s, picks[s]]
               for s, j in riv.single) or any(
                sum(gain[s, r[s]] - gain[s, picks[s]] for s in varying if r[s] != picks[s]) > c
                for r, c in zip(riv.whole, whole_cost)):
            lose += 1
    return lose / samples
