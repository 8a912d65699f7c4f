"""Deploy a plan: each planned layer swapped for the backend's deployed layer, the kernel that
profiling timed and whose emulation sensitivity scored; save and reload the deployed model.

``deploy(model, plan)`` is the one place a plan meets a model (``hwcost deploy``, ``hwcost
validate`` and ``bench/exports.py`` all call it). Layers whose precision is the model's own
float dtype are left untouched; every other layer becomes a ``DeployedLinear`` that casts its
input to its format and its output back, so bf16 layers in an fp32 model run with a cast at
each precision boundary, exactly as profiled.

Saved models are safetensors (``model.safetensors``, no pickle) plus ``hwcost-deploy.json``
(the plan and the kernel of every deployed layer) and the model's ``config.json`` when it has
one. :func:`load_deployed` rebuilds the layer types from the plan and loads the saved
low-precision weights into them (``strict``: a missing or extra tensor is an error).

Imports torch lazily: ``planner`` plans without torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwcost.planner.export import PlanLike, validate_plan

from hwcost.errors import HwcostError, PlanInvalid
from hwcost.store import PlanDocument

DEPLOY_MANIFEST = "hwcost-deploy.json"
WEIGHTS_FILE = "model.safetensors"
_MANIFEST_TYPE = "hwcost.deployed"

_TORCH_FLOAT = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class DeployedLayer:
    """One layer of a deployed model: its planned precision and what runs it."""

    name: str
    precision: str
    kernel: str
    weight_dtype: str


PlanOrLayers = PlanLike | Mapping[str, str]
"""A plan document (typed or its JSON) or a plain ``layer -> precision`` map."""


def _document(plan: PlanOrLayers) -> PlanDocument | None:
    """The plan document, or None for a plain layer map."""
    if isinstance(plan, PlanDocument):
        return plan
    return validate_plan(plan) if "type" in plan or "data" in plan else None


def plan_layers(plan: PlanOrLayers) -> dict[str, str]:
    """``layer -> precision`` of a plan document, or of a plain layer map."""
    doc = _document(plan)
    if doc is not None:
        return dict(doc.layers)
    layers = {str(k): str(v) for k, v in plan.items()}
    if not layers:
        raise PlanInvalid("the plan assigns no layer")
    return layers


def _plan_kind(plan: PlanOrLayers) -> str | None:
    doc = _document(plan)
    return doc.device.kind if doc is not None else None


def _model_precision(model) -> str | None:
    """The precision name of the model's float parameters (``fp32`` for a float32 model)."""
    import torch

    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return names.get(dtypes.pop()) if len(dtypes) == 1 else None


def _swap(model, layers: Mapping[str, str], backend, dataflow=None):
    """A view of ``model`` with ``layers`` replaced by their deployments: it shares every
    other module and parameter with ``model``, which is left as it was
    (``profiles.backends.apply_precisions``; :func:`deployed_in_place` swaps in place)."""
    from hwcost.profiles.backends import apply_precisions

    return apply_precisions(model, layers, backend, dataflow)


@contextmanager
def deployed_in_place(model, plan: PlanOrLayers, backend=None, *, dataflow=None
                      ) -> Iterator[Any]:
    """Deploy the plan IN PLACE for a ``with`` block and put the original layers back on exit
    (``profiles.backends.deployed``): one model, its planned layers only as extra memory."""
    from hwcost.profiles.backends import deployed, get_backend

    if backend is None or isinstance(backend, str):
        backend = get_backend(backend or _plan_kind(plan) or "cpu")
    with deployed(model, plan_layers(plan), backend, dataflow) as m:
        yield m.eval()


def deploy(model, plan: PlanOrLayers, backend=None, *, dataflow=None,
           deployment: str = "eager"):
    """``model`` with the plan's layers deployed by ``backend`` (default: the backend of the
    plan's device kind, ``cpu`` for a plain layer map), in eval mode: a view sharing every
    undeployed module and weight with ``model``, which stays as it was.

    ``plan`` is a plan document (``planner.export.plan_document`` / ``read_plan_document``) or a
    ``layer -> precision`` map. Layers already in the model's own dtype keep their modules (no
    cast, no copy of their weights). Unknown layer names and precisions the backend cannot
    run fail before anything is built (UnknownLayer, UnknownPrecision).

    Deployed layers are linked as a deployment runs them: siblings reading one tensor in one
    format convert it once; with ``dataflow`` (``profiles.backends.interact.trace_dataflow``)
    a float chain (gate/up -> down in bf16) keeps its format between layers.
    ``deployment="compiled"`` returns the model under ``torch.compile`` (inductor).
    """
    from hwcost.profiles.backends import get_backend
    from hwcost.profiles.backends.interact import check_deployment, compile_deployed

    layers = plan_layers(plan)
    if backend is None or isinstance(backend, str):
        backend = get_backend(backend or _plan_kind(plan) or "cpu")
    own = _model_precision(model)
    todo = {n: p for n, p in layers.items() if p != own}
    model = model.to(backend.device)
    out = _swap(model, todo, backend, dataflow).eval() if todo else model.eval()
    return compile_deployed(out) if check_deployment(deployment) == "compiled" else out


