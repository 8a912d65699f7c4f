"""Profiling campaigns: measure every (unique subgraph, shape, config) a model needs.

:func:`run_campaign` partitions the model, registers it in the store, enumerates the tasks
(each unique signature x shape x precision config of its slots) that are not measured yet
on this device, times them with real kernels (``profiles.backends``) through the
interleaved harness (``profiles.bench``), and writes each group of measurements as soon as
it is timed. Killed at any point and run again, it measures only what is missing: finished
work is in the store, unfinished work was never written.

With ``worker=NAME`` it instead claims tasks from a campaign in the store
(the store's campaign methods), so any number of processes on any number of hosts sharing a PostgreSQL
store split one campaign; each task is measured by one worker.

It also times the whole model per shape with every layer in the device's baseline precision
and stores it as the model latency ``all:<baseline>``; at a decode shape, in the same window,
the whole model in each other precision of the campaign (``all:<precision>``, the anchors of
:mod:`planner.anchors`) and with only its first piece in that precision
(``first:<precision>``, each precision's once-per-step cost).
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from hwcost.profiles.decode import find_caches, layer_indices, rewind, step_fn
from hwcost.profiles.eviction import CacheModel, module_bytes
from hwcost.profiles.loading import LoadedModel
from hwcost.profiles.partition import Partition, Piece, PieceInput, partition, register_model
from hwcost.profiles.passes import merge_passes, share_of
from hwcost.profiles.placement import place, to_device
from hwcost.profiles.stability import StabilityPolicy
from hwcost.profiles.window import anchor_keys, time_windows

from hwcost import fleet_worker
from hwcost.device import local_device
from hwcost.errors import BackendUnavailable, UnknownPrecision
from hwcost.precision import BASELINE, CANDIDATES, Precision, config_key, parse_precisions
from hwcost.shape import Shape, parse_shape, reads_kv, timing_shape
from hwcost.store import STALE_AFTER_S, MeasurementIn, SubgraphInfo, Unit

DEFAULT_SHAPE = "batch=1,seq=128"


@dataclass(frozen=True)
class TimingOptions:
    """Harness settings passed to ``profiles.bench.time_interleaved`` for every group.

    ``quick`` marks what is timed as quick (stored so, never planned on unless asked);
    ``policy`` judges the machine and holds the spread limits, re-measure and refusal
    (default ``StabilityPolicy.from_env()``: 5 % and 15 %)."""

    min_samples: int = 15
    warmup_max_s: float = 2.0
    max_seconds: float = 4.0  # re-measuring a group above the policy's remeasure_spread
    min_sample_us: float = 200.0
    quick: bool = False
    policy: StabilityPolicy | None = None
    cold_cache: bool | None = None  # None: when the model's weights exceed the last-level cache
    # a workload campaign's whole-model windows, in this many rotating passes over its shapes
    # (profiles.window.time_windows); each pass takes its share of the samples
    window_passes: int = 3
    # a direct campaign's groups, in this many passes over all of them (alternate passes in
    # reverse order), each with its share of the samples; a row is the mean of its passes
    passes: int = 3

    def __post_init__(self) -> None:
        if self.min_samples < 3:
            raise ValueError("min_samples must be at least 3")
        if self.window_passes < 1 or self.passes < 1:
            raise ValueError("window_passes and passes must be at least 1")
        if self.warmup_max_s < 0 or self.max_seconds < 0 or self.min_sample_us < 0:
            raise ValueError("timing limits must be non-negative")

    def kwargs(self) -> dict:
        """Keyword arguments of ``time_interleaved``."""
        return {"min_samples": self.min_samples, "warmup_max_s": self.warmup_max_s,
                "max_seconds": self.max_seconds,
                "min_sample_us": self.min_sample_us, "policy": self.policy}


QUICK_TIMING = TimingOptions(min_samples=5, warmup_max_s=0.05, max_seconds=0.0, min_sample_us=0.0,
                             quick=True, window_passes=1, passes=1,
                             policy=StabilityPolicy(wait_s=0.0, budget_s=0.0))
"""Few samples, no re-measuring, no waiting for a quiet machine: for tests and smoke runs.
Its rows are stored as quick: a plan uses them only when asked (``allow_unstable``) and a
later full run measures them again."""


@dataclass
class CampaignReport:
    """What a campaign run did."""

    model: str
    model_id: int
    model_fingerprint: str
    device: str
    device_name: str
    threads: int | None
    shapes: list[str]
    precisions: list[str]
    pieces: int
    unique_subgraphs: int
    tasks: int
    already: int = 0
    measured: int = 0
    failed: int = 0
    campaign: str | None = None
    worker: str | None = None
    lost: int = 0  # worker mode: tasks of units taken over by another worker (written there)
    left: dict[str, int] = field(default_factory=dict)  # worker mode: task states at the end
    note: str = ""  # worker mode: what the campaign still needs, in one line
    baseline_us: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    deployment: str = "eager"
    quick: bool = False
    unstable: int = 0  # timings stored as unstable (not used for plans unless asked)
    unstable_reasons: list[str] = field(default_factory=list)
    # shape -> the whole model's baseline in each window pass, where there were several
    window_passes_us: dict[str, list[float]] = field(default_factory=dict)

    def stability_line(self) -> str | None:
        """One line saying the run was refused as unstable, with the figure; None if not."""
        if not self.unstable:
            return None
        return (f"unstable machine: {self.unstable} of {self.measured} timings refused as good "
                f"({self.unstable_reasons[0]}); stored as unstable, not used for plans "
                "(--allow-unstable uses them); run again on a quiet machine to replace them")

    def to_dict(self) -> dict:
        return asdict(self)


def configs(n_slots: int, precisions: Sequence[Precision]) -> list[tuple[Precision, ...]]:
    """Every config of ``n_slots`` slots, the all-first-precision (baseline) one first."""
    return list(itertools.product(precisions, repeat=n_slots))


def campaign_tasks(part: Partition, shapes: Sequence[Shape], precisions: Sequence[Precision],
                   stored: Mapping[str, SubgraphInfo] | None = None
                   ) -> list[tuple[str, str, str]]:
    """``(signature, shape key, config key)`` of every unique subgraph x shape x config,
    grouped by shape and then signature (first-use order).

    A subgraph that reads no KV cache is timed at a decode shape without its KV length
    (:func:`hwcost.shape.timing_shape`), once for all the KV buckets of a batch. Whether it
    reads one comes from ``stored`` (the store's record of each signature, which the planner
    reads too) when given, else from the partition."""
    infos = {i.signature: i for i in part.subgraph_infos()}
    out: dict[tuple[str, str, str], None] = {}
    for shape in shapes:
        for sig, info in infos.items():
            extra = (stored[sig] if stored and sig in stored else info).extra
            key = timing_shape(shape, reads_kv(extra)).key
            out.update(((sig, key, config_key(c)), None)
                       for c in configs(len(info.slots), precisions))
    return list(out)


def profiled_precisions(backend: Any, names: Sequence[str] | str | None) -> list[Precision]:
    """The precisions a campaign on ``backend`` profiles for ``names`` (None: the device's
    candidates), the baseline first. UnknownPrecision for one the backend cannot deploy."""
    return _precisions(backend, names)


def _precisions(backend: Any, names: Sequence[str] | str | None) -> list[Precision]:
    known = list(backend.precisions)
    # by default the device's candidates; weight-only formats are opt-in (--precisions), so a
    # default campaign keeps its configs and its cut
    default = [p for p in known if p in CANDIDATES.get(backend.kind, tuple(known))]
    chosen = parse_precisions(names) if names else default
    bad = [p.value for p in chosen if p not in known]
    if bad:
        raise UnknownPrecision(f"backend {backend.kind} cannot deploy {', '.join(bad)}; it has: "
                               f"{', '.join(p.value for p in known)}")
    base = BASELINE.get(backend.kind, chosen[0])
    # the baseline comes first (gains are measured against it) and is always included
    return [base] + [p for p in dict.fromkeys(chosen) if p != base]


class _Measurer:
    """Times groups of configs of one piece at one shape on one backend."""

    def __init__(self, loaded: LoadedModel, part: Partition, backend: Any, threads: int | None,
                 timing: TimingOptions, n_inputs: int, deployment: str = "eager",
                 dataflow: Any = None, *, baseline: Precision = Precision.FP32):
        self.loaded, self.part, self.backend = loaded, part, backend
        self.baseline = baseline
        self.threads, self.timing, self.n_inputs = threads, timing, n_inputs
        self.deployment, self.dataflow = deployment, dataflow
        self.reps: dict[str, Piece] = {}
        for p in part.pieces:
            self.reps.setdefault(p.signature, p)
        self._captured: dict[str, dict[str, list[PieceInput]]] = {}
        self.undeployable: dict[str, str] = {}  # config key -> why a kernel rejected it
        self._layer_bytes: dict[tuple[str, str], int] = {}  # (layer, precision) deployed
        self._cache = CacheModel.of(loaded.model, part.layer_names(), backend, threads)
        self.on_round: Callable[[int, int], None] | None = None  # progress within a group

    def inputs(self, shape: str, signature: str) -> list[PieceInput]:
        """Distinct captured inputs of the piece (one per seed), on the backend's device."""
        if shape not in self._captured:
            per_sig: dict[str, list[PieceInput]] = {s: [] for s in self.reps}
            index = {p.position: i for i, p in enumerate(self.part.pieces)}
            with torch.no_grad():
                for seed in range(self.n_inputs):
                    inputs = _move(self.loaded.inputs_for(shape, seed), self.backend.device)
                    caps = self.part.capture_inputs(self.loaded.model, inputs,
                                                    pieces=list(self.reps.values()))
                    rewind(find_caches(inputs), parse_shape(shape).kv)  # the pass appended
                    for sig, rep in self.reps.items():
                        per_sig[sig].append(caps[index[rep.position]])
            self._captured[shape] = per_sig
        return self._captured[shape][signature]

    def evict_bytes(self, shape: str | None = None, signature: str | None = None,
                    config: str | None = None) -> int:
        """Bytes to read before each sample of ``signature``'s piece in ``config`` (default
        its baseline) at ``shape``, so it finds its weights where the model leaves them
        (:meth:`profiles.eviction.CacheModel.evict_bytes`; ``TimingOptions.cold_cache``
        forces either way)."""
        decode = shape is not None and parse_shape(shape).phase == "decode"
        own, ratio = 0.0, 1.0
        if decode and signature is not None:  # only a decode step prices the piece's bytes
            own = self._cache.layers_bytes(self.reps[signature].layer_names)
            if config is not None and own:
                ratio = self.config_bytes(signature, config) / own
        return self._cache.evict_bytes(decode, self.timing.cold_cache, own, ratio)

    def why_undeployable(self, config: str) -> str:
        """Why ``config`` has no timing: the kernel's rejection, where one was recorded."""
        return self.undeployable.get(config, f"cannot deploy {config}")

    def config_bytes(self, signature: str, config: str) -> float:
        """Bytes of the piece's slot layers deployed in ``config`` (weights, scales, bias)."""
        model, total = self.loaded.model, 0
        for name, prec in zip(self.reps[signature].layer_names, config.split(",")):
            if (name, prec) not in self._layer_bytes:
                self._layer_bytes[name, prec] = module_bytes(
                    self.backend.deploy_linear(model.get_submodule(name), prec))
            total += self._layer_bytes[name, prec]
        return float(total)

    def baseline_key(self, signature: str) -> str:
        """The all-baseline config of a piece."""
        return ",".join([self.baseline.value] * len(self.reps[signature].layer_names))

    def measure(self, signature: str, shape: str, cfgs: Sequence[str],
                share: int = 1) -> dict[str, Any]:
        """config key -> Timing for each config of the group and for the piece's baseline
        config, which is timed in every group so that each gain is taken against the
        baseline timed with it, in the same rounds (drift cancels), on the same host.
        ``share``: this is one of that many passes, with its share of the samples.

        Each (layer, precision) is deployed once per group with the backend's real kernel
        and shared by the configs that use it; every config runs in its own shallow copy
        of the piece (and of those layers, which share their weights), so the model itself
        is never modified. The copies are linked as a deployment runs them (one input
        conversion per tensor, float chains without casts); a compiled deployment compiles
        each config's piece.
        """
        from hwcost.profiles.bench import time_interleaved

        piece = self.reps[signature]
        baseline = self.baseline_key(signature)
        keys = list(cfgs) + ([baseline] if baseline is not None and baseline not in cfgs else [])
        fns = self.piece_fns(signature, keys)
        # each config finds its weights where a deployment in its format leaves them
        evict = {k: self.evict_bytes(shape, signature, k) for k in fns}
        inputs = self.inputs(shape, signature)
        kv = parse_shape(shape).kv
        if kv:  # a decode step appends to its layers' caches: rewind after every call
            layers = layer_indices(piece.extract(self.loaded.model).children())
            fns = {k: step_fn(f, inputs, kv, layers) for k, f in fns.items()}
        return time_interleaved(fns, inputs, self.backend,
                                threads=self.threads, baseline=baseline, evict_bytes=evict,
                                on_round=self.on_round,
                                **share_of(self.timing.kwargs(), share))

    def piece_fns(self, signature: str, keys: Sequence[str]) -> dict[str, Any]:
        """config key -> a callable running the piece in that config on a captured input
        (see :meth:`measure`); configs a kernel cannot deploy are left out."""
        import copy

        from hwcost.profiles.backends.interact import compile_deployed, link_deployed

        piece = self.reps[signature]
        model = self.loaded.model
        deployed: dict[tuple[str, str], torch.nn.Module] = {}
        fns = {}
        for key in keys:
            swaps = {}
            try:
                for name, prec in zip(piece.layer_names, key.split(",")):
                    if (name, prec) not in deployed:
                        deployed[name, prec] = self.backend.deploy_linear(
                            model.get_submodule(name), prec)
                        self._layer_bytes[name, prec] = module_bytes(deployed[name, prec])
                    swaps[name] = copy.copy(deployed[name, prec])  # own links, shared weights
            except BackendUnavailable as e:
                # a kernel that rejects this layer's shape: the others are timed, and the
                # reason is kept for the configs left out (a worker fails their tasks with it)
                self.undeployable[key] = f"cannot deploy {key}: {e}"
                continue
            link_deployed(swaps, self.dataflow)
            holder = piece.extract(model, replace=swaps)

            def fn(inp, m=holder):
                return piece.run(m, inp)
            fns[key] = compile_deployed(fn) if self.deployment == "compiled" else fn
        return fns

    def model_fn_of(self, shape: str, baseline: Precision,
                    overrides: Mapping[str, Precision] | None = None) -> tuple[Any, list]:
        """A callable running the whole model with every slot layer in ``baseline`` (the
        kernels the pieces' baseline configs run), those named in ``overrides`` in theirs,
        and its inputs at ``shape``."""
        from hwcost.profiles.backends import apply_precisions
        from hwcost.profiles.backends.interact import compile_deployed

        layers = {n: baseline for n in self.part.layer_names()}
        layers.update(overrides or {})
        model = apply_precisions(self.loaded.model, layers, self.backend, self.dataflow)
        if self.deployment == "compiled":
            model = compile_deployed(model)
        inputs = [_move(self.loaded.inputs_for(shape, seed), self.backend.device)
                  for seed in range(self.n_inputs)]
        return step_fn(lambda inp: model(**inp), inputs, parse_shape(shape).kv), inputs

    def model_latency(self, shape: str, baseline: Precision) -> Any:
        """Timing of the whole model with every slot layer deployed in ``baseline``, the
        same kernels the pieces' baseline configs run."""
        from hwcost.profiles.bench import time_one

        fn, inputs = self.model_fn_of(shape, baseline)
        return time_one(fn, inputs, self.backend, threads=self.threads, **self.timing.kwargs())


