"""Which quantizer a sensitivity table scored, as a short canonical key.

Loss sensitivities depend on the exact quantize-dequantize the emulation applied: the fp8
range (448 for OCP e4m3, 240 on Gaudi 2), how scales are grouped, how values round. A table
scored with one quantizer must not plan a deployment that uses another, so sensitivities,
plans and validations carry :attr:`Quantizer.key` next to the checkpoint digest. Torch-free:
``profiles.precisions`` turns a quantizer into emulations.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from hwcost.errors import HwcostError

UNKNOWN = "unknown"
"""Key of rows stored before quantizer keys existed: never matches a real quantizer."""

_SCALES = ("per_channel", "per_tensor")
_ACT_SCALES = ("per_token", "per_tensor")
_ROUNDINGS = ("exact", "pow2")


@dataclass(frozen=True)
class Quantizer:
    """The emulation parameters a sensitivity score depends on.

    Defaults are ``profiles.precisions``' conventions: weights scaled per output channel,
    activations per token, both symmetric; fp8 scales map a row's absolute maximum to the
    format's largest finite value.
    """

    fp8_e4m3_max: float = 448.0
    fp8_e5m2_max: float = 57344.0
    weight_scale: str = "per_channel"
    activation_scale: str = "per_token"
    scale_rounding: str = "exact"
    """``exact``: fp8 scales map the absmax to the range; ``pow2``: Intel Neural Compressor's
    dynamic quantizer (power-of-two scales, weights backed off to half the range, Gaudi's
    grid: ``profiles.precisions.inc_fp8_emulation``), what ``planner.inc`` exports."""

    def __post_init__(self) -> None:
        for name in ("fp8_e4m3_max", "fp8_e5m2_max"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and v == v and v != float("inf")):
                raise HwcostError(f"quantizer {name}={v!r} must be a finite positive number")
        if self.weight_scale not in _SCALES:
            raise HwcostError(f"quantizer weight_scale {self.weight_scale!r}; known: "
                              f"{', '.join(_SCALES)}")
        if self.activation_scale not in _ACT_SCALES:
            raise HwcostError(f"quantizer activation_scale {self.activation_scale!r}; known: "
                              f"{', '.join(_ACT_SCALES)}")
        if self.scale_rounding not in _ROUNDINGS:
            raise HwcostError(f"quantizer scale_rounding {self.scale_rounding!r}; known: "
                              f"{', '.join(_ROUNDINGS)}")

    @property
    def key(self) -> str:
        """Canonical text, e.g. ``e4m3=448,e5m2=57344,w=per_channel,a=per_token``: short,
        readable, and equal for equal quantizers (numbers in their shortest form)."""
        # r= only when not exact, so keys stored before it existed stay canonical
        return (f"e4m3={_num(self.fp8_e4m3_max)},e5m2={_num(self.fp8_e5m2_max)},"
                f"w={self.weight_scale},a={self.activation_scale}"
                + ("" if self.scale_rounding == "exact" else f",r={self.scale_rounding}"))

    def fp8_max(self, precision: str) -> float | None:
        """The fp8 range this quantizer uses for ``precision`` (None for non-fp8 formats)."""
        return {"fp8_e4m3": self.fp8_e4m3_max, "fp8_e5m2": self.fp8_e5m2_max}.get(str(precision))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _num(v: float) -> str:
    return f"{float(v):g}"


DEFAULT = Quantizer()
GAUDI2 = Quantizer(fp8_e4m3_max=240.0)
"""Intel Gaudi 2's fp8 e4m3 (range +-240), what INC's FP8 tables are scored with there."""

INC_GAUDI2 = Quantizer(fp8_e4m3_max=240.0, scale_rounding="pow2")
"""Intel Neural Compressor's dynamic FP8 quantizer on Gaudi 2 (what ``planner.inc`` exports)."""
INC_GAUDI3 = Quantizer(fp8_e4m3_max=448.0, scale_rounding="pow2")
"""Intel Neural Compressor's dynamic FP8 quantizer on Gaudi 3."""

_ALIASES = {"default": DEFAULT, "gaudi2": GAUDI2, "inc-gaudi2": INC_GAUDI2,
            "inc-gaudi3": INC_GAUDI3}


def inc_quantizer(fp8_e4m3_max: float) -> Quantizer:
    """INC's dynamic FP8 quantizer with a device's e4m3 range (``hwcost.catalog.fp8_e4m3_max``)."""
    return Quantizer(fp8_e4m3_max=float(fp8_e4m3_max), scale_rounding="pow2")


def parse_quantizer(text: str | Quantizer | None) -> Quantizer:
    """A quantizer from its key, an alias (``default``, ``gaudi2``, ``inc-gaudi2``,
    ``inc-gaudi3``) or None (the default)."""
    if text is None or isinstance(text, Quantizer):
        return text or DEFAULT
    t = str(text).strip()
    if t.lower() in _ALIASES:
        return _ALIASES[t.lower()]
    names = {"e4m3": "fp8_e4m3_max", "e5m2": "fp8_e5m2_max", "w": "weight_scale",
             "a": "activation_scale", "r": "scale_rounding"}
    kw: dict = {}
    for part in t.split(","):
        k, sep, v = part.partition("=")
        if not sep or k.strip() not in names:
            raise HwcostError(f"bad quantizer {text!r}: expected default, gaudi2, inc-gaudi2, "
                              "inc-gaudi3 or "
                              f"{DEFAULT.key}")
        name = names[k.strip()]
        try:
            kw[name] = float(v) if name.startswith("fp8") else v.strip()
        except ValueError:
            raise HwcostError(f"bad quantizer {text!r}: {k.strip()} must be a number") from None
    return Quantizer(**kw)
