"""The backend interface and the deployment half of the precision registry.

A :class:`Backend` is one device kind (cpu, cuda, hpu). It holds one :class:`Deployment`
per precision it can run: the kernel that computes a linear layer in that precision and the
dtype its weights are stored in. ``profiles.precisions`` holds the matching emulation, and
``tests/profiles/test_backends.py`` checks the two agree on every available backend.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from hwcost.profiles.backends.interact import Dataflow, link_deployed
from hwcost.profiles.backends.layers import is_linear, linear_params
from hwcost.profiles.experts import DeployedExperts, is_experts
from torch import nn

from hwcost.errors import BackendUnavailable, UnknownLayer, UnknownPrecision
from hwcost.precision import Precision, parse_precision

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
    verification: str = ""
    """Where this backend's kernels were last checked on real hardware, or plainly that they
    were not (``hwcost doctor`` prints it)."""

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

    def check_dtype(self, dtype: torch.dtype) -> None:  # noqa: B027 - every dtype on CPU
        """Raise UnsupportedPrecision (with the reason) when the device cannot run a model
        stored in ``dtype`` (bf16 on a GPU older than Ampere)."""

    def require(self) -> None:
        """Raise BackendUnavailable (with the reason) unless this backend can run here."""
        ok, why = self.available()
        if not ok:
            raise BackendUnavailable(f"backend {self.kind} is unavailable: {why}")

    def deploy_linear(self, linear: nn.Module, precision: Precision | str) -> nn.Module:
        """A new module computing ``linear`` in ``precision`` with this backend's real kernel,
        weights stored in the low-precision dtype on :attr:`device`."""
        if is_experts(linear):  # an MoE block's experts: one precision for all of them
            dep = self.deployment(precision)
            self.require()
            return DeployedExperts(linear, dep.build, dep.precision, dep.kernel)
        if not is_linear(linear):
            raise UnknownLayer(f"cannot deploy a {type(linear).__name__}: only nn.Linear and "
                               "transformers Conv1D layers have a precision")
        dep = self.deployment(precision)
        self.require()
        w, b = linear_params(linear)
        out = dep.build(w.float(), None if b is None else b.float())
        out.boundary_dtype = w.dtype  # what the model around it computes in
        return out

    def apply_precisions(self, module: nn.Module,
                         layer_precisions: Mapping[str, Precision | str],
                         dataflow: Dataflow | None = None) -> nn.Module:
        """See :func:`apply_precisions`."""
        return apply_precisions(module, layer_precisions, self, dataflow)

    def deployed(self, module: nn.Module, layer_precisions: Mapping[str, Precision | str],
                 dataflow: Dataflow | None = None):
        """See :func:`deployed` (a context manager: in place, restored on exit)."""
        return deployed(module, layer_precisions, self, dataflow)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind}>"


def _backend(backend: Backend | str) -> Backend:
    if isinstance(backend, str):
        from hwcost.profiles.backends.registry import get_backend

        return get_backend(backend)
    return backend


def check_plan(module: nn.Module, layer_precisions: Mapping[str, Precision | str],
               backend: Backend | str) -> list[tuple[str, Precision]]:
    """``[(name, precision)]`` after checking every name and precision (UnknownLayer,
    UnknownPrecision) and that the backend can run here (BackendUnavailable); nothing is built."""
    backend = _backend(backend)
    named = dict(module.named_modules())
    plan: list[tuple[str, Precision]] = []
    for name, prec in layer_precisions.items():
        if name not in named or name == "":
            raise UnknownLayer(f"no layer named {name!r} in {type(module).__name__}")
        if not (is_linear(named[name]) or is_experts(named[name])):
            raise UnknownLayer(f"layer {name!r} is a {type(named[name]).__name__}, not a linear "
                               "layer (nn.Linear or Conv1D)")
        plan.append((name, backend.deployment(prec).precision))
    backend.require()
    return plan


def already_deployed(layer: nn.Module, precision: Precision, backend: Backend) -> bool:
    """True when ``layer`` already computes what its deployment would: a float format
    (fp32/bf16/fp16) whose weights are stored in that dtype on the backend's device (a bf16
    model's ``nn.Linear`` *is* the bf16 deployment). Such a layer is left as it is, so a model
    loaded in its baseline dtype deploys its baseline without a second copy of any weight."""
    if precision not in (Precision.FP32, Precision.BF16, Precision.FP16):
        return False
    w = getattr(layer, "weight", None)
    if is_experts(layer):
        w = layer.gate_up_proj
    dep = backend.deployment(precision)
    return (isinstance(w, torch.Tensor) and w.dtype == dep.weight_dtype
            and w.device.type == backend.device.type and (is_linear(layer) or is_experts(layer)))


def deploy_layers(module: nn.Module, layer_precisions: Mapping[str, Precision | str],
                  backend: Backend | str, dataflow: Dataflow | None = None
                  ) -> dict[str, nn.Module]:
    """``{name: deployed layer}`` for each named layer that its precision changes (see
    :func:`already_deployed`), built one at a time with the backend's real kernels. The
    module itself is not touched; :func:`swapped` puts the layers in.

    The layers are linked as a deployment runs them
    (:func:`profiles.backends.interact.link_deployed`): siblings reading one tensor in one
    format convert it once; with ``dataflow`` (:func:`~profiles.backends.interact.
    trace_dataflow` of ``module``) float chains keep their format between layers."""
    backend = _backend(backend)
    out: dict[str, nn.Module] = {}
    for name, prec in check_plan(module, layer_precisions, backend):
        layer = module.get_submodule(name)
        if not already_deployed(layer, prec, backend):
            out[name] = backend.deploy_linear(layer, prec)
    link_deployed(out, dataflow)
    return out


def _set(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = parent.get_submodule(child)
    setattr(parent, child, new)
    return old


@contextmanager
def swapped(module: nn.Module, replacements: Mapping[str, nn.Module]) -> Iterator[nn.Module]:
    """Put each ``{name: new module}`` into ``module`` in place for the ``with`` block and put
    the originals back on exit (also on an exception). Yields ``module`` itself.

    This is the one primitive every deployment builds on: nothing else of the model is copied,
    so a plan on an 8B model costs only its deployed layers (an int8 layer a quarter of its
    fp32 weights). Do not nest two swaps of the same layer other than as a stack.
    """
    originals: list[tuple[str, nn.Module]] = []
    try:
        for name, new in replacements.items():
            originals.append((name, _set(module, name, new)))
        yield module
    finally:
        for name, old in reversed(originals):
            _set(module, name, old)


@contextmanager
def deployed(module: nn.Module, layer_precisions: Mapping[str, Precision | str],
             backend: Backend | str, dataflow: Dataflow | None = None) -> Iterator[nn.Module]:
    """Deploy the named layers IN PLACE for the ``with`` block; restore the originals on exit.

    >>> with deployed(model, {"model.layers.0.mlp.up_proj": "int8"}, "cpu") as m:
    ...     m(**inputs)          # runs torch._int_mm in that layer
    >>> # model is back to its own layers here

    Names are relative to ``module``; every name and precision is checked before anything is
    built (UnknownLayer, UnknownPrecision, BackendUnavailable). Layers already stored in their
    float precision are left as they are (:func:`already_deployed`). Extra memory: the deployed
    layers only. The deployed layers are dropped on exit.
    """
    layers = deploy_layers(module, layer_precisions, backend, dataflow)
    with swapped(module, layers) as m:
        yield m


def apply_precisions(module: nn.Module, layer_precisions: Mapping[str, Precision | str],
                     backend: Backend | str, dataflow: Dataflow | None = None) -> nn.Module:
    """A *view* of ``module`` with each named layer replaced by its deployment.

    The view shares every parameter and every module not on the path to a deployed layer
    with ``module`` (only the containers on those paths are shallow-copied), so ``module``
    stays as it was and the view costs the deployed layers only: no copy of the weights.
    Use it where two configurations must live side by side; :func:`deployed` (in place,
    restored on exit) where one at a time will do. Checks as :func:`deployed`.
    """
    layers = deploy_layers(module, layer_precisions, backend, dataflow)
    return shallow_replace(module, layers)


def shallow_replace(module: nn.Module, replacements: Mapping[str, nn.Module]) -> nn.Module:
    """A shallow copy of ``module`` with ``{name: new module}`` put in: each container on the
    path to a replaced name is copied (its own ``_modules`` dict), all else is shared."""
    if not replacements:
        return module
    by_child: dict[str, dict[str, nn.Module]] = {}
    here: dict[str, nn.Module] = {}
    for name, new in replacements.items():
        head, _, rest = name.partition(".")
        if rest:
            by_child.setdefault(head, {})[rest] = new
        else:
            here[head] = new
    out = copy.copy(module)
    out._modules = dict(module._modules)
    for head, new in here.items():
        out._modules[head] = new
    for head, sub in by_child.items():
        out._modules[head] = shallow_replace(module._modules[head], sub)
    return out
