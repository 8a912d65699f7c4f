"""Close the loop on the loss bound: plan, measure the deployed loss MSE, rescale, re-plan.

First-order Taylor underestimates large perturbations (on a real MiniLM the deployed loss MSE
overshot a 10 % bound 1.36x). :func:`plan_within_bound` plans, measures the plan's true loss
MSE (any callable: held-out data through the deployed model), and while it exceeds the bound
scales every prediction by the measured-over-predicted ratio seen so far and plans again,
reporting each round. The all-baseline plan has zero loss, so a bound >= 0 is always reachable;
``max_rounds`` caps the measurements.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

from hwcost.errors import HwcostError


@dataclass(frozen=True)
class LoopRound:
    """One round: the prediction scale used, the plan's predicted (unscaled) and measured loss
    MSE, its predicted speedup, and whether it met the bound."""

    round: int
    loss_scale: float
    predicted_mse: float
    measured_mse: float
    predicted_speedup: float
    low_layers: int
    within: bool

    def line(self, bound: float) -> str:
        return (f"round {self.round}: predictions x{self.loss_scale:.3g}, plan of "
                f"{self.low_layers} low-precision layers, predicted {self.predicted_mse:.3g}, "
                f"measured {self.measured_mse:.3g} ({self.measured_mse / bound:.2f}x the bound "
                f"{bound:.3g}) {'within' if self.within else 'over'}")


@dataclass
class LoopResult:
    """The rounds and the plan kept (the last one within the bound, else the last one)."""

    bound: float
    rounds: list[LoopRound] = field(default_factory=list)
    result: object = None  # the planner.plans.PlanResult kept

    @property
    def within(self) -> bool:
        return bool(self.rounds) and self.rounds[-1].within

    @property
    def measured_over_bound(self) -> float:
        return self.rounds[-1].measured_mse / self.bound if self.bound > 0 else float("inf")

    def to_dict(self) -> dict:
        return {"bound": self.bound, "within": self.within,
                "rounds": [asdict(r) for r in self.rounds]}


def plan_within_bound(plan: Callable[[float], object], measure: Callable[[Mapping[str, str]], float],
                      bound: float, *, max_rounds: int = 4, first: object = None,
                      first_measured: float | None = None,
                      report: Callable[[str], None] | None = None) -> LoopResult:
    """Re-plan until the measured loss MSE is within ``bound``.

    Args:
        plan: ``loss_scale -> PlanResult`` (e.g. ``make_plan(..., loss_scale=s)``): the plan
            whose predicted loss MSE times ``loss_scale`` meets the bound.
        measure: ``layers -> measured loss MSE`` of that plan deployed.
        bound: the absolute loss-MSE bound.
        max_rounds: measurements at most (the first plan included).
        first, first_measured: a plan already made and measured (round 1 then costs nothing).
        report: called with each round's line.
    """
    if not bound >= 0:
        raise HwcostError(f"the loss-MSE bound must be >= 0, got {bound}")
    out = LoopResult(bound)
    scale = 1.0
    seen: set[tuple] = set()
    result = first
    for r in range(1, max_rounds + 1):
        if result is None:
            result = plan(scale)
        layers = dict(result.solution.layers)
        key = tuple(sorted(layers.items()))
        if r > 1 and key in seen:  # the same plan again: tighten until it changes
            scale *= 1.5
            result = plan(scale)
            layers = dict(result.solution.layers)
            key = tuple(sorted(layers.items()))
        seen.add(key)
        measured = first_measured if (r == 1 and first is not None
                                      and first_measured is not None) else measure(layers)
        predicted = result.solution.loss_mse
        base = result.problem.baseline
        rnd = LoopRound(r, scale, predicted, measured, result.solution.predicted_speedup,
                        sum(p != base for p in layers.values()), measured <= bound)
        out.rounds.append(rnd)
        out.result = result
        if report:
            report(rnd.line(bound))
        if rnd.within:
            break
        # the measured-over-predicted ratio of this plan, never below the scale already used
        ratio = measured / predicted if predicted > 0 else float("inf")
        scale = max(scale * 1.25, ratio) if ratio != float("inf") else scale * 4
        result = None
    return out
