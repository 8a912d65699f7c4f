"""Workload shape keys such as ``batch=1,seq=128,phase=prefill``."""

from __future__ import annotations

from dataclasses import dataclass

from hwcost.bounds import SHAPE_MAX
from hwcost.errors import BadShape

_ORDER = ("batch", "seq", "kv", "phase")
_PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class Shape:
    """A workload: batch size, tokens per sequence in this call, KV length and phase.

    Prefill processes ``seq`` new tokens per sequence; decode processes one new token per
    sequence against a cache of ``kv`` tokens.
    """

    batch: int = 1
    seq: int = 1
    kv: int = 0
    phase: str = "prefill"

    def __post_init__(self) -> None:
        if self.batch < 1 or self.seq < 1 or self.kv < 0:
            raise BadShape(f"shape needs batch>=1, seq>=1, kv>=0; got {self}")
        if self.phase not in _PHASES:
            raise BadShape(f"phase must be one of {', '.join(_PHASES)}; got {self.phase!r}")

    @property
    def tokens(self) -> int:
        """New tokens processed per call, the M dimension of every linear layer."""
        return self.batch * (self.seq if self.phase == "prefill" else 1)

    @property
    def key(self) -> str:
        parts = [f"batch={self.batch}"]
        if self.phase == "prefill":
            parts.append(f"seq={self.seq}")
        if self.kv:
            parts.append(f"kv={self.kv}")
        parts.append(f"phase={self.phase}")
        return ",".join(parts)

    @property
    def without_kv(self) -> Shape:
        """This shape with the KV length dropped: ``batch=B,phase=decode`` (one new token per
        sequence, no cache) for a decode shape, the shape itself otherwise."""
        return Shape(batch=self.batch, phase="decode") if self.phase == "decode" else self

    def __str__(self) -> str:
        return self.key


READS_KV = "kv_cache"
"""Key of ``SubgraphInfo.extra`` saying whether the subgraph reads a KV cache (holds an
attention that indexes the cache by its ``layer_idx``)."""


def reads_kv(extra: dict | None) -> bool:
    """Whether a subgraph's latency depends on the KV length. Subgraphs stored before the
    flag existed count as reading it, so their decode timings stay keyed by the full shape."""
    return (extra or {}).get(READS_KV, True) is not False


def timing_shape(shape: Shape | str, kv_dependent: bool) -> Shape:
    """The shape a subgraph's timing at ``shape`` is measured and stored under.

    Only attention cores read the KV cache: a decode step's linears, MLPs and norms cost the
    same at every KV length, so for a subgraph that does not read it a decode shape drops
    its KV length (``batch=8,kv=1024,phase=decode`` -> ``batch=8,phase=decode``) and one
    measurement per (batch, decode) serves every KV bucket. Other shapes are unchanged."""
    shape = parse_shape(shape)
    return shape if kv_dependent or not shape.kv else shape.without_kv


def parse_shape(text: str | Shape) -> Shape:
    """Parse a shape key. Order and spaces do not matter; unknown fields are an error."""
    if isinstance(text, Shape):
        return text
    fields: dict[str, str] = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise BadShape(f"cannot parse shape {text!r}: expected key=value pairs like "
                           f"'batch=1,seq=128' (bad part {part!r})")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in _ORDER:
            raise BadShape(f"cannot parse shape {text!r}: unknown field {k!r}; "
                           f"known: {', '.join(_ORDER)}")
        if k in fields:
            raise BadShape(f"cannot parse shape {text!r}: field {k!r} is given twice")
        fields[k] = v
    if not fields:
        raise BadShape("empty shape; give e.g. 'batch=1,seq=128'")
    try:
        ints = {k: int(v) for k, v in fields.items() if k != "phase"}
    except ValueError:
        raise BadShape(f"cannot parse shape {text!r}: batch, seq and kv must be integers") from None
    for k, v in ints.items():
        if v > SHAPE_MAX[k]:
            raise BadShape(f"cannot parse shape {str(text)[:60]!r}: {k} must be at most "
                           f"{SHAPE_MAX[k]}")
    phase = fields.get("phase", "prefill")
    if phase == "decode" and "seq" in ints and ints["seq"] != 1:
        raise BadShape(f"cannot parse shape {text!r}: decode processes one token; use kv=N")
    ints.setdefault("seq", 1)
    return Shape(phase=phase, **ints)
