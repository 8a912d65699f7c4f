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
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hwcost.errors import PartitionError
from hwcost.shape import READS_KV
from hwcost.store import ManifestItem, SlotInfo, SubgraphInfo
from profiles.decode import layer_indices
from profiles.signature import digest, model_fingerprint, module_structure
from profiles.trace import (
    QUANTIZABLE_TYPES,
    Call,
    Trace,
    close,
    get_main,
    main_out,
    main_where,
    quantizable,
    residual_add,
    same,
    slot_info,
)

__all__ = [
    "Partition", "Piece", "PieceInput", "partition", "register_model", "quantizable",
    "model_fingerprint", "QUANTIZABLE_TYPES",
]


# ------------------------------------------------------------------------------- stages


def _resolve(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def _with_main(call_args: tuple, call_kwargs: dict, where, t: torch.Tensor) -> tuple[tuple, dict]:
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
                mod = _shallow_replace(_resolve(root, path), mine)
            else:
                mod = _resolve(root, path)
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
            a, k = _with_main(args, kwargs, comp.where, t)
            t = main_out(_resolve(root, comp.path)(*a, **k))
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
        tr = Trace(model, inputs, keep=_boundary_paths(stages))
        return [self._capture(p.stage, tr) if wanted is None or p.position in wanted else None
                for p in self.pieces]

    def capture_stages(self, model: nn.Module, inputs: dict[str, Any]
                       ) -> tuple[list[PieceInput], Any]:
        """Every stage's input (glue included) and the model's output, from one pass."""
        tr = Trace(model, inputs, keep=_boundary_paths(self.stages))
        return [self._capture(s, tr) for s in self.stages], tr.output

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
    def _capture(stage: Stage, tr: Trace) -> PieceInput:
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
                    tensors = s.run(tr.model, PieceInput(tensors, prior_sides))
            return PieceInput(tensors, sides)
        first = get_main(calls[0].args, calls[0].kwargs, stage.components[0].where)
        if stage.mode == "tail":
            r = tr.call(stage.residual.path)
            return PieceInput((get_main(r.args, r.kwargs, stage.residual.where), first), sides)
        return PieceInput((first,), sides)


def _boundary_paths(stages: Sequence[Stage]) -> set[str]:
    """The module calls whose inputs a capture of ``stages`` reads: each component (its side
    inputs; the first one's main tensor is the stage's input) and a tail's residual call."""
    paths = {c.path for s in stages for c in s.components}
    paths |= {c.path for s in stages for p in s.prior for c in p.components}  # branch stages
    paths |= {s.residual.path for s in stages if s.residual is not None}
    return paths


# ----------------------------------------------------------------------------- the walk


class _Walker:
    def __init__(self, tr: Trace, k_max: int):
        self.tr = tr
        self.k_max = k_max
        self.ended: list[str] = []  # modules whose output ends (never reaches the output)

    def _off_chain(self, off: Call, parent: Call) -> None:
        """A module with slots beside the chain of ``parent``: fine when its output never
        reaches ``parent``'s output (BERT's pooler when the loss reads the hidden states;
        its layers stay in the baseline precision); an error naming it when it rejoins."""
        if not self.nslots(off):
            return
        if self.tr.reaches(off, parent):
            raise PartitionError(
                f"data flow branches at {off.name}: its output rejoins the chain of "
                f"{parent.name or 'the model'} through operations outside modules, so the model "
                "cannot be cut into sequential pieces; wrap the branch and its join in one "
                "module, or plan this model without profiling the pieces of that part")
        self.ended.append(off.name)

    def nslots(self, c: Call) -> int:
        return len(self.tr.slots(c))

    def chain(self, c: Call) -> tuple[list[Call], bool]:
        """Children of ``c`` on its main data path, in order; and whether data enters the
        chain from outside the modules (a prologue of plain tensor ops)."""
        kids = [self.tr.calls[i] for i in c.children]
        target = main_out(c.output)
        start = get_main(c.args, c.kwargs, main_where(c.args, c.kwargs))
        chain: list[Call] = []
        j = len(kids) - 1
        prologue = False
        if c.parent is None and kids and not any(same(main_out(k.output), target) for k in kids):
            # an epilogue of plain tensor operations on the last layer's output (Gemma 2's
            # final logit soft-cap): the chain ends at the last module with slots
            slotted = [i for i, k in enumerate(kids) if self.nslots(k)]
            last = main_out(kids[slotted[-1]].output) if slotted else None
            if (last is not None and target is not None and last.shape == target.shape
                    and not any(self.nslots(k) for k in kids[slotted[-1] + 1:])):
                target = last
        while True:
            k = j
            while k >= 0 and not same(main_out(kids[k].output), target):
                k -= 1
            if k < 0:
                prologue = not same(target, start)
                if not chain:
                    raise PartitionError(
                        f"data flow branches inside {c.name or 'the model'}: its output is "
                        "computed from its modules' outputs by non-module operations (parallel "
                        "attention and MLP summed, a final logit soft-cap, ...)")
                break
            for off in kids[k + 1:j + 1]:  # between chain members: side computations only
                self._off_chain(off, c)
            chain.insert(0, kids[k])
            target = get_main(kids[k].args, kids[k].kwargs, main_where(kids[k].args, kids[k].kwargs))
            j = k - 1
            if same(target, start):
                break
        for off in kids[:j + 1]:
            if not prologue:
                self._off_chain(off, c)
        if prologue and any(self.nslots(o) for o in kids[:j + 1]):
            bad = [o.name for o in kids[:j + 1] if self.nslots(o)]
            raise PartitionError(f"data flow branches at {bad[-1]}: the input of {chain[0].name} "
                                 f"combines {', '.join(bad)} through non-module operations")
        return chain, prologue

    def stages(self, c: Call) -> list[Stage | None]:
        """Stages of ``c``'s chain; ``None`` marks a prologue (data entering through plain
        tensor operations), after which the chain starts."""
        chain, prologue = self.chain(c)
        out: list[Stage | None] = [None] if prologue else []
        for kid in chain:
            n = self.nslots(kid)
            if n == 0 or quantizable(kid.module) or not kid.children:
                out.append(self._seq([kid]))
                continue
            units = self._residual_units(kid)
            if units is not None:
                for unit in units:
                    out.extend(self._unit_stages(kid, unit))
                continue
            if n <= self.k_max and not isinstance(kid.module, (nn.Sequential, nn.ModuleList)):
                out.append(self._seq([kid]))
                continue
            branches = self._parallel_branches(kid)
            if branches is not None:
                out.extend(self._parallel_stages(kid, branches))
                continue
            inner = self.stages(kid)
            if inner and inner[0] is None and any(s is not None and s.slot_names for s in out):
                raise PartitionError(f"data flow branches at {kid.name}: data enters it from "
                                     "outside the chain")
            out.extend(inner)
        return out

    def _seq(self, calls: list[Call]) -> Stage:
        comps = tuple(Component(k.name, main_where(k.args, k.kwargs)) for k in calls)
        names = tuple(s.name for k in calls for s in self.tr.slots(k))
        return Stage("seq", comps, names)

    def _residual_units(self, b: Call) -> list[tuple[list[Call], list[Call]]] | None:
        """``[(pre_calls, body_calls), ...]`` when ``b`` is a chain of residual units
        ``h = h + body(pre(h))``, checked on the recorded values; else None.

        ``pre`` are slot-less modules (the input norm); ``body`` starts at the first module
        with slots and runs on while modules take the previous one's output: a sublayer
        (attention, MLP), a sandwich norm after it (Gemma), or a flat fc1/activation/fc2 (OPT).
        """
        kids = [self.tr.calls[i] for i in b.children]
        x = get_main(b.args, b.kwargs, main_where(b.args, b.kwargs))
        if x is None or not kids:
            return None
        h, i, units = x, 0, []
        while i < len(kids):
            pre = []
            while i < len(kids) and self.nslots(kids[i]) == 0:
                pre.append(kids[i])
                i += 1
            if i == len(kids):
                return None
            t = h
            for m in pre:
                if not _feeds(t, m):
                    return None
                t = main_out(m.output)
            body = []
            while i < len(kids) and t is not None and _feeds(t, kids[i]) and not (
                    body and t.numel() == h.numel() and _feeds(residual_add(h, t), kids[i])):
                body.append(kids[i])
                t = main_out(kids[i].output)
                i += 1
            if not body or t is None or t.numel() != h.numel() or t.shape[-1] != h.shape[-1]:
                return None
            units.append((pre, body))
            h = residual_add(h, t)
        if len(units) < 2 and self.nslots(b) <= self.k_max:
            return None  # a single unit that fits is better timed whole
        return units if close(h, main_out(b.output)) else None

    def _parallel_branches(self, b: Call) -> list[list[Call]] | None:
        """``[[norm, sublayer, dropout...], ...]`` when ``b`` computes ``x + sum_i
        branch_i(x)`` (GPT-NeoX, Falcon, Phi-2: attention and MLP read the same input and are
        summed), checked by running the branches on the recorded input; else None."""
        kids = [self.tr.calls[i] for i in b.children]
        x = get_main(b.args, b.kwargs, main_where(b.args, b.kwargs))
        out = main_out(b.output)
        if x is None or out is None or out.shape != x.shape:
            return None
        branches: list[list[Call]] = []
        norms: list[Call] = []  # slot-less modules reading x (the branches' input norms)
        for k in kids:
            inp = get_main(k.args, k.kwargs, main_where(k.args, k.kwargs))
            if not isinstance(inp, torch.Tensor):
                continue
            prev = main_out(branches[-1][-1].output) if branches else None
            if not self.nslots(k):
                if _feeds(x, k):
                    norms.append(k)
                elif prev is not None and _feeds(prev, k):
                    branches[-1].append(k)  # dropout after a sublayer
                continue
            src = next((n for n in reversed(norms) if _feeds(main_out(n.output), k)), None)
            if _feeds(x, k):
                branches.append([k])
            elif src is not None:
                branches.append([src, k])
            elif prev is not None and _feeds(prev, k):
                branches[-1].append(k)
            else:
                return None
        if len(branches) < 2 or sum(self.nslots(k) for br in branches for k in br) != self.nslots(b):
            return None
        root = self.tr.calls[0].module
        total = x
        with torch.no_grad():
            for br in branches:
                st = self._seq(br)
                t = st.run(root, PieceInput((x,), tuple((k.args, k.kwargs) for k in br)))[0]
                total = residual_add(total, t)
        return branches if close(total, out) else None

    def _parallel_stages(self, block: Call, branches: list[list[Call]]) -> list[Stage]:
        """One stage per branch, a branch over the cap cut before its output projection; the
        stages carry ``(x, partial sum)`` and the block's last stage returns ``x + sum``."""
        res = Component(block.name, main_where(block.args, block.kwargs))
        groups: list[tuple[list[Call], str, tuple[str, ...]]] = []  # (calls, split, skip)
        for br in branches:
            if sum(self.nslots(k) for k in br) <= self.k_max:
                groups.append((br, "", ()))
                continue
            i0 = next(i for i, k in enumerate(br) if self.nslots(k))
            head, tail, skip = self._split_at_projection(block, br[:i0], br[i0:])
            groups += [(head, "head", skip), (tail, "tail", ())]
        out: list[Stage] = []
        carry = False
        for i, (calls, split, skip) in enumerate(groups):
            comps = tuple(Component(k.name, main_where(k.args, k.kwargs)) for k in calls)
            names = tuple(s.name for k in calls for s in self.tr.slots(k) if s.name not in skip)
            out.append(Stage("branch", comps, names, skip=skip, residual=res, carry=carry,
                             split=split, last=i == len(groups) - 1, prior=tuple(out)))
            carry = carry or split != "head"
        return out

    def _split_at_projection(self, block: Call, pre: list[Call], body: list[Call]
                             ) -> tuple[list[Call], list[Call], tuple[str, ...]]:
        """Head calls, tail calls and the skipped paths of a unit cut before the output
        projection of its sublayer (``body[0]``)."""
        names = tuple(s.name for k in body for s in self.tr.slots(k))
        sloted = [k for k in body if self.nslots(k)]
        if len(sloted) > 1 or body[0] is not sloted[0]:
            raise PartitionError(f"cannot cut the residual unit of {block.name} at "
                                 f"{sloted[0].name} into pieces of at most {self.k_max} layers; "
                                 "raise max_configs or profile fewer precisions")
        sub, post = body[0], body[1:]
        kids = [self.tr.calls[i] for i in sub.children]
        target = main_out(sub.output)
        k = len(kids) - 1
        trail: list[Call] = []
        while k >= 0 and not quantizable(kids[k].module):
            if self.nslots(kids[k]):
                break
            trail.insert(0, kids[k])
            k -= 1
        if k < 0 or not quantizable(kids[k].module):
            raise PartitionError(f"cannot cut {sub.name} into pieces of at most {self.k_max} "
                                 "layers: it has no final output projection to cut before")
        proj = kids[k]
        t = main_out(proj.output)
        for m in trail:
            t = main_out(m.output)
        if not same(t, target) or len(names) - 1 > self.k_max:
            heads = ", ".join(n.rsplit(".", 1)[-1] for n in names[:-1])
            raise PartitionError(f"data flow branches at {sub.name}: its layers {heads} cannot be "
                                 f"cut into pieces of at most {self.k_max}; raise max_configs or "
                                 "profile fewer precisions")
        skip = tuple(m.name for m in [proj, *trail])
        return [*pre, sub], [proj, *trail, *post], skip

    def _unit_stages(self, block: Call, unit: tuple[list[Call], list[Call]]) -> list[Stage]:
        pre, body = unit
        comps = tuple(Component(k.name, main_where(k.args, k.kwargs)) for k in [*pre, *body])
        names = tuple(s.name for k in body for s in self.tr.slots(k))
        if len(names) <= self.k_max:
            return [Stage("residual", comps, names)]
        head_calls, tail_calls, skip = self._split_at_projection(block, pre, body)
        head = Stage("head", comps[:len(head_calls)], names[:-1], skip=skip)
        tail_comps = tuple(Component(m.name, main_where(m.args, m.kwargs)) for m in tail_calls)
        return [head, Stage("tail", tail_comps, names[-1:], residual=comps[0])]


def _feeds(t: torch.Tensor, call: Call) -> bool:
    """Whether ``call``'s main input is ``t`` (the same tensor or equal values)."""
    inp = get_main(call.args, call.kwargs, main_where(call.args, call.kwargs))
    return inp is t or close(t, inp)


# ---------------------------------------------------------------------------- partition


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
    mods = [_resolve(root, c.path) for c in stage.components]
    slots = tuple(slot_info(_resolve(root, n)) for n in stage.slot_names)
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
            owner = _resolve(root, path.rsplit(".", 1)[0]) if "." in path else owner
        kind = type(owner).__name__ + {"head": ".head", "tail": ".tail"}.get(stage.split,
                                                                            ".branch")
    elif stage.mode == "tail":  # named for the sublayer that owns the output projection
        path = stage.components[0].path
        owner = _resolve(root, path.rsplit(".", 1)[0]) if "." in path else mods[0]
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
    walker = _Walker(tr, k_max)
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
    _, items = store.manifest(part.model_fingerprint)
    stored = [(i.signature, tuple(i.layer_names)) for i, _ in items]
    if stored != [(p.signature, p.layer_names) for p in part.pieces]:
        raise PartitionError(f"model {part.model_fingerprint} is stored with another cut into "
                             "subgraphs than this partition; profile it into a new store")
    return mid
