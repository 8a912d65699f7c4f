"""Scale benchmark: the main job (``hwcost run``) on Llama-style models of growing width, on this
machine's CPU, with the wall time and peak memory (RSS) of every step.

Models are built from a config (``--layers`` 16, ``--vocab`` 32000, intermediate ~2.75 x hidden,
head dim 128, random weights: timing and memory do not depend on the values) and saved as a
Hugging Face checkpoint, so the run loads it as a user's model. Each width runs in a fresh
process: ``run_main_job`` with ``on_step`` marks the steps (load, partition, profile,
sensitivity on 16 calibration samples, plan, validate); before each step the kernel's peak-RSS
mark is reset (``/proc/self/clear_refs``) and glibc returns freed memory (``malloc_trim``), so
each step's peak is its own. After the run, the same process loads the model again and measures
one plain forward+backward on the calibration batches (parameter gradients on, as a training
step computes them), the reference of the sensitivity memory target.

Each step's peak is compared with ``profiles.memory.step_peaks`` (the formula docs/scale.md
uses for 8B and 70B): measured / predicted is printed per step and width.

Usage: python bench/scale.py [--widths 512,1024,2048] [--quick] [--threads 1] [--collect]

Run it from a frozen copy of the tree (``git archive HEAD | tar -x -C DIR``): workers import
modules lazily over tens of minutes, and a rebase under a running benchmark mixes versions.
Writes bench/results/scale.{json,md}; ends with the ``target:`` lines.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

RESULTS = HERE / "results"
STEPS = ["load", "partition", "profile", "sensitivity", "plan", "validate"]
SHAPE = "batch=1,seq=128"
CALIB_SAMPLES = 16
EVAL_SAMPLES = 16
SEQ = 128
GiB = float(2**30)


def llama_config(hidden: int, layers: int, vocab: int):
    from transformers import LlamaConfig

    heads = max(1, hidden // 128)
    inter = int(round(hidden * 2.75 / 256)) * 256
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=max(1, heads // 2), max_position_embeddings=2 * SEQ,
                       tie_word_embeddings=False)


# ------------------------------------------------------------------------- in the worker


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    import gc

    gc.collect()
    _trim()
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets VmHWM to the current RSS


class StepMeter:
    """``on_step`` for run_main_job: wall time and peak RSS of each step."""

    def __init__(self, after=None) -> None:
        self.after = after or (lambda _name: None)
        self.steps: dict[str, dict] = {}
        self.current: str | None = None
        self.t0 = 0.0
        self.run_peak = 0

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self.current is not None:
            peak = _status("VmHWM")
            self.run_peak = max(self.run_peak, peak)
            self.steps[self.current].update({"wall_s": round(now - self.t0, 2), "peak_rss": peak,
                                             "rss_after": _status("VmRSS")})
            self.after(self.current)
        if name == "done":
            self.current = None
            return
        _reset_peak()
        self.current, self.t0 = name, time.perf_counter()
        self.steps.setdefault(name, {})["rss_before"] = _status("VmRSS")


def build(hidden: int, layers: int, vocab: int, out: Path) -> None:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    cfg = llama_config(hidden, layers, vocab)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(out), safe_serialization=True)


def fwd_bwd_peak(ckpt: Path, batches) -> int:
    """Peak RSS of one plain forward+backward per batch, parameter gradients on."""
    import torch
    from hwcost.profiles.loading import load_model
    from hwcost.sensitivity.loss import causal_lm_loss

    loaded = load_model(str(ckpt))
    model = loaded.model
    for p in model.parameters():
        p.requires_grad_(True)
    _reset_peak()
    with torch.enable_grad():
        for b in batches:
            causal_lm_loss(model, b).sum().backward()
    peak = _status("VmHWM")
    del model, loaded
    return peak


def worker(args) -> dict:
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)  # sensitivity and loading too, not only timings

    # the libraries every step imports, loaded before the base RSS is taken: their code and
    # data are the same at every width and are not what the steps' peaks should measure
    import hwcost.planner.apply  # noqa: F401
    import hwcost.planner.plot  # noqa: F401
    import hwcost.planner.solve  # noqa: F401
    import hwcost.profiles.campaign  # noqa: F401
    import hwcost.sensitivity.taylor  # noqa: F401
    from hwcost.profiles.memory import batch_within_budget, hf_parameter_count, saved_per_token, step_peaks
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from hwcost.app.main_job import MainJobOptions, run_main_job
    from hwcost.store import open_store

    ckpt = Path(args.worker)
    cfg = json.loads((ckpt / "config.json").read_text())
    tmp = Path(tempfile.mkdtemp(prefix="hwcost-scale-"))
    rng = np.random.default_rng(0)
    calib, evald = tmp / "calib.npy", tmp / "eval.npy"
    np.save(calib, rng.integers(0, cfg["vocab_size"], (CALIB_SAMPLES, SEQ)))
    np.save(evald, rng.integers(0, cfg["vocab_size"], (EVAL_SAMPLES, SEQ)))
    n_params = hf_parameter_count(ckpt)
    calib_batch = batch_within_budget(saved_per_token(cfg, 4), n_params * 4, SEQ)
    pred = step_peaks(cfg, n_params, dtype_bytes=4, profile_tokens=SEQ, cut_tokens=SEQ,
                      calib_batch_tokens=calib_batch * SEQ, eval_batch_tokens=8 * SEQ,
                      plan_bytes_per_weight=2.0)
    row = {"hidden": cfg["hidden_size"], "layers": cfg["num_hidden_layers"],
           "vocab": cfg["vocab_size"], "intermediate": cfg["intermediate_size"],
           "params": n_params, "weights_fp32": n_params * 4, "predicted": pred,
           "calib_batch": calib_batch, "quick": bool(args.quick),
           "threads": torch.get_num_threads(), "clock": os.environ.get("HWCOST_BENCH_CLOCK", "wall")}
    # the reference first (one calibration batch: the peak is per batch), so that a run cut
    # short still has it
    ids = torch.from_numpy(np.load(calib))
    _reset_peak()
    if not args.no_reference:
        row["fwd_bwd_peak_rss"] = fwd_bwd_peak(ckpt, [ids[:calib_batch]])
    _reset_peak()
    row["base_rss"] = _status("VmRSS")

    def dump(_name: str) -> None:
        if args.partial:
            Path(args.partial).write_text(json.dumps({**row, "steps": meter.steps,
                                                      "partial": True}, indent=2))
    meter = StepMeter(after=dump)
    t0 = time.perf_counter()
    with open_store(f"sqlite:///{tmp / 'store.db'}") as store:
        options = MainJobOptions(str(ckpt), "cpu", SHAPE, "10%", tmp / "out", calib=str(calib),
                                 eval_data=str(evald), samples=EVAL_SAMPLES, quick=args.quick,
                                 calib_samples=CALIB_SAMPLES, threads=args.threads)
        s = run_main_job(store, options, on_step=meter)
    row.update({"steps": meter.steps, "run_peak_rss": meter.run_peak,
                "total_s": round(time.perf_counter() - t0, 1),
                "measured_share": s.measured_share, "speedup": s.measured_speedup,
                "plan_counts": s.precision_counts})
    return row


def worker_memory(args) -> dict:
    """The memory figures alone, for a machine too loaded to finish the whole job in time:
    the reference forward+backward, then load, partition and the sensitivity pass on one
    calibration batch (its peak is per batch) through the same library calls ``hwcost run``
    makes (``load_model``, ``cut_model``, ``sensitivity.taylor.analyze``)."""
    import numpy as np
    import torch

    torch.set_num_threads(max(1, args.threads))
    from hwcost.profiles.backends import get_backend
    from hwcost.profiles.campaign import cut_model
    from hwcost.profiles.loading import load_model
    from hwcost.profiles.memory import (
        batch_within_budget,
        hf_parameter_count,
        saved_per_token,
        step_peaks,
    )
    from hwcost.sensitivity.taylor import analyze

    ckpt = Path(args.worker)
    cfg = json.loads((ckpt / "config.json").read_text())
    n_params = hf_parameter_count(ckpt)
    calib_batch = batch_within_budget(saved_per_token(cfg, 4), n_params * 4, SEQ)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, cfg["vocab_size"],
                                                               (calib_batch, SEQ)))
    row = {"hidden": cfg["hidden_size"], "layers": cfg["num_hidden_layers"],
           "vocab": cfg["vocab_size"], "intermediate": cfg["intermediate_size"],
           "params": n_params, "weights_fp32": n_params * 4, "calib_batch": calib_batch,
           "quick": True, "threads": torch.get_num_threads(), "memory_only": True,
           "predicted": step_peaks(cfg, n_params, dtype_bytes=4, profile_tokens=SEQ,
                                   cut_tokens=SEQ, calib_batch_tokens=calib_batch * SEQ,
                                   eval_batch_tokens=8 * SEQ, plan_bytes_per_weight=2.0)}
    _reset_peak()
    row["fwd_bwd_peak_rss"] = fwd_bwd_peak(ckpt, [ids])
    _reset_peak()
    row["base_rss"] = _status("VmRSS")

    def dump(_name: str) -> None:
        Path(args.partial).write_text(json.dumps({**row, "steps": meter.steps, "partial": True},
                                                 indent=2))
    meter = StepMeter(after=dump)
    meter("load")
    loaded = load_model(str(ckpt))
    meter("partition")
    cut_model(loaded, [SHAPE], get_backend("cpu"), 4)
    meter("sensitivity")
    analyze(loaded.model, [ids], precisions=["bf16", "int8", "fp8_e4m3"])
    meter("done")
    return {**row, "steps": meter.steps}


# ------------------------------------------------------------------------------- parent


def run_width(hidden: int, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="hwcost-scale-ckpt-") as d:
        ckpt = Path(d) / f"llama-h{hidden}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--build", str(hidden), "--out", str(ckpt),
                        "--layers", str(args.layers), "--vocab", str(args.vocab)],
                       check=True, env=env)
        build_s = time.perf_counter() - t0
        cmd = [sys.executable, __file__, "--worker", str(ckpt), "--threads", str(args.threads),
               "--partial", str(RESULTS / f"scale_partial_h{hidden}.json")]
        cmd += ["--quick"] if args.quick else []
        if args.threads == 1:  # on a shared machine: time this thread's CPU time (bench.py)
            env["HWCOST_BENCH_CLOCK"] = "thread"
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"width {hidden} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["build_s"] = round(build_s, 1)
        row["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        row["load_average"] = os.getloadavg()[0]
        return row


def table(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if "base_rss" in r]
    out = ["| hidden | params | step | wall s | peak RSS GiB | over base GiB | predicted GiB | "
           "measured/predicted |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for st in STEPS:
            m = r["steps"].get(st, {})
            if "peak_rss" not in m:
                continue
            over = (m["peak_rss"] - r["base_rss"]) / GiB
            pred = r["predicted"][st] / GiB
            out.append(f"| {r['hidden']} | {r['params'] / 1e6:.0f} M | {st} | {m['wall_s']:.1f} | "
                       f"{m['peak_rss'] / GiB:.2f} | {over:.2f} | {pred:.2f} | "
                       f"{over / pred:.2f} |" if pred > 0 else "")
        if "fwd_bwd_peak_rss" not in r:
            continue
        out.append(f"| {r['hidden']} | | fwd+bwd (reference) | | {r['fwd_bwd_peak_rss'] / GiB:.2f} | "
                   f"{(r['fwd_bwd_peak_rss'] - r['base_rss']) / GiB:.2f} | | |")
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="512,1024,2048")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--quick", action="store_true", help="quick timing in profile/validate")
    ap.add_argument("--fresh", action="store_true", help="drop widths measured earlier")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (default: all usable CPUs); 1 on a shared machine, "
                         "where a second OpenMP thread stalls every parallel region")
    ap.add_argument("--paper", action="store_true",
                    help="print the 8B/70B tables of docs/scale.md (no measurement)")
    ap.add_argument("--build", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--partial", help="worker: write the row so far here after every step")
    ap.add_argument("--no-reference", action="store_true",
                    help="worker: skip the fwd+bwd reference (measured by a --memory-only run)")
    ap.add_argument("--memory-only", action="store_true",
                    help="worker: load, partition and one sensitivity batch, no timings")
    ap.add_argument("--collect", action="store_true",
                    help="only write the report from scale.json and partial rows")
    args = ap.parse_args(argv)
    if args.paper:
        print(paper_tables())
        return 0
    if args.collect:
        return _report(_collect())
    if args.build:
        build(args.build, args.layers, args.vocab, Path(args.out))
        return 0
    if args.worker:
        print(json.dumps(worker_memory(args) if args.memory_only else worker(args)))
        return 0

    RESULTS.mkdir(exist_ok=True)
    # widths measured in an earlier invocation are kept (the 1B run is done alone, late, on
    # a shared machine); a width measured now replaces its earlier row
    prev = RESULTS / "scale.json"
    old = json.loads(prev.read_text())["rows"] if prev.exists() and not args.fresh else []
    widths = [int(x) for x in args.widths.split(",")]
    rows = [r for r in old if r["hidden"] not in widths]
    for w in widths:
        print(f"[scale] hidden {w} ...", file=sys.stderr, flush=True)
        row = run_width(w, args)
        print("\n".join(table([row])), flush=True)
        # merge with the file as it is now: another invocation may have added a width meanwhile
        now = json.loads(prev.read_text())["rows"] if prev.exists() else []
        rows = sorted([r for r in now if r["hidden"] != w] + [row], key=lambda r: r["params"])
        _write(rows, args)
    return _report(rows)


def _write(rows: list[dict], args) -> None:
    doc = {"rows": rows, "shape": SHAPE, "calib_samples": CALIB_SAMPLES,
           "eval_samples": EVAL_SAMPLES}
    (RESULTS / "scale.json").write_text(json.dumps(doc, indent=2))


def _collect() -> list[dict]:
    """Rows of scale.json plus the partial row of any width whose run did not finish."""
    prev = RESULTS / "scale.json"
    rows = json.loads(prev.read_text())["rows"] if prev.exists() else []
    done = {r["hidden"] for r in rows}
    for f in sorted(RESULTS.glob("scale_partial_h*.json")):
        r = json.loads(f.read_text())
        if r["hidden"] not in done:
            r.setdefault("when", time.strftime("%Y-%m-%d %H:%M UTC",
                                               time.gmtime(f.stat().st_mtime)))
            rows.append(r)
    return sorted(rows, key=lambda r: r["params"])


def _memory_rows() -> dict[int, dict]:
    out = {}
    for f in sorted(RESULTS.glob("scale_memory_h*.json")):
        r = json.loads(f.read_text())
        out[r["hidden"]] = r
    return out


def _report(rows: list[dict]) -> int:
    big = max(rows, key=lambda r: r["params"])
    steps = big.get("steps", {})
    # the targets are about the 1B-class model: a smaller largest row cannot meet them
    finished = "total_s" in big and big["params"] >= 5e8
    done_s = sum(v.get("wall_s", 0) for v in steps.values())
    minutes = (big["total_s"] if finished else done_s) / 60.0
    peaks = [v["peak_rss"] for v in steps.values() if "peak_rss" in v]
    rss_ratio = max(peaks) / big["weights_fp32"] if peaks else float("nan")
    sens = steps.get("sensitivity", {}).get("peak_rss")
    ref = big.get("fwd_bwd_peak_rss")
    mem = _memory_rows()
    sens_src = "the run"
    if (sens is None or ref is None) and big["hidden"] in mem:  # the memory-only run's figures
        m = mem[big["hidden"]]
        sens, ref, sens_src = (m["steps"]["sensitivity"]["peak_rss"], m["fwd_bwd_peak_rss"],
                               f"the memory-only run (one batch of {m['calib_batch']})")
    sens_ratio = sens / ref if sens and ref else float("nan")
    doc = {"rows": rows, "shape": SHAPE, "calib_samples": CALIB_SAMPLES,
           "eval_samples": EVAL_SAMPLES, "finished": finished,
           "targets": {"scale_1b_main_job_minutes": minutes,
                       "scale_peak_rss_over_weights": rss_ratio,
                       "scale_sensitivity_mem_over_fwd_bwd": sens_ratio}}
    (RESULTS / "scale.json").write_text(json.dumps(
        {**doc, "rows": [r for r in rows if "total_s" in r]}, indent=2))
    md = ["# Scale benchmark", "", f"Shape {SHAPE}, sensitivity on {CALIB_SAMPLES} samples, "
          f"validation on {EVAL_SAMPLES}, `hwcost run` on this machine's CPU. Each width ran in "
          "its own process:", "",
          *[f"- hidden {r['hidden']}: {r['when']}, {r['threads']} thread(s), "
            f"{'quick' if r['quick'] else 'default'} timing, calibration batch "
            f"{r.get('calib_batch', 8)}"
            + ("" if "total_s" in r else f"; **not finished** (steps done: "
               f"{', '.join(k for k, v in r.get('steps', {}).items() if 'peak_rss' in v)})")
            for r in rows], "",
          "Peak RSS per step (the kernel's high-water mark reset before each step); 'over base' "
          "subtracts the RSS of the process before loading (interpreter, torch, libraries); "
          "'predicted' is profiles.memory.step_peaks, the formula of docs/scale.md.", "",
          *table(rows), ""]
    md += [f"- hidden {r['hidden']}: {r['params'] / 1e6:.0f} M params, run {r['total_s'] / 60:.1f} "
           f"min, run peak {r['run_peak_rss'] / GiB:.2f} GiB = "
           f"{r['run_peak_rss'] / r['weights_fp32']:.2f} x fp32 weights, plan {r['plan_counts']}"
           for r in rows if "total_s" in r]
    if mem:
        md += ["", "## Memory-only runs", "",
               "Load, partition and the sensitivity pass on one calibration batch (its peak is "
               "per batch) through the library calls `hwcost run` makes, and the reference: one "
               "plain forward+backward of the same batch with parameter gradients, as a training "
               "step computes them. For a machine too loaded to finish the whole job in time.", "",
               *table(list(mem.values())), ""]
        md += [f"- hidden {m['hidden']}: sensitivity peak / fwd+bwd peak = "
               f"{m['steps']['sensitivity']['peak_rss'] / m['fwd_bwd_peak_rss']:.2f}, "
               f"sensitivity peak / fp32 weights = "
               f"{m['steps']['sensitivity']['peak_rss'] / m['weights_fp32']:.2f}"
               for m in mem.values()]
    md += ["", f"Sensitivity memory target from {sens_src}."]
    (RESULTS / "scale.md").write_text("\n".join(md) + "\n")
    note = "" if finished else (" (run not finished: steps done so far)"
                                if big["params"] >= 5e8 else " (no 1B-class model measured)")
    print(f"\nbiggest model: {big['params'] / 1e6:.0f} M params (hidden {big['hidden']}){note}")
    print(f"target: scale_1b_main_job_minutes = {minutes:.1f} min (goal <= 30) "
          f"{'met' if finished and minutes <= 30 else 'missed'}")
    print(f"target: scale_peak_rss_over_weights = {rss_ratio:.2f} x (goal <= 2.0) "
          f"{'met' if finished and rss_ratio <= 2.0 else 'missed'}")
    print(f"target: scale_sensitivity_mem_over_fwd_bwd = {sens_ratio:.2f} x (goal <= 1.3) "
          f"{'met' if sens and big['params'] >= 5e8 and sens_ratio <= 1.3 else 'missed'}")
    return 0


# -------------------------------------------------------------------------- docs tables

LLAMA = {
    "Llama-3-8B": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "vocab_size": 128256, "num_attention_heads": 32, "num_key_value_heads": 8,
                   "params": 8_030_261_248},
    "Llama-3-70B": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                    "vocab_size": 128256, "num_attention_heads": 64, "num_key_value_heads": 8,
                    "params": 70_553_706_496},
}
CARDS = {"H100 80 GB": 80e9, "Gaudi 2 96 GB": 96e9}


def paper_tables() -> str:
    """The per-step peaks of docs/scale.md, from profiles.memory.step_peaks (bf16 baseline on
    the card: 2-byte weights and activations; the plan's low-precision layers 1 byte)."""
    from hwcost.profiles.memory import batch_within_budget, saved_per_token, step_peaks

    out = []
    for shape, (batch, seq) in {"batch=1,seq=128": (1, 128), "batch=8,seq=2048": (8, 2048)}.items():
        out += [f"#### {shape}", "", "| model | weights | " + " | ".join(STEPS) + " | " +
                " | ".join(CARDS) + " |", "|---" * (3 + len(STEPS) + len(CARDS) - 1) + "|"]
        for name, cfg in LLAMA.items():
            cb = batch_within_budget(saved_per_token(cfg, 2), cfg["params"] * 2, 128)
            pk = step_peaks(cfg, cfg["params"], dtype_bytes=2, profile_tokens=batch * seq,
                            cut_tokens=min(seq, 128), calib_batch_tokens=cb * 128,
                            eval_batch_tokens=8 * 128, plan_bytes_per_weight=1.0,
                            n_precision_bytes=2 + 1 + 1)
            peak = max(pk.values())
            worst = max(pk, key=pk.get)
            w = cfg["params"] * 2

            def verdict(cap: float, w=w, peak=peak, worst=worst) -> str:
                if w > cap:  # what profiles.memory.require_fits refuses before loading
                    return f"refused up front: weights {w / GiB:.0f} > {cap / GiB:.1f} GiB"
                if peak > cap:
                    return f"weights fit, {worst} needs {peak / GiB:.0f} GiB: out of memory"
                return f"fits ({peak / GiB:.0f} of {cap / GiB:.1f} GiB)"
            fits = [verdict(cap) for cap in CARDS.values()]
            out.append(f"| {name} | {cfg['params'] * 2 / GiB:.1f} GiB | " +
                       " | ".join(f"{pk[s] / GiB:.1f}" for s in STEPS) + " | " +
                       " | ".join(fits) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
