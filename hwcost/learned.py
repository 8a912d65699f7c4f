"""Learned latency model: a physically structured model fitted to one device's measurements.

A subgraph's latency is modelled as a non-negative sum of costs the hardware actually pays:
``latency = sum_k c_k * x_k(query)`` with every ``c_k >= 0``, over columns (:data:`COLUMNS`)
that each grow with one physical quantity of the (subgraph, shape, config):

- the roofline's terms at full peak (:func:`hwcost.roofline.terms`: per precision the slots'
  max(compute, memory) time, the casts into and out of them, their weights touched at carrier
  width, the kernel launches; boundary traffic, elementwise traffic, the attention core);
- per precision ``P`` the slots' FLOPs, weight bytes, activations read and written, and slot
  count (a per-kernel fixed cost), each on its own coefficient, so the fit finds what this
  device pays per FLOP, per weight byte, per activation and per call in each format;
- precision boundaries (count and activations crossing them), the attention core's FLOPs and
  KV bytes, the hidden activations (norms, residual adds) and one fixed cost per subgraph.

Fitted by non-negative least squares on relative error (every measurement counts the same),
Huber-reweighted so that a few disturbed timings cannot drag it (deterministic: no randomness).
Being a sum of physical costs, it carries over to shapes and widths it never saw: a held-out
shape's or subgraph's whole level follows from its FLOPs, bytes and kernel counts, not only
its configs' ratios. On ``bench/fallbacks.py``'s held-out units this structured fit beat the
former model (the fitted roofline times a gradient-boosted tree and ridge residual in log
space) on all three stored campaigns, and every residual learner tried on top of it (ridge,
Huber, gradient-boosted and histogram trees) made held-out units worse: what the structure
leaves is the level noise of each unit's timing, which does not repeat between campaigns.

The fit is data, never pickled: :meth:`LatencyModel.to_dict` writes the column names and
coefficients (and the fitted roofline's factors) as JSON, :meth:`LatencyModel.from_dict` reads
them back. ``hwcost.costs`` keeps that JSON in the store (table ``learned_fit``), keyed by the
device and a hash of the measurements it was fitted on, so it is fitted once per device and
store state, not on every query. Grouped cross-validation (a group is one subgraph at one
shape, so whole held-out units are predicted) gives the error reported with every estimate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import nnls

from hwcost.catalog import Peaks
from hwcost.errors import NoEstimate
from hwcost.precision import Precision
from hwcost.roofline import PRECISIONS, TERMS, Query, RooflineModel, attention_work, terms

_FLOOR = 1e-3  # microseconds: a prediction is never zero or negative
FORMAT_VERSION = 4
"""Version of :meth:`LatencyModel.to_dict`'s layout and of the columns: bump it when either
changes, so fits cached in a store are refitted rather than misread."""

_PER_PRECISION = ("flops", "weight_bytes", "activations", "slots")
COLUMNS: tuple[str, ...] = (
    *(f"roofline_{t}" for t in TERMS),
    *(f"{k}_{p.value}" for p in PRECISIONS for k in _PER_PRECISION),
    "boundaries", "boundary_activations", "attention_flops", "attention_kv_bytes",
    "hidden_activations", "subgraph")
"""Columns of :func:`structure`: ``roofline_*`` the roofline's terms (microseconds at peak,
or kernel counts); ``flops_P`` (MFLOP), ``weight_bytes_P`` (MB at P's width),
``activations_P`` (million elements in and out) and ``slots_P`` (count) of the slots in
precision P; then boundaries between neighbouring slots of different precisions and the
activations crossing them, the attention core's MFLOP and KV MB, the hidden activations
(million elements; norms and residual adds) and a constant per subgraph call."""
_COL = {name: i for i, name in enumerate(COLUMNS)}


def structure(queries: Sequence[Query], t: np.ndarray) -> np.ndarray:
    """The non-negative columns :data:`COLUMNS` of each query, ``t`` its roofline terms."""
    out = np.zeros((len(queries), len(COLUMNS)))
    out[:, :len(TERMS)] = t
    for r, q in enumerate(queries):
        row = out[r]
        m = q.shape.tokens
        prev: Precision | None = None
        for slot, p in zip(q.subgraph.slots, q.config):
            v = p.value
            row[_COL[f"flops_{v}"]] += 2.0 * m * slot.in_features * slot.out_features / 1e6
            row[_COL[f"weight_bytes_{v}"]] += slot.weight_params * p.bytes / 1e6
            row[_COL[f"activations_{v}"]] += m * (slot.in_features + slot.out_features) / 1e6
            row[_COL[f"slots_{v}"]] += 1
            if prev is not None and p != prev:
                row[_COL["boundaries"]] += 1
                row[_COL["boundary_activations"]] += m * slot.in_features / 1e6
            prev = p
        work = attention_work(q)
        if work:
            row[_COL["attention_flops"]] = work[0] / 1e6
            row[_COL["attention_kv_bytes"]] = work[1] / 1e6
        if q.subgraph.slots:
            row[_COL["hidden_activations"]] = m * q.subgraph.slots[0].in_features / 1e6
        row[_COL["subgraph"]] = 1.0
    return out


def fit_structure(x: np.ndarray, y: np.ndarray, huber_iters: int = 5) -> np.ndarray:
    """Non-negative coefficients minimising the relative error of ``x @ coef`` against ``y``,
    Huber-reweighted ``huber_iters`` times (a disturbed timing weighs less, never nothing)."""
    a = x / y[:, None]  # relative error: every measurement counts the same
    scale = np.sqrt((a ** 2).mean(axis=0))
    used = scale > 0  # a column the measurements never exercise keeps a zero coefficient
    a = a[:, used] / scale[used]
    w = np.ones(len(y))
    for _ in range(huber_iters + 1):
        c, _ = nnls(a * w[:, None], w, maxiter=100 * a.shape[1])
        r = np.abs(a @ c - 1.0)
        delta = max(0.05, 1.5 * float(np.median(r)))
        w = np.sqrt(np.where(r <= delta, 1.0, delta / np.maximum(r, 1e-12)))
    coef = np.zeros(x.shape[1])
    coef[used] = c / scale[used]
    return coef


def _group_folds(groups: Sequence[str], n_splits: int) -> list[np.ndarray]:
    """Deterministic grouped folds: sorted groups dealt round-robin."""
    uniq = sorted(set(groups))
    fold_of = {g: i % n_splits for i, g in enumerate(uniq)}
    f = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(f == k) for k in range(n_splits)]


class LatencyModel:
    """``LatencyModel(peaks, carrier).fit(queries, latency_us).predict(queries)``.

    After ``fit``: ``coef_`` (one non-negative coefficient per column of :data:`COLUMNS`),
    ``cv_mape_`` (median absolute percentage error of out-of-fold predictions, a fraction),
    ``cv_p68_`` (68th percentile of the same errors, used as the estimate's uncertainty),
    ``roofline_cv_mape_`` (the fitted roofline's error on the same folds, so callers can
    choose the better source honestly), ``roofline_`` (the fitted roofline, fitted on all).
    ``n_splits=0`` skips the cross-validation (the ``cv_*`` attributes are then None).
    The fit draws nothing random: the same measurements give the same model.
    """

    def __init__(self, peaks: Peaks, carrier: Precision, n_splits: int = 5,
                 huber_iters: int = 5):
        self.peaks = peaks
        self.carrier = carrier
        self.n_splits = n_splits
        self.huber_iters = huber_iters

    def _fit_once(self, t: np.ndarray, x: np.ndarray, y: np.ndarray
                  ) -> tuple[RooflineModel, np.ndarray]:
        return RooflineModel(self.peaks).fit(t, y), fit_structure(x, y, self.huber_iters)

    @staticmethod
    def _predict_with(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ coef, _FLOOR)

    def fit(self, queries: Sequence[Query], latency_us: Sequence[float]) -> LatencyModel:
        """Train on measured latencies; cross-validate over (subgraph, shape) groups first."""
        y = np.asarray(latency_us, dtype=float)
        if len(y) != len(queries) or len(y) == 0:
            raise NoEstimate("a learned latency model needs measurements to train on")
        if not np.isfinite(y).all() or (y <= 0).any():
            raise NoEstimate("a learned latency model needs positive, finite latencies")
        groups = [f"{q.subgraph.signature}|{q.shape.key}" for q in queries]
        n_groups = len(set(groups))
        if n_groups < 2:
            raise NoEstimate("a learned latency model needs measurements of at least two "
                             "(subgraph, shape) pairs")
        seen = {p for q in queries for p in q.config}
        self.precisions_ = tuple(p for p in PRECISIONS if p in seen)
        t = terms(queries, self.peaks, self.carrier)
        x = structure(queries, t)
        self.cv_errors_ = self.cv_mape_ = self.cv_p68_ = None
        self.roofline_cv_mape_ = self.roofline_cv_p68_ = None
        if self.n_splits >= 2:
            oof = np.empty_like(y)
            oof_roof = np.empty_like(y)
            for test in _group_folds(groups, min(self.n_splits, n_groups)):
                train = np.setdiff1d(np.arange(len(y)), test)
                roof, coef = self._fit_once(t[train], x[train], y[train])
                oof[test] = self._predict_with(coef, x[test])
                oof_roof[test] = roof.predict(t[test])
            err = np.abs(oof - y) / y
            err_roof = np.abs(oof_roof - y) / y
            self.cv_errors_ = err
            self.cv_mape_ = float(np.median(err))
            self.cv_p68_ = float(np.quantile(err, 0.68))
            self.roofline_cv_mape_ = float(np.median(err_roof))
            self.roofline_cv_p68_ = float(np.quantile(err_roof, 0.68))
        self.roofline_, self.coef_ = self._fit_once(t, x, y)
        self.n_train_ = len(y)
        return self

    # -- as data (never pickled)
    def to_dict(self) -> dict:
        """The fitted model as JSON-serialisable data (see :meth:`from_dict`)."""
        if not hasattr(self, "coef_"):
            raise NoEstimate("LatencyModel.to_dict called before fit")
        return {
            "format": FORMAT_VERSION, "carrier": self.carrier.value,
            "settings": {"n_splits": self.n_splits, "huber_iters": self.huber_iters},
            "precisions": [p.value for p in self.precisions_],
            "cv": {"mape": self.cv_mape_, "p68": self.cv_p68_,
                   "roofline_mape": self.roofline_cv_mape_, "roofline_p68": self.roofline_cv_p68_},
            "n_train": self.n_train_,
            "roofline": {"coef": self.roofline_.coef_.tolist(),
                         "rel_error": self.roofline_.rel_error_, "n_fit": self.roofline_.n_fit_},
            # only the columns in use, by name: a reader with other columns refuses, not misreads
            "coef": {name: float(c) for name, c in zip(COLUMNS, self.coef_) if c > 0},
            "columns": len(COLUMNS),
        }

    @classmethod
    def from_dict(cls, peaks: Peaks, d: dict) -> LatencyModel:
        """A fitted model from :meth:`to_dict`'s data and the device's peaks (which the
        structure of new queries needs); raises ``NoEstimate`` for another format."""
        if not isinstance(d, dict) or d.get("format") != FORMAT_VERSION:
            found = d.get("format") if isinstance(d, dict) else None
            raise NoEstimate(f"stored learned model has format {found!r}, this hwcost "
                             f"reads {FORMAT_VERSION}; it is refitted")
        unknown = set(d["coef"]) - set(COLUMNS)
        if unknown or d["columns"] != len(COLUMNS):
            raise NoEstimate(f"stored learned model uses columns this hwcost does not have "
                             f"({', '.join(sorted(unknown)) or 'another layout'}); it is refitted")
        m = cls(peaks, Precision(d["carrier"]), **d["settings"])
        m.precisions_ = tuple(Precision(p) for p in d["precisions"])
        cv = d["cv"]
        m.cv_mape_, m.cv_p68_ = cv["mape"], cv["p68"]
        m.roofline_cv_mape_, m.roofline_cv_p68_ = cv["roofline_mape"], cv["roofline_p68"]
        m.cv_errors_ = None
        m.n_train_ = d["n_train"]
        roof = RooflineModel(peaks)
        roof.coef_ = np.asarray(d["roofline"]["coef"], dtype=float)
        roof.rel_error_, roof.n_fit_ = d["roofline"]["rel_error"], d["roofline"]["n_fit"]
        m.roofline_ = roof
        m.coef_ = np.array([float(d["coef"].get(name, 0.0)) for name in COLUMNS])
        return m

    def predict(self, queries: Sequence[Query]) -> np.ndarray:
        """Latency in microseconds for each query."""
        if not hasattr(self, "coef_"):
            raise NoEstimate("LatencyModel.predict called before fit")
        if not queries:
            return np.zeros(0)
        t = terms(queries, self.peaks, self.carrier)
        return self._predict_with(self.coef_, structure(queries, t))

    def contributions(self, queries: Sequence[Query]) -> list[dict[str, float]]:
        """Each query's latency split into the columns that carry it (microseconds), largest
        first: what the fit says the time is spent on."""
        if not hasattr(self, "coef_"):
            raise NoEstimate("LatencyModel.contributions called before fit")
        x = structure(queries, terms(queries, self.peaks, self.carrier)) * self.coef_
        return [{COLUMNS[i]: float(row[i]) for i in np.argsort(-row) if row[i] > 0} for row in x]


__all__ = ["COLUMNS", "FORMAT_VERSION", "LatencyModel", "fit_structure", "structure"]
