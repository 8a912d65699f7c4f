"""``hwcost doctor``: which backends can run here, why not, and with which kernels."""

from __future__ import annotations

from importlib import metadata

import click

from hwcost.app.options import emit_json, json_option

# Packages whose presence and version decide what can be profiled and how fast.
_PACKAGES = ("torch", "torchao", "transformers", "neural-compressor", "habana-torch-plugin",
             "triton")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def diagnose() -> dict:
    """Versions of the relevant packages and, per backend, whether it is usable (and why not),
    its precisions and the kernel each runs on. Works without torch (then nothing is usable)."""
    versions = {pkg: _version(pkg) for pkg in _PACKAGES}
    if versions["torch"] is None:
        why = "torch is not installed (pip install 'hwcost[torch]')"
        return {"versions": versions,
                "backends": [{"kind": k, "usable": False, "reason": why, "precisions": []}
                             for k in ("cpu", "cuda", "hpu")]}
    from hwcost.profiles.backends import all_backends

    backends = []
    for b in all_backends():
        usable, reason = b.available()
        precisions = [{"precision": d.precision.value, "kernel": d.kernel,
                       "weight_dtype": str(d.weight_dtype).removeprefix("torch."),
                       "emulated": d.emulated}
                      for d in b.deployments().values()]
        backends.append({"kind": b.kind, "usable": usable, "reason": reason,
                         "verification": b.verification, "precisions": precisions})
    return {"versions": versions, "backends": backends}


@click.command("doctor")
@json_option
def doctor_cmd(as_json: bool) -> None:
    """List the profiling backends (cpu, cuda, hpu): usable here or not and why, the
    precisions each deploys with the real kernel behind each, and the versions of torch,
    torchao, transformers and Intel Neural Compressor. Says plainly which backends were never
    run on their hardware (CUDA and Gaudi so far). Needs no store."""
    report = diagnose()
    if as_json:
        emit_json(report)
        return
    click.echo("  ".join(f"{k}={v or '-'}" for k, v in report["versions"].items()))
    for b in report["backends"]:
        state = "usable" if b["usable"] else "unavailable"
        click.echo(f"\n{b['kind']}: {state} - {b['reason']}")
        width = max((len(p["precision"]) for p in b["precisions"]), default=0)
        dwidth = max((len(p["weight_dtype"]) for p in b["precisions"]), default=0)
        for p in b["precisions"]:
            note = "  [emulated: no native unit, measured slower]" if p["emulated"] else ""
            click.echo(f"  {p['precision'].ljust(width)}  {p['weight_dtype'].ljust(dwidth)}  "
                       f"{p['kernel']}{note}")
        if b.get("verification"):
            click.echo(f"  {b['verification']}")
