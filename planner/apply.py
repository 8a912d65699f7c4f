"""Apply a plan with the backend's real kernels and check it against its prediction.

Imports torch (through ``profiles`` and ``sensitivity``) lazily, inside the functions: the
rest of ``planner`` plans without torch.

- latency: the baseline model and the planned model timed interleaved on fresh inputs of the
  plan's shape (``profiles.bench.time_interleaved``, thread count recorded);
- loss MSE: ``E_n[(L_n(plan) - L_n(baseline))^2]`` of the *deployed* models (real kernels)
  over held-out sequences (``data/corpus/test.txt`` by default), per-sample next-token losses.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from hwcost.planner.export import PlanLike, validate_plan

from hwcost.errors import HwcostError, NoSuchDevice, PlanInvalid, StoreError
from hwcost.store import UNKNOWN, PlanRecord, ValidationRecord, host_name
from hwcost.workload import is_workload_key

DEFAULT_EVAL = Path(__file__).resolve().parent.parent / "data" / "corpus" / "test.txt"


LEVEL_TOLERANCE = 0.15
"""How far the baseline measured at validation may move from the baseline the plan was
priced against before the validation warns. On the shared build host a decode step's level
wanders by up to a quarter within a campaign (its window passes); between levels the gains
do not scale with it: in bench/decode.py demo run 10 the request's baseline measured 396 ms
against 295 ms stored, and the decode additivity missed by 9.2 % median, against 1.6 % in
run 9 at one level."""


@dataclass
class ValidationResult:
    """Predicted against measured speedup and loss MSE of one applied plan."""

    plan_id: int
    validation_id: int
    device: str
    baseline_us: float
    plan_us: float
    baseline_spread_us: float
    plan_spread_us: float
    measured_speedup: float
    predicted_speedup: float | None
    measured_loss_mse: float
    predicted_loss_mse: float | None
    n_eval_samples: int
    threads: int | None
    note: str = ""
    predicted_plan_us: float | None = None
    baseline_tokens_per_s: float | None = None  # workloads: new tokens per second
    plan_tokens_per_s: float | None = None
    stable: bool = True  # the machine passed the stability policy while timing
    reason: str = ""  # why not, with the figure
    speedup_rel_error: float | None = None  # the plan's stated error of its predicted speedup
    plan_is_baseline: bool = False  # every layer in the baseline precision: nothing deployed
    predicted_baseline_us: float | None = None  # the baseline the plan was priced against

    @property
    def level_change(self) -> float | None:
        """The baseline as measured now over the baseline the plan was priced against, less
        one: how far the machine's level moved since profiling (None when not priced)."""
        if not self.predicted_baseline_us:
            return None
        return self.baseline_us / self.predicted_baseline_us - 1.0

    @property
    def slower_than_baseline(self) -> bool:
        """The plan measured slower than the baseline: a regression, never a result. A plan
        that keeps every layer in the baseline precision is the baseline: its two timings
        differ by noise alone, never by a regression."""
        return self.measured_speedup < 1.0 and not self.plan_is_baseline

    @property
    def disagreement(self) -> float | None:
        """Relative difference of the measured speedup from the predicted one."""
        if not self.predicted_speedup:
            return None
        return self.measured_speedup / self.predicted_speedup - 1.0

    def warnings(self) -> list[str]:
        """One line per thing a reader must not miss (empty when the validation is clean)."""
        out = []
        if self.slower_than_baseline:
            out.append(f"REGRESSION: the plan measured slower than the baseline "
                       f"({self.measured_speedup:.3f}x, {self.baseline_us:.0f} us -> "
                       f"{self.plan_us:.0f} us); do not deploy it")
        if not self.stable:
            out.append(f"unstable machine while validating ({self.reason}): the measured "
                       "speedup is not trustworthy; validate again on a quiet machine")
        lv = self.level_change
        if lv is not None and abs(lv) > LEVEL_TOLERANCE:
            out.append(f"warning: the baseline measured {self.baseline_us:.0f} us, "
                       f"{abs(lv):.0%} {'slower' if lv > 0 else 'faster'} than the "
                       f"{self.predicted_baseline_us:.0f} us the plan was priced at: the "
                       "machine runs at another level than when it was profiled, and gains "
                       "do not carry from one level to another; validate again when it is "
                       "back, or profile again")
        d, err = self.disagreement, self.speedup_rel_error
        if d is not None and err is not None and abs(d) > err:
            out.append(f"warning: measured speedup {self.measured_speedup:.3f}x is "
                       f"{abs(d):.0%} {'below' if d < 0 else 'above'} the predicted "
                       f"{self.predicted_speedup:.3f}x (stated error {err:.0%})")
        return out

    def rows(self) -> list[dict]:
        return [
            {"quantity": "speedup", "predicted": _f(self.predicted_speedup, "{:.3f}x"),
             "measured": f"{self.measured_speedup:.3f}x"},
            {"quantity": "latency_us", "predicted": "-",
             "measured": f"{self.baseline_us:.1f} -> {self.plan_us:.1f}"},
            {"quantity": "loss_mse", "predicted": _f(self.predicted_loss_mse, "{:.4g}"),
             "measured": f"{self.measured_loss_mse:.4g}"},
        ] + ([] if self.plan_tokens_per_s is None else [
            {"quantity": "plan_latency_us", "predicted": _f(self.predicted_plan_us, "{:.1f}"),
             "measured": f"{self.plan_us:.1f}"},
            {"quantity": "tokens_per_s", "predicted": "-",
             "measured": f"{self.baseline_tokens_per_s:.1f} -> {self.plan_tokens_per_s:.1f}"}])

    def to_dict(self) -> dict:
        return {**asdict(self), "slower_than_baseline": self.slower_than_baseline,
                "level_change": self.level_change,
                "warnings": self.warnings()}


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def plan_is_baseline(plan: PlanLike) -> bool:
    """Whether a plan keeps every layer in its baseline precision (deploys nothing)."""
    return all(p == plan.baseline for p in plan.layers.values())


