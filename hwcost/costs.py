"""Cost queries with honest fallbacks: measured, else learned, else roofline.

Every answer is an :class:`Estimate` that says where it came from and how far to trust it:

- ``measured``: the store's median for this (device, subgraph, shape, config); uncertainty is
  the standard error of that median (:func:`median_stderr`, from the row's half-IQR and
  sample count) in model tables; single queries (:meth:`CostModel.estimate`) report the
  half-IQR itself (the row's spread, a per-sample figure).
- ``learned``: the device's :class:`~hwcost.learned.LatencyModel`, trained on demand on the
  device's measurements; uncertainty is its cross-validated 68th-percentile relative error
  times the estimate, and ``cv_error`` its cross-validated median error. Used when the device
  has enough measurements and its cross-validated error beats the fitted roofline's.
- ``roofline``: :mod:`hwcost.roofline` from the device's peaks (catalog or calibration), with
  efficiency factors fitted to the device's measurements when it has some; uncertainty is
  the fit's error, or 100% of the estimate (a factor-2 band) with no measurement at all.

Gains come from one source per (subgraph, shape) unit (:func:`model_table`): a unit whose
configs are all measured has measured gains, each the ratio to the baseline timed in its own
group; a unit with any config unmeasured takes *every* config from one fallback (learned when
it covers all of them, else roofline), as that fallback's ratio to its own baseline estimate
applied to the measured baseline. A gain is never a measured baseline minus a learned
candidate.

A device argument is a stored fingerprint (or prefix) or product name, a device kind (``cpu``
when exactly one local cpu device is stored), or a catalog name (``H100-SXM``, ``Gaudi2``),
for which a ``source="catalog"`` device row is created on first use.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from hwcost.catalog import Peaks
from hwcost.device_lookup import device_peaks, nominal_peaks, resolve_device
from hwcost.enums import CostSource
from hwcost.errors import BadConfig, NoEstimate, UnsupportedPrecision
from hwcost.learned import FORMAT_VERSION as LEARNED_FORMAT
from hwcost.learned import LatencyModel
from hwcost.precision import (
    BASELINE,
    CANDIDATES,
    Config,
    Precision,
    config_key,
    parse_config,
    parse_precision,
)
from hwcost.roofline import Query, RooflineModel, terms
from hwcost.shape import Shape, parse_shape, reads_kv
from hwcost.store import DeviceRef, Manifest, ModelRef, SlotInfo, Store, SubgraphInfo

SOURCES = tuple(CostSource.values())
MIN_LEARNED_SAMPLES = 12
"""Fewer measurements than this on a device: no learned model, roofline only."""
MAX_CONFIGS = 1 << 16
"""Configs per subgraph a table enumerates at most (precisions ** slots)."""

@dataclass(frozen=True)
class Estimate:
    """A latency with its source and uncertainty (microseconds).

    ``cv_error`` is the learned model's cross-validated median relative error (learned
    estimates) or the fitted roofline's error on the device's measurements (roofline with
    measurements); None for measured costs and unfitted rooflines.
    """

    latency_us: float
    source: str  # "measured" | "learned" | "roofline"
    uncertainty_us: float
    cv_error: float | None = None
    # the reference the gain is a ratio to: measured, the baseline config timed in the same
    # group; a fallback unit (model_table), the measured baseline its estimates are scaled to
    baseline_us: float | None = None
    good: bool = True  # measured: a full, stable timing (False only with allow_unstable)
    # relative standard error of that reference's ratio denominator: the in-group baseline
    # (approximated by the baseline row's), or the fallback's own baseline estimate
    ref_rel_stderr: float = 0.0

    def to_dict(self) -> dict:
        return {"latency_us": self.latency_us, "source": self.source,
                "uncertainty_us": self.uncertainty_us, "cv_error": self.cv_error,
                "baseline_us": self.baseline_us, "good": self.good,
                "ref_rel_stderr": self.ref_rel_stderr}


def median_stderr(spread_us: float, n_samples: int) -> float:
    """Standard error of a median of ``n_samples`` samples whose half inter-quartile range is
    ``spread_us``: ``sqrt(pi/2) * sigma / sqrt(n)`` with ``sigma = IQR / 1.349`` (both exact
    for normal samples; the IQR estimate of sigma resists the outliers a shared machine adds).
    A single sample's standard error is its spread."""
    if n_samples <= 1:
        return float(spread_us)
    sigma = 2.0 * float(spread_us) / 1.349
    return math.sqrt(math.pi / 2.0) * sigma / math.sqrt(n_samples)


