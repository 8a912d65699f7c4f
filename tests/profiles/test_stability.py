"""Measurement integrity: a busy machine is refused and nothing is stored as good; quick rows
never reach a plan and never count as done for a full run; each gain is stored with the
baseline timed in its own interleave group."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest
import torch
from hwcost.planner.problem import build_problem
from hwcost.profiles.campaign import QUICK_TIMING, TimingOptions, run_campaign
from hwcost.profiles.loading import LoadedModel
from hwcost.profiles.stability import (
    StabilityPolicy,
    drift,
    drift_noise,
    judge,
    load_scope,
    machine_runnable,
    runnable_tasks,
    runnable_threads,
    usable_cpus,
)
from sqlalchemy import select
from transformers import LlamaConfig, LlamaForCausalLM

from hwcost.store import MeasurementIn, open_store
from hwcost.store.schema import Measurement

SHAPE = "batch=1,seq=8"


def _tiny(layers: int = 1) -> LoadedModel:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, use_cache=False)
    return LoadedModel("tiny-stab", LlamaForCausalLM(cfg).eval(), None, "test")


def _rows(store) -> list[Measurement]:
    with store.session() as s:
        return list(s.scalars(select(Measurement).order_by(Measurement.id)))


# a bounded competing load: busy loops that end by themselves after BUSY_S seconds
BUSY_S = 45
_BUSY = f"import time\nend = time.time() + {BUSY_S}\nwhile time.time() < end:\n    pass\n"


@pytest.fixture
def busy_machine():
    """Twice as many spinning processes as usable CPUs (bounded in time, killed after)."""
    procs = [subprocess.Popen([sys.executable, "-c", _BUSY]) for _ in range(2 * usable_cpus())]
    try:
        deadline = time.time() + 10
        while time.time() < deadline and (runnable_tasks() or 0) < len(procs):
            time.sleep(0.05)  # until the scheduler sees them
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.skipif(runnable_tasks() is None, reason="no /proc/stat to read the load from")
def test_an_unstable_run_is_refused_and_stores_nothing_as_good(sqlite_url, busy_machine):
    strict = StabilityPolicy(max_load=1.25, max_drift=0.05, wait_s=0.3, budget_s=1.0)
    timing = TimingOptions(min_samples=5, warmup_max_s=0.05, max_seconds=0.0,
                           min_sample_us=0.0, policy=strict)
    start = time.perf_counter()
    with open_store(sqlite_url) as store:
        rep = run_campaign(store, _tiny(), "cpu", [SHAPE], "fp32", threads=1, n_inputs=2,
                           timing=timing, progress=False)
        elapsed = time.perf_counter() - start
        assert rep.measured == rep.tasks > 0 and rep.unstable == rep.measured
        line = rep.stability_line()
        assert line.startswith(f"unstable machine: {rep.measured} of {rep.measured} timings "
                               "refused as good (load ")
        assert "runnable tasks per CPU > 1.25" in line and "\n" not in line
        # stored for inspection, never as good: no plan, no "already measured" sees them
        rows = _rows(store)
        assert len(rows) == rep.tasks and not any(r.stable for r in rows)
        assert all(r.load1 is not None and r.threads == 1 and r.clock == "wall" for r in rows)
        assert store.model_costs(rep.model_fingerprint, rep.device, SHAPE) == []
        assert store.device_measurements(rep.device) == []
        assert store.model_latency(rep.model_fingerprint, rep.device, SHAPE, "all:fp32") is None
    # it waited within its budget for every group, then gave up: bounded, not forever
    assert elapsed < 60


@pytest.mark.slow
@pytest.mark.skipif(runnable_tasks() is None, reason="no /proc/stat to read the load from")
def test_a_loaded_compiled_campaigns_anchors_are_refused_and_never_anchor_a_plan(
        sqlite_url, monkeypatch):
    """A compiled campaign times whole-model anchors at prefill (planner.anchors). The load
    competes with the whole-model window alone (the pieces, compiled one by one, are timed
    on the quiet machine, which keeps the test short): its rows are stored for inspection,
    never as good, and the planner's problem keeps the pieces' own gains unless asked for
    unstable rows."""
    from hwcost.profiles import campaign as campaign_mod

    real = campaign_mod.time_windows

    def under_load(*args, **kwargs):
        busy = "import time\nend = time.time() + 300\nwhile time.time() < end:\n    pass\n"
        procs = [subprocess.Popen([sys.executable, "-c", busy])
                 for _ in range(2 * usable_cpus())]
        try:
            deadline = time.time() + 10
            while time.time() < deadline and (runnable_tasks() or 0) < len(procs):
                time.sleep(0.05)  # until the scheduler sees them
            return real(*args, **kwargs)
        finally:
            for p in procs:
                p.kill()
                p.wait()

    monkeypatch.setattr(campaign_mod, "time_windows", under_load)
    strict = StabilityPolicy(max_load=1.25, max_drift=0.05, wait_s=0.3, budget_s=1.0)
    timing = TimingOptions(min_samples=5, warmup_max_s=0.05, max_seconds=0.0,
                           min_sample_us=0.0, policy=strict)
    with open_store(sqlite_url) as store:
        rep = run_campaign(store, _tiny(), "cpu", [SHAPE], "fp32,int8", threads=1, n_inputs=2,
                           timing=timing, progress=False, deployment="compiled")
        key = rep.model_fingerprint, rep.device, "batch=1,seq=8,phase=prefill"
        for row in ("all:fp32", "all:int8", "first:int8"):
            assert store.model_latency(*key, row) is None  # never as good
            kept = store.model_latency(*key, row, allow_unstable=True)
            assert kept is not None and not kept.stable
        assert any(r.startswith("whole model: ") for r in rep.unstable_reasons)
        loose = build_problem(store, rep.model_fingerprint, rep.device, SHAPE,
                              precisions=["int8"], method=None, allow_unstable=True)
        assert set(loose.gain_scales[key[2]]) == {"int8"}  # anchored when asked
        if store.model_costs(*key):  # the pieces' timings came out good: plan from them
            plain = build_problem(store, rep.model_fingerprint, rep.device, SHAPE,
                                  precisions=["int8"], method=None)
            assert plain.gain_scales == {} and plain.model_baseline_us is None


def test_judge_names_the_first_failing_figure():
    p = StabilityPolicy(max_load=1.0, max_drift=0.05, remeasure_spread=0.05, max_spread=0.15)
    assert judge(0.01, 0.01, [1.0, 1.0], 2, p).ok
    assert judge(0.01, 0.01, [5.0, 5.0], 2, p).reason == "load 2.50 runnable tasks per CPU > 1"
    assert judge(0.01, 0.20, [1.0], 2, p).reason == "baseline drift 20.0% > 5%"
    # between the limits: re-measured (by the harness), not refused
    assert judge(0.09, 0.0, [], 2, p).ok and p.remeasure(0.09)
    v = judge(0.19, 0.0, [], 2, p)
    assert v.reason == "spread 19.0% > 15%" and not v.machine_busy
    # a caller-supplied load reading is what the policy judges
    assert StabilityPolicy(load_reader=lambda: 7.0).read_load() == 7.0


def test_drift_is_judged_against_the_scatter_of_its_own_samples():
    p = StabilityPolicy()
    rng = random.Random(0)
    # a steady machine with an 8 % spread: the halves' medians differ by noise alone
    refused = 0
    for _ in range(200):
        xs = [1000.0 * (1 + rng.gauss(0, 0.12)) for _ in range(15)]
        refused += not judge(0.08, drift(xs), [], 2, p, drift_noise=drift_noise(xs)).ok
    assert refused <= 20, refused  # 2 standard errors: ~5 % of batches, not most of them
    # a real step (a job started mid-batch) on tight samples is still refused
    xs = [1000.0 * (1 + rng.gauss(0, 0.01)) for _ in range(8)]
    xs += [1150.0 * (1 + rng.gauss(0, 0.01)) for _ in range(7)]
    v = judge(0.02, drift(xs), [], 2, p, drift_noise=drift_noise(xs))
    assert v.reason.startswith("baseline drift 1") and v.machine_busy
    # a pass of five samples judges no drift: its halves of two and three say nothing
    assert drift(xs[:2] + xs[-3:]) == 0.0 == drift_noise(xs[:2] + xs[-3:])
    # the noise limit is named when it, not max_drift, is the one passed
    v = judge(0.08, 0.30, [], 2, p, drift_noise=0.05)
    assert v.reason == "baseline drift 30.0% > 2 standard errors of its samples' scatter (10.0%)"
    assert drift_noise([5.0, 5.0, 5.0]) == 0.0


def test_gains_are_stored_with_the_baseline_of_their_own_group(sqlite_url):
    with open_store(sqlite_url) as store:
        rep = run_campaign(store, _tiny(), "cpu", [SHAPE], "fp32,bf16", threads=1, n_inputs=2,
                           timing=QUICK_TIMING, progress=False, group=3)
        rows = _rows(store)
        by_sig: dict[int, list[Measurement]] = {}
        for r in rows:
            by_sig.setdefault(r.subgraph_id, []).append(r)
        three_slot = [rs for rs in by_sig.values() if len(rs) == 8]
        assert three_slot, "the tiny Llama has 3-slot pieces"
        for rs in three_slot:
            base = next(r for r in rs if set(r.config.split(",")) == {"fp32"})
            # the baseline row's group baseline is itself; 8 configs in groups of 3 (the
            # baseline joins the groups it is not part of): 3 groups, 3 baseline timings
            assert base.baseline_us == base.median_us
            # (the baseline row itself is timed again with the whole model, in one window)
            assert len({r.baseline_us for r in rs if r is not base}) == 3
            assert all(r.quick and r.baseline_us > 0 for r in rs)
        # the planner takes each measured gain against its in-group baseline
        from hwcost.costs import model_table

        table = model_table(store, rep.model_fingerprint, rep.device, SHAPE,
                            allow_unstable=True)
        e = next(e for e in table.entries if len(e.slots) == 3)
        base = table.baseline_us(e)
        for key, est in e.costs.items():
            # the ratio to the baseline of its own group, applied to the baseline's latency
            assert table.gain(e, key) == pytest.approx(base * (1 - est.latency_us / est.baseline_us))


def test_quick_rows_are_measured_again_by_a_full_run(sqlite_url):
    loaded = _tiny()
    full = TimingOptions(min_samples=3, warmup_max_s=0.05, max_seconds=0.0, min_sample_us=0.0,
                         policy=StabilityPolicy.lenient())
    with open_store(sqlite_url) as store:
        quick = run_campaign(store, loaded, "cpu", [SHAPE], "fp32", threads=1, n_inputs=2,
                             timing=QUICK_TIMING, progress=False, model_latency=False)
        again = run_campaign(store, loaded, "cpu", [SHAPE], "fp32", threads=1, n_inputs=2,
                             timing=QUICK_TIMING, progress=False, model_latency=False)
        assert (again.already, again.measured) == (quick.tasks, 0)  # quick reuses quick
        rep = run_campaign(store, loaded, "cpu", [SHAPE], "fp32", threads=1, n_inputs=2,
                           timing=full, progress=False, model_latency=False)
        assert (rep.already, rep.measured) == (0, quick.tasks)  # a full run reuses none
        rows = _rows(store)
        assert len(rows) == quick.tasks and not any(r.quick for r in rows)


def test_quick_rows_are_not_used_by_a_plan_and_a_stable_row_replaces_them(store):
    from tests.planner.conftest import populate

    tiny = populate(store)
    # fast-looking quick timings of every MLP config but its baseline
    rows = [MeasurementIn(tiny.device, "sig-mlp", tiny.shape, cfg, 1.0, 0.1, 5, quick=True)
            for cfg in ("bf16,bf16", "int8,int8", "bf16,int8", "int8,bf16")]
    store.add_measurements(rows, replace=True)
    mlp_opts = {o.key: o for o in build_problem(store, tiny.name, tiny.device, tiny.shape)
                .choices[1].options}
    assert mlp_opts["int8,int8"].source != "measured" and mlp_opts["int8,int8"].latency_us > 1.0
    asked = {o.key: o for o in build_problem(store, tiny.name, tiny.device, tiny.shape,
                                             allow_unstable=True).choices[1].options}
    assert asked["int8,int8"].source == "measured" and asked["int8,int8"].latency_us == 1.0
    # a later full, stable timing replaces the quick row without being asked to
    assert store.add_measurements([MeasurementIn(tiny.device, "sig-mlp", tiny.shape,
                                                 "int8,int8", 90.0, 0.5, 15)]) == 1
    # and a later quick one never replaces a good row
    assert store.add_measurements([MeasurementIn(tiny.device, "sig-mlp", tiny.shape,
                                                 "int8,int8", 2.0, 0.1, 5, quick=True)]) == 0
    opts = {o.key: o for o in build_problem(store, tiny.name, tiny.device, tiny.shape)
            .choices[1].options}
    # the unit's other configs are still quick: its gains come from one fallback, all of them
    assert len({o.source for k, o in opts.items() if k != "fp32,fp32"}) == 1
    assert opts["int8,int8"].source != "measured"
    # the stored row is the full one: measured 90 us wherever quick rows are let in
    opt = {o.key: o for o in build_problem(store, tiny.name, tiny.device, tiny.shape,
                                           allow_unstable=True).choices[1].options}["int8,int8"]
    assert (opt.source, opt.latency_us) == ("measured", 90.0)


def test_a_slower_plan_is_flagged_and_a_disagreement_warned():
    from hwcost.planner.apply import ValidationResult

    r = ValidationResult(1, 1, "dev", 100.0, 125.0, 1.0, 1.0, 0.8, 1.46, 0.1, 0.1, 8, 1,
                         speedup_rel_error=0.05)
    lines = r.warnings()
    assert r.slower_than_baseline and lines[0].startswith("REGRESSION: the plan measured slower")
    assert lines[1] == ("warning: measured speedup 0.800x is 45% below the predicted 1.460x "
                        "(stated error 5%)")
    ok = ValidationResult(1, 1, "dev", 100.0, 80.0, 1.0, 1.0, 1.25, 1.27, 0.1, 0.1, 8, 1,
                          speedup_rel_error=0.05)
    assert ok.warnings() == [] and ok.to_dict()["slower_than_baseline"] is False
    # a plan that keeps every layer in the baseline precision is the baseline: two timings of
    # one deployment differ by noise, not by a regression
    same = ValidationResult(1, 1, "dev", 100.0, 101.0, 1.0, 1.0, 0.99, 1.0, 0.0, 0.0, 8, 1,
                            speedup_rel_error=0.05, plan_is_baseline=True)
    assert not same.slower_than_baseline and same.warnings() == []


def test_a_validation_at_another_level_than_the_plan_was_priced_at_is_warned():
    """The baseline measured now against the baseline the plan was priced against: beyond
    LEVEL_TOLERANCE the machine runs at another level than when it was profiled, and the
    validation says so, with both figures (it does not judge the plan for it)."""
    from hwcost.planner.apply import LEVEL_TOLERANCE, ValidationResult

    def result(baseline_us, priced_us):
        return ValidationResult(1, 1, "dev", baseline_us, 0.8 * baseline_us, 1.0, 1.0, 1.25,
                                1.25, 0.1, 0.1, 8, 1, speedup_rel_error=0.05,
                                predicted_baseline_us=priced_us)

    moved = result(396.0, 295.0)  # bench/decode.py demo run 10's request
    assert moved.level_change == pytest.approx(396.0 / 295.0 - 1.0)
    assert moved.warnings() == [
        "warning: the baseline measured 396 us, 34% slower than the 295 us the plan was "
        "priced at: the machine runs at another level than when it was profiled, and gains "
        "do not carry from one level to another; validate again when it is back, or profile "
        "again"]
    assert "faster than the 400 us" in result(300.0, 400.0).warnings()[0]
    within = 100.0 * (1 + 0.9 * LEVEL_TOLERANCE)
    assert result(within, 100.0).warnings() == []
    assert result(396.0, None).level_change is None and result(396.0, None).warnings() == []


def _pinned_busy(cpu: int, seconds: float) -> subprocess.Popen:
    """A process spinning on ``cpu`` for ``seconds``, returned once it spins (its start-up,
    imports and all, sleeps on I/O now and then: a task caught then is not runnable)."""
    code = (f"import os, sys, time\nos.sched_setaffinity(0, {{{cpu}}})\n"
            f"end = time.time() + {seconds}\nprint('spinning', flush=True)\n"
            "while time.time() < end:\n    pass\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "spinning"
    return proc


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2
                    or runnable_threads({0}) is None,
                    reason="needs Linux /proc and two CPUs to pin to")
def test_load_counts_what_runs_on_our_cpus_only():
    """A busy process pinned to the CPU we may use is counted; pinned elsewhere, it is not.
    (The busy process stays on the CPU this test runs on; only our reading moves.)"""
    mine = min(os.sched_getaffinity(0))
    other = next(c for c in range(os.cpu_count()) if c != mine)
    saved = os.sched_getaffinity(0)
    proc = _pinned_busy(mine, seconds=8)
    try:
        os.sched_setaffinity(0, {mine})
        assert load_scope() == f"cpus {mine}"
        assert StabilityPolicy().load_scope() == f"cpus {mine}"
        assert proc.pid in runnable_threads({mine})
        # the busy process and this reader itself, at least
        assert runnable_tasks() >= 2
        os.sched_setaffinity(0, {other})
        assert load_scope() == f"cpus {other}"
        assert proc.pid not in runnable_threads({other})
        assert os.getpid() in runnable_threads({other})  # the reader counts itself
        assert proc.poll() is None, "the busy process was still running throughout"
        # pinned to every CPU: the machine's procs_running, which counts it wherever it runs
        os.sched_setaffinity(0, set(range(os.cpu_count())))
        assert load_scope() == "machine" and machine_runnable() is not None
    finally:
        os.sched_setaffinity(0, saved)
        proc.kill()
        proc.wait()
