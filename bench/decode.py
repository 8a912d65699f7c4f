"""Decode with a KV cache and whole-request plans (issue 11, "Must show").

For each model (the demo model, and a wider Llama built from a config: hidden 1024, few
layers, random weights), on this CPU:

1. **Profiling** (``profiles.campaign.run_campaign``, what ``hwcost run --workload`` runs) of
   the workload's shapes into a scratch SQLite store: the prefill ``batch=B,seq=P`` and the
   decode KV buckets ``P``, midpoint, ``P+G-2`` (one decode step each on a real KV cache),
   every config of every unique subgraph, in fp32 / bf16 / int8_wo / int4_wo.
2. **Decode additivity** at two KV lengths (the first and last bucket): N random per-layer
   configs; measured = the whole model's decode step with the config deployed, timed
   interleaved with the fp32 model on the same caches, each after its own previous step
   (untimed, as ``generate()`` runs steps); predicted = that fp32 step minus the
   sum of the subgraph gains the planner takes (the campaign's, anchored on the whole model's
   steps in each uniform precision, ``planner.anchors``). Error = |predicted - measured| /
   measured. The error of the unanchored gains is printed beside it.
3. **Workload** ``prompt=P,gen=G,batch=B``: Taylor sensitivity (calibration: the demo corpus,
   random ids for the random-weight model), then three plans under one loss bound: the
   workload plan (prefill + every decode step, ``planner.workload``; with ``--retime K``,
   default 4, as ``hwcost run --retime``: the measured fastest of up to K candidates within
   the bound, uniform ones among them, timed as ``generate()`` requests, when it beats the
   table's pick beyond the noise; a config equal to another is timed once), the prefill-only plan
   (``batch=B,seq=P``), and each uniform precision. The baseline's ``generate()`` latency is
   measured first (the workload's end-to-end baseline); then every config's real
   ``generate()`` (greedy, exactly G new tokens, fixed prompts) is timed interleaved. Reported:
   predicted vs measured request latency of the workload plan (the prediction is its
   predicted speedup applied to the fp32 request timed in the same rounds, as ``hwcost
   validate`` compares; the error against the stored baseline, timed minutes earlier, is
   printed too, with the drift between the two fp32 timings), what ``generate()`` adds to
   the model's own steps, and the plan's measured speed against the best uniform precision
   that meets the bound and against the prefill-only plan.

Whole-model configs are deployed linked along the data flow, as hwcost deploys them and as
the campaign timed the pieces (one input conversion per tensor).

Prints a table, writes bench/results/<name>.{json,md} (``--name``, default decode), ends with
the three target lines.

    python bench/decode.py [--configs 30] [--prompt 256] [--gen 64] [--batch 1] [--threads 1]
                           [--precisions fp32,bf16,int8_wo,int4_wo] [--compare-samples 30]
                           [--generate-samples 40] [--retime 4] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hwcost.planner.apply import model_dataflow, plan_timer  # noqa: E402
from hwcost.planner.generate import measure_baseline, time_generate  # noqa: E402
from hwcost.planner.objectives import parse_threshold  # noqa: E402
from hwcost.planner.plans import make_plan  # noqa: E402
from hwcost.planner.problem import anchor_problem, build_problem  # noqa: E402
from hwcost.planner.workload import build_workload_problem  # noqa: E402
from hwcost.profiles.backends import apply_precisions  # noqa: E402
from hwcost.profiles.campaign import QUICK_TIMING, TimingOptions, run_campaign  # noqa: E402
from hwcost.profiles.decode import step_fn  # noqa: E402
from hwcost.profiles.loading import LoadedModel, load_model  # noqa: E402
from hwcost.profiles.window import time_steps_paired  # noqa: E402

from bench.common import cpu_timing  # noqa: E402
from hwcost.device import local_device  # noqa: E402
from hwcost.shape import parse_shape  # noqa: E402
from hwcost.store import open_store  # noqa: E402
from hwcost.workload import kv_buckets, parse_workload, workload_shapes  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PRECISIONS = ["fp32", "bf16", "int8_wo", "int4_wo"]  # --precisions may narrow it
N_INPUTS = 2


def wide_llama(layers: int) -> LoadedModel:
    """A Llama of width 1024 (16 heads of 64, 4 KV heads, MLP 2816) with random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=2048, hidden_size=1024, intermediate_size=2816,
                      num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=4,
                      max_position_embeddings=1024, tie_word_embeddings=False, use_cache=False)
    torch.manual_seed(0)
    return LoadedModel(f"wide-llama-{layers}L", LlamaForCausalLM(cfg).float().eval(), None,
                       "config")


