"""The installed package, as a user gets it: a wheel built from the checkout, installed in a
fresh venv WITHOUT torch, plans from an imported bundle with no HWCOST_DATA set and a fresh
HOME (the device catalog comes with the wheel), and says in one line that `run` needs torch."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hwcost.store import open_store
from hwcost.store.exchange import export_bundle

ROOT = Path(__file__).resolve().parent.parent


def _sh(args: list[str], *, env: dict | None = None, cwd: Path | None = None,
        timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


@pytest.mark.slow
def test_wheel_without_torch_plans_from_an_imported_bundle():
    # a private folder: pytest's numbered tmp_path folders are pruned by concurrent sessions
    with tempfile.TemporaryDirectory(prefix="hwcost-wheel-") as d:
        _check_wheel(Path(d))


def _check_wheel(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "planner"))
    from conftest import populate  # the planner's fixture model, written through the Store API

    with open_store(f"sqlite:///{tmp_path / 'src.db'}") as src:
        m = populate(src)
        export_bundle(src, tmp_path / "costs.parquet")

    # no PYTHONPATH or VIRTUAL_ENV from this session: the checkout must not count as installed
    clean = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)),
             "LANG": "C.UTF-8"}
    wheels = tmp_path / "wheels"
    r = _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", str(wheels), str(ROOT)], env=clean)
    assert r.returncode == 0, r.stderr
    venv = tmp_path / "venv"
    assert _sh([sys.executable, "-m", "venv", str(venv)], env=clean).returncode == 0
    # --no-compile: byte-compiling every installed module (scipy, matplotlib, ortools) is
    # most of the install and proves nothing here
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile"]
    r = _sh([*pip, str(next(wheels.glob("hwcost-*.whl")))], env=clean)
    assert r.returncode == 0, r.stderr[-2000:]

    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    work = tmp_path / "work"  # not the checkout: nothing may come from it
    work.mkdir()
    hw = str(venv / "bin" / "hwcost")
    assert _sh([str(venv / "bin" / "python"), "-c", "import torch"], env=env,
               cwd=work).returncode != 0  # really without torch
    url = f"sqlite:///{work / 'store.db'}"
    r = _sh([hw, "db", "import", str(tmp_path / "costs.parquet"), "--db", url], env=env, cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    for device in (m.device[:12], "H100-SXM"):  # measured, and a catalog device (package data)
        r = _sh([hw, "plan", "tiny", "--device", device, "--shape", "batch=1,seq=16",
                 "--max-loss-mse", "10%", "--db", url], env=env, cwd=work)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.startswith("plan "), r.stdout
    r = _sh([hw, "run", "--db", url], env=env, cwd=work)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]  # one line
    assert "`hwcost run` runs the model and needs torch" in r.stderr
    assert not os.environ.get("HWCOST_DATA") or "HWCOST_DATA" not in env
