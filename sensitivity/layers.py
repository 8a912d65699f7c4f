"""Quantizable layers of a model and the emulated quantization of chosen layers.

A quantizable layer is a module that computes ``y = x W^T (+ b)``: ``nn.Linear`` and the
``Conv1D`` of GPT-2-style Hugging Face models (which stores ``W`` transposed, ``[in, out]``).
Names are module names from the model root (``model.layers.0.mlp.up_proj``), the same names
the partition's manifest uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch
from hwcost.profiles.experts import expert_weights, is_experts, run_experts
from hwcost.profiles.precisions import Emulation, emulation, inc_fp8_emulation
from hwcost.profiles.trace import quantizable
from torch import nn

from hwcost.errors import SensitivityError
from hwcost.precision import Precision, parse_precision
from hwcost.quantizer import DEFAULT as DEFAULT_QUANTIZER
from hwcost.quantizer import Quantizer, parse_quantizer


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
    found = {name: m for name, m in model.named_modules() if name and quantizable(m)}
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
def emulated(model: nn.Module, layer_precisions: Mapping[str, Precision | str | Emulation]
             ) -> Iterator[None]:
    """Run ``model`` with the named layers quantize-dequantized by the registry's emulation.

    Each layer computes ``R_p(Q_p(x) Q_p(W)^T + b)``, exactly what
    :func:`profiles.precisions.Emulation.linear` defines. ``Q_p(W)`` is computed when the
    layer runs, swapped in only while it runs and dropped after, so a configuration of every
    layer of an 8B model never holds a second copy of its weights (one layer's at a time), and
    a weight tied to another module (GPT-2's lm_head and token embedding) stays unquantized
    everywhere else, as when deployed.
    """
    modules = dict(model.named_modules())
    handles = []
    try:
        for name, prec in layer_precisions.items():
            module = modules.get(name)
            if module is None or not quantizable(module):
                raise SensitivityError(f"not a quantizable layer of the model: {name!r}")
            emu = as_emulation(prec)
            if type(emu) is Emulation and emu.precision is Precision.FP32:
                continue  # identity; fp32 is the reference
            if is_experts(module):
                handles.append(_emulated_experts(module, emu))
                continue
            swap = _WeightSwap(module, emu)
            handles.append(module.register_forward_pre_hook(_input_quantizer(emu, swap)))
            handles.append(module.register_forward_hook(_output_rounder(emu, swap)))
        yield
    finally:
        for h in handles:
            h.remove()


class _WeightSwap:
    """Puts a layer's quantized weight (and bias, for formats that store it rounded) in place
    while the layer runs, and the originals back after; the quantized tensors are made on
    entry and dropped on exit."""

    def __init__(self, module: nn.Module, emu: Emulation):
        self.module, self.emu = module, emu
        self.saved: list | None = None

    def _pairs(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        m, emu = self.module, self.emu
        with torch.no_grad():
            q = emu.weight(weight_matrix(m).detach())
            pairs = [(m.weight, q if isinstance(m, nn.Linear) else q.t().contiguous())]
            bias = getattr(m, "bias", None)
            if bias is not None:
                qb = emu.bias(bias.detach())
                if qb is not None:
                    pairs.append((bias, qb))
        return pairs

    def apply(self) -> None:
        pairs = self._pairs()
        self.saved = [(p, p.data) for p, _ in pairs]
        for p, q in pairs:
            p.data = q

    def restore(self, *_args) -> None:
        if self.saved is not None:
            for p, data in self.saved:
                p.data = data
            self.saved = None


def as_emulation(p: Precision | str | Emulation, quantizer: Quantizer | None = None
                 ) -> Emulation:
    """The emulation of a precision name under ``quantizer`` (default: the registry's), or
    ``p`` itself when it already is an emulation (e.g. Gaudi 2's fp8 with ``fp8_max=240``,
    or a synthetic error in tests)."""
    if isinstance(p, Emulation):
        return p
    prec = parse_precision(p)
    if quantizer is not None and quantizer.scale_rounding == "pow2" and prec is Precision.FP8_E4M3:
        return inc_fp8_emulation(quantizer.fp8_e4m3_max)
    return emulation(prec, fp8_max=quantizer.fp8_max(prec.value) if quantizer else None)


def quantizer_of(precisions: Sequence[Precision | str | Emulation],
                 quantizer: Quantizer | str | None = None) -> Quantizer:
    """The quantizer a table of ``precisions`` scores: ``quantizer`` when given, else the
    default with the fp8 ranges of any emulations passed in (e.g. ``fp8_max=240``)."""
    if quantizer is not None:
        return parse_quantizer(quantizer)
    q = DEFAULT_QUANTIZER
    for p in precisions:
        if isinstance(p, Emulation) and p.fp8_max:
            if p.precision is Precision.FP8_E4M3:
                q = replace(q, fp8_e4m3_max=float(p.fp8_max), scale_rounding=p.scale_rounding)
            elif p.precision is Precision.FP8_E5M2:
                q = replace(q, fp8_e5m2_max=float(p.fp8_max))
    return q


def _input_quantizer(emu: Emulation, swap: _WeightSwap):
    def hook(_module, args):
        swap.apply()
        return (emu.activation(args[0]), *args[1:])
    return hook


def _output_rounder(emu: Emulation, swap: _WeightSwap):
    def hook(_module, _args, y):
        swap.restore()
        return emu.output(y) if emu.rounds_output else None
    return hook


class _Restore:
    """A handle that removes an instance-level ``forward`` override (like a hook handle)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


def _emulated_experts(module: nn.Module, emu: Emulation) -> _Restore:
    """Every expert of an MoE block computed as ``emu.linear`` (weights quantized once), on
    the tokens the model's router sends it."""
    with torch.no_grad():
        qw = [[emu.weight(w.detach()) for w in expert_weights(module, e)]
              for e in range(module.gate_up_proj.shape[0])]

    def forward(hidden, top_k_index, top_k_weights):
        return run_experts(module, hidden, top_k_index, top_k_weights,
                           lambda e, which, x, _tok: emu.output(torch.nn.functional.linear(
                               emu.activation(x), qw[e][which])))
    module.forward = forward
    return _Restore(module)
