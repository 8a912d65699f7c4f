"""Plan documents and the configs other tools read.

- plan JSON: ``{"type": "hwcost.plan", "version": 1, "data": {...}}``, validated on read;
- Intel Neural Compressor FP8 config (Gaudi): :mod:`planner.inc`;
- torchao: ``torchao.core.config.config_to_dict`` form of an ``FqnToConfig`` (module FQN ->
  ``Int8DynamicActivationInt8WeightConfig`` / ``Float8DynamicActivationFloat8WeightConfig``),
  loadable with ``config_from_dict`` and applied with ``quantize_(model, config, filter_fn=None)``,
  plus the bf16 casts torchao has no config for;
- the per-layer report (CSV, Markdown): :mod:`planner.report`.
"""

from __future__ import annotations

import json
from pathlib import Path

from hwcost.planner.enums import ExportFormat

from hwcost.errors import HwcostError, PlanInvalid
from hwcost.precision import parse_precision

PLAN_TYPE = "hwcost.plan"
PLAN_VERSION = 1
FORMATS = tuple(ExportFormat.values())

_REQUIRED = {"model": dict, "device": dict, "shape": str, "objective": str, "baseline": str,
             "layers": dict, "predicted": dict}


def plan_document(solution, constraints=None, threshold: str | None = None) -> dict:
    """The versioned plan JSON of a solved plan (what the store keeps and exporters read)."""
    p = solution.problem
    subgraphs = [{
        "position": c.position, "signature": c.signature, "kind": c.kind,
        "layers": list(c.layer_names), "config": list(o.config), "gain_us": o.gain_us,
        "loss_mse": o.loss_mse, "layer_loss_mse": list(o.layer_loss_mse), "source": o.source,
    } for c, o in zip(p.choices, solution.chosen)]
    data = {
        "model": {"name": p.model_name, "fingerprint": p.model_fingerprint,
                  "checkpoint": p.checkpoint},
        "quantizer": p.quantizer,
        "device": {"fingerprint": p.device_fingerprint, "name": p.device_name, "kind": p.device_kind},
        "shape": p.shape,
        "objective": solution.objective,
        "baseline": p.baseline,
        "precisions": list(p.precisions),
        "max_loss_mse": solution.max_loss_mse,
        "threshold": threshold,
        "constraints": constraints.to_dict() if constraints is not None else {},
        "layers": solution.layers,
        "subgraphs": subgraphs,
        "predicted": {
            "baseline_us": p.baseline_us, "plan_us": solution.plan_us,
            "speedup": solution.predicted_speedup, "gain_us": solution.gain_us,
            "loss_mse": solution.loss_mse, "weight_bytes": solution.weight_bytes,
            "measured_share": solution.measured_share,
            "baseline_from": p.baseline_from,
            "speedup_rel_error": solution.speedup_rel_error,
        },
        "solver": {"status": solution.status, "gap": solution.gap, "wall_s": solution.wall_s},
        "sensitivity": p.sensitivity,
    }
    return {"type": PLAN_TYPE, "version": PLAN_VERSION, "data": data}


def validate_plan(doc) -> dict:
    """Check a plan document's envelope and fields; return its ``data``."""
    if not isinstance(doc, dict):
        raise PlanInvalid("a plan must be a JSON object")
    if doc.get("type") != PLAN_TYPE:
        raise PlanInvalid(f"not an hwcost plan: type is {doc.get('type')!r}, expected {PLAN_TYPE!r}")
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise PlanInvalid(f"plan version {version!r} is not a positive integer")
    if version > PLAN_VERSION:
        raise PlanInvalid(f"plan version {version} is newer than this hwcost reads ({PLAN_VERSION}); "
                          "upgrade hwcost")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise PlanInvalid("plan has no 'data' object")
    for key, typ in _REQUIRED.items():
        if not isinstance(data.get(key), typ):
            raise PlanInvalid(f"plan field {key!r} is missing or not a {typ.__name__}")
    for layer, prec in data["layers"].items():
        if not isinstance(layer, str) or not isinstance(prec, str):
            raise PlanInvalid(f"plan layer entry {layer!r}: {prec!r} is not name -> precision")
        try:
            parse_precision(prec)
        except HwcostError:
            raise PlanInvalid(f"plan layer {layer} has unknown precision {prec!r}") from None
    parse_precision(data["baseline"])
    if not data["layers"]:
        raise PlanInvalid("plan assigns no layer")
    return data


