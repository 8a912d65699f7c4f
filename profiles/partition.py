"""Cut a model into sequential subgraphs ("pieces") that can be timed one by one.

One forward pass with hooks on every module records, per call, its inputs and output. The
partitioner then walks the data flow backwards from the model's output: at each level the
children that hand the main tensor (the residual stream) from one to the next form the chain;
children off the chain must hold no quantizable layer (rotary tables, position embeddings),
otherwise data flow branches and :class:`PartitionError` names the module.

Decoder blocks are recognised by their pre-norm residual units, verified numerically on the
recorded pass: ``h = x + sub(norm(x))`` for the attention and then the MLP. Each unit becomes
a piece (norm, sublayer and residual add). A piece whose ``n_precisions ** slots`` exceeds
``max_configs`` is split before its output projection into a head (norm, input projections
and the attention core; carries the residual) and a tail (output projection and residual add).
Plain sequential containers (``nn.Sequential``) are packed greedily into pieces of at most
``k_max`` quantizable layers, each with the activations that follow them.

Side inputs of a piece (attention masks, rotary tables) depend on the shape only; they are
captured from a pass of the whole model at that shape (:meth:`Partition.capture_inputs`).

This module holds the entry points (:func:`partition`, :func:`register_model`) and the packing
and description of pieces; the walk is :mod:`profiles.chain`, the pieces :mod:`profiles.pieces`.
"""

from __future__ import annotations

import math
from typing import Any

from hwcost.profiles.chain import ChainWalker
from hwcost.profiles.decode import layer_indices
from hwcost.profiles.pieces import Partition, Piece, PieceInput, Stage, submodule_at
from hwcost.profiles.signature import digest, model_fingerprint, module_structure
from hwcost.profiles.trace import QUANTIZABLE_TYPES, Trace, quantizable, slot_info
from torch import nn

from hwcost.errors import PartitionError
from hwcost.shape import READS_KV

__all__ = [
    "Partition", "Piece", "PieceInput", "partition", "register_model", "quantizable",
    "model_fingerprint", "QUANTIZABLE_TYPES",
]


DEFAULT_K_MAX = 3
"""Slots per piece with the defaults (3 precisions, 64 configs; also 4 CPU precisions at 64)."""


def _k_max(n_precisions: int, max_configs: int) -> int:
    if max_configs < 1:
        raise PartitionError(f"max_configs must be >= 1; got {max_configs}")
    if n_precisions <= 1:
        return 1 << 30
    k = int(math.floor(math.log(max_configs) / math.log(n_precisions) + 1e-9))
    if k < 1:
        raise PartitionError(f"max_configs={max_configs} is below the {n_precisions} configs of "
                             "a single layer")
    return k


def _pack(stages: list[Stage], k_max: int) -> list[Stage]:
    """Merge consecutive ``seq`` stages of plain modules into pieces of <= k_max slots."""
    out: list[Stage] = []
    for s in stages:
        prev = out[-1] if out else None
        if (prev is not None and prev.mode == "seq" and s.mode == "seq"
                and len(prev.slot_names) + len(s.slot_names) <= k_max):
            out[-1] = Stage("seq", prev.components + s.components, prev.slot_names + s.slot_names)
        else:
            out.append(s)
    return out


