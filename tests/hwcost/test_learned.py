"""The learned latency model on real CPU timings: deterministic, cross-validated, honest."""

from __future__ import annotations

import itertools
import statistics
import time

import numpy as np
import pytest

from hwcost.catalog import Peaks
from hwcost.errors import NoEstimate
from hwcost.learned import LatencyModel, features
from hwcost.precision import Precision, config_key
from hwcost.roofline import Query, terms
from hwcost.shape import parse_shape
from hwcost.store import SlotInfo, SubgraphInfo

P = Precision
PRECS = (P.FP32, P.BF16, P.INT8)
# Nominal CPU rates: the fit sets the scale; these only need the right ordering.
PEAKS = Peaks({P.FP32: 0.1, P.BF16: 0.2, P.INT8: 0.4, P.FP8_E4M3: 0.05}, 20.0, 5.0)


def chain(width: int) -> SubgraphInfo:
    """An MLP piece: up and down projection."""
    return SubgraphInfo(f"mlp{width}", "Linear+GELU+Linear",
                        (SlotInfo("Linear", width, 2 * width), SlotInfo("Linear", 2 * width, width)), {})


def real_timings(widths=(64, 128), tokens=(4, 32, 128), reps=7):
    """Time every config of each chain on this CPU with the backend's real kernels."""
    import torch
    from hwcost.profiles.backends import get_backend

    torch.manual_seed(0)
    cpu = get_backend("cpu")
    out = []
    with torch.inference_mode():
        for w in widths:
            sub = chain(w)
            layers = [torch.nn.Linear(s.in_features, s.out_features) for s in sub.slots]
            for m in tokens:
                x = torch.randn(m, w)
                for cfg in itertools.product(PRECS, repeat=len(sub.slots)):
                    dep = [cpu.deploy_linear(lin, p) for lin, p in zip(layers, cfg)]
                    run = lambda dep=dep, x=x: dep[1](torch.nn.functional.gelu(dep[0](x)))  # noqa: E731
                    run()
                    samples = []
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        run()
                        samples.append((time.perf_counter() - t0) * 1e6)
                    q1, med, q3 = statistics.quantiles(samples, n=4)
                    out.append((sub, f"batch={m}", config_key(cfg), med, (q3 - q1) / 2))
    return out


@pytest.fixture(scope="module")
def timings():
    return real_timings()


def _split(rows):
    qs = [Query(g, parse_shape(s), tuple(Precision(x) for x in c.split(","))) for g, s, c, _, _ in rows]
    return qs, np.array([r[3] for r in rows])


def test_fit_is_deterministic_and_reports_cv_error(timings):
    qs, y = _split(timings)
    a = LatencyModel(PEAKS, P.FP32, seed=0).fit(qs, y)
    b = LatencyModel(PEAKS, P.FP32, seed=0).fit(qs, y)
    np.testing.assert_array_equal(a.predict(qs), b.predict(qs))
    assert a.cv_mape_ == b.cv_mape_
    assert 0 <= a.cv_mape_ <= a.cv_p68_
    assert np.isfinite(a.roofline_cv_mape_)
    assert len(a.cv_errors_) == len(y)  # every measurement predicted out of fold once
    assert (a.predict(qs) > 0).all()


def test_held_out_shape_is_predicted_within_the_measured_range(timings):
    train = [r for r in timings if r[1] != "batch=32"]
    test = [r for r in timings if r[1] == "batch=32"]
    qs, y = _split(train)
    model = LatencyModel(PEAKS, P.FP32).fit(qs, y)
    tq, ty = _split(test)
    pred = model.predict(tq)
    # a shape between two trained ones lands within the range the trained shapes span
    # (loose bounds: these are real timings on a shared machine)
    assert pred.min() > 0.2 * min(y) and pred.max() < 5 * max(y)
    assert len(pred) == len(ty) and np.isfinite(pred).all()


def test_features_describe_precisions_and_boundaries():
    sub = chain(64)
    qs = [Query(sub, parse_shape("batch=8"), c) for c in ((P.FP32, P.FP32), (P.INT8, P.FP32))]
    x = features(qs, terms(qs, PEAKS, P.FP32), P.FP32)
    assert x.shape[0] == 2 and np.isfinite(x).all()
    assert x[0, 5] == 0 and x[1, 5] == 1  # boundaries
    assert x[0, 7] == 0 and x[1, 7] == 0.5  # share of slots off the carrier precision


def test_unfitted_or_untrainable_models_say_so():
    with pytest.raises(NoEstimate, match="before fit"):
        LatencyModel(PEAKS, P.FP32).predict([Query(chain(8), parse_shape("batch=1"), (P.FP32, P.FP32))])
    one = [Query(chain(8), parse_shape("batch=1"), (P.FP32, p)) for p in PRECS]
    with pytest.raises(NoEstimate, match="at least two"):
        LatencyModel(PEAKS, P.FP32).fit(one, [10.0, 9.0, 8.0])


def test_fitted_model_round_trips_as_json_data(timings):
    """The fit is data: JSON out, JSON in, the same predictions as scikit-learn's own trees."""
    import json

    qs, y = _split(timings)
    a = LatencyModel(PEAKS, P.FP32, seed=0, n_estimators=60).fit(qs, y)
    # numpy walk of the stored trees == scikit-learn's prediction on the same features
    t = terms(qs, PEAKS, P.FP32)
    x = features(qs, t, P.FP32, a.precisions_)
    _, (reg, linear) = a._fit_once(t, x, y)
    base = np.log(np.maximum(a.roofline_.predict(t), 1e-3))
    xx = np.column_stack([x, base])
    np.testing.assert_allclose(a.regressor_.predict(xx), reg.predict(xx), rtol=1e-9)
    # the prediction is the roofline times the mean of the trees' and the ridge's residuals
    np.testing.assert_allclose(a.predict(qs), np.exp(base + 0.5 * reg.predict(xx)
                                                     + 0.5 * linear.predict(xx)), rtol=1e-9)
    text = json.dumps(a.to_dict())
    assert "pickle" not in text and text.startswith('{"format": 2')
    assert set(a.to_dict()["linear"]) == {"mean", "scale", "coef", "intercept"}
    b = LatencyModel.from_dict(PEAKS, json.loads(text))
    np.testing.assert_allclose(b.predict(qs), a.predict(qs), rtol=1e-12)
    assert (b.cv_mape_, b.precisions_, b.n_train_) == (a.cv_mape_, a.precisions_, a.n_train_)
    with pytest.raises(NoEstimate, match="format 0"):
        LatencyModel.from_dict(PEAKS, {**a.to_dict(), "format": 0})
