"""Loss-MSE sensitivity from one high-precision forward and backward pass (arXiv 2505.13060).

For calibration sample n with loss L_n, a quantizable layer l (``y = x W^T + b``) and output
gradient ``g = dL_n/dy``, the first-order change of L_n when layer l runs in precision p is

    d_{l,n}(p) = <g, (Q_p(x) - x) W^T + x (Q_p(W) - W)^T>
               = <Q_p(x) - x, g W>  +  <Q_p(W) - W, sum_t g_t^T x_t>

and ``s_l(p) = mean_n d_{l,n}(p)^2``. Both inner products are computed in a tensor hook on
the layer's output, when ``g`` arrives during the backward pass, for every precision at once;
the layer's input is then dropped. Per-sample terms are exact because the batch's loss is the
sum of the per-sample losses (the model runs in eval mode, samples do not interact). Parameter
gradients are not needed and are switched off for the pass.

Layers that read one tensor (q/k/v, gate/up) see one activation quantization in a deployment
(``profiles.backends.interact``): in one format their input errors are the same noise, so
their first-order changes add up before squaring. For such a group the table holds
``s_l(p) = mean_n d_{l,n}^2 * T / sum_k mean_n d_{k,n}^2`` with
``T = mean_n (sum_k d_{k,n}(p))^2``: the group in one precision sums to its exact first-order
loss MSE, one noise source, not the sum of independent ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from hwcost.profiles.experts import is_experts
from hwcost.profiles.placement import follow_model
from hwcost.profiles.precisions import Emulation
from hwcost.sensitivity.layers import as_emulation, quantizable_layers, quantizer_of, weight_matrix
from hwcost.sensitivity.loss import LossFn, batch_size, causal_lm_loss, checked_losses
from hwcost.sensitivity.noise import error_variance
from hwcost.sensitivity.records import SensitivityRow, SensitivityTable
from torch import nn

from hwcost.enums import ONE_PASS_METHODS
from hwcost.errors import SensitivityError
from hwcost.precision import Precision, parse_precisions
from hwcost.quantizer import Quantizer

DEFAULT_PRECISIONS = ("bf16", "fp8_e4m3", "int8")

Scorer = Callable[..., torch.Tensor]  # (x, g, w, emulations, b=bias) -> [P, B] per-sample values
"""``scorer(x [B,T,in], g [B,T,out], W [out,in], emulations) -> [P, B]`` per-sample values."""


@dataclass(frozen=True)
class PerSampleTerms:
    """Per-sample values of every (layer, precision) from one pass: ``values[layer]`` is
    ``[P, N]`` float64 with rows in ``precisions`` order."""

    layers: list[str]
    precisions: list[str]
    values: dict[str, np.ndarray]
    n_samples: int
    groups: tuple[tuple[str, ...], ...] = ()  # layers that read one tensor (q/k/v, gate/up)

    def of(self, layer: str, precision: str) -> np.ndarray:
        return self.values[layer][self.precisions.index(precision)]


# ------------------------------------------------------------------------------ scorers


CHUNK_ELEMENTS = 1 << 22
"""Floor of the per-chunk buffer budget (elements); the budget is otherwise the layer's own
activations (``x`` and ``g``), so scoring never takes much more than they already do."""


def _row_chunks(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor, emus) -> int:
    """Output rows per chunk: the per-sample weight gradients of a chunk (``B x rows x in``)
    and the P weight errors of those rows (``P x rows x in``) together stay within the layer's
    activations. Emulations that are not per output row take the whole weight at once."""
    if not all(getattr(e, "rowwise_weight", False) for e in emus):
        return w.shape[0]
    budget = max(x.numel() + g.numel(), CHUNK_ELEMENTS)
    per_row = (x.shape[0] + len(emus)) * w.shape[1]
    return max(1, min(w.shape[0], budget // per_row))


def _weight_terms(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor, emus,
                  error: Callable[[Any, torch.Tensor], torch.Tensor], square: bool = False
                  ) -> torch.Tensor:
    """``[P, B]``: ``sum <G_n, error(emu_p, W)>`` (``G_n^2`` when ``square``), where
    ``G_n = sum_t g_t^T x_t`` is sample n's weight gradient, computed over chunks of output
    rows (:func:`_row_chunks`). Only one chunk of ``G`` and of the P weight errors exists at a
    time: the large-vocabulary head needs no P weight-sized buffers per batch, nor a
    per-sample gradient the size of its weight."""
    rows = _row_chunks(x, g, w, emus)
    out = torch.zeros(len(emus), x.shape[0], dtype=torch.float64)
    for r0 in range(0, w.shape[0], rows):
        sl = slice(r0, r0 + rows)
        if rows == w.shape[0]:
            d = torch.stack([error(emu, w).flatten() for emu in emus], dim=1)  # [out*in, P]
        else:  # per-row formats: the rows' errors alone equal those rows of the whole error
            wr = w[sl]
            d = torch.stack([error(emu, wr).flatten() for emu in emus], dim=1)
        big_g = torch.bmm(g[..., sl].transpose(1, 2), x).flatten(1)  # [B, rows*in]
        if square:
            big_g = big_g.square_()
        out += (big_g @ d).double().t().cpu()
        del big_g, d
    return out


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner products of two ``[B, ...]`` tensors (one batched BLAS call)."""
    n = a.shape[0]
    return torch.bmm(a.reshape(n, 1, -1), b.reshape(n, -1, 1)).view(n)


