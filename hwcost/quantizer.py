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

    @property
    def key(self) -> str:
        """Canonical text, e.g. ``e4m3=448,e5m2=57344,w=per_channel,a=per_token``: short,
        readable, and equal for equal quantizers (numbers in their shortest form)."""
        return (f"e4m3={_num(self.fp8_e4m3_max)},e5m2={_num(self.fp8_e5m2_max)},"
                f"w={self.weight_scale},a={self.activation_scale}")

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

_ALIASES = {"default": DEFAULT, "gaudi2": GAUDI2}


def parse_quantizer(text: str | Quantizer | None) -> Quantizer:
    """A quantizer from its key, an alias (``default``, ``gaudi2``) or None (the default)."""
    if text is None or isinstance(text, Quantizer):
        return text or DEFAULT
    t = str(text).strip()
    if t.lower() in _ALIASES:
        return _ALIASES[t.lower()]
    names = {"e4m3": "fp8_e4m3_max", "e5m2": "fp8_e5m2_max", "w": "weight_scale",
             "a": "activation_scale"}
    kw: dict = {}
    for part in t.split(","):
        k, sep, v = part.partition("=")
        if not sep or k.strip() not in names:
            raise HwcostError(f"bad quantizer {text!r}: expected default, gaudi2 or "
                              f"{DEFAULT.key}")
        name = names[k.strip()]
        try:
            kw[name] = float(v) if name.startswith("fp8") else v.strip()
        except ValueError:
            raise HwcostError(f"bad quantizer {text!r}: {k.strip()} must be a number") from None
    return Quantizer(**kw)
