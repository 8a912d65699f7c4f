"""Planner benchmark.

(a) Solver: a 70B-shaped problem (80 decoder blocks x (attention: q,k,v,o + MLP: gate,up,down),
    3 precisions, costs synthesized for an H100, see ``planner_synthetic.py``): wall time to
    proven optimality at several thresholds (target <= 1 s each, build + compile + solve) and a
    50-point sweep (target <= 10 s); the CP-SAT optimum (integer-scaled) is checked against
    SCIP on the float coefficients.
(b) On the demo model on this CPU: profile (what the store lacks), Taylor sensitivity, then at
    three thresholds apply and time, interleaved, on the real kernels:
      ours      the plan maximising measured time gain;
      random    200 random configs meeting the same predicted loss-MSE bound (random layer
                order, each layer given a random precision when the bound still allows it);
                ranked by predicted latency from the cost table, the top 5 measured; best kept;
      macs      the plan maximising MAC-based theoretical gain, same bound;
      isolated  the plan maximising gains from per-layer latencies timed in isolation and
                summed (HAWQ-V3 style), same bound.
    and the true loss MSE of ours on held-out data (data/corpus/test.txt) against the bound,
    then the closed loop (planner.closed_loop): re-plan with predictions scaled by the measured
    ratio until the measured loss MSE is within the bound. "ours" is what ``hwcost plan``
    picks: gains shrunk by one standard error, with the chance that a rival is faster.
    Run on the demo model and on a model with a biased family (a Qwen2 of the demo's width
    from a transformers config, ``tests.factories:small_qwen2``; ``--biased-model``; the tiny
    one of the tests is too narrow for any low-precision layer to gain, so its plan was all
    fp32 and its loop trivially within the bound).
    Relative bounds are shares of the fastest plan's loss MSE (formats the plan may use).
    ``--deployment compiled`` (the default) profiles, plans and times everything under
    ``torch.compile`` (inductor), where fusion makes layers interact and per-layer isolated
    latencies mispredict most (``bench/additivity.py``); ``eager`` as before. Rival plans:
    ``planner_rivals.py``. Each run profiles into a fresh scratch store unless ``--db``.

Usage: python bench/planner.py [--part a|b|all] [--model SPEC] [--db URL] [--threads N]
       [--deployment compiled|eager] [--precisions fp32,bf16,int8]
Writes bench/results/planner.json and bench/results/planner.md; ends with ``target:`` lines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from hwcost.planner.objectives import lowest_precision_mse, parse_threshold  # noqa: E402
from hwcost.planner.solve import compile_problem, solve, solve_compiled  # noqa: E402
from hwcost.planner.sweep import sweep  # noqa: E402
from planner_rivals import (  # noqa: E402
    isolated_layer_latencies,
    isolated_problem,
    predicted_latency,
    random_configs,
)

from hwcost.device import cpu_model_and_flags  # noqa: E402

RESULTS = HERE / "results"


# ------------------------------------------------------------------------------ part (a)


def scip_optimum(comp, bound: float) -> float:
    """The float-coefficient optimum from SCIP (OR-Tools' MIP wrapper), for the scaling check."""
    from ortools.linear_solver import pywraplp

    s = pywraplp.Solver.CreateSolver("SCIP")
    s.SetSolverSpecificParametersAsString("limits/gap = 0\n")
    x = [[s.BoolVar("") for _ in g] for g in comp.gains]
    for xs in x:
        s.Add(sum(xs) == 1)
    s.Add(sum(m * v for xs, ms in zip(x, comp.mses) for v, m in zip(xs, ms)) <= bound)
    s.Maximize(sum(g * v for xs, gs in zip(x, comp.gains) for v, g in zip(xs, gs)))
    if s.Solve() != pywraplp.Solver.OPTIMAL:
        raise RuntimeError("SCIP did not prove optimality")
    return s.Objective().Value()


def part_a(seeds=(0, 1, 2), fractions=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5)) -> dict:
    from planner_synthetic import synthetic_70b

    rows, worst, sweeps, sweep_cpu, max_rel = [], 0.0, [], [], 0.0
    for seed in seeds:
        t0 = time.perf_counter()
        problem = synthetic_70b(seed=seed)
        build_s = time.perf_counter() - t0
        low = lowest_precision_mse(problem)
        for f in fractions:
            t0, c0 = time.perf_counter(), time.process_time()
            comp = compile_problem(problem, "time")
            sol = solve_compiled(comp, f * low)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            ref = scip_optimum(comp, f * low)
            rel = abs(ref - sol.gain_us) / max(abs(ref), 1e-9)
            max_rel = max(max_rel, rel)
            worst = max(worst, wall)
            rows.append({"seed": seed, "bound": f"{f:.0%} of all-int8", "status": sol.status,
                         "solve_s": round(wall, 3), "cpu_s": round(cpu, 3),
                         "speedup": round(sol.predicted_speedup, 4),
                         "kept_options": sum(len(k) for k in comp.keep),
                         "rel_diff_vs_scip": rel})
        t0, c0 = time.perf_counter(), time.process_time()
        points = sweep(problem, 50)
        sweep_s = time.perf_counter() - t0
        sweeps.append(sweep_s)
        sweep_cpu.append(time.process_time() - c0)
        if not all(p.solution.optimal for p in points):
            raise RuntimeError(f"seed {seed}: the 50-point sweep did not prove every point optimal")
        print(f"  seed {seed}: build {build_s:.2f} s, 50-point sweep {sweep_s:.2f} s, "
              f"(cpu {sweep_cpu[-1]:.2f} s), frontier speedup {points[0].solution.predicted_speedup:.3f}x .. "
              f"{points[-1].solution.predicted_speedup:.3f}x", flush=True)
    n_opts = sum(len(c.options) for c in synthetic_70b().choices)
    return {"rows": rows, "worst_solve_s": worst, "sweep_s": max(sweeps),
            "sweep_s_all": sweeps, "sweep_cpu_s_all": sweep_cpu,
            "load_avg_1min": _load(), "max_rel_diff_vs_scip": max_rel,
            "instance": {"subgraphs": 160, "layers": 560, "precisions": 3, "options": n_opts}}


