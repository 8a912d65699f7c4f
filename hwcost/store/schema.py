"""The store's tables (SQLModel). JSON-valued fields are stored as text so that SQLite,
PostgreSQL and the DuckDB/Parquet bundles all see the same plain columns.

Failed or missing runs are rows absent (or a ``state`` column), never sentinel numbers.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Index, UniqueConstraint, false, true
from sqlmodel import Field, SQLModel

from hwcost.store.records import UNKNOWN  # the default of the checkpoint and quantizer keys

SCHEMA_VERSION = 4
"""Version of the layout below. Bump it and register a migration in ``hwcost.store.migrations``."""


# Server-side defaults of the schema-2 provenance columns: bulk loads (bundle import) and
# older writers that do not name them get the values a migrated row reads as.
_WALL = {"server_default": "wall"}
_FALSE = {"server_default": false()}
_TRUE = {"server_default": true()}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Meta(SQLModel, table=True):
    """Key/value facts about the store itself (``schema_version``)."""

    __tablename__ = "meta"
    key: str = Field(primary_key=True)
    value: str


class Device(SQLModel, table=True):
    """A device *and* the software stack that changes its timings."""

    __tablename__ = "device"
    id: int | None = Field(default=None, primary_key=True)
    fingerprint: str = Field(index=True, unique=True)
    kind: str  # cpu | cuda | hpu
    name: str  # product name, e.g. "NVIDIA H100 80GB HBM3"
    threads: int | None = None
    flags: str = "[]"  # JSON list of ISA/feature flags that matter (avx512_bf16, amx_tile, ...)
    software: str = "{}"  # JSON {package: version}
    peaks: str = "{}"  # JSON {"<precision>_tflops": float, "mem_gbps": float, "source": str}
    source: str = "local"  # local | catalog | imported
    created_at: datetime = Field(default_factory=utcnow)


class Subgraph(SQLModel, table=True):
    """A structural piece of a model: identical blocks share one row (and one set of costs)."""

    __tablename__ = "subgraph"
    id: int | None = Field(default=None, primary_key=True)
    signature: str = Field(index=True, unique=True)
    kind: str  # e.g. "LlamaAttention", "LlamaMLP", "Linear"
    n_slots: int
    slots: str  # JSON list of {op, in_features, out_features, bias, macs_per_token, weight_params}
    extra: str = "{}"  # JSON of structure that is not a slot (head counts, norms, activation)
    created_at: datetime = Field(default_factory=utcnow)


class Model(SQLModel, table=True):
    """A model, identified by the structure of its graph (not its weights)."""

    __tablename__ = "model"
    id: int | None = Field(default=None, primary_key=True)
    fingerprint: str = Field(index=True, unique=True)
    name: str
    n_subgraphs: int
    n_layers: int
    created_at: datetime = Field(default_factory=utcnow)


class Checkpoint(SQLModel, table=True):
    """One set of weights of a model architecture, named by a content digest
    (``profiles.checkpoint``). Latencies belong to the architecture; sensitivities, plans and
    validations to a checkpoint."""

    __tablename__ = "checkpoint"
    __table_args__ = (UniqueConstraint("model_id", "digest"),)
    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    digest: str
    name: str = ""  # what it was loaded as (directory name, factory), for people
    source: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class ManifestEntry(SQLModel, table=True):
    """One subgraph instance of a model, in execution order, with its layers' names per slot."""

    __tablename__ = "manifest_entry"
    __table_args__ = (UniqueConstraint("model_id", "position"),)
    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    position: int
    subgraph_id: int = Field(foreign_key="subgraph.id")
    layer_names: str  # JSON list, one module name per slot


class Campaign(SQLModel, table=True):
    """A profiling campaign: a model on a device for a set of shapes."""

    __tablename__ = "campaign"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    model_id: int | None = Field(default=None, foreign_key="model.id")
    device_id: int = Field(foreign_key="device.id")
    shapes: str = "[]"  # JSON list of shape keys
    precisions: str = "[]"  # JSON list of precision names
    created_at: datetime = Field(default_factory=utcnow)


class CampaignTask(SQLModel, table=True):
    """One (subgraph, shape, config) to measure; claimed by exactly one worker."""

    __tablename__ = "campaign_task"
    __table_args__ = (
        UniqueConstraint("campaign_id", "subgraph_id", "shape", "config"),
        Index("ix_task_claim", "campaign_id", "state"),
    )
    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    subgraph_id: int = Field(foreign_key="subgraph.id")
    shape: str
    config: str
    state: str = "pending"  # pending | claimed | done | failed | cancelled
    worker: str | None = None
    claimed_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


class CampaignUnit(SQLModel, table=True):
    """The tasks of one (subgraph, shape) of a campaign: what a worker claims at once, so a
    baseline and its candidates are timed together on one host.

    ``heartbeat_at`` is refreshed by the worker holding the unit; a claim whose heartbeat is
    older than the workers' stale limit is handed out again (its worker is presumed dead).
    """

    __tablename__ = "campaign_unit"
    __table_args__ = (
        UniqueConstraint("campaign_id", "subgraph_id", "shape"),
        Index("ix_unit_claim", "campaign_id", "state"),
    )
    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    subgraph_id: int = Field(foreign_key="subgraph.id")
    shape: str
    state: str = "pending"  # pending | claimed | done | failed | cancelled
    worker: str | None = None
    claimed_at: datetime | None = None
    heartbeat_at: datetime | None = None
    finished_at: datetime | None = None


