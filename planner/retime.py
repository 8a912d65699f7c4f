"""Re-time the few best candidate plans end to end and keep the measured fastest.

The cost table prices each subgraph alone; a deployment runs them together (a compiled graph
fuses across subgraph cuts) and every gain carries a standard error. When several plans
within the bound are close in prediction, which one is fastest is decided better by timing
them, whole, than by the table. :func:`candidate_plans` proposes them, the caller times them
(``planner.apply.time_configs``: interleaved, end to end, on the real kernels), and
:func:`keep_fastest` keeps the measured fastest of those that beat the planned one by more
than two standard errors of the difference (else the planned one). A batch timed while the
machine was unstable switches nothing; :func:`retime` times the candidates again, up to
``attempts`` batches in all, and decides on the first stable one.

Candidates, all within the same bound:

1. the plan on gains shrunk by their standard errors (what ``make_plan`` picks);
2. the plan on the unshrunk gains;
3. each uniform plan (every layer in one precision) within the bound and the constraints
   that the table predicts faster than the baseline, best predicted first: what a user would
   deploy without a planner, and free of the interactions between formats (cache residency
   of a mixed model, casts at precision boundaries) that a table of pieces does not price;
4. the optimum under gains drawn within their standard errors (the noise model of
   :mod:`planner.noise`: one draw per (signature, config), one per signature's reference),
   ``draws`` times; the plans found most often come first.

Up to ``k`` distinct plans. Pure Python: the timing is the caller's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from hwcost.planner.noise import drawn_gains, shrink_gains
from hwcost.planner.objectives import Constraints
from hwcost.planner.problem import Problem
from hwcost.planner.solve import predicted_speedup, solve

from hwcost.errors import HwcostError


@dataclass(frozen=True)
class Candidate:
    """One candidate plan: option picks, where it came from, how often the noisy draws
    chose it, and its predicted speedup (unshrunk gains)."""

    picks: tuple[int, ...]
    origin: str  # shrunk | unshrunk | uniform | drawn
    votes: int
    predicted_speedup: float

    def layers(self, problem: Problem) -> dict[str, str]:
        """Layer -> precision of this plan."""
        out: dict[str, str] = {}
        for c, i in zip(problem.choices, self.picks):
            out.update(zip(c.layer_names, c.options[i].config))
        return out


@dataclass(frozen=True)
class Retimed:
    """The candidates, their measured latencies and standard errors (microseconds, same
    order; 0 where not given) and the index of the one kept."""

    candidates: tuple[Candidate, ...]
    measured_us: tuple[float, ...]
    kept: int
    stderr_us: tuple[float, ...] = ()
    attempts: int = 1  # interleaved batches timed: later ones when an earlier was unstable

    @property
    def best(self) -> Candidate:
        return self.candidates[self.kept]

    @property
    def unstable(self) -> bool:
        """Whether any candidate's timing was unstable (an infinite standard error)."""
        return _any_unstable(self.stderr_us)

    def to_dict(self) -> dict:
        return {"kept": self.kept, "stable": not self.unstable, "attempts": self.attempts,
                "candidates": [{"origin": c.origin, "votes": c.votes,
                                "predicted_speedup": round(c.predicted_speedup, 4),
                                "measured_us": round(m, 1),
                                "stderr_us": None if math.isinf(e) else round(e, 1)}
                               for c, m, e in zip(self.candidates, self.measured_us,
                                                  self.stderr_us or (0.0,) * len(self.measured_us))]}

    def line(self) -> str:
        """One line: how many were timed, which was kept and by how much it beat the first."""
        first, best = self.measured_us[0], self.measured_us[self.kept]
        n = len(self.candidates)
        tries = "" if self.attempts == 1 else f" ({self.attempts} batches)"
        if self.kept == 0 and self.unstable:
            return (f"re-timed {n} candidate plans end to end{tries}, but the machine was not "
                    "stable while they ran: kept the planned one (a plan is switched on "
                    "stable timings only)")
        if self.attempts > 1:
            tries = f" (batch {self.attempts}: the earlier ones were timed on an unstable machine)"
        if self.kept == 0:
            return (f"re-timed {n} candidate plans end to end{tries}: none measured faster "
                    "than the planned one beyond the noise; kept the planned one")
        return (f"re-timed {n} candidate plans end to end{tries}: kept candidate "
                f"{self.kept + 1} ({self.best.origin}), {first / best:.3f}x the planned one "
                f"({first:.0f} us -> {best:.0f} us)")


def candidate_plans(problem: Problem, bound: float | None, k: int = 4, *,
                    shrink: float = 1.0, draws: int = 24, seed: int = 0,
                    constraints: Constraints | None = None, uniform: bool = True,
                    time_limit_s: float = 60.0) -> list[Candidate]:
    """Up to ``k`` distinct plans within ``bound`` worth timing end to end (see the module
    docstring); the first is the plan on shrunk gains."""
    if k < 1:
        raise HwcostError(f"re-timing needs at least one candidate, got k={k}")
    votes: dict[tuple[int, ...], int] = {}
    origin: dict[tuple[int, ...], str] = {}
    order: list[tuple[int, ...]] = []

    def add(picks: Sequence[int], why: str, vote: int) -> None:
        key = tuple(picks)
        if key not in origin:
            origin[key] = why
            order.append(key)
        votes[key] = votes.get(key, 0) + vote

    add(solve(shrink_gains(problem, shrink), bound, "time", constraints,
              time_limit_s=time_limit_s).picks, "shrunk", 0)
    add(solve(problem, bound, "time", constraints, time_limit_s=time_limit_s).picks,
        "unshrunk", 0)
    uniforms = _uniform_plans(problem, bound, constraints, time_limit_s) if uniform and k > 1 else []
    for picks in uniforms:
        add(picks, "uniform", 0)
    rng = random.Random(seed)
    n_fixed = len(order)  # planned, unshrunk and uniform ones keep their order
    for _ in range(draws if k > 1 else 0):
        add(solve(drawn_gains(problem, rng), bound, "time", constraints,
                  time_limit_s=time_limit_s).picks, "drawn", 1)
    fixed, drawn = order[:n_fixed], order[n_fixed:]
    # drawn plans by how often they won a draw, then by predicted gain (a stable order)
    drawn.sort(key=lambda p: (-votes[p], -predicted_speedup(problem, p)))
    keep = (fixed + drawn)[:k]
    return [Candidate(p, origin[p], votes[p], predicted_speedup(problem, p)) for p in keep]


