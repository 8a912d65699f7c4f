"""The sensitivity table: s_l(p) with its standard error per (layer, precision), and its
round-trip through the store's ``Sensitivity`` rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hwcost.enums import SensitivityMethod
from hwcost.errors import SensitivityError
from hwcost.precision import Precision, parse_precision

METHODS = tuple(SensitivityMethod.values())


@dataclass(frozen=True)
class SensitivityRow:
    """One layer's loss-MSE contribution ``s_l(p) = mean_n d_{l,n}(p)^2`` at one precision."""

    layer: str
    precision: str
    loss_mse: float
    stderr: float
    n_samples: int


@dataclass
class SensitivityTable:
    """Per-layer, per-precision loss-MSE contributions of one model on one calibration set.

    The predicted loss MSE of a mixed configuration is the sum of its layers' rows
    (:meth:`predict`); layers left out of a configuration run in the reference precision.
    """

    rows: list[SensitivityRow]
    method: str = "taylor"
    calib_fingerprint: str = ""
    checkpoint: str = ""  # digest of the weights scored (profiles.checkpoint)
    quantizer: str = ""  # hwcost.quantizer.Quantizer.key of the emulation scored
    _index: dict[tuple[str, str], SensitivityRow] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown sensitivity method {self.method!r}; known: {', '.join(METHODS)}")
        self._index = {(r.layer, r.precision): r for r in self.rows}

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
        return cls([SensitivityRow(**r) for r in d["rows"]], d.get("method", "taylor"),
                   d.get("calib_fingerprint", ""), d.get("checkpoint", ""),
                   d.get("quantizer", ""))


def to_store_rows(table: SensitivityTable, model_id: int) -> list:
    """The table as ``hwcost.schema.Sensitivity`` rows for ``Store.add_sensitivities``."""
    from hwcost.schema import Sensitivity

    if not table.calib_fingerprint:
        raise SensitivityError("a sensitivity table needs its calibration fingerprint to be stored")
    if not table.checkpoint or not table.quantizer:
        raise SensitivityError("a sensitivity table needs its checkpoint digest and quantizer "
                               "key to be stored")
    return [Sensitivity(model_id=model_id, checkpoint=table.checkpoint,
                        quantizer=table.quantizer, calib_fingerprint=table.calib_fingerprint,
                        layer=r.layer, precision=r.precision, loss_mse=r.loss_mse,
                        stderr=r.stderr, method=table.method, n_samples=r.n_samples)
            for r in table.rows]


def from_store_rows(rows: Sequence) -> SensitivityTable:
    """Inverse of :func:`to_store_rows` (rows of one model, method and calibration set)."""
    if not rows:
        raise SensitivityError("no sensitivity rows")
    keys = {(r.method, r.calib_fingerprint, r.checkpoint, r.quantizer) for r in rows}
    if len(keys) > 1:
        raise SensitivityError("sensitivity rows mix methods, calibration sets, checkpoints or "
                               "quantizers")
    method, calib, checkpoint, quantizer = keys.pop()
    return SensitivityTable([SensitivityRow(r.layer, r.precision, float(r.loss_mse), float(r.stderr),
                                            int(r.n_samples)) for r in rows],
                            method, calib, checkpoint, quantizer)


def save_table(store, model_id: int, table: SensitivityTable) -> int:
    """Write a table to the store (replacing rows of the same key); returns rows written."""
    return store.add_sensitivities(to_store_rows(table, model_id))


def load_table(store, model_id: int, method: str = "taylor",
               calib_fingerprint: str | None = None, *, checkpoint: str | None = None,
               quantizer: str | None = None) -> SensitivityTable:
    """Read a stored table of one checkpoint and quantizer (the latest table matching what is
    given when some are None, see ``Store.sensitivities``)."""
    rows = store.sensitivities(model_id, method=method, calib_fingerprint=calib_fingerprint,
                               checkpoint=checkpoint, quantizer=quantizer)
    if not rows:
        raise SensitivityError(
            f"no {method} sensitivities stored for model id {model_id}"
            + (f", checkpoint {checkpoint[:12]}" if checkpoint else "")
            + (f", quantizer {quantizer}" if quantizer else "")
            + (f" and calibration {calib_fingerprint[:12]}" if calib_fingerprint else ""))
    return from_store_rows(rows)
