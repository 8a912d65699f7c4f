"""Check predicted loss MSE (the sum of a table's rows) against the measured loss MSE of
random mixed configurations (emulated quantization, forward passes only)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hwcost.sensitivity.loss import LossFn, per_sample_losses
from hwcost.sensitivity.records import SensitivityTable
from hwcost.sensitivity.reference import measured_loss_mse
from torch import nn

from hwcost.errors import SensitivityError
from hwcost.precision import Precision, parse_precisions


@dataclass(frozen=True)
class ValidationPoint:
    """One configuration: the precision of each quantized layer (others stay in the reference)."""

    config: dict[str, str]
    predicted: float
    measured: float


@dataclass
class ValidationResult:
    """Predicted against measured loss MSE over a set of configurations."""

    points: list[ValidationPoint]
    method: str = "taylor"
    extra_predictions: dict[str, list[float]] = field(default_factory=dict)

    @property
    def predicted(self) -> np.ndarray:
        return np.array([p.predicted for p in self.points])

    @property
    def measured(self) -> np.ndarray:
        return np.array([p.measured for p in self.points])

    def summary(self) -> dict[str, float]:
        """Spearman and Pearson correlation, and the ratio predicted/measured (median, IQR)."""
        return correlation_summary(self.predicted, self.measured)

    def to_dict(self) -> dict:
        return {"method": self.method, **self.summary(),
                "points": [{"config": p.config, "predicted": p.predicted, "measured": p.measured}
                           for p in self.points],
                "baselines": {k: correlation_summary(np.array(v), self.measured)
                              for k, v in self.extra_predictions.items()}}


def correlation_summary(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """Spearman, Pearson (linear and of logs) and predicted/measured ratios."""
    from scipy.stats import pearsonr, spearmanr

    if len(predicted) < 3:
        raise SensitivityError("need at least 3 configurations to correlate")
    ok = (measured > 0) & (predicted > 0)
    ratio = predicted[ok] / measured[ok] if ok.any() else np.array([np.nan])
    return {
        "n_configs": int(len(predicted)),
        "spearman": float(spearmanr(predicted, measured).statistic),
        "pearson": float(pearsonr(predicted, measured).statistic),
        "pearson_log": float(pearsonr(np.log(predicted[ok]), np.log(measured[ok])).statistic)
        if ok.sum() >= 3 else float("nan"),
        "ratio_median": float(np.median(ratio)),
        "ratio_p25": float(np.percentile(ratio, 25)),
        "ratio_p75": float(np.percentile(ratio, 75)),
    }


def random_configs(layers: Sequence[str], precisions: Sequence[Precision | str], n: int,
                   seed: int = 0) -> list[dict[str, str]]:
    """``n`` random mixed configurations spanning a range of loss MSE.

    Each configuration draws a share ``f`` of layers to quantize (uniform in (0, 1]) and, per
    quantized layer, a precision from ``precisions`` (fp32 excluded: it is the reference), so
    the set runs from a few lightly quantized layers to nearly everything in the lowest format.
    """
    precs = [p.value for p in parse_precisions(precisions) if p is not Precision.FP32]
    if not precs:
        raise SensitivityError("no low precision to draw configurations from")
    if not layers:
        raise SensitivityError("no layers to draw configurations over")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        share = rng.uniform(0.05, 1.0)
        # a per-config preference among formats widens the spread of loss MSE
        weights = [rng.random() + 0.05 for _ in precs]
        cfg = {layer: rng.choices(precs, weights)[0] for layer in layers if rng.random() < share}
        if not cfg:
            layer = rng.choice(list(layers))
            cfg = {layer: rng.choices(precs, weights)[0]}
        out.append(cfg)
    return out


def validate(model: nn.Module, batches: Iterable[Any], table: SensitivityTable,
             configs: Sequence[Mapping[str, str]], loss_fn: LossFn | None = None,
             baselines: Mapping[str, SensitivityTable] | None = None,
             progress: Callable[[int, int], None] | None = None) -> ValidationResult:
    """Measure each configuration's loss MSE and set it beside ``table``'s predicted sum
    (and the sums of any ``baselines`` tables)."""
    batches = list(batches)
    ref = per_sample_losses(model, batches, loss_fn).numpy()
    points = []
    for i, cfg in enumerate(configs):
        measured = measured_loss_mse(model, cfg, batches, loss_fn, reference=ref)
        points.append(ValidationPoint(dict(cfg), table.predict(cfg), measured))
        if progress:
            progress(i + 1, len(configs))
    extra = {name: [t.predict(p.config) for p in points] for name, t in (baselines or {}).items()}
    return ValidationResult(points, table.method, extra)


def scatter_plot(result: ValidationResult, path: str | Path, title: str = "") -> Path:
    """Save predicted against measured loss MSE (log-log, with y = x) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.summary()
    pred, meas = result.predicted, result.measured
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(meas, pred, s=18, alpha=0.8,
               label=f"{result.method}: Spearman {s['spearman']:.3f}, Pearson {s['pearson']:.3f}")
    pos = np.concatenate([pred[pred > 0], meas[meas > 0]])
    if len(pos):
        lo, hi = pos.min() / 1.5, pos.max() * 1.5
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = measured")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("measured loss MSE (emulated, forward only)")
    ax.set_ylabel("predicted loss MSE (sum of per-layer s_l(p))")
    ax.set_title(title or f"{len(pred)} random mixed-precision configurations")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
