"""Planning: pick one precision configuration per subgraph to maximise the predicted gain
with the predicted loss MSE under a bound (arXiv 2505.13060), from the store alone.

Importing ``planner`` never imports torch; :mod:`planner.deploy` (apply a plan to a model) and
:mod:`planner.apply` (validate on a device) import it lazily, inside their functions.
"""

from planner.deploy import (
    DeployedLayer,
    deploy,
    deployed_in_place,
    deployed_layers,
    load_deployed,
    save_deployed,
)
from planner.export import FORMATS, export, export_text, plan_document, read_plan, to_torchao, validate_plan
from planner.inc import check_inc_schema, to_inc
from planner.objectives import (
    OBJECTIVES,
    Constraints,
    Threshold,
    lowest_precision_mse,
    parse_groups,
    parse_objective,
    parse_pins,
    parse_threshold,
)
from planner.plans import PlanResult, load_plan, make_plan, save_plan
from planner.problem import Choice, Option, Problem, build_problem, match_layers
from planner.report import LayerRow, layer_report
from planner.solve import Solution, compile_problem, min_loss_mse, solve, solve_compiled
from planner.sweep import FrontierPoint, sweep

__all__ = [
    # the problem
    "Problem", "Choice", "Option", "build_problem", "match_layers",
    # objectives and constraints
    "OBJECTIVES", "Constraints", "Threshold", "parse_objective", "parse_threshold", "parse_pins",
    "parse_groups", "lowest_precision_mse",
    # solving
    "Solution", "solve", "compile_problem", "solve_compiled", "min_loss_mse", "sweep",
    "FrontierPoint",
    # plans
    "PlanResult", "make_plan", "save_plan", "load_plan",
    # deployment
    "deploy", "deployed_in_place", "deployed_layers", "save_deployed", "load_deployed", "DeployedLayer",
    # exporters
    "FORMATS", "plan_document", "validate_plan", "read_plan", "export", "export_text", "to_inc",
    "to_torchao", "check_inc_schema", "layer_report", "LayerRow",
]
