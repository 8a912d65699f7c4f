"""Memory up front: what a model needs in one precision, what the host and the device have, and
a refusal with both figures before anything is loaded or stored (instead of the OOM killer).

``HWCOST_MEMORY_LIMIT`` (bytes, or with a unit: ``8GiB``, ``512MB``) caps the memory this
process may plan with, on a shared machine or to check the refusal itself.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from hwcost.errors import DoesNotFit, ModelLoadError

LIMIT_ENV = "HWCOST_MEMORY_LIMIT"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
GiB = float(2**30)


def parse_bytes(text: str) -> int:
    """``"8GiB"`` -> 8589934592; a plain number is bytes. ModelLoadError when unreadable."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ModelLoadError(f"{LIMIT_ENV}={text!r} is not a size (e.g. 8GiB, 512MB, 1000000)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def host_available() -> tuple[int | None, str]:
    """``(bytes, where from)``: MemAvailable of /proc/meminfo, capped by ``HWCOST_MEMORY_LIMIT``."""
    avail, src = None, "unknown"
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail, src = int(line.split()[1]) * 1024, "MemAvailable"
    except OSError:
        pass
    return _capped(avail, src)


def _capped(avail: int | None, src: str) -> tuple[int | None, str]:
    limit = os.environ.get(LIMIT_ENV)
    if limit:
        cap = parse_bytes(limit)
        if avail is None or cap < avail:
            return cap, LIMIT_ENV
    return avail, src


def device_available(backend: Any) -> tuple[int | None, str]:
    """Free memory of the backend's device: the host's for the CPU, ``torch.cuda.mem_get_info``
    on CUDA, ``torch.hpu.mem_get_info`` on Gaudi where the bridge has it (None: unknown)."""
    kind = backend.device.type
    if kind == "cpu":
        return host_available()
    if kind == "cuda":
        free, _total = torch.cuda.mem_get_info(backend.device)
        return _capped(int(free), "torch.cuda.mem_get_info")
    hpu = getattr(torch, "hpu", None)
    if hpu is not None and hasattr(hpu, "mem_get_info"):
        free, _total = hpu.mem_get_info()
        return _capped(int(free), "torch.hpu.mem_get_info")
    return _capped(None, "unknown")


def hf_parameter_count(path: Path) -> int:
    """Parameters of a Hugging Face model directory, from its config alone: the model is built
    on the meta device (no memory, no weights read); tied weights count once."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot read the model config in {path}: {first}") from None
    return sum(p.numel() for p in model.parameters())


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def require_fits(name: str, n_params: int, dtype: torch.dtype, where: str,
                 available: tuple[int | None, str]) -> int:
    """Raise DoesNotFit (one line with both figures) when ``n_params`` weights in ``dtype``
    exceed the available memory; returns the bytes the weights take. Unknown memory passes."""
    need = n_params * dtype_bytes(dtype)
    free, src = available
    if free is not None and need > free:
        dt = str(dtype).removeprefix("torch.")
        raise DoesNotFit(f"model {name} needs {need / GiB:.2f} GiB for its {n_params / 1e6:.1f} M "
                         f"weights in {dt}; {where} has {free / GiB:.2f} GiB free ({src})")
    return need


def saved_per_token(cfg: dict, act_bytes: int, seq: int = 128) -> int:
    """Bytes autograd and the sensitivity hooks keep per calibration token until the backward
    pass reaches each layer: ``L (7H + 2Hkv + heads x seq + 4I) + 3V`` elements."""
    h, inter, layers, vocab = (cfg["hidden_size"], cfg["intermediate_size"],
                               cfg["num_hidden_layers"], cfg["vocab_size"])
    heads = cfg.get("num_attention_heads", max(1, h // 128))
    kv = cfg.get("num_key_value_heads", heads) * (h // heads)
    return (layers * (7 * h + 2 * kv + heads * seq + 4 * inter) + 3 * vocab) * act_bytes


MIN_CALIB_BUDGET = 2**30
"""Floor of the calibration batch's activation budget (bytes): small models keep batches of 8."""


