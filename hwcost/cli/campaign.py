"""``hwcost campaign``: progress of the profiling campaigns in a (shared) store."""

from __future__ import annotations

import click

from hwcost.cli.options import emit_json, handle_errors, json_option, open_cli_store, store_option, table


@click.group("campaign")
def campaign_cmd() -> None:
    """Follow profiling campaigns: how many tasks are pending, claimed by a worker, done or
    failed, and which worker measured what. Workers are started with
    `hwcost profile MODEL --worker NAME` against a shared store."""


@campaign_cmd.command("ls")
@store_option
@json_option
@handle_errors
def ls_cmd(db_url: str | None, as_json: bool) -> None:
    """List campaigns with their progress."""
    from hwcost.queue import campaigns

    with open_cli_store(db_url) as store:
        rows = campaigns(store)
    if as_json:
        emit_json([c.to_dict() for c in rows])
        return
    click.echo(table([{"campaign": c.name, "model": c.model, "device": c.device[:12],
                       "done": c.progress.done, "total": c.progress.total,
                       "claimed": c.progress.claimed, "failed": c.progress.failed,
                       "state": "complete" if c.complete else "open"} for c in rows]))


@campaign_cmd.command("status")
@click.argument("name")
@store_option
@json_option
@handle_errors
def status_cmd(name: str, db_url: str | None, as_json: bool) -> None:
    """Show one campaign's progress and the tasks each worker finished."""
    from hwcost.errors import StoreError
    from hwcost.queue import campaigns

    with open_cli_store(db_url) as store:
        found = [c for c in campaigns(store) if c.name == name]
    if not found:
        raise StoreError(f"no campaign {name!r} in the store; `hwcost campaign ls` lists them")
    c = found[0]
    if as_json:
        emit_json(c.to_dict())
        return
    p = c.progress
    pct = 100.0 * p.done / p.total if p.total else 0.0
    click.echo(f"campaign  {c.name} ({'complete' if c.complete else 'open'})")
    click.echo(f"model     {c.model or '-'} on device {c.device[:12]}")
    click.echo(f"shapes    {' '.join(c.shapes) or '-'}")
    click.echo(f"tasks     {p.done}/{p.total} done ({pct:.0f}%), {p.pending} pending, "
               f"{p.claimed} claimed, {p.failed} failed")
    for worker, n in c.workers.items():
        click.echo(f"worker    {worker}: {n} done")
