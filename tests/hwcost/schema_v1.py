"""A frozen copy of the store's layout at schema version 1 (hwcost/schema.py before checkpoint
identity), on its own SQLAlchemy registry, so migration tests can build a real v1 store."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Index, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 1


class V1(SQLModel, registry=registry()):
    """Base of the frozen v1 tables (their own metadata, not the live schema's)."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Meta(V1, table=True):
    """Key/value facts about the store itself (``schema_version``)."""

    __tablename__ = "meta"
    key: str = Field(primary_key=True)
    value: str


class Device(V1, table=True):
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


class Subgraph(V1, table=True):
    """A structural piece of a model: identical blocks share one row (and one set of costs)."""

    __tablename__ = "subgraph"
    id: int | None = Field(default=None, primary_key=True)
    signature: str = Field(index=True, unique=True)
    kind: str  # e.g. "LlamaAttention", "LlamaMLP", "Linear"
    n_slots: int
    slots: str  # JSON list of {op, in_features, out_features, bias, macs_per_token, weight_params}
    extra: str = "{}"  # JSON of structure that is not a slot (head counts, norms, activation)
    created_at: datetime = Field(default_factory=utcnow)


class Model(V1, table=True):
    """A model, identified by the structure of its graph (not its weights)."""

    __tablename__ = "model"
    id: int | None = Field(default=None, primary_key=True)
    fingerprint: str = Field(index=True, unique=True)
    name: str
    n_subgraphs: int
    n_layers: int
    created_at: datetime = Field(default_factory=utcnow)


class ManifestEntry(V1, table=True):
    """One subgraph instance of a model, in execution order, with its layers' names per slot."""

    __tablename__ = "manifest_entry"
    __table_args__ = (UniqueConstraint("model_id", "position"),)
    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    position: int
    subgraph_id: int = Field(foreign_key="subgraph.id")
    layer_names: str  # JSON list, one module name per slot


class Campaign(V1, table=True):
    """A profiling campaign: a model on a device for a set of shapes."""

    __tablename__ = "campaign"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    model_id: int | None = Field(default=None, foreign_key="model.id")
    device_id: int = Field(foreign_key="device.id")
    shapes: str = "[]"  # JSON list of shape keys
    precisions: str = "[]"  # JSON list of precision names
    created_at: datetime = Field(default_factory=utcnow)


class CampaignTask(V1, table=True):
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
    state: str = "pending"  # pending | claimed | done | failed
    worker: str | None = None
    claimed_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


class Measurement(V1, table=True):
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


class ModelLatency(V1, table=True):
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


class Sensitivity(V1, table=True):
    """One layer's loss-MSE contribution s_l(p) at one precision, with its standard error."""

    __tablename__ = "sensitivity"
    __table_args__ = (
        UniqueConstraint("model_id", "calib_fingerprint", "layer", "precision", "method"),
    )
    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    calib_fingerprint: str
    layer: str
    precision: str
    loss_mse: float
    stderr: float
    method: str = "taylor"  # taylor | noise | direct | weight_only | fisher
    n_samples: int
    created_at: datetime = Field(default_factory=utcnow)


class Plan(V1, table=True):
    """A solved precision plan; ``body`` is the versioned plan JSON the exporters read."""

    __tablename__ = "plan"
    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    device_id: int = Field(foreign_key="device.id")
    shape: str
    objective: str
    max_loss_mse: float | None = None
    predicted_speedup: float | None = None
    predicted_loss_mse: float | None = None
    measured_share: float | None = None  # share of predicted gain resting on measured costs
    body: str  # JSON
    created_at: datetime = Field(default_factory=utcnow)


class Validation(V1, table=True):
    """A plan applied on a device: predicted against measured speedup and loss MSE."""

    __tablename__ = "validation"
    id: int | None = Field(default=None, primary_key=True)
    plan_id: int = Field(foreign_key="plan.id", index=True)
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


ALL_TABLES = [
    Meta, Device, Subgraph, Model, ManifestEntry, Campaign, CampaignTask, Measurement,
    ModelLatency, Sensitivity, Plan, Validation,
]
