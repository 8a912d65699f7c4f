"""Plan for a whole serving workload: prefill plus every decode step, as one problem.

The time of a configuration over a workload is a fixed weighted sum of its per-shape costs
(:func:`hwcost.workload.workload_shapes`: each request's prefill, and its decode steps
interpolated between KV buckets), so the workload problem has the same choices as a
one-shape problem, each option's latency and gain the weighted sum of that option's
latencies and gains at every shape. The solver runs unchanged; a plan can still target one
shape. No torch.

The end-to-end baseline of a workload is, like a shape's, the larger of the priced sum and a
measured whole: the baseline model's real ``generate()`` latency for the workload, when
stored (``hwcost run --workload`` measures it), which includes what no subgraph holds (the
sampling loop, cache growth, the prefill's cache writes). Plans then predict ``measured
baseline - sum of subgraph gains``.

The gains are microseconds of the campaign's windows; the request was timed later, on a
machine that may run at another speed (on a shared 2-core machine the same fp32 request
read 222 ms and 328 ms minutes apart). ``measure_baseline`` therefore also times, in the
request's own rounds, the model's steps at the pricing shapes (``steps:<baseline>``); their
weighted sum over the campaign's (its windows' whole-model steps) is the factor every
shape's weight is scaled by, so latencies, gains and the priced baseline are in the
request's microseconds. Without that row (older stores) the weights are unscaled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from hwcost.planner.problem import Choice, Problem, _weaker, build_problem

from hwcost.errors import NoEstimate
from hwcost.workload import Workload, interpolation_error, parse_workload, workload_shapes


@dataclass(frozen=True)
class WorkloadPricing:
    """How a workload problem was priced: each shape's weight and the baseline per shape,
    with the decode interpolation's leave-one-out error per batch size (None with fewer than
    three buckets), and the measured baseline request latency when the store has one."""

    workload: str
    weights: dict[str, float]
    baseline_us: dict[str, float]
    interpolation_error: dict[int, float | None]
    request_baseline_us: float | None = None  # measured generate() in the baseline, if stored
    # the model's steps timed in the request's rounds, weighted as priced, and their ratio
    # to the campaign's (the factor the shapes' weights were scaled by; 1.0 without them)
    request_steps_us: float | None = None
    scale: float = 1.0

    def to_dict(self) -> dict:
        return {"workload": self.workload, "weights": self.weights,
                "baseline_us": self.baseline_us, "request_baseline_us": self.request_baseline_us,
                "request_steps_us": self.request_steps_us, "scale": self.scale,
                "interpolation_error": {str(k): v for k, v in self.interpolation_error.items()}}


def combine(problems: dict[str, Problem], weights: dict[str, float], key: str) -> Problem:
    """One problem whose option latencies are ``sum(weights[s] * latency_s)`` over shapes.

    Only configurations priced at every shape are kept. Loss MSE and weight bytes do not
    depend on the shape and come from the first problem."""
    first = next(iter(problems.values()))
    choices = []
    for i, ch in enumerate(first.choices):
        per_shape = {s: {o.key: o for o in p.choices[i].options} for s, p in problems.items()}
        options = []
        for opt in ch.options:
            parts = [(weights[s], per_shape[s].get(opt.key)) for s in problems]
            if any(o is None for _, o in parts):
                continue
            lat = sum(w * o.latency_us for w, o in parts)
            source = opt.source
            for _, o in parts:
                source = _weaker(source, o.source)
            # each shape's gain as its own problem took it (in-group ratio, one source)
            options.append(replace(opt, latency_us=lat,
                                   gain_us=sum(w * o.gain_us for w, o in parts),
                                   macs_time_us=sum(w * o.macs_time_us for w, o in parts),
                                   source=source,
                                   uncertainty_us=sum(w * o.uncertainty_us for w, o in parts),
                                   ref_rel_stderr=max(o.ref_rel_stderr for _, o in parts)))
        choices.append(Choice(ch.position, ch.signature, ch.kind, ch.layer_names, tuple(options)))
    # each shape's end-to-end baseline (its measured whole model, else its subgraph sum)
    model_base = sum(weights[s] * p.baseline_us for s, p in problems.items())
    scales = {k: v for p in problems.values() for k, v in p.gain_scales.items()}
    # a bucket's once-per-step costs are paid at every step it prices: its weight
    presence = {shape: {prec: weights[s] * us for prec, us in costs.items()}
                for s, p in problems.items() for shape, costs in p.presence_us.items()}
    return replace(first, shape=key, choices=choices, model_baseline_us=model_base,
                   gain_scales=scales, presence_us=presence)


def build_workload_problem(store, model_ref: str, device: str, workload: str | Workload, *,
                           precisions: Sequence[str] | None = None, method: str = "taylor",
                           n_buckets: int = 3, checkpoint: str | None = None,
                           quantizer: str | None = None, allow_unstable: bool = False
                           ) -> tuple[Problem, WorkloadPricing]:
    """The planning problem of a workload (see the module docstring) and how it was priced.

    Every shape the workload needs must have a cost table (measured, else the fallbacks);
    ``hwcost run --workload`` profiles them. The problem's ``shape`` is the workload's
    ``workload:...`` key, under which its plan is stored."""
    wl = parse_workload(workload)
    weights = workload_shapes(wl, n_buckets)
    problems: dict[str, Problem] = {}
    for shape in weights:
        try:
            problems[shape] = build_problem(store, model_ref, device, shape,
                                            precisions=precisions, method=method,
                                            checkpoint=checkpoint, quantizer=quantizer,
                                            allow_unstable=allow_unstable)
        except NoEstimate as e:
            raise NoEstimate(f"workload {wl.key}: shape {shape}: {e}") from None
    base = {s: p.baseline_us for s, p in problems.items()}
    errors: dict[int, float | None] = {}
    for r in wl.requests:
        costs = {int(s.split("kv=")[1].split(",")[0]): base[s] for s in base
                 if "phase=decode" in s and s.startswith(f"batch={r.batch},")}
        errors[r.batch] = interpolation_error(costs)
    first = next(iter(problems.values()))
    whole = _measured(store, first, wl.shape_key, "all", allow_unstable)
    steps = _measured(store, first, wl.shape_key, "steps", allow_unstable)
    priced = sum(weights[s] * base[s] for s in weights)
    # the request's microseconds over the campaign's (see the module docstring)
    scale = steps / priced if whole is not None and steps and priced > 0 else 1.0
    problem = combine(problems, {s: w * scale for s, w in weights.items()}, wl.shape_key)
    if whole is not None:  # a measured generate() of the baseline: the end-to-end baseline
        problem = replace(problem, model_baseline_us=max(whole, problem.model_baseline_us or 0.0))
    return problem, WorkloadPricing(wl.key, weights, base, errors, whole, steps, scale)


def _measured(store, problem: Problem, key: str, kind: str,
              allow_unstable: bool = False) -> float | None:
    """A stored whole-model timing of the workload ``key`` in the problem's baseline: the
    ``generate()`` request (``all``: what :func:`planner.generate.measure_baseline` and
    workload validations store) or the model's steps timed in its rounds (``steps``)."""
    # the refs the problem was built from (else its fingerprints: exact keys)
    row = store.model_latency(problem.model_ref or problem.model_fingerprint,
                              problem.device_ref or problem.device_fingerprint, key,
                              f"{kind}:{problem.baseline}", allow_unstable=allow_unstable)
    return row.median_us if row is not None else None
