"""Two user journeys, end to end through the CLI, each as a person would run them:

- fleet campaign: several worker processes fill one PostgreSQL store for a model and several
  shapes; a worker killed midway loses nothing; the campaign reports progress and completion;
- sharing between teams: two stores measured separately are merged, provenance kept, conflicts
  reported and resolved by the documented rule.

The third, planning on a laptop from a bundle, is run as documented by
tests/e2e/test_docs_run.py (docs/journeys/laptop.md); that planning, a sweep and its plot never
import torch is tests/planner/test_cli.py::test_plan_never_imports_torch, and that they work
from a wheel installed without torch is tests/test_installed_wheel.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwcost.store import open_store

REPO = Path(__file__).resolve().parents[2]
SHAPES = ("batch=1,seq=8", "batch=2,seq=8")
PRECISIONS = "fp32,bf16,int8"

@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("journey")
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(d), str(REPO), e.get("PYTHONPATH", "")])
    e.pop("HWCOST_DB", None)
    e["HWCOST_TMP"] = str(d)
    return e


def hwcost(env: dict, *args: str, check: bool = True, timeout: int = 600
           ) -> subprocess.CompletedProcess:
    """Run the ``hwcost`` command as a user would, in its own process."""
    proc = subprocess.run([sys.executable, "-m", "hwcost.app", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"hwcost {' '.join(args)}\n{proc.stderr[-3000:]}"
    return proc


def worker(env: dict, url: str, name: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hwcost.app", "profile", "tests.factories:tiny", "--db", url,
           "--precisions", PRECISIONS, "--threads", "1", "--quick", "--group", "2",
           "--worker", name, "--campaign", "fleet", "--json", *extra]
    for s in SHAPES:
        cmd += ["--shape", s]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def campaign_status(env: dict, url: str) -> dict:
    return json.loads(hwcost(env, "campaign", "status", "fleet", "--db", url, "--json").stdout)


@pytest.fixture(scope="module")
def fleet(env, pg_module_url):
    """A shared PostgreSQL store, created once as a fleet's operator would."""
    hwcost(env, "db", "init", "--db", pg_module_url)
    return env, pg_module_url


def test_fleet_campaign_survives_a_killed_worker(fleet):
    env, url = fleet
    victim = worker(env, url, "card0")
    # let the victim claim and finish some work, then kill it without warning
    deadline = time.time() + 300
    with open_store(url) as s:
        while time.time() < deadline and victim.poll() is None:
            found = [c for c in s.campaign_statuses() if c.name == "fleet"]
            if found and found[0].progress.done >= 6:
                break
            time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    after_kill = campaign_status(env, url)
    assert not after_kill["complete"] and after_kill["workers"].get("card0", 0) >= 6

    # the rest of the fleet finishes; claims left by the dead worker are handed out again
    procs = [worker(env, url, f"card{i}", "--stale-after", "2") for i in (1, 2)]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        reports.append(json.loads(out))

    # the last worker standing says the campaign is complete
    assert any(r["note"].startswith("campaign fleet complete: ") for r in reports), reports
    st = campaign_status(env, url)
    assert st["complete"] and st["pending"] == st["claimed"] == st["failed"] == 0
    assert st["done"] == st["total"] == reports[0]["tasks"]
    # nothing lost (the victim's finished work stays), nothing measured twice
    assert st["workers"]["card0"] == after_kill["workers"]["card0"]
    assert sum(st["workers"].values()) == st["total"]
    with open_store(url) as s:
        assert s.measurement_count() == st["total"]
    text = hwcost(env, "campaign", "status", "fleet", "--db", url).stdout
    assert text.splitlines()[0] == "campaign  fleet (complete)"
    assert f"tasks     {st['total']}/{st['total']} done (100%)" in text


def test_two_teams_merge_their_stores(env, tmp_path):
    def measure(team: str) -> str:
        url = f"sqlite:///{tmp_path / (team + '.db')}"
        e = dict(env, HWCOST_HOST=team)
        hwcost(e, "profile", "tests.factories:tiny", "--db", url, "--shape", SHAPES[0],
               "--precisions", "fp32,bf16", "--threads", "1", "--quick")
        hwcost(e, "db", "export", "-o", str(tmp_path / f"{team}.parquet"), "--db", url)
        return url

    measure("team_a")
    measure("team_b")
    merged = f"sqlite:///{tmp_path / 'merged.db'}"
    first = json.loads(hwcost(env, "db", "import", str(tmp_path / "team_a.parquet"), "--db",
                              merged, "--json").stdout)
    second = json.loads(hwcost(env, "db", "import", str(tmp_path / "team_b.parquet"), "--db",
                               merged, "--json").stdout)
    m_a, m_b = first["tables"]["measurement"], second["tables"]["measurement"]
    assert m_a["new"] > 0 and m_a["conflicting"] == 0
    # same device, same keys, separately measured: every key conflicts (timings differ) or is
    # identical; the default rule keeps what the store had and reports each conflict
    assert m_b["new"] == 0 and m_b["conflicting"] + m_b["identical"] == m_a["new"]
    assert m_b["conflicting"] > 0
    with open_store(merged) as s, s.session() as ses:
        from sqlalchemy import select

        from hwcost.store.schema import Measurement

        rows = list(ses.scalars(select(Measurement)))
    assert len(rows) == m_a["new"]
    assert {r.host for r in rows} == {"team_a"}  # provenance kept: who measured what, when
    assert all(r.tool_version and r.measured_at for r in rows)
    # the documented alternative rule: take the later measurement of each conflicting key
    newer = json.loads(hwcost(env, "db", "import", str(tmp_path / "team_b.parquet"), "--db",
                              merged, "--on-conflict", "newer", "--json").stdout)
    assert newer["tables"]["measurement"]["conflicting"] == m_b["conflicting"]
    with open_store(merged) as s, s.session() as ses:
        hosts = [r.host for r in ses.scalars(select(Measurement))]
    assert hosts.count("team_b") == m_b["conflicting"]  # team B measured those later
