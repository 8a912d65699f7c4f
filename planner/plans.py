"""Plan from the store, keep plans in it, and find them again (what ``hwcost plan`` and
``hwcost validate`` call)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from hwcost.planner.export import plan_document, read_plan_document
from hwcost.planner.objectives import Constraints, Threshold, parse_objective
from hwcost.planner.problem import Problem, build_problem
from hwcost.planner.solve import Solution, solve

from hwcost.errors import PlanInvalid
from hwcost.store import PlanDocument, PlanPrediction, PlanRecord

if TYPE_CHECKING:
    from hwcost.planner.retime import Retimed

TimePlans = Callable[[Mapping[str, Mapping[str, str]]], Mapping[str, float | tuple[float, float]]]
"""Times plans end to end: name -> layer map in, name -> median microseconds (or the median
and its standard error) out."""


@dataclass
class PlanResult:
    """A solved plan, its document, and its id in the store once saved."""

    problem: Problem
    solution: Solution
    document: PlanDocument
    plan_id: int | None = None
    p_not_fastest: float | None = None  # chance a rival plan is faster (planner.noise)
    retimed: Retimed | None = None  # the candidates timed end to end, when asked (planner.retime)

    @property
    def noise_line(self) -> str | None:
        """One line saying what ``p_not_fastest`` means for this plan, or None (not a time
        plan)."""
        return noise_line(self.document.predicted)


def make_plan(store, model: str, device: str, shape: str, threshold: Threshold | None,
              objective: str = "time", constraints: Constraints | None = None, *,
              precisions=None, method: str = "taylor", time_limit_s: float = 60.0,
              problem: Problem | None = None, checkpoint: str | None = None,
              quantizer: str | None = None,
              allow_unstable: bool = False, shrink: float = 1.0, measured: bool = False,
              loss_scale: float = 1.0, retime: TimePlans | None = None,
              retime_k: int = 4) -> PlanResult:
    """Build the problem from the store (the sensitivity table of ``checkpoint`` and
    ``quantizer``, see ``build_problem``), solve it and return the plan document (not saved).
    Quick or unstable timings are used only with ``allow_unstable``.

    Time plans are chosen on gains shrunk by ``shrink`` standard errors
    (:func:`planner.noise.shrink_gains`) and predicted with the unshrunk gains; the result
    carries the chance that a rival plan is faster. ``measured`` plans from measured costs
    only. ``loss_scale`` multiplies every predicted loss MSE for the bound (the closed loop's
    measured-over-predicted ratio, :mod:`planner.closed_loop`).

    ``retime`` (time plans only): a callable timing plans end to end (name -> layer map in,
    name -> median microseconds, or (median, standard error), out; one interleaved timing;
    ``planner.apply.time_configs`` on the real deployment). Then up to ``retime_k``
    candidate plans within the bound are timed and the measured fastest is kept when it beats
    the planned one beyond the noise (:mod:`planner.retime`); the plan's notes say which and
    by how much."""
    from hwcost.planner.anchors import scales_line
    from hwcost.planner.noise import chance_not_fastest, measured_only, plan_stderr_us, rivals, shrink_gains

    parse_objective(objective)
    problem = problem or build_problem(store, model, device, shape, precisions=precisions,
                                       method=method, checkpoint=checkpoint, quantizer=quantizer,
                                       allow_unstable=allow_unstable)
    if measured:
        problem = measured_only(problem)
    bound = threshold.resolve(problem) if threshold is not None else None
    cons = constraints or Constraints()
    cons = Constraints(bound, cons.max_weight_bytes, cons.pins, cons.groups)
    eff = bound / loss_scale if bound is not None and loss_scale > 0 else bound
    k = shrink if objective == "time" else 0.0
    sol = solve(shrink_gains(problem, k), eff, objective, cons, time_limit_s=time_limit_s)
    sol = replace(sol, problem=problem, max_loss_mse=bound)
    retimed = None
    if retime is not None and objective == "time":
        from hwcost.planner.retime import retime as retime_plans

        retimed = retime_plans(problem, eff, retime, k=retime_k, shrink=k, constraints=cons,
                               time_limit_s=time_limit_s)
        sol = replace(sol, picks=retimed.best.picks)
    p_not = None
    n_rivals = 0
    if objective == "time":
        others = []
        if k > 0:  # the plan the unshrunk gains pick is the first rival
            others.append(solve(problem, eff, objective, cons, time_limit_s=time_limit_s).picks)
        p_not = chance_not_fastest(problem, sol.picks, eff, others=others)
        n_rivals = len(rivals(problem, sol.picks, eff, others))
    doc = plan_document(sol, cons, str(threshold) if threshold is not None else None)
    predicted = doc.predicted.updated(
        p_not_fastest=p_not, rivals=n_rivals,
        latency_stderr_us=plan_stderr_us(problem, sol.picks), gain_shrink_sigmas=k,
        **({"loss_scale": loss_scale} if loss_scale != 1.0 else {}))
    notes = bound_notes(problem, sol, bound, objective, cons, time_limit_s)
    anchors = scales_line(problem.gain_scales, problem.presence_us)
    if anchors:
        notes.append(anchors)
    if retimed is not None and len(retimed.candidates) > 1:
        notes.append(retimed.line())
    doc = doc.updated(notes=tuple(notes), predicted=predicted,
                      **({"threshold_abs": bound} if threshold is not None else {}))
    return PlanResult(problem, sol, doc, p_not_fastest=p_not, retimed=retimed)


def noise_line(predicted: PlanPrediction) -> str | None:
    """What the plan document's ``p_not_fastest`` means, in one line (None when absent):
    ``8% chance that one of 57 rival plans is faster (standard errors of the medians; plan
    time +- 12 us)``."""
    p = predicted.p_not_fastest
    if p is None:
        return None
    n = predicted.rivals
    se = predicted.latency_stderr_us
    if n == 0:
        return "no rival plan within the bound differs by one subgraph: nothing to compare"
    pct = f"{p:.0%}" if 0.01 <= p <= 0.99 or p in (0.0, 1.0) else (
        "<1%" if p < 0.01 else ">99%")
    rivals = f"one of {n} rival plans" if n else "a rival plan"
    tail = f"; plan time +- {se:.3g} us" if se is not None else ""
    return (f"{pct} chance that {rivals} (one subgraph changed, within the bound) is faster, "
            f"gains drawn within their standard errors{tail}")


def bound_notes(problem: Problem, sol: Solution, bound: float | None, objective: str,
                cons: Constraints, time_limit_s: float = 60.0) -> list[str]:
    """What a user should know about the loss-MSE bound: that it does not bind (the plan is
    the fastest plan there is, the bound could be tighter for free), or that it forces every
    layer to the baseline precision (nothing gains)."""
    if bound is None:
        return []
    free = solve(problem, None, objective, Constraints(None, cons.max_weight_bytes, cons.pins,
                                                       cons.groups), time_limit_s=time_limit_s)
    if free.gain_us <= 0:
        return []
    if sol.gain_us >= free.gain_us * (1 - 1e-9):
        return [f"the bound {bound:.4g} does not bind: this is the fastest plan there is (loss "
                f"MSE {free.loss_mse:.4g}); a tighter bound would lose nothing up to there"]
    if all(o is c.baseline for c, o in zip(problem.choices, sol.chosen)):
        return [f"the bound {bound:.4g} forces the baseline: no layer can leave "
                f"{problem.baseline} within it; the fastest plan needs loss MSE "
                f"{free.loss_mse:.4g}"]
    return []


def save_plan(store, result: PlanResult) -> int:
    """Store the plan (``Store.put_plan``); its id is also written into the document. An
    identical plan already stored (same model, checkpoint, quantizer, device, shape, objective,
    bound, constraints and layer precisions) is not stored again: its id is returned and
    ``result.document`` becomes the stored document, so that one plan has one prediction
    (what ``hwcost run`` and ``hwcost validate`` print for it), not a new one per call as
    later whole-model latencies move the baseline."""
    p = result.problem
    # the refs the problem was built from (else its fingerprints: exact keys, not resolved)
    model = p.model_ref or p.model_fingerprint
    dev = p.device_ref or p.device_fingerprint
    same = _same_plan_key(result.document)
    for stored in store.plans(model, dev, p.shape, checkpoint=p.checkpoint,
                              quantizer=p.quantizer):
        if _same_plan_key(stored.document) == same:
            result.plan_id = stored.id
            result.document = stored.document.with_plan_id(stored.id)
            return stored.id
    result.plan_id = store.put_plan(PlanRecord.of_document(result.document))
    result.document = result.document.with_plan_id(result.plan_id)
    return result.plan_id


def _same_plan_key(doc: PlanDocument) -> str:
    """What makes two plans the same plan (not the solver's wall time or the predictions of a
    newer baseline)."""
    data = doc.to_dict()
    keys = ("objective", "max_loss_mse", "constraints", "layers", "baseline", "precisions")
    return json.dumps({k: data.get(k) for k in keys}, sort_keys=True)


def load_plan(store, ref: str) -> tuple[PlanDocument, int | None]:
    """A plan by store id (``12``) or JSON file path; returns (document, plan id or None).

    A file that carries a ``plan_id`` of a plan in this store is tied to that row."""
    if str(ref).isdigit() and not Path(ref).exists():
        stored = store.plan(int(ref))
        return stored.document.with_plan_id(stored.id), stored.id
    if not Path(ref).exists():
        raise PlanInvalid(f"no plan {ref!r}: give a plan id from the store or a plan JSON file")
    doc = read_plan_document(ref)
    return doc, doc.plan_id
