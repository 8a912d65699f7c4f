"""Exports benchmark: the model deployed through each export that runs on this machine, against
the plan's prediction.

On the demo model on this CPU: profile and compute the Taylor table when the store lacks them
(as ``bench/planner.py`` does), solve a plan, then deploy it

  backend       planner.deploy.deploy (the kernels profiling timed; what ``hwcost validate`` runs)
  saved         ``hwcost deploy`` output (safetensors) loaded back with planner.deploy.load_deployed
  torchao       the torchao export applied as docs/planner.md says (quantize_ + the cast step)
  transformers  the torchao export loaded through transformers' TorchAoConfig (+ the cast step)

and measure, in one interleaved timing run against the undeployed fp32 model, each one's
speedup, plus its true loss MSE on held-out text (``data/corpus/test.txt``) and whether every
layer runs in its planned precision. The INC FP8 export needs a Gaudi (habana_frameworks) and
is reported as not run here; what is checked for it on this CPU is in tests/planner/test_inc.py.

The plan's prediction comes from the store's profiles (bench/planner.py's store by default:
profiled at 2 threads, wall clock, whatever the machine's load was then).

Usage: python bench/exports.py [--db URL] [--threads 1 --clock thread | --threads 2 --clock wall]
                               [--threshold 15%]
Writes bench/results/exports.json and bench/results/exports.md; ends with ``target:`` lines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT)]

from hwcost.device import cpu_model_and_flags  # noqa: E402

RESULTS = HERE / "results"
SHAPE = "batch=1,seq=128,phase=prefill"


def _bench_planner():
    """bench/planner.py as a module (its name clashes with the ``planner`` package)."""
    spec = importlib.util.spec_from_file_location("bench_planner", HERE / "planner.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_plan(store, loaded, threshold: str, threads: int):
    from hwcost.planner.export import plan_document
    from hwcost.planner.objectives import parse_threshold
    from hwcost.planner.problem import build_problem
    from hwcost.planner.solve import solve

    report = _bench_planner().ensure_inputs(store, loaded, SHAPE, threads)
    problem = build_problem(store, report.model_fingerprint, report.device, SHAPE)
    bound = parse_threshold(threshold).resolve(problem)
    return plan_document(solve(problem, bound, "time"), threshold=threshold)


def doc_blocks(*titles: str) -> str:
    """The python blocks of docs/planner.md titled ``# torchao export: <title>``, in order."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "planner.md").read_text(), re.S)
    return "\n".join(next(b for b in blocks if b.startswith(f"# torchao export: {t}\n"))
                     for t in titles)


def torchao_deployed(doc, workdir: Path, via: str):
    """The demo model deployed through the torchao export exactly as the docs apply it."""
    from hwcost.planner.export import to_torchao
    from hwcost.profiles.loading import demo_model_dir, load_model

    (workdir / "plan.torchao.json").write_text(json.dumps(to_torchao(doc)))
    if via == "quantize_":
        scope = {"model": load_model(None).model}
        code = doc_blocks("load", "apply with quantize_", "casts")
    else:
        scope = {"model_dir": str(demo_model_dir())}
        code = doc_blocks("load", "load through transformers", "casts")
    import os

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        exec(compile(code, f"docs/planner.md ({via})", "exec"), scope)
    finally:
        os.chdir(cwd)
    return scope["model"].eval()