def layer_map_hash(layers: Mapping[str, str]) -> str:
    """The ``ModelLatency.config_hash`` of a per-layer config."""
    return hashlib.sha256(json.dumps(dict(sorted(layers.items()))).encode()).hexdigest()[:16]


def deploy(loaded_model, layers: Mapping[str, str], backend, dataflow=None,
           deployment: str = "eager"):
    """The model with each layer deployed in its precision (:func:`planner.deploy.deploy`),
    linked as a deployment runs (shared input conversions; float chains when ``dataflow``
    is given) and, for ``deployment="compiled"``, under ``torch.compile``."""
    from hwcost.planner.deploy import deploy as deploy_plan

    return deploy_plan(loaded_model, layers, backend, dataflow=dataflow, deployment=deployment)


def model_dataflow(loaded, backend):
    """:func:`profiles.backends.interact.trace_dataflow` of a loaded model on a short input."""
    import torch
    from hwcost.profiles.backends.interact import trace_dataflow

    inp = {k: (v.to(backend.device) if isinstance(v, torch.Tensor) else v)
           for k, v in loaded.inputs_for("batch=1,seq=16", seed=0).items()}
    return trace_dataflow(loaded.model.to(backend.device), inp)


def time_configs(loaded, configs: Mapping[str, Mapping[str, str]], shape: str, backend,
                 *, threads: int | None = None, n_inputs: int = 3, deployment: str = "eager",
                 **timing_kwargs) -> dict:
    """Interleaved end-to-end latency of several per-layer configs of one model.

    The configs are views of the one loaded model (:func:`deploy`): side by side they cost
    only their deployed layers, never a copy of the model. Returns name -> ``profiles.bench.Timing``.
    """
    import torch
    from hwcost.profiles.bench import time_interleaved
    from hwcost.profiles.placement import to_device

    flow = model_dataflow(loaded, backend)
    models = {name: deploy(loaded.model, layers, backend, flow, deployment)
              for name, layers in configs.items()}
    inputs = [to_device(loaded.inputs_for(shape, seed=i), backend.device)
              for i in range(n_inputs)]

    def runner(m):
        def run(inp):
            with torch.inference_mode():
                return m(**inp)
        return run

    from hwcost.profiles.decode import step_fn

    from hwcost.shape import parse_shape

    kv = parse_shape(shape).kv  # decode: every call the same step on a cache of kv tokens
    try:
        return time_interleaved({n: step_fn(runner(m), inputs, kv) for n, m in models.items()},
                                inputs, backend, threads=threads, **timing_kwargs)
    finally:
        models.clear()  # the deployed layers go now, not when the caller's frame ends


def plan_timer(loaded, shape: str, backend, *, threads: int | None = None,
               deployment: str = "eager", **timing_kwargs) -> Callable:
    """Plans -> (median, its standard error) in microseconds, timed end to end, interleaved,
    on the real deployment (:func:`time_configs`): what ``--retime`` compares candidates
    with (``make_plan(retime=...)``); for a workload key, real ``generate()`` requests
    (:func:`planner.generate.time_generate`), as its validation times them. An unstable
    timing's standard error is infinite: a plan is never switched on the word of a loaded
    machine."""
    from hwcost.planner.generate import time_generate

    from hwcost.costs import median_stderr

    timer = time_generate if is_workload_key(shape) else time_configs

    def time_plans(plans: Mapping[str, Mapping[str, str]]) -> dict[str, tuple[float, float]]:
        got = timer(loaded, plans, shape, backend, threads=threads, deployment=deployment,
                    **timing_kwargs)
        return {name: (t.median_us,
                       median_stderr(t.spread_us, t.n_samples) if t.stable else math.inf)
                for name, t in got.items()}
    return time_plans


