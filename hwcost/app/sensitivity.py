"""``hwcost sensitivity``: per-layer loss-MSE sensitivity, stored; its validation; the stored table.

``hwcost sensitivity [run] [MODEL] --calib DATA ...`` computes and stores a table (``run`` is
the default subcommand, so ``hwcost sensitivity MODEL`` works); ``hwcost sensitivity validate``
checks predicted against measured loss MSE; ``hwcost sensitivity show`` prints a stored table
(store only, no torch).
"""

from __future__ import annotations

import click

from hwcost.app.options import (
    emit_json,
    handle_errors,
    json_option,
    open_cli_store,
    progress_enabled,
    store_option,
    table,
)
from hwcost.enums import ONE_PASS_METHODS, SensitivityMethod

DEFAULT_PRECISIONS = "bf16,fp8_e4m3,int8"


class _RunByDefault(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to ``run``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _calib_options(f):
    for opt in reversed([
        click.argument("model", required=False, metavar="[MODEL]"),
        click.option("--calib", "calib", metavar="DATA",
                     help="Calibration data: a .txt file (tokenized with the model's tokenizer) or "
                          "token ids [N, T] in .safetensors/.npy [default for the demo model: "
                          "data/corpus/valid.txt]."),
        click.option("--samples", default=64, show_default=True, type=click.IntRange(min=1),
                     help="Calibration sequences N (at most N rows of an ids file)."),
        click.option("--seq-len", default=128, show_default=True, type=click.IntRange(min=2),
                     help="Tokens per sequence T."),
        click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
                     help="Sequences per forward/backward pass."),
        click.option("--seed", default=0, show_default=True, help="Seed of the sampling."),
        click.option("--precisions", default=DEFAULT_PRECISIONS, show_default=True,
                     help="Comma-separated precisions to score."),
        click.option("--method", default=SensitivityMethod.TAYLOR.value, show_default=True,
                     type=click.Choice([m.value for m in ONE_PASS_METHODS]),
                     help="taylor: the actual rounding errors; noise: independent noise of "
                          "each format's variance."),
        click.option("--quantizer", default="default", show_default=True, metavar="KEY",
                     help="Emulation scored: default (fp8 e4m3 range 448), gaudi2 (240), "
                          "inc-gaudi2 / inc-gaudi3 (Intel Neural Compressor's dynamic FP8 with "
                          "power-of-two scales, what `export-plan --format inc` deploys), or a "
                          "key such as e4m3=240,e5m2=57344,w=per_channel,a=per_token."),
        store_option, json_option,
    ]):
        f = opt(f)
    return f


def _calib_spec(calib, samples, seq_len, batch_size, seed):
    from hwcost.sensitivity.pipeline import CalibSpec

    return CalibSpec(calib, samples, seq_len, batch_size, seed)


@click.group("sensitivity", cls=_RunByDefault)
def sensitivity_cmd() -> None:
    """Per-layer loss-MSE sensitivity s_l(p) from one forward and backward pass.

    \b
    hwcost sensitivity [MODEL] --calib DATA --precisions bf16,int8     # compute and store
    hwcost sensitivity validate [MODEL] --calib DATA --configs 50 --plot out.png
    hwcost sensitivity show MODEL                                      # print a stored table

    MODEL is a Hugging Face model directory or package.module:factory (default: the demo
    model). `run` is the default subcommand.
    """


@sensitivity_cmd.command("run")
@_calib_options
@handle_errors
def run_cmd(model, calib, samples, seq_len, batch_size, seed, precisions, method, quantizer,
            db_url, as_json) -> None:
    """Compute each layer's loss-MSE contribution at each precision (first-order Taylor
    expansion of every calibration sample's loss) and store it keyed by the model's and the
    calibration set's fingerprints, the checkpoint's weights digest and the quantizer."""
    from hwcost.quantizer import parse_quantizer
    from hwcost.sensitivity.pipeline import compute_and_store, prepare

    spec = _calib_spec(calib, samples, seq_len, batch_size, seed)
    # load and check everything before the store is touched
    prep = prepare(model, spec, quantizer=parse_quantizer(quantizer))
    with open_cli_store(db_url) as store:
        run = compute_and_store(store, model, spec, precisions, method, prepared=prep,
                                progress=progress_enabled() and not as_json)
    if as_json:
        emit_json(run.to_dict())
        return
    click.echo(f"model        {run.model_name} (architecture {run.model_fingerprint[:12]}, "
               f"checkpoint {run.checkpoint[:12]})")
    click.echo(f"calibration  {run.calib.source}: {run.calib.n_samples} x {run.calib.seq_len} tokens "
               f"({run.calib.fingerprint[:12]})")
    click.echo(f"quantizer    {run.table.quantizer}")
    click.echo(_table_text(run.table))
    click.echo(f"stored {run.stored_rows} rows ({run.table.method})")


