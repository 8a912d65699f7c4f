"""Roofline latency estimate of a (subgraph, shape, config) from peak rates and bandwidth.

Per slot, the larger of compute time (2 * MACs at that precision's rate) and memory time
(weights, inputs and outputs at that precision's bytes); plus converting activations into and
out of every slot that is not in the carrier precision (casts, quantize/dequantize); plus
traffic at each boundary where neighbouring slots differ; plus the subgraph's non-slot work
(attention core, norms and elementwise ops) and a per-op overhead.

Each of these terms gets an efficiency factor. Without measurements the factors are priors;
with measurements of the device they are fitted by non-negative least squares on relative
error, pulled gently towards the priors so that a term the measurements never exercise keeps
its prior (deterministic: no randomness anywhere).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from hwcost.catalog import Peaks
from hwcost.errors import NoEstimate
from hwcost.precision import Config, Precision
from hwcost.shape import Shape
from hwcost.store import SubgraphInfo

PRECISIONS: tuple[Precision, ...] = tuple(Precision)
TERMS: tuple[str, ...] = (*(f"slots_{p.value}" for p in PRECISIONS),
                          *(f"convert_{p.value}" for p in PRECISIONS),
                          *(f"weights_{p.value}" for p in PRECISIONS),
                          "boundary", "elementwise", "attention",
                          *(f"ops_{p.value}" for p in PRECISIONS), "ops_other")
"""Column names of :func:`terms`. ``slots_P``: per-slot max(compute, memory) of the slots in
precision P; ``convert_P``: casting/quantizing activations into and out of them;
``weights_P``: touching their weights once per call at the carrier width (zero prior: an
emulated format that upcasts its weights every call is fitted to it); ``boundary``,
``elementwise``, ``attention``: see the module docstring (all microseconds at peak);
``ops_P``/``ops_other``: kernel launches of the P slots and of the non-slot work (counts)."""

_QUANTIZED = {Precision.INT8, Precision.FP8_E4M3, Precision.FP8_E5M2}
# Priors: 1 / expected efficiency of each term; measured devices replace them by a fit.
_PRIOR_EFF = {"slots": 0.7, "convert": 0.5, "boundary": 1.0, "elementwise": 0.5, "attention": 0.3}
_ZERO_PRIOR = ("weights",)  # terms a device may not have at all


def _ops_per_slot(p: Precision, carrier: Precision) -> int:
    """Kernels one slot launches (prior): the matmul, plus a cast in and out for another
    float format, or a per-token absmax and a quantizing cast for a quantized one. Eager CPU
    code launches more; the fit to the device's measurements scales each precision's count."""
    return 1 if p == carrier else 3
_HEAD_KEYS = ("num_attention_heads", "num_heads", "n_heads", "heads")
_KV_HEAD_KEYS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_heads")


@dataclass(frozen=True)
class Query:
    """One (subgraph, shape, config) to estimate."""

    subgraph: SubgraphInfo
    shape: Shape
    config: Config


def _int_extra(extra: dict, keys: Sequence[str]) -> int | None:
    for k in keys:
        v = extra.get(k)
        if isinstance(v, (int, float)) and v > 0:
            return int(v)
    return None


def attention_dims(sub: SubgraphInfo) -> tuple[int, int, int] | None:
    """(heads, kv_heads, head_dim) when the subgraph holds an attention core, else None.

    Read from the partitioner's ``extra`` (head counts, ``head_dim``,
    ``num_key_value_groups``, the module types it holds); an attention without recorded
    head sizes is assumed to use 64-wide heads. The tail of a split attention (its output
    projection only) holds no core.
    """
    extra = sub.extra or {}
    if extra.get("stage") == "tail" or not sub.slots:
        return None
    names = " ".join([sub.kind, *map(str, extra.get("modules", []))]).lower()
    heads = _int_extra(extra, _HEAD_KEYS)
    if heads is None and "attn" not in names and "attention" not in names:
        return None
    q_out = sub.slots[0].out_features
    head_dim = _int_extra(extra, ("head_dim",))
    if heads is None:
        head_dim = head_dim or 64
        heads = max(1, q_out // head_dim)
    head_dim = head_dim or max(1, q_out // heads)
    kv_heads = _int_extra(extra, _KV_HEAD_KEYS)
    groups = _int_extra(extra, ("num_key_value_groups",))
    if kv_heads is None and groups:
        kv_heads = max(1, heads // groups)
    return heads, kv_heads or heads, head_dim


def attention_work(q: Query) -> tuple[float, float] | None:
    """(FLOPs, K and V elements read) of the query's attention core, None without one."""
    dims = attention_dims(q.subgraph)
    if not dims:
        return None
    heads, kv_heads, hd = dims
    s = q.shape
    q_len = s.seq if s.phase == "prefill" else 1
    # causal prefill attends to half the new tokens on average, plus the cache
    kv_len = s.kv + (q_len + 1) / 2 if s.phase == "prefill" else s.kv + 1
    return (4.0 * s.batch * heads * q_len * kv_len * hd,
            2.0 * s.batch * (s.kv + q_len) * kv_heads * hd)


def _extra_ops(sub: SubgraphInfo) -> int:
    n = sub.extra.get("n_ops") if sub.extra else None
    if isinstance(n, (int, float)) and n >= 0:
        return int(n)
    return 6 if attention_dims(sub) else 2