CUT_TOKENS = 128
"""Longest prefill the partitioner traces: its full trace holds every module's inputs and
outputs, so it runs at batch 1 and at most this many tokens, whatever shape is profiled."""


def cut_shape(shapes: Sequence[Shape]) -> Shape:
    """The shape the model is partitioned on: batch 1 and the first prefill shape's tokens (at
    most :data:`CUT_TOKENS`), else a short prefill (the cut is the same at every shape; a
    prefill pass needs no cache)."""
    for s in shapes:
        if not s.kv:
            return Shape(batch=1, seq=min(s.seq, CUT_TOKENS))
    return Shape(batch=1, seq=8)


def cut_model(loaded: LoadedModel, shapes: Sequence[str | Shape], backend: Any,
              n_precisions: int = 3, max_configs: int = 64) -> Partition:
    """The partition a campaign profiles (and ``hwcost run`` hands on to sensitivity, so the
    model is traced once): at :func:`cut_shape`, on the model's device."""
    from hwcost.profiles.placement import follow_model

    shape_list = [parse_shape(s) for s in shapes]
    with torch.no_grad():
        # at least 3 precisions for the cut, so that with the defaults every device and
        # precision subset cuts the model alike and one manifest serves them all
        return partition(loaded.model, follow_model(loaded.inputs_for(cut_shape(shape_list)),
                                                    loaded.model),
                         n_precisions=max(3, n_precisions), max_configs=max_configs)


