"""A plan's document as a frozen, typed record: what the planner builds
(``hwcost.planner.export.plan_document``), the store keeps as JSON, exports write, and every
reader reads by attribute (``doc.predicted.speedup``, ``doc.device.kind``).

The JSON form is ``{"type": "hwcost.plan", "version": 1, "data": {...}}``.
:meth:`PlanDocument.from_json` checks it and says what is wrong in one :class:`PlanInvalid`
line (a missing field, a wrong type, a newer version); :meth:`PlanDocument.to_json` gives the
same JSON back. A document is written again exactly as it was read, so that a stored plan
round-trips byte for byte (``json.dumps(..., sort_keys=True)``):

- keys a document lacks (an older plan, a hand-written one) stay out: each part records them
  in ``absent``; :meth:`updated` sets a field and writes it from then on (even as null);
- keys this version does not know are carried along unchanged in ``extra``;
- numbers keep their JSON form (an int stays an int in a float field).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, TypeVar

from hwcost.errors import HwcostError, PlanInvalid
from hwcost.precision import parse_precision

__all__ = ["PLAN_TYPE", "PLAN_VERSION", "PlanConstraints", "PlanDevice", "PlanDocument",
           "PlanModel", "PlanPrediction", "PlanSensitivity", "PlanSolver", "PlanSubgraph"]

PLAN_TYPE = "hwcost.plan"
PLAN_VERSION = 1

_P = TypeVar("_P", bound="_Part")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class _Codec:
    """How one field is read from JSON (checked) and written back."""

    label: str  # what the field must be, for the error line
    check: Callable[[Any], bool]
    read: Callable[[Any, str], Any] = lambda v, _where: v
    write: Callable[[Any], Any] = lambda v: v


def _bad(where: str, label: str) -> PlanInvalid:
    return PlanInvalid(f"plan field {where!r} is missing or not a {label}")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_STR = _Codec("str", lambda v: isinstance(v, str))
_NUM = _Codec("number", _is_num)
_INT = _Codec("whole number", _is_int)


def _nullable(c: _Codec) -> _Codec:
    return _Codec(f"{c.label} or null", lambda v: v is None or c.check(v),
                  lambda v, where: None if v is None else c.read(v, where),
                  lambda v: None if v is None else c.write(v))


def _list_of(c: _Codec, label: str) -> _Codec:
    def read(v: Any, where: str) -> tuple:
        return tuple(c.read(x, f"{where}[{i}]") for i, x in enumerate(v))

    return _Codec(label, lambda v: isinstance(v, list) and all(c.check(x) for x in v), read,
                  lambda v: [c.write(x) for x in v])


def _part(cls: type[_Part]) -> _Codec:
    return _Codec("dict", lambda v: isinstance(v, dict), lambda v, where: cls._read(v, where),
                  lambda v: v.to_dict())


def _layers(v: Any, where: str) -> Mapping[str, str]:
    for layer, prec in v.items():
        if not isinstance(prec, str):
            raise PlanInvalid(f"plan layer entry {layer!r}: {prec!r} is not name -> precision")
        try:
            parse_precision(prec)
        except HwcostError:
            raise PlanInvalid(f"plan layer {layer} has unknown precision {prec!r}") from None
    return MappingProxyType(dict(v))


_STRS = _list_of(_STR, "list of str")
_NUMS = _list_of(_NUM, "list of numbers")
_STR_LISTS = _list_of(_STRS, "list of lists of str")
_LAYERS = _Codec("dict", lambda v: isinstance(v, dict), _layers, dict)


def _json(codec: _Codec, *, required: bool = False, default: Any = None) -> Any:
    """A field read from and written to the JSON key of its name."""
    meta = {"codec": codec, "required": required}
    return field(metadata=meta) if required else field(default=default, metadata=meta)


@dataclass(frozen=True)
class _Part:
    """One JSON object of the document: its fields, the keys it lacked and the keys this
    version does not know."""

    absent: frozenset[str] = field(default=frozenset(), kw_only=True, repr=False)
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, kw_only=True, repr=False)

    @classmethod
    def _read(cls: type[_P], obj: Any, where: str = "") -> _P:
        if not isinstance(obj, dict):
            raise _bad(where, "dict")
        values: dict[str, Any] = {}
        absent = set()
        for f in fields(cls):
            codec, path = f.metadata.get("codec"), f"{where}.{f.name}" if where else f.name
            if codec is None:
                continue
            if f.name not in obj:
                if f.metadata["required"]:
                    raise _bad(path, codec.label)
                absent.add(f.name)
                continue
            if not codec.check(obj[f.name]):
                raise _bad(path, codec.label)
            values[f.name] = codec.read(obj[f.name], path)
        known = {f.name for f in fields(cls) if "codec" in f.metadata}
        extra = {k: v for k, v in obj.items() if k not in known}
        return cls(**values, absent=frozenset(absent),
                   extra=MappingProxyType(extra) if extra else _EMPTY)

    @classmethod
    def from_dict(cls: type[_P], obj: Mapping[str, Any], where: str = "") -> _P:
        """This part from its JSON object (checked; ``where`` names it in the error line)."""
        return cls._read(dict(obj), where)

    def to_dict(self) -> dict[str, Any]:
        """This part as its JSON object."""
        out = {f.name: f.metadata["codec"].write(getattr(self, f.name)) for f in fields(self)
               if "codec" in f.metadata and f.name not in self.absent}
        out.update(self.extra)
        return out

    def __deepcopy__(self: _P, memo: dict) -> _P:
        return self  # immutable (its maps are read-only views): a copy is the same value

    def updated(self: _P, **changes: Any) -> _P:
        """A copy with these fields set; they are written to JSON from now on, None as null."""
        return replace(self, absent=self.absent - set(changes), **changes)


@dataclass(frozen=True)
class PlanModel(_Part):
    """The planned model: its name, architecture fingerprint and weights digest."""

    name: str = _json(_STR, required=True)
    fingerprint: str = _json(_STR, required=True)
    checkpoint: str | None = _json(_nullable(_STR))


@dataclass(frozen=True)
class PlanDevice(_Part):
    """The device the plan was made for."""

    fingerprint: str = _json(_STR, required=True)
    kind: str = _json(_STR, required=True)
    name: str | None = _json(_nullable(_STR))


@dataclass(frozen=True)
class PlanSubgraph(_Part):
    """One subgraph's chosen config, with its predicted gain and loss."""

    position: int | None = _json(_nullable(_INT))
    signature: str | None = _json(_nullable(_STR))
    kind: str | None = _json(_nullable(_STR))
    layers: tuple[str, ...] = _json(_STRS, default=())
    config: tuple[str, ...] = _json(_STRS, default=())
    gain_us: float | None = _json(_nullable(_NUM))
    loss_mse: float | None = _json(_nullable(_NUM))
    layer_loss_mse: tuple[float, ...] = _json(_NUMS, default=())
    source: str | None = _json(_nullable(_STR))


