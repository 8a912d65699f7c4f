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

    def to_dict(self) -> dict:
        return {"workload": self.workload, "weights": self.weights,
                "baseline_us": self.baseline_us, "request_baseline_us": self.request_baseline_us,
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
    return replace(first, shape=key, choices=choices, model_baseline_us=model_base)


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
    problem = combine(problems, weights, wl.shape_key)
    whole = _measured_request(store, problem, allow_unstable)
    if whole is not None:  # a measured generate() of the baseline: the end-to-end baseline
        problem = replace(problem, model_baseline_us=max(whole, problem.model_baseline_us or 0.0))
    return problem, WorkloadPricing(wl.key, weights, base, errors, whole)


def _measured_request(store, problem: Problem, allow_unstable: bool = False) -> float | None:
    """The stored ``generate()`` latency of the workload in the baseline precision (what
    :func:`planner.generate.measure_baseline` and workload validations store), if any."""
    # the refs the problem was built from (else its fingerprints: exact keys)
    row = store.model_latency(problem.model_ref or problem.model_fingerprint,
                              problem.device_ref or problem.device_fingerprint, problem.shape,
                              f"all:{problem.baseline}", allow_unstable=allow_unstable)
    return row.median_us if row is not None else None
