"""How long does profiling take, and do identical blocks cost nothing extra? (issue 3)

On this CPU, into a scratch SQLite store:

1. a profiling campaign (``profiles.campaign.run_campaign``, what ``hwcost profile`` runs) of
   the demo model (``data/demo_model``; where absent, a Llama of the demo's size built from
   its config with random weights) for one shape, every CPU precision (fp32, bf16, int8,
   fp8_e4m3), default timing settings: every config of every unique subgraph, plus the whole
   model in fp32. Target: under 2 minutes on 2 cores.
2. the same model twice as deep (identical blocks), profiled into the same store. Target:
   no new subgraph measurement.

Also reports, as a sanity check, the sum of the pieces' fp32 latencies against the whole
model's (the gap is what runs outside the pieces: embedding, glue, Python dispatch).

    python bench/campaign.py [--seq 128] [--threads 2] [--layers 6]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hwcost.profiles.campaign import run_campaign  # noqa: E402
from hwcost.profiles.loading import LoadedModel, load_model  # noqa: E402

from hwcost.errors import ModelLoadError  # noqa: E402
from hwcost.store import open_store  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GOAL_S = 120.0


def demo_sized(layers: int | None) -> tuple[LoadedModel, str, dict]:
    """The demo model (or a Llama of its size); returns it, a description and its config."""
    try:
        loaded = load_model(None)
        cfg = loaded.model.config.to_dict()
        return loaded, f"demo model ({loaded.source})", cfg
    except ModelLoadError:
        pass
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=264, hidden_size=256, intermediate_size=768,
                      num_hidden_layers=layers or 6, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=False, use_cache=False)
    return (_build(cfg.to_dict(), cfg.num_hidden_layers, "demo-sized-llama"),
            f"Llama of the demo's size from config ({cfg.num_hidden_layers} layers, random "
            "weights; data/demo_model absent)", cfg.to_dict())


def _build(cfg: dict, layers: int, name: str) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(cfg, num_hidden_layers=layers, use_cache=False)
    cfg.pop("layer_types", None)  # derived from the layer count
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).float().eval()
    return LoadedModel(name, model, None, "config")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=None,
                    help="layers of the stand-in model when data/demo_model is absent (6)")
    args = ap.parse_args()
    shape = f"batch=1,seq={args.seq}"
    loaded, what, cfg = demo_sized(args.layers)
    layers = int(cfg["num_hidden_layers"])
    print(f"model: {what}; shape {shape}; {args.threads} threads; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/campaign.db")
        t0, c0 = time.perf_counter(), time.process_time()
        first = run_campaign(store, loaded, "cpu", [shape], threads=args.threads)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        deeper = _build(cfg, 2 * layers, "demo-sized-x2")
        t1 = time.perf_counter()
        second = run_campaign(store, deeper, "cpu", [shape], threads=args.threads)
        wall2 = time.perf_counter() - t1
        costs = store.model_costs(first.model_fingerprint, first.device, shape,
                                  allow_unstable=True)
        base_cfgs = {p: c.median_us for c in costs for p in [c.position]
                     if set(c.config.split(",")) == {"fp32"}}
        n_meas = store.measurement_count()
        store.close()

    pieces_sum = sum(base_cfgs.values())
    whole = next(iter(first.baseline_us.values()))
    rows = [
        ("model", loaded.name, f"{second.pieces} pieces"),
        ("layers", layers, 2 * layers),
        ("pieces / unique subgraphs", f"{first.pieces} / {first.unique_subgraphs}",
         f"{second.pieces} / {second.unique_subgraphs}"),
        ("tasks (signature x shape x config)", first.tasks, second.tasks),
        ("measured in this run", first.measured, second.measured),
        ("already in the store", first.already, second.already),
        ("failed", first.failed, second.failed),
        ("campaign wall time (s)", f"{wall:.1f}", f"{wall2:.1f}"),
        ("campaign CPU time (s, all threads)", f"{cpu:.1f}", "-"),
        ("whole model fp32 (ms)", f"{whole / 1e3:.2f}",
         f"{next(iter(second.baseline_us.values())) / 1e3:.2f}"),
        ("sum of pieces fp32 (ms)", f"{pieces_sum / 1e3:.2f}", "-"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'':{w}}  {'x1':>14}  {'x2 (deeper)':>14}")
    for name, a, b in rows:
        print(f"{name:{w}}  {a!s:>14}  {b!s:>14}")
    result = {
        "model": what, "shape": shape, "threads": args.threads, "layers": layers,
        "first": first.to_dict(), "deeper": second.to_dict(), "wall_s": wall,
        "deeper_wall_s": wall2, "cpu_s": cpu, "measurements_in_store": n_meas,
        "pieces_fp32_sum_us": pieces_sum, "whole_fp32_us": whole,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "campaign.json").write_text(json.dumps(result, indent=2, default=str))
    md = ["# Profiling campaign", "", f"{what}; shape `{shape}`; {args.threads} threads", "",
          "| | x1 | x2 (deeper) |", "|---|---|---|"]
    md += [f"| {n} | {a} | {b} |" for n, a, b in rows]
    (RESULTS / "campaign.md").write_text("\n".join(md) + "\n")
    ok1 = wall <= GOAL_S and first.failed == 0
    ok2 = second.measured == 0 and second.failed == 0
    print(f"target: profile_demo_one_shape = {wall:.1f} s (goal <= {GOAL_S:.0f} s) "
          f"{'met' if ok1 else 'missed'}")
    print(f"target: deeper_model_new_measurements = {second.measured} count (goal == 0) "
          f"{'met' if ok2 else 'missed'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