def _outputs(x, w, b, emus):
    """The layer's high-precision output, computed only when some format rounds it."""
    if not any(emu.rounds_output for emu in emus):
        return None
    y = x @ w.t()
    return y if b is None else y + b


def taylor_scorer(x, g, w, emus, b=None) -> torch.Tensor:
    """First-order change ``d_{l,n}(p)`` of each sample's loss, for each precision: input and
    weight errors through the layer, plus the output rounding of bf16/fp16 kernels.

    ``x``, ``g`` and ``w`` are float32 (the pass upcasts a low-precision model's tensors one
    layer at a time); results are ``[P, B]`` float64 on the CPU."""
    gw = g @ w  # dL/dx of this layer alone: [B, T, in]
    y = _outputs(x, w, b, emus)
    out = torch.zeros(len(emus), x.shape[0], dtype=torch.float64)
    for i, emu in enumerate(emus):
        term = _rowdot(emu.activation(x) - x, gw).double()
        if emu.rounds_output:
            term += _rowdot(emu.output(y) - y, g).double()
            if b is not None:  # the bias is stored in the format too
                term += (g.sum(1) @ (emu.bias(b) - b)).double()
        out[i] = term.cpu()
    del gw, y
    return out + _weight_terms(x, g, w, emus, lambda emu, t: emu.weight(t) - t)


def noise_scorer(x, g, w, emus, b=None) -> torch.Tensor:
    """Expected ``d_{l,n}(p)^2`` when the errors are independent noise of the format's
    variance: ``sum var(dx) (gW)^2 + sum var(dW) G_n^2 (+ sum var(dy) g^2)``."""
    gw2 = (g @ w).square()
    y = _outputs(x, w, b, emus)
    out = torch.zeros(len(emus), x.shape[0], dtype=torch.float64)
    gsum2 = g.sum(1).square() if b is not None else None  # [B, out]: one bias per output
    for i, emu in enumerate(emus):
        term = _rowdot(error_variance(emu, x), gw2).double()
        if emu.rounds_output:
            term += _rowdot(error_variance(emu, y), g.square()).double()
            if b is not None:  # the stored bias is rounded once, shared by every token
                term += (gsum2 @ error_variance(emu, b)).double()
        out[i] = term.cpu()
    del gw2, y
    return out + _weight_terms(x, g, w, emus, error_variance, square=True)


def fisher_scorer(x, g, w, emus, b=None) -> torch.Tensor:
    """ModelOpt AutoQuantize-style score per sample: ``sum g^2 (Y_q - Y)^2`` over the
    layer's outputs (a diagonal-Fisher approximation that ignores correlations)."""
    y = x @ w.t() if b is None else x @ w.t() + b
    g2 = g.square()
    out = torch.zeros(len(emus), x.shape[0], dtype=torch.float64)
    for i, emu in enumerate(emus):
        yq = emu.activation(x) @ emu.weight(w).t()
        dy = emu.output(yq if b is None else yq + emu.bias(b)) - y
        out[i] = _rowdot(g2, dy.square()).double()
    return out


