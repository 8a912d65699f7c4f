"""Row checks of a bundle (``hwcost.store.bundle.read_bundle`` runs them before anything is
written): nulls, NUL characters, duplicate keys, latencies and bounds, provenance, canonical
shapes, configs, precisions and quantizer keys, JSON columns and references."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hwcost.bounds import INT_FIELDS, LATENCY_MAX_US, LOSS_MAX, TS_MAX, TS_MIN, float_problem, int_problem
from hwcost.errors import HwcostError
from hwcost.precision import config_key, parse_config, parse_precision
from hwcost.shape import parse_shape
from hwcost.store import schema as _schema
from hwcost.store.bundle import _TS, CLOCKS, SPEC, SPECS, format_key


def validate(tables: dict[str, pa.Table], bad) -> None:
    """Every row check that must pass before anything is written."""
    for spec in SPECS:
        t = tables[spec.name]
        for name, kind in spec.cols:
            col = t.column(name)
            if name not in spec.nullable and col.null_count:
                raise bad(f"{spec.name}.{name} has {col.null_count} missing value(s)")
            if kind == "str" and any(_has_nul(chunk) for chunk in col.chunks):
                raise bad(f"{spec.name}.{name} holds a NUL character")
        if t.num_rows:
            keys = t.group_by(list(spec.key)).aggregate([([], "count_all")])
            dup = keys.filter(pc.greater(keys.column("count_all"), 1))
            if dup.num_rows:
                first = dup.slice(0, 1).to_pylist()[0]
                first.pop("count_all")
                raise bad(f"{spec.name} has duplicate key {format_key(first.values())}")
    _check_latencies(tables["measurement"], "measurement", ("median_us", "spread_us"), bad)
    _check_latencies(tables["model_latency"], "model_latency", ("median_us", "spread_us"), bad)
    _check_latencies(tables["sensitivity"], "sensitivity", ("loss_mse", "stderr"), bad,
                     allow_zero=True)
    _check_bounds(tables, bad)
    _check_provenance(tables, bad)
    # Shapes and configs: few distinct values, each parsed and required canonical.
    for name in ("measurement", "model_latency"):
        for shape in pc.unique(tables[name].column("shape")).to_pylist():
            _canonical(f"{name}.shape", shape, lambda v: parse_shape(v).key, bad)
    n_slots = dict(zip(tables["subgraph"].column("signature").to_pylist(),
                       tables["subgraph"].column("n_slots").to_pylist()))
    m = tables["measurement"]
    lengths = {}
    for cfg in pc.unique(m.column("config")).to_pylist():
        _canonical("measurement.config", cfg, lambda v: config_key(parse_config(v)), bad)
        lengths[cfg] = len(parse_config(cfg))
    if m.num_rows:
        pairs = m.group_by(["subgraph", "config"]).aggregate([])
        for sig, cfg in zip(pairs.column("subgraph").to_pylist(), pairs.column("config").to_pylist()):
            if sig in n_slots and lengths[cfg] != n_slots[sig]:
                raise bad(f"measurement.config {cfg!r} has {lengths[cfg]} precisions, subgraph "
                          f"{sig[:12]} has {n_slots[sig]} slots")
    _check_checkpoints(tables, bad)
    for p in pc.unique(tables["sensitivity"].column("precision")).to_pylist():
        _canonical("sensitivity.precision", p, lambda v: parse_precision(v).value, bad)
    _check_json(tables, bad)
    _check_refs(tables, bad)


def _check_bounds(tables: dict[str, pa.Table], bad) -> None:
    """Integers, latencies, losses and timestamps within ``hwcost.bounds`` (the same on
    SQLite and PostgreSQL, and what export and planning can handle)."""
    for name, cols in INT_FIELDS.items():
        for c, lo in cols.items():
            col = tables[name].column(c)
            if len(col) - col.null_count == 0:
                continue
            mn, mx = pc.min(col).as_py(), pc.max(col).as_py()
            if name in ("measurement", "model_latency", "sensitivity") and c == "n_samples" \
                    and mn < 1:
                raise bad(f"{name}.n_samples must be >= 1")
            if mn < lo and lo == 0:
                raise bad(f"{name}.{c} must not be negative")
            problem = int_problem(f"{name}.{c}", mn if mn < lo else mx, lo)
            if problem:
                raise bad(problem)
    maxima = {"measurement": (("median_us", "spread_us"), LATENCY_MAX_US),
              "model_latency": (("median_us", "spread_us"), LATENCY_MAX_US),
              "sensitivity": (("loss_mse", "stderr"), LOSS_MAX)}
    for name, (cols, top) in maxima.items():
        for c in cols:
            col = tables[name].column(c)
            if len(col) and pc.max(col).as_py() > top:
                raise bad(float_problem(f"{name}.{c}", pc.max(col).as_py(), top))
    lo, hi = (int(t.timestamp() * 1_000_000) for t in (TS_MIN, TS_MAX))
    for spec in SPECS:
        for c, kind in spec.cols:
            if kind != "ts" or not tables[spec.name].num_rows:
                continue
            us = tables[spec.name].column(c).cast(_TS).cast(pa.int64())
            if len(us) - us.null_count and (pc.min(us).as_py() < lo or pc.max(us).as_py() >= hi):
                raise bad(f"{spec.name}.{c} holds a timestamp outside {TS_MIN.date()} .. "
                          f"{TS_MAX.date()} UTC")


def _check_provenance(tables: dict[str, pa.Table], bad) -> None:
    """A known clock; the machine's figures finite and non-negative (baseline positive)."""
    for name in ("measurement", "model_latency"):
        t = tables[name]
        for clock in pc.unique(t.column("clock")).to_pylist():
            if clock not in CLOCKS:
                raise bad(f"{name}.clock {clock!r} is not one of {', '.join(CLOCKS)}")
        for c in ("load1", "cpu_mhz", "baseline_us", "drift"):
            if c not in t.column_names:
                continue
            vals = t.column(c).drop_null().to_numpy() if t.num_rows else np.zeros(0)
            if len(vals) and (not np.isfinite(vals).all() or (vals < 0).any()
                              or (c == "baseline_us" and (vals == 0).any())):
                raise bad(f"{name}.{c} holds a value that is not a finite "
                          f"{'positive' if c == 'baseline_us' else 'non-negative'} number")
        col = t.column("threads")
        if len(col) - col.null_count and pc.min(col).as_py() < 1:
            raise bad(f"{name}.threads must be >= 1")