def _move(inputs: dict, device: Any) -> dict:
    return to_device(inputs, device)


def run_campaign(store: Any, loaded: LoadedModel, device_kind: str = "cpu",
                 shapes: Sequence[str | Shape] | None = None,
                 precisions: Sequence[str] | str | None = None, worker: str | None = None,
                 campaign: str | None = None, *, max_configs: int = 64, group: int = 32,
                 threads: int | None = None, n_inputs: int = 3,
                 timing: TimingOptions | None = None, progress: bool | None = None,
                 stale_after_s: float = STALE_AFTER_S,
                 model_latency: bool = True, deployment: str = "eager",
                 part: Partition | None = None) -> CampaignReport:
    """Measure what the store lacks for ``loaded`` on this machine's ``device_kind``.

    Args:
        store: an open :class:`hwcost.store.Store`.
        loaded: the model (:func:`profiles.loading.load_model`).
        device_kind: ``cpu``, ``cuda`` or ``hpu`` (BackendUnavailable if it cannot run here).
        shapes: shape keys (default ``batch=1,seq=128``).
        precisions: precisions to profile (default: all the backend deploys); the device's
            baseline is always included.
        worker: claim tasks from the campaign in the store under this worker name instead of
            measuring everything in this process.
        campaign: campaign name (default in worker mode: model and device fingerprints, so
            workers started alike join the same campaign).
        max_configs: cap on configs per subgraph (pieces are split to stay under it).
        group: configs timed together (interleaved) and written in one transaction.
        threads: CPU threads to time with (default: the backend's, all usable CPUs); part of
            the device fingerprint.
        n_inputs: distinct captured inputs per piece, used in rotation.
        timing: harness settings (default :class:`TimingOptions`).
        progress: show a progress bar on stderr (default: when stderr is a terminal).
        stale_after_s: worker mode: claims whose heartbeat is older than this are handed
            out again (their worker is presumed dead).
        model_latency: also time the whole model in the baseline precision per shape.
        deployment: ``eager``, or ``compiled`` (every config under ``torch.compile``,
            inductor on CPU), stored under its own device fingerprint.
        part: the model's partition when the caller has it (:func:`cut_model`; ``hwcost
            run`` cuts once for profiling and sensitivity).
    """
    from hwcost.profiles.backends import get_backend

    start = time.perf_counter()
    backend = get_backend(device_kind)
    backend.require()
    place(loaded.model, backend.device)  # pieces run in place; only deployed layers are new
    precs = _precisions(backend, precisions)
    shape_list = [parse_shape(s) for s in (shapes or [DEFAULT_SHAPE])]
    for shape in shape_list:  # before anything is stored
        loaded.check_shape(shape)
    timing = timing or TimingOptions()
    if group < 1:
        raise ValueError("group must be at least 1")
    threads = threads if threads is not None else backend.default_threads()
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)  # the fingerprint records the threads timings use
    try:
        info = local_device(backend.kind, deployment=deployment)
        dev = store.put_device(info)
        if part is None:
            part = cut_model(loaded, shape_list, backend, len(precs), max_configs)
        model_id = register_model(store, loaded, part)
        # the store's subgraph records decide which pieces read the KV cache (as for plans)
        stored = {info.signature: info for _, info in store.model_manifest(part.model_fingerprint).items}
        tasks = campaign_tasks(part, shape_list, precs, stored)
        report = CampaignReport(
            loaded.name, model_id, part.model_fingerprint, info.fingerprint, info.name, threads,
            [s.key for s in shape_list], [p.value for p in precs], len(part.pieces),
            len(part.subgraph_infos()), len(tasks), worker=worker, deployment=deployment)
        from hwcost.profiles.backends.interact import trace_dataflow

        with torch.no_grad():
            flow = trace_dataflow(loaded.model, _move(loaded.inputs_for(cut_shape(shape_list)),
                                                      backend.device))
        report.quick = timing.quick
        measurer = _Measurer(loaded, part, backend, threads, timing, n_inputs, deployment, flow,
                             baseline=precs[0])
        if worker:
            report.campaign = campaign or f"{part.model_fingerprint[:12]}-{info.fingerprint[:12]}"
            _run_worker(store, report, tasks, measurer, worker, group, stale_after_s, progress)
        else:
            report.campaign = campaign
            _run_direct(store, report, tasks, measurer, group, progress)
        if model_latency:
            base = precs[0]
            todo = {}  # shape -> the precisions of its whole-model rows, when one is missing
            for shape in shape_list:
                # a quick run accepts any stored row; a full run replaces quick or unstable ones
                # (where anchored: the baseline's and each anchor's, timed in one window)
                anchors = (_whole_model_precisions(store, report, tasks, shape, precs)
                           if anchored_shape(shape, deployment) else precs[:1])
                found = {key: store.model_latency(part.model_fingerprint, dev.fingerprint,
                                                  shape.key, key, allow_unstable=timing.quick)
                         for key in [f"all:{base.value}",
                                     *anchor_keys(p.value for p in anchors[1:])]}
                if any(row is None for row in found.values()):
                    todo[shape] = anchors[1:]
                else:
                    report.baseline_us[shape.key] = found[f"all:{base.value}"].median_us
            passes = (timing.window_passes
                      if len(todo) > 1 and any(s.phase == "decode" for s in todo) else 1)
            for shape, (t, whole, levels) in time_windows(store, report, measurer, base, todo,
                                                          passes).items():
                # one window's rows go together: a stable window replaces them all
                for key, tp in {f"all:{base.value}": t, **whole}.items():
                    store.put_model_latency(part.model_fingerprint, dev.fingerprint,
                                            shape.key, key, tp,
                                            quick=timing.quick, replace=t.stable)
                report.baseline_us[shape.key] = t.median_us
                if len(levels) > 1:
                    report.window_passes_us[shape.key] = levels
                if not t.stable:
                    report.unstable_reasons.append(f"whole model: {t.reason}")
    finally:
        torch.set_num_threads(before)
    report.elapsed_s = round(time.perf_counter() - start, 2)
    return report