def read_plan(path: str | Path) -> dict:
    """Read and validate a plan JSON file; returns the whole document."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise PlanInvalid(f"cannot read plan {path}: {e.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise PlanInvalid(f"plan {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    validate_plan(doc)
    return doc


_PER_ROW = {"_type": "PerRow", "_version": 1, "_data": {"dim": -1}}
# Symmetric per-token activations and per-row weights: the registry's int8 (torchao's default,
# written out so that a change of torchao's defaults cannot change what is deployed).
_INT8 = {"_type": "Int8DynamicActivationInt8WeightConfig", "_version": 2,
         "_data": {"act_mapping_type": {"_type": "MappingType", "_data": "SYMMETRIC"},
                   "granularity": _PER_ROW}}


def _fp8(dtype: str) -> dict:
    dt = {"_type": "torch.dtype", "_data": dtype}
    # use_fast_accum off: the backends' torch._scaled_mm accumulates in full fp32 precision
    mm = {"_type": "Float8MMConfig", "_version": 1,
          "_data": {"emulate": False, "use_fast_accum": False, "pad_inner_dim": False}}
    return {"_type": "Float8DynamicActivationFloat8WeightConfig", "_version": 2,
            "_data": {"activation_dtype": dt, "weight_dtype": dt, "granularity": [_PER_ROW, _PER_ROW],
                      "mm_config": mm}}


_TORCHAO = {"int8": _INT8, "fp8_e4m3": _fp8("float8_e4m3fn"), "fp8_e5m2": _fp8("float8_e5m2")}
_CASTS = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def to_torchao(doc: dict) -> dict:
    """torchao per-module config of a plan.

    ``data.quantize``: an ``FqnToConfig`` in torchao's serialized form
    (``torchao.core.config.config_to_dict``) for the int8 and fp8 layers, the scaling of our
    registry (per-token symmetric activations, per-row weights); load it with
    ``config_from_dict`` and apply it with ``quantize_(model, config, filter_fn=None)``, or
    pass it to transformers as ``TorchAoConfig(config_from_dict(data["quantize"]))``.
    ``data.casts``: float layers to run in another float dtype (bf16 layers of an fp32
    model), which torchao has no config for; docs/planner.md shows the cast step (the layer's
    weights cast, its input cast to that dtype and its output back to ``data.dtype``).
    Baseline layers are left out of both."""
    data = validate_plan(doc)
    base = data["baseline"]
    if base not in _CASTS:
        raise HwcostError(f"the torchao export needs a float baseline (fp32, bf16, fp16), not {base}")
    fqn, casts = {}, {}
    for name, p in sorted(data["layers"].items()):
        if p == base:
            continue
        if p in _TORCHAO:
            # keyed by the weight's FQN: transformers' TorchAoConfig, given a module FQN,
            # quantizes the layer's bias as well (and the biased forward then fails)
            fqn[f"{name}.weight"] = _TORCHAO[p]
        elif p in _CASTS:
            casts[name] = _CASTS[p]
        else:
            raise HwcostError(f"torchao has no config for layer {name}'s precision {p}")
    return {
        "type": "hwcost.torchao", "version": 2,
        "data": {
            "model": data["model"], "baseline": base, "dtype": _CASTS[base],
            "casts": casts,
            "quantize": {"_type": "FqnToConfig", "_version": 1, "_data": {"fqn_to_config": fqn}},
            "modules": {n.removesuffix(".weight"): {"config": c["_type"]} for n, c in fqn.items()},
        },
    }


def export(doc: dict, fmt: str, naming: str = "hf") -> dict:
    """The plan in one of the JSON formats (``json``, ``inc``, ``torchao``); ``naming`` is the
    INC config's module naming (``hf`` or ``vllm``, see :func:`planner.inc.to_inc`)."""
    if fmt == ExportFormat.JSON:
        validate_plan(doc)
        return doc
    if fmt == ExportFormat.INC:
        from hwcost.planner.inc import to_inc

        return to_inc(doc, naming)
    if fmt == ExportFormat.TORCHAO:
        return to_torchao(doc)
    raise HwcostError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")


def export_text(doc: dict, fmt: str, naming: str = "hf") -> str:
    """The file ``hwcost export-plan --format FMT`` writes: JSON, or the per-layer report as
    CSV or Markdown (:mod:`planner.report`)."""
    if fmt in (ExportFormat.CSV, ExportFormat.MD):
        from hwcost.planner.report import layer_report, to_csv, to_markdown

        rows = layer_report(doc)
        return to_csv(rows) if fmt == ExportFormat.CSV else to_markdown(rows, doc)
    return json.dumps(export(doc, fmt, naming), indent=2, sort_keys=True) + "\n"
