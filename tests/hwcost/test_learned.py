"""The learned latency model on real CPU timings: deterministic, cross-validated, honest,
structured (non-negative physical costs), and kept as plain JSON data."""

from __future__ import annotations

import itertools
import statistics
import time

import numpy as np
import pytest

from hwcost.catalog import Peaks
from hwcost.errors import NoEstimate
from hwcost.learned import COLUMNS, LatencyModel, fit_structure, structure
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
    a = LatencyModel(PEAKS, P.FP32).fit(qs, y)
    b = LatencyModel(PEAKS, P.FP32).fit(qs, y)
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


def test_structure_counts_the_physical_work_of_each_precision_and_boundary():
    sub = chain(64)
    qs = [Query(sub, parse_shape("batch=8"), c) for c in ((P.FP32, P.FP32), (P.INT8, P.FP32))]
    x = structure(qs, terms(qs, PEAKS, P.FP32))
    col = {name: i for i, name in enumerate(COLUMNS)}
    assert x.shape == (2, len(COLUMNS)) and np.isfinite(x).all() and (x >= 0).all()
    macs = 8 * (64 * 128 + 128 * 64)  # tokens x (in x out) of both slots
    assert x[0, col["flops_fp32"]] == pytest.approx(2 * macs / 1e6)
    assert x[1, col["flops_int8"]] == pytest.approx(2 * 8 * 64 * 128 / 1e6)
    assert x[1, col["weight_bytes_int8"]] == pytest.approx(64 * 128 * 1 / 1e6)  # one byte each
    assert (x[0, col["slots_fp32"]], x[1, col["slots_fp32"]], x[1, col["slots_int8"]]) == (2, 1, 1)
    assert (x[0, col["boundaries"]], x[1, col["boundaries"]]) == (0, 1)
    assert x[0, col["subgraph"]] == 1 and x[0, col["attention_flops"]] == 0


def test_fit_recovers_non_negative_costs_that_generated_the_latencies():
    """Latencies that ARE a non-negative sum of the columns are fitted exactly, coefficients
    included where the columns are independent (a check of the solver, on real queries)."""
    subs = [chain(w) for w in (32, 64, 96, 128)]
    qs = [Query(g, parse_shape(f"batch={m}"), cfg) for g in subs for m in (1, 4, 16, 64)
          for cfg in itertools.product(PRECS, repeat=2)]
    x = structure(qs, terms(qs, PEAKS, P.FP32))
    col = {name: i for i, name in enumerate(COLUMNS)}
    truth = np.zeros(len(COLUMNS))
    for name, v in {"flops_fp32": 8.0, "flops_bf16": 4.0, "flops_int8": 2.0, "slots_fp32": 3.0,
                    "slots_bf16": 9.0, "slots_int8": 12.0, "subgraph": 20.0}.items():
        truth[col[name]] = v
    y = x @ truth
    coef = fit_structure(x, y)
    assert (coef >= 0).all()
    np.testing.assert_allclose(x @ coef, y, rtol=1e-6)


def test_unfitted_or_untrainable_models_say_so():
    with pytest.raises(NoEstimate, match="before fit"):
        LatencyModel(PEAKS, P.FP32).predict([Query(chain(8), parse_shape("batch=1"), (P.FP32, P.FP32))])
    one = [Query(chain(8), parse_shape("batch=1"), (P.FP32, p)) for p in PRECS]
    with pytest.raises(NoEstimate, match="at least two"):
        LatencyModel(PEAKS, P.FP32).fit(one, [10.0, 9.0, 8.0])


def test_fitted_model_round_trips_as_json_data(timings):
    """The fit is data: JSON out (named non-negative coefficients), JSON in, the same
    predictions; an older format or another column layout is refused, to be refitted."""
    import json

    qs, y = _split(timings)
    a = LatencyModel(PEAKS, P.FP32).fit(qs, y)
    x = structure(qs, terms(qs, PEAKS, P.FP32))
    assert (a.coef_ >= 0).all() and a.coef_.any()
    np.testing.assert_allclose(a.predict(qs), np.maximum(x @ a.coef_, 1e-3), rtol=1e-12)
    text = json.dumps(a.to_dict())
    assert "pickle" not in text and text.startswith('{"format": 4')
    d = json.loads(text)
    assert set(d["coef"]) <= set(COLUMNS) and min(d["coef"].values()) > 0
    b = LatencyModel.from_dict(PEAKS, d)
    np.testing.assert_allclose(b.predict(qs), a.predict(qs), rtol=1e-12)
    assert (b.cv_mape_, b.precisions_, b.n_train_) == (a.cv_mape_, a.precisions_, a.n_train_)
    # what the time is spent on: the columns' shares add up to the prediction
    parts = a.contributions(qs[:3])
    np.testing.assert_allclose([sum(p.values()) for p in parts], x[:3] @ a.coef_, rtol=1e-9)
    with pytest.raises(NoEstimate, match="format 3"):
        LatencyModel.from_dict(PEAKS, {**a.to_dict(), "format": 3})
    with pytest.raises(NoEstimate, match="columns"):
        LatencyModel.from_dict(PEAKS, {**d, "coef": {**d["coef"], "gone_column": 1.0}})


def test_held_out_width_is_predicted_from_the_other_widths(timings):
    """Fitted on one set of real measured units (the 64-wide chain at every shape), evaluated
    on another (the 128-wide chain, never seen): the structure carries the level across widths.
    Loose bound: real timings on a shared machine (the benchmark reports the real figure)."""
    train = [r for r in timings if r[0].signature == "mlp64"]
    test = [r for r in timings if r[0].signature == "mlp128"]
    qs, y = _split(train)
    model = LatencyModel(PEAKS, P.FP32, n_splits=0).fit(qs, y)
    tq, ty = _split(test)
    ratio = model.predict(tq) / ty
    assert 0.4 < np.median(ratio) < 2.5
