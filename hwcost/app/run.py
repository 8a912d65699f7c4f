"""``hwcost run``: the main job (:func:`hwcost.app.main_job.run_main_job`) from the command
line; this module builds its options and prints its summary."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from hwcost.app.main_job import MainJobOptions, RunSummary, run_main_job
from hwcost.app.options import (
    allow_unstable_option,
    emit_json,
    handle_errors,
    json_option,
    measured_only_option,
    open_cli_store,
    progress_enabled,
    quick_option,
    store_option,
)
from hwcost.enums import DeploymentMode, DeviceKind


@click.command("run")
@click.argument("model", required=False)
@click.option("--device", "device_kind", default="cpu", show_default=True,
              type=click.Choice(DeviceKind.values()), help="This machine's device to run on.")
@click.option("--shape", default="batch=1,seq=128", show_default=True,
              help="Workload to optimise for, e.g. batch=4,seq=256.")
@click.option("--max-loss-mse", "max_loss", default="10%", show_default=True,
              help="Loss-MSE bound: absolute (0.01) or a share of the all-lowest-precision "
                   "loss MSE (10%).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="hwcost-out",
              show_default=True, help="Folder for plan.json and pareto.png.")
@click.option("--calib", default=None, metavar="DATA",
              help="Calibration data for sensitivity (.txt, or token ids in .safetensors/.npy) "
                   "[default for the demo model: data/corpus/valid.txt].")
@click.option("--eval-data", default=None, metavar="DATA",
              help="Held-out data for the measured loss MSE (same formats as --calib) "
                   "[default for the demo model: data/corpus/test.txt].")
@click.option("--samples", default=32, show_default=True,
              help="Held-out sequences for the measured loss MSE.")
@click.option("--calib-samples", type=click.IntRange(min=1), default=None,
              help="Calibration sequences for the sensitivity table [default: 64; without "
                   "--calib and this option a stored table of the checkpoint is reused].")
@quick_option("Its timings are stored as quick; this run plans on them, a later full run "
              "measures them again.")
@click.option("--workload", default=None, metavar="SPEC|FILE",
              help="Optimise whole requests instead of one shape: prompt=P,gen=G,batch=B, or a "
                   "JSON/CSV file of (prompt, gen, batch[, weight]). Profiles the prefill shape "
                   "and the decode KV buckets it needs; validates with real generate() calls.")
@click.option("--precisions", default=None, metavar="P1,P2",
              help="Precisions to profile, score and plan (at most 4, the baseline included), "
                   "e.g. fp32,bf16,int8_wo,int4_wo [default: the device's candidates].")
@allow_unstable_option
@measured_only_option
@click.option("--compiled", is_flag=True,
              help="Deploy, profile and validate under torch.compile (inductor); stored under "
                   "its own device key.")
@click.option("--max-rounds", default=4, show_default=True,
              help="Closed loop: plans measured at most while the loss MSE exceeds the bound.")
@click.option("--retime", "retime", type=click.IntRange(min=0), default=0, show_default=True,
              metavar="K",
              help="Time up to K candidate plans within the bound end to end (the planned one, "
                   "the one on unshrunk gains, each uniform precision within the bound, optima "
                   "under gains drawn within their standard errors) and keep the measured "
                   "fastest when it beats the planned one beyond the timing noise; with "
                   "--workload, as real generate() requests. 0 or 1: off. Catches what the "
                   "subgraph table cannot see (fusion across subgraphs when --compiled, cache "
                   "residency of a mixed model in decode).")
@store_option
@json_option
@handle_errors
def run_cmd(model: str | None, device_kind: str, shape: str, max_loss: str, out_dir: str,
            calib: str | None, eval_data: str | None, samples: int, calib_samples: int | None,
            quick: bool, workload: str | None, precisions: str | None,
            allow_unstable: bool, measured_only: bool, compiled: bool, max_rounds: int,
            retime: int, db_url: str | None, as_json: bool) -> None:
    """Run the main job end to end: profile what the store lacks, compute the sensitivity
    table if missing, plan, apply the plan with real kernels and validate it.

    MODEL is a Hugging Face model directory or module:factory; it defaults to the demo
    model in data/. Everything measured is kept in the store, so a second run reuses it
    and finishes in seconds.

    \b
    Examples:
      hwcost run --device cpu --shape batch=1,seq=128 --max-loss-mse 10%
      hwcost run --compiled --measured-only --max-loss-mse 5%
      hwcost run --compiled --retime 4 --max-loss-mse 15%
      hwcost run --workload prompt=256,gen=64,batch=8 --precisions fp32,bf16,int8_wo,int4_wo
    """
    try:
        options = MainJobOptions(
            model, device_kind, shape, max_loss, Path(out_dir), calib=calib, eval_data=eval_data,
            samples=samples, quick=quick, calib_samples=calib_samples, workload=workload,
            precisions=precisions, allow_unstable=allow_unstable, measured_only=measured_only,
            deployment=DeploymentMode.COMPILED if compiled else DeploymentMode.EAGER,
            max_rounds=max_rounds, retime=retime)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    with open_cli_store(db_url) as store:
        s = run_main_job(store, options, progress=progress_enabled() and not as_json,
                         report=_report)
    if as_json:
        emit_json(asdict(s))
        return
    for line in summary_lines(s):
        click.echo(line)
    for line in s.warnings:
        click.echo(line)


def _report(line: str) -> None:
    click.echo(f"[hwcost run] {line}", err=True)


def summary_lines(s: RunSummary) -> list[str]:
    """The run's summary, each term said in words (warnings follow it, one line each)."""
    mix = ", ".join(f"{n} {p}" for p, n in s.precision_counts.items())
    srcs = ", ".join(f"{n} {src}" for src, n in s.cost_sources.items())
    err = f" (stated error {s.speedup_rel_error:.0%})" if s.speedup_rel_error else ""
    verdict = ", SLOWER than the baseline: not a result" if s.slower_than_baseline else ""
    out = [
        f"model              {s.model} (architecture {s.model_fingerprint[:12]}, "
        f"checkpoint {s.checkpoint[:12]})",
        f"device             {s.device_name} ({s.device[:12]}), shape {s.shape}",
        f"measurements       {s.measured_now} subgraph timings measured now, "
        f"{s.measurements_reused} reused from the store",
        "sensitivity        " + ("reused from the store" if s.sensitivity_reused else
                                 "computed and stored") + " (per-layer loss MSE per precision)",
        f"plan               id {s.plan_id} in the store{' (reused)' if s.plan_reused else ''}: "
        f"{mix} (bound: loss MSE <= {s.threshold}"
        + (f" = {s.bound_loss_mse:.3g}" if s.bound_loss_mse is not None
           and s.threshold.endswith("%") else "") + ")",
        f"speedup            predicted {s.predicted_speedup:.3f}x{err}, measured "
        f"{s.measured_speedup:.3f}x ({s.baseline_us:.0f} us -> {s.plan_us:.0f} us end to end)"
        f"{verdict}",
        f"loss MSE           predicted {s.predicted_loss_mse:.4g}, measured "
        f"{s.measured_loss_mse:.4g} (mean squared change of each sample's loss against the "
        "unquantized model)",
        f"measured share     {s.measured_share:.0%} of the predicted gain rests on costs "
        f"measured on {s.device_name}" + (f" (subgraph costs: {srcs})" if srcs else ""),
        f"validation         id {s.validation_id} in the store"
        f"{' (reused)' if s.validation_reused else ''}: the plan applied with real kernels "
        "and measured against the baseline",
    ]
    if s.noise is not None:
        out.append(f"noise              {s.noise}")
    out += [f"closed loop        round {r['round']}: predictions x{r['loss_scale']:.3g}, "
            f"measured loss MSE {r['measured_mse']:.3g} "
            f"({'within' if r['within'] else 'over'} the bound)" for r in s.loop_rounds]
    out += [f"note               {n}" for n in s.notes]
    out += [f"plan file          {s.plan_file}", f"plot               {s.plot_file}"]
    return out
