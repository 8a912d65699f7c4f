"""The cost database: open by URL, upsert in batches, query costs.

One code path serves the embedded SQLite default and a shared PostgreSQL
(``postgresql+psycopg://user:pw@host/db``). URL resolution: explicit argument, then the
``HWCOST_DB`` environment variable, then ``sqlite:///<user data dir>/hwcost.db``.

Modules: ``records`` (frozen records crossing the boundary), ``sql`` with ``measurements``
and ``results`` (the SQL backend), ``rows`` (its private SQL helpers), ``opening`` (URLs,
engines, schema creation and upgrades).
"""

from hwcost.store.opening import ENV_VAR, default_url, open_store, redact_urls, sqlite_path
from hwcost.store.records import (
    CostRow,
    ManifestItem,
    MeasurementIn,
    SlotInfo,
    SubgraphInfo,
    host_name,
    timing_problem,
)
from hwcost.store.sql import Store

__all__ = [
    # opening a store
    "ENV_VAR", "default_url", "open_store", "redact_urls", "sqlite_path",
    # the store
    "Store",
    # records crossing the boundary
    "CostRow", "ManifestItem", "MeasurementIn", "SlotInfo", "SubgraphInfo",
    "host_name", "timing_problem",
]
