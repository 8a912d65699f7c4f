"""A 70B-shaped planning problem with realistic synthetic costs (Llama-2/3-70B on an H100).

Used by ``bench/planner.py`` part (a): it measures the solver, so the costs are synthesized
from a roofline with realistic overheads rather than measured. Deterministic for a seed.

Per decoder block: an attention subgraph (q, k, v, o projections; GQA with 8 KV heads) and
an MLP subgraph (gate, up, down); 80 blocks; precisions bf16 (baseline), fp8_e4m3, int8.
"""

from __future__ import annotations

import itertools
import random

from hwcost.planner.problem import Choice, Option, Problem

from hwcost.precision import Precision

HIDDEN, KV, INTER, BLOCKS = 8192, 1024, 28672, 80
# H100 SXM dense peaks (NVIDIA datasheet) at ~70% achieved efficiency, and HBM3 bandwidth.
PEAK_MACS_PER_US = {"bf16": 989e6 / 2 * 0.7, "fp8_e4m3": 1979e6 / 2 * 0.7, "int8": 1979e6 / 2 * 0.6}
BYTES_PER_US = 3.35e6 * 0.8
LAUNCH_US = 4.0


def _slot_us(fin: int, fout: int, tokens: int, p: str, in_prec: str) -> float:
    b = Precision(p).bytes
    compute = fin * fout * tokens / PEAK_MACS_PER_US[p]
    memory = (fin * fout * b + tokens * (fin + fout) * 2) / BYTES_PER_US
    t = max(compute, memory) + LAUNCH_US
    if p != "bf16" and in_prec != p:  # dynamic activation quantization: read + write + absmax
        t += tokens * fin * 3 / BYTES_PER_US + LAUNCH_US
    return t


def _table(slots: list[tuple[int, int]], shared_input: int, tokens: int, rng: random.Random,
           extra_us: float) -> dict[tuple[str, ...], float]:
    """Latency of every config; the first ``shared_input`` slots read the same input (q/k/v,
    gate/up), so one quantization of it serves all of them."""
    precs = ("bf16", "fp8_e4m3", "int8")
    out = {}
    for cfg in itertools.product(precs, repeat=len(slots)):
        t, seen = extra_us, set()
        for i, ((fin, fout), p) in enumerate(zip(slots, cfg)):
            shared = i < shared_input
            in_prec = p if (shared and p in seen) else "bf16"
            t += _slot_us(fin, fout, tokens, p, in_prec)
            if shared:
                seen.add(p)
        out[cfg] = t * rng.uniform(0.97, 1.03)  # measurement-like scatter
    return out


def synthetic_70b(seed: int = 0, tokens: int = 2048) -> Problem:
    """The 70B-shaped problem: 160 subgraph instances, 560 layers, 3 precisions."""
    rng = random.Random(seed)
    attn_slots = [(HIDDEN, HIDDEN), (HIDDEN, KV), (HIDDEN, KV), (HIDDEN, HIDDEN)]
    mlp_slots = [(HIDDEN, INTER), (HIDDEN, INTER), (INTER, HIDDEN)]
    # SDPA core at seq 2048 (not quantized) and the fused gate*up activation.
    attn = _table(attn_slots, 3, tokens, rng, extra_us=450.0)
    mlp = _table(mlp_slots, 2, tokens, rng, extra_us=60.0)
    choices = []
    for b in range(BLOCKS):
        # Sensitivity: lognormal per layer; first and last blocks matter more; int8 with
        # per-token activations costs about 3x fp8 on average.
        depth = 3.0 if b in (0, 1, BLOCKS - 1) else 1.0
        for kind, slots, names, tbl in (
                ("LlamaAttention", attn_slots, ("q_proj", "k_proj", "v_proj", "o_proj"), attn),
                ("LlamaMLP", mlp_slots, ("gate_proj", "up_proj", "down_proj"), mlp)):
            prefix = "self_attn" if kind == "LlamaAttention" else "mlp"
            layer_names = tuple(f"model.layers.{b}.{prefix}.{n}" for n in names)
            s_fp8 = [depth * rng.lognormvariate(-9.0, 1.0) for _ in names]
            s_int8 = [v * rng.lognormvariate(1.1, 0.4) for v in s_fp8]
            base_cfg = ("bf16",) * len(slots)
            options = []
            for cfg, lat in sorted(tbl.items(), key=lambda kv: (kv[0] != base_cfg, kv[0])):
                loss = sum({"bf16": 0.0, "fp8_e4m3": f, "int8": i}[p]
                           for p, f, i in zip(cfg, s_fp8, s_int8))
                wb = sum(fi * fo * Precision(p).bytes for (fi, fo), p in zip(slots, cfg))
                mt = sum(fi * fo * tokens / PEAK_MACS_PER_US[p] for (fi, fo), p in zip(slots, cfg))
                options.append(Option(cfg, lat, tbl[base_cfg] - lat, loss, wb, mt, "measured"))
            choices.append(Choice(len(choices), f"{kind}-70b", kind, layer_names, tuple(options)))
    return Problem("llama-70b-shaped", "synthetic", "synthetic-h100", "NVIDIA H100 (synthetic)",
                   "cuda", f"batch=1,seq={tokens},phase=prefill", "bf16",
                   ("bf16", "fp8_e4m3", "int8"), choices)