def calib_batch_size(model: Any, seq_len: int, default: int = 8) -> int:
    """Samples per sensitivity batch: ``default``, or fewer so that one batch's saved
    activations stay within half the model's weights (at least :data:`MIN_CALIB_BUDGET`).
    Per-sample terms do not depend on the batch, so this trades only speed for memory: the
    sensitivity step then peaks at about 1.5x the weights instead of growing with the batch."""
    cfg = getattr(model, "config", None)
    try:
        d = cfg.to_dict() if cfg is not None else {}
        per_token = saved_per_token(d, _act_bytes(model), seq_len)
    except (KeyError, AttributeError, TypeError):
        return default  # not a decoder config we can size: keep the default
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return batch_within_budget(per_token, weights, seq_len, default)


def batch_within_budget(per_token: int, weights_bytes: int, seq_len: int, default: int = 8
                        ) -> int:
    """The batch :func:`calib_batch_size` picks, from the figures alone."""
    budget = max(weights_bytes // 2, MIN_CALIB_BUDGET)
    return max(1, min(default, budget // max(1, per_token * seq_len)))


def _act_bytes(model: Any) -> int:
    for p in model.parameters():
        if p.is_floating_point():
            return p.element_size()
    return 4


def step_peaks(cfg: dict, n_params: int, *, dtype_bytes: int = 4, profile_tokens: int = 128,
               cut_tokens: int = 128, calib_batch_tokens: int = 1024,
               eval_batch_tokens: int = 1024, plan_bytes_per_weight: float = 2.0,
               n_precision_bytes: float = 4.0) -> dict[str, float]:
    """Peak memory of each step of ``hwcost run`` over the process' base (bytes), for a Llama-
    style decoder (Hugging Face config fields), as the code computes it. docs/scale.md derives
    its 8B/70B tables from this; ``bench/scale.py`` compares it with measured peaks.

    Terms (elements per token unless said; ``a`` = activation bytes, 4 on CPU, 2 in bf16):

    - weights ``W = params x dtype_bytes``: the one loaded model, shared by every step;
    - partition: the full trace at batch 1 x ``cut_tokens`` holds every module's output:
      ``L (9H + 2Hkv + 3I) + H + V``;
    - profile: the largest piece deployed in every precision at once (``n_precision_bytes``
      bytes per weight over all precisions: fp32 shares the model's, bf16 2, int8 1, fp8 1 on
      CPU) and one forward at the profiled shape: ``2 (V + 2I + 4H)``;
    - sensitivity: what autograd and the hooks keep until the backward reaches each layer,
      ``L (7H + 2Hkv + heads x seq + 4I) + 3V`` per token of one calibration batch, plus one
      layer's scoring buffers in float32 (its input and output gradient, as much again in row
      chunks, and for a 16-bit model its weight upcast);
    - validate: the plan's deployed layers (``plan_bytes_per_weight`` per weight: a view
      shares everything else) and one held-out forward, ``2V + 3I``.
    """
    h, inter, layers, vocab = (cfg["hidden_size"], cfg["intermediate_size"],
                               cfg["num_hidden_layers"], cfg["vocab_size"])
    heads = cfg.get("num_attention_heads", max(1, h // 128))
    kv = cfg.get("num_key_value_heads", heads) * (h // heads)
    a = dtype_bytes
    w = n_params * dtype_bytes
    biggest_piece = max(vocab * h, 3 * h * inter, h * (h + 2 * kv))
    trace = cut_tokens * (layers * (9 * h + 2 * kv + 3 * inter) + h + vocab) * a
    profile = (biggest_piece * (n_precision_bytes - dtype_bytes) if n_precision_bytes > dtype_bytes
               else 0) + profile_tokens * 2 * (vocab + 2 * inter + 4 * h) * a
    saved = calib_batch_tokens * saved_per_token(cfg, a)
    # one layer scored at a time, in float32: its input and output gradient upcast, row chunks
    # of at most as much again, and (for a 16-bit model) its weight upcast
    scoring = calib_batch_tokens * (h + vocab) * 4 * 2
    if dtype_bytes < 4:
        scoring += max(vocab * h, h * inter) * 4
    linear_params = n_params - vocab * h  # the embedding has no precision
    validate = linear_params * plan_bytes_per_weight + eval_batch_tokens * (2 * vocab + 3 * inter) * a
    return {"load": float(w), "partition": float(w + trace), "profile": float(w + profile),
            "sensitivity": float(w + saved + scoring), "plan": float(w),
            "validate": float(w + validate)}