# ------------------------------------------------------------------------------ part (b)


def ensure_inputs(store, loaded, shape: str, threads: int, calib_samples: int = 64,
                  deployment: str = "eager", precisions: list[str] | None = None):
    """Profile what the store lacks (under ``deployment``) and compute the Taylor table if
    missing; returns the campaign report."""
    import torch
    from hwcost.profiles.campaign import run_campaign
    from hwcost.sensitivity.data import from_ids, load_calibration
    from hwcost.sensitivity.taylor import analyze

    report = run_campaign(store, loaded, "cpu", shapes=[shape], threads=threads, progress=False,
                          deployment=deployment, precisions=precisions)
    if not store.sensitivity_keys(report.model_fingerprint):
        vocab = getattr(getattr(loaded.model, "config", None), "vocab_size", None)
        train = ROOT / "data" / "corpus" / "train.txt"
        if loaded.tokenizer is not None and train.exists():
            cal = load_calibration(train, tokenizer=loaded.tokenizer, samples=calib_samples,
                                   seq_len=128, seed=0, vocab_size=vocab)
        else:
            gen = torch.Generator().manual_seed(0)
            cal = from_ids(torch.randint(0, vocab, (calib_samples, 128), generator=gen),
                           vocab_size=vocab, samples=calib_samples, seq_len=128, source="random")
        precs = [p for p in report.precisions if p != "fp32"]
        table = analyze(loaded.model, cal.batches(8), precisions=precs,
                        calib_fingerprint=cal.fingerprint)
        store.put_sensitivity_table(report.model_fingerprint, table)
    return report


