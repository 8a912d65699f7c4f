"""What a store holds: devices, models, subgraphs and how much of each model is measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import text

if TYPE_CHECKING:
    from hwcost.store.sql import SqlStore


@dataclass(frozen=True)
class DeviceSummary:
    """One device and the size of its cost table."""

    fingerprint: str
    kind: str
    name: str
    source: str
    measurements: int
    subgraphs: int
    shapes: int


@dataclass(frozen=True)
class CheckpointSummary:
    """One checkpoint (weights digest) of an architecture and what is stored for it."""

    digest: str  # "unknown" for rows written before digests were recorded
    name: str
    tables: int  # sensitivity tables (distinct method, quantizer, calibration set)
    plans: int
    validations: int


@dataclass(frozen=True)
class ModelSummary:
    """One model architecture (manifest) and its checkpoints."""

    fingerprint: str
    name: str
    n_subgraphs: int  # subgraph instances in the manifest
    distinct: int  # distinct subgraph signatures among them
    n_layers: int
    checkpoints: list[CheckpointSummary] = field(default_factory=list)


@dataclass(frozen=True)
class Coverage:
    """How much of a model is measured on one device and shape."""

    model: str
    device: str
    shape: str
    measured: int  # distinct subgraphs of the model with at least one measurement
    distinct: int  # distinct subgraphs of the model
    measurements: int  # measurements of those subgraphs

    @property
    def share(self) -> float:
        return self.measured / self.distinct if self.distinct else 0.0


@dataclass(frozen=True)
class StoreSummary:
    """Everything ``hwcost db ls`` shows."""

    schema_version: int
    n_subgraphs: int
    n_measurements: int
    devices: list[DeviceSummary]
    models: list[ModelSummary]
    coverage: list[Coverage]

    def to_dict(self) -> dict:
        d = asdict(self)
        for c, row in zip(self.coverage, d["coverage"]):
            row["share"] = round(c.share, 4)
        return d


_DEVICES = """
SELECT d.fingerprint, d.kind, d.name, d.source, COALESCE(m.n, 0), COALESCE(m.sg, 0),
       COALESCE(m.shapes, 0)
FROM device d LEFT JOIN (
    SELECT device_id, COUNT(*) AS n, COUNT(DISTINCT subgraph_id) AS sg,
           COUNT(DISTINCT shape) AS shapes
    FROM measurement GROUP BY device_id) m ON m.device_id = d.id
ORDER BY d.id
"""
_MODELS = """
SELECT m.id, m.fingerprint, m.name, m.n_subgraphs, COUNT(DISTINCT e.subgraph_id), m.n_layers
FROM model m LEFT JOIN manifest_entry e ON e.model_id = m.id
GROUP BY m.id, m.fingerprint, m.name, m.n_subgraphs, m.n_layers ORDER BY m.id
"""
_CHECKPOINTS = """
SELECT model_id, digest, name FROM checkpoint ORDER BY id
"""
_TABLES = """
SELECT model_id, checkpoint, COUNT(DISTINCT method || ' ' || quantizer || ' ' || calib_fingerprint)
FROM sensitivity GROUP BY model_id, checkpoint
"""
_PLANS = """
SELECT model_id, checkpoint, COUNT(*) FROM plan GROUP BY model_id, checkpoint
"""
_VALIDATIONS = """
SELECT p.model_id, v.checkpoint, COUNT(*) FROM validation v JOIN plan p ON p.id = v.plan_id
GROUP BY p.model_id, v.checkpoint
"""
_COVERAGE = """
WITH parts AS (SELECT DISTINCT model_id, subgraph_id FROM manifest_entry),
     sizes AS (SELECT model_id, COUNT(*) AS distinct_n FROM parts GROUP BY model_id)
SELECT mo.fingerprint, d.fingerprint, x.shape, COUNT(DISTINCT x.subgraph_id), z.distinct_n,
       COUNT(*)
FROM parts p
JOIN measurement x ON x.subgraph_id = p.subgraph_id
JOIN model mo ON mo.id = p.model_id
JOIN device d ON d.id = x.device_id
JOIN sizes z ON z.model_id = p.model_id
GROUP BY mo.fingerprint, d.fingerprint, x.shape, z.distinct_n
ORDER BY mo.fingerprint, d.fingerprint, x.shape
"""


def summarize(store: SqlStore) -> StoreSummary:
    """Devices, models and per (model, device, shape) coverage, in three grouped queries."""
    with store.engine.connect() as c:
        devices = [DeviceSummary(*r) for r in c.execute(text(_DEVICES))]
        model_rows = c.execute(text(_MODELS)).all()
        checkpoints = _checkpoints(c)
        models = [ModelSummary(*r[1:], checkpoints=checkpoints.get(r[0], []))
                  for r in model_rows]
        coverage = [Coverage(*r) for r in c.execute(text(_COVERAGE))]
        n_sg = c.execute(text("SELECT COUNT(*) FROM subgraph")).scalar_one()
        n_m = c.execute(text("SELECT COUNT(*) FROM measurement")).scalar_one()
    return StoreSummary(store.schema_version(), n_sg, n_m, devices, models, coverage)


def _checkpoints(c) -> dict[int, list[CheckpointSummary]]:
    """model id -> its checkpoints: the recorded ones, then digests only rows name (such as
    ``unknown`` after a migration), each with its table, plan and validation counts."""
    names: dict[tuple[int, str], str] = {}
    for mid, digest, name in c.execute(text(_CHECKPOINTS)):
        names.setdefault((mid, digest), name)
    counts: dict[tuple[int, str], list[int]] = {}
    for i, sql in enumerate((_TABLES, _PLANS, _VALIDATIONS)):
        for mid, digest, n in c.execute(text(sql)):
            names.setdefault((mid, digest), "")
            counts.setdefault((mid, digest), [0, 0, 0])[i] = int(n)
    out: dict[int, list[CheckpointSummary]] = {}
    for (mid, digest), name in names.items():
        out.setdefault(mid, []).append(CheckpointSummary(digest, name,
                                                         *counts.get((mid, digest), [0, 0, 0])))
    return out
