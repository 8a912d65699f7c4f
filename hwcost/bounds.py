"""The range of every bounded field, the same on SQLite and PostgreSQL (docs/store.md).

SQLite stores any integer up to 2**63 and any double; PostgreSQL's INTEGER stops at 2**31-1
and Arrow's microsecond timestamps, Python's datetime and the planner each have their own
limits. A value outside these bounds is refused in one line (``InvalidMeasurement`` from the
store API, ``BundleInvalid`` from an import) before anything is written, so a store always
moves between backends and every stored value can be exported and planned with.
"""

from __future__ import annotations

from datetime import datetime, timezone

INT_MAX = 2**31 - 1
"""Every integer column (PostgreSQL INTEGER)."""

LATENCY_MAX_US = 1e12
"""Latencies (median_us, spread_us, baseline_us, plan_us): at most 1e12 us (11.6 days)."""

LOSS_MAX = 1e12
"""Sensitivities (loss_mse, stderr): finite and at most 1e12."""

TS_MIN = datetime(1970, 1, 1, tzinfo=timezone.utc)
TS_MAX = datetime(2200, 1, 1, tzinfo=timezone.utc)
"""Timestamps: from 1970-01-01 (inclusive) to 2200-01-01 (exclusive) UTC."""

SHAPE_MAX = {"batch": 2**20, "seq": 2**24, "kv": 2**24}
"""Shape fields: batch up to 1,048,576 sequences, seq and kv up to 16,777,216 tokens."""

BUNDLE_ROWS_MAX = 5_000_000
"""Rows in one bundle (all tables): a bundle is read whole to validate it before anything is
written, so this caps the memory an import takes (about 2 GB at the cap). A larger store is
exported per device (``hwcost db export --device``)."""

INT_FIELDS = {
    # table: {column: minimum}
    "device": {"threads": 1},
    "subgraph": {"n_slots": 0},
    "model": {"n_subgraphs": 0, "n_layers": 0},
    "manifest_entry": {"position": 0},
    "measurement": {"n_samples": 1},
    "model_latency": {"n_samples": 1},
    "sensitivity": {"n_samples": 1},
}


def int_problem(name: str, value: int | None, minimum: int = 0) -> str | None:
    """Why ``value`` cannot be stored in integer field ``name``; None when it can."""
    if value is None:
        return None
    if value < minimum or value > INT_MAX:
        return f"{name}={value} is out of range ({minimum}..{INT_MAX})"
    return None


def float_problem(name: str, value: float, maximum: float) -> str | None:
    """Why ``value`` cannot be stored in bounded float field ``name``; None when it can."""
    if value != value or value in (float("inf"), float("-inf")):
        return f"{name}={value} is not finite"
    if value < 0 or value > maximum:
        return f"{name}={value:g} is out of range (0..{maximum:g})"
    return None


def ts_problem(name: str, value: datetime | None) -> str | None:
    """Why timestamp ``value`` cannot be stored; None when it can (naive means UTC)."""
    if value is None:
        return None
    v = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not TS_MIN <= v < TS_MAX:
        return (f"{name}={value.isoformat()} is out of range "
                f"({TS_MIN.date()} .. {TS_MAX.date()} UTC)")
    return None