def part_b(model_spec: str | None, db_url: str | None, threads: int, thresholds: list[str],
           shape: str = "batch=1,seq=128,phase=prefill", n_random: int = 200, top: int = 5,
           compare: bool = True, allow_unstable: bool = False, deployment: str = "eager",
           precisions: list[str] | None = None, pair_repeats: int = 3,
           retime: int = 0) -> dict:
    import torch
    from hwcost.planner.apply import eval_batches, loss_mse, plan_timer, time_configs
    from hwcost.planner.closed_loop import plan_within_bound
    from hwcost.planner.plans import make_plan
    from hwcost.planner.problem import build_problem
    from hwcost.profiles.backends import get_backend
    from hwcost.profiles.loading import load_model

    from hwcost.store import open_store

    torch.set_num_threads(threads)
    backend = get_backend("cpu")
    loaded = load_model(model_spec)
    # a fresh scratch store per run and model unless --db names one: a store left by an
    # earlier run would hand this one its timings (another machine state, another code)
    url = db_url or f"sqlite:///{Path(tempfile.mkdtemp(prefix='hwcost-bench-planner-'))}/p.db"
    store = open_store(url)
    t0 = time.perf_counter()
    report = ensure_inputs(store, loaded, shape, threads, deployment=deployment,
                           precisions=precisions)
    prep_s = time.perf_counter() - t0
    # on a busy shared machine the stability policy may refuse every timing as good;
    # --allow-unstable plans on them anyway (and the results say so)
    problem = build_problem(store, report.model_fingerprint, report.device, shape,
                            allow_unstable=allow_unstable)
    print(f"  {loaded.name}: {len(problem.layers)} layers, {len(problem.choices)} subgraphs, "
          f"precisions {','.join(problem.precisions)}; profile+sensitivity {prep_s:.0f} s "
          f"(measured {report.measured}, already {report.already})", flush=True)
    named = dict(loaded.model.named_modules())
    dims = {n: (named[n].weight.shape[1], named[n].weight.shape[0]) for n in problem.layers}
    if compare:
        iso_lat = isolated_layer_latencies(loaded, problem, shape, backend, threads, deployment)
        iso_problem = isolated_problem(problem, iso_lat, dims)
    batches = eval_batches(loaded, None, samples=128) if loaded.tokenizer is not None else \
        [torch.randint(0, loaded.model.config.vocab_size, (8, 128),
                       generator=torch.Generator().manual_seed(7)) for _ in range(4)]
    # what `hwcost run --retime` times candidates with (an unstable timing never switches)
    timer = plan_timer(loaded, shape, backend, threads=threads, deployment=deployment,
                       min_samples=21, max_seconds=10.0) if retime > 1 else None
    rows = []
    for th in thresholds:
        threshold = parse_threshold(th)
        bound = threshold.resolve(problem)
        first = make_plan(store, None, None, shape, threshold, problem=problem)
        planned = make_plan(store, None, None, shape, threshold, problem=problem, retime=timer,
                            retime_k=retime) if timer else first
        if planned.retimed is not None:
            print(f"    {th}: {planned.retimed.line()}", flush=True)
        ours = planned.solution
        if not compare:
            rows.append(_loop_row(th, bound, planned, loaded, batches, backend, store, shape,
                                  threshold, problem, make_plan, plan_within_bound, loss_mse,
                                  timer, retime))
            continue
        macs = solve(problem, bound, "macs")
        iso = solve(iso_problem, bound, "time")
        rand = random_configs(problem, bound, n_random, seed=len(rows))
        ranked = sorted(rand, key=lambda c: predicted_latency(problem, c)[0])[:top]
        configs = {"baseline": {n: problem.baseline for n in problem.layers},
                   "ours": ours.layers, "macs": macs.layers,
                   "isolated": {n: iso.layers[n] for n in problem.layers},
                   "planned": first.solution.layers}
        configs.update({f"random{i}": c for i, c in enumerate(ranked)})
        # identical configs are timed once, so identical plans compare exactly equal
        unique: dict[tuple, str] = {}
        alias = {}
        for name, cfg in configs.items():
            key = tuple(sorted(cfg.items()))
            alias[name] = unique.setdefault(key, name)
        to_time = {name: configs[name] for name in set(alias.values())}
        timings = time_configs(loaded, to_time, shape, backend, threads=threads,
                               deployment=deployment, min_samples=15, max_seconds=10.0)
        us = {name: timings[alias[name]].median_us for name in configs}
        base = us["baseline"]
        speed = {name: base / v for name, v in us.items()}
        best_name = max((f"random{i}" for i in range(len(ranked))), key=lambda n: speed[n])
        best_random = speed[best_name]
        # Each comparison that decides a target is re-timed as its own interleaved pair with
        # more samples: plans differing in a layer or two are within the noise of a 9-way run.
        # ``pair_repeats`` independent pairs (each deployed and compiled afresh, the two named
        # in alternating order), and the median of their ratios: one compiled pair's ratio
        # moved by 1-4 % between timings on this shared machine.
        ratio, ratios = {}, {}
        for other in ("macs", "isolated", best_name):
            if alias[other] == alias["ours"]:
                ratio[other], ratios[other] = 1.0, []
                continue
            got = []
            for rep in range(pair_repeats):
                names = ("ours", other) if rep % 2 == 0 else (other, "ours")
                pair = time_configs(loaded, {n: configs[n] for n in names}, shape,
                                    backend, threads=threads, deployment=deployment,
                                    min_samples=41, max_seconds=15.0)
                got.append(pair[other].median_us / pair["ours"].median_us)
            ratio[other], ratios[other] = statistics.median(got), got
        # with --retime, the plan before re-timing against the isolated one too
        planned_vs_iso = ratio["isolated"] if alias["planned"] == alias["ours"] else (
            1.0 if alias["planned"] == alias["isolated"] else None)
        if planned_vs_iso is None:
            got = []
            for rep in range(pair_repeats):
                names = ("planned", "isolated") if rep % 2 == 0 else ("isolated", "planned")
                pair = time_configs(loaded, {n: configs[n] for n in names}, shape, backend,
                                    threads=threads, deployment=deployment, min_samples=41,
                                    max_seconds=15.0)
                got.append(pair["isolated"].median_us / pair["planned"].median_us)
            planned_vs_iso = statistics.median(got)
        loop = _loop_row(th, bound, planned, loaded, batches, backend, store, shape, threshold,
                         problem, make_plan, plan_within_bound, loss_mse, timer, retime)
        true = loop["ours_measured_mse"]
        row = loop | {
            "threshold": th, "bound": bound,
            "ours_speedup": speed["ours"], "ours_predicted": ours.predicted_speedup,
            "best_random_speedup": best_random, "macs_speedup": speed["macs"],
            "isolated_speedup": speed["isolated"],
            "ours_vs_random": ratio[best_name],
            "ours_vs_macs": ratio["macs"],
            "ours_vs_isolated": ratio["isolated"],
            "planned_speedup": speed["planned"], "planned_vs_isolated": planned_vs_iso,
            "planned_same_as_ours": alias["planned"] == alias["ours"],
            "retime": planned.retimed.to_dict() if planned.retimed is not None else None,
            "pair_ratios": {"random": ratios[best_name], "macs": ratios["macs"],
                            "isolated": ratios["isolated"]},
            # where the isolated-latency plan differs from ours, layer: (ours, isolated)
            "isolated_differs": {n: (ours.layers[n], configs["isolated"][n])
                                 for n in problem.layers
                                 if ours.layers[n] != configs["isolated"][n]},
            "ours_vs_random_9way": speed["ours"] / best_random,
            "ours_vs_macs_9way": speed["ours"] / speed["macs"],
            "ours_vs_isolated_9way": speed["ours"] / speed["isolated"],
            "ours_predicted_mse": ours.loss_mse, "ours_measured_mse": true,
            "measured_mse_over_bound": true / bound if bound > 0 else math.inf,
            "n_random": len(rand), "random_timed": len(ranked),
            "same_as_macs": alias["macs"] == alias["ours"],
            "same_as_isolated": alias["isolated"] == alias["ours"],
            "low_layers": {p: sum(v == p for v in ours.layers.values()) for p in problem.precisions},
            "spread_rel_max": max(t.rel_spread for t in timings.values()),
        }
        rows.append(row)
        print(f"  {th:>5}: ours {row['ours_speedup']:.3f}x (pred {row['ours_predicted']:.3f}x), "
              f"best random {best_random:.3f}x, macs {row['macs_speedup']:.3f}x, "
              f"isolated {row['isolated_speedup']:.3f}x; pairwise ours/other: random "
              f"{row['ours_vs_random']:.3f}, macs {row['ours_vs_macs']:.3f}, isolated "
              f"{row['ours_vs_isolated']:.3f}; loss MSE {true:.3g} / bound {bound:.3g}",
              flush=True)
    store.close()
    return {"model": loaded.name, "spec": model_spec or "demo", "shape": shape,
            "threads": threads, "device": report.device, "allow_unstable": allow_unstable,
            "deployment": deployment, "pair_repeats": pair_repeats, "retime": retime,
            "campaign_unstable": report.unstable, "campaign_measured": report.measured,
            "device_name": report.device_name, "layers": len(problem.layers),
            "precisions": list(problem.precisions), "prep_s": prep_s, "rows": rows,
            "random_method": "random layer order; random precision per layer kept while the "
                             f"predicted bound holds; {n_random} configs, top {top} by predicted "
                             "latency measured"}


