"""Sensitivity benchmark on the demo model: Taylor loss-MSE against measured loss MSE.

1. The whole table (every quantizable layer x bf16/fp8_e4m3/int8) by the Taylor method (one
   forward+backward over the calibration set), the noise-model variant, the Fisher-style
   baseline (ModelOpt AutoQuantize's sum g^2 dY^2), the weight-error-only proxy, and the direct
   ground truth (one forward run per layer and precision, as CalibTIP).
2. Per-layer Spearman of each method against the direct ground truth.
3. 50 random mixed configurations: measured loss MSE (emulated, forward only) against each
   method's predicted sum: Spearman, Pearson, ratio predicted/measured; scatter plot.
4. Wall time and peak memory of the Taylor table and the direct table, and of a plain
   forward+backward over the same data. Each runs in its own child process; peak memory is the
   rise of the resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs just
   before the work) above the RSS before it, so all three are measured the same way; blocks of
   64 KiB and more come straight from mmap (MALLOC_MMAP_THRESHOLD_) so that freed tensors leave
   the resident set and fragmentation of the heap does not count as use (a second run of each
   child; wall times come from the run with the default allocator).

    python bench/sensitivity.py [--samples 64 --seq-len 128 --configs 50 --threads 2]

Writes bench/results/sensitivity.{json,md,png}; ends with one ``target:`` line per target.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT))

PRECISIONS = ["bf16", "fp8_e4m3", "int8"]


# ------------------------------------------------------------------------------ setup


def load(args) -> tuple:
    """(name, model, calibration set); the trained demo model, or a same-shape random-init
    stand-in when it is not built yet (``--allow-random``)."""
    import torch

    torch.set_num_threads(args.threads)
    from hwcost.profiles.loading import demo_model_dir, load_model
    from hwcost.sensitivity.data import load_calibration

    corpus = ROOT / "data" / "corpus" / "valid.txt"
    if (demo_model_dir() / "config.json").exists():
        loaded = load_model(None)
        name, model, tok = "demo (trained)", loaded.model, loaded.tokenizer
    elif args.allow_random:
        spec = importlib.util.spec_from_file_location("train_demo", ROOT / "data" / "train_demo.py")
        td = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(td)
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(td.build_config(6)).float().eval()
        model.config.use_cache = False
        name, tok = "random-init stand-in (demo shape)", td.build_tokenizer()
    else:
        sys.exit(f"demo model not found at {demo_model_dir()}; build it or pass --allow-random")
    calib = load_calibration(corpus, tokenizer=tok, samples=args.samples, seq_len=args.seq_len,
                             seed=0, vocab_size=model.config.vocab_size)
    return name, model, calib


def _hwm_kb() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _rss_kb() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def child(args) -> None:
    """Run one method in this process and print wall time, peak memory (and the table)."""
    from hwcost.sensitivity.loss import causal_lm_loss
    from hwcost.sensitivity.reference import direct_table
    from hwcost.sensitivity.taylor import analyze

    _, model, calib = load(args)
    batches = calib.batches(args.batch_size)
    import torch

    def plain():
        # the reference: an ordinary training-style step, parameter gradients included
        for b in batches:
            causal_lm_loss(model, b).sum().backward()
        model.zero_grad(set_to_none=True)

    work = {
        "plain": plain,
        "taylor": lambda: analyze(model, batches, precisions=PRECISIONS),
        "direct": lambda: direct_table(model, batches, precisions=PRECISIONS),
    }[args.child]
    with torch.no_grad():  # warm-up: one forward so that one-time allocations are not counted
        causal_lm_loss(model, batches[0])
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    before = _rss_kb()
    t0 = time.perf_counter()
    out = work()
    wall = time.perf_counter() - t0
    peak = _hwm_kb()
    res = {"method": args.child, "wall_s": wall, "peak_rise_mb": (peak - before) / 1024,
           "rss_before_mb": before / 1024, "threads": torch.get_num_threads()}
    if out is not None:
        res["table"] = out.to_dict()
    print("RESULT " + json.dumps(res))


def run_child(method: str, args, calib_fp: str) -> dict:
    """Run one method in a fresh process; with ``--reuse-runs``, a saved result of the same
    method, calibration set and thread count is read back instead."""
    saved = RESULTS / "sensitivity_runs" / f"{method}.json"
    if args.reuse_runs and saved.exists():
        res = json.loads(saved.read_text())
        if res.get("calib_fingerprint") == calib_fp and res.get("threads") == args.threads:
            return res
    res = _spawn(method, args, mmap=False)  # wall time: the default allocator
    mem = _spawn(method, args, mmap=True)  # peak memory: freed blocks leave the resident set
    res["peak_rise_mb_default_malloc"] = res["peak_rise_mb"]
    res["peak_rise_mb"] = mem["peak_rise_mb"]
    res["calib_fingerprint"] = calib_fp
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(res))
    return res


def _spawn(method: str, args, mmap: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--samples", str(args.samples),
           "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads)] + (["--allow-random"] if args.allow_random else [])
    # Large blocks straight from mmap, returned to the system when freed: the resident set then
    # follows live tensor memory instead of what glibc's heap keeps after fragmentation.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"} if mmap else None
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child {method} failed:\n{proc.stderr[-3000:]}")


# ------------------------------------------------------------------------------ main


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--configs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--allow-random", action="store_true",
                    help="use a random-init model of the demo's shape if the demo model is missing")
    ap.add_argument("--reuse-runs", action="store_true",
                    help="reuse saved child results (same calibration set and threads)")
    ap.add_argument("--child", choices=["plain", "taylor", "direct"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    import numpy as np
    from hwcost.sensitivity.records import SensitivityTable
    from hwcost.sensitivity.reference import fisher_table, weight_only_table
    from hwcost.sensitivity.taylor import analyze
    from hwcost.sensitivity.validate import random_configs, scatter_plot, validate

    name, model, calib = load(args)
    batches = calib.batches(args.batch_size)
    print(f"model: {name}; calibration: {calib.source} {calib.n_samples} x {calib.seq_len} tokens "
          f"({calib.fingerprint[:12]}); threads: {args.threads}")

    # timings and memory, each in a fresh process
    runs = {m: run_child(m, args, calib.fingerprint) for m in ("plain", "taylor", "direct")}
    tables = {
        "taylor": SensitivityTable.from_dict(runs["taylor"]["table"]),
        "direct": SensitivityTable.from_dict(runs["direct"]["table"]),
    }
    t0 = time.perf_counter()
    tables["noise"] = analyze(model, batches, precisions=PRECISIONS, method="noise")
    noise_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tables["fisher"] = fisher_table(model, batches, precisions=PRECISIONS)
    fisher_s = time.perf_counter() - t0
    tables["weight_only"] = weight_only_table(model, precisions=PRECISIONS)
    layers = tables["taylor"].layers

    # per-layer agreement with the direct ground truth
    keys = [(r.layer, r.precision) for r in tables["direct"].rows]
    direct_vals = np.array([tables["direct"].loss_mse(*k) for k in keys])
    per_layer = {}
    for m in ("taylor", "noise", "fisher", "weight_only"):
        vals = np.array([tables[m].loss_mse(*k) for k in keys])
        per_layer[m] = {"spearman_all": spearman(vals, direct_vals)}
        for p in PRECISIONS:
            idx = [i for i, k in enumerate(keys) if k[1] == p]
            per_layer[m][f"spearman_{p}"] = spearman(vals[idx], direct_vals[idx])
        if m in ("taylor", "noise", "fisher"):
            per_layer[m]["median_ratio_to_direct"] = float(np.median(vals / direct_vals))

    # random mixed configurations: measured against predicted sums
    configs = random_configs(layers, PRECISIONS, args.configs, seed=0)
    t0 = time.perf_counter()
    others = {m: tables[m] for m in ("noise", "fisher", "weight_only", "direct")}
    result = validate(model, batches, tables["taylor"], configs, baselines=others)
    validate_s = time.perf_counter() - t0
    summary = {"taylor": result.summary(), **result.to_dict()["baselines"]}
    plot = scatter_plot(result, RESULTS / "sensitivity.png",
                        title=f"{name}: {args.configs} random configurations")

    speedup = runs["direct"]["wall_s"] / runs["taylor"]["wall_s"]
    mem_ratio = runs["taylor"]["peak_rise_mb"] / runs["plain"]["peak_rise_mb"]
    meas = result.measured
    report = {
        "model": name, "n_layers": len(layers), "precisions": PRECISIONS,
        "calibration": {"source": calib.source, "samples": calib.n_samples, "seq_len": calib.seq_len,
                        "fingerprint": calib.fingerprint, "batch_size": args.batch_size},
        "threads": args.threads,
        "timing": {m: {k: v for k, v in r.items() if k != "table"} for m, r in runs.items()},
        "noise_s": noise_s, "fisher_s": fisher_s, "validate_s": validate_s,
        "speedup_vs_direct": speedup, "memory_vs_plain_fwd_bwd": mem_ratio,
        "per_layer_vs_direct": per_layer, "configs": summary,
        "measured_range": [float(meas.min()), float(meas.max())],
        "points": result.to_dict()["points"], "plot": str(plot.relative_to(ROOT)),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sensitivity.json").write_text(json.dumps(report, indent=2))

    lines = ["# Sensitivity benchmark\n",
             f"Model: {name}, {len(layers)} quantizable layers x {', '.join(PRECISIONS)}. "
             f"Calibration: {calib.source}, {calib.n_samples} x {calib.seq_len} tokens, batch "
             f"{args.batch_size}, {args.threads} threads. Measured loss MSE of the {args.configs} "
             f"configurations spans {meas.min():.3g} .. {meas.max():.3g}.\n",
             "## Random mixed configurations: predicted sum vs measured loss MSE\n",
             "| method | Spearman | Pearson | Pearson (logs) | pred/meas median | IQR |",
             "|---|---|---|---|---|---|"]
    for m in ("taylor", "noise", "fisher", "weight_only", "direct"):
        s = summary[m]
        lines.append(f"| {m} | {s['spearman']:.4f} | {s['pearson']:.4f} | {s['pearson_log']:.4f} | "
                     f"{s['ratio_median']:.3g} | {s['ratio_p25']:.3g} - {s['ratio_p75']:.3g} |")
    lines += ["", "(`direct` = sum of the per-layer measured ground truth: the best any additive "
              "per-layer table can do; `weight_only` is in weight units, only its ranking counts.)", "",
              "## Per-layer agreement with the direct ground truth (Spearman over layers)\n",
              "| method | all (layer, precision) | " + " | ".join(PRECISIONS) + " | median s/direct |",
              "|---|---|" + "---|" * len(PRECISIONS) + "---|"]
    for m, d in per_layer.items():
        ratio = d.get("median_ratio_to_direct")
        lines.append(f"| {m} | {d['spearman_all']:.4f} | "
                     + " | ".join(f"{d[f'spearman_{p}']:.4f}" for p in PRECISIONS)
                     + (f" | {ratio:.3g} |" if ratio is not None else " | - |"))
    lines += ["", "## Cost of the whole table\n", "| run | wall s | peak memory rise MB |",
              "|---|---|---|"]
    for m in ("plain", "taylor", "direct"):
        r = runs[m]
        label = {"plain": "plain forward+backward (reference)", "taylor": "Taylor table (all layers, "
                 "all precisions)", "direct": "direct table (one forward per layer and precision)"}[m]
        lines.append(f"| {label} | {r['wall_s']:.2f} | {r['peak_rise_mb']:.1f} |")
    lines += ["", f"Noise-model table {noise_s:.2f} s, Fisher table {fisher_s:.2f} s (in the parent "
              f"process), validation of {args.configs} configurations {validate_s:.1f} s.", "",
              "![scatter](sensitivity.png)", ""]
    (RESULTS / "sensitivity.md").write_text("\n".join(lines))
    print("\n".join(lines))

    sp = summary["taylor"]["spearman"]
    print(f"target: spearman_predicted_vs_measured = {sp:.4f} (goal >= 0.9) "
          f"{'met' if sp >= 0.9 else 'missed'}")
    print(f"target: speedup_vs_direct = {speedup:.1f} x (goal >= 10) "
          f"{'met' if speedup >= 10 else 'missed'}")
    print(f"target: memory_vs_fwd_bwd = {mem_ratio:.2f} x (goal <= 1.5) "
          f"{'met' if mem_ratio <= 1.5 else 'missed'}")


if __name__ == "__main__":
    main()