@sensitivity_cmd.command("validate")
@_calib_options
@click.option("--configs", "n_configs", default=50, show_default=True, type=click.IntRange(min=3),
              help="Random mixed configurations to measure.")
@click.option("--config-seed", default=0, show_default=True, help="Seed of the configurations.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Save the predicted-vs-measured scatter plot here (PNG).")
@handle_errors
def validate_cmd(model, calib, samples, seq_len, batch_size, seed, precisions, method, quantizer,
                 db_url, as_json, n_configs, config_seed, plot) -> None:
    """Measure the loss MSE of random mixed-precision configurations (emulated, forward only)
    and compare it with the predicted sums of the stored table (computed and stored first if
    missing): Spearman and Pearson correlation, ratio predicted/measured."""
    from hwcost.errors import SensitivityError
    from hwcost.quantizer import DEFAULT, parse_quantizer
    from hwcost.sensitivity.pipeline import validate_model

    if parse_quantizer(quantizer) != DEFAULT:
        raise SensitivityError("sensitivity validate measures the default quantizer only; "
                               "drop --quantizer")

    spec = _calib_spec(calib, samples, seq_len, batch_size, seed)
    with open_cli_store(db_url) as store:
        with click.progressbar(length=n_configs, label="measuring", file=None,
                               hidden=not progress_enabled() or as_json) as bar:
            report = validate_model(store, model, spec, precisions, n_configs, config_seed, method,
                                    plot, progress=lambda i, n: bar.update(1))
    if as_json:
        emit_json(report.to_dict())
        return
    s = report.result.summary()
    click.echo(f"model        {report.run.model_name} ({report.run.model_fingerprint[:12]})")
    click.echo(f"calibration  {report.run.calib.source}: {report.run.calib.n_samples} x "
               f"{report.run.calib.seq_len} tokens ({report.run.calib.fingerprint[:12]})")
    click.echo(f"table        {report.run.table.method}, "
               f"{'from the store' if report.run.reused else 'computed and stored'}")
    click.echo(f"configs      {s['n_configs']}")
    click.echo(f"spearman     {s['spearman']:.4f}")
    click.echo(f"pearson      {s['pearson']:.4f} (of logs: {s['pearson_log']:.4f})")
    click.echo(f"pred/meas    median {s['ratio_median']:.3f} (IQR {s['ratio_p25']:.3f} - "
               f"{s['ratio_p75']:.3f})")
    if report.plot:
        click.echo(f"plot         {report.plot}")


@sensitivity_cmd.command("show")
@click.argument("model")
@click.option("--method", default=SensitivityMethod.TAYLOR.value, show_default=True,
              type=click.Choice(SensitivityMethod.values()),
              help="Which stored table.")
@click.option("--calib-fingerprint", default=None,
              help="Calibration set (default: the latest stored).")
@click.option("--checkpoint", default=None, metavar="DIGEST",
              help="Checkpoint (weights digest, see `hwcost db ls`; default: the latest table's).")
@store_option
@json_option
@handle_errors
def show_cmd(model, method, calib_fingerprint, checkpoint, db_url, as_json) -> None:
    """Print a stored sensitivity table (MODEL: stored name or fingerprint prefix)."""
    with open_cli_store(db_url, must_exist=True) as store:
        t = store.sensitivity_table(model, method, checkpoint=checkpoint,
                                    calib_fingerprint=calib_fingerprint)
    m, rows = t.model, t.rows
    data = [{"layer": r.layer, "precision": r.precision, "loss_mse": r.loss_mse,
             "stderr": r.stderr, "n_samples": r.n_samples} for r in rows]
    if as_json:
        emit_json({"model": m.name, "model_fingerprint": m.fingerprint, "method": method,
                   "checkpoint": t.checkpoint, "quantizer": t.quantizer,
                   "calib_fingerprint": t.calib_fingerprint, "rows": data})
        return
    click.echo(f"model {m.name} ({m.fingerprint[:12]}), checkpoint {t.checkpoint[:12]}, "
               f"{method}, calibration {t.calib_fingerprint[:12]}, quantizer {t.quantizer}")
    click.echo(table(data))


def _table_text(t) -> str:
    """Layers as rows, precisions as columns: s_l(p) +- stderr."""
    rows = []
    for layer in t.layers:
        row = {"layer": layer}
        for p in t.precisions:
            r = t.get(layer, p)
            row[p] = f"{r.loss_mse:.3g} +- {r.stderr:.2g}"
        rows.append(row)
    return table(rows, ["layer", *t.precisions])
