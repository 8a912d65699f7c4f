"""The store's boundary as a protocol (in the manner of TVM MetaSchedule's ``Database``): what
the library asks of a cost database, addressed by natural keys, records in and out.

A device or model is resolved ONCE from what a user typed (:meth:`Store.device`,
:meth:`Store.model`) and the resulting :class:`DeviceRef` / :class:`ModelRef` is passed to
every later call; a method also takes the user's text (resolved the same way), never a
database id. The SQL backend (:class:`hwcost.store.sql.SqlStore`, SQLite and PostgreSQL) is
the implementation beside it; its SQLModel rows and integer ids stay inside the package.
``tests/hwcost/test_store_contract.py`` runs this contract on every backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hwcost.store.queue_records import CampaignStatus, OtherClaims, Progress, Unit
from hwcost.store.records import (
    CostRow,
    DeviceRef,
    Manifest,
    ManifestItem,
    MeasurementIn,
    ModelLatencyRecord,
    ModelRef,
    SensitivityTable,
    SubgraphInfo,
    ValidationRecord,
)

if TYPE_CHECKING:  # annotations only
    from hwcost.catalog import CatalogEntry
    from hwcost.device import DeviceInfo

__all__ = ["Store"]


@runtime_checkable
class Store(Protocol):
    """A cost database: devices, subgraphs, models and their timings, and the campaign queue
    that fills it. Writes are idempotent by natural key; bad input is refused (an
    ``hwcost.errors`` exception) before anything is written."""

    url: str

    # -- lifecycle
    def close(self) -> None:
        """Release the connection(s)."""

    def schema_version(self) -> int:
        """The stored schema version (0 for an empty database)."""

    # -- devices and models, resolved once
    def put_device(self, info: DeviceInfo, *, peaks: dict | None = None,
                   source: str = "local") -> DeviceRef:
        """Record a device by fingerprint (idempotent; given peaks are merged in)."""

    def put_catalog_device(self, entry: CatalogEntry) -> DeviceRef:
        """Record a catalog (datasheet) device by its catalog fingerprint (idempotent)."""

    def devices(self) -> list[DeviceRef]:
        """Every stored device, in the order they were recorded."""

    def device(self, ref: str | DeviceRef) -> DeviceRef:
        """A stored device by fingerprint (or unique prefix) or exact product name;
        ``NoSuchDevice`` when none or several match."""

    def set_device_peaks(self, fingerprint: str, peaks: dict) -> None:
        """Merge calibrated or catalog peaks into a stored device."""

    def put_model(self, fingerprint: str, name: str, subgraphs: Sequence[SubgraphInfo],
                  manifest: Sequence[ManifestItem]) -> object:
        """Store a model's subgraphs and manifest; idempotent by fingerprint."""

    def model(self, ref: str | ModelRef) -> ModelRef:
        """A stored model by fingerprint (or unique prefix) or name (latest wins);
        ``NoSuchModel`` when none matches."""

    def model_manifest(self, model: str | ModelRef) -> Manifest:
        """The model's subgraph instances in order, each with its structure."""

    def subgraph(self, signature: str) -> SubgraphInfo:
        """A stored subgraph's structure; ``StoreError`` when unknown."""

    def put_checkpoint(self, model: str | ModelRef, digest: str, name: str = "",
                       source: str = "") -> object:
        """Record a checkpoint (weights digest) of a stored model; idempotent."""

    # -- timings
    def add_measurements(self, items: Iterable[MeasurementIn], *,
                         replace: bool = False) -> int:
        """Write measurements in one transaction, all validated first; a stored full stable
        row of the same (device, subgraph, shape, config) is kept unless ``replace``.
        Returns the rows written."""

    def measurement_count(self) -> int:
        """How many measurements are stored."""

    def measured_configs(self, device: str | DeviceRef, shape: str,
                         signatures: Sequence[str], *,
                         allow_unstable: bool = False) -> dict[str, set[str]]:
        """signature -> the configs measured for it on ``device`` at ``shape``."""

    def model_costs(self, model: str | ModelRef, device: str | DeviceRef, shape: str, *,
                    allow_unstable: bool = False) -> list[CostRow]:
        """Every measured cost of the model's subgraph instances, by position then config."""

    def device_measurements(self, device: str | DeviceRef, *, allow_unstable: bool = False
                            ) -> list[tuple[SubgraphInfo, str, str, float, float]]:
        """Every measurement of a device as (subgraph, shape, config, median_us, spread_us)."""

    def put_model_latency(self, model: str | ModelRef, device: str | DeviceRef, shape: str,
                          config_hash: str, timing, *, config: str = "{}", quick: bool = False,
                          replace: bool = False) -> bool:
        """Write a whole-model latency from a timing; a stored good row is kept unless
        ``replace``. Returns whether it was written."""

    def model_latency(self, model: str | ModelRef, device: str | DeviceRef, shape: str,
                      config_hash: str, *, allow_unstable: bool = False
                      ) -> ModelLatencyRecord | None:
        """The stored whole-model latency of a configuration (``all:<precision>`` or a layer
        map's hash) at a shape or workload key; full and stable unless ``allow_unstable``."""

    def learned_fit(self, device: str | DeviceRef, state: str) -> str | None:
        """The JSON of the device's learned fallback fitted on ``state``, if stored."""

    def put_learned_fit(self, device: str | DeviceRef, state: str, body: str) -> None:
        """Keep ``body`` (JSON) as the device's learned fallback for ``state``."""

    # -- results
    def put_sensitivity_table(self, model: str | ModelRef, table: SensitivityTable, *,
                              replace: bool = True) -> int:
        """Write a sensitivity table of a stored model, every row validated first (nothing
        written otherwise); rows of the same key are replaced unless ``replace`` is False.
        Returns the rows written."""

    def sensitivity_keys(self, model: str | ModelRef, method: str = "taylor"
                         ) -> list[tuple[str, str, str]]:
        """(checkpoint, quantizer, calibration) of the model's stored tables, newest first."""

    def sensitivity_table(self, model: str | ModelRef, method: str = "taylor", *,
                          checkpoint: str | None = None, quantizer: str | None = None,
                          calib_fingerprint: str | None = None) -> SensitivityTable:
        """The stored table of one method, checkpoint (a digest or unique prefix), quantizer
        and calibration set; keys left None take the latest matching table's. The one way a
        table is read: ``NoSensitivityTable`` (one wording, naming the command that computes
        one) when none matches."""

    def validations(self, plan_id: int, *, checkpoint: str | None = None
                    ) -> list[ValidationRecord]:
        """Validations of the plan numbered ``plan_id`` (measured with one checkpoint's
        weights when given), oldest first."""

    def put_validation(self, v: ValidationRecord) -> int:
        """Store a validation of a stored plan on a stored device; returns its number."""

    # -- the campaign queue (hwcost.fleet_worker runs a worker's loop over it)
    def ensure_campaign(self, name: str, *, device: str, model: str | ModelRef | None,
                        shapes: Sequence[str] = (), precisions: Sequence[str] = ()) -> int:
        """Get or create a campaign by name; returns its handle."""

    def campaign_id(self, name: str) -> int:
        """The handle of the campaign ``name``; ``StoreError`` if there is none."""

    def add_tasks(self, campaign: int, tasks: Iterable[tuple[str, str, str]]) -> int:
        """Add (signature, shape, config) tasks idempotently; returns how many were new."""

    def claim_units(self, campaign: int, worker: str, n: int = 1, *,
                    stale_after_s: float = 60.0) -> list[Unit]:
        """Claim up to ``n`` whole (subgraph, shape) units for ``worker``."""

    def complete_unit(self, unit: Unit, worker: str, measurements: Sequence[MeasurementIn] = (),
                      failed: dict[int, str] | None = None) -> bool:
        """Write a unit's measurements and close it in one transaction, only while
        ``worker`` still holds it; False (nothing written) otherwise."""

    def heartbeat(self, campaign: int, worker: str) -> int:
        """Refresh the heartbeat of every unit ``worker`` holds; returns how many."""

    def release_worker(self, campaign: int, worker: str) -> int:
        """Return ``worker``'s claims to pending; returns the tasks released."""

    def retry_campaign(self, campaign: int) -> int:
        """Reopen failed and cancelled tasks; returns how many."""

    def cancel_campaign(self, campaign: int) -> int:
        """Cancel pending tasks; returns how many."""

    def campaign_progress(self, campaign: int) -> Progress:
        """Task counts by state."""

    def other_claims(self, campaign: int, worker: str, suspect_after_s: float) -> OtherClaims:
        """Units of the campaign claimed by workers other than ``worker``, by worker: live
        ones, and suspect ones (no heartbeat for ``suspect_after_s``)."""

    def task_workers(self, campaign: int) -> dict[int, str | None]:
        """Task handle -> the worker that holds or closed it (for audits and tests)."""

    def campaign_statuses(self, name: str | None = None) -> list[CampaignStatus]:
        """Every campaign (or the one called ``name``) with its progress and, per worker,
        tasks done and failed, throughput and last heartbeat; oldest first."""
