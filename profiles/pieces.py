"""The pieces a partition is made of.

A :class:`Stage` is a run of the recorded chain (a residual unit, a head or tail of one, a
parallel branch, or a packed run of plain layers) that can run on its own from its input; a
:class:`Piece` is a stage with quantizable layers, its structural signature and slots; the
:class:`Partition` holds them and captures each piece's inputs at a shape. The partitioner
that finds the stages is :mod:`profiles.partition` (with the walk in :mod:`profiles.chain`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hwcost.profiles.decode import cache_lengths, find_caches, layer_indices, restore
from hwcost.profiles.trace import Trace, get_main, main_out, residual_add
from torch import nn

from hwcost.errors import PartitionError
from hwcost.store import ManifestItem, SlotInfo, SubgraphInfo

__all__ = ["Component", "PieceInput", "Stage", "Piece", "Partition", "submodule_at", "with_main",
           "boundary_paths"]


def submodule_at(root: nn.Module, path: str) -> nn.Module:
    """The submodule of ``root`` at a dotted ``path`` (``root`` itself for "")."""
    return root.get_submodule(path) if path else root


def with_main(call_args: tuple, call_kwargs: dict, where, t: torch.Tensor) -> tuple[tuple, dict]:
    """A recorded call's arguments with its main tensor (at ``where``) replaced by ``t``."""
    args, kwargs = list(call_args), dict(call_kwargs)
    if where[0] == "arg":
        args[where[1]] = t
    else:
        kwargs[where[1]] = t
    return tuple(args), kwargs


@dataclass(frozen=True)
class Component:
    """One module call inside a stage: where its main tensor goes in."""

    path: str
    where: tuple[str, Any]


@dataclass
class PieceInput:
    """What one piece runs on: its live tensors and each component's captured side inputs."""

    tensors: tuple[torch.Tensor, ...]
    sides: tuple[tuple[tuple, dict], ...]

    def to(self, device: Any) -> PieceInput:
        return PieceInput(_move(self.tensors, device), _move(self.sides, device))


