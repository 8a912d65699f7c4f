"""``hwcost campaign``: follow and steer the profiling campaigns in a (shared) store."""

from __future__ import annotations

import click

from hwcost.app.options import emit_json, handle_errors, json_option, open_cli_store, store_option, table


@click.group("campaign")
def campaign_cmd() -> None:
    """Follow and steer profiling campaigns: how many tasks are pending, claimed by a worker,
    done, failed or cancelled, what each worker did and how fast; reopen failed tasks or stop
    a campaign. Workers are started with `hwcost profile MODEL --worker NAME` (or `--ray`)
    against a shared store."""


@campaign_cmd.command("ls")
@store_option
@json_option
@handle_errors
def ls_cmd(db_url: str | None, as_json: bool) -> None:
    """List campaigns with their progress."""
    with open_cli_store(db_url, read_only=True) as store:
        rows = store.campaign_statuses()
    if as_json:
        emit_json([c.to_dict() for c in rows])
        return
    click.echo(table([{"campaign": c.name, "model": c.model, "device": c.device[:12],
                       "done": c.progress.done, "total": c.progress.total,
                       "claimed": c.progress.claimed, "failed": c.progress.failed,
                       "state": c.state} for c in rows]))


@campaign_cmd.command("status")
@click.argument("name")
@store_option
@json_option
@handle_errors
def status_cmd(name: str, db_url: str | None, as_json: bool) -> None:
    """Show one campaign's progress and, per worker, tasks done and failed, tasks per second
    (first claim to last close), units held now and the last heartbeat."""
    from hwcost.errors import StoreError

    with open_cli_store(db_url, read_only=True) as store:
        found = store.campaign_statuses(name)
    if not found:
        raise StoreError(f"no campaign {name!r} in the store; `hwcost campaign ls` lists them")
    c = found[0]
    if as_json:
        emit_json(c.to_dict())
        return
    p = c.progress
    pct = 100.0 * p.done / p.total if p.total else 0.0
    click.echo(f"campaign  {c.name} ({c.state})")
    click.echo(f"model     {c.model or '-'} on device {c.device[:12]}")
    click.echo(f"shapes    {' '.join(c.shapes) or '-'}")
    click.echo(f"tasks     {p.done}/{p.total} done ({pct:.0f}%), {p.pending} pending, "
               f"{p.claimed} claimed, {p.failed} failed"
               + (f", {p.cancelled} cancelled" if p.cancelled else ""))
    if c.workers:
        click.echo(table([{"worker": w, "done": s.done, "failed": s.failed,
                           "tasks_per_s": s.tasks_per_s, "holding": s.holding,
                           "last_heartbeat": s.last_heartbeat.strftime("%H:%M:%S")
                           if s.last_heartbeat else None} for w, s in c.workers.items()]))


@campaign_cmd.command("retry")
@click.argument("name")
@store_option
@handle_errors
def retry_cmd(name: str, db_url: str | None) -> None:
    """Return a campaign's failed (and cancelled) tasks to pending; running or newly
    started workers claim them. Measurements already stored are kept."""
    with open_cli_store(db_url) as store:
        n = store.retry_campaign(store.campaign_id(name))
    click.echo(f"campaign {name}: {n} task{'s' if n != 1 else ''} back to pending")


@campaign_cmd.command("cancel")
@click.argument("name")
@store_option
@handle_errors
def cancel_cmd(name: str, db_url: str | None) -> None:
    """Cancel a campaign's pending tasks: workers finish and write the units they hold, then
    exit. `hwcost campaign retry NAME` resumes it."""
    with open_cli_store(db_url) as store:
        n = store.cancel_campaign(store.campaign_id(name))
    click.echo(f"campaign {name}: {n} pending task{'s' if n != 1 else ''} cancelled")
