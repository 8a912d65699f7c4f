"""The multiple-choice problem: one precision configuration per subgraph instance.

Built from the store alone (manifest, cost table with fallbacks, sensitivity table), so it
needs no model weights and no torch. Each subgraph instance offers its configurations as
:class:`Option` s; each option carries what every objective and constraint needs: latency
and time gain, predicted loss MSE (sum of its layers' s_l(p)), weight bytes and MAC-based
theoretical time.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hwcost.errors import HwcostError, NoEstimate, NoSuchModel
from hwcost.precision import BASELINE, CANDIDATES, Precision, config_key, parse_precision
from hwcost.shape import Shape, parse_shape
from hwcost.workload import is_workload_key

if TYPE_CHECKING:
    from hwcost.costs import SubgraphCosts


@dataclass(frozen=True)
class Option:
    """One configuration of one subgraph instance."""

    config: tuple[str, ...]  # precision per slot, in slot order
    latency_us: float
    gain_us: float  # baseline latency minus this latency (negative: slower than baseline)
    loss_mse: float  # sum over its layers of s_l(p_l)
    weight_bytes: float
    macs_time_us: float  # theoretical time from MACs and the device's (or relative) peak rates
    source: str  # measured | learned | roofline
    uncertainty_us: float = 0.0  # standard error of latency_us (of a median, or a fallback's)
    layer_loss_mse: tuple[float, ...] = ()  # s_l(p_l) of each layer, in slot order
    # relative standard error of the reference its gain is a ratio to (the baseline timed in
    # its group, or a fallback's own baseline estimate); shared by a subgraph's options
    ref_rel_stderr: float = 0.0

    @property
    def key(self) -> str:
        return ",".join(self.config)


@dataclass(frozen=True)
class Choice:
    """A subgraph instance of the model and its options (index 0 is the all-baseline config)."""

    position: int
    signature: str
    kind: str
    layer_names: tuple[str, ...]
    options: tuple[Option, ...]

    @property
    def baseline(self) -> Option:
        return self.options[0]

    def uniform(self, precision: str) -> Option | None:
        """The option with every layer in ``precision`` (None when not priced)."""
        want = (precision,) * len(self.layer_names)
        return next((o for o in self.options if o.config == want), None)


@dataclass
class Problem:
    """Everything the solver needs, detached from the store."""

    model_name: str
    model_fingerprint: str
    device_fingerprint: str
    device_name: str
    device_kind: str
    shape: str
    baseline: str
    precisions: tuple[str, ...]
    choices: list[Choice]
    model_baseline_us: float | None = None  # measured whole-model baseline latency, if stored
    sensitivity: dict = field(default_factory=dict)  # {method, calib_fingerprint, checkpoint, quantizer}
    # shape -> {precision: scale} of the gains anchored on whole-model steps (planner.anchors)
    gain_scales: dict = field(default_factory=dict)
    # shape -> {precision: once-per-step cost (us)}: each of that shape's steps pays the
    # largest cost of the formats a plan uses there (planner.anchors: a format's first
    # layers in a decode step cost more than their share of the uniform model's gain); a
    # workload's entries are weighted by the steps they price; empty: none
    presence_us: dict = field(default_factory=dict)
    # the store's records the problem was built from (None for a problem made by hand):
    # saving its plan finds the model and device by these, never by re-resolving a reference
    model_ref: Any = field(default=None, compare=False, repr=False)
    device_ref: Any = field(default=None, compare=False, repr=False)

    @property
    def checkpoint(self) -> str:
        """Digest of the weights whose sensitivity table this problem uses."""
        return self.sensitivity.get("checkpoint", "unknown")

    @property
    def quantizer(self) -> str:
        """Key of the quantizer that table scored."""
        return self.sensitivity.get("quantizer", "unknown")

    @property
    def subgraph_baseline_us(self) -> float:
        return sum(c.baseline.latency_us for c in self.choices)

    @property
    def baseline_us(self) -> float:
        """End-to-end baseline: the measured whole model when stored, else the subgraph sum.

        The whole model contains every subgraph, so a stored whole-model time below the sum of
        the subgraph baselines (noisy timings) is replaced by that sum: predicted plan
        latencies then stay positive."""
        return max(self.model_baseline_us or 0.0, self.subgraph_baseline_us)

    @property
    def baseline_from(self) -> str:
        """``model`` when the measured whole-model latency is the baseline, else ``subgraphs``."""
        m = self.model_baseline_us
        # relative slack: an anchored problem's pieces are scaled to sum to the whole step
        # (planner.anchors), which floating-point rounding can leave an ulp above it
        return "model" if m and m >= self.subgraph_baseline_us * (1 - 1e-9) else "subgraphs"

    @property
    def layers(self) -> list[str]:
        return [n for c in self.choices for n in c.layer_names]

    def presence_cost_us(self, picks: Sequence[int]) -> float:
        """The once-per-step costs (``presence_us``) ``picks`` pay: at each shape, the
        largest of the formats they use (one step leaves the baseline's path once)."""
        if not self.presence_us:
            return 0.0
        used = {p for c, i in zip(self.choices, picks) for p in c.options[i].config}
        return sum(max((costs.get(p, 0.0) for p in used), default=0.0)
                   for costs in self.presence_us.values())

    def plan_gain_us(self, picks: Sequence[int]) -> float:
        """Predicted time gain of a pick of options over the baseline: the options' gains
        less the once-per-step costs of the precisions they use. Every price of a plan goes
        through here."""
        return (sum(c.options[i].gain_us for c, i in zip(self.choices, picks))
                - self.presence_cost_us(picks))

    def picks_of(self, layers: Mapping[str, str]) -> tuple[int, ...]:
        """The option picks of a layer map (every layer of the problem named)."""
        out = []
        for c in self.choices:
            cfg = tuple(layers[n] for n in c.layer_names)
            idx = next((i for i, o in enumerate(c.options) if o.config == cfg), None)
            if idx is None:
                raise HwcostError(f"subgraph {c.position} ({', '.join(c.layer_names)}) has no "
                                  f"priced configuration {','.join(cfg)}")
            out.append(idx)
        return tuple(out)


# ------------------------------------------------------------------------- building


def build_problem(store, model_ref: str, device: str, shape: str | Shape, *,
                  precisions: Sequence[str] | None = None, method: str | None = "taylor",
                  checkpoint: str | None = None, quantizer: str | None = None,
                  allow_unstable: bool = False, anchor: bool = True) -> Problem:
    """The planning problem of a stored model on a device and shape.

    ``device`` is anything ``hwcost.costs.resolve_device`` accepts (fingerprint, name, kind,
    catalog name). ``precisions`` defaults to the device kind's candidates that have a
    sensitivity table; the baseline precision is always included. ``checkpoint`` (a weights
    digest or unique prefix) and ``quantizer`` (a key) pick the sensitivity table; when the
    architecture has tables of one checkpoint only they may be left out. Costs come from
    ``hwcost.costs.model_table``: measured, else learned, else roofline, each labelled;
    quick and unstable timings (measurements and the whole-model baseline) only with
    ``allow_unstable``. Each measured gain is taken against the baseline timed with it; a
    subgraph with any config unmeasured takes all its gains from one fallback source.
    Where the campaign timed whole-model anchors (a decode shape, the compiled deployment)
    the gains are anchored on them (:func:`anchor_problem`) unless ``anchor`` is False (the
    pieces' own gains, for diagnostics). ``method=None``: the cost side alone, without a
    sensitivity table (every option's loss 0; ``precisions`` must be named): how the planner
    prices a plan's time, for benchmarks of the cost table.
    """
    from hwcost.costs import resolve_device

    shape_obj = parse_shape(shape)
    dev = resolve_device(store, device)  # resolved here once; the refs are passed along
    manifest = store.model_manifest(model_ref)  # read once: the cost table walks this one
    model = manifest.model
    if not manifest:
        raise NoSuchModel(f"model {model.name!r} has an empty manifest; re-run `hwcost profile`")
    baseline = BASELINE.get(dev.kind, Precision.FP32).value
    layers = manifest.layer_names
    if method is None:
        if not precisions:
            raise HwcostError("a problem without a sensitivity table needs its precisions named")
        sens, key = {}, {}
        precs = _baseline_first(baseline, precisions)
    else:
        sens, key = _sensitivity_table(store, model, method, checkpoint, quantizer)
        precs = _choose_precisions(dev.kind, baseline, precisions, sens, layers, model.name)
    entries = _cost_entries(store, manifest, dev, shape_obj, precs, allow_unstable)
    kinds = {item.position: info.kind for item, info in manifest}
    rates = _mac_rates(dev, baseline, precs)
    choices = [_choice(e, kinds.get(e.position, ""), baseline, precs, sens, rates, shape_obj)
               for e in entries]
    base_row = store.model_latency(model, dev, shape_obj.key, f"all:{baseline}",
                                   allow_unstable=allow_unstable)
    problem = Problem(model_name=model.name, model_fingerprint=model.fingerprint,
                      device_fingerprint=dev.fingerprint, device_name=dev.name,
                      device_kind=dev.kind, shape=shape_obj.key, baseline=baseline,
                      precisions=precs, choices=choices,
                      model_baseline_us=base_row.median_us if base_row else None,
                      sensitivity={"method": method, **key} if method else {},
                      model_ref=model, device_ref=dev)
    return anchor_problem(store, problem, allow_unstable) if anchor else problem


def anchor_problem(store, problem: Problem, allow_unstable: bool = False) -> Problem:
    """A problem's gains anchored on the whole model's runs in each uniform precision
    (:mod:`planner.anchors`), where the campaign timed them (a decode shape, or any shape
    under the compiled deployment, ``profiles.campaign.anchored_shape``; beside the baseline
    model, scaled to its window's baseline: ``profiles.window.anchor_timings``). A workload's
    problem (its buckets' problems were anchored one by one), a problem without a
    whole-model baseline, and one without anchors stored are returned as they are."""
    from hwcost.planner.anchors import anchored, fit_anchors

    if is_workload_key(problem.shape) or problem.model_baseline_us is None:
        return problem
    fit = fit_anchors(problem, *anchor_rows(store, problem, allow_unstable))
    return anchored(problem, fit.scales, fit.presence_us)


def anchor_rows(store, problem: Problem, allow_unstable: bool = False
                ) -> tuple[dict[str, float], dict[str, float]]:
    """The campaign's whole-model runs at the problem's shape, in microseconds: every layer
    in each precision (``all:<p>``, the baseline's being ``model_baseline_us``) and only the
    first piece in it (``first:<p>``), ``({precision: us}, {precision: us})``; precisions
    without a row are left out."""
    def read(kind: str, prec: str) -> float | None:
        row = store.model_latency(problem.model_ref, problem.device_ref, problem.shape,
                                  f"{kind}:{prec}", allow_unstable=allow_unstable)
        return row.median_us if row is not None else None

    whole = {problem.baseline: problem.model_baseline_us} if problem.model_baseline_us else {}
    whole.update({p: us for p in problem.precisions[1:] if (us := read("all", p)) is not None})
    first = {p: us for p in whole if (us := read("first", p)) is not None}
    return whole, first


def _sensitivity_table(store, model, method: str, checkpoint: str | None,
                       quantizer: str | None) -> tuple[dict[tuple[str, str], float], dict]:
    """The table of one checkpoint and quantizer: named, or the only one stored. Tables of two
    checkpoints (a base model and its fine-tune) are never mixed or silently chosen between."""
    from hwcost.store import UNKNOWN

    keys = store.sensitivity_keys(model, method)
    if checkpoint is None:
        real = list(dict.fromkeys(c for c, _, _ in keys if c != UNKNOWN))
        if len(real) > 1:
            raise HwcostError(
                f"model {model.name!r} has sensitivity tables of {len(real)} checkpoints "
                f"({', '.join(c[:12] for c in real[:4])}); choose one with --checkpoint DIGEST")
        checkpoint = real[0] if real else (UNKNOWN if keys else None)
    chosen = {c for c, _, _ in keys if checkpoint is not None and c.startswith(checkpoint)}
    if quantizer is None and len(chosen) == 1:  # several: the store says the prefix is ambiguous
        quants = list(dict.fromkeys(q for c, q, _ in keys if c in chosen))
        if len(quants) > 1:
            raise HwcostError(f"checkpoint {min(chosen)[:12]} of {model.name!r} has tables of "
                              f"{len(quants)} quantizers ({'; '.join(quants[:3])}); choose one "
                              "with --quantizer")
    # the one read (and the one "none stored" wording): a checkpoint prefix resolved there
    table = store.sensitivity_table(model, method, checkpoint=checkpoint, quantizer=quantizer)
    return ({(r.layer, r.precision): r.loss_mse for r in table.rows},
            {"calib_fingerprint": table.calib_fingerprint, "checkpoint": table.checkpoint,
             "quantizer": table.quantizer})


def _choose_precisions(kind: str, baseline: str, asked: Sequence[str] | None,
                       sens: dict, layers: list[str], model_name: str) -> tuple[str, ...]:
    have = {p for _, p in sens}
    precs = _baseline_first(baseline, asked or [
        p.value for p in CANDIDATES.get(kind, ()) if p.value in have or p.value == baseline])
    for p in precs[1:]:
        missing = [n for n in layers if (n, p) not in sens]
        if missing:
            raise HwcostError(
                f"the sensitivity table of {model_name!r} has no {p} rows for {len(missing)} "
                f"layer(s) (e.g. {missing[0]}); run `hwcost sensitivity {model_name} --calib DATA "
                f"--precisions {','.join(precs[1:])}`")
    if len(precs) < 2:
        raise HwcostError(f"nothing to plan: no precision besides the baseline {baseline} has a "
                          f"sensitivity table for {model_name!r}")
    return tuple(precs)


def _baseline_first(baseline: str, names: Sequence[str]) -> tuple[str, ...]:
    """``names`` parsed, each once, after the baseline."""
    return tuple(dict.fromkeys([baseline, *(parse_precision(p).value for p in names)]))


def _cost_entries(store, manifest, dev, shape: Shape, precs: tuple[str, ...],
                  allow_unstable: bool = False) -> list[SubgraphCosts]:
    """Cost table per subgraph instance from ``hwcost.costs`` (measured, else learned, else
    roofline, each labelled), of the manifest and device already resolved."""
    from hwcost.costs import model_table

    return model_table(store, manifest, dev, shape.key, precisions=precs,
                       allow_unstable=allow_unstable).entries


def _mac_rates(dev, baseline: str, precs: tuple[str, ...]) -> dict[str, float]:
    """MACs per microsecond per precision: the device's peaks (calibrated or catalog) when
    known, else the baseline's rate scaled by the ratio of bits, the proxy MAC counts imply."""
    from hwcost.costs import device_peaks

    peaks = device_peaks(dev)

    def peak(p: str) -> float | None:
        v = peaks.rate(Precision(p)) if peaks is not None else None
        return float(v) * 1e12 / 2 / 1e6 if v else None  # TFLOP/s -> MAC/us

    base = peak(baseline) or 1.0
    base_bits = Precision(baseline).bits
    return {p: peak(p) or base * base_bits / Precision(p).bits for p in precs}


def _choice(e: SubgraphCosts, kind: str, baseline: str, precs: tuple[str, ...], sens: dict,
            rates: dict[str, float], shape: Shape) -> Choice:
    from hwcost.costs import gain_of

    n = len(e.slots)
    base_key = config_key([baseline] * n)
    if base_key not in e.costs:
        raise NoEstimate(f"no cost for the baseline config [{base_key}] of subgraph "
                         f"{e.signature[:12]} ({', '.join(e.layer_names)}); run `hwcost profile` "
                         "for this device and shape")
    base = e.costs[base_key]
    base_rel = base.uncertainty_us / base.latency_us if base.latency_us > 0 else 0.0
    options = []
    for cfg in itertools.product(precs, repeat=n):
        key = ",".join(cfg)
        est = e.costs.get(key)
        if est is None:
            continue
        layer_loss = tuple(sens.get((layer, p), 0.0) if p != baseline else 0.0
                           for layer, p in zip(e.layer_names, cfg))
        loss = sum(layer_loss)
        wbytes = sum(s.weight_params * Precision(p).bytes for s, p in zip(e.slots, cfg))
        macs_t = sum(s.macs_per_token * shape.tokens / rates[p] for s, p in zip(e.slots, cfg))
        options.append(Option(
            config=tuple(cfg), latency_us=float(est.latency_us),
            gain_us=float(gain_of(est, base)), loss_mse=float(loss),
            weight_bytes=float(wbytes), macs_time_us=float(macs_t),
            source=_weaker(est.source, base.source),
            uncertainty_us=float(est.uncertainty_us or 0.0),
            layer_loss_mse=tuple(float(v) for v in layer_loss),
            ref_rel_stderr=float(est.ref_rel_stderr if est.baseline_us else base_rel)))
    options.sort(key=lambda o: (o.key != base_key, o.key))
    return Choice(e.position, e.signature, kind, tuple(e.layer_names), tuple(options))


def _weaker(a: str, b: str) -> str:
    """The less trusted of two cost sources (``hwcost.costs.SOURCES`` runs from most to least)."""
    from hwcost.costs import SOURCES

    rank = {s: i for i, s in enumerate(SOURCES)}
    return max((a, b), key=lambda s: rank.get(s, len(SOURCES)))


# --------------------------------------------------------------------- layer patterns


def match_layers(pattern: str, layers: Sequence[str]) -> list[str]:
    """Layers a pin or group pattern names: exact name, glob (``*.lm_head``), or a suffix
    after a dot (``lm_head`` matches ``model.lm_head``)."""
    return [n for n in layers
            if n == pattern or fnmatch.fnmatchcase(n, pattern) or n.endswith("." + pattern)]