class _SharedInputs:
    """Quantized activations shared by the layers that read the same input tensor (q/k/v of
    an attention block, gate/up of an MLP): computed once per precision, dropped after the
    last of those layers is scored."""

    def __init__(self) -> None:
        self.uses: dict[tuple, int] = {}
        self.cache: dict[tuple, dict[int, torch.Tensor]] = {}

    @staticmethod
    def key(x: torch.Tensor) -> tuple:
        return (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype, x._version)

    def add_use(self, key: tuple) -> None:
        self.uses[key] = self.uses.get(key, 0) + 1

    def emulations(self, key: tuple, emus: Sequence[Emulation]) -> list:
        return [_Memo(emu, self, key, i) for i, emu in enumerate(emus)]

    def release(self, key: tuple) -> None:
        self.uses[key] -= 1
        if self.uses[key] <= 0:
            self.uses.pop(key)
            self.cache.pop(key, None)

    def clear(self) -> None:
        self.uses.clear()
        self.cache.clear()


class _Memo:
    """An emulation whose ``activation`` is looked up in a :class:`_SharedInputs` cache."""

    def __init__(self, emu: Emulation, shared: _SharedInputs, key: tuple, index: int):
        self.emu, self.shared, self.key, self.index = emu, shared, key, index
        self.precision, self.fp8_max = emu.precision, emu.fp8_max

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        return self.emu.weight(w)

    @property
    def rounds_output(self) -> bool:
        return self.emu.rounds_output

    @property
    def rowwise_weight(self) -> bool:
        return getattr(self.emu, "rowwise_weight", False)

    def output(self, y: torch.Tensor) -> torch.Tensor:
        return self.emu.output(y)

    def bias(self, b: torch.Tensor | None) -> torch.Tensor | None:
        return self.emu.bias(b)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared.uses.get(self.key, 0) <= 1:  # read by this layer only: nothing to share
            return self.emu.activation(x)
        slot = self.shared.cache.setdefault(self.key, {})
        if self.index not in slot:
            slot[self.index] = self.emu.activation(x)
        return slot[self.index]


