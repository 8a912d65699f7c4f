"""Serving workloads: requests of (prompt, gen, batch) and the shapes that price them.

A request of ``gen`` new tokens after a ``prompt``-token prompt, ``batch`` sequences at once,
runs as ``generate()`` does: one prefill of the prompt (``batch=B,seq=P,phase=prefill``; it
yields the first new token), then ``gen - 1`` decode steps on KV lengths ``P, P+1, ...,
P+gen-2`` (``batch=B,kv=K,phase=decode``). Profiling a shape per KV length is wasteful, so
decode costs are measured at a few **KV buckets** and linearly interpolated between them:
:func:`decode_weights` turns the steps of a request into weights on its buckets, so the
whole request's time is a weighted sum of per-shape costs — the same weighted sum for every
configuration, which keeps the planner's problem a multiple-choice one.

A workload is one request (``prompt=1024,gen=200,batch=8``) or a file (JSON or CSV) with a
distribution of requests, each with a ``weight`` (its share of traffic; default 1).

No torch here: the planner prices workloads on a laptop.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hwcost.errors import BadWorkload
from hwcost.shape import Shape

PREFIX = "workload:"
"""Plans and latencies of a workload are stored under the shape ``workload:<key>``."""
_FIELDS = ("prompt", "gen", "batch")


@dataclass(frozen=True)
class Request:
    """``batch`` sequences of ``prompt`` tokens, each generating ``gen`` new tokens; ``weight``
    is the request's share of the traffic."""

    prompt: int
    gen: int
    batch: int = 1
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.prompt < 1 or self.gen < 1 or self.batch < 1:
            raise BadWorkload(f"a request needs prompt>=1, gen>=1, batch>=1; got "
                              f"prompt={self.prompt}, gen={self.gen}, batch={self.batch}")
        if not self.weight > 0 or self.weight == float("inf"):
            raise BadWorkload(f"a request's weight must be a positive number; got {self.weight}")

    @property
    def key(self) -> str:
        w = "" if self.weight == 1.0 else f",weight={self.weight:g}"
        return f"prompt={self.prompt},gen={self.gen},batch={self.batch}{w}"

    @property
    def prefill(self) -> Shape:
        return Shape(batch=self.batch, seq=self.prompt, phase="prefill")

    @property
    def decode_kvs(self) -> range:
        """KV lengths of the decode steps (the prefill makes the first new token)."""
        return range(self.prompt, self.prompt + self.gen - 1)

    @property
    def new_tokens(self) -> int:
        return self.batch * self.gen


@dataclass(frozen=True)
class Workload:
    """A distribution of requests; its time is the weighted mean request latency."""

    requests: tuple[Request, ...]

    def __post_init__(self) -> None:
        if not self.requests:
            raise BadWorkload("a workload needs at least one request")

    @property
    def key(self) -> str:
        return ";".join(r.key for r in self.requests)

    @property
    def shape_key(self) -> str:
        """The key plans and latencies of this workload are stored under."""
        return PREFIX + self.key

    @property
    def total_weight(self) -> float:
        return sum(r.weight for r in self.requests)

    def __str__(self) -> str:
        return self.key


def is_workload_key(shape: str) -> bool:
    """Whether a stored shape names a workload (``workload:...``) rather than one shape."""
    return str(shape).startswith(PREFIX)


def _int_field(row: Mapping, name: str, where: str) -> int:
    if name not in row or row[name] in (None, ""):
        raise BadWorkload(f"{where}: missing field {name!r} (need {', '.join(_FIELDS)})")
    try:
        v = float(row[name])
    except (TypeError, ValueError):
        raise BadWorkload(f"{where}: field {name!r} is not a number: {row[name]!r}") from None
    if v != int(v) or v < 1:
        raise BadWorkload(f"{where}: field {name!r} must be a positive integer; got {row[name]!r}")
    return int(v)


def _request(row: Mapping, where: str) -> Request:
    if not isinstance(row, Mapping):
        raise BadWorkload(f"{where}: expected an object with {', '.join(_FIELDS)}")
    unknown = sorted(set(row) - {*_FIELDS, "weight"})
    if unknown:
        raise BadWorkload(f"{where}: unknown field {unknown[0]!r}; known: "
                          f"{', '.join(_FIELDS)}, weight")
    ints = {k: _int_field(row, k, where) for k in _FIELDS}
    weight = row.get("weight", 1.0)
    try:
        weight = float(1.0 if weight in (None, "") else weight)
    except (TypeError, ValueError):
        raise BadWorkload(f"{where}: field 'weight' is not a number: {weight!r}") from None
    if not weight > 0:
        raise BadWorkload(f"{where}: field 'weight' must be positive; got {weight!r}")
    return Request(ints["prompt"], ints["gen"], ints["batch"], weight)