def mixing_configs(layers, precisions):
    """Per non-baseline precision: one layer (the first piece's first), every seventh layer,
    and every layer in it, the rest in fp32: whether a precision's first layer in a step
    costs more than its share of the uniform model's gain (a mixed config pays it, a uniform
    anchor spreads it over every layer)."""
    out = []
    for p in precisions[1:]:
        for label, picked in (("1 layer", layers[:1]), ("every 7th", layers[::7]),
                              ("all", layers)):
            out.append((f"{p}: {label} ({len(picked)})",
                        {n: (p if n in picked else precisions[0]) for n in layers}))
    return out


def random_configs(layers, n, rng):
    out = []
    for _ in range(n):
        weights = [rng.gammavariate(1.0, 1.0) for _ in PRECISIONS]
        out.append({name: rng.choices(PRECISIONS, weights)[0] for name in layers})
    return out


def additivity(store, camp, loaded, kv, batch, configs, backend, threads, timing,
               samples: int = 0) -> dict:
    """Predicted (the fp32 step times the predicted speedup: the campaign's whole step less
    the sum of subgraph gains, over that step) against measured decode steps."""
    shape = parse_shape(f"batch={batch},kv={kv},phase=decode")
    # every row the campaign wrote, quick or unstable included: this checks the timings (the
    # planner's table: pieces that read no KV cache carry their one per-batch decode timing),
    # read once: the pieces' own gains (diagnostic) and, anchored on the whole model's steps
    # in each uniform precision that the campaign timed (planner.anchors), what the planner
    # predicts
    raw = build_problem(store, camp.model_fingerprint, camp.device, shape.key,
                        precisions=list(PRECISIONS), allow_unstable=True, anchor=False)
    problem = anchor_problem(store, raw, allow_unstable=True)
    # anchored, the problem's baseline is the campaign's whole step (planner.anchors)
    step_us = problem.baseline_us
    raw_options = {(c.position, o.key): o for c in raw.choices for o in c.options}
    _, manifest = store.manifest(camp.model_fingerprint)
    pieces = [item for item, _ in manifest]
    layers = [n for p in pieces for n in p.layer_names]
    inputs = [loaded.inputs_for(shape, seed=s) for s in range(N_INPUTS)]
    # deployed as hwcost deploys (and the campaign timed the pieces): linked along the data
    # flow, one input conversion per tensor (q/k/v and gate/up share theirs). Unlinked, every
    # bf16/int4_wo layer converted its own input and the whole model paid casts no piece did.
    flow = model_dataflow(loaded, backend)
    base_model = apply_precisions(loaded.model, dict.fromkeys(layers, "fp32"), backend, flow)

    def raw_gain(cfg):
        # the gains as the table has them, each against the baseline timed in its own group
        # (diagnostic: not anchored)
        return sum(raw_options[(p.position, ",".join(cfg[n] for n in p.layer_names))].gain_us
                   for p in pieces)

    def planned_gain(cfg):
        # as the planner prices a plan: the anchored gains less the once-per-step costs of
        # the precisions the config uses (planner.anchors)
        return problem.plan_gain_us(problem.picks_of(cfg))

    def timed(cfg):
        # the measured side of each comparison: the whole step, fp32 and the config in the
        # same rounds, with at least `samples` samples each (--compare-samples), each after
        # its own previous step, as generate() runs them
        deployed = apply_precisions(loaded.model, cfg, backend, flow)
        kw = {**timing.kwargs(), "min_samples": max(timing.min_samples, samples)}
        b, c = time_steps_paired(step_fn(lambda inp: base_model(**inp), inputs, kv),
                                 step_fn(lambda inp, m=deployed: m(**inp), inputs, kv),
                                 inputs, backend, threads, **kw)
        return b.median_us, c.median_us

    out = []
    for i, cfg in enumerate(configs):
        base, meas = timed(cfg)
        raw = raw_gain(cfg)
        gain = planned_gain(cfg)
        # the config's predicted speedup (the campaign's whole step, timed in one window
        # with the pieces' baselines, less the gains) applied to the fp32 step of these
        # rounds, as the workload and `hwcost validate` compare: a machine running slower
        # now than in the window scales the gains too
        scale = base / step_us if step_us else 1.0
        pred = base - gain * scale
        counts = {p: sum(1 for n in layers if cfg[n] == p) for p in PRECISIONS}
        out.append({"config": i, "counts": counts, "baseline_us": base, "measured_us": meas,
                    "predicted_us": pred, "abs_err_pct": abs(pred - meas) / meas * 100,
                    "signed_err_pct": (pred - meas) / meas * 100,
                    "unanchored_abs_err_pct": abs(base - raw * scale - meas) / meas * 100,
                    "predicted_gain_us": gain, "measured_gain_us": base - meas,
                    "abs_err_absolute_gains_pct": abs(base - gain - meas) / meas * 100})
        print(f"  kv={kv} {i:3d} {counts} fp32 {base / 1e3:6.2f} ms measured {meas / 1e3:6.2f} ms "
              f"predicted {pred / 1e3:6.2f} ms ({out[-1]['abs_err_pct']:4.1f}%; unanchored "
              f"{out[-1]['unanchored_abs_err_pct']:4.1f}%)", flush=True)
    errs = [r["abs_err_pct"] for r in out]
    return {"kv": kv, "shape": shape.key, "median_abs_err_pct": statistics.median(errs),
            # negative: predicted faster than measured (the subgraph gains over-predict)
            "median_signed_err_pct": statistics.median(r["signed_err_pct"] for r in out),
            "campaign_step_us": step_us, "median_abs_err_absolute_gains_pct":
            statistics.median(r["abs_err_absolute_gains_pct"] for r in out),
            "anchor_scales": problem.gain_scales.get(shape.key, {}),
            "presence_us": dict(problem.presence_us.get(shape.key, {})),
            "median_unanchored_abs_err_pct":
            statistics.median(r["unanchored_abs_err_pct"] for r in out),
            "p90_abs_err_pct": sorted(errs)[int(0.9 * (len(errs) - 1))], "rows": out}


