"""Campaigns: every task measured once, deeper models reuse measurements, resume after a
kill, workers splitting a campaign on PostgreSQL, and the ``hwcost profile`` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hwcost.profiles.campaign import QUICK_TIMING, campaign_tasks, run_campaign
from hwcost.profiles.loading import LoadedModel
from hwcost.profiles.partition import partition

from hwcost.app.main import cli
from hwcost.errors import UnknownPrecision
from hwcost.store import open_store

REPO = Path(__file__).resolve().parents[2]
SHAPE = "batch=1,seq=8"

def _tiny(layers: int = 2) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, use_cache=False)
    return LoadedModel(f"tiny{layers}", LlamaForCausalLM(cfg).eval(), None, "test")


def _quick(store, loaded, **kw):
    kw.setdefault("precisions", "fp32,bf16")
    kw.setdefault("timing", QUICK_TIMING)
    return run_campaign(store, loaded, "cpu", [SHAPE], threads=1, n_inputs=2, progress=False,
                        **kw)


def test_campaign_measures_each_task_once_and_a_deeper_model_adds_none(store):
    two = _tiny(2)
    rep = _quick(store, two)
    # the cut is the default one (3 slots a piece) whatever the precisions:
    # head 2**3 + tail 2 + MLP 2**3 + lm_head 2 configs per shape
    assert (rep.tasks, rep.measured, rep.already, rep.failed) == (20, 20, 0, 0)
    assert rep.precisions == ["fp32", "bf16"] and rep.unique_subgraphs == 4 and rep.pieces == 7
    assert store.measurement_count() == 20
    # quick timings: stored, but only read when asked for
    assert store.model_costs(rep.model_fingerprint, rep.device, SHAPE) == []
    costs = store.model_costs(rep.model_fingerprint, rep.device, SHAPE, allow_unstable=True)
    assert len(costs) == 2 * (8 + 2 + 8) + 2
    assert not any(c.good for c in costs) and all(c.baseline_us > 0 for c in costs)
    assert {(c.position, c.config) for c in costs} >= {(0, "fp32,fp32,fp32"), (1, "bf16"),
                                                       (5, "bf16,bf16,bf16"), (6, "fp32")}
    assert all(c.median_us > 0 and c.n_samples >= 5 for c in costs)
    lat = store.model_latency(rep.model_fingerprint, rep.device, SHAPE, "all:fp32",
                              allow_unstable=True)
    assert lat is not None and lat.median_us == rep.baseline_us["batch=1,seq=8,phase=prefill"]

    again = _quick(store, two)
    assert (again.measured, again.already) == (0, 20)

    four = _tiny(4)
    deeper = _quick(store, four)
    assert (deeper.tasks, deeper.measured, deeper.already) == (20, 0, 20)
    assert deeper.model_id != rep.model_id and deeper.pieces == 13
    assert store.measurement_count() == 20
    # the deeper model's manifest is fully covered by the shallow one's measurements
    positions = {c.position for c in store.model_costs(deeper.model_fingerprint, rep.device, SHAPE,
                                                       allow_unstable=True)}
    assert positions == set(range(13))


def test_an_unknown_precision_stores_nothing(sqlite_url):
    with open_store(sqlite_url) as s:
        with pytest.raises(UnknownPrecision, match="backend cpu cannot deploy fp8_e5m2"):
            _quick(s, _tiny(2), precisions="bf16,fp8_e5m2")
        assert s.devices() == [] and s.models() == []


def test_tasks_enumerate_unique_signature_shape_config():
    loaded = _tiny(2)
    part = partition(loaded.model, loaded.inputs_for(SHAPE), n_precisions=2)
    from hwcost.precision import parse_precisions
    from hwcost.shape import parse_shape

    tasks = campaign_tasks(part, [parse_shape(SHAPE), parse_shape("batch=2,seq=4")],
                           parse_precisions("fp32,bf16"))
    assert len(tasks) == len(set(tasks)) == 2 * 26
    assert tasks[0] == (part.pieces[0].signature, "batch=1,seq=8,phase=prefill",
                        "fp32,fp32,fp32,fp32")


# --------------------------------------------------------------------------- subprocesses


@pytest.fixture
def factory_env(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO), env.get("PYTHONPATH", "")])
    env.pop("HWCOST_DB", None)
    return env


def _profile_cmd(url: str, *extra: str) -> list[str]:
    return [sys.executable, "-c", "from hwcost.app.main import cli; cli()", "profile",
            "tests.factories:tiny", "--db", url, "--shape", SHAPE, "--precisions",
            "fp32,bf16,int8", "--threads", "1", "--quick", "--json", *extra]


def _rows(url: str) -> dict:
    from sqlalchemy import select

    from hwcost.store.schema import Measurement

    with open_store(url) as s, s.session() as ses:
        return {(m.subgraph_id, m.shape, m.config): (m.median_us, m.measured_at)
                for m in ses.scalars(select(Measurement))}


def _count(sqlite_url: str) -> int:
    import sqlite3

    try:
        with sqlite3.connect(sqlite_url.split("///", 1)[1], timeout=1) as c:
            return c.execute("SELECT count(*) FROM measurement").fetchone()[0]
    except sqlite3.Error:  # not created yet, or locked for a moment
        return 0


def test_a_killed_campaign_resumes_without_repeating_or_losing_work(sqlite_url, factory_env):
    # fp32/bf16/int8 on the tiny Llama: 27 + 3 + 27 + 3 = 60 tasks, written 2 at a time
    proc = subprocess.Popen(_profile_cmd(sqlite_url, "--group", "2"), env=factory_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and _count(sqlite_url) < 6:
            time.sleep(0.02)
        assert proc.poll() is None, "the campaign finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    before = _rows(sqlite_url)
    assert 6 <= len(before) < 60
    done = subprocess.run(_profile_cmd(sqlite_url), env=factory_env, capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert (report["tasks"], report["already"], report["measured"]) == (60, len(before),
                                                                      60 - len(before))
    after = _rows(sqlite_url)
    assert len(after) == 60
    # nothing measured twice, nothing lost; the pieces' baseline configs alone are timed
    # again with the whole model in one window (profiles/window.py), so that the gains and
    # the speedup's denominator agree on the machine's speed
    def configs(rows):
        return {k: v for k, v in rows.items() if set(k[2].split(",")) != {"fp32"}}

    assert {k: after[k] for k in configs(before)} == configs(before)


def test_two_workers_split_a_campaign_on_postgresql(store_url, factory_env):
    if not store_url.startswith("postgresql"):
        pytest.skip("fleet workers share a PostgreSQL store")
    url = store_url
    open_store(url).close()  # a fleet store is created once (`hwcost db init`), then shared
    procs = [subprocess.Popen(_profile_cmd(url, "--worker", w, "--group", "3"),
                              env=factory_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO)
             for w in ("w1", "w2")]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    reports = [json.loads(out) for out, _ in outs]
    assert reports[0]["campaign"] == reports[1]["campaign"]
    measured = [r["measured"] for r in reports]
    assert sum(measured) == 60, measured  # no task measured by both
    # (the tiny model has few (subgraph, shape) units: one worker may take them all)
    assert len(_rows(url)) == 60

    with open_store(url) as s:
        cid = s.campaign_id(reports[0]["campaign"])
        assert s.campaign_progress(cid).to_dict() == {
            "pending": 0, "claimed": 0, "done": 60, "failed": 0, "cancelled": 0, "total": 60}
        by_worker = list(s.task_workers(cid).values())
    assert set(by_worker) <= {"w1", "w2"}
    assert [by_worker.count("w1"), by_worker.count("w2")] == measured


# ----------------------------------------------------------------------------------- CLI


def test_profile_cli_runs_a_factory_and_prints_a_summary(sqlite_url, factory_env, monkeypatch):
    monkeypatch.syspath_prepend(factory_env["PYTHONPATH"].split(os.pathsep)[0])
    res = CliRunner().invoke(cli, ["profile", "tests.factories:tiny", "--db", sqlite_url,
                                   "--shape", SHAPE, "--precisions", "bf16", "--threads", "1",
                                   "--quick"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("model     tiny (id 1, ")
    assert lines[2] == "subgraphs 7 pieces, 4 unique"
    assert lines[3].startswith("tasks     20 total: 20 measured now, 0 already in the store, "
                               "0 failed")
    assert lines[4].split() == ["shape", "baseline_ms"]


@pytest.mark.parametrize(("args", "message"), [
    (["profile", "--shape", "batch=1,sq=4"],
     "Error: cannot parse shape 'batch=1,sq=4': unknown field 'sq'; known: batch, seq, kv, phase\n"),
    (["profile", "/no/such/model"],
     "Error: cannot load model '/no/such/model': not a directory and not package.module:factory\n"),
    (["profile", "no_such_pkg_q:f"],
     "Error: cannot import 'no_such_pkg_q' for 'no_such_pkg_q:f': No module named 'no_such_pkg_q'\n"),
    (["profile", "tests.factories:tiny", "--device", "tpu"],
     "Error: unknown device kind 'tpu'; known: cpu, cuda, hpu\n"),
])
def test_profile_cli_errors_are_one_line(args, message, sqlite_url, factory_env, monkeypatch):
    monkeypatch.syspath_prepend(factory_env["PYTHONPATH"].split(os.pathsep)[0])
    res = CliRunner().invoke(cli, [*args, "--db", sqlite_url])
    assert res.exit_code == 1
    assert res.output == message


def test_profile_has_help_and_a_docs_section():
    res = CliRunner().invoke(cli, ["profile", "--help"])
    assert res.exit_code == 0
    assert "Profile MODEL on this machine" in res.output
    assert "--worker NAME" in res.output
    docs = (REPO / "docs" / "cli.md").read_text()
    assert "## Profiling: `hwcost profile`" in docs
    assert (REPO / "docs" / "profiling.md").exists()


def test_a_worker_fails_the_tasks_no_kernel_here_can_deploy_with_the_reason(store):
    """int4_wo's CPU kernel takes input widths in multiples of 32: on a hidden-48 model every
    config putting int4_wo on a 48-wide layer is undeployable here. A worker marks exactly
    those tasks failed, with the kernel's reason, and never done; the rest are measured."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, use_cache=False)
    lm = LoadedModel("tiny48", LlamaForCausalLM(cfg).eval(), None, "test")
    rep = _quick(store, lm, precisions="fp32,int4_wo", worker="w1")
    # q,k,v: 7 of 8 configs; o_proj 1 of 2; gate,up,down: the 6 with int4 on gate or up;
    # lm_head 1 of 2 (down_proj, 64 wide, deploys)
    assert rep.tasks == 8 + 2 + 8 + 2
    assert rep.left == {**rep.left, "failed": 15, "done": 5}, rep.left
    assert rep.failed == 15 and rep.measured == 5
    assert any("int4_wo needs the input width to be a multiple of 32" in e for e in rep.errors)
    done = store.measured_configs(rep.device, SHAPE, [i.signature for i in
                                                      partition(lm.model, lm.inputs_for(SHAPE))
                                                      .subgraph_infos()], allow_unstable=True)
    assert sum(len(v) for v in done.values()) == 5


