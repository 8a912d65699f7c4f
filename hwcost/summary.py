"""What a store holds: devices, models, subgraphs and how much of each model is measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import text


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
class ModelSummary:
    """One model manifest."""

    fingerprint: str
    name: str
    n_subgraphs: int  # subgraph instances in the manifest
    distinct: int  # distinct subgraph signatures among them
    n_layers: int


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
SELECT m.fingerprint, m.name, m.n_subgraphs, COUNT(DISTINCT e.subgraph_id), m.n_layers
FROM model m LEFT JOIN manifest_entry e ON e.model_id = m.id
GROUP BY m.id, m.fingerprint, m.name, m.n_subgraphs, m.n_layers ORDER BY m.id
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


def summarize(store) -> StoreSummary:
    """Devices, models and per (model, device, shape) coverage, in three grouped queries."""
    with store.engine.connect() as c:
        devices = [DeviceSummary(*r) for r in c.execute(text(_DEVICES))]
        models = [ModelSummary(*r) for r in c.execute(text(_MODELS))]
        coverage = [Coverage(*r) for r in c.execute(text(_COVERAGE))]
        n_sg = c.execute(text("SELECT COUNT(*) FROM subgraph")).scalar_one()
        n_m = c.execute(text("SELECT COUNT(*) FROM measurement")).scalar_one()
    return StoreSummary(store.schema_version(), n_sg, n_m, devices, models, coverage)
