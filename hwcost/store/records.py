"""Frozen records that cross the store's boundary: what the partitioner, the harness and the
planner hand to a store and get back from it. No SQL here."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from hwcost import __version__
from hwcost.bounds import LATENCY_MAX_US, float_problem, int_problem, ts_problem
from hwcost.enums import SensitivityMethod
from hwcost.errors import InvalidMeasurement, SensitivityError
from hwcost.precision import Precision, config_key, parse_config, parse_precision
from hwcost.shape import parse_shape
from hwcost.store.plan_document import PlanDocument

__all__ = ["CostRow", "DeviceRef", "Manifest", "ManifestItem", "MeasurementIn", "ModelRef",
           "ModelLatencyRecord", "PlanRecord", "SensitivityRow", "SensitivityTable", "SlotInfo",
           "SubgraphInfo", "TimingConditions", "UNKNOWN", "ValidationRecord", "host_name",
           "timing_problem"]

UNKNOWN = "unknown"
"""Checkpoint digest / quantizer key of rows written before they were recorded (schema 1):
never equal to a real digest or key, so such rows are never reused for a new checkpoint."""


def host_name() -> str:
    """The host recorded with each measurement: ``HWCOST_HOST`` (for containers whose
    hostnames mean nothing to a fleet's operators), else the machine's hostname."""
    return os.environ.get("HWCOST_HOST") or socket.gethostname()



def timing_problem(t) -> str | None:
    """What is out of its stored range in a timing (a measurement or a whole-model latency):
    median and spread in microseconds, sample count, time taken; None when all is in range."""
    return (float_problem("median_us", t.median_us, LATENCY_MAX_US)
            or float_problem("spread_us", t.spread_us, LATENCY_MAX_US)
            or int_problem("n_samples", t.n_samples, 1)
            or ts_problem("measured_at", t.measured_at))


@dataclass(frozen=True)
class SlotInfo:
    """One quantizable layer position inside a subgraph (structure only, no names)."""

    op: str
    in_features: int
    out_features: int
    bias: bool = False
    experts: int = 0
    """MoE experts of a block as one slot: how many (0 for a plain linear layer), ..."""
    active: int = 0
    """... how many each token is routed to (top-k), ..."""
    inner: int = 0
    """... and their intermediate width (gate_up: hidden -> 2 inner, down: inner -> hidden)."""

    @property
    def weight_params(self) -> int:
        """Parameters stored: every expert of an MoE slot (all are in memory)."""
        if self.experts:
            return self.experts * 3 * self.in_features * self.inner
        return self.in_features * self.out_features

    @property
    def macs_per_token(self) -> int:
        """Multiply-accumulates per token: the active experts only for an MoE slot."""
        if self.experts:
            return self.active * 3 * self.in_features * self.inner
        return self.in_features * self.out_features

    def to_dict(self) -> dict:
        d = {
            "op": self.op, "in_features": self.in_features, "out_features": self.out_features,
            "bias": self.bias, "macs_per_token": self.macs_per_token,
            "weight_params": self.weight_params,
        }
        if self.experts:  # only then: plain layers keep their signatures
            d.update(experts=self.experts, active=self.active, inner=self.inner)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SlotInfo:
        return cls(d["op"], int(d["in_features"]), int(d["out_features"]), bool(d["bias"]),
                   int(d.get("experts", 0)), int(d.get("active", 0)), int(d.get("inner", 0)))


@dataclass(frozen=True)
class SubgraphInfo:
    """A subgraph's signature and structure, as the partitioner produces it."""

    signature: str
    kind: str
    slots: tuple[SlotInfo, ...]
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ManifestItem:
    """One subgraph instance in a model, with the module name of each slot."""

    position: int
    signature: str
    layer_names: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class TimingConditions:
    """How a timing was taken (see ``hwcost.store.schema.Measurement``), shared by the
    measurements and whole-model latencies a store keeps: keyword fields after a record's own."""

    clock: str = "wall"
    quick: bool = False
    stable: bool = True
    load1: float | None = None
    cpu_mhz: float | None = None
    threads: int | None = None

    @property
    def good(self) -> bool:
        """A full, stable timing: what plans rest on by default."""
        return self.stable and not self.quick


@dataclass(frozen=True)
class MeasurementIn(TimingConditions):
    """A measurement to write. Latencies in microseconds."""

    device: str  # fingerprint
    signature: str
    shape: str
    config: tuple[str, ...] | str
    median_us: float
    spread_us: float
    n_samples: int
    host: str = field(default_factory=lambda: host_name())
    campaign: str | None = None
    tool_version: str = __version__
    measured_at: datetime | None = None
    baseline_us: float | None = None
    drift: float | None = None

    def validated(self) -> MeasurementIn:
        for name in ("median_us", "spread_us"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v) or v < 0:
                raise InvalidMeasurement(
                    f"{name}={v!r} for {self.signature[:12]} {self.shape} [{self.config}] "
                    "is not a finite non-negative latency")
        if self.median_us == 0:
            raise InvalidMeasurement(f"median_us=0 for {self.signature[:12]}: a run cannot be free")
        if self.n_samples < 1:
            raise InvalidMeasurement(f"n_samples={self.n_samples} must be >= 1")
        problem = timing_problem(self)
        if problem:
            raise InvalidMeasurement(f"{problem} for {self.signature[:12]} {self.shape}")
        if self.baseline_us is not None and not (math.isfinite(self.baseline_us)
                                                 and self.baseline_us > 0):
            raise InvalidMeasurement(f"baseline_us={self.baseline_us!r} for "
                                     f"{self.signature[:12]} is not a finite positive latency")
        parse_shape(self.shape)
        cfg = self.config if isinstance(self.config, str) else config_key(self.config)
        parse_config(cfg)
        return self


@dataclass(frozen=True)
class CostRow:
    """A measured cost of one subgraph instance of a model."""

    position: int
    signature: str
    config: str
    median_us: float
    spread_us: float
    n_samples: int
    baseline_us: float | None = None  # the baseline config timed in the same group
    good: bool = True  # full and stable


@dataclass(frozen=True)
class SensitivityRow:
    """One layer's loss-MSE contribution ``s_l(p) = mean_n d_{l,n}(p)^2`` at one precision."""

    layer: str
    precision: str
    loss_mse: float
    stderr: float
    n_samples: int


@dataclass(frozen=True)
class SensitivityTable:
    """Per-layer, per-precision loss-MSE contributions of one model on one calibration set,
    as ``hwcost.sensitivity`` computes it and the store keeps it (``Store.sensitivity_table``
    reads one back; ``Store.put_sensitivity_table`` writes one).

    Keyed by its natural keys: the model (``model``, filled in when read from a store), the
    method, the calibration set's fingerprint, the checkpoint (weights digest) and the
    quantizer key. The predicted loss MSE of a mixed configuration is the sum of its layers'
    rows (:meth:`predict`); layers left out of a configuration run in the reference precision.
    """

    rows: tuple[SensitivityRow, ...]
    method: str = "taylor"
    calib_fingerprint: str = ""
    checkpoint: str = ""  # digest of the weights scored (profiles.checkpoint)
    quantizer: str = ""  # hwcost.quantizer.Quantizer.key of the emulation scored
    model: ModelRef | None = field(default=None, compare=False)
    _index: dict[tuple[str, str], SensitivityRow] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        methods = SensitivityMethod.values()
        if self.method not in methods:
            raise ValueError(f"unknown sensitivity method {self.method!r}; known: "
                             f"{', '.join(methods)}")
        object.__setattr__(self, "rows", tuple(self.rows))  # a list given is kept as a tuple
        object.__setattr__(self, "_index", {(r.layer, r.precision): r for r in self.rows})

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(r.layer for r in self.rows))

    @property
    def precisions(self) -> list[str]:
        return list(dict.fromkeys(r.precision for r in self.rows))

    @property
    def n_samples(self) -> int:
        return max((r.n_samples for r in self.rows), default=0)

    def get(self, layer: str, precision: Precision | str) -> SensitivityRow:
        p = parse_precision(precision).value
        try:
            return self._index[(layer, p)]
        except KeyError:
            raise SensitivityError(f"no sensitivity for layer {layer!r} at {p}") from None

    def loss_mse(self, layer: str, precision: Precision | str) -> float:
        """``s_l(p)``; the fp32 reference contributes 0 even when not tabulated."""
        p = parse_precision(precision)
        if p is Precision.FP32 and (layer, p.value) not in self._index:
            return 0.0
        return self.get(layer, p).loss_mse

    def predict(self, config: Mapping[str, Precision | str]) -> float:
        """Predicted loss MSE of a configuration ``{layer: precision}``: ``sum_l s_l(p_l)``."""
        return float(sum(self.loss_mse(layer, p) for layer, p in config.items()))

    def to_dict(self) -> dict:
        return {"method": self.method, "calib_fingerprint": self.calib_fingerprint,
                "checkpoint": self.checkpoint, "quantizer": self.quantizer,
                "rows": [r.__dict__ for r in self.rows]}

    @classmethod
    def from_dict(cls, d: Mapping) -> SensitivityTable:
        return cls(tuple(SensitivityRow(**r) for r in d["rows"]), d.get("method", "taylor"),
                   d.get("calib_fingerprint", ""), d.get("checkpoint", ""),
                   d.get("quantizer", ""))




