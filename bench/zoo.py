"""Model zoo benchmark: every family of ``tests/zoo/families.py`` (tiny models built from
transformers configs) through the whole main job with ``--quick``.

Per family: wall time of the main job (partition, profile, sensitivity, plan, apply with real
kernels, validate) on a fresh store, the number of pieces and of unique subgraphs, and the
predicted against the measured loss MSE of the plan on the family's 16 held-out sequences
(measured with the deployed real kernels). A family that fails is reported with the first line
of its error.

    python bench/zoo.py [--threads 2] [--families llama,gpt2]

Writes bench/results/zoo.{json,md,log}; ends with one ``target:`` line per target.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT))

SHAPE = "batch=1,seq=16"
BOUND = "50%"
PRECISIONS = ["fp32", "bf16", "int8"]
GOAL_FAMILIES = 12
GOAL_WITHIN_PCT = 90.0
FACTOR = 3.0
ALL_FP32 = "every layer kept in fp32 (no faster config measured): no ratio"


def run_family(name: str) -> dict:
    """The main job on one family in a fresh SQLite store; what a user reads from it."""
    from hwcost.app.main_job import MainJobOptions, run_main_job
    from hwcost.store import open_store

    spec = f"tests.zoo.families:{name}"
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/store.db"
        t0 = time.perf_counter()
        try:
            with open_store(url) as store, contextlib.redirect_stderr(io.StringIO()):
                s = run_main_job(store, MainJobOptions(spec, "cpu", SHAPE, BOUND,
                                                       Path(tmp) / "out", samples=16, quick=True,
                                                       precisions=PRECISIONS))
                _, items = store.manifest(s.model_fingerprint)
        except Exception as e:  # noqa: BLE001 - a family that fails is a row of the table
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return {"family": name, "ok": False, "wall_s": round(time.perf_counter() - t0, 1),
                    "error": f"{type(e).__name__}: {first}"}
        wall = time.perf_counter() - t0
    pred, meas = s.predicted_loss_mse, s.measured_loss_mse
    ratio = meas / pred if pred > 0 else (1.0 if meas == 0 else float("inf"))
    return {"family": name, "ok": True, "wall_s": round(wall, 1), "pieces": len(items),
            "unique_subgraphs": len({i.signature for i, _ in items}),
            "layers": len(s.layers), "precision_counts": s.precision_counts,
            "predicted_loss_mse": pred, "measured_loss_mse": meas, "ratio": ratio,
            "within_3x": 1 / FACTOR <= ratio <= FACTOR, "steps_s": s.steps_s,
            "predicted_speedup": s.predicted_speedup, "measured_speedup": s.measured_speedup}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--families", default="", help="comma-separated subset (default: all)")
    args = ap.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    from tests.zoo.families import FAMILIES

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    names = [n for n in args.families.split(",") if n] or list(FAMILIES)
    lines: list[str] = []

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    out(f"zoo: {len(names)} families, shape {SHAPE}, --quick, precisions {', '.join(PRECISIONS)}, "
        f"bound {BOUND}, {args.threads} threads")
    rows = []
    head = (f"{'family':<10} {'ok':<3} {'time s':>7} {'pieces':>6} {'unique':>6} "
            f"{'pred MSE':>10} {'meas MSE':>10} {'meas/pred':>9}  mix / error")
    out(head)
    for name in names:
        r = run_family(name)
        rows.append(r)
        if r["ok"]:
            mix = ", ".join(f"{n} {p}" for p, n in r["precision_counts"].items())
            out(f"{name:<10} {'yes':<3} {r['wall_s']:>7.1f} {r['pieces']:>6} "
                f"{r['unique_subgraphs']:>6} {r['predicted_loss_mse']:>10.3g} "
                f"{r['measured_loss_mse']:>10.3g} {r['ratio']:>9.2f}  {mix}")
        else:
            out(f"{name:<10} {'no':<3} {r['wall_s']:>7.1f} {'-':>6} {'-':>6} {'-':>10} {'-':>10} "
                f"{'-':>9}  {r['error']}")
    ok = [r for r in rows if r["ok"]]
    # a plan that keeps every layer in the baseline predicts and measures 0: no ratio to judge
    quantized = [r for r in ok if r["predicted_loss_mse"] > 0]
    within = [r for r in quantized if r["within_3x"]]
    share = 100.0 * len(within) / len(quantized) if quantized else 0.0
    total = sum(r["wall_s"] for r in rows)
    out(f"total {total:.0f} s; end to end {len(ok)}/{len(rows)}; within {FACTOR:g}x "
        f"{len(within)}/{len(quantized)} of the plans that quantize something")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "zoo.json").write_text(json.dumps(
        {"shape": SHAPE, "bound": BOUND, "precisions": PRECISIONS, "threads": args.threads,
         "families": rows, "end_to_end": len(ok), "within_3x_pct": share,
         "total_s": total}, indent=2, default=str))
    md = ["# Model zoo", "",
          f"Every family through `hwcost run --quick` (shape `{SHAPE}`, bound {BOUND}, "
          f"precisions {', '.join(PRECISIONS)}, {args.threads} threads); loss MSE of the "
          "deployed plan on 16 held-out sequences. The share within 3x counts the plans that "
          "quantize something.", "",
          "| family | end to end | time (s) | pieces | unique subgraphs | predicted loss MSE "
          "| measured loss MSE | measured/predicted | note |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["ok"]:
            md.append(f"| {r['family']} | yes | {r['wall_s']:.1f} | {r['pieces']} | "
                      f"{r['unique_subgraphs']} | {r['predicted_loss_mse']:.3g} | "
                      f"{r['measured_loss_mse']:.3g} | {r['ratio']:.2f} | "
                      f"{'' if r['predicted_loss_mse'] > 0 else ALL_FP32} |")
        else:
            md.append(f"| {r['family']} | no | {r['wall_s']:.1f} | - | - | - | - | - | "
                      f"{r['error']} |")
    targets = [
        f"target: zoo_families_end_to_end = {len(ok)} count (goal >= {GOAL_FAMILIES}) "
        f"{'met' if len(ok) >= GOAL_FAMILIES else 'missed'}",
        f"target: zoo_loss_ratio_within_3x = {share:.0f} % (goal >= {GOAL_WITHIN_PCT:g}) "
        f"{'met' if share >= GOAL_WITHIN_PCT else 'missed'}",
    ]
    (RESULTS / "zoo.md").write_text("\n".join(md + [""] + [f"`{t}`  " for t in targets]) + "\n")
    for t in targets:
        out(t)
    (RESULTS / "zoo.log").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
