"""The cost database: open by URL, upsert in batches, query costs.

One code path serves the embedded SQLite default and a shared PostgreSQL
(``postgresql+psycopg://user:pw@host/db``). URL resolution: explicit argument, then the
``HWCOST_DB`` environment variable, then ``sqlite:///<user data dir>/hwcost.db``.

Modules: ``protocol`` (the :class:`Store` protocol every backend meets), ``records``
(frozen records crossing the boundary), ``plan_document`` (a plan's document, typed),
``sql`` with ``measurements``, ``results`` and
``campaigns`` (the SQL backend), ``rows`` (its private SQL helpers), ``opening`` (URLs,
engines, schema creation and upgrades), ``schema`` (the SQLModel tables) and ``migrations``.
Sharing and inspecting a store, loaded on first use (``lazy_loader``: pyarrow and DuckDB only
when asked for): ``exchange`` with ``bundle``, ``bundle_checks`` and ``bulk`` (bundle files in
and out, Arrow bulk copies), ``query`` (read-only DuckDB SQL), ``summary`` (``hwcost db ls``).
Nothing outside this package touches the engine, a session or a row class
(``tests/test_layering.py`` checks it).
"""

import lazy_loader

from hwcost.store.opening import ENV_VAR, default_url, open_store, redact_urls, sqlite_path
from hwcost.store.plan_document import (
    PLAN_TYPE,
    PLAN_VERSION,
    PlanConstraints,
    PlanDevice,
    PlanDocument,
    PlanModel,
    PlanPrediction,
    PlanSensitivity,
    PlanSolver,
    PlanSubgraph,
)
from hwcost.store.protocol import Store
from hwcost.store.queue_records import (
    STALE_AFTER_S,
    CampaignStatus,
    OtherClaims,
    Progress,
    Task,
    Unit,
    WorkerStats,
)
from hwcost.store.records import (
    UNKNOWN,
    CostRow,
    DeviceRef,
    Manifest,
    ManifestItem,
    MeasurementIn,
    ModelLatencyRecord,
    ModelRef,
    PlanRecord,
    SensitivityRow,
    SensitivityTable,
    SlotInfo,
    SubgraphInfo,
    ValidationRecord,
    host_name,
    timing_problem,
)
from hwcost.store.sql import SqlStore

_LAZY = {
    "exchange": ["export_bundle", "import_bundle", "ImportReport", "TableReport", "CONFLICT_RULES"],
    "bundle": ["read_bundle", "Bundle", "ExportReport"],
    "query": ["run_query", "QueryResult"],
    "summary": ["summarize", "StoreSummary"],
    "migrations": ["schema_status", "SchemaStatus"],
}
"""Names whose modules load heavy libraries (pyarrow, DuckDB): imported on first use."""

__getattr__, _, _ = lazy_loader.attach(__name__, submod_attrs=_LAZY)

__all__ = [
    # opening a store
    "ENV_VAR", "default_url", "open_store", "redact_urls", "sqlite_path",
    # the boundary and its SQL backend
    "Store", "SqlStore",
    # records crossing the boundary
    "CostRow", "DeviceRef", "Manifest", "ManifestItem", "MeasurementIn", "ModelLatencyRecord",
    "ModelRef", "PlanRecord", "SensitivityRow", "SensitivityTable", "SlotInfo", "SubgraphInfo",
    "ValidationRecord", "host_name", "timing_problem",
    # a plan's document
    "PLAN_TYPE", "PLAN_VERSION", "PlanConstraints", "PlanDevice", "PlanDocument", "PlanModel",
    "PlanPrediction", "PlanSensitivity", "PlanSolver", "PlanSubgraph",
    # the campaign queue's records
    "STALE_AFTER_S", "CampaignStatus", "OtherClaims", "Progress", "Task", "Unit", "WorkerStats",
    # sharing and inspecting a store (loaded on first use)
    "export_bundle", "import_bundle", "read_bundle", "Bundle", "ExportReport", "ImportReport",
    "TableReport", "CONFLICT_RULES", "run_query", "QueryResult", "summarize", "StoreSummary",
    "schema_status", "SchemaStatus", "UNKNOWN",
]


def __dir__() -> list[str]:
    return list(__all__)