def _loop_row(th, bound, planned, loaded, batches, backend, store, shape, threshold, problem,
              make_plan, plan_within_bound, loss_mse, timer=None, retime=0) -> dict:
    """The true loss MSE of the plan, then the closed loop until it is within the bound
    (re-timing each new plan's candidates when ``timer`` is given, as ``hwcost run``)."""
    def plan(scale):
        return make_plan(store, None, None, shape, threshold, problem=problem, loss_scale=scale,
                         retime=timer, retime_k=retime)

    def measure(layers):
        return loss_mse(loaded, {"p": layers}, batches, backend)["p"]

    first = measure(planned.solution.layers)
    loop = plan_within_bound(plan, measure, bound, first=planned, first_measured=first,
                             report=lambda line: print(f"    {th}: {line}", flush=True))
    last = loop.rounds[-1]
    return {"threshold": th, "bound": bound, "ours_measured_mse": first,
            "ours_predicted_mse": planned.solution.loss_mse,
            "p_not_fastest": planned.p_not_fastest,
            "measured_mse_over_bound": first / bound if bound > 0 else math.inf,
            "loop_rounds": loop.to_dict()["rounds"], "loop_measured_mse": last.measured_mse,
            "loop_mse_over_bound": loop.measured_over_bound,
            "loop_predicted_speedup": last.predicted_speedup}