def parse_workload(spec: str | Workload) -> Workload:
    """A workload from ``prompt=P,gen=G,batch=B[,weight=W]`` (several joined by ``;``, or
    after ``workload:``), or from a JSON (a list of objects, or ``{"requests": [...]}``) or
    CSV file (header ``prompt,gen,batch[,weight]``). Raises BadWorkload with one line."""
    if isinstance(spec, Workload):
        return spec
    text = str(spec).strip()
    if text.startswith(PREFIX):
        text = text[len(PREFIX):]
    path = Path(text)
    if "=" not in text or path.suffix.lower() in (".json", ".csv"):
        return _from_file(path)
    reqs = []
    for i, part in enumerate(p for p in text.split(";") if p.strip()):
        row: dict[str, str] = {}
        for item in part.split(","):
            if not item.strip():
                continue
            if "=" not in item:
                raise BadWorkload(f"cannot parse workload {spec!r}: expected key=value pairs like "
                                  "'prompt=1024,gen=200,batch=8'")
            k, v = (s.strip() for s in item.split("=", 1))
            row[k] = v
        reqs.append(_request(row, f"workload {part.strip()!r}" if i or ";" in text
                             else f"workload {text!r}"))
    return Workload(tuple(reqs))


def _from_file(path: Path) -> Workload:
    if not path.is_file():
        raise BadWorkload(f"workload {str(path)!r} is neither prompt=P,gen=G,batch=B nor a file")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadWorkload(f"cannot read workload file {path}: {e}") from None
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        where = [f"{path} line {i + 2}" for i in range(len(rows))]
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BadWorkload(f"workload file {path} is not valid JSON: {e.msg} at line "
                              f"{e.lineno}") from None
        rows = data.get("requests") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise BadWorkload(f"workload file {path}: expected a list of requests or "
                              "{\"requests\": [...]}")
        where = [f"{path} request {i + 1}" for i in range(len(rows))]
    if not rows:
        raise BadWorkload(f"workload file {path} has no requests")
    return Workload(tuple(_request(r, w) for r, w in zip(rows, where)))


# ------------------------------------------------------------------------ KV buckets


def kv_buckets(req: Request, n: int = 3) -> tuple[int, ...]:
    """KV lengths to profile for a request's decode steps: ``n`` points spread evenly from
    the first step's KV length to the last (both ends included, so interpolation never
    extrapolates); fewer when the request has fewer steps."""
    kvs = req.decode_kvs
    if len(kvs) == 0:
        return ()
    lo, hi = kvs[0], kvs[-1]
    if n < 2 or lo == hi:
        return (lo,)
    return tuple(sorted({round(lo + (hi - lo) * i / (n - 1)) for i in range(n)}))


def decode_weights(kvs: Iterable[int], buckets: Sequence[int]) -> dict[int, float]:
    """Weights on ``buckets`` such that ``sum(w[b] * cost(b))`` is the sum over ``kvs`` of
    ``cost`` linearly interpolated between neighbouring buckets (beyond the ends: the end
    segment extended; one bucket: that bucket's cost for every step)."""
    kvs = list(kvs)
    bs = sorted(set(buckets))
    if not kvs:
        return {b: 0.0 for b in bs}
    if not bs:
        raise BadWorkload("no KV bucket to interpolate decode steps from")
    w = {b: 0.0 for b in bs}
    for kv in kvs:
        if len(bs) == 1:
            w[bs[0]] += 1.0
            continue
        i = 0
        while i < len(bs) - 2 and kv > bs[i + 1]:
            i += 1
        lo, hi = bs[i], bs[i + 1]
        a = (kv - lo) / (hi - lo)
        w[lo] += 1.0 - a
        w[hi] += a
    return w


def interpolate(costs: Mapping[int, float], kv: int) -> float:
    """``cost`` at ``kv`` interpolated from bucket costs (as :func:`decode_weights` prices)."""
    return sum(w * costs[b] for b, w in decode_weights([kv], list(costs)).items())


def workload_shapes(workload: Workload, n_buckets: int = 3) -> dict[str, float]:
    """Every shape the workload needs, with its weight in the workload's time: each request's
    prefill (its weight) and its decode buckets (interpolation weights times its weight).
    The time of a configuration is ``sum(weight * latency(shape)) / total_weight``."""
    out: dict[str, float] = {}
    for r in workload.requests:
        out[r.prefill.key] = out.get(r.prefill.key, 0.0) + r.weight
        buckets = kv_buckets(r, n_buckets)
        for kv, w in decode_weights(r.decode_kvs, buckets).items():
            key = Shape(batch=r.batch, kv=kv, phase="decode").key
            out[key] = out.get(key, 0.0) + w * r.weight
    total = workload.total_weight
    return {k: v / total for k, v in out.items()}


def interpolation_error(bucket_costs: Mapping[int, float]) -> float | None:
    """Leave-one-out error of the interpolation: each inner bucket's cost predicted from its
    neighbours, the largest relative miss. None with fewer than three buckets."""
    bs = sorted(bucket_costs)
    if len(bs) < 3:
        return None
    worst = 0.0
    for i in range(1, len(bs) - 1):
        lo, mid, hi = bs[i - 1], bs[i], bs[i + 1]
        a = (mid - lo) / (hi - lo)
        pred = (1 - a) * bucket_costs[lo] + a * bucket_costs[hi]
        worst = max(worst, abs(pred - bucket_costs[mid]) / bucket_costs[mid])
    return worst
