"""Ground truth and baselines the Taylor table is compared with, on the same model and data.

- ``direct``: the measured loss MSE ``E_n[(L_n(q) - L_n(hp))^2]`` with only layer l quantized
  (emulated), one forward run per layer and precision, as CalibTIP does. Exact but slow.
- ``weight_only``: the squared weight error ``||Q_p(W) - W||^2``, a data-free proxy.
- ``fisher``: ``mean_n sum g^2 (Y_q - Y)^2``, the diagonal-Fisher score of NVIDIA ModelOpt's
  AutoQuantize, from the same single pass as the Taylor table.

Also :func:`measured_loss_mse` for any mixed configuration (forward only), used to validate
predicted sums and plans.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from hwcost.profiles.precisions import emulation
from hwcost.sensitivity.layers import emulated, quantizable_layers, weight_matrix
from hwcost.sensitivity.loss import LossFn, per_sample_losses
from hwcost.sensitivity.records import SensitivityRow, SensitivityTable
from hwcost.sensitivity.taylor import DEFAULT_PRECISIONS, per_sample_terms, table_from_terms
from torch import nn

from hwcost.errors import SensitivityError
from hwcost.precision import Precision, parse_precisions

__all__ = ["direct_table", "fisher_table", "measured_loss_mse", "per_sample_losses",
           "weight_only_table"]


def _mse_row(layer: str, prec: str, diff: np.ndarray) -> SensitivityRow:
    sq = np.square(diff)
    n = len(sq)
    stderr = float(sq.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return SensitivityRow(layer, prec, float(sq.mean()), stderr, n)


def measured_loss_mse(model: nn.Module, layer_precisions: Mapping[str, Precision | str],
                      batches: Iterable[Any], loss_fn: LossFn | None = None,
                      reference: np.ndarray | torch.Tensor | None = None) -> float:
    """Measured loss MSE ``E_n[(L_n(q) - L_n(hp))^2]`` of a mixed configuration, with the
    named layers quantized by the registry's emulation (forward passes only).

    ``reference`` (per-sample losses of the unquantized model) saves one pass when several
    configurations are measured on the same data.
    """
    batches = list(batches)
    ref = _as_array(reference) if reference is not None else \
        per_sample_losses(model, batches, loss_fn).numpy()
    with emulated(model, layer_precisions):
        q = per_sample_losses(model, batches, loss_fn).numpy()
    if q.shape != ref.shape:
        raise SensitivityError(f"reference losses have {ref.shape[0]} samples, the data {q.shape[0]}")
    return float(np.mean(np.square(q - ref)))


def _as_array(t: np.ndarray | torch.Tensor) -> np.ndarray:
    return t.double().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float64)


def direct_table(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn | None = None,
                 precisions: Sequence[Precision | str] = DEFAULT_PRECISIONS,
                 layers: str | Sequence[str] = "auto", calib_fingerprint: str = "",
                 progress: Callable[[int, int], None] | None = None) -> SensitivityTable:
    """Measured loss MSE with only layer l quantized, for every layer and precision: one
    forward run over the calibration data per (layer, precision)."""
    batches = list(batches)
    names = list(quantizable_layers(model, layers))
    precs = [p.value for p in parse_precisions(precisions)]
    ref = per_sample_losses(model, batches, loss_fn).numpy()
    rows = []
    total, done = len(names) * len(precs), 0
    for name in names:
        for prec in precs:
            with emulated(model, {name: prec}):
                q = per_sample_losses(model, batches, loss_fn).numpy()
            rows.append(_mse_row(name, prec, q - ref))
            done += 1
            if progress:
                progress(done, total)
    return SensitivityTable(rows, "direct", calib_fingerprint)


def weight_only_table(model: nn.Module, precisions: Sequence[Precision | str] = DEFAULT_PRECISIONS,
                      layers: str | Sequence[str] = "auto", calib_fingerprint: str = ""
                      ) -> SensitivityTable:
    """Data-free proxy: the squared weight error ``||Q_p(W) - W||_F^2`` of each layer.

    Its unit is not loss MSE; only its ranking is comparable (no stderr, no samples).
    """
    rows = []
    with torch.no_grad():
        for name, module in quantizable_layers(model, layers).items():
            w = weight_matrix(module).detach()
            for p in parse_precisions(precisions):
                err = float((emulation(p).weight(w) - w).double().square().sum())
                rows.append(SensitivityRow(name, p.value, err, 0.0, 0))
    return SensitivityTable(rows, "weight_only", calib_fingerprint)


def fisher_table(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn | None = None,
                 precisions: Sequence[Precision | str] = DEFAULT_PRECISIONS,
                 layers: str | Sequence[str] = "auto", calib_fingerprint: str = ""
                 ) -> SensitivityTable:
    """ModelOpt AutoQuantize-style ``mean_n sum g^2 (Y_q - Y)^2`` from one forward+backward."""
    terms = per_sample_terms(model, batches, loss_fn, precisions, layers, "fisher")
    return table_from_terms(terms, "fisher", calib_fingerprint, squared=False)