def terms(queries: Sequence[Query], peaks: Peaks, carrier: Precision) -> np.ndarray:
    """Roofline terms of each query at full peak, shape ``(len(queries), len(TERMS))``.

    Raises ``NoEstimate`` when a slot's precision has no rate on this device.
    """
    out = np.zeros((len(queries), len(TERMS)))
    bw = peaks.mem_gbps * 1e3  # bytes per microsecond
    cb = carrier.bytes
    carrier_rate = peaks.rate(carrier) or max(peaks.tflops.values())
    col = {name: i for i, name in enumerate(TERMS)}
    for r, q in enumerate(queries):
        m = q.shape.tokens
        row = out[r]
        prev: Precision | None = None
        for slot, p in zip(q.subgraph.slots, q.config):
            rate = peaks.rate(p)
            if rate is None:
                raise NoEstimate(f"no {p.value} rate for this device")
            pb = p.bytes
            out_b = cb if p in _QUANTIZED else pb
            compute = 2.0 * m * slot.in_features * slot.out_features / (rate * 1e6)
            mem = (slot.weight_params * pb + m * slot.in_features * pb
                   + m * slot.out_features * out_b) / bw
            row[col[f"slots_{p.value}"]] += max(compute, mem)
            row[col[f"ops_{p.value}"]] += _ops_per_slot(p, carrier)
            if p != carrier:
                # activations are cast (or quantized) on the way in; a float slot casts its
                # output back, a quantized one dequantizes in the matmul's epilogue
                cast = m * slot.in_features * (cb + pb)
                if p not in _QUANTIZED:
                    cast += m * slot.out_features * (cb + pb)
                row[col[f"convert_{p.value}"]] += cast / bw
                row[col[f"weights_{p.value}"]] += slot.weight_params * cb / bw
            if prev is not None and p != prev:
                row[col["boundary"]] += m * slot.in_features * cb / bw
            row[col["elementwise"]] += m * (slot.in_features + slot.out_features) * cb / bw
            prev = p
        work = attention_work(q)
        if work:
            flops, kv_elements = work
            row[col["attention"]] = max(flops / (carrier_rate * 1e6), kv_elements * cb / bw)
        row[col["ops_other"]] = _extra_ops(q.subgraph)
    return out


def prior_coefficients(peaks: Peaks) -> np.ndarray:
    """Coefficients before any measurement: 1/efficiency per term, overhead per op."""
    k = []
    for name in TERMS:
        family = name.split("_")[0]
        if family == "ops":
            k.append(peaks.op_overhead_us)
        elif family in _ZERO_PRIOR:
            k.append(0.0)
        elif family == "slots" and peaks.achieved:
            k.append(1.0)  # calibrated rates are what the deployed kernels achieve
        else:
            k.append(1.0 / _PRIOR_EFF[family])
    return np.array(k)


class RooflineModel:
    """Roofline with efficiency factors: ``latency = terms @ coef_``.

    ``fit`` fits the factors to a device's measurements (non-negative least squares on
    relative error, Huber-reweighted ``huber_iters`` times, with a ridge pull of weight
    ``prior_weight`` towards the priors);
    ``predict`` on an unfitted model uses the priors.
    """

    def __init__(self, peaks: Peaks, prior_weight: float = 0.05, huber_iters: int = 5):
        self.peaks = peaks
        self.prior_weight = prior_weight
        self.huber_iters = huber_iters

    @property
    def prior_(self) -> np.ndarray:
        return prior_coefficients(self.peaks)

    def fit(self, t: np.ndarray, latency_us: np.ndarray) -> RooflineModel:
        """Fit the factors to measured latencies (rows of ``t`` from :func:`terms`).

        Relative-error NNLS, reweighted a few times with Huber weights so that a handful of
        disturbed measurements (a noisy neighbour on a shared host) cannot drag the factors.
        """
        y = np.asarray(latency_us, dtype=float)
        k0 = self.prior_
        a = t / y[:, None]  # relative error: every measurement counts the same
        lam = np.sqrt(self.prior_weight * max(1, len(y)) / len(k0))
        # the pull is on the relative deviation from a prior; on the absolute value for a
        # zero prior (scaled to a term whose unit is microseconds at peak)
        reg = np.diag(lam / np.where(k0 > 0, k0, 1.0))
        w = np.ones(len(y))
        for _ in range(self.huber_iters + 1):
            coef, _ = nnls(np.vstack([a * w[:, None], reg]),
                           np.concatenate([w, np.diag(reg) * k0]), maxiter=50 * len(k0))
            r = np.abs(a @ coef - 1.0)
            delta = max(0.05, 1.5 * float(np.median(r))) if len(r) else 1.0
            w = np.sqrt(np.where(r <= delta, 1.0, delta / np.maximum(r, 1e-12)))
        self.coef_ = coef
        rel = np.abs(t @ coef - y) / y
        self.rel_error_ = float(np.median(rel)) if len(rel) else None
        self.n_fit_ = len(y)
        return self

    @property
    def fitted(self) -> bool:
        return hasattr(self, "coef_")

    def predict(self, t: np.ndarray) -> np.ndarray:
        """Latency in microseconds for each row of ``t``."""
        coef = self.coef_ if self.fitted else self.prior_
        return t @ coef
