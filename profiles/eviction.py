"""Where a piece finds its weights: the buffer a campaign reads before each sample.

A piece timed alone, again and again, finds its weights where its own previous call left
them; in a deployed model the other layers run in between. The campaign reads a buffer
before every sample (``profiles.bench.time_interleaved(evict_bytes=...)``) of the size
:meth:`CacheModel.evict_bytes` gives:

- **prefill** (compute-bound): twice the last-level cache when the model's weights exceed
  it (a piece alone would find its weights there; the whole model reads them from memory),
  else nothing.
- **decode** (one token a step, memory-bound: every weight read once): what the rest of the
  model reads between two calls of the piece in a deployment *in the piece's format*: the
  other slot layers' weights at the bytes the piece's config has over its baseline bytes,
  and the other weights a step reads (embedding tables excluded: a step reads one row).
  Above this process's share of the last-level cache (its size times the timing threads
  over the CPUs sharing it: the other CPUs run other work, which takes the rest): twice
  that cache (the weights come from memory). Else at least what the rest reads in the
  baseline format, up to that share (a step touches more than its weights: activations,
  the KV cache, the framework's own memory); above a core's private cache that many bytes
  (the weights come from the shared cache); else nothing.

Why per format: a model whose fp32 weights exceed the last-level cache may fit in it in a
low-precision format, and then runs from it. On the wide Llama of ``bench/decode.py``
(107 MB fp32, 24 MB int4_wo, a 32 MB L3), its whole decode step took 3.60 ms after its own
previous step and 4.25 ms after a 64 MB read (int8_wo 5.71 / 6.17 ms, fp32 9.51 / 9.81 ms;
interleaved, 37 rounds, thread clock); pieces timed after a 64 MB read in every format
predicted ``generate()`` of uniform int4_wo at 498 ms where it measured 413 ms. With the
whole 32 MB counted, int8_wo (24 MB) was priced from the cache too, and ``generate()`` of
uniform int8_wo measured 634 ms against 556 predicted (int4_wo 481 / 443; the other CPU
busy, load 13): the cache is shared with the other CPU, whose work takes its part while a
deployment's step runs (6 ms, against the 1 ms of a buffer read). And reading only a
format's weight bytes is too little: on the demo model (13 MB fp32, all within the cache
share) int8_wo pieces timed after 3 MB predicted 1.5-1.6 ms of gain for a config whose
whole step gained 0.3-0.9 ms (after the fp32 bytes, 13 MB: 0.78 / 0.64 predicted against
0.75 / 0.63 measured, the run before). The rest of
a mixed deployment is priced as if it were in the piece's format (a plan is not known when
pieces are timed): exact for uniform plans, and on the side of the format's own residency
for mixed ones. No torch at module level is needed beyond the byte counts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (a deployed layer's weights and scales)."""
    return sum(t.numel() * t.element_size()
               for t in itertools.chain(module.parameters(), module.buffers()))


@dataclass(frozen=True)
class CacheModel:
    """A model's weight bytes and the device's cache sizes (0: unknown)."""

    llc: int  # last-level cache
    private: int  # largest cache private to one core
    weights: int  # every parameter
    slot_bytes: dict[str, int]  # each slot layer in its baseline format
    other_bytes: int  # non-slot weights a decode step reads (embedding tables excluded)
    llc_share: int = 0  # the part of the last-level cache a deployment can count on (0: all)

    @classmethod
    def of(cls, model: torch.nn.Module, slots: Iterable[str], backend: Any,
           threads: int | None = None) -> CacheModel:
        """The model's bytes and the caches of ``backend``; ``threads``: the CPUs a
        deployment runs on (default: all), whose share of the last-level cache it counts on."""
        from hwcost.profiles.bench import (
            last_level_cache_bytes,
            last_level_cache_cpus,
            private_cache_bytes,
        )

        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        slot_bytes = {n: module_bytes(model.get_submodule(n)) for n in set(slots)}
        tables = sum(module_bytes(m) for m in model.modules()
                     if isinstance(m, torch.nn.Embedding))
        llc = last_level_cache_bytes(backend) or 0
        share = int(llc * min(1.0, threads / last_level_cache_cpus(backend))) if threads else llc
        return cls(llc, private_cache_bytes(backend) or 0, weights, slot_bytes,
                   max(0, weights - sum(slot_bytes.values()) - tables), share)

    def layers_bytes(self, names: Iterable[str]) -> int:
        """Baseline bytes of the named slot layers."""
        return sum(self.slot_bytes.get(n, 0) for n in names)

    def evict_bytes(self, decode: bool, cold: bool | None = None, own: float = 0.0,
                    ratio: float = 1.0) -> int:
        """Bytes to read before a sample (see the module docstring). ``own``: the piece's
        baseline bytes; ``ratio``: its config's bytes over them; ``cold``: True/False force
        a read of twice the last-level cache / none."""
        if cold is False:
            return 0
        full = 2 * (self.llc or 64 << 20)
        if cold:
            return full
        if not decode:
            return full if self.llc and self.weights > self.llc else 0
        others = sum(self.slot_bytes.values()) - own
        rest = others * ratio + self.other_bytes
        share = self.llc_share or self.llc
        if self.llc and rest > share:
            return full
        # at least what the baseline's rest reads, up to the cache share: a step touches
        # more than its weights (activations, the KV cache, the framework's own memory), and
        # a piece timed after only its format's weight bytes ran warmer than in the model
        floor = min(others + self.other_bytes, share) if share else others + self.other_bytes
        size = max(rest, floor)
        if self.private and size > self.private:
            return int(min(size, full))
        return 0
