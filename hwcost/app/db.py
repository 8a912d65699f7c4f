"""``hwcost db``: create, inspect, share, query and upgrade the cost store."""

from __future__ import annotations

import click

from hwcost.app.options import (
    emit_json,
    handle_errors,
    json_option,
    open_cli_store,
    require_existing,
    store_option,
    table,
)
from hwcost.enums import ConflictRule


@click.group("db")
def db_cmd() -> None:
    """The cost store: create it, list what it holds, share it as Parquet bundles, query it
    with read-only SQL, upgrade its schema."""


@db_cmd.command("init")
@store_option
@handle_errors
def init_cmd(db_url: str | None) -> None:
    """Create an empty store (or open an existing one and upgrade its schema)."""
    from hwcost.store import redact_urls as _redact

    with open_cli_store(db_url) as store:
        click.echo(f"store ready: {_redact(store.url)} (schema version {store.schema_version()})")


@db_cmd.command("ls")
@store_option
@json_option
@handle_errors
def ls_cmd(db_url: str | None, as_json: bool) -> None:
    """Summarise devices, models (architectures, each with its checkpoints: weights digests
    with their sensitivity tables, plans and validations), subgraphs and measurement coverage
    per model, device and shape."""
    from hwcost.store import summarize

    with open_cli_store(db_url, read_only=True) as store:
        s = summarize(store)
    if as_json:
        emit_json(s.to_dict())
        return
    click.echo(f"schema version {s.schema_version}; {s.n_subgraphs} subgraphs, "
               f"{s.n_measurements} measurements")
    click.echo("\ndevices")
    click.echo(table([{"fingerprint": d.fingerprint, "kind": d.kind, "name": d.name,
                       "source": d.source, "measurements": d.measurements,
                       "subgraphs": d.subgraphs, "shapes": d.shapes} for d in s.devices]))
    click.echo("\nmodels (architectures; their checkpoints, by weights digest, below each)")
    rows = []
    for m in s.models:
        rows.append({"fingerprint": m.fingerprint[:16], "name": m.name,
                     "subgraphs": m.n_subgraphs, "distinct": m.distinct, "layers": m.n_layers})
        for ck in m.checkpoints:
            rows.append({"fingerprint": f"  {ck.digest[:14]}", "name": ck.name or "-",
                         "subgraphs": "", "distinct": "", "layers": "",
                         "tables": ck.tables, "plans": ck.plans, "validations": ck.validations})
    click.echo(table(rows, ["fingerprint", "name", "subgraphs", "distinct", "layers", "tables",
                            "plans", "validations"]))
    click.echo("\ncoverage (distinct subgraphs of the model measured on the device and shape)")
    click.echo(table([{"model": c.model[:16], "device": c.device, "shape": c.shape,
                       "measured": f"{c.measured}/{c.distinct}", "measurements": c.measurements}
                      for c in s.coverage]))


@db_cmd.command("export")
@click.option("--device", default=None, metavar="DEVICE",
              help="Export only this device's measurements and model latencies (fingerprint, "
                   "prefix, name, or a kind such as cpu when the store has one local device of "
                   "it); subgraphs, models and sensitivities are always whole.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Bundle file to write (Parquet).")
@store_option
@handle_errors
def export_cmd(device: str | None, output: str, db_url: str | None) -> None:
    """Write the store (or one device's part) to one self-describing Parquet bundle with a
    content checksum."""
    from hwcost.device_lookup import stored_device
    from hwcost.store import export_bundle

    with open_cli_store(db_url, read_only=True) as store:
        found = stored_device(store, device) if device is not None else None
        if found is not None:  # else the bundle's own lookup says what is wrong
            device = found.fingerprint
        rep = export_bundle(store, output, device=device)
    r = rep.rows
    click.echo(f"exported {r['measurement']} measurements, {r['device']} devices, "
               f"{r['subgraph']} subgraphs, {r['model']} models to {rep.path} "
               f"(sha256 {rep.checksum[:16]})")


