"""The cost database: open by URL, upsert in batches, query costs.

One code path serves the embedded SQLite default and a shared PostgreSQL
(``postgresql+psycopg://user:pw@host/db``). URL resolution: explicit argument, then the
``HWCOST_DB`` environment variable, then ``sqlite:///<user data dir>/hwcost.db``.

Modules: ``protocol`` (the :class:`Store` protocol every backend meets), ``records``
(frozen records crossing the boundary), ``sql`` with ``measurements``, ``results`` and
``campaigns`` (the SQL backend), ``rows`` (its private SQL helpers), ``opening`` (URLs,
engines, schema creation and upgrades).
"""

from hwcost.store.campaigns import STALE_AFTER_S
from hwcost.store.opening import ENV_VAR, default_url, open_store, redact_urls, sqlite_path
from hwcost.store.protocol import Store
from hwcost.store.queue_records import OtherClaims, Progress, Task, Unit
from hwcost.store.records import (
    CostRow,
    DeviceRef,
    Manifest,
    ManifestItem,
    MeasurementIn,
    ModelRef,
    PlanRecord,
    SensitivityRow,
    SensitivityTable,
    SlotInfo,
    SubgraphInfo,
    host_name,
    timing_problem,
)
from hwcost.store.sql import SqlStore

__all__ = [
    # opening a store
    "ENV_VAR", "default_url", "open_store", "redact_urls", "sqlite_path",
    # the boundary and its SQL backend
    "Store", "SqlStore",
    # records crossing the boundary
    "CostRow", "DeviceRef", "Manifest", "ManifestItem", "MeasurementIn", "ModelRef", "PlanRecord",
    "SensitivityRow", "SensitivityTable", "SlotInfo", "SubgraphInfo", "host_name", "timing_problem",
    # the campaign queue's records
    "STALE_AFTER_S", "OtherClaims", "Progress", "Task", "Unit",
]