def _spy_measure(monkeypatch, stop_at: int | None = None) -> list:
    """Record every group the campaign times (signature, configs, share, timings), the real
    harness running underneath; with ``stop_at``, the campaign is interrupted at that call."""
    from hwcost.profiles import campaign

    calls, real = [], campaign._Measurer.measure

    def measure(self, signature, shape, cfgs, share=1):
        if stop_at is not None and len(calls) == stop_at:
            raise KeyboardInterrupt
        out = real(self, signature, shape, cfgs, share)
        calls.append((signature, tuple(cfgs), share, out))
        return out

    monkeypatch.setattr(campaign._Measurer, "measure", measure)
    return calls


def test_passes_time_every_group_at_several_moments_and_store_their_mean(sqlite_url,
                                                                         monkeypatch):
    """Each group is timed once per pass (alternate passes in reverse order), each time with
    its share of the samples; its rows are the mean of its passes, and so is the in-group
    baseline each gain is taken against."""
    from dataclasses import replace

    store = open_store(sqlite_url)
    calls = _spy_measure(monkeypatch)
    rep = _quick(store, _tiny(2), model_latency=False,
                 timing=replace(QUICK_TIMING, passes=3, min_samples=6))
    groups = len(calls) // 3
    assert groups >= 4 and len(calls) == 3 * groups and rep.measured == 20 == rep.tasks
    order = [c[:2] for c in calls]
    assert order[groups:2 * groups] == order[:groups][::-1] == order[2 * groups:][::-1]
    assert {c[2] for c in calls} == {3}
    # each pass took its share: 6 samples over 3 passes, 2 each, but at least 3
    assert all(t.n_samples == 3 for c in calls for t in c[3].values())
    rows = {(r.signature, r.config): r for r in store.model_costs(
        rep.model_fingerprint, rep.device, SHAPE, allow_unstable=True)}
    for sig, cfgs, _, _ in calls[:groups]:
        passes = [c[3] for c in calls if c[:2] == (sig, cfgs)]
        base = ",".join(["fp32"] * len(cfgs[0].split(",")))
        for cfg in cfgs:
            row = rows[sig, cfg]
            assert row.median_us == pytest.approx(sum(p[cfg].median_us for p in passes) / 3)
            assert row.baseline_us == pytest.approx(sum(p[base].median_us for p in passes) / 3)
            assert row.n_samples == 9


