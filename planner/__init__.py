"""Planning: pick one precision configuration per subgraph to maximise the predicted gain
with the predicted loss MSE under a bound (arXiv 2505.13060), from the store alone.

Importing ``planner`` never imports torch; :mod:`planner.deploy` (apply a plan to a model) and
:mod:`planner.apply` (validate on a device) import it lazily, inside their functions. The names
below load their module on first use (PEP 562), so ``import planner.enums`` (what the CLI reads
to define its options) costs nothing else (``lazy_loader``; ``planner.solve`` stays the
function when the module of the same name is loaded, as with eager imports).
"""

import lazy_loader

_WHERE = {
    "deploy": ["DeployedLayer", "deploy", "deployed_in_place", "deployed_layers", "load_deployed",
               "save_deployed"],
    "enums": ["ExportFormat", "IncNaming", "Objective", "SolverStatus"],
    "export": ["FORMATS", "export", "export_text", "plan_document",
               "read_plan_document", "to_torchao", "validate_plan"],
    "inc": ["check_inc_schema", "to_inc"],
    "objectives": ["OBJECTIVES", "Constraints", "Threshold", "lowest_precision_mse", "parse_groups",
                   "parse_objective", "parse_pins", "parse_threshold"],
    "plans": ["PlanResult", "load_plan", "make_plan", "save_plan"],
    "problem": ["Choice", "Option", "Problem", "build_problem", "match_layers"],
    "report": ["LayerRow", "layer_report"],
    "solve": ["Solution", "compile_problem", "min_loss_mse", "solve", "solve_compiled"],
    "sweep": ["FrontierPoint", "sweep"],
}
"""Each module of this package and the public names it defines."""

__getattr__, __dir__, _ = lazy_loader.attach(__name__, submod_attrs=_WHERE)

__all__ = [
    # the problem
    "Problem", "Choice", "Option", "build_problem", "match_layers",
    # objectives and constraints
    "Objective", "OBJECTIVES", "Constraints", "Threshold", "parse_objective", "parse_threshold",
    "parse_pins", "parse_groups", "lowest_precision_mse",
    # solving
    "SolverStatus", "Solution", "solve", "compile_problem", "solve_compiled", "min_loss_mse",
    "sweep", "FrontierPoint",
    # plans
    "PlanResult", "make_plan", "save_plan", "load_plan",
    # deployment
    "deploy", "deployed_in_place", "deployed_layers", "save_deployed", "load_deployed",
    "DeployedLayer",
    # exporters
    "ExportFormat", "IncNaming", "FORMATS", "plan_document", "validate_plan",
    "read_plan_document", "export",
    "export_text", "to_inc", "to_torchao", "check_inc_schema", "layer_report", "LayerRow",
]
