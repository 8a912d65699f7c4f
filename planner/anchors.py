"""Gains anchored on whole-model runs in each uniform precision.

The campaign times these anchors where a piece timed alone misses what the whole model
does (``profiles.campaign.anchored_shape``): at a decode shape (below) and under the
compiled deployment, whose whole-model graph fuses across the pieces' edges. On the demo
model compiled, configs with most layers in bf16 ran 1.5-1.8x faster than fp32, 10-24 %
more than the sum of their compiled pieces' gains predicted (``bench/additivity.py``, run of
bd450a8); no piece, each compiled alone from fp32 inputs to fp32 outputs, has those edges.
The same fit prices both. A "step" below is one run of the whole model at the shape.

A decode step reads every weight once: it is memory-bound, and how fast a layer reads its
weights depends on where they are, which depends on the *whole* model's format. A model
whose fp32 weights overflow this process's share of the last-level cache may fit in it in
int8; then every int8 layer reads from the cache and gains more than the same layer timed
alone (after a buffer read standing for the rest of the model, ``profiles.eviction``)
suggested. A table of pieces cannot see that. On the demo model's decode step the whole
model in uniform int8_wo gained 1.38x the sum of its pieces' gains in one campaign and 0.52x
in another (the other CPU's work takes part of the shared cache), bf16 0.45x.

So the campaign times, at each decode shape, the whole model with every layer in each
precision beside the baseline model, scaled to the baseline step of the pieces' window
(``profiles.window.anchor_timings``, rows ``all:<precision>``).
For each precision ``p`` the anchor scale is

    kappa_p = (whole baseline step - whole step in p) / sum over the pieces of their gains in p

(both in the microseconds of that window), and every option's gain is multiplied by the
scale of its layers' precisions (a mixed option: the mean over its non-baseline layers).
The pieces' baselines are put in the same microseconds (each scaled by the whole step over
their sum), so the problem's baseline is the whole step. A uniform plan is then priced
exactly as its whole model measured; a mixed plan between its formats' anchors. A scale is
left at 1 where the pieces' gains sum to under 1 % of the step (the ratio would be noise
over noise) and kept within [0, 4].

**A once-per-step cost per precision.** A format's first layers in a step cost more than
their share of the uniform model's gain: in the fp32 demo one bf16 down projection cost
+290 to +340 us per 5.5 ms step, two +390 us, all four +510 us (paired whole steps; an A/A
pair read -0.1 %). One scale per precision spreads that cost over every layer, so a plan
with a few layers in a format was priced faster than it ran (the demo's decode additivity
missed one-sidedly, -2.2 to -3.1 % median signed, worst for configs with 1-5 bf16 layers).
The campaign also times the whole model with only its first piece in each precision
(``first:<precision>``). With ``D_all`` and ``D_first`` the two anchors' gains over the
baseline step, ``G`` and ``g`` the pieces' gains of every piece and of the first one,

    D_all = kappa_p * G - c_p,    D_first = kappa_p * g - c_p

give the scale ``kappa_p = (D_all - D_first) / (G - g)`` and the cost ``c_p = kappa_p * g -
D_first`` (``Problem.presence_us``). Both anchors are then priced exactly. A step pays the
largest cost of the formats a plan uses, not their sum: leaving the baseline's path costs
a step once, whichever formats do it (on this AMX host a plausible cause is the core's
power-license and tile-state switch on the first wide-vector or AMX kernel of a step).
Summed, the three formats' costs (bf16 about 300 us, the weight-only formats 40-170 us)
priced the demo's random configs, nearly all using every format, 5-10 % too slow in
bench/decode.py runs 10 and 11 (median 9.2 and 5.6 %); with the largest they read 4.9 and
2.7 % (run 9: 1.6 % summed, 1.9 % largest). The solver enumerates which precisions a plan
uses (:func:`planner.solve.solve`). A cost is never negative (a precision's presence does not
pay by itself; a negative fit is noise and falls back to ``c_p = 0`` and the one-anchor
scale), and a precision without a ``first:`` row has none. Pure Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from hwcost.planner.problem import Choice, Option, Problem

MIN_SHARE = 0.01  # pieces' gains summing to less than this share of the step: no scale
MAX_SCALE = 4.0
MIN_COST_SHARE = 0.001  # a once-per-step cost under this share of the step: none (rounding)


@dataclass(frozen=True)
class Anchors:
    """What the whole-model anchors of one shape say: the scale of each precision's gains
    and its once-per-step cost (microseconds of the whole step; absent: none; a step pays
    the largest of the formats a plan uses)."""

    scales: dict[str, float] = field(default_factory=dict)
    presence_us: dict[str, float] = field(default_factory=dict)


def fit_anchors(problem: Problem, whole_us: Mapping[str, float],
                first_us: Mapping[str, float] | None = None) -> Anchors:
    """Each precision's scale, and its once-per-step cost where ``first_us`` has its step
    with only the first piece in it (see the module docstring), from the whole model's step
    in the baseline and in each uniform precision (``whole_us``: precision -> microseconds,
    the baseline's included). Precisions without a whole-model step are left out."""
    base = whole_us.get(problem.baseline)
    if not base:
        return Anchors()
    first_us = first_us or {}
    scales, presence = {}, {}
    for prec, us in whole_us.items():
        if prec == problem.baseline or prec not in problem.precisions:
            continue
        pieces = _uniform_gain(problem, prec)
        if pieces is None:
            continue
        if abs(pieces) < MIN_SHARE * base:
            scales[prec] = 1.0
            continue
        scales[prec] = _clamped((base - us) / pieces)
        one = _first_gain(problem, prec)
        if prec not in first_us or one is None or abs(pieces - one) < MIN_SHARE * base:
            continue
        kappa = _clamped(((base - us) - (base - first_us[prec])) / (pieces - one))
        cost = kappa * pieces - (base - us)  # the uniform anchor stays exact
        if cost > MIN_COST_SHARE * base:
            scales[prec], presence[prec] = kappa, cost
    return Anchors(scales, presence)


def anchored(problem: Problem, scales: Mapping[str, float],
             presence_us: Mapping[str, float] | None = None) -> Problem:
    """The problem with every option's gain (and latency, and its standard error) scaled
    by the anchor scale of its layers' precisions, and each precision's once-per-step cost
    at this shape (``presence_us``, into ``problem.presence_us[shape]``);
    ``problem.gain_scales`` records the scales."""
    if not scales:
        return problem
    # the anchored gains are microseconds of the whole model's step (kappa: its gain over the
    # pieces'), so the pieces' baselines are put in them too, each its share of the whole
    # step. Left in their own (each piece timed alone after a buffer that evicts its
    # weights), the problem's baseline was their larger sum, so a uniform plan's predicted
    # speedup was not its whole model's, and a workload's scale from the campaign's
    # microseconds to the request's (planner.workload) shrank the whole-step gains again by
    # the pieces' excess (bench/decode.py, demo: the request priced at 360 ms, its whole
    # steps 259 ms).
    pieces = problem.subgraph_baseline_us
    r = problem.model_baseline_us / pieces if problem.model_baseline_us and pieces > 0 else 1.0
    choices = [Choice(c.position, c.signature, c.kind, c.layer_names,
                      tuple(_scaled(o, r, c.baseline.latency_us * r, problem.baseline, scales)
                            for o in c.options))
               for c in problem.choices]
    return replace(problem, choices=choices,
                   gain_scales={**problem.gain_scales, problem.shape: dict(scales)},
                   presence_us={**problem.presence_us,
                                **({problem.shape: dict(presence_us)} if presence_us else {})})


def scales_line(gain_scales: Mapping[str, Mapping[str, float]],
                presence_us: Mapping[str, Mapping[str, float]] | None = None) -> str | None:
    """One line naming the anchor scales and once-per-step costs per shape (None when no
    scale applied)."""
    presence_us = presence_us or {}
    parts = []
    for shape, sc in gain_scales.items():
        if not sc:
            continue
        costs = {p: us for p, us in presence_us.get(shape, {}).items() if us > 0}
        parts.append(f"{shape}: " + ", ".join(
            f"{p} x{k:.2f}" + (f" +{costs[p]:.0f} us/step" if p in costs else "")
            for p, k in sc.items()))
    if not parts:
        return None
    return ("gains anchored on whole-model runs in each uniform precision "
            "(planner.anchors; +us/step: a step's once-per-step cost of the format, the "
            "largest of those a plan uses): " + "; ".join(parts))


def _clamped(kappa: float) -> float:
    return min(MAX_SCALE, max(0.0, kappa))


def _first_gain(problem: Problem, prec: str) -> float | None:
    """The pieces' gain of the first piece (lowest position) in ``prec``: the one the
    campaign's ``first:<precision>`` anchor deploys in it (``profiles.window``)."""
    opt = min(problem.choices, key=lambda c: c.position).uniform(prec)
    return opt.gain_us if opt is not None else None


def _uniform_gain(problem: Problem, prec: str) -> float | None:
    opts = [c.uniform(prec) for c in problem.choices]
    return None if any(o is None for o in opts) else sum(o.gain_us for o in opts)


def _scaled(o: Option, r: float, base_us: float, baseline: str,
            scales: Mapping[str, float]) -> Option:
    low = [p for p in o.config if p != baseline]
    if not low:  # the piece's baseline, in the whole step's microseconds
        return replace(o, latency_us=base_us, uncertainty_us=o.uncertainty_us * r)
    k = sum(scales.get(p, 1.0) for p in low) / len(low)
    gain = o.gain_us * k
    return replace(o, gain_us=gain, latency_us=base_us - gain,
                   uncertainty_us=o.uncertainty_us * k)