# ------------------------------------------------------------------------------ report


def _target(name: str, value: float, unit: str, op: str, limit: float) -> str:
    ok = value <= limit if op == "<=" else value >= limit
    return f"target: {name} = {value:.4g} {unit} (goal {op} {limit:g}) {'met' if ok else 'missed'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["a", "b", "all"], default="all")
    ap.add_argument("--model", default=None, help="model spec for part b (default: demo model)")
    ap.add_argument("--db", default=None, help="store for part b (default: a temp SQLite file)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--thresholds", default="5%,15%,40%",
                    help="loss-MSE bounds for part b (share of the fastest plan's loss MSE)")
    ap.add_argument("--biased-model", default="tests.factories:small_qwen2",
                    help="second model for part b (a biased family), closed loop only; "
                         "'' to skip")
    ap.add_argument("--deployment", choices=("compiled", "eager"), default="compiled",
                    help="what part b profiles, plans on and times: compiled (torch.compile, "
                         "inductor: fusions are interactions per-layer timing cannot see) or "
                         "eager (linked layers)")
    ap.add_argument("--precisions", default=None,
                    help="precisions part b profiles and plans with (default: fp32,bf16,int8 "
                         "compiled, the CPU's candidates eager)")
    ap.add_argument("--clock", choices=("wall", "thread"), default=None,
                    help="timing clock of part b (thread: the calling thread's CPU time, which "
                         "leaves out other processes' slices on a shared machine; needs "
                         "--threads 1); default $HWCOST_BENCH_CLOCK, else wall")
    ap.add_argument("--retime", type=int, default=4, metavar="K",
                    help="ours re-times up to K candidate plans end to end and keeps the "
                         "measured fastest (`hwcost run --retime K`); 0: the plan as planned. "
                         "The plan before re-timing is reported next to it")
    ap.add_argument("--pair-repeats", type=int, default=3,
                    help="independent pairwise timings of ours against each rival (each "
                         "deployed afresh, alternating which is named first); the ratio "
                         "columns and targets use their median")
    ap.add_argument("--shape", default="batch=1,seq=128,phase=prefill",
                    help="the shape part b profiles, plans for and times (short prompts: "
                         "per-layer casts and activation quantizations weigh more, and so "
                         "do the interactions between layers that share them)")
    ap.add_argument("--allow-unstable", action="store_true",
                    help="plan part b on timings the stability policy refused as unstable (a "
                         "busy shared machine); the results record it")
    args = ap.parse_args()
    if args.clock:
        if args.clock == "thread" and args.threads != 1:
            ap.error("--clock thread needs --threads 1")
        os.environ["HWCOST_BENCH_CLOCK"] = args.clock  # every timing of part b, campaign too
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / "planner.json"
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    result["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                         "processor": cpu_model_and_flags()[0], "threads": args.threads,
                         "clock": os.environ.get("HWCOST_BENCH_CLOCK", "wall"),
                         "load_avg_1min_start": _load()}
    if args.part in ("a", "all"):
        print("(a) solver on the 70B-shaped problem", flush=True)
        result["a"] = part_a()
    if args.part in ("b", "all"):
        print("(b) demo model on this CPU", flush=True)
        precs = (args.precisions.split(",") if args.precisions else
                 ["fp32", "bf16", "int8"] if args.deployment == "compiled" else None)
        try:
            result["b"] = part_b(args.model, args.db, args.threads, args.thresholds.split(","),
                                 allow_unstable=args.allow_unstable, deployment=args.deployment,
                                 precisions=precs, pair_repeats=args.pair_repeats,
                                 retime=args.retime, shape=args.shape)
        except Exception as e:  # noqa: BLE001 - report what is missing, keep part a's results
            result["b"] = {"error": f"{type(e).__name__}: {e}"}
            print(f"  part b could not run: {result['b']['error']}", flush=True)
        if args.biased_model:
            print(f"(b) {args.biased_model}: closed loop", flush=True)
            try:
                result["b_biased"] = part_b(args.biased_model, None, args.threads,
                                            args.thresholds.split(","), compare=False,
                                            allow_unstable=args.allow_unstable,
                                            deployment=args.deployment, precisions=precs,
                                            retime=args.retime, shape=args.shape)
            except Exception as e:  # noqa: BLE001 - reported, the other results are kept
                result["b_biased"] = {"error": f"{type(e).__name__}: {e}"}
                print(f"  could not run: {result['b_biased']['error']}", flush=True)
    result["machine"]["load_avg_1min_end"] = _load()
    out_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    targets = targets_of(result)
    (RESULTS / "planner.md").write_text(markdown(result, targets))
    print()
    for t in targets:
        print(t)