# ------------------------------------------------------------------------------ the model


class CostModel:
    """Answers cost queries for one device; fits its fallbacks lazily, in memory only.

    Hold one for many queries (``model_table`` does): the roofline fit and the learned model
    are trained once per instance from the store's measurements of this device.
    """

    def __init__(self, store: Store, device: str | DeviceRef, *,
                 allow_unstable: bool = False):
        self.store = store
        self.allow_unstable = allow_unstable  # quick and unstable rows count as measured
        # a DeviceRef is already resolved: found again by its exact fingerprint only
        self.ref = device if isinstance(device, DeviceRef) else resolve_device(store, device)
        self.device = self.ref
        self.kind = self.device.kind
        self.carrier = BASELINE.get(self.kind, Precision.FP32)
        self._own_peaks = device_peaks(self.ref)  # catalog or calibration; None if neither
        self._peaks = self._own_peaks

    @property
    def label(self) -> str:
        return f"{self.device.name} ({self.device.fingerprint[:12]})"

    # -- measurements, loaded once
    @property
    def measurements(self) -> list[tuple[SubgraphInfo, str, str, float, float]]:
        if not hasattr(self, "_rows"):
            self._rows = self.store.device_measurements(self.ref,
                                                        allow_unstable=self.allow_unstable)
            self._measured = {(g.signature, sh, cfg): (med, spr) for g, sh, cfg, med, spr in self._rows}
        return self._rows

    def measured(self, signature: str, shape: str, config: str) -> Estimate | None:
        self.measurements  # noqa: B018 - loads the index
        hit = self._measured.get((signature, shape, config))
        return Estimate(hit[0], "measured", hit[1]) if hit else None

    @property
    def peaks(self) -> Peaks:
        if self._peaks is None:
            if not self.measurements:
                raise NoEstimate(
                    f"device {self.label} has no measurements and no peak rates; measure it with "
                    "`hwcost profile MODEL --device ... --shape SHAPE` or, on this machine, "
                    "`hwcost device calibrate`")
            self._peaks = nominal_peaks(self.kind)
        return self._peaks

    def supported(self) -> tuple[Precision, ...]:
        """Precisions this device can be asked about: rated in its own or its catalog
        peaks, or measured on it (nominal rates never make a precision supported)."""
        if not hasattr(self, "_supported"):  # check() asks once per unmeasured config
            have = set(self._own_peaks.supported()) if self._own_peaks is not None else set()
            self.peaks  # noqa: B018 - a device with neither peaks nor measurements is refused here
            for cfg in {cfg for _, _, cfg, _, _ in self.measurements}:
                have.update(parse_config(cfg))
            self._supported = tuple(p for p in Precision if p in have)
        return self._supported

    def check(self, sub: SubgraphInfo, config: Config) -> None:
        """Raise a one-line error for a config that does not fit the subgraph or the device."""
        if len(config) != len(sub.slots):
            raise BadConfig(f"config {config_key(config)!r} has {len(config)} precisions; subgraph "
                            f"{sub.signature[:12]} ({sub.kind}) has {len(sub.slots)} slots")
        supported = self.supported()
        bad = sorted({p.value for p in config} - {p.value for p in supported})
        if bad:
            ok = ", ".join(p.value for p in supported)
            raise UnsupportedPrecision(
                f"device {self.label} has no rate and no measurement for {', '.join(bad)} "
                f"(it supports {ok}); measure it on the device with `hwcost profile MODEL "
                f"--device {self.kind} --shape SHAPE --precisions {','.join(bad)}`")

    # -- fallbacks, fitted once
    def _train_queries(self) -> tuple[list[Query], np.ndarray]:
        qs = [Query(g, parse_shape(sh), parse_config(cfg)) for g, sh, cfg, _, _ in self.measurements]
        return qs, np.array([med for _, _, _, med, _ in self.measurements], dtype=float)

    @property
    def roofline(self) -> RooflineModel:
        if not hasattr(self, "_roofline"):
            model = RooflineModel(self.peaks)
            if self.measurements:
                qs, y = self._train_queries()
                model.fit(terms(qs, self.peaks, self.carrier), y)
            self._roofline = model
        return self._roofline

    @property
    def learned(self) -> LatencyModel | None:
        """The trained learned model, or None when there is too little to train on.

        Fitted once per device and store state: the fit is kept in the store as JSON data
        (``learned_fit``, never a pickle) under a hash of its training rows and settings,
        and read back by every later query of the same state; new or replaced measurements
        change the hash and so refit it."""
        if not hasattr(self, "_learned"):
            self._learned = None
            self.learned_from_store = False
            if len(self.measurements) >= MIN_LEARNED_SAMPLES:
                qs, y = self._train_queries()
                if len({(q.subgraph.signature, q.shape.key) for q in qs}) >= 2:
                    self._learned = self._stored_or_fitted(qs, y)
        return self._learned

    def fit_state(self) -> str:
        """Hash of what the learned model depends on: its format, carrier, the
        device's peaks and every training row (key and median)."""
        h = hashlib.sha256(json.dumps(
            {"format": LEARNED_FORMAT, "carrier": self.carrier.value,
             "peaks": self.peaks.to_json()}, sort_keys=True, default=str).encode())
        for key in sorted(f"{g.signature}|{sh}|{cfg}|{med!r}"
                          for g, sh, cfg, med, _ in self.measurements):
            h.update(key.encode())
            h.update(b"\n")
        return h.hexdigest()

    def _stored_or_fitted(self, qs: list[Query], y: np.ndarray) -> LatencyModel:
        state = self.fit_state()
        body = self.store.learned_fit(self.ref, state)
        if body is not None:
            try:
                lm = LatencyModel.from_dict(self.peaks, json.loads(body))
                self.learned_from_store = True
                return lm
            except (NoEstimate, KeyError, TypeError, ValueError):
                pass  # another format or a damaged row: refit and overwrite it
        lm = LatencyModel(self.peaks, self.carrier).fit(qs, y)
        self.store.put_learned_fit(self.ref, state, json.dumps(lm.to_dict()))
        return lm

    def _use_learned(self) -> bool:
        lm = self.learned
        return lm is not None and lm.cv_mape_ <= lm.roofline_cv_mape_

    # -- queries
    def estimate_unmeasured(self, queries: Sequence[Query]) -> list[Estimate]:
        """Fallback estimates for queries known to be unmeasured: the learned model where it
        is trained, beats the roofline in cross-validation and has seen every precision of
        the query; the roofline otherwise."""
        if not queries:
            return []
        out: list[Estimate | None] = [None] * len(queries)
        rest = list(range(len(queries)))
        if self._use_learned():
            lm = self.learned
            known = set(lm.precisions_)
            mine = [i for i in rest if set(queries[i].config) <= known]
            taken = set(mine)
            rest = [i for i in rest if i not in taken]
            for i, v in zip(mine, lm.predict([queries[i] for i in mine])):
                out[i] = Estimate(float(v), "learned", float(v * lm.cv_p68_), lm.cv_mape_)
        if rest:
            for i, est in zip(rest, self._roofline_estimates([queries[i] for i in rest])):
                out[i] = est
        return out

    def estimate_units(self, units: Sequence[Sequence[Query]]) -> list[list[Estimate]]:
        """Fallback estimates of whole units (every query of a unit is one subgraph at one
        shape), each unit from ONE source: the learned model when it would answer (trained,
        better than the roofline in cross-validation) and has seen every precision of every
        query of the unit, else the roofline for all of them. So two configs of a unit are
        never compared across sources."""
        out: list[list[Estimate]] = [[] for _ in units]
        learned_units: list[int] = []
        roof_units: list[int] = []
        lm = self.learned if self._use_learned() else None
        known = set(lm.precisions_) if lm is not None else set()
        for u, qs in enumerate(units):
            ok = lm is not None and all(set(q.config) <= known for q in qs)
            (learned_units if ok else roof_units).append(u)
        if learned_units:
            flat = [q for u in learned_units for q in units[u]]
            pred = iter(lm.predict(flat))
            for u in learned_units:
                out[u] = [Estimate(float(v), "learned", float(v * lm.cv_p68_), lm.cv_mape_)
                          for v in (next(pred) for _ in units[u])]
        if roof_units:
            flat = [q for u in roof_units for q in units[u]]
            ests = iter(self._roofline_estimates(flat))
            for u in roof_units:
                out[u] = [next(ests) for _ in units[u]]
        return out

    def _roofline_estimates(self, queries: Sequence[Query]) -> list[Estimate]:
        roof = self.roofline
        pred = roof.predict(terms(list(queries), self.peaks, self.carrier))
        lm = self.learned if roof.fitted else None
        out = []
        for v in pred:
            if not roof.fitted:  # priors only: trust it to a factor of two
                out.append(Estimate(float(v), "roofline", float(v), None))
            elif lm is not None:  # its folds give the roofline an out-of-sample error
                out.append(Estimate(float(v), "roofline", float(v * lm.roofline_cv_p68_),
                                    lm.roofline_cv_mape_))
            else:
                out.append(Estimate(float(v), "roofline", float(v * max(roof.rel_error_, 0.25)),
                                    roof.rel_error_))
        return out

    def estimate(self, sub: SubgraphInfo, shape: str | Shape, config: Sequence | str) -> Estimate:
        """One estimate, measured when the store has it. An unmeasured config of a unit whose
        baseline is measured is answered as :func:`model_table` answers it: the fallback's
        ratio to its own baseline estimate, applied to the measured baseline (on held-out
        units of ``bench/fallbacks.py`` this halves the learned model's error)."""
        shp = parse_shape(shape)
        cfg = parse_config(config) if isinstance(config, str) else parse_config(config_key(config))
        self.check(sub, cfg)
        hit = self._measured_at(sub, shp, config_key(cfg))
        if hit is not None:
            return hit
        q = Query(sub, shp, cfg)
        base_cfg = (self.carrier,) * len(cfg)
        base = self._measured_at(sub, shp, config_key(base_cfg))
        if base is None:
            return self.estimate_unmeasured([q])[0]
        qb = Query(sub, shp, base_cfg)
        unit = _fallback_unit([qb, q], self.estimate_units([[qb, q]])[0], base,
                              config_key(base_cfg))
        return unit[config_key(cfg)]

    def _measured_at(self, sub: SubgraphInfo, shp: Shape, key: str) -> Estimate | None:
        hit = self.measured(sub.signature, shp.key, key)
        if hit is None and shp.kv and not reads_kv(sub.extra):  # timed once per batch
            hit = self.measured(sub.signature, shp.without_kv.key, key)
        return hit


