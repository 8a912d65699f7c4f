"""The main job, from nothing to a validated mixed-precision plan, as one library function.

This is the composition root's core: it chains the library steps of the other packages
(profile, sensitivity, plan, apply and validate; each skips what the store already holds), so a
second run reuses everything and finishes in seconds. ``hwcost run`` is a thin wrapper that
builds :class:`MainJobOptions` from its options and prints the :class:`RunSummary`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwcost.enums import DeploymentMode

if TYPE_CHECKING:  # the store package reads the database drivers: not at the CLI's start
    from hwcost.store import PlanPrediction, Store

__all__ = ["MainJobOptions", "RunSummary", "run_main_job"]


@dataclass(frozen=True)
class MainJobOptions:
    """What the main job runs; the fields are ``hwcost run``'s options.

    ``model`` is a Hugging Face model directory or ``module:factory`` (None: the demo model).
    ``max_loss_mse`` is the loss-MSE bound as the user writes it: absolute (``0.01``) or a share
    of the all-lowest-precision loss MSE (``10%``). ``calib_samples`` (default 64) sequences of
    ``calib`` score the sensitivity; when neither is given, a stored table of this checkpoint on
    other calibration data is reused. ``threads``: CPU threads to time with (default: the
    backend's, all usable CPUs). With ``workload`` (``prompt=P,gen=G,batch=B`` or a JSON/CSV
    file) the plan optimises the whole request and ``shape`` is not used. ``deployment`` is
    ``eager`` or ``compiled`` (torch.compile). ``max_rounds`` caps the plans the closed loop
    measures while the loss MSE exceeds the bound.
    ``retime`` (K > 1): time up to K candidate plans within the bound end to end and keep the
    measured fastest (:mod:`planner.retime`), for each plan made, the closed loop's too;
    a workload's candidates are timed as ``generate()`` requests.
    """

    model: str | None = None
    device_kind: str = "cpu"
    shape: str = "batch=1,seq=128"
    max_loss_mse: str = "10%"
    out_dir: Path = Path("hwcost-out")
    calib: str | None = None
    eval_data: str | None = None
    sweep_points: int = 12
    samples: int = 32
    quick: bool = False
    calib_samples: int | None = None
    threads: int | None = None
    workload: str | None = None
    precisions: str | None = None
    allow_unstable: bool = False
    measured_only: bool = False
    deployment: str = DeploymentMode.EAGER.value
    max_rounds: int = 4
    retime: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.deployment not in DeploymentMode.values():
            raise ValueError(f"deployment must be one of {', '.join(DeploymentMode.values())}, "
                             f"got {self.deployment!r}")
        object.__setattr__(self, "deployment", DeploymentMode(self.deployment).value)
        for name in ("samples", "max_rounds", "calib_samples", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.sweep_points < 2:
            raise ValueError(f"sweep_points must be at least 2, got {self.sweep_points}")
        if self.retime < 0:
            raise ValueError(f"retime must be at least 0, got {self.retime}")


def _stderr_report(line: str) -> None:
    print(f"[hwcost run] {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RunSummary:
    """What ``hwcost run`` did and found; ``--json`` prints exactly this."""

    model: str
    model_fingerprint: str
    checkpoint: str
    quantizer: str
    device: str
    device_name: str
    shape: str
    threshold: str
    measured_now: int
    measurements_reused: int
    sensitivity_reused: bool
    plan_id: int
    plan_reused: bool
    layers: dict[str, str]
    precision_counts: dict[str, int]
    predicted_speedup: float
    measured_speedup: float
    predicted_loss_mse: float
    measured_loss_mse: float
    measured_share: float
    baseline_us: float
    plan_us: float
    validation_id: int
    validation_reused: bool
    plan_file: str
    plot_file: str
    steps_s: dict[str, float] = field(default_factory=dict)
    speedup_rel_error: float | None = None  # the plan's stated error of its prediction
    slower_than_baseline: bool = False  # validation measured the plan slower: not a result
    validation_stable: bool = True
    allow_unstable: bool = False  # the plan may rest on quick or unstable timings
    unstable_timings: int = 0  # this run's timings refused as good (unstable machine)
    warnings: list[str] = field(default_factory=list)  # one line each, printed after the summary
    notes: list[str] = field(default_factory=list)  # about the bound (planner.plans.bound_notes)
    cost_sources: dict[str, int] = field(default_factory=dict)  # subgraph costs per source
    bound_loss_mse: float | None = None  # the threshold's absolute value
    p_not_fastest: float | None = None  # chance a rival plan is faster (noisy gains)
    noise: str | None = None  # that chance and what it means, one line (planner.plans.noise_line)
    loop_rounds: list[dict] = field(default_factory=list)  # closed loop on the loss bound


def run_main_job(store: Store, options: MainJobOptions, *, progress: bool = False,
                 on_step: Callable[[str], None] | None = None,
                 report: Callable[[str], None] | None = None) -> RunSummary:
    """Profile what is missing, compute sensitivity if missing, plan, apply and validate;
    when the measured loss MSE exceeds the bound, re-plan with the predictions scaled by the
    measured ratio until it does not (:func:`planner.closed_loop.plan_within_bound`).

    ``options`` is a :class:`MainJobOptions` (``hwcost run``'s options, frozen).
    ``progress``: progress bars on stderr. ``report(line)``
    receives one line as each stage says whether it computes or reuses (default: stderr,
    prefixed ``[hwcost run]``). ``on_step(name)`` is called as each step starts (``load``,
    ``partition``, ``profile``, ``sensitivity``, ``plan``, ``validate``) and with ``done`` at
    the end: ``bench/scale.py`` measures each step's time and peak memory through it.

    With a workload, the campaign profiles the prefill shape and the decode KV buckets the
    workload needs, the plan prices prefill plus every decode step, and validation times
    real ``generate()`` calls.

    The plan rests on full, stable timings only, unless ``allow_unstable`` or ``quick``
    (whose timings are quick by definition; the summary says so). One plan has one
    prediction: a plan found again in the store is reported with its stored document.
    Library errors (:mod:`hwcost.errors`) are raised before anything is stored where they
    can be: a device that is not here, a model larger than the host, a bad shape or bound."""
    if not isinstance(options, MainJobOptions):
        raise TypeError(f"run_main_job takes a MainJobOptions, not {type(options).__name__}")
    return _run(store, options, progress, on_step or (lambda _name: None), report or _stderr_report)


def _run(store: Store, o: MainJobOptions, progress: bool, mark: Callable[[str], None],
         say: Callable[[str], None]) -> RunSummary:
    from hwcost.planner.apply import validate_plan_on_device
    from hwcost.planner.objectives import parse_threshold
    from hwcost.planner.plans import make_plan, save_plan
    from hwcost.planner.plot import plot_frontier
    from hwcost.planner.problem import build_problem
    from hwcost.planner.sweep import sweep
    from hwcost.planner.workload import build_workload_problem
    from hwcost.profiles.backends import get_backend
    from hwcost.profiles.campaign import QUICK_TIMING, cut_model, profiled_precisions, run_campaign
    from hwcost.profiles.loading import load_model
    from hwcost.profiles.memory import device_available, require_fits
    from hwcost.profiles.placement import baseline_dtype, place
    from hwcost.sensitivity.pipeline import (
        CalibSpec,
        compute_and_store,
        default_calib_path,
        find_stored,
        prepare,
    )
    from hwcost.shape import parse_shape
    from hwcost.workload import parse_workload, workload_shapes

    model_spec, device_kind, calib, eval_data = o.model, o.device_kind, o.calib, o.eval_data
    quick, samples, threads, measured_only = o.quick, o.samples, o.threads, o.measured_only
    wl = parse_workload(o.workload) if o.workload else None
    shapes = list(workload_shapes(wl)) if wl else [parse_shape(o.shape).key]
    shape = wl.shape_key if wl else shapes[0]  # what the plan targets and is stored under
    threshold = parse_threshold(o.max_loss_mse)
    times: dict[str, float] = {}

    mark("load")
    t0 = time.perf_counter()
    # everything that can be refused is refused before the model is read or the store written:
    # a device that is not here, a checkpoint larger than the host (in load_model) or the card
    backend = get_backend(device_kind)
    backend.require()
    dtype = baseline_dtype(backend.kind)
    backend.check_dtype(dtype)  # a dtype the device lacks: one line, before anything is read
    say(f"loading model {model_spec or '(demo model)'} in {str(dtype).removeprefix('torch.')}")
    loaded = load_model(model_spec, dtype=dtype)  # the one load of this run
    if backend.device.type != "cpu":
        require_fits(loaded.name, sum(p.numel() for p in loaded.model.parameters()), dtype,
                     f"{backend.kind} device", device_available(backend))
    for sh in shapes:  # a decode bucket beyond the model's positions: refused here
        loaded.check_shape(sh)
    precs = profiled_precisions(backend, o.precisions)
    place(loaded.model, backend.device)
    times["load"] = time.perf_counter() - t0

    mark("partition")
    t0 = time.perf_counter()
    part = cut_model(loaded, shapes, backend, len(precs))  # the one cut
    # calibration data and the loss are checked before anything is measured or stored
    from hwcost.profiles.memory import calib_batch_size

    spec = CalibSpec(path=calib, samples=o.calib_samples or 64)
    spec = CalibSpec(path=calib, samples=o.calib_samples or 64,
                     batch_size=calib_batch_size(loaded.model, spec.seq_len, spec.batch_size))
    prep = prepare(model_spec, spec, loaded=loaded, part=part)
    times["partition"] = time.perf_counter() - t0

    mark("profile")
    t0 = time.perf_counter()
    say(f"profiling what the store lacks for {loaded.name} on {device_kind} at {shape}")
    timing = QUICK_TIMING if quick else None
    camp = run_campaign(store, loaded, device_kind, shapes, [p.value for p in precs],
                        progress=progress, timing=timing, part=part, threads=threads,
                        deployment=o.deployment)
    if wl:
        from hwcost.planner.generate import measure_baseline

        say(f"timing generate() of the baseline for {wl.key} (reused when stored)")
        measure_baseline(store, loaded, backend, camp.model_fingerprint, camp.device,
                         camp.precisions[0], wl, threads=camp.threads,
                         quick=quick, **(timing.kwargs() if timing else {}))
    times["profile"] = time.perf_counter() - t0
    warnings: list[str] = []
    if camp.stability_line():
        warnings.append(camp.stability_line())
    allow = o.allow_unstable or quick
    if quick and not o.allow_unstable:
        warnings.append("--quick: the plan rests on quick timings (few samples, no waiting for "
                        "a quiet machine); not numbers to keep")

    mark("sensitivity")
    t0 = time.perf_counter()
    precisions_list = camp.precisions
    sens = find_stored(store, prep, precisions_list, "taylor",
                       any_calibration=calib is None and o.calib_samples is None)
    if sens is not None:
        say(f"sensitivity: reusing the stored table for {', '.join(precisions_list)} "
              f"(checkpoint {sens.checkpoint[:12]}, calibration "
              f"{sens.table.calib_fingerprint[:12]}, {sens.table.n_samples} samples)")
    else:
        say(f"sensitivity: computing {', '.join(precisions_list)} on {prep.calib.n_samples} "
              f"calibration sequences of {prep.calib.source} (one forward+backward pass each)")
        sens = compute_and_store(store, None, CalibSpec(), precisions_list, "taylor",
                                 prepared=prep, progress=progress)
    # a factory's own calibration batches (extras["calibration"]) name no file to compare
    calib_file = calib or (None if getattr(loaded, "calibration", None) is not None
                           else default_calib_path(model_spec))
    for w in _same_data_warning(calib_file, eval_data, model_spec) if calib_file else []:
        say(w)
        warnings.append(w)
    times["sensitivity"] = time.perf_counter() - t0

    mark("plan")
    t0 = time.perf_counter()
    ident = {"checkpoint": sens.table.checkpoint, "quantizer": sens.table.quantizer,
             "allow_unstable": allow}
    if wl:
        problem, pricing = build_workload_problem(store, camp.model_fingerprint, camp.device, wl,
                                                  precisions=precisions_list, **ident)
        errs = [f"batch {b}: {e:.1%}" for b, e in pricing.interpolation_error.items()
                if e is not None]
        if errs:
            say(f"decode interpolation between KV buckets, leave-one-out error {', '.join(errs)}")
    else:
        problem = build_problem(store, camp.model_fingerprint, camp.device, shape,
                                precisions=precisions_list, **ident)
    say(f"planning for loss MSE <= {threshold.describe(problem)}")
    time_plans = None
    if o.retime > 1:
        from hwcost.planner.apply import plan_timer

        time_plans = plan_timer(loaded, shape, backend, threads=camp.threads,
                                deployment=o.deployment, **(timing.kwargs() if timing else {}))
        say(f"re-timing up to {o.retime} candidate plans end to end")
    result = make_plan(store, camp.model_fingerprint, camp.device, shape, threshold,
                       problem=problem, measured=measured_only, retime=time_plans,
                       retime_k=o.retime)
    if result.retimed is not None and len(result.retimed.candidates) > 1:
        say(result.retimed.line())
    p_not_fastest, noise = result.p_not_fastest, result.noise_line
    layers = dict(result.document.layers)
    prior = _find_validated_plan(store, camp.model_fingerprint, camp.device, shape, layers,
                                 sens.table.checkpoint, sens.table.quantizer, quick)
    plan_reused = prior is not None
    if prior is None:
        save_plan(store, result)
    else:
        _adopt_stored_plan(store, result, prior[0])
    o.out_dir.mkdir(parents=True, exist_ok=True)
    plan_file = o.out_dir / "plan.json"
    plan_file.write_text(json.dumps(result.document.to_json(), indent=2, sort_keys=True))
    points = sweep(problem, o.sweep_points)
    times["plan"] = time.perf_counter() - t0

    mark("validate")
    t0 = time.perf_counter()
    pred = result.document.predicted

    def validate() -> Any:
        return validate_plan_on_device(store, result.document, result.plan_id, loaded=loaded,
                                       eval_data=eval_data, samples=samples, threads=threads,
                                       timing=timing.kwargs() if timing else None, quick=quick,
                                       progress=progress)

    if prior is not None and prior[1] is not None:
        say("validation reused from the store (same plan, device and shape)")
        r = _stored_validation(prior[0], prior[1], camp.device, pred, result.document)
    else:
        say("applying the plan with real kernels and validating on held-out data")
        r = validate()
    times["validate"] = time.perf_counter() - t0

    bound = result.solution.max_loss_mse
    rounds: list[dict] = []
    if bound is not None and r.measured_loss_mse > bound:
        t0 = time.perf_counter()
        say(f"measured loss MSE {r.measured_loss_mse:.3g} is over the bound {bound:.3g}: "
            "re-planning with the predictions scaled by the measured ratio")

        def find(lay: dict[str, str]) -> Any:
            return _find_validated_plan(store, camp.model_fingerprint, camp.device, shape, lay,
                                        sens.table.checkpoint, sens.table.quantizer, quick)

        loop = _close_loop(store, loaded, camp, shape, threshold, problem, result,
                           r.measured_loss_mse, eval_data, samples, measured_only, o.max_rounds,
                           find, say, time_plans, o.retime)
        rounds = loop.to_dict()["rounds"]
        if loop.result is not result:
            result = loop.result
            layers = dict(result.document.layers)
            prior = find(layers)
            pred = result.document.predicted
            if prior is not None and prior[1] is not None:  # validated by an earlier run
                plan_reused = True
                pred = _adopt_stored_plan(store, result, prior[0])
                r = _stored_validation(prior[0], prior[1], camp.device, pred, result.document)
            else:
                plan_reused, prior = False, None
                save_plan(store, result)
                r = validate()
            plan_file.write_text(json.dumps(result.document.to_json(), indent=2, sort_keys=True))
        times["closed_loop"] = time.perf_counter() - t0
    warnings += r.warnings()
    plot_file = plot_frontier(
        points, o.out_dir / "pareto.png", title=f"{loaded.name} on {camp.device_name} ({shape})",
        chosen=result.solution, bound=result.solution.max_loss_mse,
        measured=[(r.measured_loss_mse, r.measured_speedup, f"plan {result.plan_id} validated")])
    mark("done")

    counts: dict[str, int] = {}
    for p in layers.values():
        counts[p] = counts.get(p, 0) + 1
    return RunSummary(
        model=loaded.name, model_fingerprint=camp.model_fingerprint,
        checkpoint=sens.table.checkpoint, quantizer=sens.table.quantizer, device=camp.device,
        device_name=camp.device_name, shape=shape, threshold=str(threshold),
        measured_now=camp.measured, measurements_reused=camp.already,
        sensitivity_reused=sens.reused, plan_id=result.plan_id, plan_reused=plan_reused,
        layers=layers, precision_counts=dict(sorted(counts.items())),
        predicted_speedup=pred.speedup, measured_speedup=r.measured_speedup,
        predicted_loss_mse=pred.loss_mse, measured_loss_mse=r.measured_loss_mse,
        measured_share=pred.measured_share, baseline_us=r.baseline_us,
        plan_us=r.plan_us, validation_id=r.validation_id, validation_reused=prior is not None
        and prior[1] is not None, plan_file=str(plan_file), plot_file=str(plot_file),
        steps_s={k: round(v, 2) for k, v in times.items()},
        speedup_rel_error=pred.speedup_rel_error,
        slower_than_baseline=r.slower_than_baseline, validation_stable=r.stable,
        allow_unstable=allow, unstable_timings=camp.unstable, warnings=warnings,
        notes=list(result.document.notes),
        cost_sources=dict(sorted(result.solution.sources.items())),
        bound_loss_mse=bound, p_not_fastest=p_not_fastest, noise=noise, loop_rounds=rounds)


def _adopt_stored_plan(store: Any, result: Any, plan_id: int) -> PlanPrediction:
    """Report the stored plan, its document and its prediction (one plan, one prediction);
    returns the prediction."""
    result.plan_id = plan_id
    result.document = store.plan(plan_id).document.with_plan_id(plan_id)
    return result.document.predicted


def _stored_validation(plan_id: int, v: Any, device: str, pred: PlanPrediction,
                       doc: Any) -> Any:
    """A stored validation of this plan (``doc``), as the result validating it again would give."""
    from hwcost.planner.apply import ValidationResult, plan_is_baseline

    return ValidationResult(plan_id, v.id, device, v.baseline_us, v.plan_us, 0.0, 0.0,
                            v.measured_speedup, pred.speedup, v.measured_loss_mse,
                            pred.loss_mse, v.n_eval_samples or 0, None, stable=v.stable,
                            speedup_rel_error=pred.speedup_rel_error,
                            plan_is_baseline=plan_is_baseline(doc))


def _same_data_warning(calib: str, eval_data: str | None, model_spec: str | None) -> list[str]:
    """A warning when the held-out data is the calibration data: the measured loss MSE is
    then not measured on unseen data."""
    if eval_data is None:
        if model_spec:
            return []
        from hwcost.profiles.loading import demo_model_dir

        eval_data = str(demo_model_dir().parent / "corpus" / "test.txt")
    try:
        same = Path(calib).resolve() == Path(eval_data).resolve()
    except OSError:
        same = calib == eval_data
    if not same:
        return []
    return [f"warning: held-out data {eval_data} is the calibration data: the measured loss MSE is "
            "not on unseen samples (give --eval-data another file)"]


def _close_loop(store: Any, loaded: Any, camp: Any, shape: str, threshold: Any, problem: Any,
                first: Any, first_measured: float, eval_data: str | None, samples: int,
                measured_only: bool, max_rounds: int, find: Callable,
                say: Callable[[str], None], time_plans: Callable | None = None,
                retime_k: int = 0) -> Any:
    """Re-plan until the deployed loss MSE on held-out data is within the bound; plans that
    an earlier run validated are not measured again."""
    from hwcost.planner.apply import eval_batches, loss_mse
    from hwcost.planner.closed_loop import plan_within_bound
    from hwcost.planner.plans import make_plan
    from hwcost.profiles.backends import get_backend

    backend = get_backend(problem.device_kind)
    batches = eval_batches(loaded, eval_data, samples)

    def plan(scale: float) -> Any:
        return make_plan(store, camp.model_fingerprint, camp.device, shape, threshold,
                         problem=problem, measured=measured_only, loss_scale=scale,
                         retime=time_plans, retime_k=retime_k)

    def measure(layers: dict[str, str]) -> float:
        prior = find(layers)
        if prior is not None and prior[1] is not None:
            return float(prior[1].measured_loss_mse)
        return loss_mse(loaded, {"plan": layers}, batches, backend)["plan"]

    return plan_within_bound(plan, measure, first.solution.max_loss_mse, max_rounds=max_rounds,
                             first=first, first_measured=first_measured,
                             report=lambda line: say(f"closed loop {line}"))


def _find_validated_plan(store: Any, model: str, device: str, shape: str,
                         layers: dict[str, str], checkpoint: str, quantizer: str,
                         quick: bool = False) -> tuple[int, Any] | None:
    """An earlier plan of this checkpoint and quantizer with exactly these layer precisions,
    and its latest validation measured with these weights. Another checkpoint's plan or
    validation is never reused: the loss MSE depends on the weights. A quick run may
    reuse any validation, a full run only a full one of a stable machine."""
    for plan in store.plans(model, device, shape, checkpoint=checkpoint, quantizer=quantizer):
        if plan.layers == layers:
            vals = [v for v in store.validations(plan.id, checkpoint=checkpoint)
                    if quick or (v.stable and not v.quick)]
            return plan.id, (vals[-1] if vals else None)
    return None


