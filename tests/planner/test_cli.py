"""``hwcost plan``, ``export-plan`` and the no-torch guarantee, through click's CliRunner."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from hwcost.planner.export import read_plan_document

from hwcost.app.main import cli
from hwcost.store import open_store

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_plan_prints_and_stores(tiny_sqlite, tmp_path):
    url, m = tiny_sqlite
    out = tmp_path / "plan.json"
    r = run("plan", m.name, "--device", m.device, "--shape", "batch=1,seq=16", "--max-loss-mse",
            "10%", "--pin", "lm_head=fp32", "--db", url, "-o", out)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith(f"plan 1: tiny on Test CPU (planner fixture) ({m.device[:12]}), "
                               "batch=1,seq=16,phase=prefill, objective time")
    assert "lm_head                          fp32" in r.output
    assert any(line.startswith("speedup       ") and "x predicted" in line for line in lines)
    assert ("measured      100% of the predicted gain rests on costs measured on Test CPU "
            "(planner fixture) (subgraph costs: 5 measured)") in lines
    assert any(line.startswith("solver        optimal in ") for line in lines)
    doc = read_plan_document(out).to_json()
    assert doc["data"]["plan_id"] == 1 and doc["data"]["layers"]["lm_head"] == "fp32"
    with open_store(url) as s:
        assert json.loads(s.get_plan(1).body)["data"]["layers"] == doc["data"]["layers"]


def test_plan_json(tiny_sqlite):
    url, m = tiny_sqlite
    r = run("plan", m.name, "--device", m.device, "--shape", m.shape, "--max-loss-mse", "0.001",
            "--group", "*.q_proj,*.k_proj", "--json", "--db", url)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["type"] == "hwcost.plan"
    d = doc["data"]
    assert d["predicted"]["loss_mse"] <= 0.001 and d["solver"]["status"] == "optimal"
    assert len({v for k, v in d["layers"].items() if k.endswith(("q_proj", "k_proj"))}) == 1


def test_infeasible_message(tiny_sqlite):
    url, m = tiny_sqlite
    with open_store(url) as s:
        lm = next(r.loss_mse for r in s.sensitivity_table(m.name).rows
                  if r.layer == "lm_head" and r.precision == "int8")
    r = run("plan", m.name, "--device", m.device, "--shape", m.shape, "--max-loss-mse", "1e-9",
            "--pin", "lm_head=int8", "--db", url)
    assert r.exit_code == 1
    assert r.output == (f"Error: no plan has predicted loss MSE <= 1e-09; the smallest "
                        f"achievable is {lm:.4g}\n")
    with open_store(url) as s:  # nothing stored
        assert s.models()[0].id == m.model_id
        from hwcost.errors import StoreError
        try:
            s.get_plan(1)
            raise AssertionError("an infeasible plan was stored")
        except StoreError:
            pass


def test_bad_input_errors(tiny_sqlite):
    url, m = tiny_sqlite
    base = ["plan", m.name, "--device", m.device, "--shape", m.shape, "--db", url]
    r = run(*base)
    assert r.exit_code == 1
    assert r.output == "Error: give --max-loss-mse (e.g. 0.01 or 10%), or --sweep N for the frontier\n"
    r = run(*base, "--max-loss-mse", "lots")
    assert r.output == ("Error: cannot read loss-MSE threshold 'lots': give a number such as 0.01 "
                        "or a percentage of the fastest plan's loss MSE such as 10%\n")
    r = run(*base, "--max-loss-mse", "1", "--pin", "lm_head")
    assert r.output == "Error: cannot read pin 'lm_head': expected PATTERN=PRECISION, e.g. lm_head=fp32\n"
    r = run("plan", "nope", "--shape", m.shape, "--max-loss-mse", "1", "--db", url)
    assert r.exit_code == 1 and r.output.startswith("Error: no model 'nope' in the store")


def test_sweep_table_json_png(tiny_sqlite, tmp_path):
    url, m = tiny_sqlite
    png, js = tmp_path / "front.png", tmp_path / "front.json"
    r = run("plan", m.name, "--device", m.device, "--shape", m.shape, "--sweep", 6, "--plot", png,
            "-o", js, "--db", url)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["max_loss_mse", "loss_mse", "speedup", "low_layers", "status"]
    assert len(lines) == 2 + 6 + 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = json.loads(js.read_text())["points"]
    speeds = [p["speedup"] for p in points]
    assert speeds == sorted(speeds) and speeds[0] == 1.0 and speeds[-1] > 1.2
    assert all(p["loss_mse"] <= p["max_loss_mse"] * (1 + 1e-12) for p in points)


def test_export_formats(tiny_sqlite, tmp_path):
    url, m = tiny_sqlite
    r = run("plan", m.name, "--device", m.device, "--shape", m.shape, "--max-loss-mse", "30%",
            "--precisions", "fp32,bf16", "--db", url)
    assert r.exit_code == 0, r.output
    r = run("export-plan", "1", "--format", "inc", "--db", url)
    assert r.exit_code == 1  # no fp8 layer: INC would have nothing to do (test_inc.py: the rest)
    assert r.output == ("Error: the plan has no fp8_e4m3 layer: there is nothing for INC to "
                        "quantize\n")
    with open_store(url) as s:
        body = json.loads(s.get_plan(1).body)
    layers = body["data"]["layers"]
    r = run("export-plan", "1", "--format", "csv", "--db", url)
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert [row["layer"] for row in rows] == list(layers)
    assert {row["layer"]: row["precision"] for row in rows} == layers
    assert abs(sum(float(row["loss_share"] or 0) for row in rows) - 1.0) < 1e-4  # 6 digits each
    total = body["data"]["predicted"]["loss_mse"]
    assert abs(sum(float(row["loss_mse"] or 0) for row in rows) - total) <= 1e-4 * total
    r = run("export-plan", "1", "--format", "md", "--db", url)
    assert r.output.splitlines()[2].startswith("| layer | precision | subgraph | gain_us |")
    assert len(r.output.splitlines()) == 4 + len(layers)
    out = tmp_path / "plan.json"
    r = run("export-plan", "1", "--format", "json", "-o", out, "--db", url)
    assert r.output == f"written to {out}\n"
    assert read_plan_document(out).to_json()["data"]["layers"] == layers
    r = run("export-plan", str(out), "--format", "torchao")
    casts = json.loads(r.output)["data"]["casts"]
    assert casts == {k: "bfloat16" for k, v in layers.items() if v == "bf16"}
    r = run("export-plan", "99", "--db", url)
    assert r.output == "Error: no plan 99 in the store\n"


def test_every_command_has_help_and_docs():
    doc = (ROOT / "docs" / "cli.md").read_text()
    for name in ("plan", "validate", "export-plan"):
        cmd = cli.commands[name]
        assert cmd.help and len(cmd.help) > 40
        assert f"hwcost {name}" in doc


NO_TORCH = r"""
import sys
import hwcost.planner, hwcost
from click.testing import CliRunner
from hwcost.app.main import cli
args = sys.argv[1:]
r = CliRunner().invoke(cli, args, catch_exceptions=False)
assert r.exit_code == 0, r.output
png = args[-1].split("///", 1)[1] + ".png"  # beside the store file, never in the repo
r = CliRunner().invoke(cli, args[:-2] + ["--sweep", "4", "--plot", png, "--db", args[-1]])
assert r.exit_code == 0, r.output
r = CliRunner().invoke(cli, ["export-plan", "1", "--format", "torchao", "--db", args[-1]])
assert r.exit_code == 0, r.output
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchao", "transformers"))
print("HEAVY", heavy)
"""


def test_plan_never_imports_torch(tiny_sqlite):
    url, m = tiny_sqlite
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "plan", m.name, "--device", m.device, "--shape", m.shape,
         "--max-loss-mse", "10%", "--db", url],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


def test_validate_bad_plan_refs(tiny_sqlite, tmp_path):
    url, _ = tiny_sqlite
    r = run("validate", "7", "--db", url)
    assert r.exit_code == 1 and r.output == "Error: no plan 7 in the store\n"
    r = run("validate", "nothere.json", "--db", url)
    assert r.output == ("Error: no plan 'nothere.json': give a plan id from the store or a plan "
                        "JSON file\n")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "hwcost.plan", "version": 1, "data": {}}))
    r = run("validate", bad, "--db", url)
    assert r.output == "Error: plan field 'model' is missing or not a dict\n"