@dataclass(frozen=True)
class DeviceRef:
    """A stored device, resolved once from what a user typed (a fingerprint prefix, a product
    name, a kind, a catalog name) and passed along from then on: every store method that takes
    a device finds it again by its exact fingerprint, never by re-resolving the user's text."""

    fingerprint: str
    name: str
    kind: str
    threads: int | None = None
    source: str = "local"
    peaks: dict = field(default_factory=dict, compare=False)
    """Calibrated or catalog peaks as stored (``hwcost.roofline.Peaks.from_json`` reads them)."""
    flags: tuple[str, ...] = field(default=(), compare=False)
    """ISA and feature flags that decide which kernels exist (part of the fingerprint)."""
    software: dict = field(default_factory=dict, compare=False)
    """{package: version} of the stack that changes timings; ``deployment`` says eager or
    compiled (part of the fingerprint; a catalog device names its product under ``catalog``)."""


@dataclass(frozen=True)
class ModelRef:
    """A stored model (its architecture), resolved once from a fingerprint prefix or a name."""

    fingerprint: str
    name: str
    n_subgraphs: int
    n_layers: int


@dataclass(frozen=True)
class Manifest:
    """A model's subgraph instances in order, each with its structure: read once per plan and
    handed to everything that walks the model (the cost table, the problem)."""

    model: ModelRef
    items: tuple[tuple[ManifestItem, SubgraphInfo], ...]

    @property
    def layer_names(self) -> list[str]:
        """Every quantizable layer's module name, in model order."""
        return [n for item, _ in self.items for n in item.layer_names]

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class ModelLatencyRecord(TimingConditions):
    """A whole model's end-to-end latency in one configuration (the baseline ``all:<p>`` or a
    plan's layer map) on a device and shape, with how it was taken. Latencies in us."""

    model: str  # model fingerprint
    device: str  # device fingerprint
    shape: str  # a shape key, or a workload key (``workload:...``)
    config_hash: str  # "all:<precision>" for uniform configs, else a hash of the layer map
    median_us: float
    spread_us: float
    n_samples: int
    config: str = "{}"  # JSON {layer: precision} (empty for uniform configs)
    measured_at: datetime | None = None
    host: str = ""
    tool_version: str = ""