def _high(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is a 16-bit float (float32 and float64 stay as they are)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


SCORERS: dict[str, Scorer] = {"taylor": taylor_scorer, "noise": noise_scorer, "fisher": fisher_scorer}


# ----------------------------------------------------------------------------- the pass


def per_sample_terms(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn | None = None,
                     precisions: Sequence[Precision | str | Emulation] = DEFAULT_PRECISIONS,
                     layers: str | Sequence[str] = "auto", scorer: str | Scorer = "taylor"
                     ) -> PerSampleTerms:
    """Run one forward and backward pass per batch and return each layer's per-sample values
    for every precision (``d_{l,n}(p)`` for the Taylor scorer)."""
    loss_fn = loss_fn or causal_lm_loss
    score = SCORERS[scorer] if isinstance(scorer, str) else scorer
    if isinstance(precisions, str):
        precisions = parse_precisions(precisions)
    emus = [as_emulation(p) for p in precisions]
    if not emus:
        raise SensitivityError("no precisions to score")
    chosen = quantizable_layers(model, layers)
    names = list(chosen)
    collected: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    current: dict[str, torch.Tensor] = {}
    shared = _SharedInputs()
    readers: dict[tuple, list[str]] = {}  # input key -> layers reading it, this batch
    groups: dict[tuple[str, ...], None] = {}
    n_in_batch = 0

    def make_hooks(name: str, module: nn.Module):
        def pre_hook(_m, args):
            # Parameters are frozen, so the first layers' inputs would carry no gradient path;
            # a fresh leaf per layer is enough because g depends only on what comes after.
            x = args[0]
            if isinstance(x, torch.Tensor) and not x.requires_grad and x.is_floating_point():
                return (x.detach().requires_grad_(True), *args[1:])
            return None

        def fwd_hook(_m, args, y):
            if not isinstance(y, torch.Tensor) or not y.requires_grad:
                return
            x = args[0].detach()
            nb = n_in_batch
            # tokens flattened sample by sample ([B*T, H], as reshape(-1, H) of [B, T, H] gives:
            # OPT's fc1/fc2) are regrouped per sample below
            if x.shape[0] != nb and not (x.dim() == 2 and x.shape[0] % nb == 0):
                raise SensitivityError(
                    f"layer {name}: input has {x.shape[0]} rows for a batch of {nb} samples; "
                    "per-sample terms need the batch dimension first")
            # The hook outlives its use (autograd keeps graph nodes until the whole backward
            # ends): hand x over through a holder and empty it, so x is freed as soon as this
            # layer is scored, as autograd frees the tensors it saved.
            holder = [x]
            key = shared.key(x)
            shared.add_use(key)
            readers.setdefault(key, []).append(name)

            def on_grad(g: torch.Tensor) -> None:
                x = holder.pop()
                with torch.no_grad():
                    # scored in float32 whatever the model's dtype: a bf16 baseline's
                    # tensors are upcast here, one layer at a time
                    w = weight_matrix(module).detach()
                    x3 = _high(x.reshape(nb, -1, x.shape[-1]))
                    g3 = g.detach().reshape(nb, -1, g.shape[-1]).to(x3.dtype)
                    b = getattr(module, "bias", None)
                    vals = score(x3, g3, w.to(x3.dtype), shared.emulations(key, emus),
                                 b=None if b is None else b.detach().to(x3.dtype))
                shared.release(key)
                # NaN/inf in g reaches every inner product (inf * 0 is NaN too): checking the
                # few results is as strict as checking g and costs nothing
                if not torch.isfinite(vals).all():
                    raise SensitivityError(f"non-finite gradient (NaN or inf) at layer {name}; "
                                           "the loss or the model overflows at this precision")
                # a module called twice in one forward: first-order changes add up
                current[name] = current[name] + vals if name in current else vals

            y.register_hook(on_grad)
        return pre_hook, fwd_hook

    def add(name: str, vals: torch.Tensor) -> None:
        if not torch.isfinite(vals).all():
            raise SensitivityError(f"non-finite gradient (NaN or inf) at layer {name}; "
                                   "the loss or the model overflows at this precision")
        current[name] = current[name] + vals if name in current else vals

    def instrument_experts(name: str, module: nn.Module) -> Any:
        """An MoE block's experts as one slot: the first-order terms of every expert's two
        matmuls add up per sample (on the tokens routed to it, zero elsewhere)."""
        from hwcost.profiles.experts import expert_weights, run_experts
        from hwcost.sensitivity.layers import _Restore

        def forward(hidden, top_k_index, top_k_weights):
            if not hidden.requires_grad and hidden.is_floating_point():
                hidden = hidden.detach().requires_grad_(True)
            rows = hidden.shape[0]
            if rows % n_in_batch:
                raise SensitivityError(f"layer {name}: {rows} routed rows for a batch of "
                                       f"{n_in_batch} samples; tokens must be grouped by sample")

            def linear(e, which, x, tok):
                w = expert_weights(module, e)[which]
                y = torch.nn.functional.linear(x, w)
                if not y.requires_grad:
                    return y
                holder = [x.detach()]

                def on_grad(g: torch.Tensor) -> None:
                    xs = holder.pop()
                    with torch.no_grad():
                        x_d = xs.new_zeros(rows, xs.shape[-1]).index_copy_(0, tok, xs)
                        g_d = g.new_zeros(rows, g.shape[-1]).index_copy_(0, tok, g.detach())
                        x3 = _high(x_d.view(n_in_batch, -1, xs.shape[-1]))
                        g3 = g_d.view(n_in_batch, -1, g.shape[-1]).to(x3.dtype)
                        vals = score(x3, g3, w.detach().to(x3.dtype), emus, b=None)
                    add(name, vals)
                y.register_hook(on_grad)
                return y
            return run_experts(module, hidden, top_k_index, top_k_weights, linear)

        module.forward = forward
        return _Restore(module)

    handles = []
    frozen = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    try:
        for p in frozen:
            p.requires_grad_(False)
        model.eval()
        for name, module in chosen.items():
            if is_experts(module):
                handles.append(instrument_experts(name, module))
                continue
            pre, fwd = make_hooks(name, module)
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(fwd))
        n_total = 0
        with torch.enable_grad():
            for batch in batches:
                batch = follow_model(batch, model)
                n_in_batch = batch_size(batch)
                current.clear()
                shared.clear()
                readers.clear()
                losses = checked_losses(loss_fn(model, batch), n_in_batch)
                if not losses.requires_grad:
                    raise SensitivityError("the loss does not depend on any quantizable layer's output")
                losses.sum().backward()
                for group in readers.values():
                    if len(group) > 1:
                        groups[tuple(group)] = None
                for n in names:
                    collected[n].append(current.get(n, torch.zeros(len(emus), n_in_batch,
                                                                   dtype=torch.float64)))
                n_total += n_in_batch
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    if n_total == 0:
        raise SensitivityError("no calibration batches")
    values = {n: torch.cat(v, dim=1).numpy() for n, v in collected.items()}
    return PerSampleTerms(names, [e.precision.value for e in emus], values, n_total,
                          tuple(groups))


