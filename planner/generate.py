"""Time whole requests: ``generate()`` of deployed configs on a workload's requests.

For each request of the workload, every config generates exactly ``gen`` new tokens (greedy,
``min_new_tokens == max_new_tokens``) from the same fixed prompts (random ids of the
request's ``batch x prompt``, seeded), interleaved with the others by
``profiles.bench.time_interleaved``. A config's workload latency is the weighted mean of its
request latencies, its throughput the new tokens per second over the workload. Imports torch
lazily (inside the functions), like the rest of ``planner``'s apply path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from hwcost.workload import Workload, parse_workload


@dataclass(frozen=True)
class WorkloadTiming:
    """A config's measured workload latency (weighted mean request latency, us), its
    half-IQR spread combined the same way, new tokens per second, and per-request medians;
    with the provenance every timing carries (``profiles.bench.Timing``): the clock, whether
    every request's batch passed the stability policy (and the first reason one did not),
    the baseline's worst drift, the highest load seen and the CPU frequency."""

    median_us: float
    spread_us: float
    tokens_per_s: float
    n_samples: int
    threads: int | None
    requests_us: dict[str, float]
    clock: str = "wall"
    stable: bool = True
    reason: str = ""
    drift: float | None = None
    load: float | None = None
    load1: float | None = None
    cpu_mhz: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _provenance(timings: list[Any]) -> dict[str, Any]:
    """One request set's stability fields from its per-request ``Timing``s: stable only if
    every one is, the worst drift and load, the mean CPU frequency."""
    def worst(name: str) -> float | None:
        vals = [abs(v) for t in timings if (v := getattr(t, name, None)) is not None]
        return max(vals) if vals else None

    mhz = [t.cpu_mhz for t in timings if getattr(t, "cpu_mhz", None) is not None]
    return {"clock": timings[0].clock, "stable": all(t.stable for t in timings),
            "reason": next((t.reason for t in timings if t.reason), ""),
            "drift": worst("drift"), "load": worst("load"), "load1": worst("load1"),
            "cpu_mhz": sum(mhz) / len(mhz) if mhz else None}


def prompts(loaded: Any, batch: int, prompt: int, n: int, device: Any) -> list:
    """``n`` fixed prompts (seeded random ids ``[batch, prompt]``) on ``device``."""
    import torch

    vocab = int(loaded.model.config.vocab_size)
    out = []
    for seed in range(n):
        g = torch.Generator().manual_seed(1000 + seed)
        out.append(torch.randint(0, vocab, (batch, prompt), generator=g).to(device))
    return out


def generate_fn(model: Any, gen: int):
    """One request: exactly ``gen`` greedy new tokens from ``ids`` with the KV cache on."""
    import torch

    def run(ids):
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  max_new_tokens=gen, min_new_tokens=gen, do_sample=False,
                                  use_cache=True, pad_token_id=0)
    return run


def time_generate(loaded: Any, configs: Mapping[str, Mapping[str, str]],
                  workload: str | Workload, backend: Any, *, threads: int | None = None,
                  n_prompts: int = 2, deployment: str = "eager", baseline: str | None = None,
                  **timing_kwargs: Any) -> dict[str, WorkloadTiming]:
    """Interleaved ``generate()`` latency of several per-layer configs over a workload.

    Configs are deployed as views of the one loaded model (:func:`planner.apply.deploy`).
    ``baseline`` names the config whose drift the stability policy judges (default: the
    first). Returns config name -> :class:`WorkloadTiming`."""
    from hwcost.planner.apply import deploy, model_dataflow
    from hwcost.profiles.bench import time_interleaved

    wl = parse_workload(workload)
    flow = model_dataflow(loaded, backend)
    models = {name: deploy(loaded.model, layers, backend, flow, deployment)
              for name, layers in configs.items()}
    per_req: dict[str, dict[str, Any]] = {name: {} for name in configs}
    try:
        for r in wl.requests:
            ids = prompts(loaded, r.batch, r.prompt, n_prompts, backend.device)
            fns = {name: generate_fn(m, r.gen) for name, m in models.items()}
            for name, t in time_interleaved(fns, ids, backend, threads=threads,
                                            baseline=baseline or next(iter(configs)),
                                            **timing_kwargs).items():
                per_req[name][r.key] = t
    finally:
        models.clear()
    total_w = wl.total_weight
    tokens = sum(r.weight * r.new_tokens for r in wl.requests)
    out = {}
    for name, ts in per_req.items():
        med = sum(r.weight * ts[r.key].median_us for r in wl.requests) / total_w
        spread = sum(r.weight * ts[r.key].spread_us for r in wl.requests) / total_w
        seconds = sum(r.weight * ts[r.key].median_us for r in wl.requests) / 1e6
        first = next(iter(ts.values()))
        out[name] = WorkloadTiming(med, spread, tokens / seconds,
                                   min(t.n_samples for t in ts.values()), first.threads,
                                   {k: t.median_us for k, t in ts.items()},
                                   **_provenance(list(ts.values())))
    return out