def anchored_shape(shape: Shape, deployment: str) -> bool:
    """Whether a campaign times the whole model in each uniform precision at ``shape``
    (``profiles.window.anchor_timings``), for the planner to anchor the pieces' gains on
    (``planner.anchors``): at a decode shape (whether the weights stay in the cache depends
    on the whole model's format) and under the compiled deployment (the whole model's graph
    fuses across the pieces' edges, which no piece compiled alone can see)."""
    return shape.phase == "decode" or deployment == "compiled"


def _whole_model_precisions(store: Any, report: CampaignReport, tasks: Sequence[tuple],
                            shape: Shape, precs: Sequence[Precision]) -> list[Precision]:
    """The baseline and each precision whose whole model can be deployed: every piece has
    its all-``p`` config (among the campaign's ``tasks``) measured at ``shape``. A precision
    some kernel rejects on a layer has no such row and no anchor to time, so a re-run does
    not look for one again."""
    keys = {timing_shape(shape, False).key, shape.key}
    mine = [(sig, key, cfg) for sig, key, cfg in tasks if key in keys]
    done = {(sig, key): cfgs for key in keys
            for sig, cfgs in store.measured_configs(
                report.device, key, sorted({s for s, k, _ in mine if k == key}),
                allow_unstable=True).items()}

    def everywhere(p: Precision) -> bool:
        return all(cfg in done[sig, key] for sig, key, cfg in mine
                   if set(cfg.split(",")) == {p.value})
    return [precs[0], *(p for p in precs[1:] if everywhere(p))]