@dataclass(frozen=True)
class PlanPrediction(_Part):
    """What the plan is predicted to give, and how sure that is (noise keys: time plans of
    ``planner.plans.make_plan`` only)."""

    baseline_us: float | None = _json(_nullable(_NUM))
    plan_us: float | None = _json(_nullable(_NUM))
    speedup: float | None = _json(_nullable(_NUM))
    gain_us: float | None = _json(_nullable(_NUM))
    loss_mse: float | None = _json(_nullable(_NUM))
    weight_bytes: int | None = _json(_nullable(_NUM))
    measured_share: float | None = _json(_nullable(_NUM))
    baseline_from: str | None = _json(_nullable(_STR))
    speedup_rel_error: float | None = _json(_nullable(_NUM))
    p_not_fastest: float | None = _json(_nullable(_NUM))  # chance a rival plan is faster
    rivals: int | None = _json(_nullable(_INT))
    latency_stderr_us: float | None = _json(_nullable(_NUM))
    gain_shrink_sigmas: float | None = _json(_nullable(_NUM))
    loss_scale: float | None = _json(_nullable(_NUM))  # the closed loop's measured ratio


@dataclass(frozen=True)
class PlanSolver(_Part):
    """How the solver ended."""

    status: str | None = _json(_nullable(_STR))
    gap: float | None = _json(_nullable(_NUM))
    wall_s: float | None = _json(_nullable(_NUM))


@dataclass(frozen=True)
class PlanSensitivity(_Part):
    """The sensitivity table the plan's losses come from."""

    method: str | None = _json(_nullable(_STR))
    calib_fingerprint: str | None = _json(_nullable(_STR))
    checkpoint: str | None = _json(_nullable(_STR))
    quantizer: str | None = _json(_nullable(_STR))