def latency(store: Store, device: str, subgraph: SubgraphInfo, shape: str,
            config: tuple | str) -> Estimate:
    """Latency of ``subgraph`` at ``shape`` in ``config`` on ``device``, measured when the store
    has it, else learned, else roofline. For many queries use :class:`CostModel` or
    :func:`model_table`, which train the fallbacks once."""
    return CostModel(store, device).estimate(subgraph, shape, config)


# ------------------------------------------------------------------------------ a model's table


def gain_of(est: Estimate, base: Estimate) -> float:
    """Time gain of ``est`` over the baseline estimate ``base``.

    When ``est`` carries a reference baseline (``baseline_us``: the baseline timed in its
    own interleave group, or for a fallback unit the measured baseline its estimates are
    scaled to), the gain is the ratio to that reference applied to the baseline's latency,
    ``base * (1 - est / reference)``: whatever slowed or sped up the whole group (drift,
    another job) cancels in the ratio, and a gain never exceeds the baseline it comes from.
    Otherwise (both from one fallback, or rows without an in-group baseline) it is the
    difference of the two estimates."""
    if est.baseline_us and est.baseline_us > 0:
        return base.latency_us * (1.0 - est.latency_us / est.baseline_us)
    return base.latency_us - est.latency_us


def gain_stderr(est: Estimate, base: Estimate) -> float:
    """Standard error of :func:`gain_of`: the candidate's own error and its reference's
    (relative, times the candidate's latency), taken as independent: conservative for
    configs timed in one group, whose shared drift cancels."""
    ref = (est.ref_rel_stderr if est.baseline_us else
           (base.uncertainty_us / base.latency_us if base.latency_us > 0 else 0.0))
    return math.hypot(est.uncertainty_us, est.latency_us * ref)