def _bar(total: int, initial: int, progress: bool | None, desc: str):
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, initial=initial, desc=desc, unit="cfg", file=sys.stderr,
                disable=not show, dynamic_ncols=True)


def _follow_group(bar, measurer: _Measurer, n_configs: int, sig: str, shape: str,
                  prefix: str = "") -> None:
    """Between the bar's per-group steps, its postfix follows the group being timed: its
    configs and piece, and the interleaved rounds taken of those planned."""
    if bar.disable:
        measurer.on_round = None
        return
    what = f"{prefix}{n_configs} configs of {sig[:8]} at {shape.split(',phase=')[0]}"
    bar.set_postfix_str(f"deploying {what}", refresh=False)
    bar.update(0)

    def on_round(done: int, planned: int) -> None:
        bar.set_postfix_str(f"timing {what}: round {done}/{planned}", refresh=False)
        bar.update(0)  # redraws at most every tqdm.mininterval

    measurer.on_round = on_round


def _groups(items: Sequence[tuple[str, str, str]], size: int):
    """Consecutive runs of the same (signature, shape), cut to ``size``."""
    for (sig, shape), run in itertools.groupby(items, key=lambda t: (t[0], t[1])):
        run = list(run)
        for i in range(0, len(run), size):
            yield sig, shape, run[i:i + size]


