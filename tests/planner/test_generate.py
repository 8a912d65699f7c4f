"""generate() timings of a workload: the baseline request carries the provenance and the
stability verdict every other timing does, and an unstable one is not planned on."""

from __future__ import annotations

from dataclasses import replace

import torch
from hwcost.planner.generate import measure_baseline
from hwcost.profiles.backends import get_backend
from hwcost.profiles.campaign import QUICK_TIMING, run_campaign
from hwcost.profiles.loading import LoadedModel
from hwcost.profiles.stability import StabilityPolicy

from hwcost.workload import parse_workload, workload_shapes

WL = "prompt=6,gen=3,batch=1"
FEW = {"min_samples": 3, "warmup_max_s": 0.0, "max_seconds": 0.0, "min_sample_us": 0.0}
LOAD_ONLY = {"remeasure_spread": 10.0, "max_spread": 10.0}  # judged on load only


def _tiny_qwen2() -> LoadedModel:
    from tests.factories import tiny_qwen2

    model, _ = tiny_qwen2()
    return LoadedModel("tiny-qwen2", model, None, "test")


def test_a_generate_baseline_is_stored_with_its_stability_and_replaced_when_unstable(store):
    lm = _tiny_qwen2()
    wl = parse_workload(WL)
    rep = run_campaign(store, lm, "cpu", list(workload_shapes(wl)), precisions="fp32,bf16",
                       threads=1, n_inputs=1, timing=QUICK_TIMING, progress=False)
    backend = get_backend("cpu")
    model, dev = store.model(rep.model_fingerprint), store.device(rep.device)
    # a machine the policy calls busy (a fixed reading of 99 runnable tasks per CPU)
    busy = StabilityPolicy(max_load=1.0, wait_s=0.0, budget_s=0.0, load_reader=lambda: 99.0,
                           **LOAD_ONLY)
    with torch.no_grad():
        us = measure_baseline(store, lm, backend, rep.model_fingerprint, rep.device, "fp32", wl,
                              threads=1, policy=busy, **FEW)
    assert store.model_latency(model, dev, wl.shape_key, "all:fp32") is None  # not good
    row = store.model_latency(model, dev, wl.shape_key, "all:fp32", allow_unstable=True)
    assert row.median_us == us > 0 and row.n_samples >= 3
    assert (row.stable, row.quick, row.threads, row.clock) == (False, False, 1, "wall")
    assert row.load1 is not None
    # a later run on a machine the policy accepts measures it again and replaces the row
    with torch.no_grad():
        measure_baseline(store, lm, backend, rep.model_fingerprint, rep.device, "fp32", wl,
                         threads=1, policy=replace(StabilityPolicy.lenient(), **LOAD_ONLY), **FEW)
    good = store.model_latency(model, dev, wl.shape_key, "all:fp32")
    assert good is not None and good.stable and good.load1 is not None
    # the model's own steps at the pricing shapes, timed in the same rounds (the planner
    # prices the gains in these rounds' microseconds)
    steps = store.model_latency(model, dev, wl.shape_key, "steps:fp32")
    assert steps is not None and steps.median_us > 0 and steps.n_samples == good.n_samples
    # and a stored good row is reused, not measured again
    again = measure_baseline(store, lm, backend, rep.model_fingerprint, rep.device, "fp32", wl,
                             threads=1, policy=busy, **FEW)
    assert again == good.median_us