@db_cmd.command("import")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--on-conflict", type=click.Choice(ConflictRule.values()), default=ConflictRule.KEEP.value,
              show_default=True,
              help="When a row's key is in the store with different values: keep the store's, "
                   "take the bundle's, or take the one measured later.")
@store_option
@json_option
@handle_errors
def import_cmd(bundle: str, on_conflict: str, db_url: str | None, as_json: bool) -> None:
    """Validate a bundle completely, then merge it in one transaction (rows matched by
    fingerprint, signature, shape and config). A bad bundle changes nothing."""
    from hwcost.store import import_bundle

    with open_cli_store(db_url) as store:
        rep = import_bundle(store, bundle, on_conflict=on_conflict)
    if as_json:
        emit_json(rep.to_dict())
        return
    click.echo(table([{"table": name, "rows": t.rows, "new": t.new, "identical": t.identical,
                       "conflicting": t.conflicting, "replaced": t.replaced, "kept": t.kept}
                      for name, t in rep.tables.items()]))
    n_conf = rep.conflicting
    if not n_conf:
        click.echo(f"imported {rep.new} new rows; no conflicts")
        return
    replaced = sum(t.replaced for t in rep.tables.values())
    click.echo(f"imported {rep.new} new rows; {n_conf} conflicting: {replaced} replaced by the "
               f"bundle's, {n_conf - replaced} kept (--on-conflict {on_conflict})")
    for name, t in rep.tables.items():
        for ex in t.examples:
            click.echo(f"  conflict {name} {ex}")


@db_cmd.command("query")
@click.argument("sql")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True,
              type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="Interrupt the query after this long.")
@click.option("--memory-limit", default="2GB", show_default=True, metavar="SIZE",
              help="DuckDB memory cap for the query (no spilling to disk).")
@store_option
@json_option
@handle_errors
def query_cmd(sql: str, timeout_s: float, memory_limit: str, db_url: str | None,
              as_json: bool) -> None:
    """Run one read-only SELECT (DuckDB SQL) over the store's tables, e.g.
    "SELECT shape, count(*) FROM costs GROUP BY shape". Tables: device, subgraph, model,
    manifest_entry, measurement, model_latency, sensitivity, ... and the view costs.
    Timestamps are TIMESTAMP WITH TIME ZONE (UTC) on every backend. Anything that writes
    (also inside a WITH clause) is refused; at most 200,000 rows come back."""
    from hwcost.store import run_query

    with open_cli_store(db_url, read_only=True) as store:
        res = run_query(store, sql, timeout_s=timeout_s, memory_limit=memory_limit)
    if as_json:
        emit_json(res.to_dicts())
        return
    click.echo(table(res.to_dicts(), res.columns))


@db_cmd.command("status")
@store_option
@json_option
@handle_errors
def status_cmd(db_url: str | None, as_json: bool) -> None:
    """Show the store's schema version, this hwcost's, and the migrations pending."""
    from hwcost.store import open_store, schema_status

    require_existing(db_url)
    with open_store(db_url, create=False, upgrade=False) as store:
        st = schema_status(store)
    if as_json:
        emit_json({"stored": st.stored, "current": st.current, "pending": st.pending})
        return
    click.echo(f"schema version {st.stored} (this hwcost: {st.current})")
    click.echo("pending migrations: " + (", ".join(f"{v}->{v + 1}" for v in st.pending) or "none"))


@db_cmd.command("migrate")
@store_option
@handle_errors
def migrate_cmd(db_url: str | None) -> None:
    """Upgrade the store's schema in place, in one transaction."""
    from hwcost.store import open_store, schema_status

    require_existing(db_url)
    with open_store(db_url, create=False, upgrade=False) as store:
        before = schema_status(store)
    if not before.pending:
        click.echo(f"schema version {before.stored} is current; nothing to migrate")
        return
    open_store(db_url, create=False).close()  # opening upgrades, all steps in one transaction
    click.echo(f"migrated schema {before.stored} -> {before.current} "
               f"({len(before.pending)} migration{'s' if len(before.pending) > 1 else ''})")
