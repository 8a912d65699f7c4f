"""``hwcost coverage`` (which cost source answers each subgraph) and ``hwcost device
calibrate`` (measure this CPU's rates for the roofline)."""

from __future__ import annotations

import click

from hwcost.app.options import (
    allow_unstable_option,
    emit_json,
    handle_errors,
    json_option,
    open_cli_store,
    store_option,
    table,
    threads_option,
)


@click.command("coverage")
@click.argument("model")
@click.option("--device", "device", required=True,
              help="Stored device fingerprint (prefix) or name, a kind with one local device "
                   "(cpu), or a catalog device (H100-SXM, H100-PCIe, H200, A100, Gaudi2, Gaudi3).")
@click.option("--shape", required=True, help="Shape key, e.g. batch=1,seq=128,phase=prefill.")
@click.option("--precisions", default=None, metavar="P1,P2",
              help="Precisions to enumerate [default: those measured for this model on the "
                   "device, else the device kind's candidates].")
@allow_unstable_option(help="Count quick and unstable timings as measured, as `hwcost plan "
                            "--allow-unstable` would.")
@store_option
@json_option
@handle_errors
def coverage_cmd(model: str, device: str, shape: str, precisions: str | None,
                 allow_unstable: bool, db_url: str | None, as_json: bool) -> None:
    """Show, per subgraph of MODEL, which cost source answers its configs (measured,
    learned, roofline) and what share of the predicted gain rests on measurements.

    Unmeasured configs come from the device's learned model (trained on its measurements)
    or from the roofline of its catalog or calibrated peak rates; `hwcost profile` measures
    what is missing.

    Quick (`--quick`) and unstable timings (taken on a busy machine) are not measured costs
    for a plan: the column `not_good` counts them per subgraph; they are left to the
    fallbacks unless --allow-unstable, and a later full stable run replaces them."""
    from hwcost.costs import CostModel, model_table
    from hwcost.precision import parse_precisions

    with open_cli_store(db_url, must_exist=True) as store:
        precs = [p.value for p in parse_precisions(precisions)] if precisions else None
        cm = CostModel(store, device, allow_unstable=allow_unstable)
        tab = model_table(store, model, device, shape, precs, cost_model=cm,
                          allow_unstable=allow_unstable)
        learned = cm.learned
        dev = cm.device
        not_good: dict[int, int] = {}
        for r in store.model_costs(tab.model, dev.fingerprint, tab.shape, allow_unstable=True):
            if not r.good:
                not_good[r.position] = not_good.get(r.position, 0) + 1
    rows = []
    for e in tab.entries:
        src = tab.sources(e)
        best = tab.best_config(e)
        rows.append({"pos": e.position, "signature": e.signature[:12],
                     "layers": len(e.layer_names), "configs": len(e.costs),
                     "measured": src["measured"], "learned": src["learned"],
                     "roofline": src["roofline"], "not_good": not_good.get(e.position, 0),
                     "answers": _answers(src),
                     "best": best, "best_source": e.costs[best].source,
                     "gain_measured": round(tab.entry_measured_share(e), 4)})
    share = tab.measured_share()
    if as_json:
        emit_json({"model": tab.model, "device": tab.device, "device_name": dev.name,
                   "device_source": dev.source, "shape": tab.shape, "baseline": tab.baseline,
                   "precisions": list(tab.precisions), "measured_share": share,
                   "allow_unstable": allow_unstable,
                   "not_good_timings": sum(not_good.values()),
                   "learned_cv_mape": learned.cv_mape_ if learned else None,
                   "roofline_cv_mape": learned.roofline_cv_mape_ if learned else None,
                   "subgraphs": rows})
        return
    click.echo(f"model {tab.model[:12]}  device {dev.name} ({tab.device[:12]}, {dev.source})  "
               f"shape {tab.shape}  precisions {','.join(tab.precisions)}")
    click.echo(table(rows))
    fallback = ("learned model: cross-validated median error "
                f"{learned.cv_mape_:.1%} (roofline {learned.roofline_cv_mape_:.1%})"
                if learned else "no learned model (too few measurements): fallbacks are roofline")
    click.echo(fallback)
    click.echo(f"share of the predicted gain (fastest configs) resting on measurements: {share:.1%}")
    if not_good:
        how = ("counted as measured (--allow-unstable)" if allow_unstable else
               "not used: left to the fallbacks (--allow-unstable uses them)")
        click.echo(f"quick or unstable timings: {sum(not_good.values())} (column not_good), {how}")


def _answers(src: dict[str, int]) -> str:
    present = [s for s in ("measured", "learned", "roofline") if src[s]]
    return "+".join(present) if present else "-"


@click.command("calibrate")
@threads_option
@click.option("--budget", type=float, default=8.0, show_default=True,
              help="Seconds the microbenchmark may take.")
@store_option
@json_option
@handle_errors
def calibrate_cmd(threads: int | None, budget: float, db_url: str | None, as_json: bool) -> None:
    """Measure this CPU's achieved matmul rate per precision (fp32, bf16, int8 with the
    deployed kernels; fp8 emulated), memory bandwidth and per-op overhead, and store them
    as the device's peaks for the roofline fallback."""
    from hwcost.device import local_device, usable_cpus
    from hwcost.profiles.calibrate import calibrate_cpu

    if threads is None:
        threads = usable_cpus()
    peaks = calibrate_cpu(threads=threads, budget_s=budget)
    info = local_device("cpu")  # after setting threads: the fingerprint includes them
    with open_cli_store(db_url) as store:
        store.put_device(info)
        store.set_device_peaks(info.fingerprint, peaks)
    if as_json:
        emit_json({"fingerprint": info.fingerprint, "threads": threads, "peaks": peaks})
        return
    click.echo(f"device {info.name} ({info.fingerprint}), {threads} threads")
    rows = [{"quantity": k, "value": v} for k, v in peaks.items() if k != "source"]
    click.echo(table(rows))
    click.echo(peaks["source"])
