"""The Pareto frontier of predicted loss MSE against predicted speedup."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hwcost.planner.objectives import Constraints
from hwcost.planner.problem import Problem
from hwcost.planner.solve import (
    Solution,
    compile_problem,
    min_loss_mse,
    presence_precisions,
    solve,
    solve_compiled,
)

from hwcost.errors import HwcostError


@dataclass(frozen=True)
class FrontierPoint:
    """One solved threshold of a sweep."""

    threshold: float
    solution: Solution

    def to_dict(self) -> dict:
        s = self.solution
        return {"max_loss_mse": self.threshold, "loss_mse": s.loss_mse,
                "speedup": s.predicted_speedup, "gain": s.gain_us, "status": s.status,
                "gap": s.gap, "n_low": sum(p != s.problem.baseline for p in s.layers.values())}


def sweep(problem: Problem, n: int, objective: str = "time",
          constraints: Constraints | None = None, *, time_limit_s: float = 60.0) -> list[FrontierPoint]:
    """Solve at ``n`` thresholds spaced geometrically from the smallest achievable loss MSE
    to the loss MSE of the unconstrained best plan; each solve starts from the previous plan."""
    if n < 2:
        raise HwcostError(f"a sweep needs at least 2 points, got {n}")
    comp = compile_problem(problem, objective, constraints)
    # once-per-step costs make each point a few separable solves (planner.solve.solve)
    costly = bool(presence_precisions(problem, objective))
    top = (solve(problem, None, objective, constraints, time_limit_s=time_limit_s) if costly
           else solve_compiled(comp, None, time_limit_s=time_limit_s))
    hi = top.loss_mse
    lo = min_loss_mse(comp, time_limit_s=time_limit_s)
    thresholds = _thresholds(comp, lo, hi, n)
    points, hint = [], None
    for t in thresholds:
        sol = (solve(problem, t, objective, constraints, time_limit_s=time_limit_s) if costly
               else solve_compiled(comp, t, time_limit_s=time_limit_s, hint=hint))
        hint = sol.picks
        points.append(FrontierPoint(t, sol))
    return points


def _thresholds(comp, lo: float, hi: float, n: int) -> list[float]:
    if hi <= lo:
        return [lo]
    start = lo
    if start <= 0:
        positive = [m for ms in comp.mses for m in ms if m > 0]
        start = max(min(positive, default=hi), hi * 1e-6)
        head = [lo]
        n -= 1
    else:
        head = []
    if n == 1:
        return head + [hi]
    ratio = (hi / start) ** (1.0 / (n - 1))
    return head + [start * ratio ** i for i in range(n - 1)] + [hi]


def frontier_table(points: list[FrontierPoint]) -> list[dict]:
    """Rows for a table: threshold, achieved loss MSE, speedup, low-precision layer count."""
    return [{"max_loss_mse": p.threshold, "loss_mse": p.solution.loss_mse,
             "speedup": round(p.solution.predicted_speedup, 4),
             "low_layers": p.to_dict()["n_low"], "status": p.solution.status}
            for p in points if not math.isnan(p.threshold)]
