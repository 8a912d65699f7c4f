"""Where a model and its data live: the one code path that decides placement and dtype.

Every loss helper, timing loop and capture calls :func:`to_device` with
:func:`model_device`, so calibration, held-out and timing batches always follow the model
(on CUDA or Gaudi the model sits on the card while the data is read on the host).
:func:`baseline_dtype` says which dtype a model is loaded in for a device kind: the dtype of
the backend's baseline precision (bf16 on CUDA and Gaudi, fp32 on CPU unless told bf16), so the
baseline a plan is measured against is the model a user would deploy, at its real size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hwcost.errors import UnsupportedPrecision
from hwcost.precision import BASELINE, Precision, parse_precision

DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16,
          Precision.FP16: torch.float16}
"""The float precisions a model can be loaded (and its baseline run) in."""


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model without."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 when none)."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor in it (nested in dicts, lists, tuples) on ``device``; tensors
    already there are returned as they are (no copy)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)  # returns obj itself when it is already there
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_device(v, device) for v in obj)
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    return obj


def follow_model(obj: Any, model: nn.Module) -> Any:
    """``obj`` moved to the model's device (:func:`to_device` with :func:`model_device`)."""
    return to_device(obj, model_device(model))


def baseline_precision(kind: str, baseline: Precision | str | None = None) -> Precision:
    """The precision the baseline runs in on ``kind``: ``baseline`` when given, else the device
    kind's default (``hwcost.precision.BASELINE``)."""
    p = parse_precision(baseline) if baseline is not None else BASELINE.get(kind, Precision.FP32)
    if p not in DTYPES:
        raise UnsupportedPrecision(f"baseline {p.value} is not a float format a model can be "
                                   f"loaded in; use one of {', '.join(x.value for x in DTYPES)}")
    return p


def baseline_dtype(kind: str, baseline: Precision | str | None = None) -> torch.dtype:
    """The torch dtype a model is loaded in to run on ``kind`` (see :func:`baseline_precision`)."""
    return DTYPES[baseline_precision(kind, baseline)]


def place(model: nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> nn.Module:
    """Move ``model`` in place to ``device`` (and ``dtype``), a no-op where it already is."""
    if dtype is not None and model_dtype(model) != dtype:
        model.to(dtype=dtype)
    if model_device(model) != device:
        model.to(device)
    return model
