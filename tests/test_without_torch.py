"""Without torch installed, the commands that run a model say so in one line (what to
install), and planning still works. Torch is hidden from a subprocess, as if not installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HIDE = ("import sys\n"
        "for name in ('torch', 'transformers', 'torchao', 'safetensors'):\n"
        "    sys.modules[name] = None  # import fails with ModuleNotFoundError, as if absent\n"
        "from hwcost.app.main import cli\n"
        "cli(sys.argv[1:], prog_name='hwcost')\n")


def _hwcost(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-c", HIDE, *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("args", [
    ["run"], ["profile", "--shape", "batch=1,seq=8"], ["sensitivity"], ["validate", "1"],
], ids=lambda a: a[0])
def test_model_commands_say_torch_is_missing_in_one_line(args, tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    res = _hwcost(*args, "--db", url, tmp_path=tmp_path)
    assert res.returncode == 1, res.stderr
    lines = (res.stdout + res.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"Error: `hwcost {args[0]}")  # `hwcost sensitivity run`
    assert "runs the model and needs torch, which is not installed: pip install torch" in lines[0]
    assert "Traceback" not in res.stderr
