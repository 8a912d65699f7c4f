"""The whole model and every unique piece's baseline, timed in one window.

A campaign stores each gain as a ratio to the baseline timed in its own interleave group;
the planner turns it into microseconds with the piece's baseline row and into a speedup with
the whole model's baseline latency. Those two must come from the same rounds: timed minutes
apart on a shared machine they disagreed by 20 % (the demo's pieces' fp32 rows summed to 1.20x
the whole model; thread clock, load ~12 on 2 cores; 0.98x on a quiet run), and every
predicted speedup carried that factor.

A decode shape is windowed the same way: the whole model's decode step and every piece's
baseline step on the same caches, each rewound after its call (``profiles.decode.step_fn``).
A piece that reads no KV cache is measured once per batch (its configs under the KV-free
key), but its baseline row from a bucket's window is stored under that bucket's full key,
where the cost table takes it before the KV-free row: each bucket's gains are in microseconds
of that bucket's rounds, and the configs' ratios stay shared.

At a decode shape the whole model is also timed with every layer in each other precision of
the campaign (:func:`anchor_timings`), stored as ``all:<precision>``: a decode step reads
every weight once, so how much of the model the cache holds depends on the whole model's
format, which a piece timed alone cannot see. The planner anchors the pieces' gains on these
whole steps (:mod:`planner.anchors`). Each is timed beside the baseline model, one precision
at a time (one deployed copy of the weights at most, whatever the model's size), and stored
as its ratio to that baseline times the window's baseline. Beside each, the whole model
with only its first piece in that precision (``first:<precision>``): a format's first
layers in a step cost more than their share of the uniform model's gain (one bf16 down
projection in the fp32 demo cost +290 to +340 us per 5.5 ms step, all four +510 us), a
once-per-step cost the planner fits from the two (:mod:`planner.anchors`).

A workload's campaign (a decode shape among several) times these windows in rotating passes
over its shapes (:func:`time_windows`, ``TimingOptions.window_passes``), so that every KV
bucket and the prefill get the same mixture of the machine's moments: a memory-bound step's
level wanders by tens of percent within a minute on a shared host, and one window per
bucket gave each bucket its own moment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from hwcost.profiles.passes import mean_timing, share_of

from hwcost.errors import BackendUnavailable
from hwcost.precision import Precision
from hwcost.shape import Shape
from hwcost.store import MeasurementIn

ANCHOR_SAMPLES = 4
"""An anchor's samples, as a multiple of one config's (``TimingOptions.min_samples``)."""


def time_windows(store: Any, report: Any, measurer: Any, base: Precision,
                 todo: dict[Shape, Sequence[Precision]], passes: int = 1
                 ) -> dict[Shape, tuple[Any, dict[str, Any], list[float]]]:
    """Each shape's whole-model window (:func:`model_window`: the whole model's baseline
    latency with every unique piece's baseline config) and its anchors (``todo[shape]``:
    the whole model in each of those precisions beside the same deployed baseline,
    :func:`anchor_timings`), in ``passes`` passes over the shapes, each pass in another
    order and with its share of the samples: ``{shape: (baseline Timing, {anchor key
    (:func:`anchor_keys`): Timing}, the baseline's median in each pass)}``, each Timing the
    mean of its passes. The
    pieces' timings replace their baseline rows at the shape when the window is stable, the
    run quick, or the rows no better (quick or unstable), so that the gains' microseconds
    and the speedup's denominator come from the same rounds. The caller stores the
    whole-model rows.

    Why passes: a memory-bound step's level wanders with what the machine's other tenants
    do to the shared cache, on the scale of seconds. The demo's decode step, the same call
    on the same tensors, read 4.6 ms, then 6.6 ms twenty seconds later (thread clock, one
    core, the other idle), and two windows of one bucket in a row read 4.4 and 6.1 ms. One
    window per bucket, timed one after another, gave each KV bucket of a workload its own
    moment's level (and its own gains' ratios, which move with it): the first decode
    bucket once read 6.06 ms between 3.81 and 3.86 ms, and the request priced through it
    missed by 5.9 %. Rotating passes give every shape the same mixture of moments."""
    shapes = list(todo)
    runs: dict[Shape, list] = {s: [] for s in shapes}
    for k in range(passes if shapes else 0):
        for shape in shapes[k % len(shapes):] + shapes[:k % len(shapes)]:
            model = measurer.model_fn_of(shape.key, base)  # deployed once, for both timings
            t, pieces = model_window(measurer, shape.key, base, model, share=passes)
            whole = anchor_timings(measurer, shape.key, model, todo[shape], t.median_us,
                                   share=passes)
            del model
            runs[shape].append((t, pieces, whole))
    out = {}
    for shape, done in runs.items():
        t = mean_timing([r[0] for r in done])
        pieces = {sig: mean_timing([r[1][sig] for r in done]) for sig in done[0][1]}
        whole = {p: mean_timing([r[2][p] for r in done]) for p in done[0][2]
                 if all(p in r[2] for r in done)}
        _replace_piece_baselines(store, report, measurer, shape, t, pieces)
        out[shape] = (t, whole, [r[0].median_us for r in done])
    return out


def _replace_piece_baselines(store: Any, report: Any, measurer: Any, shape: Shape, t: Any,
                             pieces: dict[str, Any]) -> None:
    """The pieces' window timings as their baseline rows at ``shape``, where :func:`time_windows`
    says they replace what is stored."""
    # an unstable window still replaces baseline rows that are no better (quick or unstable)
    good = store.measured_configs(report.device, shape.key, list(pieces), allow_unstable=False)
    rows = [MeasurementIn(report.device, sig, shape.key, measurer.baseline_key(sig),
                          pt.median_us, pt.spread_us, pt.n_samples, campaign=report.campaign,
                          clock=pt.clock, quick=report.quick, stable=pt.stable, load1=pt.load1,
                          cpu_mhz=pt.cpu_mhz, threads=pt.threads, baseline_us=pt.median_us,
                          drift=pt.drift)
            for sig, pt in pieces.items()
            if t.stable or report.quick or measurer.baseline_key(sig) not in good.get(sig, ())]
    if rows:
        store.add_measurements(rows, replace=True)


def time_steps_paired(base_fn: Any, fn: Any, inputs: list, backend: str, threads: int,
                      name: str = "config", **timing: Any) -> tuple[Any, Any]:
    """Two whole-model steps (``base_fn``, ``fn``: callables of one input) timed in the
    same interleaved rounds, each after its own previous step (untimed), as ``generate()``
    runs one step after another: ``(baseline Timing, Timing)``. Timed right after the other
    model's step instead, a deployment that fits the cache would find it emptied (the wide
    Llama's int4_wo step: 4.25 ms that way, 3.60 ms after its own step). ``timing``: the
    harness's options (``TimingOptions.kwargs()``); ``name``: ``fn``'s name in the harness."""
    from functools import partial

    from hwcost.profiles.bench import time_interleaved

    fns = {"baseline": base_fn, name: fn}
    res = time_interleaved(fns, inputs, backend, threads=threads, baseline="baseline",
                           prepare={k: partial(f, inputs[0]) for k, f in fns.items()},
                           **timing)
    return res["baseline"], res[name]


def anchor_keys(precisions: Iterable[str]) -> list[str]:
    """The whole-model rows a decode shape's anchors are stored under, per precision: every
    layer in it (``all:<p>``), and only the first piece in it (``first:<p>``)."""
    return [f"{kind}:{p}" for p in precisions for kind in ("all", "first")]


def anchor_timings(measurer: Any, shape: str, model: tuple[Any, list],
                   anchors: Sequence[Precision], baseline_us: float,
                   share: int = 1) -> dict[str, Any]:
    """The whole model's step with every layer in each of ``anchors`` (``all:<p>``), and with
    only its first piece's layers in it (``first:<p>``, the rest in the baseline): each timed
    interleaved with the baseline model (``model``: its callable and inputs, from
    ``measurer.model_fn_of``), both after their own previous step as ``generate()`` runs
    steps, one at a time, and returned as its ratio to that baseline times ``baseline_us``
    (the window's), spread scaled alike. A precision a kernel cannot deploy on some layer is
    left out. ``share``: one of that many passes (:func:`time_windows`), with its share of
    the samples."""
    base_fn, inputs = model
    # an anchor scales every gain of its precision at this shape, so its error enters every
    # prediction there: four times the samples of one piece's config (60 by default, about
    # a second of a 9 ms step)
    kwargs = measurer.timing.kwargs()
    kwargs = share_of({**kwargs, "min_samples": ANCHOR_SAMPLES * kwargs["min_samples"]}, share)
    first = measurer.part.pieces[0].layer_names
    out = {}
    for prec in anchors:
        for kind, overrides in (("all", None), ("first", dict.fromkeys(first, prec))):
            try:
                fn, _ = (measurer.model_fn_of(shape, prec) if overrides is None
                         else measurer.model_fn_of(shape, measurer.baseline, overrides))
            except BackendUnavailable:
                break
            b, a = time_steps_paired(base_fn, fn, inputs, measurer.backend, measurer.threads,
                                     name="anchor" if kind == "all" else "first", **kwargs)
            del fn  # the deployed copy goes before the next one
            out[f"{kind}:{prec.value}"] = _in_window(a, b, baseline_us)
    return out


def _in_window(a: Any, b: Any, baseline_us: float) -> Any:
    """``a`` timed beside the baseline ``b``: its ratio to ``b`` times the window's baseline."""
    from dataclasses import replace

    k = baseline_us / b.median_us
    return replace(a, median_us=a.median_us * k, spread_us=a.spread_us * k,
                   min_us=a.min_us * k if a.min_us is not None else None,
                   stable=a.stable and b.stable, reason=a.reason or b.reason)


def model_window(measurer: Any, shape: str, baseline: Precision,
                 model: tuple[Any, list] | None = None,
                 share: int = 1) -> tuple[Any, dict[str, Any]]:
    """The whole model in ``baseline`` and every unique piece's baseline config, timed
    in the same interleaved rounds: ``(model Timing, {signature: Timing})``. ``model``: the
    baseline model's callable and inputs when the caller has deployed it already; ``share``:
    one of that many passes (:func:`time_windows`), with its share of the samples.

    A gain is a ratio to the baseline timed in its own group; the planner turns it into
    microseconds with the piece's baseline row and into a speedup with the whole model's
    latency: timed here in the same rounds, they agree on how fast the machine ran. At a
    decode shape every step is rewound after its call (the same step on a cache of exactly
    ``kv`` tokens); the pieces find their caches as the campaign's groups did (the same
    eviction), the whole model as its own previous step leaves them (that step runs
    untimed before each sample, as ``generate()`` runs one step after another)."""
    from hwcost.profiles.bench import time_interleaved
    from hwcost.profiles.decode import layer_indices, step_fn

    from hwcost.shape import parse_shape

    kv = parse_shape(shape).kv
    model_fn, model_inputs = model or measurer.model_fn_of(shape, baseline)
    fns = {"model": lambda d: model_fn(d["model"])}
    sigs = []
    for sig, rep in measurer.reps.items():
        key = measurer.baseline_key(sig)
        piece = measurer.piece_fns(sig, [key]).get(key)
        if piece is None:
            continue
        if kv:  # a decode step appends to its layers' caches: rewind after every call
            layers = layer_indices(rep.extract(measurer.loaded.model).children())
            piece = step_fn(piece, measurer.inputs(shape, sig), kv, layers)
        fns[sig] = (lambda f, k: lambda d: f(d[k]))(piece, sig)
        sigs.append(sig)
    data = [{"model": model_inputs[i], **{sig: measurer.inputs(shape, sig)[i] for sig in sigs}}
            for i in range(measurer.n_inputs)]
    res = time_interleaved(fns, data, measurer.backend, threads=measurer.threads,
                           baseline="model",
                           evict_bytes={"model": measurer.evict_bytes(shape),
                                        **{s: measurer.evict_bytes(shape, s) for s in sigs}},
                           evict_skip=("model",) if kv else (),
                           # a decode step after its own previous step, as generate() runs it
                           prepare={"model": lambda: model_fn(model_inputs[0])} if kv else None,
                           **share_of(measurer.timing.kwargs(), share))
    return res["model"], {sig: res[sig] for sig in sigs}
