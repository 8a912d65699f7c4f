"""Registered schema migrations: ``MIGRATIONS[v]`` upgrades a store from version v to v+1.

A store older than ``SCHEMA_VERSION`` is upgraded in place, in one transaction, when opened
for writing; a newer one is refused (``SchemaTooNew``) so an old hwcost never damages it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

if TYPE_CHECKING:
    from hwcost.store.protocol import Store

Migration = Callable[[Connection], None]



def _v1_campaign_units(conn: Connection) -> None:
    """v1 -> v2: ``campaign_unit``, one row per (campaign, subgraph, shape) of the tasks, which
    workers claim whole. A unit with an open task is pending (its claims are released: a v1
    worker's claim has no heartbeat), else failed if a task failed, else done."""
    from hwcost.store.schema import CampaignUnit

    CampaignUnit.__table__.create(conn, checkfirst=True)
    conn.execute(text(
        "UPDATE campaign_task SET state = 'pending', worker = NULL, claimed_at = NULL "
        "WHERE state = 'claimed'"))
    conn.execute(text(
        "INSERT INTO campaign_unit (campaign_id, subgraph_id, shape, state) "
        "SELECT campaign_id, subgraph_id, shape, "
        "CASE WHEN SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) > 0 THEN 'pending' "
        "WHEN SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) > 0 THEN 'failed' "
        "ELSE 'done' END "
        "FROM campaign_task GROUP BY campaign_id, subgraph_id, shape "
        "ORDER BY MIN(id)"))


def _v2_checkpoints(c: Connection) -> None:
    """v2 -> v3, checkpoint identity: sensitivities gain ``checkpoint`` and ``quantizer`` (in
    their unique key), plans ``checkpoint`` and ``quantizer``, validations ``checkpoint``; the
    ``checkpoint`` table is created afterwards by ``create_all``. Rows written before these
    existed get ``'unknown'``, which no real digest or key equals, so they are kept (listed,
    exported) but never reused for a checkpoint loaded now."""
    unknown = "unknown"

    def add(table: str, col: str) -> None:
        c.execute(text(f"ALTER TABLE {table} ADD COLUMN {col} VARCHAR NOT NULL "
                       f"DEFAULT '{unknown}'"))

    for table, cols in (("plan", ("checkpoint", "quantizer")), ("validation", ("checkpoint",))):
        for col in cols:
            add(table, col)
    if c.dialect.name == "postgresql":
        add("sensitivity", "checkpoint")
        add("sensitivity", "quantizer")
        for uc in inspect(c).get_unique_constraints("sensitivity"):
            c.execute(text(f'ALTER TABLE sensitivity DROP CONSTRAINT "{uc["name"]}"'))
        c.execute(text("ALTER TABLE sensitivity ADD UNIQUE (model_id, checkpoint, quantizer, "
                       "calib_fingerprint, layer, precision, method)"))
        return
    # SQLite cannot drop a UNIQUE constraint: rebuild the table, ids included (nothing refers
    # to sensitivity rows), under a definition frozen here so later schema changes to the
    # table do not change what this step creates.
    c.execute(text("ALTER TABLE sensitivity RENAME TO _sensitivity_v2"))
    for ix in inspect(c).get_indexes("_sensitivity_v2"):
        c.execute(text(f'DROP INDEX "{ix["name"]}"'))
    c.execute(text(
        "CREATE TABLE sensitivity (id INTEGER NOT NULL, model_id INTEGER NOT NULL, "
        "checkpoint VARCHAR NOT NULL, quantizer VARCHAR NOT NULL, "
        "calib_fingerprint VARCHAR NOT NULL, layer VARCHAR NOT NULL, precision VARCHAR NOT NULL, "
        "loss_mse FLOAT NOT NULL, stderr FLOAT NOT NULL, method VARCHAR NOT NULL, "
        "n_samples INTEGER NOT NULL, created_at DATETIME NOT NULL, PRIMARY KEY (id), "
        "UNIQUE (model_id, checkpoint, quantizer, calib_fingerprint, layer, precision, method), "
        "FOREIGN KEY(model_id) REFERENCES model (id))"))
    c.execute(text("CREATE INDEX ix_sensitivity_model_id ON sensitivity (model_id)"))
    cols = ("id, model_id, calib_fingerprint, layer, precision, loss_mse, stderr, method, "
            "n_samples, created_at")
    c.execute(text(f"INSERT INTO sensitivity ({cols}, checkpoint, quantizer) "
                   f"SELECT {cols}, '{unknown}', '{unknown}' FROM _sensitivity_v2"))
    c.execute(text("DROP TABLE _sensitivity_v2"))


def _v3_provenance(c: Connection) -> None:
    """v3 -> v4: how each timing was taken (clock, quick, stable, load, CPU frequency,
    threads, the in-group baseline and its drift; quick and stable on validations). Rows
    written before say nothing about it: they read as full, stable wall-clock timings, which
    is what an ordinary run stored them as. ``learned_fit`` is created with the tables
    added since (``create_all`` after the migrations)."""
    common = [("clock", "VARCHAR NOT NULL DEFAULT 'wall'"),
              ("quick", "BOOLEAN NOT NULL DEFAULT false"),
              ("stable", "BOOLEAN NOT NULL DEFAULT true"),
              ("load1", "FLOAT"), ("cpu_mhz", "FLOAT"), ("threads", "INTEGER")]
    for table, cols in (("measurement", common + [("baseline_us", "FLOAT"), ("drift", "FLOAT")]),
                        ("model_latency", common), ("validation", common[1:3])):
        for name, ddl in cols:
            c.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}"))


# Version 1 is the first released layout.
MIGRATIONS: dict[int, Migration] = {1: _v1_campaign_units, 2: _v2_checkpoints,
                                    3: _v3_provenance}


def pending(stored: int, target: int) -> list[int]:
    """Versions whose migrations must run to go from ``stored`` to ``target``."""
    return list(range(stored, target))


@dataclass(frozen=True)
class SchemaStatus:
    """A store's schema version against this hwcost's, and the migrations between them."""

    stored: int
    current: int
    pending: list[int]


def schema_status(store: Store) -> SchemaStatus:
    """Where ``store`` (opened with ``upgrade=False``) stands against this hwcost."""
    from hwcost.store import schema

    stored = store.schema_version()
    return SchemaStatus(stored, schema.SCHEMA_VERSION, pending(stored, schema.SCHEMA_VERSION))