def test_a_campaign_stopped_after_its_first_pass_keeps_it_and_a_rerun_adds_nothing(
        tmp_path, monkeypatch):
    from dataclasses import replace

    loaded, timing = _tiny(2), replace(QUICK_TIMING, passes=2)
    calls = _spy_measure(monkeypatch)
    _quick(open_store(f"sqlite:///{tmp_path / 'a.db'}"), loaded, model_latency=False,
           timing=timing)
    groups = len(calls) // 2
    store2 = open_store(f"sqlite:///{tmp_path / 'b.db'}")
    calls = _spy_measure(monkeypatch, stop_at=groups + 1)  # the second pass's second group
    with pytest.raises(KeyboardInterrupt):
        _quick(store2, loaded, model_latency=False, timing=timing)
    assert store2.measurement_count() == 20  # every row of the first pass
    rep = _quick(store2, loaded, model_latency=False, timing=timing)
    assert (rep.already, rep.measured) == (20, 0)


def test_a_pass_gets_its_share_of_the_samples_and_of_the_waiting_budget():
    from hwcost.profiles.campaign import TimingOptions
    from hwcost.profiles.passes import share_of
    from hwcost.profiles.stability import StabilityPolicy

    kw = TimingOptions(min_samples=15, max_seconds=4.0,
                       policy=StabilityPolicy(budget_s=30.0)).kwargs()
    assert share_of(kw, 1) is kw
    third = share_of(kw, 3)
    assert (third["min_samples"], third["max_seconds"], third["policy"].budget_s) == (5, 4 / 3, 10)
    assert third["policy"].max_spread == kw["policy"].max_spread  # the limits stay
    assert share_of(kw, 8)["min_samples"] == 3  # never under three samples
    # no policy given: the environment's default, its budget shared
    assert share_of({**kw, "policy": None}, 2)["policy"].budget_s == \
        StabilityPolicy.from_env().budget_s / 2