@dataclass
class SubgraphCosts:
    """One subgraph instance of a model and the estimate of every config of its slots."""

    position: int
    signature: str
    layer_names: tuple[str, ...]
    slots: tuple[SlotInfo, ...]
    costs: dict[str, Estimate] = field(default_factory=dict)  # config_key -> estimate


@dataclass
class ModelCostTable:
    """Every config's cost of every subgraph instance of a model on one device and shape."""

    model: str
    device: str  # device fingerprint
    shape: str
    baseline: str  # precision name
    precisions: tuple[str, ...]
    entries: list[SubgraphCosts]

    def baseline_config(self, entry: SubgraphCosts) -> str:
        """Config key with every slot of ``entry`` in the baseline precision."""
        return ",".join([self.baseline] * len(entry.slots))

    def baseline_us(self, entry: SubgraphCosts) -> float:
        return entry.costs[self.baseline_config(entry)].latency_us

    def gain(self, entry: SubgraphCosts, config: str) -> float:
        """Baseline latency minus the latency of ``config`` (negative: slower than baseline).

        A measured config with both ends measured is taken against the baseline timed in
        its own interleave group (same rounds, same host), not the baseline's own row."""
        return gain_of(entry.costs[config], entry.costs[self.baseline_config(entry)])

    def gain_measured(self, entry: SubgraphCosts, config: str) -> bool:
        """Whether both sides of this config's gain are measured."""
        return (entry.costs[config].source == "measured"
                and entry.costs[self.baseline_config(entry)].source == "measured")

    def best_config(self, entry: SubgraphCosts) -> str:
        """The fastest config of ``entry`` (ties: first in key order)."""
        return min(sorted(entry.costs), key=lambda k: entry.costs[k].latency_us)

    def measured_share(self, choice: Mapping[int, str] | None = None) -> float:
        """Share of the predicted gain of a choice (position -> config key; default the
        fastest config of each entry) that rests on measured costs at both ends."""
        total = on_measured = 0.0
        n_measured = 0
        for e in self.entries:
            cfg = choice.get(e.position, self.baseline_config(e)) if choice else self.best_config(e)
            g = abs(self.gain(e, cfg))
            total += g
            if self.gain_measured(e, cfg):
                on_measured += g
                n_measured += 1
        if total == 0:
            return n_measured / len(self.entries) if self.entries else 1.0
        return on_measured / total

    def entry_measured_share(self, entry: SubgraphCosts) -> float:
        """Share of the absolute gain over all of an entry's configs that is measured."""
        gains = {k: abs(self.gain(entry, k)) for k in entry.costs}
        total = sum(gains.values())
        if total == 0:
            return float(all(self.gain_measured(entry, k) for k in gains))
        return sum(g for k, g in gains.items() if self.gain_measured(entry, k)) / total

    def sources(self, entry: SubgraphCosts) -> dict[str, int]:
        """How many of the entry's configs each source answers."""
        c = Counter(e.source for e in entry.costs.values())
        return {s: c.get(s, 0) for s in SOURCES}

    def to_dict(self) -> dict:
        return {"model": self.model, "device": self.device, "shape": self.shape,
                "baseline": self.baseline, "precisions": list(self.precisions),
                "entries": [{"position": e.position, "signature": e.signature,
                             "layer_names": list(e.layer_names),
                             "costs": {k: v.to_dict() for k, v in e.costs.items()}}
                            for e in self.entries]}