def targets_of(result: dict) -> list[str]:
    out = []
    a = result.get("a")
    if a:
        out.append(_target("planner_70b_solve_s", a["worst_solve_s"], "s", "<=", 1.0))
        out.append(_target("planner_70b_sweep50_s", a["sweep_s"], "s", "<=", 10.0))
    b = result.get("b")
    if b and "rows" in b:
        rows = b["rows"]
        out.append(_target("planner_vs_best_random", 100 * min(r["ours_vs_random"] for r in rows),
                           "%", ">=", 95.0))
        out.append(_target("planner_vs_macs_plan", min(r["ours_vs_macs"] for r in rows), "x", ">=", 1.0))
        out.append(_target("planner_vs_isolated_plan", min(r["ours_vs_isolated"] for r in rows),
                           "x", ">=", 1.03))
        # A bound where both planners pick the same plan reads 1.000 by construction (one plan
        # timed against itself), so the min over all bounds can never reach 1.03 there; the
        # comparison that says something is over the bounds where the plans differ. Both
        # are printed; the one above is the definition.
        differ = [r["ours_vs_isolated"] for r in rows if not r.get("same_as_isolated")]
        if differ:
            out.append(_target("planner_vs_isolated_plan_where_plans_differ", min(differ),
                               "x", ">=", 1.03))
    loops = [r["loop_mse_over_bound"] for k in ("b", "b_biased")
             for r in (result.get(k) or {}).get("rows", []) if "loop_mse_over_bound" in r]
    if loops:
        out.append(_target("planner_measured_mse_over_bound", max(loops), "x", "<=", 1.0))
    return out