def _canonical(field: str, value: str, canon: Callable[[str], str], bad) -> None:
    """Refuse ``value`` unless ``canon`` parses it back to itself, in one line naming the field."""
    try:
        key = canon(value)
    except HwcostError as e:
        raise bad(f"{field}: {e}") from None
    if key != value:
        raise bad(f"{field} {value!r} is not canonical (expected {key!r})")


def _check_checkpoints(tables: dict[str, pa.Table], bad) -> None:
    """Digests are non-empty, quantizer keys parse, and every sensitivity table names a
    checkpoint the bundle holds (or ``unknown``, rows from before digests existed)."""
    from hwcost.quantizer import parse_quantizer

    ck = tables["checkpoint"]
    known = set(zip(ck.column("model").to_pylist(), ck.column("digest").to_pylist()))
    for model, digest in known:
        if not digest or digest == _schema.UNKNOWN:
            raise bad(f"checkpoint of model {model[:12]} has no digest")
    sens = tables["sensitivity"]
    if not sens.num_rows:
        return
    pairs = sens.group_by(["model", "checkpoint"]).aggregate([])
    for model, digest in zip(pairs.column("model").to_pylist(),
                             pairs.column("checkpoint").to_pylist()):
        if digest != _schema.UNKNOWN and (model, digest) not in known:
            raise bad(f"sensitivity rows of model {model[:12]} name checkpoint {digest[:12]!r}, "
                      "which the bundle does not hold")
    for key in pc.unique(sens.column("quantizer")).to_pylist():
        if key == _schema.UNKNOWN:
            continue
        _canonical("sensitivity.quantizer", key, lambda v: parse_quantizer(v).key, bad)


