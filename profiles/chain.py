"""The walk that finds a model's chain of stages in one recorded forward pass.

From the model's output backwards, the children that hand the main tensor (the residual
stream) from one to the next form the chain; pre-norm residual units, parallel-residual
branches and plain sequential runs each become stages (:mod:`profiles.pieces`). A module with
quantizable layers off the chain whose output rejoins it is refused by name.
"""

from __future__ import annotations

import torch
from hwcost.profiles.pieces import Component, PieceInput, Stage
from hwcost.profiles.trace import (
    Call,
    Trace,
    close,
    get_main,
    main_out,
    main_where,
    quantizable,
    residual_add,
    same,
)
from torch import nn

from hwcost.errors import PartitionError

__all__ = ["ChainWalker"]


class ChainWalker:
    """Walks a recorded pass backwards from the output and returns the stages of the chain
    (:meth:`stages`), each at most ``k_max`` quantizable layers wide."""

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