def _measured_unit(have: dict[str, Estimate], keys: list[str], base: str) -> dict[str, Estimate]:
    """A unit whose every config is measured: each gain against its in-group baseline, whose
    relative standard error is taken to be the baseline row's."""
    b = have[base]
    rel = b.uncertainty_us / b.latency_us if b.latency_us > 0 else 0.0
    return {k: (have[k] if k == base else replace(have[k], ref_rel_stderr=rel)) for k in keys}


def _fallback_unit(queries: list[Query], ests: list[Estimate], measured_base: Estimate | None,
                   base: str) -> dict[str, Estimate]:
    """A unit with some config unmeasured: every config from the one fallback source the
    unit was estimated with, each gain that source's ratio to its own baseline estimate.
    With a measured baseline the estimates are scaled to it (the baseline keeps its measured
    latency, every other config its fallback ratio times it): one source per gain."""
    keyed = {config_key(q.config): e for q, e in zip(queries, ests)}
    fb = keyed[base]
    rel_b = fb.uncertainty_us / fb.latency_us if fb.latency_us > 0 else 0.0
    ref = measured_base.latency_us if measured_base is not None else fb.latency_us
    scale = ref / fb.latency_us if fb.latency_us > 0 else 1.0
    out = {}
    for k, e in keyed.items():
        if k == base:
            out[k] = measured_base if measured_base is not None else fb
            continue
        out[k] = replace(e, latency_us=e.latency_us * scale,
                         uncertainty_us=e.uncertainty_us * scale, baseline_us=ref,
                         ref_rel_stderr=rel_b)
    return out


def _default_precisions(cm: CostModel, measured_cfgs: set[str]) -> tuple[Precision, ...]:
    seen = {p for cfg in measured_cfgs for p in parse_config(cfg)}
    if not seen:
        ok = set(cm.supported())
        seen = {p for p in CANDIDATES.get(cm.kind, ()) if p in ok}
    seen.add(cm.carrier)
    return tuple(p for p in Precision if p in seen)