def _uniform_plans(problem: Problem, bound: float | None, constraints: Constraints | None,
                   time_limit_s: float) -> list[tuple[int, ...]]:
    """Picks of each uniform plan within the bound and the constraints (solved with every
    layer pinned to one precision, so memory budgets, pins and groups hold) that the table
    predicts faster than the baseline; best predicted first."""
    cons = constraints or Constraints()
    found = []
    for prec in problem.precisions:
        if prec == problem.baseline:
            continue
        pinned = Constraints(None, cons.max_weight_bytes, (*cons.pins, ("*", prec)), cons.groups)
        try:
            picks = tuple(solve(problem, bound, "time", pinned, time_limit_s=time_limit_s).picks)
        except HwcostError:  # over the bound, over the memory budget, or against a pin
            continue
        if predicted_speedup(problem, picks) > 1.0:
            found.append(picks)
    return sorted(found, key=lambda p: -predicted_speedup(problem, p))


def keep_fastest(candidates: Sequence[Candidate], measured_us: Sequence[float],
                 stderr_us: Sequence[float] | None = None, *, sigmas: float = 2.0,
                 min_gain: float = 0.0) -> Retimed:
    """The measured fastest of the candidates that beat the first (the planned one) by more
    than ``sigmas`` standard errors of the difference (``stderr_us``: of each median) and by
    more than ``min_gain`` (relative); the planned one when none does. An unstable timing
    carries an infinite standard error: then the planned one stays, whatever the others read.

    Without the noise rule the fastest of a few plans within 1 % of each other is the one
    whose timing erred low: on the compiled demo a candidate kept for measuring 1.3 % faster
    measured 2 % slower than the planned one when timed again."""
    if not candidates or len(candidates) != len(measured_us):
        raise HwcostError("one measured latency per candidate is needed")
    se = tuple(float(e) for e in stderr_us) if stderr_us is not None else (0.0,) * len(candidates)
    if len(se) != len(candidates):
        raise HwcostError("one standard error per candidate is needed")
    m0 = measured_us[0]
    # one unstable timing makes the whole interleaved batch suspect: no switch at all
    ok = [] if _any_unstable(se) else [
        i for i in range(1, len(candidates))
        if m0 - measured_us[i] > max(sigmas * math.hypot(se[0], se[i]), min_gain * m0)]
    best = min(ok, key=lambda i: measured_us[i]) if ok else 0
    return Retimed(tuple(candidates), tuple(float(m) for m in measured_us), best, se)


def _any_unstable(stderr_us: Sequence[float]) -> bool:
    return any(math.isinf(e) for e in stderr_us)


def retime(problem: Problem, bound: float | None,
           time_plans: Callable[[Mapping[str, Mapping[str, str]]],
                                Mapping[str, float | tuple[float, float]]],
           k: int = 4, attempts: int = 2, **kwargs) -> Retimed:
    """:func:`candidate_plans`, timed by ``time_plans`` (name -> layer map in, name -> median
    microseconds, or (median, its standard error), out; one interleaved timing of all), then
    :func:`keep_fastest`. A batch with an unstable timing is timed again, up to ``attempts``
    batches in all; the first stable one decides (none: the planned one stays). ``kwargs`` go
    to :func:`candidate_plans` (``sigmas`` and ``min_gain`` to :func:`keep_fastest`).

    Why again: a host's level wanders on the scale of seconds (``profiles.window``), so an
    unstable batch is often a moment, not the machine. On the demo's decode workload one
    unstable batch kept a plan that measured 4 % slower than the uniform int8_wo candidate
    (bench/decode.py, run 7)."""
    if attempts < 1:
        raise HwcostError(f"re-timing needs at least one attempt, got attempts={attempts}")
    rule = {k_: kwargs.pop(k_) for k_ in ("sigmas", "min_gain") if k_ in kwargs}
    cands = candidate_plans(problem, bound, k, **kwargs)
    if len(cands) == 1:
        return Retimed(tuple(cands), (float("nan"),), 0)
    names = {f"candidate{i}": c.layers(problem) for i, c in enumerate(cands)}
    for attempt in range(1, attempts + 1):
        got = time_plans(names)
        pairs = [got[f"candidate{i}"] for i in range(len(cands))]
        med = [float(v[0]) if isinstance(v, tuple) else float(v) for v in pairs]
        se = [float(v[1]) if isinstance(v, tuple) else 0.0 for v in pairs]
        kept = replace(keep_fastest(cands, med, se, **rule), attempts=attempt)
        if not kept.unstable:
            break
    return kept
