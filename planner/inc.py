"""Intel Neural Compressor (INC) FP8 configs of a plan, for optimum-habana and vLLM-gaudi.

The quantizer: INC's *dynamic* FP8 quantization (``dynamic_quantization: true``,
``scale_method: maxabs_pcs_pow2``): activations scaled per token at run time, weights per
output channel, every scale a power of two, weights backed off to half the range. It needs no
calibration run, and ``profiles.precisions.inc_fp8_emulation`` reproduces it exactly (a test
checks it against INC's own scale and cast functions), so the plan's predicted loss is the
loss of this quantizer. The fp8 range is the target device's (``data/devices.json``:
``fp8_e4m3_max``, 240 on Gaudi 2, 448 on Gaudi 3); INC takes it from the card it runs on.

Names: INC selects modules with ``re.search(name, module_name)`` (INC 3.x) or, in older
releases, ``name in module_name``. Exported names are full module names with no regex
metacharacter but ``.``, so both matchers accept them, and every name is checked to select
exactly the layers it is meant for among the plan's layers. ``naming="vllm"`` writes the fused
layers of vLLM-gaudi (``self_attn.qkv_proj``, ``mlp.gate_up_proj``): their parts must share a
precision in the plan (plan with ``--group``), and are one decision.

The schema of the JSON (keys and allowed values) is INC 3.10's, from
``neural_compressor/torch/algorithms/fp8_quant/_quant_common/quant_config.py`` and
``docs/source/3x/PT_FP8Quant.md``; :func:`check_inc_schema` checks a config against it
without INC installed.
"""

from __future__ import annotations

import re

from hwcost.planner.enums import IncNaming
from hwcost.planner.export import PlanLike, validate_plan

from hwcost.errors import HwcostError
from hwcost.store import PlanDocument

NAMINGS = tuple(IncNaming.values())
SCALE_METHOD = "maxabs_pcs_pow2"

# INC 3.10's FP8 config keys (Fp8cfg.parse defaults) and the values its enums accept
# (_config_to_enum); keys with free-form values map to None.
_TF = ("True", "False")
INC_SCHEMA: dict[str, tuple[str, ...] | None] = {
    # AUTO is FP8Config's default, resolved before INC's QuantMode enum sees the config
    "mode": ("AUTO", "NONE", "QUANTIZE", "MEASURE", "SHAPE", "LOAD"),
    "measure_exclude": ("NONE", "INPUT", "OUTPUT", "PARAMS", "ALL"),
    "fp8_config": ("E4M3", "E5M2"),
    "hp_dtype": ("bf16", "fp16", "fp32"),
    "scale_method": ("unit_scale", "hw_aligned_single_scale", "maxabs_hw", "maxabs_pow2",
                     "act_maxabs_hw_weights_pcs_maxabs_pow2", "act_maxabs_hw_weights_pcs_opt_pow2",
                     "act_maxabs_pow2_weights_pcs_maxabs_pow2", "act_maxabs_pow2_weights_pcs_opt_pow2",
                     "maxabs_hw_opt_weight", "maxabs_pow2_opt_weight", "maxabs_arbitrary",
                     "act_maxabs_pcs_pow2_weight_maxabs_pts_pow2_hw", "maxabs_pcs_pow2"),
    "recalc_scales": _TF, "ignore_modules_wo_measures": _TF, "use_qdq": _TF, "fake_quant": _TF,
    "scale_format": ("CONST", "SCALAR"),
    "device_for_scales": ("GAUDI2", "GAUDI3"),
    "measure_on_hpu": _TF, "dynamic_quantization": _TF,
    "observer": ("maxabs", "maxabs_per_channel", "shape", "save"),
    "allowlist": None, "blocklist": None, "dump_stats_path": None, "scale_params": None,
    "mod_dict": None, "seperate_measure_files": None,
    "row_parallel_linear_allreduce_quantization": None, "calibration_sample_interval": None,
}
# Scale methods INC accepts only with dynamic_quantization true (SUPPORTED_DYNAMIC_QUANTIZATION_SCALES)
DYNAMIC_ONLY = ("act_maxabs_pcs_pow2_weight_maxabs_pts_pow2_hw", "maxabs_pcs_pow2")

_FUSED = {  # vLLM-gaudi's fused linear layers: the HF layers each one computes
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}
_HIGH = ("bf16", "fp16", "fp32")
_REGEX_SPECIAL = re.compile(r"[\\^$*+?{}\[\]|()]")


def vllm_names(layers: dict[str, str]) -> dict[str, str]:
    """The plan's ``layer -> precision`` under vLLM's names: the parts of a fused layer become
    the fused layer, which must have one precision."""
    out: dict[str, str] = {}
    parts: dict[str, dict[str, str]] = {}
    for name, prec in layers.items():
        parent, _, leaf = name.rpartition(".")
        fused = next((f for f, members in _FUSED.items() if leaf in members), None)
        if fused is None:
            out[name] = prec
            continue
        key = f"{parent}.{fused}" if parent else fused
        parts.setdefault(key, {})[name] = prec
    for key, members in parts.items():
        precs = set(members.values())
        if len(precs) > 1:
            detail = ", ".join(f"{n.rpartition('.')[2]}={p}" for n, p in sorted(members.items()))
            raise HwcostError(f"vLLM fuses {key} but the plan gives its parts different precisions "
                              f"({detail}); plan with --group '*.q_proj,*.k_proj,*.v_proj' "
                              "--group '*.gate_proj,*.up_proj'")
        out[key] = precs.pop()
    return out


