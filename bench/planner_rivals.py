"""The rival plans ``bench/planner.py`` part (b) measures ours against: random configs within
the bound, and the plan built from per-layer latencies timed in isolation (HAWQ-V3 style),
under the same deployment (eager or compiled) as ours."""

from __future__ import annotations

import random
from dataclasses import replace

from hwcost.planner.problem import Choice, Problem


def random_configs(problem: Problem, bound: float, n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` distinct random per-layer configs with predicted loss MSE <= bound.

    Each: layers in random order; each layer draws a random precision (the baseline included)
    and keeps it when the running predicted loss MSE stays within the bound. Configs whose
    subgraph configs the cost table lacks cannot occur (the table covers every config)."""
    rng = random.Random(seed)
    sens = {}
    for c in problem.choices:
        for o in c.options:
            if sum(p != problem.baseline for p in o.config) == 1:
                i = next(k for k, p in enumerate(o.config) if p != problem.baseline)
                sens[(c.layer_names[i], o.config[i])] = o.loss_mse
    layers = problem.layers
    out, seen, tries = [], set(), 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        order = layers[:]
        rng.shuffle(order)
        cfg, total = {n_: problem.baseline for n_ in layers}, 0.0
        for name in order:
            p = rng.choice(problem.precisions)
            s = sens.get((name, p), 0.0)
            if total + s <= bound:
                cfg[name], total = p, total + s
        key = tuple(sorted(cfg.items()))
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def predicted_latency(problem: Problem, cfg: dict[str, str]) -> tuple[float, float]:
    """(predicted end-to-end latency, predicted loss MSE) of a per-layer config, priced as
    the planner prices a plan (``Problem.plan_gain_us``)."""
    picks = problem.picks_of(cfg)
    mse = sum(c.options[i].loss_mse for c, i in zip(problem.choices, picks))
    return problem.baseline_us - problem.plan_gain_us(picks), mse


def isolated_layer_latencies(loaded, problem: Problem, shape: str, backend, threads: int,
                             deployment: str = "eager") -> dict:
    """(in, out, precision) -> latency of that linear layer alone on [tokens, in] inputs;
    under the compiled deployment each deployed layer is compiled alone (what per-layer
    profiling of a compiled deployment can time: no neighbour to fuse with)."""
    import torch
    from hwcost.profiles.backends.interact import compile_deployed
    from hwcost.profiles.bench import time_interleaved

    from hwcost.shape import parse_shape

    wrap = compile_deployed if deployment == "compiled" else (lambda m: m)
    tokens = parse_shape(shape).tokens
    named = dict(loaded.model.named_modules())
    dims = {}
    for name in problem.layers:
        w = named[name].weight
        dims.setdefault((w.shape[1], w.shape[0]), name)
    out = {}
    for (fin, fout), name in dims.items():
        layer = named[name]
        fns = {}
        for p in problem.precisions:
            dep = wrap(backend.deploy_linear(layer, p))

            def run(x, dep=dep):
                with torch.inference_mode():
                    return dep(x)
            fns[p] = run
        gen = torch.Generator().manual_seed(0)
        xs = [torch.randn(tokens, fin, generator=gen) for _ in range(3)]
        for p, t in time_interleaved(fns, xs, backend, threads=threads, max_seconds=3.0).items():
            out[(fin, fout, p)] = t.median_us
    return out


def isolated_problem(problem: Problem, lat: dict, dims: dict[str, tuple[int, int]]) -> Problem:
    """The problem with each option's gain replaced by the sum of its layers' isolated gains."""
    choices = []
    for c in problem.choices:
        opts = []
        for o in c.options:
            g = sum(lat[(*dims[n], problem.baseline)] - lat[(*dims[n], p)]
                    for n, p in zip(c.layer_names, o.config))
            opts.append(replace(o, gain_us=g, latency_us=c.baseline.latency_us - g))
        choices.append(Choice(c.position, c.signature, c.kind, c.layer_names, tuple(opts)))
    return replace(problem, choices=choices)
