"""Quantizable layers of a model and the emulated quantization of chosen layers.

A quantizable layer is a module that computes ``y = x W^T (+ b)``: ``nn.Linear`` and the
``Conv1D`` of GPT-2-style Hugging Face models (which stores ``W`` transposed, ``[in, out]``).
Names are module names from the model root (``model.layers.0.mlp.up_proj``), the same names
the partition's manifest uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from hwcost.errors import SensitivityError
from hwcost.precision import Precision, parse_precision
from profiles.precisions import emulation


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for plain torch models
        return None
    return Conv1D


def is_quantizable(module: nn.Module) -> bool:
    """True for modules computing ``x W^T + b`` (nn.Linear, transformers Conv1D)."""
    conv1d = _conv1d_type()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as ``[out, in]`` (a view for Conv1D), the layout emulation expects."""
    if isinstance(module, nn.Linear):
        return module.weight
    return module.weight.t()


def quantizable_layers(model: nn.Module, layers: str | Sequence[str] = "auto"
                       ) -> dict[str, nn.Module]:
    """Name -> module of the layers to score, in module order.

    ``"auto"`` takes every quantizable layer; a list of names takes exactly those (each must
    name a quantizable module). Raises SensitivityError when nothing is left.
    """
    found = {name: m for name, m in model.named_modules() if name and is_quantizable(m)}
    if isinstance(layers, str):
        if layers != "auto":
            raise SensitivityError(f"layers must be 'auto' or a list of module names, not {layers!r}")
        chosen = found
    else:
        missing = [n for n in layers if n not in found]
        if missing:
            raise SensitivityError(f"not a quantizable layer of the model: {missing[0]!r} "
                                   f"(quantizable: nn.Linear and Conv1D modules, {len(found)} found)")
        chosen = {n: found[n] for n in layers}
    if not chosen:
        raise SensitivityError(f"model {type(model).__name__} has no quantizable layer "
                               "(nn.Linear or transformers Conv1D)")
    return chosen


@contextmanager
def emulated(model: nn.Module, layer_precisions: Mapping[str, Precision | str]) -> Iterator[None]:
    """Run ``model`` with the named layers quantize-dequantized by the registry's emulation.

    Weights are replaced in place by ``Q_p(W)`` (restored on exit) and each layer's input by
    ``Q_p(x)`` through a forward pre-hook, so the layer computes ``Q_p(x) Q_p(W)^T + b``,
    exactly what :func:`profiles.precisions.Emulation.linear` defines.
    """
    modules = dict(model.named_modules())
    saved: list[tuple[nn.Parameter, torch.Tensor]] = []
    handles = []
    try:
        for name, prec in layer_precisions.items():
            module = modules.get(name)
            if module is None or not is_quantizable(module):
                raise SensitivityError(f"not a quantizable layer of the model: {name!r}")
            emu = emulation(parse_precision(prec))
            if emu.precision is Precision.FP32:
                continue  # identity; fp32 is the reference
            with torch.no_grad():
                saved.append((module.weight, module.weight.data))
                q = emu.weight(weight_matrix(module).detach())
                module.weight.data = q if isinstance(module, nn.Linear) else q.t().contiguous()
            handles.append(module.register_forward_pre_hook(_input_quantizer(emu)))
        yield
    finally:
        for h in handles:
            h.remove()
        for param, data in saved:
            param.data = data


def _input_quantizer(emu):
    def hook(_module, args):
        return (emu.activation(args[0]), *args[1:])
    return hook
