"""``hwcost doctor``: every backend listed, usable or not and why, with its kernels."""

from __future__ import annotations

import json

from click.testing import CliRunner
from hwcost.profiles.backends import get_backend

import hwcost.app.doctor as doctor
from hwcost.app.main import cli


def test_doctor_lists_every_backend_with_reason_and_kernels():
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("torch=") and "torchao=" in lines[0]
    assert "neural-compressor=" in lines[0]
    for kind in ("cpu", "cuda", "hpu"):
        backend = get_backend(kind)
        ok, why = backend.available()
        header = f"{kind}: {'usable' if ok else 'unavailable'} - {why}"
        assert header in lines
        start = lines.index(header) + 1
        listed = [line.split()[0] for line in lines[start:start + len(backend.precisions)]]
        assert listed == [p.value for p in backend.precisions]
    assert "cpu: usable - " in result.output
    fp8 = next(line for line in lines if line.strip().startswith("fp8_e4m3  float8_e4m3fn  "
                                                                  "torch._scaled_mm"))
    assert fp8.endswith("[emulated: no native unit, measured slower]")


def test_doctor_json():
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.output)
    kinds = {b["kind"]: b for b in report["backends"]}
    assert set(kinds) == {"cpu", "cuda", "hpu"}
    cpu = kinds["cpu"]
    assert cpu["usable"] is True
    assert [(p["precision"], p["weight_dtype"]) for p in cpu["precisions"]] == [
        ("fp32", "float32"), ("bf16", "bfloat16"), ("int8", "int8"),
        ("fp8_e4m3", "float8_e4m3fn"), ("int8_wo", "int8"), ("int4_wo", "uint8")]
    assert report["versions"]["torch"]
    for b in report["backends"]:
        assert b["usable"] or b["reason"]


def test_doctor_without_torch_says_so(monkeypatch):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda pkg: None if pkg == "torch" else real(pkg))
    report = doctor.diagnose()
    assert report["versions"]["torch"] is None
    assert [(b["kind"], b["usable"], b["reason"]) for b in report["backends"]] == [
        (k, False, "torch is not installed (pip install 'hwcost[torch]')")
        for k in ("cpu", "cuda", "hpu")]


def test_doctor_says_plainly_which_backends_never_ran_on_their_hardware():
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    kinds = {b["kind"]: b for b in json.loads(result.output)["backends"]}
    assert kinds["cuda"]["verification"].startswith("UNVERIFIED: ")
    assert "bench/accel_check.sh" in kinds["cuda"]["verification"]
    assert kinds["hpu"]["verification"].startswith("UNVERIFIED: ")
    text = CliRunner().invoke(cli, ["doctor"]).output
    assert "  UNVERIFIED: written against the documented torch APIs" in text
