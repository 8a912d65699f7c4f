"""``hwcost plan``, ``hwcost validate`` and ``hwcost export-plan``.

Planning reads only the store (no torch); ``validate`` loads the model and runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hwcost.app.options import (
    allow_unstable_option,
    device_option,
    emit_json,
    handle_errors,
    json_option,
    measured_only_option,
    open_cli_store,
    progress_enabled,
    store_option,
    table,
    threads_option,
)
from hwcost.enums import SensitivityMethod
from hwcost.planner.enums import ExportFormat, IncNaming, Objective

if TYPE_CHECKING:  # the store package reads the database drivers: not at the CLI's start
    from hwcost.store import PlanDocument


@click.command("plan")
@click.argument("model")
@device_option
@click.option("--shape", default=None, help="Shape key to plan for, e.g. batch=1,seq=128.")
@click.option("--workload", default=None, metavar="SPEC|FILE",
              help="Plan for whole requests instead of one shape: prompt=P,gen=G,batch=B or a "
                   "JSON/CSV file; prices prefill plus each decode step (interpolated between "
                   "the profiled KV buckets).")
@click.option("--max-loss-mse", "max_loss", default=None, metavar="X",
              help="Bound on predicted loss MSE: absolute (0.01) or a share of the fastest "
                   "plan's loss MSE (10%; only formats that make the plan faster count).")
@click.option("--objective", type=click.Choice(Objective.values()), default=Objective.TIME.value,
              show_default=True, help="Gain to maximise: measured time, weight bytes, or MAC time.")
@click.option("--pin", "pins", multiple=True, metavar="PATTERN=PREC",
              help="Keep matching layers at a precision (glob or name suffix), e.g. lm_head=fp32. "
                   "Repeatable.")
@click.option("--group", "groups", multiple=True, metavar="P1,P2,...",
              help="Layers matching these patterns share one precision, e.g. "
                   "'*.q_proj,*.k_proj,*.v_proj'. Repeatable.")
@click.option("--memory-budget", default=None, metavar="BYTES",
              help="Upper bound on weight bytes of the planned layers, e.g. 12GB or 300MiB.")
@click.option("--precisions", default=None, metavar="P1,P2",
              help="Precisions to plan over (default: the device's candidates that have a "
                   "sensitivity table).")
@click.option("--method", default=SensitivityMethod.TAYLOR.value, show_default=True,
              help="Sensitivity method whose table bounds the loss MSE.")
@click.option("--checkpoint", default=None, metavar="DIGEST",
              help="Which checkpoint's sensitivity table (weights digest or prefix, see "
                   "`hwcost db ls`); needed only when the architecture has several.")
@click.option("--quantizer", default=None, metavar="KEY",
              help="Which quantizer's table (default, gaudi2 or a key); needed only when the "
                   "checkpoint has tables of several.")
@click.option("--sweep", "sweep_n", type=int, default=None, metavar="N",
              help="Solve N thresholds and print the Pareto frontier (loss MSE vs speedup).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="With --sweep: where to write the PNG [default: pareto.png].")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Also write the plan (or the sweep) as JSON to this file.")
@click.option("--time-limit", type=float, default=60.0, show_default=True,
              help="Solver time limit per solve, seconds (the gap is reported if hit).")
@allow_unstable_option
@measured_only_option
@click.option("--shrink", type=float, default=1.0, show_default=True, metavar="K",
              help="Choose on time gains shrunk toward zero by K standard errors (0: as "
                   "estimated); the prediction uses the unshrunk gains.")
@store_option
@json_option
@handle_errors
def plan_cmd(model, device, shape, workload, max_loss, objective, pins, groups, memory_budget,
             precisions, method, checkpoint, quantizer, sweep_n, plot_path, output, time_limit,
             allow_unstable, measured_only, shrink, db_url, as_json):
    """Pick a precision per layer that maximises the predicted gain on a device with the
    predicted loss MSE under a bound, from the store alone (no re-profiling, no torch).
    Stores the plan; `hwcost export-plan ID` and `hwcost validate ID` take it from there."""
    from hwcost.errors import HwcostError
    from hwcost.planner.objectives import Constraints, parse_bytes, parse_groups, parse_pins, parse_threshold
    from hwcost.planner.plans import make_plan, save_plan
    from hwcost.planner.problem import build_problem
    from hwcost.quantizer import parse_quantizer

    if max_loss is None and sweep_n is None:
        raise HwcostError("give --max-loss-mse (e.g. 0.01 or 10%), or --sweep N for the frontier")
    threshold = parse_threshold(max_loss) if max_loss is not None else None
    cons = Constraints(max_weight_bytes=parse_bytes(memory_budget), pins=parse_pins(pins),
                       groups=parse_groups(groups))
    if (shape is None) == (workload is None):
        raise HwcostError("give one of --shape (e.g. batch=1,seq=128) or --workload "
                          "(e.g. prompt=256,gen=64,batch=8)")
    precs = [p for p in precisions.split(",") if p.strip()] if precisions else None
    with open_cli_store(db_url, must_exist=True) as store:
        quant = parse_quantizer(quantizer).key if quantizer else None
        if workload is not None:
            from hwcost.planner.workload import build_workload_problem

            problem, _ = build_workload_problem(store, model, device, workload, precisions=precs,
                                                method=method, checkpoint=checkpoint,
                                                quantizer=quant,
                                                allow_unstable=allow_unstable)
            shape = problem.shape
        else:
            problem = build_problem(store, model, device, shape, precisions=precs,
                                    method=method, checkpoint=checkpoint, quantizer=quant,
                                    allow_unstable=allow_unstable)
        if measured_only:
            from hwcost.planner.noise import measured_only as only_measured

            problem = only_measured(problem)
        if sweep_n is not None:
            _sweep(problem, sweep_n, objective, cons, plot_path, output, time_limit, as_json)
            return
        result = make_plan(store, model, device, shape, threshold, objective, cons,
                           time_limit_s=time_limit, problem=problem, shrink=shrink)
        if store.read_only:
            click.echo("note: the store is read-only; the plan is printed, not stored", err=True)
        else:
            save_plan(store, result)
    doc = result.document
    if output:
        Path(output).write_text(json.dumps(doc.to_json(), indent=2, sort_keys=True) + "\n")
    if as_json:
        emit_json(doc.to_json())
        return
    _print_plan(doc, output)


def _print_plan(doc: PlanDocument, output: str | None) -> None:
    """The plan as ``hwcost plan`` prints it (a document of ``make_plan``: solved, predicted)."""
    from hwcost.planner.plans import noise_line

    pr, sv = doc.predicted, doc.solver
    click.echo(f"plan {doc.plan_id}: {doc.model.name} on {doc.device.name} "
               f"({doc.device.fingerprint[:12]}), {doc.shape}, objective {doc.objective}")
    click.echo(table([{"layer": k, "precision": v} for k, v in doc.layers.items()]))
    counts = doc.precision_counts()
    click.echo("layers        " + ", ".join(f"{n} {p}" for p, n in counts.items()))
    err = f", stated error {pr.speedup_rel_error:.0%}" if pr.speedup_rel_error else ""
    click.echo(f"speedup       {pr.speedup:.3f}x predicted ({pr.baseline_us:.1f} us -> "
               f"{pr.plan_us:.1f} us, baseline from {pr.baseline_from or '?'}{err})")
    bound = doc.max_loss_mse
    bound_txt = f" (bound {bound:.4g}" + (f", {doc.threshold}" if (doc.threshold or "").endswith("%")
                                          else "") + ")" if bound is not None else ""
    click.echo(f"loss MSE      {pr.loss_mse:.4g} predicted{bound_txt}")
    line = noise_line(pr)
    if line is not None:
        click.echo(f"noise         {line}; chosen on gains shrunk by "
                   f"{pr.gain_shrink_sigmas or 0:g} standard errors")
    srcs = ", ".join(f"{n} {src}" for src, n in sorted(_sources(doc).items()))
    click.echo(f"measured      {pr.measured_share * 100:.0f}% of the predicted gain rests on "
               f"costs measured on {doc.device.name} (subgraph costs: {srcs})")
    for note in doc.notes:
        click.echo(f"note          {note}")
    if sv is not None:
        gap = "" if sv.status == "optimal" else f", gap {sv.gap * 100:.2f}%"
        click.echo(f"solver        {sv.status}{gap} in {sv.wall_s:.2f} s")
    if output:
        click.echo(f"written to    {output}")


def _sources(doc: PlanDocument) -> dict[str, int]:
    """How many subgraph costs of the plan come from each source."""
    out: dict[str, int] = {}
    for sg in doc.subgraphs:
        out[sg.source or "?"] = out.get(sg.source or "?", 0) + 1
    return out


def _sweep(problem, n, objective, cons, plot_path, output, time_limit, as_json) -> None:
    from hwcost.planner.plot import plot_frontier
    from hwcost.planner.sweep import frontier_table, sweep

    points = sweep(problem, n, objective, cons, time_limit_s=time_limit)
    rows = frontier_table(points)
    payload = {"model": problem.model_name, "device": problem.device_fingerprint,
               "shape": problem.shape, "objective": objective, "points": rows}
    png = plot_frontier(points, plot_path or "pareto.png",
                        title=f"{problem.model_name} on {problem.device_name}, {problem.shape}")
    payload["plot"] = str(png)
    if output:
        Path(output).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    if as_json:
        emit_json(payload)
        return
    click.echo(table(rows, ["max_loss_mse", "loss_mse", "speedup", "low_layers", "status"]))
    click.echo(f"plot          {png}")
    if output:
        click.echo(f"written to    {output}")


@click.command("export-plan")
@click.argument("plan")
@click.option("--format", "fmt", type=click.Choice(ExportFormat.values()),
              default=ExportFormat.JSON.value, show_default=True,
              help="json: the plan document; inc: Intel Neural Compressor FP8 config (Gaudi: "
                   "optimum-habana, vLLM-gaudi QUANT_CONFIG); torchao: per-module torchao "
                   "configs (also for transformers' TorchAoConfig) and bf16 casts; csv, md: the "
                   "per-layer report.")
@click.option("--naming", type=click.Choice(IncNaming.values()), default=IncNaming.HF.value,
              show_default=True,
              help="With --format inc: module names of optimum-habana (hf) or of vLLM-gaudi "
                   "(vllm: fused qkv_proj and gate_up_proj).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write to this file instead of stdout.")
@store_option
@handle_errors
def export_plan_cmd(plan, fmt, naming, output, db_url):
    """Export a plan (a store id or a plan JSON file) for deployment tools, or as a
    per-layer report (layer, precision, share of the predicted gain and loss MSE, cost
    source) for review.

    \b
    Examples:
      hwcost export-plan 3 --format torchao -o plan.torchao.json
      hwcost export-plan plan.json --format inc --naming vllm -o quant_config.json
      hwcost export-plan 3 --format md
    """
    from hwcost.app.deploy import plan_from_arg
    from hwcost.planner.export import export_text

    text = export_text(plan_from_arg(plan, db_url), fmt, naming)
    if output:
        Path(output).write_text(text)
        click.echo(f"written to {output}")
    else:
        click.echo(text, nl=False)


@click.command("validate")
@click.argument("plan")
@click.option("--model", "model_spec", default=None, metavar="SPEC",
              help="Model to load (HF directory or module:factory) [default: the demo model].")
@click.option("--eval-data", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Held-out text or token ids for the true loss MSE [default: data/corpus/test.txt].")
@click.option("--samples", type=int, default=128, show_default=True,
              help="Held-out sequences for the loss MSE.")
@threads_option
@store_option
@json_option
@handle_errors
def validate_cmd(plan, model_spec, eval_data, samples, threads, db_url, as_json):
    """Apply a plan with the backend's real kernels and measure it: end-to-end latency
    against the baseline (interleaved) and the true loss MSE on held-out data, printed next
    to the prediction and stored."""
    import torch  # noqa: F401  (before the store: without torch, say so first, in one line)

    from hwcost.planner.apply import validate_plan_on_device
    from hwcost.planner.plans import load_plan

    with open_cli_store(db_url, must_exist=True) as store:
        doc, plan_id = load_plan(store, plan)
        res = validate_plan_on_device(store, doc, plan_id, model_spec=model_spec,
                                      eval_data=eval_data, samples=samples, threads=threads,
                                      progress=progress_enabled() and not as_json)
    if as_json:
        emit_json(res.to_dict())
        return
    click.echo(table(res.rows(), ["quantity", "predicted", "measured"]))
    click.echo(f"validation {res.validation_id} stored for plan {res.plan_id} "
               f"({res.threads} threads, {res.n_eval_samples} held-out samples)")
    for line in res.warnings():
        click.echo(line)
