"""Checkpoint identity: a content digest of a model's weights.

The architecture fingerprint (``profiles.signature.model_fingerprint``) names what latencies
depend on; loss sensitivities, plans and validations depend on the weights too, so they are
keyed by this digest as well. Two checkpoints of one architecture (a base model and its
fine-tune) share every measurement and get their own sensitivity tables.

The digest is cheap for large checkpoints: per tensor (in ``state_dict`` order) its name,
shape and a strided sample of at most :data:`SAMPLES_PER_TENSOR` values spread over the
whole tensor, cast to float32 so a bf16 checkpoint loaded in float32 hashes as it does in
bf16. Reading the in-memory ``state_dict`` works for directories and factory-built models
alike. A change that touches only unsampled elements of every tensor goes unnoticed; any
fine-tune or re-initialisation changes the sampled values.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

SAMPLES_PER_TENSOR = 4096
DIGEST_CHARS = 32


def checkpoint_digest(model: nn.Module) -> str:
    """Hex digest of ``model``'s weights (parameters and buffers of its ``state_dict``)."""
    h = hashlib.blake2b(digest_size=DIGEST_CHARS // 2)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=False).items():
            # no dtype: the same bf16 weights loaded in float32 are the same checkpoint
            h.update(f"{name}\0{tuple(t.shape)}\0".encode())
            if t.device.type == "meta" or t.numel() == 0:
                continue
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // SAMPLES_PER_TENSOR)
            sample = flat[::step][:SAMPLES_PER_TENSOR]
            # the last element too: a strided sample of a short tail may stop before it
            sample = torch.cat([sample, flat[-1:]]).to("cpu")
            sample = sample.float() if sample.is_floating_point() else sample.long()
            h.update(sample.contiguous().numpy().tobytes())
    return h.hexdigest()
