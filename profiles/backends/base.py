"""The backend interface and the deployment half of the precision registry.

A :class:`Backend` is one device kind (cpu, cuda, hpu). It holds one :class:`Deployment`
per precision it can run: the kernel that computes a linear layer in that precision and the
dtype its weights are stored in. ``profiles.precisions`` holds the matching emulation, and
``tests/profiles/test_backends.py`` checks the two agree on every available backend.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from hwcost.errors import BackendUnavailable, UnknownLayer, UnknownPrecision
from hwcost.precision import Precision, parse_precision
from profiles.backends.layers import is_linear, linear_params

Builder = Callable[[torch.Tensor, "torch.Tensor | None"], nn.Module]
"""Builds a deployed layer from a weight ``[out, in]`` and an optional bias."""


@dataclass(frozen=True)
class Deployment:
    """How one precision runs on one backend.

    ``kernel`` names the real kernel (shown by ``hwcost doctor``); ``weight_dtype`` is the
    dtype the weights are stored in; ``emulated`` is True where the device has no unit for
    the format and the kernel upcasts (fp8 on a CPU): such a precision is still deployed and
    measured, and is expected to be slower than the baseline.
    """

    precision: Precision
    kernel: str
    weight_dtype: torch.dtype
    build: Builder
    emulated: bool = False


class Backend(ABC):
    """One device kind: whether it can run here, its precisions, how to deploy and sync."""

    kind: str = ""

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """``(usable, reason)``: reason says why not (or what was found when usable)."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """The torch device deployed layers live on."""

    @abstractmethod
    def deployments(self) -> dict[Precision, Deployment]:
        """The deployment registry of this backend, one entry per precision."""

    def synchronize(self) -> None:  # noqa: B027 - a no-op default, overridden by accelerators
        """Wait until queued device work is done (a no-op on CPU)."""

    def default_threads(self) -> int | None:
        """Host threads to time with; None to leave torch's setting as it is."""
        return None

    def fp8_max(self) -> float | None:
        """The largest fp8 e4m3 value this device's kernels use (None: the format's 448)."""
        return None

    @property
    def precisions(self) -> tuple[Precision, ...]:
        return tuple(self.deployments())

    def deployment(self, precision: Precision | str) -> Deployment:
        """The registry entry for ``precision``; UnknownPrecision if this backend lacks it."""
        p = parse_precision(precision)
        table = self.deployments()
        if p not in table:
            known = ", ".join(x.value for x in table)
            raise UnknownPrecision(f"backend {self.kind} cannot deploy {p.value}; it has: {known}")
        return table[p]

    def require(self) -> None:
        """Raise BackendUnavailable (with the reason) unless this backend can run here."""
        ok, why = self.available()
        if not ok:
            raise BackendUnavailable(f"backend {self.kind} is unavailable: {why}")

    def deploy_linear(self, linear: nn.Module, precision: Precision | str) -> nn.Module:
        """A new module computing ``linear`` in ``precision`` with this backend's real kernel,
        weights stored in the low-precision dtype on :attr:`device`."""
        if not is_linear(linear):
            raise UnknownLayer(f"cannot deploy a {type(linear).__name__}: only nn.Linear and "
                               "transformers Conv1D layers have a precision")
        dep = self.deployment(precision)
        self.require()
        w, b = linear_params(linear)
        return dep.build(w.float(), None if b is None else b.float())

    def apply_precisions(self, module: nn.Module,
                         layer_precisions: Mapping[str, Precision | str]) -> nn.Module:
        """See :func:`apply_precisions`."""
        return apply_precisions(module, layer_precisions, self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind}>"


def apply_precisions(module: nn.Module, layer_precisions: Mapping[str, Precision | str],
                     backend: Backend | str) -> nn.Module:
    """A deep copy of ``module`` with each named layer replaced by its deployment.

    ``layer_precisions`` maps layer names relative to ``module`` (as in
    ``module.named_modules()``) to precisions; layers not named keep their modules. Every
    name is checked before anything is built, so a bad name fails fast with UnknownLayer.
    """
    if isinstance(backend, str):
        from profiles.backends.registry import get_backend

        backend = get_backend(backend)
    named = dict(module.named_modules())
    plan: list[tuple[str, Precision]] = []
    for name, prec in layer_precisions.items():
        if name not in named or name == "":
            raise UnknownLayer(f"no layer named {name!r} in {type(module).__name__}")
        if not is_linear(named[name]):
            raise UnknownLayer(f"layer {name!r} is a {type(named[name]).__name__}, not a linear "
                               "layer (nn.Linear or Conv1D)")
        plan.append((name, backend.deployment(prec).precision))
    backend.require()
    out = copy.deepcopy(module)
    for name, prec in plan:
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, backend.deploy_linear(parent.get_submodule(child), prec))
    return out
