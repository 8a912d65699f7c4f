"""Registered schema migrations: ``MIGRATIONS[v]`` upgrades a store from version v to v+1.

A store older than ``SCHEMA_VERSION`` is upgraded in place, in one transaction, when opened
for writing; a newer one is refused (``SchemaTooNew``) so an old hwcost never damages it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, text

Migration = Callable[[Connection], None]



def _v1_campaign_units(conn: Connection) -> None:
    """v1 -> v2: ``campaign_unit``, one row per (campaign, subgraph, shape) of the tasks, which
    workers claim whole. A unit with an open task is pending (its claims are released: a v1
    worker's claim has no heartbeat), else failed if a task failed, else done."""
    from hwcost.schema import CampaignUnit

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


# Version 1 is the first released layout.
MIGRATIONS: dict[int, Migration] = {1: _v1_campaign_units}


def pending(stored: int, target: int) -> list[int]:
    """Versions whose migrations must run to go from ``stored`` to ``target``."""
    return list(range(stored, target))


@dataclass(frozen=True)
class SchemaStatus:
    """A store's schema version against this hwcost's, and the migrations between them."""

    stored: int
    current: int
    pending: list[int]


def schema_status(store) -> SchemaStatus:
    """Where ``store`` (opened with ``upgrade=False``) stands against this hwcost."""
    from hwcost import schema

    stored = store.schema_version()
    return SchemaStatus(stored, schema.SCHEMA_VERSION, pending(stored, schema.SCHEMA_VERSION))
