"""Interactions of a real deployment: what deployed layers share and where casts go.

A deployment as users run it is not a set of independent layers:

- **one input conversion per tensor**: layers that read the same tensor in the same format
  (q/k/v of attention, gate/up of an MLP) cast or quantize it once (:class:`InputShare`);
- **casts only at precision boundaries**: a bf16 layer whose output only reaches bf16 layers
  (through elementwise ops such as SiLU and ``*``) hands them bf16, not fp32;
- **a compiled graph** (``torch.compile``, inductor on CPU) fuses the conversions into their
  neighbours (:func:`compile_deployed`).

Which layer feeds which is read once per model from one forward pass (:func:`trace_dataflow`,
a ``TorchFunctionMode`` that follows each linear layer's output through elementwise ops);
:func:`link_deployed` then wires a set of deployed layers, in a whole model or in one
extracted piece, for one configuration.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from hwcost.profiles.backends.layers import CastLinear, DeployedLinear, InputShare, is_linear
from torch import nn
from torch.overrides import TorchFunctionMode

from hwcost.enums import DeploymentMode

DEPLOYMENTS = tuple(DeploymentMode.values())
"""Deployment variants: eager kernels, or the same kernels under ``torch.compile``."""

# Ops through which a value keeps its precision without changing what it means: a linear
# layer's output passing only through these to another linear layer can stay in its format.
_ELEMENTWISE = frozenset("""
add sub mul div neg __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__
__imul__ __truediv__ __rtruediv__ __itruediv__ __neg__ add_ mul_ sub_ div_ silu gelu relu
tanh sigmoid exp pow square sqrt rsqrt erf __pow__ view reshape view_as contiguous transpose
permute flatten unflatten squeeze unsqueeze expand clone detach __getitem__ split chunk
dropout silu_ relu_ gelu_ identity
""".split())


@dataclass(frozen=True)
class Dataflow:
    """Which linear layer's output reaches which linear layers' inputs.

    ``feeds[a]``: the layers whose input is computed from ``a``'s output through
    elementwise ops only; ``escapes``: the layers whose output also reaches some other op
    (attention, a norm's reduction, a residual stream, the model's output), which needs the
    model's dtype. Names are relative to the traced module.
    """

    feeds: Mapping[str, frozenset[str]]
    escapes: frozenset[str]

    def chain_ends(self, layer: str) -> frozenset[str]:
        return self.feeds.get(layer, frozenset())


class _Follow(TorchFunctionMode):
    """Propagates 'derived from linear layer X' through elementwise ops; any other op that
    reads such a value marks X as escaping."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: dict[int, tuple[weakref.ref, frozenset[str]]] = {}
        self.inside = 0  # > 0 while a linear layer's own forward runs
        self.feeds: dict[str, set[str]] = {}
        self.escapes: set[str] = set()

    def of(self, t: Any) -> frozenset[str]:
        if not isinstance(t, torch.Tensor):
            return frozenset()
        hit = self.sources.get(id(t))
        return hit[1] if hit is not None and hit[0]() is t else frozenset()

    def mark(self, t: Any, srcs: frozenset[str]) -> None:
        if isinstance(t, torch.Tensor) and srcs:
            self.sources[id(t)] = (weakref.ref(t), srcs)
        elif isinstance(t, (tuple, list)):
            for x in t:
                self.mark(x, srcs)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.inside:
            return out
        srcs: frozenset[str] = frozenset()
        for a in (*args, *kwargs.values()):
            srcs |= self.of(a)
            if isinstance(a, (tuple, list)):
                for x in a:
                    srcs |= self.of(x)
        if not srcs:
            return out
        name = getattr(func, "__name__", "")
        if name in _ELEMENTWISE:
            self.mark(out, srcs)
        elif isinstance(out, (torch.Tensor, tuple, list)):
            self.escapes |= srcs  # e.g. attention, matmul, reductions, cat
        return out