def _measurements(report: CampaignReport, sig: str, shape: str, cfgs: Sequence[str],
                  timings: dict, baseline: str, count: bool = True) -> list:
    """The group's configs as rows (not the baseline timed alongside unless it was asked
    for), each with the in-group baseline median and how the group was timed; counts the
    timings of an unstable group on the report (unless not ``count``: a pass before the
    last)."""
    base = timings[baseline]
    if not base.stable and count:
        report.unstable += len(cfgs)
        if len(report.unstable_reasons) < 5:
            report.unstable_reasons.append(base.reason)
    return [MeasurementIn(report.device, sig, shape, cfg, t.median_us, t.spread_us, t.n_samples,
                          campaign=report.campaign, clock=t.clock, quick=report.quick,
                          stable=t.stable, load1=t.load1, cpu_mhz=t.cpu_mhz, threads=t.threads,
                          baseline_us=base.median_us, drift=t.drift)
            for cfg, t in ((c, timings[c]) for c in cfgs)]


def _write(store, report: CampaignReport, sig: str, shape: str, cfgs: Sequence[str],
           timings: dict, baseline: str, *, replace: bool = False, count: bool = True) -> None:
    store.add_measurements(_measurements(report, sig, shape, cfgs, timings, baseline, count),
                           replace=replace)