@dataclass(frozen=True)
class ValidationRecord:
    """A plan applied on a device: measured against predicted speedup and loss MSE. ``plan_id``
    is the plan's number in its store (``hwcost apply 12``); ``id`` the validation's, once
    stored."""

    plan_id: int
    device: str  # fingerprint of the device measured on
    baseline_us: float
    plan_us: float
    measured_speedup: float
    checkpoint: str = "unknown"  # digest of the weights the loss MSE was measured with
    predicted_speedup: float | None = None
    measured_loss_mse: float | None = None
    predicted_loss_mse: float | None = None
    n_eval_samples: int | None = None
    host: str = ""
    quick: bool = False
    stable: bool = True
    id: int | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class PlanRecord:
    """A plan as the store keeps it: the plan document (:class:`PlanDocument`, built by
    ``planner.export.plan_document``) and the keys and predictions it is found and listed by,
    all taken from the document by :meth:`of_document` (the one place a plan's stored columns
    are built)."""

    model: str  # model fingerprint
    device: str  # device fingerprint
    shape: str
    objective: str
    document: PlanDocument = field(compare=False)
    checkpoint: str = "unknown"
    quantizer: str = "unknown"
    max_loss_mse: float | None = None
    predicted_speedup: float | None = None
    predicted_loss_mse: float | None = None
    measured_share: float | None = None
    id: int | None = None  # the plan's number in its store (``hwcost apply 12``) once stored
    created_at: datetime | None = None

    @property
    def layers(self) -> dict[str, str]:
        """Layer name -> precision."""
        return dict(self.document.layers)

    @classmethod
    def of_document(cls, document: PlanDocument) -> PlanRecord:
        """The record of a plan document."""
        pred = document.predicted
        return cls(model=document.model.fingerprint, device=document.device.fingerprint,
                   shape=document.shape, objective=document.objective, document=document,
                   checkpoint=str(document.sensitivity_checkpoint or "unknown"),
                   quantizer=str(document.sensitivity_quantizer or "unknown"),
                   max_loss_mse=document.max_loss_mse,
                   predicted_speedup=pred.speedup,
                   predicted_loss_mse=pred.loss_mse,
                   measured_share=pred.measured_share)