def markdown(result: dict, targets: list[str]) -> str:
    m = result["machine"]
    lines = ["# Planner benchmark", "", f"Machine: {m['processor']}, {m['platform']}, "
             f"Python {m['python']}, {m['threads']} threads, {m.get('clock', 'wall')} clock; "
             f"1-minute load average {m.get('load_avg_1min_start')} at start, "
             f"{m.get('load_avg_1min_end')} at end.", ""]
    a = result.get("a")
    if a:
        inst = a["instance"]
        lines += ["## (a) Solver on a 70B-shaped problem", "",
                  f"{inst['subgraphs']} subgraph instances, {inst['layers']} layers, "
                  f"{inst['precisions']} precisions, {inst['options']} options before pruning; "
                  "synthetic H100 costs. CP-SAT, one worker, seed 0, integer-scaled; "
                  f"largest relative difference from SCIP on float coefficients: "
                  f"{a['max_rel_diff_vs_scip']:.2e}.", "",
                  f"1-minute load average when it ran: {a.get('load_avg_1min')} on "
                  f"{_ncpu()} CPUs (wall times include waiting for a CPU; CPU times do not).", "",
                  "| seed | bound | status | solve s (wall) | CPU s | predicted speedup | options kept |",
                  "|---|---|---|---|---|---|---|"]
        for r in a["rows"]:
            lines.append(f"| {r['seed']} | {r['bound']} | {r['status']} | {r['solve_s']} | "
                         f"{r.get('cpu_s', '-')} | {r['speedup']} | {r['kept_options']} |")
        lines += ["", f"50-point sweep, wall: {', '.join(f'{s:.2f}' for s in a['sweep_s_all'])} s; "
                      f"CPU: {', '.join(f'{s:.2f}' for s in a.get('sweep_cpu_s_all', []))} s "
                      "(one per seed).", ""]
    b = result.get("b")
    if b and "rows" in b:
        lines += [f"## (b) {b['model']} on this CPU ({b['device_name']}, {b['threads']} threads)",
                  "", f"{b['layers']} layers, precisions {', '.join(b['precisions'])}, shape "
                  f"{b['shape']}. {_DEPLOYMENT.get(b.get('deployment', 'eager'), '')} "
                  + (f"'Ours' re-times up to {b['retime']} candidate plans end to end and "
                     "keeps the measured fastest (`hwcost run --retime`, planner/retime.py). "
                     if b.get("retime", 0) > 1 else "") +
                  f"Random baseline: {b['random_method']}. Speedups are measured "
                  "end to end, interleaved, against the fp32 model; the ratio columns (which the "
                  "targets use) are the median of "
                  f"{b.get('pair_repeats', 1)} further pairwise interleaved timings of ours "
                  "against each competitor (each deployed afresh, alternating which is named "
                  "first)."
                  + (f" Planned on unstable timings (--allow-unstable): the campaign's "
                     f"stability policy refused {b.get('campaign_unstable')} of "
                     f"{b.get('campaign_measured')} as good (a busy machine)."
                     if b.get("allow_unstable") else ""), "",
                  "| bound | ours | predicted | best random | MAC plan | isolated plan | "
                  "loss MSE measured / bound | ours / best random | ours / MAC | ours / isolated |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in b["rows"]:
            lines.append(f"| {r['threshold']} ({r['bound']:.3g}) | {r['ours_speedup']:.3f}x | "
                         f"{r['ours_predicted']:.3f}x | {r['best_random_speedup']:.3f}x | "
                         f"{r['macs_speedup']:.3f}x | {r['isolated_speedup']:.3f}x | "
                         f"{r['measured_mse_over_bound']:.2f} | {r['ours_vs_random']:.3f} | "
                         f"{r['ours_vs_macs']:.3f} | {r['ours_vs_isolated']:.3f} |")
        lines.append("")
        if any("isolated_differs" in r for r in b["rows"]):
            lines += ["Where the isolated-latency plan differs from ours (layer: ours -> "
                      "isolated), and the pairwise ratios ours/isolated of each repeat:", ""]
            for r in b["rows"]:
                d = r.get("isolated_differs") or {}
                what = ", ".join(f"{n.replace('model.layers.', 'L')}: {a} -> {c}"
                                 for n, (a, c) in d.items()) or "the same plan"
                reps = ", ".join(f"{x:.3f}" for x in r.get("pair_ratios", {}).get("isolated", []))
                rt = r.get("retime")
                retimed = ""
                if rt and len(rt["candidates"]) > 1:
                    c = rt["candidates"]
                    us = ", ".join(f"{x['measured_us']:.0f}" for x in c)
                    retimed = (f"; re-timing {len(c)} candidates end to end "
                               f"({us} us) kept "
                               f"candidate {rt['kept'] + 1} ({c[rt['kept']]['origin']}); the "
                               "plan before re-timing: ours/isolated "
                               f"{r['planned_vs_isolated']:.3f}")
                lines.append(f"- {r['threshold']}: {what}" + (f" (repeats {reps})" if reps else "")
                             + retimed)
            lines += ["", "`planner_vs_isolated_plan` is the minimum over every bound, as the "
                      "issue defines it; at a bound where both planners pick the same plan it "
                      "reads 1.000 by construction, so it cannot reach 1.03 whenever one bound "
                      "gives the same plan. `planner_vs_isolated_plan_where_plans_differ` is "
                      "the minimum over the bounds where the plans differ, the comparison that "
                      "measures something; both are printed.", ""]
    elif b:
        lines += ["## (b) demo model", "", f"Not run: {b['error']}", ""]
    for key in ("b", "b_biased"):
        bb = result.get(key)
        if not bb or "rows" not in bb or "loop_rounds" not in bb["rows"][0]:
            if bb and "error" in bb and key == "b_biased":
                lines += ["## Closed loop, biased family", "", f"Not run: {bb['error']}", ""]
            continue
        lines += [f"## Closed loop on the loss bound: {bb['model']} ({bb.get('spec', '')})", "",
                  "First plan's measured loss MSE over the bound, then each round of re-planning "
                  "with predictions scaled by the measured ratio (held-out data, deployed "
                  "model). 'p(not fastest)': the chance a rival plan is faster, gains sampled "
                  "within their spread.", "",
                  "| bound | p(not fastest) | first plan: measured / bound | rounds | "
                  "after the loop: measured / bound | predicted speedup after |",
                  "|---|---|---|---|---|---|"]
        for r in bb["rows"]:
            rounds = "; ".join(f"x{x['loss_scale']:.2f} -> {x['measured_mse'] / r['bound']:.2f}"
                               for x in r["loop_rounds"])
            pn = r.get("p_not_fastest")
            lines.append(f"| {r['threshold']} ({r['bound']:.3g}) | "
                         f"{'-' if pn is None else f'{pn:.0%}'} | "
                         f"{r['measured_mse_over_bound']:.2f} | {rounds} | "
                         f"{r['loop_mse_over_bound']:.2f} | {r['loop_predicted_speedup']:.3f}x |")
        lines.append("")
    lines += ["## Targets", "", "```", *targets, "```", ""]
    return "\n".join(lines)


_DEPLOYMENT = {
    "compiled": "Deployment **compiled**: the campaign, the isolated per-layer latencies (each "
                "layer compiled alone) and every end-to-end timing run under torch.compile "
                "(inductor), whose fusions are interactions per-layer timing cannot see.",
    "eager": "Deployment **eager** (linked layers: shared activation quantization, bf16 "
             "chains)."}


def _ncpu() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _load() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


if __name__ == "__main__":
    main()
