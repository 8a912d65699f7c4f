"""``hwcost deploy``: apply a plan to a model with the backend's kernels and save it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from hwcost.app.options import emit_json, handle_errors, json_option, open_cli_store, store_option, table

if TYPE_CHECKING:  # the store package reads the database drivers: not at the CLI's start
    from hwcost.store import PlanDocument


def plan_from_arg(plan: str, db_url: str | None) -> PlanDocument:
    """A plan document from a plan JSON file or a stored plan id."""
    if Path(plan).exists():
        from hwcost.planner.export import read_plan_document

        return read_plan_document(plan)
    from hwcost.planner.plans import load_plan

    with open_cli_store(db_url, must_exist=True) as store:
        doc, _ = load_plan(store, plan)
    return doc


@click.command("deploy")
@click.argument("plan")
@click.argument("model", required=False, default=None)
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory to write model.safetensors, hwcost-deploy.json and config.json to.")
@click.option("--backend", "backend", default=None, metavar="KIND",
              help="Backend to deploy with (cpu, cuda, hpu) [default: the plan's device kind].")
@store_option
@json_option
@handle_errors
def deploy_cmd(plan, model, out_dir, backend, db_url, as_json):
    """Apply PLAN (a plan JSON file or a stored plan id) to MODEL (a Hugging Face directory or
    package.module:factory; default: the demo model) with the kernels the backend timed, and
    save the deployed model.

    \b
    Each planned layer becomes the backend's deployed layer for its precision: int8 weights
    and scales, fp8 weights and scales, or bf16 weights with a cast of the input and output at
    the boundary of a run of bf16 layers; layers in the model's own dtype are left as they
    are. Layers are linked as profiling timed them (one conversion per shared input). The output is
    safetensors (no pickle) plus the plan and every layer's kernel; load it back with
    planner.deploy.load_deployed(DIR, model).

    \b
    Example:
      hwcost export-plan 3 --format json -o plan.json
      hwcost deploy plan.json ./my-model -o ./my-model-deployed
    """
    from hwcost.planner.apply import model_dataflow
    from hwcost.planner.deploy import deploy, deployed_layers, save_deployed
    from hwcost.profiles.backends import get_backend
    from hwcost.profiles.loading import load_model

    doc = plan_from_arg(plan, db_url)
    be = get_backend(backend or doc.device.kind)
    loaded = load_model(model)
    # linked as profiling and `hwcost validate` run it (bf16 chains keep their format)
    deployed = deploy(loaded.model, doc, be, dataflow=model_dataflow(loaded, be))
    path = save_deployed(deployed, doc, out_dir)
    layers = deployed_layers(deployed)
    if as_json:
        emit_json({"output": str(path), "layers": {n: d.__dict__ for n, d in layers.items()}})
        return
    rows = [{"layer": n, "precision": d.precision, "kernel": d.kernel, "weights": d.weight_dtype}
            for n, d in layers.items()]
    click.echo(table(rows, ["layer", "precision", "kernel", "weights"]))
    click.echo(f"deployed {len(rows)} layers of {loaded.name}; written to {path}")