def _describe(stage: Stage, root: nn.Module) -> tuple[str, str, tuple, dict]:
    mods = [submodule_at(root, c.path) for c in stage.components]
    slots = tuple(slot_info(submodule_at(root, n)) for n in stage.slot_names)
    structure = []
    for comp, m in zip(stage.components, mods):
        skip = frozenset(s[len(comp.path) + 1:] for s in stage.skip
                         if s.startswith(comp.path + "."))
        structure.append(module_structure(m, skip))
    if stage.mode == "seq":
        kind = "+".join(type(m).__name__ for m in mods)
    elif stage.mode == "branch":  # named for the branch's sublayer, as heads and tails are
        first = stage.slot_names[0]
        owner = next((m for c, m in zip(stage.components, mods)
                      if first == c.path or first.startswith(c.path + ".")), mods[0])
        if stage.split == "tail":
            path = stage.components[0].path
            owner = submodule_at(root, path.rsplit(".", 1)[0]) if "." in path else owner
        kind = type(owner).__name__ + {"head": ".head", "tail": ".tail"}.get(stage.split,
                                                                            ".branch")
    elif stage.mode == "tail":  # named for the sublayer that owns the output projection
        path = stage.components[0].path
        owner = submodule_at(root, path.rsplit(".", 1)[0]) if "." in path else mods[0]
        kind = f"{type(owner).__name__}.tail"
    else:  # named for the sublayer holding the slots (not the norms around it)
        first = stage.slot_names[0]
        owner = next(m for c, m in zip(stage.components, mods)
                     if first == c.path or first.startswith(c.path + "."))
        kind = type(owner).__name__ + (".head" if stage.mode == "head" else "")
    extra: dict[str, Any] = {"stage": stage.mode, "modules": [type(m).__name__ for m in mods]}
    # an attention (a module numbered by layer_idx, the index of its cache layer) makes the
    # piece's decode cost depend on the KV length; without one it is timed once per batch
    extra[READS_KV] = bool(layer_indices(mods))
    for m in mods:
        for k in ("num_heads", "num_key_value_groups", "head_dim", "num_key_value_heads"):
            v = getattr(m, k, None)
            if isinstance(v, int):
                extra[k] = v
    payload = {"mode": stage.mode, "structure": structure,
               "slots": [s.to_dict() for s in slots],
               "where": [list(c.where) for c in stage.components]}
    if stage.mode == "branch":  # what flows in and out is part of what is timed
        payload["branch"] = [stage.carry, stage.split, stage.last]
    return digest(payload), kind, slots, extra


def partition(model: nn.Module, example_inputs: dict[str, Any], *, n_precisions: int = 3,
              max_configs: int = 64) -> Partition:
    """Cut ``model`` into sequential pieces of at most ``k`` quantizable layers, where
    ``n_precisions ** k <= max_configs``.

    Raises PartitionError naming the module where data flow branches when the model cannot
    be cut, or when it has no quantizable layer.
    """
    k_max = _k_max(n_precisions, max_configs)
    tr = Trace(model, example_inputs)
    root = tr.calls[0]
    if not tr.slots(root):
        raise PartitionError(f"{type(model).__name__} has no quantizable layer "
                             f"({', '.join(t.__name__ for t in QUANTIZABLE_TYPES)})")
    for names in tr.by_name.values():
        if len(names) > 1 and tr.slots(tr.calls[names[0]]):
            raise PartitionError(f"data flow branches at {tr.calls[names[0]].name}: it is called "
                                 f"{len(names)} times in one pass (shared weights)")
    walker = ChainWalker(tr, k_max)
    raw = walker.stages(root)
    # everything before the last prologue marker runs before the first piece and is not needed
    last_pro = max((i for i, s in enumerate(raw) if s is None), default=-1)
    stages = [s for s in raw[last_pro + 1:] if s is not None]
    stages = _pack(stages, k_max)
    first = next(i for i, s in enumerate(stages) if s.slot_names)
    stages = stages[first:]
    pieces = []
    for s in stages:
        if not s.slot_names:
            continue
        sig, kind, slots, extra = _describe(s, model)
        pieces.append(Piece(len(pieces), sig, kind, s.slot_names, slots, extra, s))
    fingerprint = model_fingerprint(model)
    if k_max != DEFAULT_K_MAX:  # another cut is another manifest: keep it apart in the store
        fingerprint = digest({"model": fingerprint, "k_max": k_max})
    return Partition(fingerprint, pieces, stages, k_max, tuple(walker.ended))


def register_model(store: Any, loaded: Any, part: Partition) -> int:
    """Write the partition's subgraphs and manifest under the loaded model's name; returns
    the model id. A model already stored with a different cut (another hwcost version's
    partitioner) is an error rather than a silently mismatched manifest."""
    mid = store.put_model(part.model_fingerprint, loaded.name, part.subgraph_infos(),
                          part.manifest_items())
    items = store.model_manifest(part.model_fingerprint).items
    stored = [(i.signature, tuple(i.layer_names)) for i, _ in items]
    if stored != [(p.signature, p.layer_names) for p in part.pieces]:
        raise PartitionError(f"model {part.model_fingerprint} is stored with another cut into "
                             "subgraphs than this partition; profile it into a new store")
    return mid