def run(db_url: str | None, threads: int, threshold: str, clock: str = "wall") -> dict:
    import numpy as np
    import torch
    from hwcost.planner.apply import eval_batches, model_dataflow
    from hwcost.planner.deploy import deploy, deployed_layers, load_deployed, save_deployed
    from hwcost.profiles.backends import get_backend
    from hwcost.profiles.bench import time_interleaved
    from hwcost.profiles.loading import load_model
    from hwcost.sensitivity.reference import per_sample_losses

    from hwcost.store import open_store

    torch.set_num_threads(threads)
    backend = get_backend("cpu")
    loaded = load_model(None)
    url = db_url or f"sqlite:///{Path(tempfile.gettempdir()) / 'hwcost-bench-planner.db'}"
    t0 = time.perf_counter()
    with open_store(url) as store:
        doc = make_plan(store, loaded, threshold, threads)
    prep_s = time.perf_counter() - t0
    planned = dict(doc.layers)
    counts = doc.precision_counts()
    print(f"  plan at {threshold}: {counts}; predicted {doc.predicted.speedup:.3f}x, "
          f"loss MSE {doc.predicted.loss_mse:.3g} (prep {prep_s:.0f} s)", flush=True)

    models, errors = {"baseline": loaded.model}, {}
    # linked as the campaign timed it and `hwcost validate` runs it (bf16 chains, shared inputs)
    flow = model_dataflow(loaded, backend)
    models["backend"] = deploy(loaded.model, doc, backend, dataflow=flow)
    work = Path(tempfile.mkdtemp(prefix="hwcost-exports-"))
    save_deployed(models["backend"], doc, work / "deployed")
    models["saved"] = load_deployed(work / "deployed", load_model(None).model, backend,
                                    dataflow=flow)
    for name, via in (("torchao", "quantize_"), ("transformers", "transformers")):
        try:
            models[name] = torchao_deployed(doc, work, via)
        except Exception as e:  # noqa: BLE001 - an export that fails is a result to report
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            print(f"  {name}: failed: {errors[name]}", flush=True)

    dtype_ok = {}
    for name, m in models.items():
        if name == "baseline":
            continue
        got = {n: d.precision for n, d in deployed_layers(m).items()}
        dtype_ok[name] = got == planned
    inputs = [loaded.inputs_for(SHAPE, seed=i) for i in range(3)]

    def runner(m):
        def f(inp):
            with torch.inference_mode():
                return m(**inp)
        return f

    # every forward pass must run before it is timed
    for name, m in list(models.items()):
        try:
            runner(m)(inputs[0])
        except Exception as e:  # noqa: BLE001
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            models.pop(name)
    timings = time_interleaved({n: runner(m) for n, m in models.items()}, inputs, backend,
                               threads=threads, min_samples=21, max_seconds=20.0, clock=clock)
    batches = eval_batches(loaded, None, samples=64)
    ref = per_sample_losses(loaded.model, batches).numpy()
    rows = []
    base_us = timings["baseline"].median_us
    for name, m in models.items():
        if name == "baseline":
            continue
        q = per_sample_losses(m, batches).numpy()
        mse = float(np.mean(np.square(q - ref)))
        t = timings[name]
        rows.append({"export": name, "runs": True, "dtypes_as_planned": dtype_ok[name],
                     "median_us": t.median_us, "rel_spread": t.rel_spread,
                     "speedup": base_us / t.median_us, "loss_mse": mse})
    for name, err in errors.items():
        rows.append({"export": name, "runs": False, "error": err})
    rows.append({"export": "inc", "runs": False,
                 "error": "needs an Intel Gaudi (habana_frameworks); its config, names and "
                          "quantizer are checked on this CPU by tests/planner/test_inc.py"})
    by = {r["export"]: r for r in rows}
    for r in rows:
        if r.get("runs"):
            print(f"  {r['export']:>12}: {r['speedup']:.3f}x ({r['median_us']:.0f} us), loss MSE "
                  f"{r['loss_mse']:.3g}, dtypes as planned: {r['dtypes_as_planned']}", flush=True)
    backend_us = by["backend"]["median_us"]
    return {"model": loaded.name, "shape": SHAPE, "threads": threads, "clock": clock,
            "threshold": threshold,
            "plan_counts": counts, "predicted_speedup": doc.predicted.speedup,
            "predicted_loss_mse": doc.predicted.loss_mse, "baseline_us": base_us,
            "prep_s": prep_s, "rows": rows,
            "torchao_vs_backend": (backend_us / by["torchao"]["median_us"]
                                   if by.get("torchao", {}).get("runs") else None),
            "transformers_vs_backend": (backend_us / by["transformers"]["median_us"]
                                        if by.get("transformers", {}).get("runs") else None)}


