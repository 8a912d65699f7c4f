"""Plan documents and the configs other tools read.

- plan JSON: ``{"type": "hwcost.plan", "version": 1, "data": {...}}``, read into the typed
  :class:`hwcost.store.PlanDocument` (checked on read) and written back unchanged;
- Intel Neural Compressor FP8 config (Gaudi): :mod:`planner.inc`;
- torchao: ``torchao.core.config.config_to_dict`` form of an ``FqnToConfig`` (module FQN ->
  ``Int8DynamicActivationInt8WeightConfig`` / ``Float8DynamicActivationFloat8WeightConfig``),
  loadable with ``config_from_dict`` and applied with ``quantize_(model, config, filter_fn=None)``,
  plus the bf16 casts torchao has no config for;
- the per-layer report (CSV, Markdown): :mod:`planner.report`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hwcost.planner.enums import ExportFormat

from hwcost.errors import HwcostError, PlanInvalid
from hwcost.store.plan_document import (
    PLAN_TYPE,
    PLAN_VERSION,
    PlanConstraints,
    PlanDevice,
    PlanDocument,
    PlanModel,
    PlanPrediction,
    PlanSensitivity,
    PlanSolver,
    PlanSubgraph,
)

__all__ = ["FORMATS", "PLAN_TYPE", "PLAN_VERSION", "PlanLike", "export", "export_text",
           "plan_document", "read_plan_document", "to_torchao", "validate_plan"]

PlanLike = PlanDocument | Mapping[str, Any]
"""A :class:`PlanDocument` or its JSON form (a plan file as read, a test's dict)."""

FORMATS = tuple(ExportFormat.values())
# written only by make_plan (the noise of time plans, the bound's notes) or later (the id)
_LATER = frozenset({"notes", "threshold_abs", "plan_id"})
_LATER_PREDICTED = frozenset({"p_not_fastest", "rivals", "latency_stderr_us",
                              "gain_shrink_sigmas", "loss_scale"})


def plan_document(solution, constraints=None, threshold: str | None = None) -> PlanDocument:
    """The plan document of a solved plan (what the store keeps and exporters read): the one
    place a :class:`PlanDocument` is built from a solution; ``planner.plans.make_plan`` adds
    the noise of time plans and notes on the bound with ``updated``."""
    p = solution.problem
    subgraphs = tuple(PlanSubgraph(
        position=c.position, signature=c.signature, kind=c.kind, layers=tuple(c.layer_names),
        config=tuple(o.config), gain_us=o.gain_us, loss_mse=o.loss_mse,
        layer_loss_mse=tuple(o.layer_loss_mse), source=o.source,
    ) for c, o in zip(p.choices, solution.chosen))
    cons = constraints.to_dict() if constraints is not None else {}
    return PlanDocument(
        model=PlanModel(name=p.model_name, fingerprint=p.model_fingerprint,
                        checkpoint=p.checkpoint),
        quantizer=p.quantizer,
        device=PlanDevice(fingerprint=p.device_fingerprint, name=p.device_name, kind=p.device_kind),
        shape=p.shape,
        objective=solution.objective,
        baseline=p.baseline,
        precisions=tuple(p.precisions),
        max_loss_mse=solution.max_loss_mse,
        threshold=threshold,
        constraints=PlanConstraints.from_dict(cons, "constraints"),
        layers=solution.layers,
        subgraphs=subgraphs,
        predicted=PlanPrediction(
            baseline_us=p.baseline_us, plan_us=solution.plan_us,
            speedup=solution.predicted_speedup, gain_us=solution.gain_us,
            loss_mse=solution.loss_mse, weight_bytes=solution.weight_bytes,
            measured_share=solution.measured_share,
            baseline_from=p.baseline_from,
            speedup_rel_error=solution.speedup_rel_error,
            absent=_LATER_PREDICTED,
        ),
        solver=PlanSolver(status=solution.status, gap=solution.gap, wall_s=solution.wall_s),
        sensitivity=PlanSensitivity.from_dict(p.sensitivity, "sensitivity"),
        absent=_LATER,
    )


def validate_plan(doc: PlanLike) -> PlanDocument:
    """Check a plan document (its envelope, fields and types; ``PlanInvalid`` in one line);
    return it as a :class:`PlanDocument`."""
    return PlanDocument.of(doc)


def read_plan_document(path: str | Path) -> PlanDocument:
    """Read and check a plan JSON file (``PlanInvalid`` in one line when it is not one)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise PlanInvalid(f"cannot read plan {path}: {e.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise PlanInvalid(f"plan {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    return PlanDocument.from_json(doc)


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


def to_torchao(doc: PlanLike) -> dict:
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
    plan = validate_plan(doc)
    base = plan.baseline
    if base not in _CASTS:
        raise HwcostError(f"the torchao export needs a float baseline (fp32, bf16, fp16), not {base}")
    fqn, casts = {}, {}
    for name, p in sorted(plan.layers.items()):
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
            "model": plan.model.to_dict(), "baseline": base, "dtype": _CASTS[base],
            "casts": casts,
            "quantize": {"_type": "FqnToConfig", "_version": 1, "_data": {"fqn_to_config": fqn}},
            "modules": {n.removesuffix(".weight"): {"config": c["_type"]} for n, c in fqn.items()},
        },
    }


def export(doc: PlanLike, fmt: str, naming: str = "hf") -> dict:
    """The plan in one of the JSON formats (``json``, ``inc``, ``torchao``); ``naming`` is the
    INC config's module naming (``hf`` or ``vllm``, see :func:`planner.inc.to_inc`)."""
    if fmt == ExportFormat.JSON:
        return validate_plan(doc).to_json()
    if fmt == ExportFormat.INC:
        from hwcost.planner.inc import to_inc

        return to_inc(doc, naming)
    if fmt == ExportFormat.TORCHAO:
        return to_torchao(doc)
    raise HwcostError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")


def export_text(doc: PlanLike, fmt: str, naming: str = "hf") -> str:
    """The file ``hwcost export-plan --format FMT`` writes: JSON, or the per-layer report as
    CSV or Markdown (:mod:`planner.report`)."""
    if fmt in (ExportFormat.CSV, ExportFormat.MD):
        from hwcost.planner.report import layer_report, to_csv, to_markdown

        rows = layer_report(doc)
        return to_csv(rows) if fmt == ExportFormat.CSV else to_markdown(rows, doc)
    return json.dumps(export(doc, fmt, naming), indent=2, sort_keys=True) + "\n"
