"""Per-sample losses: the quantity whose change under quantization is scored.

A loss function is ``loss_fn(model, batch) -> tensor [N]``, one loss per sample of the
batch. Sensitivity needs per-sample losses because the metric is the mean over samples of the
*squared* per-sample change; and the batch's total loss must be the plain sum of per-sample
losses (samples must not interact, so the model runs in eval mode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from hwcost.profiles.placement import follow_model
from torch import nn

from hwcost.errors import SensitivityError

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""``loss_fn(model, batch) -> tensor [N]`` of per-sample losses."""


def batch_input_ids(batch: Any) -> torch.Tensor:
    """The token ids ``[N, T]`` of a batch given as a tensor or a mapping with ``input_ids``."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping) and "input_ids" in batch:
        return batch["input_ids"]
    raise SensitivityError("a causal-LM batch must be a tensor of token ids [N, T] or a mapping "
                           "with 'input_ids'; pass loss_fn for other models")


def batch_size(batch: Any) -> int:
    """Number of samples in a batch (first dimension of its tensor or first tensor value)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        for v in batch.values():
            if isinstance(v, torch.Tensor):
                return int(v.shape[0])
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    raise SensitivityError(f"cannot tell the number of samples of a {type(batch).__name__} batch")


def causal_lm_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Next-token cross-entropy of each sample, averaged over its tokens: ``[N]``.

    Works for any model whose output has ``.logits`` (Hugging Face) or is the logits tensor.
    """
    ids = follow_model(batch_input_ids(batch), model)
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise SensitivityError(f"token ids must have shape [N, T] with T >= 2, got {list(ids.shape)}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab and (int(ids.max()) >= vocab or int(ids.min()) < 0):
        raise SensitivityError(f"token id {int(ids.max())} is outside the model's vocabulary "
                               f"of {vocab}")
    out = model(input_ids=ids) if _takes_input_ids(model) else model(ids)
    logits = out.logits if hasattr(out, "logits") else out
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise SensitivityError("the model's output is not logits [N, T, vocab]; pass loss_fn")
    pred = logits[:, :-1].float() if logits.dtype in (torch.float16, torch.bfloat16) else logits[:, :-1]
    ce = nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), ids[:, 1:].reshape(-1),
                                     reduction="none")
    return ce.view(ids.shape[0], -1).mean(dim=1)


def _takes_input_ids(model: nn.Module) -> bool:
    # Hugging Face models take keyword input_ids; a plain module takes the tensor positionally.
    return hasattr(model, "config") and hasattr(model, "get_input_embeddings")


def checked_losses(losses: Any, n: int, where: str = "loss_fn") -> torch.Tensor:
    """Validate a loss function's output: a finite float tensor of shape ``[n]``."""
    if not isinstance(losses, torch.Tensor):
        raise SensitivityError(f"{where} must return a tensor of per-sample losses [N], "
                               f"got {type(losses).__name__}")
    if losses.dim() != 1 or losses.shape[0] != n:
        raise SensitivityError(f"{where} must return one loss per sample, shape [{n}], got "
                               f"{list(losses.shape)} (a mean over the batch is not per-sample)")
    if not torch.isfinite(losses).all():
        raise SensitivityError(f"{where} returned non-finite losses (NaN or inf)")
    return losses


@torch.no_grad()
def per_sample_losses(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn | None = None
                      ) -> torch.Tensor:
    """Per-sample losses of ``model`` over all batches, concatenated: ``[N_total]`` float64.

    Works on any module, including a model deployed with real low-precision kernels.
    """
    loss_fn = loss_fn or causal_lm_loss
    was_training = model.training
    model.eval()
    try:
        out = [checked_losses(loss_fn(model, follow_model(b, model)), batch_size(b))
               .detach().double().cpu() for b in batches]
    finally:
        model.train(was_training)
    if not out:
        raise SensitivityError("no calibration batches")
    return torch.cat(out)