class Measurement(SQLModel, table=True):
    """Measured latency of one subgraph in one config on one device and shape."""

    __tablename__ = "measurement"
    __table_args__ = (
        UniqueConstraint("device_id", "subgraph_id", "shape", "config"),
        Index("ix_measurement_lookup", "device_id", "shape", "subgraph_id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id")
    subgraph_id: int = Field(foreign_key="subgraph.id")
    shape: str
    config: str  # precision per slot, comma-joined, in slot order
    median_us: float
    spread_us: float  # half the inter-quartile range of the samples
    n_samples: int
    measured_at: datetime = Field(default_factory=utcnow)
    host: str = ""
    campaign: str | None = None
    tool_version: str = ""
    # how it was taken (schema 4); rows older than schema 4 read as full, stable, wall clock
    clock: str = Field(default="wall", sa_column_kwargs=_WALL)  # wall | thread
    # few samples, no re-measuring: never planned on unless asked
    quick: bool = Field(default=False, sa_column_kwargs=_FALSE)
    # spread, baseline drift and machine load within the run's policy
    stable: bool = Field(default=True, sa_column_kwargs=_TRUE)
    load1: float | None = None  # os.getloadavg()[0] when the group was timed
    cpu_mhz: float | None = None  # current CPU frequency where /sys or /proc tells it
    threads: int | None = None  # torch threads the group was timed with
    baseline_us: float | None = None  # the baseline config timed in the same interleave group
    drift: float | None = None  # relative change of that baseline between rounds


class ModelLatency(SQLModel, table=True):
    """End-to-end latency of a whole model in one configuration (baseline or a plan)."""

    __tablename__ = "model_latency"
    __table_args__ = (UniqueConstraint("model_id", "device_id", "shape", "config_hash"),)
    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    device_id: int = Field(foreign_key="device.id")
    shape: str
    config_hash: str  # "all:<precision>" for uniform configs, else a hash of the layer map
    config: str = "{}"  # JSON {layer: precision} (empty for uniform configs)
    median_us: float
    spread_us: float
    n_samples: int
    measured_at: datetime = Field(default_factory=utcnow)
    host: str = ""
    tool_version: str = ""
    clock: str = Field(default="wall", sa_column_kwargs=_WALL)  # schema 4: as on Measurement
    quick: bool = Field(default=False, sa_column_kwargs=_FALSE)
    stable: bool = Field(default=True, sa_column_kwargs=_TRUE)
    load1: float | None = None
    cpu_mhz: float | None = None
    threads: int | None = None


class Sensitivity(SQLModel, table=True):
    """One layer's loss-MSE contribution s_l(p) at one precision, with its standard error."""

    __tablename__ = "sensitivity"
    __table_args__ = (
        UniqueConstraint("model_id", "checkpoint", "quantizer", "calib_fingerprint", "layer",
                         "precision", "method"),
    )
    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    checkpoint: str = UNKNOWN  # digest of the weights scored (profiles.checkpoint)
    quantizer: str = UNKNOWN  # hwcost.quantizer.Quantizer.key of the emulation scored
    calib_fingerprint: str
    layer: str
    precision: str
    loss_mse: float
    stderr: float
    method: str = "taylor"  # taylor | noise | direct | weight_only | fisher
    n_samples: int
    created_at: datetime = Field(default_factory=utcnow)


class Plan(SQLModel, table=True):
    """A solved precision plan; ``body`` is the versioned plan JSON the exporters read."""

    __tablename__ = "plan"
    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    checkpoint: str = UNKNOWN  # the sensitivity table's checkpoint digest
    quantizer: str = UNKNOWN  # and its quantizer key
    device_id: int = Field(foreign_key="device.id")
    shape: str
    objective: str
    max_loss_mse: float | None = None
    predicted_speedup: float | None = None
    predicted_loss_mse: float | None = None
    measured_share: float | None = None  # share of predicted gain resting on measured costs
    body: str  # JSON
    created_at: datetime = Field(default_factory=utcnow)


class Validation(SQLModel, table=True):
    """A plan applied on a device: predicted against measured speedup and loss MSE."""

    __tablename__ = "validation"
    id: int | None = Field(default=None, primary_key=True)
    plan_id: int = Field(foreign_key="plan.id", index=True)
    checkpoint: str = UNKNOWN  # digest of the weights the loss MSE was measured with
    device_id: int = Field(foreign_key="device.id")
    baseline_us: float
    plan_us: float
    measured_speedup: float
    predicted_speedup: float | None = None
    measured_loss_mse: float | None = None
    predicted_loss_mse: float | None = None
    n_eval_samples: int | None = None
    host: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    # schema 4: timed with the quick harness settings; on a machine that passed the policy
    quick: bool = Field(default=False, sa_column_kwargs=_FALSE)
    stable: bool = Field(default=True, sa_column_kwargs=_TRUE)


class LearnedFit(SQLModel, table=True):
    """A device's fitted learned latency model, as data (JSON of tree parameters, never a
    pickle), keyed by the state of the measurements it was fitted on (schema 4)."""

    __tablename__ = "learned_fit"
    __table_args__ = (UniqueConstraint("device_id", "state"),)
    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", index=True)
    state: str  # hash of the training rows, the fit's settings and the model code version
    body: str  # JSON: see hwcost.learned.LatencyModel.to_dict
    created_at: datetime = Field(default_factory=utcnow)


ALL_TABLES = [
    Meta, Device, Subgraph, Model, Checkpoint, ManifestEntry, Campaign, CampaignTask, CampaignUnit,
    Measurement,
    ModelLatency, Sensitivity, Plan, Validation, LearnedFit,
]