def model_table(store: Store, model_ref: str | ModelRef | Manifest, device: str | DeviceRef,
                shape: str, precisions: Sequence[str] | None = None, *,
                cost_model: CostModel | None = None,
                allow_unstable: bool = False) -> ModelCostTable:
    """Every config's cost of every subgraph instance of a model on ``device`` at ``shape``.

    Measured costs come from one query (``Store.model_costs``; identical blocks share rows);
    the device's other measurements are read once more only when some config is unmeasured,
    to fit the fallbacks. ``precisions`` defaults to those measured for this model on this
    device, else the device kind's candidates; the baseline precision is always included.
    Pass ``cost_model`` (a :class:`CostModel` of the same device) to reuse its fitted
    fallbacks across tables. Quick and unstable timings are left to the fallbacks unless
    ``allow_unstable`` (then they count as measured, marked ``good=False``). A
    :class:`Manifest` already read (the planner's) is used as it is; the device is resolved
    once, by the cost model.
    """
    shp = parse_shape(shape)
    cm = cost_model or CostModel(store, device, allow_unstable=allow_unstable)
    manifest = model_ref if isinstance(model_ref, Manifest) else store.model_manifest(model_ref)
    model = manifest.model
    rows = store.model_costs(model, cm.ref, shp.key, allow_unstable=allow_unstable)
    if shp.kv:  # pieces that read no KV cache are timed once per batch, without the KV length
        kv_free = {sub.signature for _, sub in manifest if not reads_kv(sub.extra)}
        exact = {(r.signature, r.config) for r in rows}
        rows = list(rows) + [
            r for r in store.model_costs(model, cm.ref, shp.without_kv.key,
                                         allow_unstable=allow_unstable)
            if r.signature in kv_free and (r.signature, r.config) not in exact]
    measured: dict[str, dict[str, Estimate]] = {}
    for r in rows:
        measured.setdefault(r.signature, {})[r.config] = Estimate(
            r.median_us, "measured", median_stderr(r.spread_us, r.n_samples),
            baseline_us=r.baseline_us, good=r.good)
    if precisions is None:
        precs = _default_precisions(cm, {c for m in measured.values() for c in m})
    else:
        asked = {parse_precision(x) for x in precisions} | {cm.carrier}
        precs = tuple(p for p in Precision if p in asked)

    by_sig: dict[str, dict[str, Estimate]] = {}
    partial: list[tuple[str, list[Query]]] = []  # units with some config unmeasured
    base_key = {}
    for _, sub in manifest:
        if sub.signature in by_sig:
            continue
        n_cfg = len(precs) ** len(sub.slots)
        if n_cfg > MAX_CONFIGS:
            raise BadConfig(f"subgraph {sub.signature[:12]} has {len(sub.slots)} slots: "
                            f"{n_cfg} configs over {len(precs)} precisions; pass fewer precisions")
        have = measured.get(sub.signature, {})
        cfgs = list(itertools.product(precs, repeat=len(sub.slots)))
        base_key[sub.signature] = config_key([cm.carrier] * len(sub.slots))
        if all(config_key(c) in have for c in cfgs):
            by_sig[sub.signature] = _measured_unit(have, [config_key(c) for c in cfgs],
                                                   base_key[sub.signature])
            continue
        for cfg in cfgs:
            cm.check(sub, cfg)
        by_sig[sub.signature] = {}
        partial.append((sub.signature, [Query(sub, shp, cfg) for cfg in cfgs]))
    for (sig, qs), ests in zip(partial, cm.estimate_units([q for _, q in partial])):
        by_sig[sig] = _fallback_unit(qs, ests, measured.get(sig, {}).get(base_key[sig]),
                                     base_key[sig])

    entries = []
    for item, sub in manifest:
        costs = by_sig[sub.signature]
        entries.append(SubgraphCosts(item.position, sub.signature, item.layer_names, sub.slots,
                                     {k: costs[k] for k in sorted(costs)}))
    return ModelCostTable(model.fingerprint, cm.device.fingerprint, shp.key, cm.carrier.value,
                          tuple(p.value for p in precs), entries)


__all__ = [
    # answers
    "Estimate", "SubgraphCosts", "ModelCostTable", "SOURCES",
    # queries
    "latency", "model_table", "CostModel", "gain_of", "gain_stderr", "median_stderr",
    # devices
    "resolve_device", "device_peaks",
]