def _move(obj: Any, device: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_move(o, device) for o in obj)
    if isinstance(obj, list):
        return [_move(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


class _Empty(nn.Module):
    """A plain container used to rebuild a piece's module paths from the model root."""


class _Skip(nn.Identity):
    """Stands in for the output projection a split head does not run."""


@dataclass
class Stage:
    """A runnable step of the chain.

    ``mode``: ``seq`` (components run one after another), ``residual`` (``x + sub(pre(x))``),
    ``head`` (the same with the sub's output projection skipped; yields ``(x, ctx)``),
    ``tail`` (``x + proj(ctx)``, with the components after the projection) or ``branch``
    (one branch of a parallel block ``x + sum_i branch_i(x)``: yields ``(x, partial sum)``,
    or ``x + sum`` from the block's last stage; see the ``carry``/``split``/``last`` fields).
    """

    mode: str
    components: tuple[Component, ...]
    slot_names: tuple[str, ...]
    skip: tuple[str, ...] = ()  # head: paths replaced by _Skip (output projection and after)
    residual: Component | None = None  # tail: the call whose main input is the unit's residual
    # branch (one branch of a parallel block, or a head/tail of it): whether the running sum
    # of earlier branches comes in, the split ("", "head", "tail"), whether it is the last
    # stage of the block (then it returns x + sum), and the block's earlier stages
    carry: bool = False
    split: str = ""
    last: bool = False
    prior: tuple[Stage, ...] = field(default=(), repr=False)

    def needed_paths(self) -> list[str]:
        return [c.path for c in self.components]

    def extract(self, root: nn.Module, replace: dict[str, nn.Module] | None = None) -> nn.Module:
        """A small module holding only this stage's modules, under the same root paths.

        Parameters are shared with ``root`` (nothing is copied), so
        ``apply_precisions(extracted, {layer_name: precision}, backend)`` deploys exactly the
        piece's layers by their model names. ``replace`` maps layer names (from the model
        root) to modules standing in for them, e.g. layers already deployed; the model itself
        is never modified.
        """
        swaps: dict[str, nn.Module] = {s: _Skip() for s in self.skip}
        swaps.update(replace or {})
        holder = _Empty()
        for path in self.needed_paths():
            mine = {k[len(path) + 1:]: v for k, v in swaps.items() if k.startswith(path + ".")}
            if path in swaps:
                mod = swaps[path]
            elif mine:
                mod = _shallow_replace(submodule_at(root, path), mine)
            else:
                mod = submodule_at(root, path)
            _place(holder, path, mod)
        holder._hwcost_stage = id(self)
        return holder

    def run(self, root: nn.Module, inp: PieceInput) -> tuple[torch.Tensor, ...]:
        """Run this stage alone on a captured input; returns the live tensors after it."""
        if getattr(root, "_hwcost_stage", None) != id(self) and self.skip:
            root = self.extract(root)
        if self.mode == "tail":
            x, t = inp.tensors
        elif self.mode == "branch":
            x = inp.tensors[0]
            t = inp.tensors[-1] if self.split == "tail" else x
        else:
            x = t = inp.tensors[0]
        for comp, (args, kwargs) in zip(self.components, inp.sides):
            a, k = with_main(args, kwargs, comp.where, t)
            t = main_out(submodule_at(root, comp.path)(*a, **k))
        if self.mode == "branch":
            kept = inp.tensors[:1 + int(self.carry)]  # x and the running sum
            if self.split == "head":
                return (*kept, t)
            acc = residual_add(kept[1], t) if self.carry else t
            return (residual_add(x, acc),) if self.last else (x, acc)
        if self.mode == "seq":
            return (t,)
        if self.mode == "head":
            return (x, t)
        return (residual_add(x, t),)


def _shallow_replace(mod: nn.Module, swaps: dict[str, nn.Module]) -> nn.Module:
    """A shallow copy of ``mod`` with the descendants named in ``swaps`` (relative paths)
    replaced; everything else, parameters included, is shared with ``mod``."""
    new = copy.copy(mod)
    new._modules = dict(mod._modules)
    by_first: dict[str, dict[str, nn.Module]] = {}
    for rel, m in swaps.items():
        head, _, rest = rel.partition(".")
        by_first.setdefault(head, {})[rest] = m
    for head, inner in by_first.items():
        new._modules[head] = inner[""] if "" in inner else _shallow_replace(mod._modules[head], inner)
    return new


def _place(holder: nn.Module, path: str, mod: nn.Module) -> None:
    parts = path.split(".")
    node = holder
    for p in parts[:-1]:
        if p not in node._modules:
            node._modules[p] = _Empty()
        node = node._modules[p]
    node._modules[parts[-1]] = mod


# ------------------------------------------------------------------------------- pieces


@dataclass
class Piece:
    """A subgraph instance: a stage with quantizable layers, its signature and slots."""

    position: int
    signature: str
    kind: str
    layer_names: tuple[str, ...]
    slots: tuple[SlotInfo, ...]
    extra: dict
    stage: Stage = field(repr=False)

    def extract(self, model: nn.Module, replace: dict[str, nn.Module] | None = None) -> nn.Module:
        """This piece's modules under their model-root names (see :meth:`Stage.extract`)."""
        return self.stage.extract(model, replace)

    def run(self, module_or_model: nn.Module, captured: PieceInput) -> tuple[torch.Tensor, ...]:
        """Run the piece alone (on the whole model or on :meth:`extract`'s result)."""
        return self.stage.run(module_or_model, captured)

    def info(self) -> SubgraphInfo:
        return SubgraphInfo(self.signature, self.kind, self.slots, self.extra)


@dataclass
class Partition:
    """A model cut into pieces; ``stages`` also holds slot-less glue between pieces."""

    model_fingerprint: str
    pieces: list[Piece]
    stages: list[Stage] = field(repr=False)
    k_max: int = 0
    ended: tuple[str, ...] = ()
    """Modules with layers whose output never reaches the model's output (BERT's pooler when
    the model's output is the hidden states): out of the chain, left in baseline precision."""

    def subgraph_infos(self) -> list[SubgraphInfo]:
        """One SubgraphInfo per unique signature, in first-use order."""
        seen: dict[str, SubgraphInfo] = {}
        for p in self.pieces:
            seen.setdefault(p.signature, p.info())
        return list(seen.values())

    def manifest_items(self) -> list[ManifestItem]:
        return [ManifestItem(p.position, p.signature, p.layer_names) for p in self.pieces]

    def layer_names(self) -> list[str]:
        return [n for p in self.pieces for n in p.layer_names]

    def capture_inputs(self, model: nn.Module, inputs: dict[str, Any],
                       pieces: Sequence[Piece] | None = None) -> list[PieceInput | None]:
        """Each piece's input from one pass of ``model`` on ``inputs`` (any shape).

        ``pieces``: capture only these (the others' entries are None), e.g. one piece per
        unique signature, which is all profiling times. Only the tensors at those pieces'
        boundaries are held, never every module's inputs and outputs."""
        wanted = {p.position for p in pieces} if pieces is not None else None
        stages = [p.stage for p in self.pieces if wanted is None or p.position in wanted]
        before = cache_lengths(find_caches(inputs))
        tr = Trace(model, inputs, keep=boundary_paths(stages))
        return [self._capture(p.stage, tr, before) if wanted is None or p.position in wanted
                else None for p in self.pieces]

    def capture_stages(self, model: nn.Module, inputs: dict[str, Any]
                       ) -> tuple[list[PieceInput], Any]:
        """Every stage's input (glue included) and the model's output, from one pass."""
        before = cache_lengths(find_caches(inputs))
        tr = Trace(model, inputs, keep=boundary_paths(self.stages))
        return [self._capture(s, tr, before) for s in self.stages], tr.output

    def run_all(self, model: nn.Module, captured: Sequence[PieceInput]) -> torch.Tensor:
        """Run every stage in order, each on the previous one's output; returns the last tensor.

        ``captured`` comes from :meth:`capture_stages`: the first stage starts from its
        captured tensors, later stages use only their captured side inputs.
        """
        tensors = captured[0].tensors
        for stage, cap in zip(self.stages, captured):
            tensors = stage.run(model, PieceInput(tensors, cap.sides))
        if len(tensors) != 1:
            raise PartitionError("the chain ends with more than one live tensor")
        return tensors[0]

    @staticmethod
    def _capture(stage: Stage, tr: Trace, before: dict[int, list[int]]) -> PieceInput:
        """``before``: the KV caches' per-layer lengths before the pass
        (:func:`profiles.decode.cache_lengths`)."""
        calls = [tr.call(c.path) for c in stage.components]
        sides = tuple((c.args, c.kwargs) for c in calls)
        if stage.mode == "branch":
            # the live tensors are computed, not read from the pass: a block may change its
            # branches' outputs in place when it sums them (Falcon's mlp_output += attn)
            r = tr.call(stage.residual.path)
            tensors = (get_main(r.args, r.kwargs, stage.residual.where),)
            with torch.no_grad():
                for s in stage.prior:
                    prior_sides = tuple((tr.call(c.path).args, tr.call(c.path).kwargs)
                                        for c in s.components)
                    # an earlier branch's attention already appended this step's token to
                    # its cache layer in the pass: cut it back to what the pass found, or
                    # it attends over (and appends to) one token more than its mask holds
                    # (Falcon at decode: key 14 vs mask 13 at kv=12); it appends again
                    restore(find_caches(prior_sides), before, layer_indices(
                        submodule_at(tr.model, c.path) for c in s.components))
                    tensors = s.run(tr.model, PieceInput(tensors, prior_sides))
            return PieceInput(tensors, sides)
        first = get_main(calls[0].args, calls[0].kwargs, stage.components[0].where)
        if stage.mode == "tail":
            r = tr.call(stage.residual.path)
            return PieceInput((get_main(r.args, r.kwargs, stage.residual.where), first), sides)
        return PieceInput((first,), sides)


def boundary_paths(stages: Sequence[Stage]) -> set[str]:
    """The module calls whose inputs a capture of ``stages`` reads: each component (its side
    inputs; the first one's main tensor is the stage's input) and a tail's residual call."""
    paths = {c.path for s in stages for c in s.components}
    paths |= {c.path for s in stages for p in s.prior for c in p.components}  # branch stages
    paths |= {s.residual.path for s in stages if s.residual is not None}
    return paths


