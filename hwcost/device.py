"""Identity of the local device: what it is and the software that changes its timings.

Computed without importing torch when torch is absent (laptop planning); with torch
present, CUDA and Gaudi details come from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from hwcost.enums import DeploymentMode, DeviceKind

# Software whose version changes measured latencies; part of the fingerprint.
_TIMING_PACKAGES = ("torch", "torchao", "neural-compressor", "habana-torch-plugin", "triton")
# CPU features that decide which low-precision kernels exist.
_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
              "amx_bf16", "amx_int8", "avx_vnni", "asimd", "sve", "bf16", "i8mm")


@dataclass(frozen=True)
class DeviceInfo:
    """A device and its software stack; ``fingerprint`` keys every measurement."""

    kind: str
    name: str
    threads: int | None = None
    flags: tuple[str, ...] = ()
    software: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        payload = json.dumps({"kind": self.kind, "name": self.name, "threads": self.threads,
                              "flags": sorted(self.flags), "software": self.software},
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "kind": self.kind, "name": self.name,
                "threads": self.threads, "flags": sorted(self.flags), "software": self.software}


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def software_stack() -> dict[str, str]:
    """Versions of the installed packages that change timings (absent ones left out)."""
    out = {"python": platform.python_version()}
    for pkg in _TIMING_PACKAGES:
        v = _version(pkg)
        if v:
            out[pkg] = v
    return out


def cpu_model_and_flags() -> tuple[str, tuple[str, ...]]:
    """CPU model name and the ISA flags of interest, from /proc/cpuinfo where there is one."""
    name, flags = platform.processor() or platform.machine(), set()
    info = Path("/proc/cpuinfo")
    if info.exists():
        text = info.read_text(errors="replace")
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if m:
            name = m.group(1).strip()
        m = re.search(r"^(flags|Features)\s*:\s*(.+)$", text, re.M)
        if m:
            flags = set(m.group(2).split()) & set(_CPU_FLAGS)
    return name, tuple(sorted(flags))


def cpu_threads() -> int:
    """Threads torch will use: torch's own setting when torch is importable, else the CPUs
    this process may run on."""
    if _version("torch"):
        import torch

        return torch.get_num_threads()
    return usable_cpus()


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


DEPLOYMENT_KEYS = {DeploymentMode.EAGER: "eager-linked", DeploymentMode.COMPILED: "compiled-linked"}
"""How deployed layers run, part of the fingerprint: eager kernels or ``torch.compile``, both
with linked layers (one input conversion per shared tensor, float chains without casts);
timings of an older, unlinked deployment never mix with these."""


def local_device(kind: str = "cpu", index: int = 0, deployment: str = "eager") -> DeviceInfo:
    """The fingerprintable identity of this machine's ``kind`` device (cpu, cuda or hpu).

    ``deployment="compiled"`` (the deployed model under ``torch.compile``) is a different
    device row: its timings differ, so they never mix with the eager ones."""
    sw = software_stack()
    if deployment not in DEPLOYMENT_KEYS:
        from hwcost.errors import HwcostError

        raise HwcostError(f"unknown deployment {deployment!r}; known: "
                          f"{', '.join(DeploymentMode.values())}")
    sw["deployment"] = DEPLOYMENT_KEYS[deployment]
    if kind == DeviceKind.CPU:
        name, flags = cpu_model_and_flags()
        return DeviceInfo(DeviceKind.CPU.value, name, cpu_threads(), flags, sw)
    if kind == DeviceKind.CUDA:
        import torch

        if not torch.cuda.is_available():
            from hwcost.errors import BackendUnavailable

            raise BackendUnavailable("no CUDA device visible to torch")
        props = torch.cuda.get_device_properties(index)
        sw["cuda"] = str(torch.version.cuda)
        sw["capability"] = f"{props.major}.{props.minor}"
        return DeviceInfo(DeviceKind.CUDA.value, props.name, None, (), sw)
    if kind == DeviceKind.HPU:
        try:
            import habana_frameworks.torch.hpu as hthpu
        except ImportError:
            from hwcost.errors import BackendUnavailable

            raise BackendUnavailable("habana_frameworks is not installed (Gaudi software stack)"
                                     ) from None
        if not hthpu.is_available():
            from hwcost.errors import BackendUnavailable

            raise BackendUnavailable("habana_frameworks found no Gaudi device")
        return DeviceInfo(DeviceKind.HPU.value, hthpu.get_device_name(), None, (), sw)
    from hwcost.errors import NoSuchDevice

    raise NoSuchDevice(f"unknown device kind {kind!r}; known: cpu, cuda, hpu")