def _run_direct(store, report: CampaignReport, tasks, measurer: _Measurer, group: int,
                progress: bool | None) -> None:
    """Time what the store lacks in groups of ``group`` configs, in ``TimingOptions.passes``
    passes over all the groups (alternate passes in reverse order; why: ``profiles.passes``),
    each with its share of the samples. After each pass a group's rows are the mean of its
    passes so far, so a campaign stopped after its first pass keeps them (fewer samples, as
    ``n_samples`` says) and a rerun does not time them again."""
    todo = []
    for shape in dict.fromkeys(t[1] for t in tasks):  # decode pieces without a cache: no kv
        sigs = list(dict.fromkeys(t[0] for t in tasks if t[1] == shape))
        # a full run measures again what a quick or unstable run left; a quick run does not
        done = store.measured_configs(report.device, shape, sigs, allow_unstable=report.quick)
        todo.extend(t for t in tasks if t[1] == shape and t[2] not in done[t[0]])
    report.already = len(tasks) - len(todo)
    groups = [(sig, shape, [t[2] for t in run]) for sig, shape, run in _groups(todo, group)]
    passes = measurer.timing.passes if groups else 1
    runs: list[list[dict]] = [[] for _ in groups]  # per group, its timings in each pass
    with _bar(report.already + passes * len(todo), report.already, progress,
              report.model) as bar:
        for k in range(passes):
            for i in range(len(groups)) if k % 2 == 0 else reversed(range(len(groups))):
                if k == 0 or runs[i]:  # a group that failed a pass is not timed again
                    _pass_of_group(store, report, measurer, *groups[i], runs[i], k, passes, bar)
                bar.update(len(groups[i][2]))


