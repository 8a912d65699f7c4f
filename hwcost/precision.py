"""Canonical precision names and their storage widths.

This module only names precisions; how each is emulated and deployed on a backend lives
in ``profiles.precisions`` (it needs torch).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum

from hwcost.errors import UnknownPrecision


class Precision(str, Enum):
    """A numeric format a layer's weights and activations can run in."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8_E4M3 = "fp8_e4m3"
    FP8_E5M2 = "fp8_e5m2"
    INT8 = "int8"
    INT8_WO = "int8_wo"
    INT4_WO = "int4_wo"
    FP8_WO = "fp8_wo"

    def __str__(self) -> str:
        return self.value

    @property
    def bytes(self) -> float:
        """Bytes per stored element."""
        return _BYTES[self]

    @property
    def bits(self) -> int:
        return int(_BYTES[self] * 8)

    @property
    def weight_only(self) -> bool:
        """Weight-only formats: low-precision weights, activations and output in bf16."""
        return self in WEIGHT_ONLY_FORMATS


_BYTES = {
    Precision.FP32: 4.0,
    Precision.BF16: 2.0,
    Precision.FP16: 2.0,
    Precision.FP8_E4M3: 1.0,
    Precision.FP8_E5M2: 1.0,
    Precision.INT8: 1.0,
    Precision.INT8_WO: 1.0,
    Precision.INT4_WO: 0.5,
    Precision.FP8_WO: 1.0,
}

WEIGHT_ONLY_FORMATS = frozenset({Precision.INT8_WO, Precision.INT4_WO, Precision.FP8_WO})
"""Weight-only formats (``*_wo``): weights stored in int8 (per output channel), int4 (groups
of ``INT4_GROUP`` inputs, asymmetric) or fp8 e4m3 (per output channel); activations, the
matmul and the output in bf16. They shrink the bytes a decode step reads, not the math."""

INT4_GROUP = 32
"""Inputs per int4 weight group (one bf16 scale and zero per group and output channel)."""


def parse_precision(name: str | Precision) -> Precision:
    """Return the Precision for a canonical name; raise UnknownPrecision listing the known ones."""
    if isinstance(name, Precision):
        return name
    try:
        return Precision(str(name).strip().lower())
    except ValueError:
        known = ", ".join(p.value for p in Precision)
        raise UnknownPrecision(f"unknown precision {name!r}; known: {known}") from None


def parse_precisions(names: str | Iterable[str]) -> list[Precision]:
    """Parse a comma-separated list (or an iterable) of precision names."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    return [parse_precision(n) for n in names]


Config = tuple[Precision, ...]
"""The precision of each slot of a subgraph, in slot order."""


def config_key(config: Sequence[Precision | str]) -> str:
    """Canonical string form of a config, as stored: ``"bf16,int8,int8"``."""
    return ",".join(parse_precision(p).value for p in config)


def parse_config(key: str) -> Config:
    """Inverse of :func:`config_key`."""
    if not key:
        raise UnknownPrecision("empty config")
    return tuple(parse_precisions(key))


BASELINE = {"cpu": Precision.FP32, "cuda": Precision.BF16, "hpu": Precision.BF16}
"""The high-precision reference each device kind is compared against."""

CANDIDATES = {
    "cpu": (Precision.FP32, Precision.BF16, Precision.INT8, Precision.FP8_E4M3),
    "cuda": (Precision.BF16, Precision.FP8_E4M3, Precision.INT8),
    "hpu": (Precision.BF16, Precision.FP8_E4M3),
}
"""Precisions each device kind profiles and plans by default (fp8 on cpu is emulated: measured,
and slower)."""

WEIGHT_ONLY = {
    "cpu": (Precision.INT8_WO, Precision.INT4_WO),
    "cuda": (Precision.FP8_WO,),
}
"""Weight-only formats each device kind deploys with a real kernel; opt-in (``--precisions``),
so default campaigns keep their configs and their cut."""
