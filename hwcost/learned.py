"""Learned latency model: a scikit-learn regressor trained on one device's measurements.

It learns the device's deviation from its own fitted roofline, in log space:
``log(latency) = log(roofline) + (f(features) + g(features)) / 2`` over subgraph features
(MACs and bytes per precision, precision boundaries, op counts, the shape's tokens, the log of
every roofline term and of the roofline estimate): ``f`` a seeded gradient-boosted tree
ensemble (absolute-error loss), ``g`` a ridge regression on the standardised features. The
roofline carries the model to shapes and widths it never saw (trees alone cannot
extrapolate); the trees learn what the roofline misses (small-shape overheads, kernels slower
than their precision's peak, emulated formats), and the linear part moves smoothly between
the shapes and widths it was trained on, where the trees' residual is a step (on the
benchmark's held-out shapes: trees alone 17.7 %, ridge alone 14.0 %, their mean 15.3 %; on
held-out subgraphs 14.2 %, 16.7 %, 13.7 %).

Deterministic (fixed seed, fixed fold assignment) and never pickled: :meth:`LatencyModel.to_dict`
writes the fitted state as plain JSON data (the roofline's factors and every tree's nodes,
thresholds and leaf values), :meth:`LatencyModel.from_dict` reads it back and predicts with
numpy alone. ``hwcost.costs`` keeps that JSON in the store (table ``learned_fit``), keyed by
the device and a hash of the measurements it was fitted on, so it is fitted once per device
and store state, not on every query. Grouped cross-validation (a group is one subgraph at
one shape, so whole held-out groups are predicted) gives the error reported with every
estimate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hwcost.catalog import Peaks
from hwcost.errors import NoEstimate
from hwcost.precision import Precision
from hwcost.roofline import PRECISIONS, TERMS, Query, RooflineModel, attention_dims, terms

_FLOOR = 1e-3  # microseconds; keeps logs of empty terms finite
FORMAT_VERSION = 2
"""Version of :meth:`LatencyModel.to_dict`'s layout and of the features: bump it when either
changes, so fits cached in a store are refitted rather than misread."""


class TreeEnsemble:
    """A fitted gradient-boosted tree ensemble as plain arrays, predicting with numpy.

    ``init + learning_rate * sum(tree(x))``, each tree walked from the root: go left when
    ``x[feature] <= threshold`` (features compared as float32, as scikit-learn does)."""

    def __init__(self, init: float, learning_rate: float, trees: list[dict]):
        self.init = float(init)
        self.learning_rate = float(learning_rate)
        self.trees = [{k: np.asarray(v, dtype=np.float64 if k in ("threshold", "value")
                                     else np.int64) for k, v in t.items()} for t in trees]

    @classmethod
    def from_sklearn(cls, reg, n_features: int) -> TreeEnsemble:
        trees = []
        for est in reg.estimators_[:, 0]:
            t = est.tree_
            trees.append({"left": t.children_left.tolist(), "right": t.children_right.tolist(),
                          "feature": t.feature.tolist(), "threshold": t.threshold.tolist(),
                          "value": t.value[:, 0, 0].tolist()})
        init = float(reg.init_.predict(np.zeros((1, n_features)))[0])
        return cls(init, reg.learning_rate, trees)

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        rows = np.arange(len(x))
        out = np.full(len(x), self.init)
        for t in self.trees:
            node = np.zeros(len(x), dtype=np.int64)
            left, right, feat, thr = t["left"], t["right"], t["feature"], t["threshold"]
            while True:
                inner = left[node] != -1
                if not inner.any():
                    break
                f = np.where(inner, feat[node], 0)
                go_left = x[rows, f] <= thr[node]
                node = np.where(inner, np.where(go_left, left[node], right[node]), node)
            out += self.learning_rate * t["value"][node]
        return out

    def to_dict(self) -> dict:
        return {"init": self.init, "learning_rate": self.learning_rate,
                "trees": [{k: v.tolist() for k, v in t.items()} for t in self.trees]}


class LinearPart:
    """A ridge regression on standardised features, as plain arrays (predicts with numpy)."""

    def __init__(self, mean, scale, coef, intercept: float):
        self.mean = np.asarray(mean, dtype=float)
        self.scale = np.asarray(scale, dtype=float)
        self.coef = np.asarray(coef, dtype=float)
        self.intercept = float(intercept)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> LinearPart:
        from sklearn.linear_model import Ridge

        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale == 0] = 1.0  # a constant column carries nothing
        reg = Ridge(alpha=alpha).fit((x - mean) / scale, y)
        return cls(mean, scale, reg.coef_, reg.intercept_)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.intercept + ((np.asarray(x, dtype=float) - self.mean) / self.scale) @ self.coef

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept}


def features(queries: Sequence[Query], t: np.ndarray, carrier: Precision,
             precisions: Sequence[Precision] = PRECISIONS) -> np.ndarray:
    """Feature matrix: shape, per-precision MACs/bytes/counts (for ``precisions``),
    precision boundaries, op counts, and the log of every roofline term."""
    rows = []
    for q, trow in zip(queries, t):
        m = q.shape.tokens
        macs = dict.fromkeys(precisions, 0.0)
        wbytes = dict.fromkeys(precisions, 0.0)
        count = dict.fromkeys(precisions, 0)
        boundaries = 0
        prev = None
        for slot, p in zip(q.subgraph.slots, q.config):
            if p in macs:
                macs[p] += m * slot.macs_per_token
                wbytes[p] += slot.weight_params * p.bytes
                count[p] += 1
            boundaries += int(prev is not None and p != prev)
            prev = p
        total_macs = sum(macs.values()) or 1.0
        n = len(q.subgraph.slots)
        row = [np.log(m), np.log1p(q.shape.kv), float(q.shape.phase == "decode"),
               np.log(q.shape.batch), float(n), float(boundaries),
               float(attention_dims(q.subgraph) is not None),
               sum(1 for p in q.config if p != carrier) / max(1, n)]
        for p in precisions:
            row += [np.log1p(macs[p]), macs[p] / total_macs, float(count[p]), np.log1p(wbytes[p])]
        row += list(np.log(trow + _FLOOR))
        rows.append(row)
    return np.asarray(rows, dtype=float)


def _group_folds(groups: Sequence[str], n_splits: int) -> list[np.ndarray]:
    """Deterministic grouped folds: sorted groups dealt round-robin."""
    uniq = sorted(set(groups))
    fold_of = {g: i % n_splits for i, g in enumerate(uniq)}
    f = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(f == k) for k in range(n_splits)]


class LatencyModel:
    """``LatencyModel(peaks, carrier, seed=0).fit(queries, latency_us).predict(queries)``.

    After ``fit``: ``cv_mape_`` (median absolute percentage error of out-of-fold
    predictions, a fraction), ``cv_p68_`` (68th percentile of the same errors, used as the
    estimate's uncertainty), ``roofline_cv_mape_`` (the fitted roofline's error on the same
    folds, so callers can choose the better source honestly), ``roofline_`` (fitted on all).
    ``n_splits=0`` skips the cross-validation (the ``cv_*`` attributes are then None).

    The trees minimise absolute error in log space (median regression): a few disturbed
    timings must not bend the model, and the median relative error is what is reported.
    On the benchmark's CPU timings this beat squared-error and Huber losses and deeper trees.
    """

    def __init__(self, peaks: Peaks, carrier: Precision, seed: int = 0, n_splits: int = 5,
                 n_estimators: int = 200, max_depth: int = 3, learning_rate: float = 0.08,
                 loss: str = "absolute_error"):
        self.peaks = peaks
        self.carrier = carrier
        self.seed = seed
        self.n_splits = n_splits
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.loss = loss

    def _regressor(self):
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(
            n_estimators=self.n_estimators, max_depth=self.max_depth, loss=self.loss,
            learning_rate=self.learning_rate, subsample=0.8, min_samples_leaf=5,
            random_state=self.seed)

    def _fit_once(self, t: np.ndarray, x: np.ndarray, y: np.ndarray):
        roof = RooflineModel(self.peaks).fit(t, y)
        base = np.log(np.maximum(roof.predict(t), _FLOOR))
        xx = np.column_stack([x, base])
        resid = np.log(y) - base
        return roof, (self._regressor().fit(xx, resid), LinearPart.fit(xx, resid))

    @staticmethod
    def _predict_once(roof: RooflineModel, parts, t: np.ndarray, x: np.ndarray) -> np.ndarray:
        trees, linear = parts
        base = np.log(np.maximum(roof.predict(t), _FLOOR))
        xx = np.column_stack([x, base])
        return np.exp(base + 0.5 * trees.predict(xx) + 0.5 * linear.predict(xx))

    def fit(self, queries: Sequence[Query], latency_us: Sequence[float]) -> LatencyModel:
        """Train on measured latencies; cross-validate over (subgraph, shape) groups first."""
        y = np.asarray(latency_us, dtype=float)
        if len(y) != len(queries) or len(y) == 0:
            raise NoEstimate("a learned latency model needs measurements to train on")
        groups = [f"{q.subgraph.signature}|{q.shape.key}" for q in queries]
        n_groups = len(set(groups))
        if n_groups < 2:
            raise NoEstimate("a learned latency model needs measurements of at least two "
                             "(subgraph, shape) pairs")
        seen = {p for q in queries for p in q.config}
        self.precisions_ = tuple(p for p in PRECISIONS if p in seen)
        t = terms(queries, self.peaks, self.carrier)
        x = features(queries, t, self.carrier, self.precisions_)
        self.cv_errors_ = self.cv_mape_ = self.cv_p68_ = None
        self.roofline_cv_mape_ = self.roofline_cv_p68_ = None
        if self.n_splits >= 2:
            oof = np.empty_like(y)
            oof_roof = np.empty_like(y)
            for test in _group_folds(groups, min(self.n_splits, n_groups)):
                train = np.setdiff1d(np.arange(len(y)), test)
                roof, parts = self._fit_once(t[train], x[train], y[train])
                oof[test] = self._predict_once(roof, parts, t[test], x[test])
                oof_roof[test] = roof.predict(t[test])
            err = np.abs(oof - y) / y
            err_roof = np.abs(oof_roof - y) / y
            self.cv_errors_ = err
            self.cv_mape_ = float(np.median(err))
            self.cv_p68_ = float(np.quantile(err, 0.68))
            self.roofline_cv_mape_ = float(np.median(err_roof))
            self.roofline_cv_p68_ = float(np.quantile(err_roof, 0.68))
        self.roofline_, (reg, self.linear_) = self._fit_once(t, x, y)
        self.regressor_ = TreeEnsemble.from_sklearn(reg, x.shape[1] + 1)
        self.n_train_ = len(y)
        return self

    # -- as data (never pickled)
    def to_dict(self) -> dict:
        """The fitted model as JSON-serialisable data (see :meth:`from_dict`)."""
        if not hasattr(self, "regressor_"):
            raise NoEstimate("LatencyModel.to_dict called before fit")
        return {
            "format": FORMAT_VERSION, "carrier": self.carrier.value, "seed": self.seed,
            "settings": {"n_splits": self.n_splits, "n_estimators": self.n_estimators,
                         "max_depth": self.max_depth, "learning_rate": self.learning_rate,
                         "loss": self.loss},
            "precisions": [p.value for p in self.precisions_],
            "cv": {"mape": self.cv_mape_, "p68": self.cv_p68_,
                   "roofline_mape": self.roofline_cv_mape_, "roofline_p68": self.roofline_cv_p68_},
            "n_train": self.n_train_,
            "roofline": {"coef": self.roofline_.coef_.tolist(),
                         "rel_error": self.roofline_.rel_error_, "n_fit": self.roofline_.n_fit_},
            "trees": self.regressor_.to_dict(),
            "linear": self.linear_.to_dict(),
        }

    @classmethod
    def from_dict(cls, peaks: Peaks, d: dict) -> LatencyModel:
        """A fitted model from :meth:`to_dict`'s data and the device's peaks (which the
        roofline terms of new queries need); raises ``NoEstimate`` for another format."""
        if not isinstance(d, dict) or d.get("format") != FORMAT_VERSION:
            raise NoEstimate(f"stored learned model has format {d.get('format')!r}, this hwcost "
                             f"reads {FORMAT_VERSION}; it is refitted")
        m = cls(peaks, Precision(d["carrier"]), seed=d["seed"], **d["settings"])
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
        t = d["trees"]
        m.regressor_ = TreeEnsemble(t["init"], t["learning_rate"], t["trees"])
        m.linear_ = LinearPart(**d["linear"])
        return m

    def predict(self, queries: Sequence[Query]) -> np.ndarray:
        """Latency in microseconds for each query."""
        if not hasattr(self, "regressor_"):
            raise NoEstimate("LatencyModel.predict called before fit")
        if not queries:
            return np.zeros(0)
        t = terms(queries, self.peaks, self.carrier)
        return self._predict_once(self.roofline_, (self.regressor_, self.linear_), t,
                                  features(queries, t, self.carrier, self.precisions_))


__all__ = ["LatencyModel", "features", "TERMS"]