def targets_of(result: dict) -> list[str]:
    ao = next((r for r in result["rows"] if r["export"] == "torchao"), {})
    runs = bool(ao.get("runs") and ao.get("dtypes_as_planned"))
    out = [f"target: export_torchao_runs = {'yes' if runs else 'no'} (goal yes) "
           f"{'met' if runs else 'missed'}"]
    ratio = result.get("torchao_vs_backend")
    if ratio is None:
        out.append("target: export_speed_vs_backend = nan x (goal >= 0.95) missed")
    else:
        out.append(f"target: export_speed_vs_backend = {ratio:.3f} x (goal >= 0.95) "
                   f"{'met' if ratio >= 0.95 else 'missed'}")
    return out


def markdown(result: dict, targets: list[str]) -> str:
    m = result["machine"]
    why = " (the timing thread's CPU time: the machine is shared)" if result["clock"] == "thread" else ""
    lines = ["# Exports benchmark", "",
             f"Machine: {m['processor']}, {m['platform']}, Python {m['python']}, "
             f"{result['threads']} thread(s), {result['clock']} clock"
             f"{why}"
             f"; 1-minute load average at the end {result.get('load', '?')}. "
             f"Model: {result['model']}, shape {result['shape']}.", "",
             f"Plan at {result['threshold']} of the all-lowest-precision loss MSE: "
             f"{result['plan_counts']}; predicted speedup {result['predicted_speedup']:.3f}x, "
             f"predicted loss MSE {result['predicted_loss_mse']:.4g}. Baseline (fp32, undeployed) "
             f"{result['baseline_us']:.0f} us; all deployments timed interleaved in one run. The "
             "prediction comes from the store's profiles (2 threads, wall clock, timed on this "
             "shared machine under whatever load it had then), so 'vs predicted' compares "
             "different timing conditions; the export-against-backend ratio does not.", "",
             "| export | runs | dtypes as planned | median us | speedup | vs predicted | "
             "loss MSE | vs predicted |", "|---|---|---|---|---|---|---|---|"]
    ps, pl = result["predicted_speedup"], result["predicted_loss_mse"]
    for r in result["rows"]:
        if r.get("runs"):
            lratio = r["loss_mse"] / pl if pl else float("nan")
            lines.append(f"| {r['export']} | yes | {r['dtypes_as_planned']} | {r['median_us']:.0f} | "
                         f"{r['speedup']:.3f}x | {r['speedup'] / ps:.3f} | {r['loss_mse']:.4g} | "
                         f"{lratio:.3f} |")
        else:
            lines.append(f"| {r['export']} | no: {r['error']} | | | | | | |")
    tv = result.get("torchao_vs_backend")
    tf = result.get("transformers_vs_backend") or float("nan")
    lines += ["", f"torchao-deployed speed relative to the backend's deployment: "
              f"{tv:.3f}x (transformers-loaded: {tf:.3f}x)."
              if tv else "torchao export did not run.", "",
              "Why torchao is slower here: in eager mode torchao's int8 layer quantizes activations "
              "through its generic affine-quantization ops (choose_qparams_affine, quantize_affine) "
              "and, on a CPU with VNNI but no AMX, shifts them to uint8 and subtracts a per-call "
              "weight-sum compensation around torch._int_mm; the backend's layer computes the "
              "per-token scale and rounding directly and calls torch._int_mm on int8. Its int8 "
              "scale is absmax/127.5 (codes -128..127) where ours is absmax/127, hence a slightly "
              "different loss MSE.", "", "```", *targets, "```", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=None, help="store (default: bench/planner.py's temp SQLite file)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["thread", "wall"], default="thread",
                    help="thread: the timing thread's CPU time (one thread; robust on a shared, "
                         "loaded machine), wall: wall-clock time")
    ap.add_argument("--threshold", default="15%",
                    help="loss-MSE bound of the plan (share of the all-lowest-precision MSE)")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.clock == "thread" and args.threads != 1:
        ap.error("--clock thread times one thread: use --threads 1")
    result = run(args.db, args.threads, args.threshold, args.clock)
    try:
        result["load"] = float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        result["load"] = None
    result["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                         "processor": cpu_model_and_flags()[0]}
    targets = targets_of(result)
    (RESULTS / "exports.json").write_text(json.dumps({**result, "targets": targets}, indent=2,
                                                     default=str) + "\n")
    (RESULTS / "exports.md").write_text(markdown(result, targets))
    print()
    for t in targets:
        print(t)


if __name__ == "__main__":
    main()