def _check_names(fp8: list[str], high: list[str]) -> None:
    """Every name means the same module to INC's regex and substring matchers, and no
    blocklist name blocks an fp8 layer (an allowlist name that also selects another plan layer
    is harmless: that layer is fp8 too, or blocked by its own name)."""
    for name in fp8 + high:
        if _REGEX_SPECIAL.search(name):
            raise HwcostError(f"layer name {name!r} has regex metacharacters: INC's regex and "
                              "substring matchers would select different modules")
    for name in high:
        for layer in fp8:
            if name in layer or re.search(name, layer):
                raise HwcostError(f"INC's blocklist name {name} would also block the fp8 layer "
                                  f"{layer} (INC matches names as unanchored patterns)")


def _check_quantizer(plan: PlanDocument) -> None:
    """Refuse a plan whose fp8 losses were scored with another quantizer than the one INC
    runs on its device (plans from before quantizer keys, ``unknown``, cannot be checked)."""
    from hwcost.catalog import fp8_e4m3_max
    from hwcost.quantizer import UNKNOWN, inc_quantizer, parse_quantizer

    key = plan.quantizer
    if not key or key == UNKNOWN or "fp8_e4m3" not in plan.layers.values():
        return
    dev = plan.device
    want = inc_quantizer(fp8_e4m3_max(dev.name or "", dev.kind))
    if parse_quantizer(key) != want:
        raise HwcostError(f"the plan's fp8 losses were scored with quantizer {key}, not with "
                          f"INC's on {dev.name or dev.kind} ({want.key}): run "
                          f"`hwcost sensitivity ... --quantizer {want.key}` and plan again")


def to_inc(doc: PlanLike, naming: str = "hf") -> dict:
    """INC's FP8 config (the JSON ``QUANT_CONFIG`` names) for a plan's fp8 layers.

    ``naming``: ``hf`` (optimum-habana: the model's own module names) or ``vllm``
    (vLLM-gaudi: fused ``qkv_proj`` and ``gate_up_proj``). FP8 layers go to
    ``allowlist.names``, the others to ``blocklist.names``; ``allowlist.types`` is empty so
    that nothing outside the plan (attention matmuls, KV cache) is quantized.
    """
    plan = validate_plan(doc)
    _check_quantizer(plan)
    if naming not in NAMINGS:
        raise HwcostError(f"unknown INC naming {naming!r}; known: {', '.join(NAMINGS)}")
    layers = vllm_names(plan.layers) if naming == IncNaming.VLLM else dict(plan.layers)
    bad = sorted({p for p in layers.values() if p not in _HIGH and p != "fp8_e4m3"})
    if bad:
        raise HwcostError(f"the INC FP8 config cannot express {', '.join(bad)} layers (INC's "
                          "dynamic FP8 quantizer is e4m3 only); export with --format torchao")
    fp8 = sorted(n for n, p in layers.items() if p == "fp8_e4m3")
    if not fp8:
        raise HwcostError("the plan has no fp8_e4m3 layer: there is nothing for INC to quantize")
    high = sorted(n for n, p in layers.items() if p in _HIGH)
    _check_names(fp8, high)
    hp = plan.baseline if plan.baseline in _HIGH else "bf16"
    return {
        "mode": "QUANTIZE",
        "observer": "maxabs",
        "scale_method": SCALE_METHOD,
        "dynamic_quantization": True,
        "scale_format": "CONST",
        "fp8_config": "E4M3",
        "hp_dtype": hp,
        "allowlist": {"types": [], "names": fp8},
        "blocklist": {"types": [], "names": high},
    }


def check_inc_schema(cfg: dict) -> None:
    """Raise HwcostError unless ``cfg`` uses only INC's documented keys and values and the
    dynamic-quantization rules INC enforces when it parses the config."""
    for key, value in cfg.items():
        if key not in INC_SCHEMA:
            raise HwcostError(f"INC FP8 config key {key!r} is not one INC reads")
        allowed = INC_SCHEMA[key]
        if allowed is not None and str(value).upper() not in {a.upper() for a in allowed}:
            raise HwcostError(f"INC FP8 config {key}={value!r}; INC accepts {', '.join(allowed)}")
    for key in ("allowlist", "blocklist"):
        lst = cfg.get(key, {})
        if set(lst) - {"names", "types"} or not all(isinstance(v, list) for v in lst.values()):
            raise HwcostError(f"INC FP8 config {key} must hold 'names' and 'types' lists")
    dynamic = str(cfg.get("dynamic_quantization", False)).lower() == "true"
    method = str(cfg.get("scale_method", "maxabs_hw")).lower()
    if method in DYNAMIC_ONLY and not dynamic:
        raise HwcostError(f"INC accepts scale_method {method} only with dynamic_quantization")
    if dynamic and str(cfg.get("mode", "AUTO")).upper() not in ("QUANTIZE", "LOAD"):
        raise HwcostError("INC runs dynamic quantization only in QUANTIZE or LOAD mode")
