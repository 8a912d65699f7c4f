"""Structural hashes: subgraph signatures and model fingerprints.

A signature hashes what decides a subgraph's cost and numerics: module types, parameter
shapes and dtypes, scalar settings (head counts, eps, activation, sliding window) and the
slot order. It never hashes module names from the model root or weight values, so the
identical blocks of one model, and the same block in a deeper model of the same width,
share one signature (and one set of measurements).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from torch import nn

# Attributes that number an instance rather than describe its structure.
_INSTANCE_ATTRS = frozenset({
    "layer_idx", "layer_id", "layer_index", "idx", "index", "block_idx", "layer_number",
    "training", "name",
})
# Config keys that modules read while running instead of storing them as attributes. Sizes
# are not listed: parameter shapes and the modules' own attributes (head_dim, eps) carry
# them, and listing the config's widths would split the attention's signature on an MLP
# width change.
_CONFIG_KEYS = ("_attn_implementation", "hidden_act", "activation_function", "pretraining_tp")
_SCALARS = (bool, int, float, str, type(None))


def _config_summary(cfg: Any) -> dict:
    out = {}
    for k in _CONFIG_KEYS:
        v = getattr(cfg, k, None)
        if isinstance(v, _SCALARS) and v is not None:
            out[k] = v
    return out


def module_structure(module: nn.Module, skip: frozenset[str] = frozenset()) -> list:
    """Structure of ``module`` and its descendants as JSON-able data.

    Paths are relative to ``module`` (``q_proj``, ``act_fn``), which are attribute names of
    the architecture, not positions in a model. ``skip`` names relative paths left out (a
    split piece hashes only the part it runs).
    """
    out = []
    for rel, m in module.named_modules():
        if rel in skip or any(rel.startswith(s + ".") for s in skip):
            continue
        scalars = {k: v for k, v in vars(m).items()
                   if not k.startswith("_") and k not in _INSTANCE_ATTRS and isinstance(v, _SCALARS)}
        cfg = getattr(m, "config", None)
        if cfg is not None and not isinstance(cfg, _SCALARS):
            scalars["config"] = _config_summary(cfg)
        params = [(n, list(p.shape), str(p.dtype).removeprefix("torch."))
                  for n, p in m.named_parameters(recurse=False)]
        out.append([rel, type(m).__name__, scalars, params])
    return out


def digest(payload: Any) -> str:
    """A 16-hex-digit SHA-256 of a JSON-able payload (sorted keys, so stable)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    """A cheap structural hash of a whole model: module types and parameter shapes by name.

    Weights are not read, so the same architecture with other weights has the same
    fingerprint; a deeper or wider model does not.
    """
    mods = [(n, type(m).__name__) for n, m in model.named_modules()]
    params = [(n, list(p.shape), str(p.dtype)) for n, p in model.named_parameters()]
    return digest({"class": type(model).__name__, "modules": mods, "params": params})
