"""Mixture-of-experts layers: the experts of one MoE block as one grouped precision slot.

Transformers 5 stores the experts of a sparse MoE block (Mixtral, Qwen2-MoE, Qwen3-MoE, ...)
as one module with two 3-D parameters, ``gate_up_proj [E, 2I, H]`` and ``down_proj [E, H, I]``,
called as ``experts(hidden [T, H], top_k_index [T, k], top_k_weights [T, k])``. hwcost gives
that module one slot: one precision for every expert of the block (a grouped decision). The
router (a plain parameter, not an ``nn.Linear``) is never quantized.

:func:`run_experts` is the one implementation of the experts' forward pass with a pluggable
per-expert linear: the emulation (``sensitivity.layers.emulated``), the Taylor pass
(``sensitivity.taylor``) and the deployment (:class:`DeployedExperts`, real kernels per
expert) all route tokens exactly as the model does and differ only in how each expert's two
matmuls are computed. Costs are measured on the tokens the model's own router sends to each
expert at the profiled inputs (realistic routing), and the MAC objective counts the active
experts only (``SlotInfo.active``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Linear = Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor]
"""``linear(expert, which, x, tokens) -> y``: ``which`` 0 is gate_up (``x @ W1[e]^T``), 1 is
down; ``tokens`` are the rows of the block's input that ``x``'s rows come from."""


def is_experts(m: nn.Module) -> bool:
    """A fused experts module of the layout above (concatenated gate/up, not transposed, no
    bias); other layouts are not a slot (their block then holds no quantizable layer)."""
    gu, down = getattr(m, "gate_up_proj", None), getattr(m, "down_proj", None)
    return (isinstance(gu, torch.Tensor) and isinstance(down, torch.Tensor) and gu.dim() == 3
            and down.dim() == 3 and hasattr(m, "act_fn") and hasattr(m, "num_experts")
            and not getattr(m, "is_transposed", False) and not getattr(m, "has_bias", False)
            and getattr(m, "is_concatenated", True) and getattr(m, "has_gate", True))


def experts_shape(m: nn.Module) -> tuple[int, int, int, int]:
    """``(experts, active per token, hidden, intermediate)``."""
    e, two_i, h = m.gate_up_proj.shape
    cfg = getattr(m, "config", None)
    k = getattr(cfg, "num_experts_per_tok", None) or getattr(cfg, "top_k", None) or e
    return int(e), int(k), int(h), int(two_i // 2)


def expert_weights(m: nn.Module, e: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert ``e``'s two weights as ``[out, in]`` views (no copy)."""
    return m.gate_up_proj[e], m.down_proj[e]


def run_experts(m: nn.Module, hidden: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor, linear: Linear) -> torch.Tensor:
    """The experts' output for routed tokens, each expert's matmuls done by ``linear``."""
    n_exp = m.num_experts if isinstance(m.num_experts, int) else len(m.num_experts)
    out = torch.zeros_like(hidden)
    with torch.no_grad():
        mask = nn.functional.one_hot(top_k_index, num_classes=n_exp + 1).permute(2, 1, 0)
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
    for e in hit[:, 0].tolist():
        if e == n_exp:
            continue
        pos, tok = torch.where(mask[e])
        gate, up = linear(e, 0, hidden[tok], tok).chunk(2, dim=-1)
        h = linear(e, 1, m.act_fn(gate) * up, tok)
        h = h * top_k_weights[tok, pos, None]
        out.index_add_(0, tok, h.to(out.dtype))
    return out


class DeployedExperts(nn.Module):
    """The experts of one block deployed in one precision: two deployed linears per expert
    (real kernels), routed as the original module routes."""

    def __init__(self, m: nn.Module, build: Callable, precision, kernel: str) -> None:
        super().__init__()
        self.num_experts, self.act_fn = m.num_experts, m.act_fn
        self.precision, self.kernel = precision, kernel
        n = experts_shape(m)[0]
        self.experts = nn.ModuleList(
            nn.ModuleList([build(w.detach().float(), None) for w in expert_weights(m, e)])
            for e in range(n))

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.experts[0][0].weight.dtype

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        return run_experts(self, hidden, top_k_index, top_k_weights,
                           lambda e, which, x, _tok: self.experts[e][which](x))