def _has_nul(arr: pa.Array) -> bool:
    """Whether any string of ``arr`` holds a NUL byte (PostgreSQL text cannot store one)."""
    if len(arr) == 0:
        return False
    arr = arr.cast(pa.large_string())
    _, offsets, data = arr.buffers()
    if data is None:
        return False
    off = np.frombuffer(offsets, dtype="<i8")[arr.offset:arr.offset + len(arr) + 1]
    return bool((np.frombuffer(data, dtype=np.uint8)[off[0]:off[-1]] == 0).any())


def _check_latencies(t: pa.Table, name: str, cols: Sequence[str], bad, allow_zero=False) -> None:
    for c in cols:
        col = t.column(c)
        if not len(col):
            continue
        values = col.to_numpy()
        if not np.isfinite(values).all():
            raise bad(f"{name}.{c} holds NaN or infinite values")
        if (values < 0).any():
            raise bad(f"{name}.{c} holds negative values")
        if c == "median_us" and not allow_zero and (values == 0).any():
            raise bad(f"{name}.{c} holds zero latencies")


def _check_json(tables: dict[str, pa.Table], bad) -> None:
    checks = [("device", "flags", list), ("device", "software", dict), ("device", "peaks", dict),
              ("subgraph", "slots", list), ("subgraph", "extra", dict),
              ("manifest_entry", "layer_names", list), ("model_latency", "config", dict)]
    for table, col, typ in checks:
        for value in pc.unique(tables[table].column(col)).to_pylist():
            try:
                parsed = json.loads(value)
            except ValueError:
                raise bad(f"{table}.{col} holds invalid JSON {value[:40]!r}") from None
            if not isinstance(parsed, typ):
                raise bad(f"{table}.{col} must hold JSON {typ.__name__}s, got {value[:40]!r}")
            if table == "model_latency":
                for p in parsed.values():
                    try:
                        parse_precision(p)
                    except HwcostError as e:
                        raise bad(f"model_latency.config: {e}") from None
    sg = tables["subgraph"]
    for sig, n, slots in zip(sg.column("signature").to_pylist(), sg.column("n_slots").to_pylist(),
                             sg.column("slots").to_pylist()):
        if len(json.loads(slots)) != n:
            raise bad(f"subgraph {sig[:12]} has n_slots={n} but {len(json.loads(slots))} slots")


def _check_refs(tables: dict[str, pa.Table], bad) -> None:
    for spec in SPECS:
        t = tables[spec.name]
        for col, target in spec.refs:
            known = tables[target].column(SPEC[target].key[0]).combine_chunks()
            values = pc.unique(t.column(col))
            missing = pc.filter(values, pc.invert(pc.is_in(values, value_set=known)))
            if len(missing):
                raise bad(f"{spec.name}.{col} refers to {target} {missing[0].as_py()[:16]!r}, "
                          "which the bundle does not hold")
    counts = tables["manifest_entry"].group_by("model").aggregate([("position", "count"),
                                                                  ("position", "max")])
    by_model = {r["model"]: r for r in counts.to_pylist()}
    models = tables["model"]
    for fp, n in zip(models.column("fingerprint").to_pylist(),
                     models.column("n_subgraphs").to_pylist()):
        r = by_model.get(fp, {"position_count": 0, "position_max": -1})
        if r["position_count"] != n or r["position_max"] != n - 1:
            raise bad(f"model {fp[:12]} says {n} subgraphs but its manifest has "
                      f"{r['position_count']} entries")