def analyze(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn | None = None,
            precisions: Sequence[Precision | str | Emulation] = DEFAULT_PRECISIONS,
            layers: str | Sequence[str] = "auto", method: str = "taylor",
            calib_fingerprint: str = "", *, checkpoint: str | None = None,
            quantizer: Quantizer | str | None = None) -> SensitivityTable:
    """Per-layer, per-precision loss-MSE contributions ``s_l(p)`` from one pass.

    Args:
        model: any torch module; it runs in eval mode in its own dtype (the high-precision
            reference). Parameters are left unchanged.
        batches: calibration batches (for the default loss: token ids ``[N, T]`` or
            ``{"input_ids": ...}``); reused iterables are fine.
        loss_fn: ``loss_fn(model, batch) -> [N]`` per-sample losses; default: next-token
            cross-entropy of a causal LM, averaged over each sample's tokens.
        precisions: the precisions to score (registry names); fp32 is the identity.
        layers: ``"auto"`` (every nn.Linear / Conv1D) or a list of module names.
        method: ``"taylor"`` (the actual rounding errors, first order) or ``"noise"`` (errors
            as independent noise of the format's variance).
        calib_fingerprint: fingerprint of the calibration set, kept with the table.
        checkpoint: digest of the model's weights (``profiles.checkpoint``); computed from
            the model when not given.
        quantizer: the emulation parameters precision names are scored with (default:
            the registry's, or the fp8 ranges of emulations passed in); its key is kept.

    Returns:
        a SensitivityTable with ``s_l(p)`` and its standard error over samples.
    """
    if method not in ONE_PASS_METHODS:
        raise SensitivityError(f"unknown sensitivity method {method!r}; known: "
                               f"{', '.join(m.value for m in ONE_PASS_METHODS)}")
    from hwcost.profiles.checkpoint import checkpoint_digest

    if isinstance(precisions, str):
        precisions = parse_precisions(precisions)
    quant = quantizer_of(precisions, quantizer)
    emus = [as_emulation(p, quant) for p in precisions]
    terms = per_sample_terms(model, batches, loss_fn, emus, layers, method)
    squared = method == "taylor"  # the noise scorer already returns E[d^2] per sample
    table = table_from_terms(terms, method, calib_fingerprint, squared=squared)
    return replace(table, checkpoint=checkpoint or checkpoint_digest(model),
                   quantizer=quant.key)


def table_from_terms(terms: PerSampleTerms, method: str, calib_fingerprint: str = "",
                     *, squared: bool) -> SensitivityTable:
    """Mean over samples (of ``d^2`` when ``squared``) with its standard error; with
    ``squared``, layers of a shared-input group carry their share of the group's one noise
    source (module docstring)."""
    rows = []
    n = terms.n_samples
    scale = shared_input_scales(terms) if squared else {}
    for layer in terms.layers:
        vals = terms.values[layer]
        per_sample = np.square(vals) if squared else vals
        for i, prec in enumerate(terms.precisions):
            v = per_sample[i] * scale.get((layer, i), 1.0)
            stderr = float(v.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
            rows.append(SensitivityRow(layer, prec, float(v.mean()), stderr, n))
    return SensitivityTable(rows, method, calib_fingerprint)


def shared_input_scales(terms: PerSampleTerms) -> dict[tuple[str, int], float]:
    """``(layer, precision index) -> T / sum_k mean d_k^2`` for the layers of each group that
    reads one tensor, so that the group's entries in one precision sum to ``T``, the mean
    square of the group's summed first-order change (one shared quantization)."""
    out: dict[tuple[str, int], float] = {}
    for group in terms.groups:
        if not all(g in terms.values for g in group):
            continue
        for i in range(len(terms.precisions)):
            d = np.stack([terms.values[g][i] for g in group])  # [layers, samples]
            separate = float(np.square(d).mean(axis=1).sum())
            if separate <= 0:
                continue
            together = float(np.square(d.sum(axis=0)).mean())
            for g in group:
                out[g, i] = together / separate
    return out
