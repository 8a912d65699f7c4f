"""A small model's planning inputs written through the Store API: a device, subgraphs,
a manifest, measurements of every config and a Taylor sensitivity table. This is exactly
what the planner reads (profiling and sensitivity write the same rows)."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest

from hwcost.device import DeviceInfo
from hwcost.precision import config_key
from hwcost.store import (
    UNKNOWN,
    ManifestItem,
    MeasurementIn,
    SensitivityRow,
    SensitivityTable,
    SlotInfo,
    SubgraphInfo,
)

PRECS = ("fp32", "bf16", "int8")
# Relative latency per precision and a cost for each precision boundary inside a subgraph,
# so that mixed configs interact the way casts do on a real CPU.
_SPEED = {"fp32": 1.0, "bf16": 0.62, "int8": 0.45}
_CAST_US = 6.0


@dataclass
class TinyModel:
    name: str
    fingerprint: str
    device: str
    shape: str
    layers: list[str]
    model_id: int


def _latency(slots: tuple[SlotInfo, ...], cfg: tuple[str, ...], rng: random.Random) -> float:
    t = 20.0
    prev = "fp32"
    for s, p in zip(slots, cfg):
        t += s.in_features * s.out_features / 100.0 * _SPEED[p]
        if p != prev:
            t += _CAST_US
        prev = p
    return t * rng.uniform(0.98, 1.02)


def populate(store, *, blocks: int = 2, seed: int = 0, name: str = "tiny",
             skip_configs: int = 0, with_sensitivity: bool = True) -> TinyModel:
    """Write a ``blocks``-deep model (attention q/k/v/o, MLP up/down, lm_head) to ``store``.

    ``skip_configs`` leaves that many configs of the MLP unmeasured (fallbacks answer them).
    """
    rng = random.Random(seed)
    dev = DeviceInfo("cpu", "Test CPU (planner fixture)", 2, ("avx512_bf16",), {"python": "3.11"})
    store.put_device(dev)
    attn = SubgraphInfo("sig-attn", "Attention", tuple(SlotInfo("Linear", 64, o) for o in
                                                       (64, 32, 32, 64)), {"heads": 4})
    mlp = SubgraphInfo("sig-mlp", "MLP", (SlotInfo("Linear", 64, 256), SlotInfo("Linear", 256, 64)))
    head = SubgraphInfo("sig-head", "Linear", (SlotInfo("Linear", 64, 512),))
    manifest, layers = [], []
    for b in range(blocks):
        for sub, names in ((attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                           (mlp, ("up_proj", "down_proj"))):
            prefix = "self_attn" if sub is attn else "mlp"
            ln = tuple(f"model.layers.{b}.{prefix}.{n}" for n in names)
            manifest.append(ManifestItem(len(manifest), sub.signature, ln))
            layers += ln
    manifest.append(ManifestItem(len(manifest), head.signature, ("lm_head",)))
    layers.append("lm_head")
    fp = f"fp-{name}-{blocks}-{seed}"
    model_id = store.put_model(fp, name, [attn, mlp, head], manifest)
    shape = "batch=1,seq=16,phase=prefill"
    rows = []
    for sub in (attn, mlp, head):
        cfgs = list(itertools.product(PRECS, repeat=len(sub.slots)))
        if sub is mlp and skip_configs:
            cfgs = [c for c in cfgs if c == ("fp32",) * 2 or cfgs.index(c) > skip_configs]
        for cfg in cfgs:
            rows.append(MeasurementIn(dev.fingerprint, sub.signature, shape, config_key(cfg),
                                      _latency(sub.slots, cfg, rng), 0.5, 15, host="fixture"))
    store.add_measurements(rows)
    if with_sensitivity:
        sens = []
        for layer in layers:
            base = rng.lognormvariate(-7.0, 1.0) * (5.0 if layer == "lm_head" else 1.0)
            for p, mult in (("bf16", 0.05), ("int8", 1.0)):
                sens.append(SensitivityRow(layer, p, base * mult, base * mult * 0.1, 32))
        store.put_sensitivity_table(fp, SensitivityTable(sens, "taylor", "calib-fixture",
                                                         UNKNOWN, UNKNOWN))
    return TinyModel(name, fp, dev.fingerprint, shape, layers, model_id)


@pytest.fixture
def tiny(store) -> TinyModel:
    """The tiny model in the store of each backend."""
    return populate(store)


@pytest.fixture
def tiny_sqlite(sqlite_url):
    """The tiny model in an SQLite store; yields (url, TinyModel)."""
    from hwcost.store import open_store

    with open_store(sqlite_url) as s:
        m = populate(s)
    return sqlite_url, m