def sensitivity(store, loaded, part, demo: bool, samples: int, tmp: str):
    """Taylor sensitivity: the demo corpus for the demo model, seeded random ids otherwise."""
    import numpy as np
    from hwcost.sensitivity.pipeline import CalibSpec, prepare, stored_or_computed

    path = None
    if not demo:
        g = torch.Generator().manual_seed(7)
        ids = torch.randint(0, loaded.model.config.vocab_size, (samples, 64), generator=g)
        path = f"{tmp}/calib.npy"
        np.save(path, ids.numpy().astype(np.int64))
    prep = prepare(None, CalibSpec(path=path, samples=samples, seq_len=64), loaded=loaded,
                   part=part)
    return stored_or_computed(store, prep, list(PRECISIONS), "taylor")


def workload_plans(store, camp, loaded, wl, threshold, backend, threads, timing, n_prompts,
                   samples: int = 0, retime_k: int = 0):
    # requests of 0.2-1 s whose samples spread by 5-15 % on a shared machine: at least
    # `samples` each (--generate-samples), the baseline's and the compared configs'
    timing_kw = {**timing.kwargs(), "min_samples": max(timing.min_samples, samples)}
    measure_baseline(store, loaded, backend, camp.model_fingerprint, camp.device, "fp32", wl,
                     threads=threads, n_prompts=n_prompts, **timing_kw)
    wl_problem, pricing = build_workload_problem(store, camp.model_fingerprint, camp.device, wl,
                                                 precisions=list(PRECISIONS), allow_unstable=True)
    (req,) = wl.requests
    pre_problem = build_problem(store, camp.model_fingerprint, camp.device, req.prefill.key,
                                precisions=list(PRECISIONS), allow_unstable=True)
    thr = parse_threshold(threshold)
    # as `hwcost run --workload ... --retime K`: candidates timed as generate() requests
    timer = (plan_timer(loaded, wl.shape_key, backend, threads=threads, n_prompts=n_prompts,
                        **timing_kw) if retime_k > 1 else None)
    wl_plan = make_plan(store, camp.model_fingerprint, camp.device, wl.shape_key, thr,
                        problem=wl_problem, retime=timer, retime_k=retime_k)
    retimed = wl_plan.retimed
    pre_plan = make_plan(store, camp.model_fingerprint, camp.device, req.prefill.key, thr,
                         problem=pre_problem)
    bound = wl_plan.solution.max_loss_mse
    layers = wl_problem.layers

    def predicted(assign: dict[str, str]) -> tuple[float, float]:
        """Workload latency and loss MSE the workload problem predicts for a layer map."""
        picks = wl_problem.picks_of(assign)
        loss = sum(c.options[i].loss_mse for c, i in zip(wl_problem.choices, picks))
        return wl_problem.baseline_us - wl_problem.plan_gain_us(picks), loss

    configs = {"fp32": dict.fromkeys(layers, "fp32"), "workload_plan": wl_plan.solution.layers,
               "prefill_plan": pre_plan.solution.layers}
    if retimed is not None and retimed.kept != 0:  # the table's own pick, for comparison
        configs["workload_planned"] = retimed.candidates[0].layers(wl_problem)
    for p in PRECISIONS[1:]:
        configs[f"uniform_{p}"] = dict.fromkeys(layers, p)
    pred = {k: predicted(v) for k, v in configs.items()}
    # one deployment is timed once: a plan that is a uniform config reads its very timing
    same_as: dict[str, str] = {}
    for k, lay in configs.items():
        same_as[k] = next(u for u in configs if configs[u] == lay)
    timed = time_generate(loaded, {k: v for k, v in configs.items() if same_as[k] == k}, wl,
                          backend, threads=threads, n_prompts=n_prompts, **timing_kw)
    meas = {k: timed[same_as[k]] for k in configs}
    rows = {k: {"predicted_us": pred[k][0], "predicted_loss_mse": pred[k][1],
                "within_bound": pred[k][1] <= bound * (1 + 1e-9),
                "measured_us": meas[k].median_us, "spread_us": meas[k].spread_us,
                "tokens_per_s": meas[k].tokens_per_s,
                "counts": {p: sum(1 for n in layers if configs[k][n] == p) for p in PRECISIONS},
                "same_as": same_as[k] if same_as[k] != k else None}
            for k in configs}
    uniform_ok = [k for k in rows if (k == "fp32" or k.startswith("uniform_"))
                  and rows[k]["within_bound"]]
    best_uniform = min(uniform_ok, key=lambda k: rows[k]["measured_us"])
    plan = rows["workload_plan"]
    # The plan's prediction is (stored generate() baseline) - (sum of subgraph gains). The
    # stored baseline was timed minutes before these rounds; on a shared machine the same
    # fp32 request then reads another time (drift, not the method). Against the fp32 request
    # timed in these very rounds (as `hwcost validate` compares), the prediction is the
    # predicted speedup applied to it: fp32_now * predicted_plan / predicted_fp32.
    fp32_now = rows["fp32"]["measured_us"]
    for row in rows.values():
        row["predicted_same_rounds_us"] = fp32_now * row["predicted_us"] / rows["fp32"][
            "predicted_us"]
    # what generate() adds to the model's own steps: the measured baseline request minus the
    # model's steps (prefill + every decode step, interpolated), fp32, timed in the request's
    # rounds (else the campaign's windows)
    campaign_steps_us = sum(w * pricing.baseline_us[s] for s, w in pricing.weights.items())
    steps_us = pricing.request_steps_us or campaign_steps_us
    req_us = pricing.request_baseline_us
    (req,) = wl.requests
    return {
        "workload": wl.key, "threshold": threshold, "max_loss_mse": bound,
        "interpolation_error": pricing.interpolation_error,
        "shape_weights": pricing.weights, "request_baseline_us": req_us,
        "model_steps_us": steps_us, "campaign_steps_us": campaign_steps_us,
        "steps_timed_with_request": pricing.request_steps_us is not None,
        "gain_scale": pricing.scale,
        "generate_overhead_us": None if req_us is None else req_us - steps_us,
        "generate_overhead_per_token_us": None if req_us is None
        else (req_us - steps_us) / req.gen,
        "baseline_drift_pct": None if req_us is None else (fp32_now - req_us) / req_us * 100,
        "plans_differ": wl_plan.solution.layers != pre_plan.solution.layers,
        "retimed": retimed.to_dict() if retimed is not None else None,
        "retime_line": retimed.line() if retimed is not None and len(retimed.candidates) > 1
        else None,
        "rows": rows, "best_uniform": best_uniform,
        "prediction_err_pct": abs(plan["predicted_same_rounds_us"] - plan["measured_us"])
        / plan["measured_us"] * 100,
        "prediction_err_vs_stored_baseline_pct": abs(plan["predicted_us"] - plan["measured_us"])
        / plan["measured_us"] * 100,
        "vs_best_uniform": rows[best_uniform]["measured_us"] / plan["measured_us"],
        "vs_prefill_plan": rows["prefill_plan"]["measured_us"] / plan["measured_us"],
    }