def eval_batches(loaded, eval_data: str | Path | None, samples: int, seq_len: int = 128,
                 batch: int = 8, seed: int = 1) -> list:
    """Held-out token windows, in batches, for the true loss MSE; a factory's own held-out
    batches (``extras["held_out"]``) when no file is named."""
    from hwcost.sensitivity.data import from_batches, load_calibration

    if eval_data is None and getattr(loaded, "held_out", None) is not None:
        return list(from_batches(loaded.held_out, f"{loaded.name} held-out").items)
    path = Path(eval_data) if eval_data else DEFAULT_EVAL
    if not path.is_file():
        raise HwcostError(f"held-out data {path} not found; pass --eval-data FILE")
    vocab = getattr(getattr(loaded.model, "config", None), "vocab_size", None)
    cal = load_calibration(path, tokenizer=loaded.tokenizer, samples=samples, seq_len=seq_len,
                           seed=seed, vocab_size=vocab)
    ids = cal.input_ids
    return [ids[i:i + batch] for i in range(0, ids.shape[0], batch)]


def loss_mse(loaded, configs: Mapping[str, Mapping[str, str]], batches: list, backend,
             progress: bool = False) -> dict[str, float]:
    """True loss MSE of each deployed config against the model as loaded (its baseline).

    Each config is deployed in place on the one model and restored before the next
    (``profiles.backends.deployed``); the loss helpers move the batches to the model's device.
    ``progress``: a bar with an ETA per batch (the baseline's and each config's) on stderr.
    """
    import sys

    import numpy as np
    from hwcost.profiles.backends import deployed
    from hwcost.profiles.placement import place
    from hwcost.sensitivity.reference import per_sample_losses
    from tqdm import tqdm

    loss_fn = getattr(loaded, "loss_fn", None)
    place(loaded.model, backend.device)
    with tqdm(total=len(batches) * (1 + len(configs)), desc="validate: loss MSE", unit="batch",
              file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
        def ticking(items):
            for b in items:
                yield b
                bar.update(1)

        ref = per_sample_losses(loaded.model, ticking(batches), loss_fn).numpy()
        flow = model_dataflow(loaded, backend)
        out = {}
        for name, layers in configs.items():
            with deployed(loaded.model, dict(layers), backend, flow) as m:
                q = per_sample_losses(m, ticking(batches), loss_fn).numpy()
            out[name] = float(np.mean(np.square(q - ref)))
    return out


def ensure_plan_row(store, doc: PlanLike, plan_id: int | None) -> int:
    """The plan's id in this store, inserting the document when it came from a file."""
    plan = validate_plan(doc)
    if plan_id is not None:
        try:
            stored = store.plan(int(plan_id))
            if stored.model == plan.model.fingerprint:
                return stored.id
        except StoreError:
            pass
    store.model(plan.model.fingerprint)  # NoSuchModel first, in its own words
    try:
        store.device(plan.device.fingerprint)
    except NoSuchDevice:
        raise PlanInvalid(f"the plan's device {plan.device.fingerprint[:12]} is not in this "
                          "store; import its cost tables first") from None
    return store.put_plan(PlanRecord.of_document(plan))


def plan_deployment(store, device_fingerprint: str) -> str:
    """``compiled`` when the plan's device row was profiled under ``torch.compile``."""
    try:
        dev = store.device(device_fingerprint)
    except (NoSuchDevice, StoreError):
        return "eager"
    key = dev.software.get("deployment", "eager")
    return "compiled" if key.startswith("compiled") else "eager"


def validate_plan_on_device(store, doc: PlanLike, plan_id: int | None, *, model_spec: str | None = None,
                            eval_data: str | None = None, samples: int = 128,
                            threads: int | None = None, seq_len: int = 128, loaded=None,
                            timing: dict | None = None, quick: bool = False,
                            progress: bool = False) -> ValidationResult:
    """Apply the plan on this machine's device of the plan's kind, measure latency against the
    baseline and the true loss MSE, store a validation and the two whole-model latencies.

    ``loaded`` (a ``profiles.loading.LoadedModel``) skips loading ``model_spec``; ``timing``
    passes harness settings to ``profiles.bench.time_interleaved`` (``quick``: they are
    the quick ones; the whole-model rows are then stored as quick). The baseline and the
    plan are timed in the same rounds and judged by the harness's stability policy; the
    result says when the machine was unstable or the plan is slower than the baseline.
    ``progress``: bars with an ETA on stderr, per timing round and per loss batch.
    """
    from hwcost.profiles.backends import get_backend
    from hwcost.profiles.loading import load_model

    from hwcost.device import local_device

    plan = validate_plan(doc)
    kind = plan.device.kind
    backend = get_backend(kind)
    backend.require()
    from hwcost.profiles.checkpoint import checkpoint_digest

    loaded = loaded or load_model(model_spec)
    digest = checkpoint_digest(loaded.model)
    planned = plan.sensitivity_checkpoint or UNKNOWN
    if planned not in (UNKNOWN, digest):
        # a loss MSE measured with other weights says nothing about this plan
        raise PlanInvalid(f"the plan was made for checkpoint {planned[:12]} of "
                          f"{plan.model.name!r}, the loaded weights are {digest[:12]}; "
                          "plan this checkpoint first (hwcost sensitivity / hwcost run)")
    layers = dict(plan.layers)
    base_layers = {n: plan.baseline for n in layers}
    configs = {"baseline": base_layers, "plan": layers}
    deployment = plan_deployment(store, plan.device.fingerprint)
    if is_workload_key(plan.shape):  # a request: real generate() calls, prefill + decode
        from hwcost.planner.generate import time_generate

        timings = time_generate(loaded, configs, plan.shape, backend, threads=threads,
                                deployment=deployment, **(timing or {}))
    else:
        import sys

        from tqdm import tqdm

        with tqdm(desc="validate: timing plan vs baseline", unit="round", file=sys.stderr,
                  total=(timing or {}).get("min_samples", 15), disable=not progress,
                  dynamic_ncols=True) as bar:
            def on_round(done: int, planned: int) -> None:
                bar.total = planned  # a batch measured again plans more rounds
                bar.update(done - bar.n)

            timings = time_configs(loaded, configs, plan.shape, backend, threads=threads,
                                   deployment=deployment, baseline="baseline",
                                   on_round=on_round if progress else None, **(timing or {}))
    batches = eval_batches(loaded, eval_data, samples, seq_len)
    losses = loss_mse(loaded, {"plan": layers}, batches, backend, progress=progress)
    from hwcost.sensitivity.loss import batch_size

    n_eval = sum(batch_size(b) for b in batches)

    info = local_device(kind, deployment=deployment)
    store.put_device(info)
    note = "" if info.fingerprint == plan.device.fingerprint else (
        f"measured on {info.fingerprint[:12]}, planned for {plan.device.fingerprint[:12]}")
    pid = ensure_plan_row(store, plan, plan_id)
    host = host_name()
    for name, hash_ in (("baseline", f"all:{plan.baseline}"), ("plan", layer_map_hash(layers))):
        # a stored good row is kept (put_model_latency replaces only quick or unstable
        # ones): the whole-model baseline that later plans divide by does not move with
        # every validation; this validation's own pair is in its validation record
        store.put_model_latency(
            plan.model.fingerprint, info.fingerprint, plan.shape, hash_, timings[name],
            config="{}" if name == "baseline" else json.dumps(layers, sort_keys=True),
            quick=quick)
    b, p = timings["baseline"], timings["plan"]
    stable = b.stable and p.stable  # generate() timings are judged like the others
    speedup = b.median_us / p.median_us
    pr = plan.predicted
    vid = store.put_validation(ValidationRecord(
        plan_id=pid, device=info.fingerprint, checkpoint=digest, baseline_us=b.median_us,
        plan_us=p.median_us, measured_speedup=speedup, predicted_speedup=pr.speedup,
        measured_loss_mse=losses["plan"], predicted_loss_mse=pr.loss_mse,
        n_eval_samples=n_eval, host=host, quick=quick, stable=stable))
    return ValidationResult(pid, vid, info.fingerprint, b.median_us, p.median_us, b.spread_us,
                            p.spread_us, speedup, pr.speedup,
                            losses["plan"], pr.loss_mse, n_eval, p.threads, note,
                            pr.plan_us, getattr(b, "tokens_per_s", None),
                            getattr(p, "tokens_per_s", None),
                            stable=stable, reason=getattr(b, "reason", "") or getattr(p, "reason", ""),
                            speedup_rel_error=pr.speedup_rel_error,
                            plan_is_baseline=plan_is_baseline(plan),
                            # a plan priced from its pieces' sum has no level to compare
                            predicted_baseline_us=(pr.baseline_us if pr.baseline_from == "model"
                                                   else None))
