"""Plan from the store, keep plans in it, and find them again (what ``hwcost plan`` and
``hwcost validate`` call)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hwcost.errors import PlanInvalid
from hwcost.schema import Plan
from planner.export import plan_document, read_plan, validate_plan
from planner.objectives import Constraints, Threshold, parse_objective
from planner.problem import Problem, build_problem
from planner.solve import Solution, solve


@dataclass
class PlanResult:
    """A solved plan, its document, and its id in the store once saved."""

    problem: Problem
    solution: Solution
    document: dict
    plan_id: int | None = None


def make_plan(store, model: str, device: str, shape: str, threshold: Threshold | None,
              objective: str = "time", constraints: Constraints | None = None, *,
              precisions=None, method: str = "taylor", time_limit_s: float = 60.0,
              problem: Problem | None = None, checkpoint: str | None = None,
              quantizer: str | None = None,
              allow_unstable: bool = False) -> PlanResult:
    """Build the problem from the store (the sensitivity table of ``checkpoint`` and
    ``quantizer``, see ``build_problem``), solve it and return the plan document (not saved).
    Quick or unstable timings are used only with ``allow_unstable``."""
    parse_objective(objective)
    problem = problem or build_problem(store, model, device, shape, precisions=precisions,
                                       method=method, checkpoint=checkpoint, quantizer=quantizer,
                                       allow_unstable=allow_unstable)
    bound = threshold.resolve(problem) if threshold is not None else None
    cons = constraints or Constraints()
    cons = Constraints(bound, cons.max_weight_bytes, cons.pins, cons.groups)
    sol = solve(problem, bound, objective, cons, time_limit_s=time_limit_s)
    doc = plan_document(sol, cons, str(threshold) if threshold is not None else None)
    return PlanResult(problem, sol, doc)


def save_plan(store, result: PlanResult) -> int:
    """Store the plan (``Store.add_plan``); its id is also written into the document."""
    p, s = result.problem, result.solution
    model = store.get_model(p.model_fingerprint)
    dev = store.get_device(p.device_fingerprint)
    row = Plan(model_id=model.id, checkpoint=p.checkpoint, quantizer=p.quantizer,
               device_id=dev.id, shape=p.shape, objective=s.objective,
               max_loss_mse=s.max_loss_mse, predicted_speedup=s.predicted_speedup,
               predicted_loss_mse=s.loss_mse, measured_share=s.measured_share,
               body=json.dumps(result.document, sort_keys=True))
    result.plan_id = store.add_plan(row)
    result.document["data"]["plan_id"] = result.plan_id
    return result.plan_id


def load_plan(store, ref: str) -> tuple[dict, int | None]:
    """A plan by store id (``12``) or JSON file path; returns (document, plan id or None).

    A file that carries a ``plan_id`` of a plan in this store is tied to that row."""
    if str(ref).isdigit() and not Path(ref).exists():
        row = store.get_plan(int(ref))
        doc = json.loads(row.body)
        validate_plan(doc)
        doc["data"]["plan_id"] = row.id
        return doc, row.id
    if not Path(ref).exists():
        raise PlanInvalid(f"no plan {ref!r}: give a plan id from the store or a plan JSON file")
    doc = read_plan(ref)
    return doc, doc["data"].get("plan_id")