def run_model(name, loaded, demo, args, backend, threads, timing) -> dict:
    t0 = time.perf_counter()
    wl = parse_workload(f"prompt={args.prompt},gen={args.gen},batch={args.batch}")
    shapes = list(workload_shapes(wl))
    (req,) = wl.requests
    buckets = kv_buckets(req)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/decode.db")
        try:
            camp = run_campaign(store, loaded, "cpu", shapes, list(PRECISIONS), threads=threads,
                                n_inputs=N_INPUTS, timing=timing, progress=False)
            print(f"{name}: campaign {camp.measured} configs in {camp.elapsed_s:.0f} s "
                  f"({camp.pieces} pieces, {camp.unique_subgraphs} unique) failed {camp.failed}",
                  flush=True)
            _, manifest = store.manifest(camp.model_fingerprint)
            layers = [n for item, _ in manifest for n in item.layer_names]
            configs = random_configs(layers, args.configs, random.Random(args.seed))
            from hwcost.profiles.campaign import cut_model

            # first: the planner's problem (the additivity's prediction) needs a table
            part = cut_model(loaded, shapes, backend, len(PRECISIONS))
            sens = sensitivity(store, loaded, part, demo, args.samples, tmp)
            add = [additivity(store, camp, loaded, kv, args.batch, configs, backend, threads,
                              timing, 0 if args.quick else args.compare_samples)
                   for kv in (buckets[0], buckets[-1])]
            # diagnostic: the same comparison on structured configs (mixing_configs)
            mix_cfgs = mixing_configs(layers, PRECISIONS)
            mix = additivity(store, camp, loaded, buckets[0], args.batch,
                             [c for _, c in mix_cfgs], backend, threads, timing,
                             0 if args.quick else args.compare_samples)
            for (label, _), row in zip(mix_cfgs, mix["rows"]):
                row["label"] = label
            wlr = workload_plans(store, camp, loaded, wl, args.threshold, backend, threads,
                                 timing, args.prompts,
                                 0 if args.quick else args.generate_samples, args.retime)
            step_us = {s: camp.baseline_us[s] for s in camp.baseline_us}
            passes_us = dict(camp.window_passes_us)
        finally:
            store.close()
    return {"model": name, "layers": len(layers), "pieces": camp.pieces,
            "unique_subgraphs": camp.unique_subgraphs, "campaign_configs": camp.measured,
            "campaign_s": camp.elapsed_s, "campaign_failed": camp.failed,
            "campaign_errors": camp.errors[:3], "whole_model_us": step_us,
            "whole_model_passes_us": passes_us,
            "sensitivity_reused": sens.reused, "additivity": add, "mixing": mix,
            "workload": wlr,
            "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", type=int, default=30)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--wide-layers", type=int, default=2)
    ap.add_argument("--threshold", default="20%",
                    help="loss-MSE bound of the plans (share of the all-lowest loss MSE)")
    ap.add_argument("--samples", type=int, default=16, help="calibration sequences")
    ap.add_argument("--prompts", type=int, default=2, help="distinct prompts per request")
    ap.add_argument("--models", default="demo,wide")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared, oversubscribed machine two threads "
                         "spend their time waiting on each other)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=3.0)
    ap.add_argument("--compare-samples", type=int, default=30,
                    help="samples of each whole decode step compared (fp32 and the config, "
                         "interleaved): the measured side of the additivity, a 3-6 ms step on "
                         "a shared machine")
    ap.add_argument("--generate-samples", type=int, default=40,
                    help="samples of each generate() request compared (every config and the "
                         "baseline, interleaved): a 0.2-1 s request spreads by 5-15 %% on a "
                         "shared machine")
    ap.add_argument("--retime", type=int, default=4, metavar="K",
                    help="as hwcost run --retime K: the workload plan is the measured fastest "
                         "of up to K candidates within the bound (timed as generate() "
                         "requests) when it beats the table's pick beyond the noise; 0: the "
                         "table's pick")
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help="at most 4 (the default cut), fp32 first")
    ap.add_argument("--clock", choices=["wall", "thread"], default="thread",
                    help="thread (default, needs --threads 1): the thread's CPU time, which "
                         "leaves out the slices other processes take on a shared machine; a "
                         "multi-millisecond decode step or request is otherwise preempted many "
                         "times where a sub-millisecond piece is not")
    ap.add_argument("--quick", action="store_true", help="few samples: a smoke run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="decode",
                    help="file stem of the results (decode_wide for the wide model alone)")
    args = ap.parse_args(argv)

    PRECISIONS[:] = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if PRECISIONS[0] != "fp32" or len(PRECISIONS) > 4:
        ap.error("--precisions: fp32 first, at most 4")
    start = time.perf_counter()
    load_before, backend, threads = cpu_timing(args.threads, args.clock, ap.error)
    timing = QUICK_TIMING if args.quick else TimingOptions(max_seconds=args.max_seconds)
    results = []
    for name in args.models.split(","):
        if name == "demo":
            loaded, demo = load_model(None), True
        else:
            loaded, demo = wide_llama(args.wide_layers), False
        results.append(run_model(loaded.name, loaded, demo, args, backend, threads, timing))
    report = {"benchmark": "decode", "device": local_device("cpu").to_dict(), "threads": threads,
              "clock": args.clock,
              "precisions": list(PRECISIONS), "timing": timing.kwargs(), "quick": args.quick,
              "args": {k: str(v) for k, v in vars(args).items()}, "models": results,
              "seconds": time.perf_counter() - start,
              "loadavg_1min": [load_before[0], os.getloadavg()[0]]}
    add_errs = [r["abs_err_pct"] for m in results for a in m["additivity"] for r in a["rows"]]
    pred_errs = [m["workload"]["prediction_err_pct"] for m in results]
    vs_uniform = [m["workload"]["vs_best_uniform"] for m in results]
    report["targets"] = {"decode_additivity_median_abs_err_pct": statistics.median(add_errs),
                         "workload_latency_prediction_err_pct": max(pred_errs),
                         "workload_plan_vs_best_uniform": min(vs_uniform)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2, default=str))
    md = markdown(report)
    (args.out / f"{args.name}.md").write_text(md)
    raw = max(m["workload"]["prediction_err_vs_stored_baseline_pct"] for m in results)
    print(f"(not a target) workload prediction against the stored baseline, timed before these "
          f"rounds: {raw:.2f} %; baseline drift between the two timings: "
          + ", ".join(f"{m['model']} {m['workload']['baseline_drift_pct']:+.1f} %"
                      for m in results))
    print()
    print(md)
    t = report["targets"]
    a, e, v = (t["decode_additivity_median_abs_err_pct"], t["workload_latency_prediction_err_pct"],
               t["workload_plan_vs_best_uniform"])
    print(f"target: decode_additivity_median_abs_err = {a:.2f} % (goal <= 3) "
          f"{'met' if a <= 3 else 'missed'}")
    print(f"target: workload_latency_prediction_err = {e:.2f} % (goal <= 5) "
          f"{'met' if e <= 5 else 'missed'}")
    print(f"target: workload_plan_vs_best_uniform = {v:.3f} x (goal >= 1.0) "
          f"{'met' if v >= 1.0 else 'missed'}")
    return 0


