"""``hwcost device``: this machine's device identity."""

from __future__ import annotations

import click

from hwcost.app.costs import calibrate_cmd
from hwcost.app.options import (
    emit_json,
    handle_errors,
    json_option,
    open_cli_store,
    store_option,
)
from hwcost.enums import DeviceKind


@click.group("device", invoke_without_command=True)
@click.option("--kind", default="cpu", show_default=True, type=click.Choice(DeviceKind.values()),
              help="Which of this machine's devices to describe.")
@click.option("--save", is_flag=True, help="Record the device in the store.")
@store_option
@json_option
@click.pass_context
@handle_errors
def device_cmd(ctx: click.Context, kind: str, save: bool, db_url: str | None,
               as_json: bool) -> None:
    """Print this machine's device fingerprint: product, ISA flags, threads and the
    software versions that change timings. Two machines with the same fingerprint share
    measurements; a different torch or driver is a different device."""
    if ctx.invoked_subcommand is not None:
        return
    from hwcost.device import local_device

    info = local_device(kind)
    if save:
        with open_cli_store(db_url) as store:
            store.put_device(info)
    if as_json:
        emit_json(info.to_dict())
        return
    d = info.to_dict()
    click.echo(f"fingerprint  {d['fingerprint']}")
    click.echo(f"kind         {d['kind']}")
    click.echo(f"name         {d['name']}")
    click.echo(f"threads      {d['threads'] if d['threads'] is not None else '-'}")
    click.echo(f"flags        {' '.join(d['flags']) or '-'}")
    click.echo("software     " + " ".join(f"{k}={v}" for k, v in sorted(d["software"].items())))
    if save:
        click.echo("saved to the store")


device_cmd.add_command(calibrate_cmd)
