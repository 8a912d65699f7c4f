"""String-keyed factory of backends, mapped straight onto ``--device cpu|cuda|hpu``."""

from __future__ import annotations

from hwcost.profiles.backends.base import Backend
from hwcost.profiles.backends.cpu import CpuBackend
from hwcost.profiles.backends.cuda import CudaBackend
from hwcost.profiles.backends.hpu import HpuBackend

from hwcost.enums import DeviceKind
from hwcost.errors import NoSuchDevice

_BACKENDS: dict[str, type[Backend]] = {DeviceKind.CPU.value: CpuBackend, DeviceKind.CUDA.value: CudaBackend,
                                       DeviceKind.HPU.value: HpuBackend}


def backend_kinds() -> tuple[str, ...]:
    """The known device kinds."""
    return tuple(_BACKENDS)


def get_backend(kind: str | Backend) -> Backend:
    """The backend for ``kind`` (``cpu``, ``cuda``, ``cuda:1``, ``hpu``); a Backend passes
    through. Whether it can run here is ``available()``; this never raises for that."""
    if isinstance(kind, Backend):
        return kind
    name, _, index = str(kind).strip().lower().partition(":")
    if name not in _BACKENDS:
        raise NoSuchDevice(f"unknown device kind {kind!r}; known: {', '.join(_BACKENDS)}")
    if not index:
        return _BACKENDS[name]()
    if name == "cpu" or not index.isdigit():
        raise NoSuchDevice(f"bad device index in {kind!r}")
    return _BACKENDS[name](int(index))


def all_backends() -> list[Backend]:
    """One backend of every kind, available or not (``hwcost doctor`` lists them)."""
    return [cls() for cls in _BACKENDS.values()]