def markdown(r: dict) -> str:
    dev = r["device"]
    lines = ["# Decode with a KV cache and whole-request plans", "",
             f"{dev['name']} ({' '.join(dev['flags'])}), torch {dev['software'].get('torch')}, "
             f"{r['threads']} threads, {r['clock']} clock; precisions {', '.join(r['precisions'])}; "
             f"{'QUICK timing (smoke run)' if r['quick'] else 'default timing'}; "
             f"{r['seconds']:.0f} s; load average (1 min) {r['loadavg_1min'][0]:.1f} at start, "
             f"{r['loadavg_1min'][1]:.1f} at end ({os.cpu_count()} CPUs, shared).", ""]
    for m in r["models"]:
        w = m["workload"]
        lines += [f"## {m['model']}", "",
                  f"{m['layers']} linear layers, {m['pieces']} pieces ({m['unique_subgraphs']} "
                  f"unique); campaign {m['campaign_configs']} configs over "
                  f"{len(m['whole_model_us'])} shapes in {m['campaign_s']:.0f} s "
                  f"({m['campaign_failed']} failed).", "",
                  "Whole-model fp32 latency per shape (campaign: the mean of its windows' "
                  "passes, timed in rotating order over the shapes, profiles.window):", "",
                  "| shape | us | each pass, us |", "|---|---|---|"]
        passes = m.get("whole_model_passes_us", {})
        lines += [f"| `{s}` | {us:.0f} | {' / '.join(f'{p:.0f}' for p in passes.get(s, []))} |"
                  for s, us in m["whole_model_us"].items()]
        lines += ["", "Decode additivity (whole decode step, each timed after its own "
                  "previous step as generate() runs them; predicted = the fp32 step of the "
                  "same rounds x (campaign step - sum of the planner's subgraph gains) / "
                  "campaign step, the campaign step timed in one window with the pieces' "
                  "baselines and the whole model in each uniform precision, on which the "
                  "planner anchors the gains, planner.anchors):", "",
                  "| KV length | configs | median abs err | p90 abs err | median signed err "
                  "(-: the gains over-predicted) | anchor scales (campaign window) "
                  f"{'/'.join(r['precisions'][1:])} | once-per-step costs us "
                  f"{'/'.join(r['precisions'][1:])} | unanchored median abs err (diagnostic) "
                  "| median abs err, gains in campaign us (diagnostic) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {a['kv']} | {len(a['rows'])} | {a['median_abs_err_pct']:.2f} % | "
                  f"{a['p90_abs_err_pct']:.2f} % | {a['median_signed_err_pct']:+.2f} % | "
                  + "/".join(f"{a.get('anchor_scales', {}).get(p, 1.0):.2f}"
                             for p in r["precisions"][1:]) + " | "
                  + "/".join(f"{a.get('presence_us', {}).get(p, 0.0):.0f}"
                             for p in r["precisions"][1:])
                  + f" | {a.get('median_unanchored_abs_err_pct', float('nan')):.2f} % | "
                  f"{a['median_abs_err_absolute_gains_pct']:.2f} % |"
                  for a in m["additivity"]]
        mix = m.get("mixing")
        if mix:
            lines += ["", f"Mixing (diagnostic, kv={mix['kv']}): the same comparison on "
                      "structured configs, the rest of the layers fp32 (predicted - measured "
                      "< 0: the config measured slower than the planner predicts):", "",
                      "| config | fp32 step us | measured us | predicted us | predicted - "
                      "measured |", "|---|---|---|---|---|"]
            lines += [f"| {row['label']} | {row['baseline_us']:.0f} | {row['measured_us']:.0f} "
                      f"| {row['predicted_us']:.0f} | {row['signed_err_pct']:+.2f} % |"
                      for row in mix["rows"]]
        ie = ", ".join(f"batch {b}: {e * 100:.2f} %" for b, e in w["interpolation_error"].items()
                       if e is not None) or "n/a"
        lines += ["", f"Workload `{w['workload']}`, loss bound {w['threshold']} "
                  f"(= {w['max_loss_mse']:.4g}); KV interpolation leave-one-out error {ie}; "
                  f"measured baseline request {w['request_baseline_us'] / 1e3:.1f} ms; "
                  f"workload plan {'differs from' if w['plans_differ'] else 'equals'} the "
                  "prefill-only plan.", "",
                  f"generate() adds {w['generate_overhead_us'] / 1e3:.1f} ms to the model's "
                  f"own steps ({w['model_steps_us'] / 1e3:.1f} ms: prefill + interpolated decode "
                  "steps, timed in the "
                  f"{'request' if w.get('steps_timed_with_request') else 'campaign'}'s "
                  f"rounds; the campaign's windows priced them at "
                  f"{w.get('campaign_steps_us', w['model_steps_us']) / 1e3:.1f} ms, so the gains "
                  f"were scaled by {w.get('gain_scale', 1.0):.3f}), "
                  f"{w['generate_overhead_per_token_us'] / 1e3:.2f} ms per new token; "
                  f"the fp32 request timed in the rounds below read "
                  f"{w['baseline_drift_pct']:+.1f} % against the stored baseline.", "",
                  f"| config | layers {'/'.join(r['precisions'])} | predicted ms (stored "
                  "baseline) | predicted ms (fp32 of these rounds) | measured ms | "
                  "tokens/s | predicted loss MSE | within bound |",
                  "|---|---|---|---|---|---|---|---|"]
        for k, row in w["rows"].items():
            c = row["counts"]
            name = f"{k} (= {row['same_as']})" if row.get("same_as") else k
            lines.append(f"| {name} | {'/'.join(str(c[p]) for p in r['precisions'])} | "
                         f"{row['predicted_us'] / 1e3:.1f} | "
                         f"{row['predicted_same_rounds_us'] / 1e3:.1f} | "
                         f"{row['measured_us'] / 1e3:.1f} | "
                         f"{row['tokens_per_s']:.0f} | {row['predicted_loss_mse']:.3g} | "
                         f"{'yes' if row['within_bound'] else 'no'} |")
        if w.get("retime_line"):
            lines += ["", f"Workload plan (`--retime {r['args'].get('retime')}`): "
                      f"{w['retime_line']}."]
        lines += ["", f"Workload plan: predicted (predicted speedup x the fp32 request of "
                  f"these rounds) vs measured {w['prediction_err_pct']:.2f} % (against the "
                  f"stored baseline: {w['prediction_err_vs_stored_baseline_pct']:.2f} %); "
                  f"measured speed vs best uniform within the bound ({w['best_uniform']}) "
                  f"{w['vs_best_uniform']:.3f}x; vs the prefill-only plan "
                  f"{w['vs_prefill_plan']:.3f}x.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