def _timing(samples, reason=""):
    from hwcost.profiles.bench import Timing, summarize

    med, half = summarize(samples)
    return Timing(med, half, len(samples), 1, stable=not reason, reason=reason,
                  samples_us=tuple(samples))


def test_merged_passes_average_the_level_and_judge_the_scatter_within_passes():
    """Two passes at levels 100 and 150 us (the machine wandered between them): the row is
    their mean, its spread the samples' scatter around their own pass's level (under 1 %),
    not the 50 % between passes, so the group stands. A pass whose few samples read over
    the spread limit alone does not refuse it; a pass refused for load does."""
    from hwcost.profiles.passes import merge_passes
    from hwcost.profiles.stability import StabilityPolicy

    policy = StabilityPolicy(max_spread=0.05)
    low = {"base": _timing([99, 100, 101]), "cfg": _timing([79, 80, 81])}
    high = {"base": _timing([148.5, 150, 151.5], reason="spread 5.5% > 5%"),
            "cfg": _timing([118.8, 120, 121.2]), "only_here": _timing([1, 1, 1])}
    m = merge_passes([low, high], policy)
    assert set(m) == {"base", "cfg"}  # timed in every pass
    assert m["base"].median_us == pytest.approx(125) and m["cfg"].median_us == pytest.approx(100)
    assert m["base"].rel_spread == pytest.approx(0.0075)  # the half-IQR of 0.99, 1, 1.01 twice
    assert m["base"].n_samples == 6 and len(m["cfg"].samples_us) == 6
    assert all(t.stable and not t.reason for t in m.values())
    busy = dict(low, base=_timing([99, 100, 101], reason="load 2.00 runnable tasks per CPU > 1.25"))
    assert {(t.stable, t.reason[:4]) for t in merge_passes([busy, high], policy).values()} == \
        {(False, "load")}
    wide = [{"base": _timing([a * level for a in (0.8, 1.0, 1.2)]), "cfg": _timing([79, 80, 81])}
            for level in (100, 150)]  # scattered by 20 % within each pass
    assert {t.reason for t in merge_passes(wide, policy).values()} == {"spread 15.0% > 5%"}
    assert merge_passes([low], policy) == low
    assert "samples_us" not in low["base"].to_dict()