def measure_baseline(store: Any, loaded: Any, backend: Any, model_fingerprint: str,
                     device_fingerprint: str, baseline: str, workload: str | Workload, *,
                     threads: int | None = None, quick: bool = False, n_prompts: int = 2,
                     **timing_kwargs: Any) -> float:
    """The workload's ``generate()`` latency with every layer in ``baseline``, stored as the
    model latency ``all:<baseline>`` under the workload's key with its provenance (clock,
    threads, stability, load; ``quick`` for quick timings), like every other whole-model
    timing; us. A stored row is reused; a full run replaces a quick or unstable one, which
    plans then no longer rest on unless asked (``allow_unstable``).

    In the same interleaved rounds it times the model's own steps at the shapes that price
    the workload (the prefill and each decode KV bucket, one forward each, decode steps on a
    real cache rewound after each call), and stores their weighted sum (what the campaign's
    windows price as the model's steps) as ``steps:<baseline>``: the planner scales the
    campaign's gains by how fast these rounds ran against the campaign's windows
    (:func:`planner.workload.build_workload_problem`), so a request timed minutes after the
    campaign, on a machine running at another speed, is not predicted in the campaign's
    microseconds."""
    wl = parse_workload(workload)
    model = store.model(model_fingerprint)
    dev = store.device(device_fingerprint)  # the profiled device (threads included)
    found = store.model_latency(model, dev, wl.shape_key, f"all:{baseline}",
                                allow_unstable=quick)
    if found is not None:
        return found.median_us
    layers = {n: baseline for n in store.model_manifest(model).layer_names}
    req, steps = _time_with_steps(loaded, layers, wl, backend, threads, n_prompts,
                                  timing_kwargs)
    store.put_model_latency(model, dev, wl.shape_key, f"all:{baseline}", req, quick=quick,
                            replace=True)
    store.put_model_latency(model, dev, wl.shape_key, f"steps:{baseline}", steps, quick=quick,
                            replace=True)
    return req.median_us


def _time_with_steps(loaded: Any, layers: Mapping[str, str], wl: Workload, backend: Any,
                     threads: int | None, n_prompts: int, timing_kwargs: Mapping[str, Any]
                     ) -> tuple[WorkloadTiming, WorkloadTiming]:
    """``generate()`` of each request and the model's steps at the request's pricing shapes,
    interleaved: (the workload's request timing, the weighted sum of its steps)."""
    from dataclasses import replace

    from hwcost.planner.apply import deploy, model_dataflow
    from hwcost.profiles.bench import time_interleaved
    from hwcost.profiles.decode import step_fn

    from hwcost.shape import parse_shape
    from hwcost.workload import Workload as _Wl
    from hwcost.workload import workload_shapes

    m = deploy(loaded.model, layers, backend, model_dataflow(loaded, backend))
    req_t, step_t = [], []
    for r in wl.requests:
        ids = prompts(loaded, r.batch, r.prompt, n_prompts, backend.device)
        weights = workload_shapes(_Wl((replace(r, weight=1.0),)))
        fns = {"generate": _pick(generate_fn(m, r.gen), "generate")}
        data = [{"generate": x} for x in ids]
        for shape in weights:
            inputs = [loaded.inputs_for(shape, seed=i) for i in range(len(ids))]
            for d, x in zip(data, inputs):
                d[shape] = x
            fns[shape] = _pick(step_fn(lambda inp: m(**inp), inputs, parse_shape(shape).kv),
                               shape)
        res = time_interleaved(fns, data, backend, threads=threads, baseline="generate",
                               **timing_kwargs)
        req_t.append(res["generate"])
        step_t.append((sum(w * res[s].median_us for s, w in weights.items()),
                       sum(w * res[s].spread_us for s, w in weights.items())))
    total, tokens = wl.total_weight, sum(r.weight * r.new_tokens for r in wl.requests)
    prov = _provenance(req_t)
    med = sum(r.weight * t.median_us for r, t in zip(wl.requests, req_t)) / total
    req = WorkloadTiming(med, sum(r.weight * t.spread_us for r, t in zip(wl.requests, req_t))
                         / total, tokens / (med * total / 1e6),
                         min(t.n_samples for t in req_t), req_t[0].threads,
                         {r.key: t.median_us for r, t in zip(wl.requests, req_t)}, **prov)
    smed = sum(r.weight * us for r, (us, _) in zip(wl.requests, step_t)) / total
    steps = replace(req, median_us=smed, tokens_per_s=tokens / (smed * total / 1e6),
                    spread_us=sum(r.weight * sp for r, (_, sp) in zip(wl.requests, step_t))
                    / total, requests_us={r.key: us for r, (us, _) in zip(wl.requests, step_t)})
    return req, steps


def _pick(fn: Any, key: str) -> Any:
    """``fn`` on its own input out of a round's dict of inputs."""
    return lambda d: fn(d[key])
