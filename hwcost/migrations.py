"""Registered schema migrations: ``MIGRATIONS[v]`` upgrades a store from version v to v+1.

A store older than ``SCHEMA_VERSION`` is upgraded in place, in one transaction, when opened
for writing; a newer one is refused (``SchemaTooNew``) so an old hwcost never damages it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

Migration = Callable[[Connection], None]

# Version 1 is the first released layout; add entries as ``MIGRATIONS[1] = _v1_to_v2``.
MIGRATIONS: dict[int, Migration] = {}


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