def trace_dataflow(model: nn.Module, inputs: Mapping[str, Any] | tuple) -> Dataflow:
    """One forward pass of ``model`` on ``inputs`` (kwargs, or a tuple of args) that records
    which linear layer feeds which (see :class:`Dataflow`). Structure only: any small input
    gives the same answer."""
    follow = _Follow()
    handles = []
    names = {id(m): n for n, m in model.named_modules() if is_linear(m)
             or isinstance(m, DeployedLinear)}

    def pre(module, args):
        name = names[id(module)]
        for a in args[:1]:
            for src in follow.of(a):
                follow.feeds.setdefault(src, set()).add(name)
        follow.inside += 1

    def post(module, args, out):
        follow.inside -= 1
        follow.mark(out, frozenset([names[id(module)]]))

    for n, m in model.named_modules():
        if id(m) in names and n:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
    try:
        with torch.no_grad(), follow:
            if isinstance(inputs, tuple):
                out = model(*inputs)
            else:
                out = model(**inputs)
        # whatever leaves the model unconsumed needs the model's dtype
        for t in (out if isinstance(out, (tuple, list)) else
                  getattr(out, "values", lambda: [out])()):
            follow.escapes |= follow.of(t)
    finally:
        for h in handles:
            h.remove()
    return Dataflow({k: frozenset(v) for k, v in follow.feeds.items()},
                    frozenset(follow.escapes))


@dataclass(frozen=True)
class Links:
    """What :func:`link_deployed` set up: the groups sharing one input conversion and the
    layers whose output stays in their format."""

    shared: tuple[tuple[str, ...], ...]
    chained: tuple[str, ...]


def link_deployed(layers: Mapping[str, nn.Module], dataflow: Dataflow | None = None
                  ) -> Links:
    """Wire the deployed ``layers`` (``{name from the model root: layer}``) of one
    configuration as one deployment runs them.

    Siblings (same parent module) with the same input format get one :class:`InputShare`
    (it converts a tensor once, only when they do read the same tensor). With a
    ``dataflow``, a float-format layer whose output feeds only layers deployed in the same
    format, and reaches nothing else, returns that format (no cast in between). Layers are
    changed in place: give each configuration its own (shallow) copies.
    """
    mods = {n: m for n, m in layers.items() if isinstance(m, DeployedLinear)}
    groups: dict[tuple[str, tuple], list[str]] = {}
    for n, m in mods.items():
        m.share, m.keep_dtype = None, None
        groups.setdefault((n.rpartition(".")[0], m.input_key), []).append(n)
    shared = []
    for members in groups.values():
        if len(members) > 1:
            share = InputShare()
            for n in members:
                mods[n].share = share
            shared.append(tuple(members))
    chained = []
    if dataflow is not None:
        for n, m in mods.items():
            ends = dataflow.chain_ends(n)
            if not isinstance(m, CastLinear) or n in dataflow.escapes or not ends:
                continue
            if m.dtype == (m.boundary_dtype or torch.float32):
                continue  # already the model's dtype: nothing to keep
            if all(isinstance(mods.get(e), CastLinear) and mods[e].dtype == m.dtype
                   for e in ends):
                m.keep_dtype = m.dtype
                chained.append(n)
    return Links(tuple(shared), tuple(chained))


def compile_deployed(fn: Callable) -> Callable:
    """``torch.compile`` (inductor) of a deployed model or a function running one.

    Every configuration is its own graph: the recompile limits are raised so that none falls
    back to eager silently, and errors are raised, not suppressed."""
    import torch._dynamo as dynamo

    for attr in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(dynamo.config, attr):
            setattr(dynamo.config, attr, max(getattr(dynamo.config, attr), 4096))
    dynamo.config.suppress_errors = False
    return torch.compile(fn, backend="inductor", dynamic=False)


def check_deployment(deployment: str) -> str:
    """``deployment`` if it is a known variant; ValueError otherwise."""
    if deployment not in DEPLOYMENTS:
        raise ValueError(f"unknown deployment {deployment!r}; known: {', '.join(DEPLOYMENTS)}")
    return deployment
