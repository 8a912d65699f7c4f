"""``hwcost profile MODEL --ray``: a local Ray cluster on this machine runs a small campaign
to completion, one normal --worker per CPU slot, on a real PostgreSQL store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hwcost.store import open_store

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_local_ray_cluster_runs_a_campaign_to_completion(store_url):
    pytest.importorskip("ray")
    if not store_url.startswith("postgresql"):
        pytest.skip("Ray workers share a PostgreSQL store")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HWCOST_DB": store_url, "RAY_USAGE_STATS_ENABLED": "0"}
    res = subprocess.run(
        [sys.executable, "-m", "hwcost.app", "profile", "tests.factories:tiny", "--ray",
         "--ray-workers", "2", "--threads", "1", "--shape", "batch=1,seq=8",
         "--precisions", "fp32,bf16", "--quick", "--campaign", "raytest", "--json"],
        env=env, capture_output=True, text=True, cwd=REPO, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(res.stdout)
    assert rep["campaign"] == "raytest" and rep["resource"] == "CPU"
    assert sorted(w["name"] for w in rep["workers"]) == ["ray0", "ray1"]
    assert all(w["returncode"] == 0 for w in rep["workers"]), rep["workers"]
    assert rep["left"]["done"] == rep["left"]["total"] == 20
    assert rep["note"] == "campaign raytest complete: 20/20 tasks done"
    assert sum(w["measured"] for w in rep["workers"]) == 20  # each task measured once
    with open_store(store_url) as s:
        assert s.measurement_count() == 20
    st = subprocess.run([sys.executable, "-m", "hwcost.app", "campaign", "status", "raytest",
                         "--json"], env=env, capture_output=True, text=True, cwd=REPO)
    status = json.loads(st.stdout)
    assert status["state"] == "complete"
    assert set(status["worker_stats"]) <= {"ray0", "ray1"}


def test_ray_needs_a_postgresql_store(sqlite_url):
    from click.testing import CliRunner

    from hwcost.app.main import cli

    res = CliRunner().invoke(cli, ["profile", "--ray", "--db", sqlite_url])
    assert res.exit_code == 1
    assert res.output == ("Error: --ray workers on many nodes share one store: give a PostgreSQL "
                          "URL (--db postgresql+psycopg://USER:PW@HOST/DB or $HWCOST_DB)\n")