def deployed_layers(model) -> dict[str, DeployedLayer]:
    """What runs each linear layer of a deployed model: a ``DeployedLinear``'s precision and
    kernel, or a plain layer's weight dtype (``aten linear``)."""
    from hwcost.profiles.backends.layers import DeployedLinear, is_linear
    from hwcost.profiles.experts import DeployedExperts, is_experts

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, DeployedExperts):  # an MoE block's experts: one slot
            out[name] = DeployedLayer(name, m.precision.value, m.kernel, str(m.weight_dtype))
        elif is_experts(m):
            dt = m.gate_up_proj.dtype
            out[name] = DeployedLayer(name, _precision_of(dt), "experts (aten)", str(dt))
        elif isinstance(m, DeployedLinear):
            out[name] = DeployedLayer(name, m.precision.value, m.kernel, str(m.weight.dtype))
        elif is_linear(m):
            w = m.weight
            inner = getattr(w, "qdata", None)  # a torchao quantized weight (Int8Tensor, Float8Tensor)
            dt = inner.dtype if inner is not None else w.dtype
            kernel = f"torchao {type(w).__name__}" if inner is not None else "aten linear"
            out[name] = DeployedLayer(name, _precision_of(dt), kernel, str(dt))
    return out


def _precision_of(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    fp8 = {"float8_e4m3fn": "fp8_e4m3", "float8_e4m3fnuz": "fp8_e4m3", "float8_e5m2": "fp8_e5m2"}
    return {v: k for k, v in _TORCH_FLOAT.items()}.get(name) or fp8.get(name) or \
        {"int8": "int8"}.get(name, name)


def save_deployed(model, plan: PlanOrLayers, out_dir: str | Path) -> Path:
    """Write a deployed model to ``out_dir``: ``model.safetensors`` (every parameter and
    buffer, low-precision weights and their scales included), ``hwcost-deploy.json`` and the
    model's ``config.json``. Returns the directory."""
    from safetensors.torch import save_model

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HwcostError(f"cannot create {out}: {e.strerror}") from None
    # save_model drops the second name of tied tensors (embeddings tied to lm_head)
    save_model(model, str(out / WEIGHTS_FILE))
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_json_file"):
        cfg.to_json_file(str(out / "config.json"))
    doc = _document(plan)
    manifest = {"type": _MANIFEST_TYPE, "version": 1,
                "plan": doc.to_json() if doc is not None else {"layers": plan_layers(plan)},
                "layers": {n: d.__dict__ for n, d in deployed_layers(model).items()}}
    (out / DEPLOY_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out


def load_deployed(out_dir: str | Path, model, backend=None, *, dataflow=None):
    """Load a model saved by :func:`save_deployed` into ``model`` (the same architecture in
    its original precision, e.g. ``profiles.loading.load_model(spec).model``): the plan is
    deployed on it (linked by ``dataflow`` as in :func:`deploy`), then the saved tensors
    replace its weights."""
    from safetensors.torch import load_model

    src = Path(out_dir)
    try:
        manifest = json.loads((src / DEPLOY_MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise HwcostError(f"{src} is not a deployed model ({DEPLOY_MANIFEST}: {e})") from None
    if manifest.get("type") != _MANIFEST_TYPE or manifest.get("version") != 1:
        raise HwcostError(f"{src / DEPLOY_MANIFEST} is not a version-1 hwcost deployment")
    deployed = deploy(model, manifest["plan"], backend, dataflow=dataflow)
    missing, unexpected = load_model(deployed, str(src / WEIGHTS_FILE), strict=False)
    if missing or unexpected:
        raise HwcostError(f"{src / WEIGHTS_FILE} does not fit the plan's model: "
                          f"{len(missing)} tensors missing, {len(unexpected)} unexpected")
    return deployed