@dataclass(frozen=True)
class PlanConstraints(_Part):
    """The constraints the plan was solved under (``planner.objectives.Constraints``)."""

    max_loss_mse: float | None = _json(_nullable(_NUM))
    max_weight_bytes: int | None = _json(_nullable(_NUM))
    pins: tuple[tuple[str, ...], ...] = _json(_STR_LISTS, default=())
    groups: tuple[tuple[str, ...], ...] = _json(_STR_LISTS, default=())


@dataclass(frozen=True)
class PlanDocument(_Part):
    """A plan document (the JSON's ``data``), typed; :meth:`from_json` / :meth:`to_json`."""

    model: PlanModel = _json(_part(PlanModel), required=True)
    device: PlanDevice = _json(_part(PlanDevice), required=True)
    shape: str = _json(_STR, required=True)
    objective: str = _json(_STR, required=True)
    baseline: str = _json(_STR, required=True)
    layers: Mapping[str, str] = _json(_LAYERS, required=True)  # layer -> precision
    predicted: PlanPrediction = _json(_part(PlanPrediction), required=True)
    quantizer: str | None = _json(_nullable(_STR))
    precisions: tuple[str, ...] = _json(_STRS, default=())
    max_loss_mse: float | None = _json(_nullable(_NUM))  # the absolute bound solved under
    threshold: str | None = _json(_nullable(_STR))  # the bound as the user wrote it
    constraints: PlanConstraints | None = _json(_nullable(_part(PlanConstraints)))
    subgraphs: tuple[PlanSubgraph, ...] = _json(_list_of(_part(PlanSubgraph), "list of dicts"),
                                                default=())
    solver: PlanSolver | None = _json(_nullable(_part(PlanSolver)))
    sensitivity: PlanSensitivity | None = _json(_nullable(_part(PlanSensitivity)))
    notes: tuple[str, ...] = _json(_STRS, default=())  # about the bound
    threshold_abs: float | None = _json(_nullable(_NUM))
    plan_id: int | None = _json(_nullable(_INT))  # its number in the store it came from

    @classmethod
    def from_json(cls, doc: Any) -> PlanDocument:
        """The record of a plan JSON document; ``PlanInvalid`` (one line) when it is not one."""
        if not isinstance(doc, dict):
            raise PlanInvalid("a plan must be a JSON object")
        if doc.get("type") != PLAN_TYPE:
            raise PlanInvalid(f"not an hwcost plan: type is {doc.get('type')!r}, expected "
                              f"{PLAN_TYPE!r}")
        version = doc.get("version")
        if not _is_int(version) or version < 1:
            raise PlanInvalid(f"plan version {version!r} is not a positive integer")
        if version > PLAN_VERSION:
            raise PlanInvalid(f"plan version {version} is newer than this hwcost reads "
                              f"({PLAN_VERSION}); upgrade hwcost")
        if not isinstance(doc.get("data"), dict):
            raise PlanInvalid("plan has no 'data' object")
        return cls._read(doc["data"])

    @classmethod
    def of(cls, doc: PlanDocument | Mapping[str, Any]) -> PlanDocument:
        """``doc`` itself, or the record of a plan JSON document (checked)."""
        return doc if isinstance(doc, PlanDocument) else cls.from_json(doc)

    def to_json(self) -> dict[str, Any]:
        """The versioned JSON document (what the store keeps and ``export-plan`` writes)."""
        return {"type": PLAN_TYPE, "version": PLAN_VERSION, "data": self.to_dict()}

    def __post_init__(self) -> None:
        # read-only, also when built from a dict: a frozen record's layers cannot change
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))
        parse_precision(self.baseline)
        if not self.layers:
            raise PlanInvalid("plan assigns no layer")

    @property
    def sensitivity_checkpoint(self) -> str | None:
        """The weights digest whose sensitivity table the plan's losses come from."""
        return self.sensitivity.checkpoint if self.sensitivity is not None else None

    @property
    def sensitivity_quantizer(self) -> str | None:
        """The quantizer key the sensitivity table scored."""
        return self.sensitivity.quantizer if self.sensitivity is not None else None

    def with_plan_id(self, plan_id: int) -> PlanDocument:
        """The document tied to its row in a store."""
        return self.updated(plan_id=plan_id)

    def precision_counts(self) -> dict[str, int]:
        """How many layers run in each precision, by precision name."""
        counts: dict[str, int] = {}
        for p in self.layers.values():
            counts[p] = counts.get(p, 0) + 1
        return dict(sorted(counts.items()))

