"""Solve the multiple-choice problem with OR-Tools CP-SAT.

Coefficients are scaled to integers. Loss-MSE coefficients are shifted by each subgraph's
smallest option and rounded *up*, so every returned plan truly meets the float threshold;
the scale puts the threshold at 10^8 units, so rounding can only exclude plans within about
n_subgraphs * 1e-8 of the bound (tests compare against brute force). Gains are scaled to
about 10^9 units in total. Reported numbers are always recomputed in floating point.

Deterministic: one search worker and a fixed seed.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from hwcost.planner.enums import SolverStatus
from hwcost.planner.objectives import Constraints, gain, parse_objective
from hwcost.planner.problem import Choice, Problem, match_layers

from hwcost.errors import HwcostError, Infeasible

_MSE_UNITS = 1e8
_GAIN_UNITS = 1e9


@dataclass
class Solution:
    """A solved plan: one option index per subgraph instance (into ``Choice.options``)."""

    problem: Problem
    objective: str
    picks: tuple[int, ...]
    max_loss_mse: float | None
    status: str  # a SolverStatus value: optimal | feasible
    gap: float  # relative gap between the best bound and the plan (0 when optimal)
    wall_s: float

    @property
    def optimal(self) -> bool:
        return self.status == SolverStatus.OPTIMAL

    @property
    def chosen(self) -> list:
        return [c.options[j] for c, j in zip(self.problem.choices, self.picks)]

    @property
    def gain_us(self) -> float:
        """The predicted time gain (``Problem.plan_gain_us``: once-per-step costs included)."""
        return self.problem.plan_gain_us(self.picks)

    @property
    def loss_mse(self) -> float:
        return sum(o.loss_mse for o in self.chosen)

    @property
    def weight_bytes(self) -> float:
        return sum(o.weight_bytes for o in self.chosen)

    @property
    def plan_us(self) -> float:
        return self.problem.baseline_us - self.gain_us

    @property
    def predicted_speedup(self) -> float:
        return predicted_speedup(self.problem, self.picks)

    @property
    def speedup_rel_error(self) -> float:
        """The stated relative error of the predicted speedup: the standard error of the
        plan's summed gains (:func:`planner.noise.plan_stderr_us`) over the plan latency,
        never below ``MIN_PREDICTION_ERROR`` (subgraph sums miss what happens between
        subgraphs)."""
        from hwcost.planner.noise import plan_stderr_us

        plan = self.plan_us
        rel = plan_stderr_us(self.problem, self.picks) / plan if plan > 0 else math.inf
        return max(MIN_PREDICTION_ERROR, rel)

    @property
    def measured_share(self) -> float:
        """Share of the predicted time gain (by absolute value) resting on costs measured on
        the planned device. A plan with no gain (every layer at the baseline) rests on its
        chosen costs: the share of them measured there (0 when nothing was measured on it)."""
        total = sum(abs(o.gain_us) for o in self.chosen)
        if total == 0:
            return (sum(o.source == "measured" for o in self.chosen) / len(self.chosen)
                    if self.chosen else 0.0)
        return sum(abs(o.gain_us) for o in self.chosen if o.source == "measured") / total

    @property
    def sources(self) -> dict[str, int]:
        """How many chosen subgraph costs come from each source (measured/learned/roofline)."""
        out: dict[str, int] = {}
        for o in self.chosen:
            out[o.source] = out.get(o.source, 0) + 1
        return out

    @property
    def layers(self) -> dict[str, str]:
        return {name: p for c, o in zip(self.problem.choices, self.chosen)
                for name, p in zip(c.layer_names, o.config)}


MIN_PREDICTION_ERROR = 0.05
"""Floor of a plan's stated speedup error: the additivity benchmark's error of summed subgraph
latencies against the whole model is a few percent on a quiet CPU."""


def predicted_speedup(problem: Problem, picks: Sequence[int]) -> float:
    """Baseline end-to-end latency over predicted latency of a pick of options."""
    plan = problem.baseline_us - problem.plan_gain_us(picks)
    if plan <= 0:
        raise HwcostError("predicted plan latency is not positive: the cost table is inconsistent "
                          "with the stored whole-model baseline")
    return problem.baseline_us / plan


# ----------------------------------------------------------------------- compilation


@dataclass
class Compiled:
    """The problem restricted by pins and groups and pruned of dominated options.

    Reused across the thresholds of a sweep.
    """

    problem: Problem
    objective: str
    constraints: Constraints
    keep: list[list[int]]  # per choice, indices of the options still in play
    gains: list[list[float]]
    mses: list[list[float]]
    nbytes: list[list[float]]
    group_prec: list[list[dict[int, str]]]  # per choice/option: group id -> precision
    n_groups: int


def compile_problem(problem: Problem, objective: str = "time",
                    constraints: Constraints | None = None,
                    exclude: Collection[str] = ()) -> Compiled:
    """Apply pins and groups, drop options using a precision in ``exclude`` and dominated
    options (less gain and more loss MSE)."""
    parse_objective(objective)
    cons = constraints or Constraints()
    layers = problem.layers
    pinned = _pins(problem, cons, layers)
    group_of = _groups(cons, layers)
    use_mem = cons.max_weight_bytes is not None
    keep, gains, mses, nbytes, gprec = [], [], [], [], []
    for c in problem.choices:
        rows = []
        for j, o in enumerate(c.options):
            if any(pinned.get(n, p) != p for n, p in zip(c.layer_names, o.config)):
                continue
            if exclude and not exclude.isdisjoint(o.config):
                continue
            gp: dict[int, str] = {}
            if not _consistent(c, o.config, group_of, gp):
                continue
            rows.append((j, gain(c, o, objective), o.loss_mse, o.weight_bytes, gp))
        if not rows:
            raise Infeasible(f"no configuration of subgraph {c.position} "
                             f"({', '.join(c.layer_names)}) satisfies the pins and groups "
                             "with the costs in the store")
        rows = _pareto(rows, use_mem)
        keep.append([r[0] for r in rows])
        gains.append([r[1] for r in rows])
        mses.append([r[2] for r in rows])
        nbytes.append([r[3] for r in rows])
        gprec.append([r[4] for r in rows])
    n_groups = max(group_of.values(), default=-1) + 1
    return Compiled(problem, objective, cons, keep, gains, mses, nbytes, gprec, n_groups)


def _pins(problem: Problem, cons: Constraints, layers: list[str]) -> dict[str, str]:
    pinned: dict[str, str] = {}
    for pat, prec in cons.pins:
        if prec not in problem.precisions:
            raise HwcostError(f"pin {pat}={prec}: {prec} is not among the planned precisions "
                              f"({', '.join(problem.precisions)})")
        hits = match_layers(pat, layers)
        if not hits:
            raise HwcostError(f"pin pattern {pat!r} matches no layer of {problem.model_name!r}")
        for n in hits:
            if pinned.get(n, prec) != prec:
                raise Infeasible(f"layer {n} is pinned to both {pinned[n]} and {prec}")
            pinned[n] = prec
    return pinned


def _groups(cons: Constraints, layers: list[str]) -> dict[str, int]:
    """Layer -> group id; groups that share a layer are merged."""
    parent = list(range(len(cons.groups)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for g, pats in enumerate(cons.groups):
        hits = [n for pat in pats for n in match_layers(pat, layers)]
        if not hits:
            raise HwcostError(f"group {','.join(pats)!r} matches no layer")
        for n in hits:
            if n in owner:
                parent[find(g)] = find(owner[n])
            owner[n] = g
    roots = sorted({find(g) for g in owner.values()})
    dense = {r: i for i, r in enumerate(roots)}
    return {n: dense[find(g)] for n, g in owner.items()}


def _consistent(c: Choice, config: tuple[str, ...], group_of: dict[str, int],
                out: dict[int, str]) -> bool:
    for n, p in zip(c.layer_names, config):
        g = group_of.get(n)
        if g is None:
            continue
        if out.setdefault(g, p) != p:
            return False
    return True


def _pareto(rows: list, use_mem: bool) -> list:
    """Keep options no other option beats on gain, loss MSE (and bytes with a memory budget),
    separately for each assignment of group precisions (tied groups make those incomparable)."""
    by_key: dict[tuple, list] = {}
    for r in rows:
        by_key.setdefault(tuple(sorted(r[4].items())), []).append(r)
    out = []
    for part in by_key.values():
        if not use_mem:
            part = sorted(part, key=lambda r: (r[2], -r[1], r[0]))
            best = -math.inf
            for r in part:
                if r[1] > best:
                    out.append(r)
                    best = r[1]
            continue
        for r in part:
            if not any(_dominates(q, r) for q in part if q is not r):
                out.append(r)
    return sorted(out, key=lambda r: r[0])


def _dominates(q, r) -> bool:
    ge = q[1] >= r[1] and q[2] <= r[2] and q[3] <= r[3]
    strict = q[1] > r[1] or q[2] < r[2] or q[3] < r[3]
    return ge and (strict or q[0] < r[0])


# ------------------------------------------------------------------------------ solving


def solve(problem: Problem, max_loss_mse: float | None, objective: str = "time",
          constraints: Constraints | None = None, *, time_limit_s: float = 60.0,
          seed: int = 0) -> Solution:
    """The plan that maximises ``objective`` gain subject to predicted loss MSE <= the bound.

    With once-per-step costs (``Problem.presence_us``, time objective) the problem is no
    longer separable by subgraph: a step pays the largest cost of the formats a plan uses.
    Each subset of the costly precisions is then solved as its own separable problem (the
    others excluded) and the plan with the best gain net of the costs it pays is kept:
    exact for any cost of a set of formats, and at most 2^3 solves for a decode problem's
    formats.

    Raises ``Infeasible`` (with the smallest achievable loss MSE) when no plan meets it.
    """
    t0 = time.perf_counter()
    best = solve_compiled(compile_problem(problem, objective, constraints), max_loss_mse,
                          time_limit_s=time_limit_s, seed=seed)
    costly = presence_precisions(problem, objective)
    for r in range(len(costly)):
        for kept in itertools.combinations(costly, r):
            excluded = set(costly) - set(kept)
            try:
                sol = solve_compiled(compile_problem(problem, objective, constraints, excluded),
                                     max_loss_mse, time_limit_s=time_limit_s, seed=seed)
            except Infeasible:  # a pin or the bound needs an excluded precision
                continue
            if sol.gain_us > best.gain_us + 1e-9 * (abs(best.gain_us) + 1.0):
                best = sol
    return replace(best, wall_s=time.perf_counter() - t0)


def presence_precisions(problem: Problem, objective: str = "time") -> list[str]:
    """The precisions whose once-per-step cost a plan pays (time objective only): the
    solver enumerates which of them a plan uses."""
    if objective != "time":
        return []
    return sorted({p for costs in problem.presence_us.values() for p, us in costs.items()
                   if us > 0 and p != problem.baseline})


def min_loss_mse(comp: Compiled, *, time_limit_s: float = 60.0, seed: int = 0) -> float:
    """Smallest predicted loss MSE any plan meeting the pins, groups and memory budget has."""
    if comp.n_groups == 0 and comp.constraints.max_weight_bytes is None:
        return sum(min(m) for m in comp.mses)
    from ortools.sat.python import cp_model

    model, x = _base_model(comp)
    if x is None:
        raise Infeasible("no plan fits the memory budget")
    lo = [min(m) for m in comp.mses]
    span = max((max(m) - low for m, low in zip(comp.mses, lo)), default=0.0) or 1.0
    scale = _MSE_UNITS / span
    model.Minimize(sum(int(round((m - low) * scale)) * v for xs, ms, low in zip(x, comp.mses, lo)
                       for v, m in zip(xs, ms)))
    solver = _solver(time_limit_s, seed)
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise Infeasible("no plan meets the pins, groups and memory budget together")
    return sum(ms[_picked(solver, xs)] for xs, ms in zip(x, comp.mses))


def solve_compiled(comp: Compiled, max_loss_mse: float | None, *, time_limit_s: float = 60.0,
                   seed: int = 0, hint: Sequence[int] | None = None) -> Solution:
    """Solve a compiled problem at one loss-MSE bound (``None``: unconstrained)."""
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    lo = [min(m) for m in comp.mses]
    allowed = [list(range(len(ms))) for ms in comp.mses]
    slack = None
    if max_loss_mse is not None:
        slack = max_loss_mse - sum(lo)
        if slack < -1e-12 * max(1.0, abs(max_loss_mse)):
            _raise_infeasible(comp, max_loss_mse, time_limit_s, seed)
        slack = max(slack, 0.0)
        # Options that alone exceed the slack can never be picked.
        allowed = [[k for k, m in enumerate(ms) if m - low <= slack]
                   for ms, low in zip(comp.mses, lo)]
        if sum(max(comp.mses[i][k] - lo[i] for k in a) for i, a in enumerate(allowed)) <= slack:
            slack = None  # the bound cannot bind any more
    scale = _MSE_UNITS / slack if slack else 0.0
    if slack and comp.n_groups == 0 and comp.constraints.max_weight_bytes is None:
        allowed, incumbent = _lagrangian_fixing(comp, allowed, lo, slack, scale)
        if incumbent is not None and hint is None:
            hint = incumbent
    model, x = _base_model(comp, allowed)
    if x is None:
        _raise_infeasible(comp, max_loss_mse, time_limit_s, seed)
    if slack is not None:
        terms = []
        for xs, ks, ms, low in zip(x, allowed, comp.mses, lo):
            for v, k in zip(xs, ks):
                d = ms[k] - low
                if d > 0:
                    terms.append(math.ceil(d * scale) * v if slack > 0 else v)
        model.Add(sum(terms) <= (int(_MSE_UNITS) if slack > 0 else 0))
    span = sum(max(abs(comp.gains[i][k]) for k in ks) for i, ks in enumerate(allowed)) or 1.0
    gscale = _GAIN_UNITS / span
    model.Maximize(sum(int(round(comp.gains[i][k] * gscale)) * v
                       for i, (xs, ks) in enumerate(zip(x, allowed)) for v, k in zip(xs, ks)))
    if hint is not None:
        for i, (xs, ks) in enumerate(zip(x, allowed)):
            for v, k in zip(xs, ks):
                model.AddHint(v, comp.keep[i][k] == hint[i])
    solver = _solver(time_limit_s, seed)
    status = solver.Solve(model)
    if status == cp_model.INFEASIBLE:
        _raise_infeasible(comp, max_loss_mse, time_limit_s, seed)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise HwcostError(f"the solver found no plan within {time_limit_s:g} s; raise the time limit")
    picks = tuple(comp.keep[i][ks[_picked(solver, xs)]]
                  for i, (xs, ks) in enumerate(zip(x, allowed)))
    obj, bound = solver.ObjectiveValue(), solver.BestObjectiveBound()
    optimal = status == cp_model.OPTIMAL
    gap = 0.0 if optimal else abs(bound - obj) / max(abs(obj), 1.0)
    return Solution(comp.problem, comp.objective, picks, max_loss_mse,
                    (SolverStatus.OPTIMAL if optimal else SolverStatus.FEASIBLE).value, gap,
                    time.perf_counter() - t0)


def _lagrangian_fixing(comp: Compiled, allowed: list[list[int]], lo: list[float], slack: float,
                       scale: float) -> tuple[list[list[int]], tuple[int, ...] | None]:
    """Drop options that provably belong to no optimal plan (reduced-cost fixing).

    Relaxing the loss-MSE row with a multiplier lam >= 0 gives the upper bound
    ``U(lam) = sum_i max_k (g_ik - lam d_ik) + lam * slack`` on every plan; a plan that picks
    option k of subgraph i is worth at most ``U(lam) - rc_ik``, where rc_ik is how far k falls
    short of its subgraph's best term. The plan of the argmax at the smallest lam whose loss
    fits is feasible (the incumbent, worth L); options with ``U - rc < L`` are dropped. The
    multiplier is found by bisection. Returns the reduced option lists and the incumbent (as
    option indices into ``Choice.options``), or the input unchanged when nothing is proven.
    """
    import numpy as np

    sizes = [len(a) for a in allowed]
    starts = np.cumsum([0] + sizes[:-1])
    g = np.array([comp.gains[i][k] for i, a in enumerate(allowed) for k in a], dtype=float)
    d = np.array([comp.mses[i][k] - lo[i] for i, a in enumerate(allowed) for k in a], dtype=float)
    owner = np.repeat(np.arange(len(allowed)), sizes)

    def picks(lam: float):
        v = g - lam * d
        best = np.maximum.reduceat(v, starts)
        # among ties the smallest loss, so the pick is feasible at the breakpoint
        cand = np.where(v >= best[owner] - 1e-12 * (np.abs(best[owner]) + 1.0), -d, -np.inf)
        idx = np.array([s + int(np.argmax(cand[s:s + n])) for s, n in zip(starts, sizes)])
        return idx, best

    idx0, _ = picks(0.0)
    if d[idx0].sum() <= slack:
        return allowed, None
    positive = d[d > 0]
    hi = 2.0 * (np.ptp(g) + 1.0) / positive.min() if positive.size else 1.0
    lo_lam = 0.0
    for _ in range(200):
        mid = 0.5 * (lo_lam + hi)
        if d[picks(mid)[0]].sum() <= slack:
            hi = mid
        else:
            lo_lam = mid
        if hi - lo_lam <= 1e-12 * hi:
            break
    idx, _ = picks(hi)
    idx = _greedy_fill(g, d, idx, starts, sizes, owner, slack)
    # The incumbent must also fit the integer-scaled row the solver checks.
    if sum(math.ceil(x * scale) for x in d[idx] if x > 0) > _MSE_UNITS:
        return allowed, None
    lower = float(g[idx].sum())
    ub_best, rc_best = math.inf, None
    for lam in (lo_lam, hi):
        v = g - lam * d
        best = np.maximum.reduceat(v, starts)
        ub = float(best.sum() + lam * slack)
        if ub < ub_best:
            ub_best, rc_best = ub, best[owner] - v
    tol = 1e-9 * (abs(ub_best) + abs(lower) + 1.0)
    keep = (ub_best - rc_best >= lower - tol)
    keep[idx] = True
    reduced = [[k for k, ok in zip(a, keep[s:s + n]) if ok]
               for a, s, n in zip(allowed, starts, sizes)]
    incumbent = tuple(comp.keep[i][allowed[i][int(j - s)]]
                      for i, (j, s) in enumerate(zip(idx, starts)))
    return reduced, incumbent


def _greedy_fill(g, d, idx, starts, sizes, owner, slack: float):
    """Improve a feasible pick by the best-gain swaps the remaining loss budget allows (a
    better incumbent lets reduced-cost fixing drop more options)."""
    import numpy as np

    idx = idx.copy()
    used = float(d[idx].sum())
    for _ in range(4 * len(sizes)):
        cur = idx[owner]
        dg = g - g[cur]
        dd = d - d[cur]
        ok = (dg > 0) & (dd <= slack - used)
        if not ok.any():
            break
        j = int(np.argmax(np.where(ok, dg, -np.inf)))
        i = int(owner[j])
        used += float(dd[j])
        idx[i] = j
    return idx


def _base_model(comp: Compiled, allowed: list[list[int]] | None = None):
    """CP-SAT model with one-of per subgraph, group ties and the memory budget."""
    from ortools.sat.python import cp_model

    allowed = allowed or [list(range(len(ms))) for ms in comp.mses]
    model = cp_model.CpModel()
    if any(not a for a in allowed):
        return model, None
    x = [[model.NewBoolVar(f"x{i}_{k}") for k in ks] for i, ks in enumerate(allowed)]
    for xs in x:
        model.AddExactlyOne(xs)
    if comp.n_groups:
        precs = comp.problem.precisions
        y = [[model.NewBoolVar(f"g{g}_{p}") for p in precs] for g in range(comp.n_groups)]
        for ys in y:
            model.AddExactlyOne(ys)
        for i, (xs, ks) in enumerate(zip(x, allowed)):
            touched = {g for k in ks for g in comp.group_prec[i][k]}
            for g in touched:
                for pi, p in enumerate(precs):
                    model.Add(sum(v for v, k in zip(xs, ks)
                                  if comp.group_prec[i][k].get(g) == p) == y[g][pi])
    budget = comp.constraints.max_weight_bytes
    if budget is not None:
        # Bytes are whole numbers of (scaled) elements; kilobyte units keep coefficients small
        # and round each option up so the budget is never exceeded.
        unit = 1024.0
        model.Add(sum(math.ceil(comp.nbytes[i][k] / unit) * v
                      for i, (xs, ks) in enumerate(zip(x, allowed)) for v, k in zip(xs, ks))
                  <= int(budget // unit))
    return model, x


def _solver(time_limit_s: float, seed: int):
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1  # one worker: the same answer on every run and machine
    solver.parameters.random_seed = seed
    solver.parameters.max_time_in_seconds = time_limit_s
    # The LP relaxation of a multiple-choice knapsack is tight; full linearization lets the
    # single worker prove optimality fast (about 10x fewer seconds at hard thresholds).
    solver.parameters.linearization_level = 2
    # After reduced-cost fixing the model is small; probing and symmetry detection cost more
    # than they save on it (measured on the 70B-shaped benchmark: -25% CPU time per sweep).
    solver.parameters.cp_model_probing_level = 0
    solver.parameters.symmetry_level = 0
    return solver


def _picked(solver, xs) -> int:
    return next(k for k, v in enumerate(xs) if solver.BooleanValue(v))


def _raise_infeasible(comp: Compiled, bound: float | None, time_limit_s: float, seed: int):
    best = min_loss_mse(comp, time_limit_s=time_limit_s, seed=seed)
    if bound is None or best <= bound:
        err = Infeasible(f"no plan fits the memory budget of {comp.constraints.max_weight_bytes:.4g} "
                         f"bytes with predicted loss MSE <= {bound if bound is not None else 'any'}")
    else:
        err = Infeasible(f"no plan has predicted loss MSE <= {bound:.4g}; the smallest achievable "
                         f"is {best:.4g}")
    err.min_loss_mse = best
    raise err
