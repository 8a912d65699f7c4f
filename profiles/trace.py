"""One forward pass with hooks on every module: each call's inputs, output and the call tree.

The partitioner reads the data flow from it (``profiles.partition``); the helpers here name a
call's *main* tensor (the first tensor argument, or ``hidden_states``/``input_ids``/...) and
compare tensors by identity or exact value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from hwcost.profiles.experts import experts_shape, is_experts
from torch import nn

from hwcost.errors import PartitionError
from hwcost.store import SlotInfo


def _conv1d_type() -> tuple[type, ...]:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for plain torch models
        return ()
    return (Conv1D,)


QUANTIZABLE_TYPES: tuple[type, ...] = (nn.Linear, *_conv1d_type())
"""Layer types that get a precision slot: ``nn.Linear`` (and subclasses) and GPT-2's Conv1D."""


def quantizable(m: nn.Module) -> bool:
    """Whether ``m`` is a layer the planner assigns a precision to (also the fused experts of
    an MoE block: one grouped slot, see ``profiles.experts``)."""
    return isinstance(m, QUANTIZABLE_TYPES) or is_experts(m)


def slot_info(m: nn.Module) -> SlotInfo:
    """Structure of one quantizable layer. Conv1D stores its weight as ``[in, out]``."""
    if is_experts(m):
        n, k, h, inner = experts_shape(m)
        return SlotInfo(type(m).__name__, h, h, False, experts=n, active=k, inner=inner)
    w = m.weight
    if isinstance(m, nn.Linear):
        fin, fout = m.in_features, m.out_features
    else:
        fin, fout = int(w.shape[0]), int(w.shape[1])
    return SlotInfo(type(m).__name__, int(fin), int(fout), getattr(m, "bias", None) is not None)


@dataclass
class Call:
    """One recorded module call."""

    index: int
    name: str
    module: nn.Module
    args: tuple
    kwargs: dict
    parent: int | None
    output: Any = None
    children: list[int] = field(default_factory=list)


def main_where(args: tuple, kwargs: dict) -> tuple[str, Any] | None:
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            return ("arg", i)
    for k in ("hidden_states", "input_ids", "inputs_embeds", "x", "input"):
        if isinstance(kwargs.get(k), torch.Tensor):
            return ("kw", k)
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            return ("kw", k)
    return None


def get_main(args: tuple, kwargs: dict, where: tuple[str, Any] | None) -> torch.Tensor | None:
    if where is None:
        return None
    return args[where[1]] if where[0] == "arg" else kwargs[where[1]]


def main_out(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict):  # transformers' ModelOutput: logits / last_hidden_state first
        for v in out.values():
            if isinstance(v, torch.Tensor):
                return v
    return None


def _aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """``a`` viewed in ``b``'s shape where they hold as many elements (a model that flattens
    tokens between modules, as OPT does, passes the same values in another shape)."""
    if a.shape == b.shape:
        return a
    if a.numel() == b.numel() and a.shape[-1:] == b.shape[-1:]:
        return a.reshape(b.shape)
    return None


def same(a: Any, b: Any) -> bool:
    """The same tensor, or equal values (up to a reshape that keeps the last dimension)."""
    if a is b:
        return a is not None
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dtype != b.dtype:
        return False
    a = _aligned(a, b)
    return a is not None and torch.equal(a, b)


def close(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    """Values equal within float32 rounding (up to the same reshape as :func:`same`)."""
    if b is None:
        return False
    a = _aligned(a, b)
    return a is not None and torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def residual_add(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x + t`` in ``x``'s shape (``t`` may come back flattened over tokens)."""
    return x + (t if t.shape == x.shape else t.reshape(x.shape))


class Trace:
    """Every module call of one forward pass, in call order, with the call tree.

    ``keep``: record only the calls of these module names, and only their inputs (not their
    outputs, not the call tree). That is what capturing the inputs of pieces needs, and it
    holds just the tensors at piece boundaries instead of every module's inputs and outputs
    (which at 8 x 2048 tokens on an 8B model is about 150 GB). The partitioner itself needs
    the full trace, and takes it at a short prefill (``profiles.campaign.cut_shape``).
    """

    def __init__(self, model: nn.Module, inputs: dict[str, Any],
                 keep: set[str] | frozenset[str] | None = None):
        self.calls: list[Call] = []
        self.by_name: dict[str, list[int]] = {}
        stack: list[int] = []
        names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        handles = []

        def pre(mod, args, kwargs):
            c = Call(len(self.calls), names.get(id(mod), "?"), mod, args, dict(kwargs),
                     stack[-1] if stack else None)
            if c.parent is not None:
                self.calls[c.parent].children.append(c.index)
            self.calls.append(c)
            self.by_name.setdefault(c.name, []).append(c.index)
            stack.append(c.index)

        def post(mod, args, kwargs, out):
            self.calls[stack.pop()].output = out

        def pre_kept(mod, args, kwargs):
            c = Call(len(self.calls), names.get(id(mod), "?"), mod, args, dict(kwargs), None)
            self.calls.append(c)
            self.by_name.setdefault(c.name, []).append(c.index)

        if keep is None:
            for m in {id(m): m for m in model.modules()}.values():
                handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(m.register_forward_hook(post, with_kwargs=True))
        else:
            for name in sorted(keep):
                m = model.get_submodule(name) if name else model
                handles.append(m.register_forward_pre_hook(pre_kept, with_kwargs=True))
        try:
            with torch.no_grad():
                self.output = model(**inputs)
        finally:
            for h in handles:
                h.remove()
        if not self.calls:
            raise PartitionError("the model ran no module calls")
        self.model, self._inputs = model, inputs

    def reaches(self, c: Call, parent: Call) -> bool:
        """Whether ``c``'s output reaches ``parent``'s main output: one more pass with ``c``'s
        output perturbed (random noise of its own scale), comparing ``parent``'s output. An
        output that cannot be perturbed (not a float tensor) counts as reaching it."""
        seen: list[torch.Tensor | None] = []
        gen = torch.Generator(device="cpu").manual_seed(0)

        def bump(_m, _args, out):
            t = main_out(out)
            if t is None or not t.is_floating_point():
                return None
            noise = torch.randn(t.shape, generator=gen).to(t.device, t.dtype)
            new = t + noise * (t.abs().mean() + 1.0)
            if isinstance(out, torch.Tensor):
                return new
            if isinstance(out, tuple) and out and out[0] is t:
                return (new, *out[1:])
            return None

        def grab(_m, _args, out):
            seen.append(main_out(out))

        h1 = c.module.register_forward_hook(bump)
        h2 = parent.module.register_forward_hook(grab)
        try:
            with torch.no_grad():
                self.model(**self._inputs)
        finally:
            h1.remove()
            h2.remove()
        if main_out(c.output) is None or not main_out(c.output).is_floating_point():
            return True
        before = main_out(parent.output)
        return not seen or before is None or not close(seen[0], before)

    def call(self, name: str) -> Call:
        idx = self.by_name.get(name)
        if not idx:
            raise PartitionError(f"module {name!r} was not called at this shape")
        return self.calls[idx[0]]

    def slots(self, c: Call) -> list[Call]:
        """Quantizable layer calls inside ``c`` (itself included), in execution order."""
        if quantizable(c.module):
            return [c]
        return [s for i in c.children for s in self.slots(self.calls[i])]