def _pass_of_group(store, report: CampaignReport, measurer: _Measurer, sig: str, shape: str,
                   cfgs: list[str], runs: list[dict], k: int, passes: int, bar) -> None:
    """Pass ``k`` of one group: time it, append its timings to ``runs`` and write the mean
    of its passes so far (the report counts a group's rows, failures and refusals once)."""
    _follow_group(bar, measurer, len(cfgs), sig, shape,
                  f"pass {k + 1}/{passes}: " if passes > 1 else "")
    try:
        timings = measurer.measure(sig, shape, cfgs, share=passes)
    except Exception as e:  # noqa: BLE001 - one bad group must not stop a campaign
        runs.clear()  # its rows of earlier passes stand; it is not timed again
        if k == 0:
            report.failed += len(cfgs)
        report.errors.append(f"{sig[:12]} {shape}: {type(e).__name__}: {e}")
        return
    runs.append(timings)
    merged = merge_passes(runs, measurer.timing.policy)  # configs timed in every pass
    ok = [c for c in cfgs if c in merged]
    _write(store, report, sig, shape, ok, merged, measurer.baseline_key(sig),
           replace=k > 0, count=k == passes - 1)
    if k == 0:
        report.measured += len(ok)
        missing = sorted(c for c in cfgs if c not in merged)  # a layer no kernel here takes
        if missing:
            report.failed += len(missing)
            report.errors.append(_left_out(sig, shape, measurer, missing))


def _left_out(sig: str, shape: str, measurer: _Measurer, configs: Sequence[str]) -> str:
    """One error line for the configs of a group no kernel here could deploy."""
    why = measurer.why_undeployable(configs[0])
    more = f" and {len(configs) - 1} more" if len(configs) > 1 else ""
    return f"{sig[:12]} {shape}: {why}{more}"


def _run_worker(store, report: CampaignReport, tasks, measurer: _Measurer, worker: str,
                group: int, stale_after_s: float, progress: bool | None) -> None:
    """Claim whole (subgraph, shape) units until none is left
    (``hwcost.fleet_worker.work``), then say what the campaign still needs."""
    cid = store.ensure_campaign(report.campaign, device=report.device,
                                model=report.model_fingerprint, shapes=report.shapes,
                                precisions=report.precisions)
    store.add_tasks(cid, tasks)
    prog = store.campaign_progress(cid)
    report.already = prog.done
    with _bar(prog.total, prog.done + prog.failed, progress, f"{report.model} [{worker}]") as bar:
        def refresh() -> None:
            if not bar.disable:
                now = store.campaign_progress(cid)
                bar.total, bar.n = now.total, now.done + now.failed + now.cancelled
                bar.refresh()

        def measure(unit: Unit) -> tuple[list, dict]:
            _follow_group(bar, measurer, len(unit.tasks), unit.signature, unit.shape)
            return _measure_unit(report, measurer, unit, group)

        res = fleet_worker.work(store, cid, worker, measure, stale_after_s=stale_after_s,
                                after_unit=refresh)
    report.measured += res.measured
    report.failed += res.failed
    report.lost += res.lost
    report.left = res.left.to_dict()
    report.note = fleet_worker.what_is_left(report.campaign, res.left, res.live)


def _measure_unit(report: CampaignReport, measurer: _Measurer, unit: Unit,
                  group: int) -> tuple[list, dict]:
    """Time a unit's configs in interleaved groups of ``group``: (measurements, failures)."""
    rows, failed = [], {}
    for i in range(0, len(unit.tasks), group):
        chunk = unit.tasks[i:i + group]
        try:
            timings = measurer.measure(unit.signature, unit.shape, [t.config for t in chunk])
        except Exception as e:  # noqa: BLE001 - recorded on the tasks, the run goes on
            msg = f"{type(e).__name__}: {e}"
            failed.update({t.id: msg for t in chunk})
            report.errors.append(f"{unit.signature[:12]} {unit.shape}: {msg}")
            continue
        # a config no kernel here can deploy is failed with the reason, never marked done
        left_out = [t for t in chunk if t.config not in timings]
        for t in left_out:
            failed[t.id] = measurer.why_undeployable(t.config)
        if left_out:
            report.errors.append(_left_out(unit.signature, unit.shape, measurer,
                                           [t.config for t in left_out]))
        ok = [t.config for t in chunk if t.config in timings]
        rows.extend(_measurements(report, unit.signature, unit.shape, ok, timings,
                                  measurer.baseline_key(unit.signature)))
    return rows, failed
