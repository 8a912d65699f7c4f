"""``hwcost profile``: measure a model's subgraphs on this machine and fill the store."""

from __future__ import annotations

import click

from hwcost.app.options import (
    emit_json,
    handle_errors,
    json_option,
    open_cli_store,
    progress_enabled,
    quick_option,
    store_option,
    table,
    threads_option,
)


@click.command("profile")
@click.argument("model", required=False, metavar="[MODEL]")
@click.option("--device", "device", default="cpu", show_default=True,
              help="Device kind to profile on: cpu, cuda (cuda:N) or hpu.")
@click.option("--shape", "shapes", multiple=True, metavar="SHAPE",
              help="Workload shape, e.g. batch=1,seq=128 (repeat for several) "
                   "[default: batch=1,seq=128].")
@click.option("--precisions", default=None, metavar="LIST",
              help="Comma-separated precisions to profile [default: all the device deploys]; "
                   "the device's baseline is always included.")
@click.option("--worker", default=None, metavar="NAME",
              help="Claim tasks from a campaign in the (shared) store under this worker name; "
                   "start one per device, on any number of hosts.")
@click.option("--campaign", default=None, metavar="NAME",
              help="Campaign name [default in --worker mode: derived from the model and "
                   "device, so workers started alike share one].")
@click.option("--max-configs", default=64, show_default=True, type=click.IntRange(min=1),
              help="Most precision configs timed per subgraph; larger pieces are split.")
@threads_option
@click.option("--group", default=32, show_default=True, type=click.IntRange(min=1),
              help="Configs timed together (interleaved) and written in one transaction; the "
                   "piece's baseline config is timed in every group as well, and each gain is "
                   "stored against it.")
@click.option("--passes", default=3, show_default=True, type=click.IntRange(min=1),
              help="Time every group this many times, in passes over the whole campaign, each "
                   "with its share of the samples, and store the mean: a machine whose speed "
                   "wanders over minutes then gives every row the same mixture of moments. "
                   "Not with --worker (a worker times each unit it claims once) or --quick.")
@quick_option("Stored as quick: plans use them only with --allow-unstable and a later full "
              "run measures them again.")
@click.option("--stale-after", default=None, type=click.FloatRange(min=0.5), metavar="SECONDS",
              help="Worker mode: a claim whose worker sent no heartbeat for this long (the "
                   "worker was killed, its host lost) is handed out again; workers beat "
                   "several times per period [default: 60].")
@click.option("--ray", "use_ray", is_flag=True,
              help="Start one --worker per accelerator of a Ray cluster (GPU for cuda, HPU for "
                   "hpu, CPU slots of --threads CPUs for cpu) on a shared PostgreSQL store, and "
                   "follow the campaign; needs pip install 'hwcost[ray]'.")
@click.option("--address", default=None, metavar="ADDR",
              help="With --ray: the cluster to join (e.g. ray://head:10001 or auto) "
                   "[default: start a local one on this machine].")
@click.option("--ray-workers", default=None, type=click.IntRange(min=1), metavar="N",
              help="With --ray: start at most N workers [default: one per accelerator].")
@store_option
@json_option
@handle_errors
def profile_cmd(model: str | None, device: str, shapes: tuple[str, ...], precisions: str | None,
                worker: str | None, campaign: str | None, max_configs: int, threads: int | None,
                group: int, passes: int, quick: bool, stale_after: float | None, use_ray: bool,
                address: str | None, ray_workers: int | None, db_url: str | None,
                as_json: bool) -> None:
    """Profile MODEL on this machine: cut it into sequential subgraphs, time every
    precision config of each unique subgraph for each shape with real kernels, and write
    the latencies to the store as they complete. Run it again to resume: only what is
    missing is measured. Also times the whole model in the baseline precision.

    MODEL is a Hugging Face model directory, or package.module:factory for a Python
    callable returning (model, inputs); without it, the demo model.
    """
    from hwcost.profiles.campaign import QUICK_TIMING, TimingOptions, run_campaign
    from hwcost.profiles.loading import load_model
    from hwcost.shape import parse_shape
    from hwcost.store import STALE_AFTER_S

    shape_list = [parse_shape(s) for s in shapes]  # bad shapes fail before anything loads
    if use_ray:
        _launch_ray(model, device, shape_list, precisions, campaign, max_configs, threads, group,
                    quick, stale_after, address, ray_workers, db_url, as_json)
        return
    if address or ray_workers:
        raise click.UsageError("--address and --ray-workers go with --ray")
    loaded = load_model(model)
    with open_cli_store(db_url) as store:
        report = run_campaign(store, loaded, device, shape_list or None, precisions, worker,
                              campaign, max_configs=max_configs, group=group, threads=threads,
                              timing=QUICK_TIMING if quick else TimingOptions(passes=passes),
                              progress=progress_enabled() and not as_json,
                              stale_after_s=STALE_AFTER_S if stale_after is None else stale_after)
    if as_json:
        emit_json(report.to_dict())
        return
    click.echo(f"model     {report.model} (id {report.model_id}, {report.model_fingerprint})")
    click.echo(f"device    {report.device_name} ({report.device}, {report.threads} threads)")
    click.echo(f"subgraphs {report.pieces} pieces, {report.unique_subgraphs} unique")
    if report.campaign:
        click.echo(f"campaign  {report.campaign}" + (f" (worker {report.worker})"
                                                    if report.worker else ""))
    click.echo(f"tasks     {report.tasks} total: {report.measured} measured now, "
               f"{report.already} already in the store, {report.failed} failed "
               f"({report.elapsed_s:.1f} s)")
    if report.note:
        click.echo(report.note)
    rows = [{"shape": s, "baseline_ms": us / 1000} for s, us in report.baseline_us.items()]
    if rows:
        click.echo(table(rows))
    for err in report.errors[:5]:
        click.echo(f"failed: {err}", err=True)
    if report.stability_line():
        click.echo(report.stability_line())


def _launch_ray(model, device, shape_list, precisions, campaign, max_configs, threads, group,
                quick, stale_after, address, ray_workers, db_url, as_json) -> None:
    """``--ray``: the workers run on the cluster; this process only launches and follows."""
    from hwcost.ray_launch import default_campaign, launch
    from hwcost.store import default_url

    args = [a for s in shape_list for a in ("--shape", s.key)]
    args += ["--max-configs", str(max_configs), "--group", str(group)]
    if precisions:
        args += ["--precisions", precisions]
    if threads:
        args += ["--threads", str(threads)]
    if quick:
        args.append("--quick")
    if stale_after is not None:
        args += ["--stale-after", str(stale_after)]
    name = campaign or default_campaign(model, device)
    rep = launch(model, args, db_url=db_url or default_url(), device=device, campaign=name,
                 address=address, threads=threads, max_workers=ray_workers,
                 progress=progress_enabled())
    if as_json:
        emit_json(rep.to_dict())
        return
    click.echo(f"campaign  {rep.campaign} on Ray ({rep.address}, {len(rep.workers)} workers "
               f"on {rep.resource}, {rep.elapsed_s:.1f} s)")
    click.echo(table([{"worker": w.name, "node": w.node, "measured": w.measured,
                       "failed": w.failed, "exit": w.returncode, "error": w.error or None}
                      for w in rep.workers]))
    click.echo(rep.note)
    if any(w.returncode for w in rep.workers):
        raise SystemExit(1)  # the table above says which worker failed and why
