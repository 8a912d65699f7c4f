"""Calibration data: N token sequences of length T, from a text file (tokenized with the
model's tokenizer) or from a file of token ids ``[N, T]`` (safetensors or npy), sampled with
a seed, and fingerprinted by the hash of the token ids so stored tables name their data."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwcost.errors import SensitivityError

TEXT_SUFFIXES = (".txt", ".text", ".md")
IDS_SUFFIXES = (".safetensors", ".npy")


@dataclass(frozen=True)
class CalibrationSet:
    """Token ids ``[N, T]`` (int64) with their fingerprint and where they came from."""

    input_ids: torch.Tensor
    fingerprint: str
    source: str
    seed: int

    @property
    def n_samples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def batches(self, batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
        """Consecutive batches ``{"input_ids": [b, T]}`` covering every sample once."""
        if batch_size < 1:
            raise SensitivityError(f"batch size must be >= 1, got {batch_size}")
        return [{"input_ids": self.input_ids[i:i + batch_size]}
                for i in range(0, self.n_samples, batch_size)]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.batches())


def fingerprint_ids(ids: torch.Tensor) -> str:
    """SHA-256 of the token ids (as little-endian int64) and their shape."""
    arr = np.ascontiguousarray(ids.detach().cpu().numpy().astype("<i8"))
    h = hashlib.sha256(f"ids:{arr.shape[0]}x{arr.shape[1]}:".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def from_ids(ids: Any, *, vocab_size: int | None = None, samples: int | None = None,
             seq_len: int | None = None, seed: int = 0, source: str = "tensor") -> CalibrationSet:
    """A calibration set from token ids ``[N, T]``: checked, then (seeded) ``samples`` rows
    and the first ``seq_len`` columns."""
    t = torch.as_tensor(np.asarray(ids)) if not isinstance(ids, torch.Tensor) else ids
    if t.dim() != 2:
        raise SensitivityError(f"calibration token ids must have shape [N, T], got {list(t.shape)} "
                               f"in {source}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise SensitivityError(f"calibration token ids must be integers, got {t.dtype} in {source}")
    t = t.to(torch.int64)
    if t.shape[0] < 1 or t.shape[1] < 2:
        raise SensitivityError(f"calibration data needs N >= 1 sequences of T >= 2 tokens, got "
                               f"{list(t.shape)} in {source}")
    if seq_len is not None:
        if seq_len < 2 or seq_len > t.shape[1]:
            raise SensitivityError(f"--seq-len {seq_len} must be in [2, {t.shape[1]}] for {source}")
        t = t[:, :seq_len]
    if samples is not None:
        if samples < 1 or samples > t.shape[0]:
            raise SensitivityError(f"--samples {samples} must be in [1, {t.shape[0]}] for {source}")
        gen = torch.Generator().manual_seed(seed)
        t = t[torch.randperm(t.shape[0], generator=gen)[:samples].sort().values]
    _check_vocab(t, vocab_size, source)
    t = t.contiguous()
    return CalibrationSet(t, fingerprint_ids(t), source, seed)


def from_text(text: str, tokenizer: Any, *, samples: int, seq_len: int, seed: int = 0,
              vocab_size: int | None = None, source: str = "text") -> CalibrationSet:
    """``samples`` windows of ``seq_len`` tokens at seeded random, non-overlapping offsets of
    the tokenized text."""
    if tokenizer is None:
        raise SensitivityError(f"{source} is text: a tokenizer is needed (the model has none)")
    if samples < 1 or seq_len < 2:
        raise SensitivityError(f"need samples >= 1 and seq_len >= 2, got {samples} and {seq_len}")
    ids = _encode(tokenizer, text)
    n_windows = len(ids) // seq_len
    if n_windows < samples:
        raise SensitivityError(f"{source} has {len(ids)} tokens: room for {n_windows} sequences of "
                               f"{seq_len}, not {samples}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randperm(n_windows, generator=gen)[:samples].sort().values * seq_len
    ids_t = torch.as_tensor(ids, dtype=torch.int64)
    windows = torch.stack([ids_t[s:s + seq_len] for s in starts.tolist()])
    _check_vocab(windows, vocab_size, source)
    return CalibrationSet(windows, fingerprint_ids(windows), source, seed)


def _encode(tokenizer: Any, text: str) -> list[int]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # the Rust tokenizer directly: no model_max_length warning for a long corpus
        return list(backend.encode(text, add_special_tokens=False).ids)
    if hasattr(tokenizer, "encode"):
        try:
            return list(tokenizer.encode(text, add_special_tokens=False))
        except TypeError:
            return list(tokenizer.encode(text))
    return list(tokenizer(text)["input_ids"])


def load_calibration(path: str | Path, *, tokenizer: Any = None, samples: int = 64,
                     seq_len: int = 128, seed: int = 0, vocab_size: int | None = None
                     ) -> CalibrationSet:
    """Load calibration data from a file.

    ``.txt`` (also ``.text``, ``.md``): tokenized with ``tokenizer``, ``samples`` windows of
    ``seq_len`` tokens. ``.safetensors`` (tensor ``input_ids``, or its only tensor) or ``.npy``:
    integer token ids ``[N, T]``; ``samples`` rows (seeded) and the first ``seq_len`` columns.
    Ids must be below ``vocab_size`` when it is given.
    """
    p = Path(path)
    if not p.is_file():
        raise SensitivityError(f"calibration file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        text = p.read_text(encoding="utf-8", errors="replace")
        return from_text(text, tokenizer, samples=samples, seq_len=seq_len, seed=seed,
                         vocab_size=vocab_size, source=p.name)
    if suffix in IDS_SUFFIXES:
        ids = _read_ids(p)
        n = min(samples, ids.shape[0]) if ids.ndim == 2 else samples
        t = min(seq_len, ids.shape[1]) if ids.ndim == 2 else seq_len
        return from_ids(ids, vocab_size=vocab_size, samples=n, seq_len=t, seed=seed, source=p.name)
    raise SensitivityError(f"calibration file {p.name!r}: expected "
                           f"{', '.join(TEXT_SUFFIXES + IDS_SUFFIXES)}")


def _read_ids(p: Path) -> np.ndarray:
    try:
        if p.suffix.lower() == ".npy":
            return np.load(p, allow_pickle=False)
        from safetensors.numpy import load_file

        tensors = load_file(str(p))
    except (ValueError, OSError) as e:
        raise SensitivityError(f"cannot read token ids from {p.name}: {str(e).splitlines()[0]}") from None
    if "input_ids" in tensors:
        return tensors["input_ids"]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise SensitivityError(f"{p.name} holds several tensors ({', '.join(sorted(tensors))}) and none "
                           "named input_ids")


def _check_vocab(t: torch.Tensor, vocab_size: int | None, source: str) -> None:
    lo, hi = int(t.min()), int(t.max())
    if lo < 0:
        raise SensitivityError(f"calibration data {source} has a negative token id ({lo})")
    if vocab_size is not None and hi >= vocab_size:
        raise SensitivityError(f"calibration data {source} has token id {hi}, outside the model's "
                               f"vocabulary of {vocab_size}")


@dataclass(frozen=True)
class BatchSet:
    """Calibration batches a model's factory gave (``extras["calibration"]``), used as they
    are: each batch is passed to the factory's ``loss_fn``. Same reading interface as
    :class:`CalibrationSet`; the fingerprint hashes every tensor of every batch."""

    items: tuple
    fingerprint: str
    source: str
    n_samples: int
    seq_len: int
    seed: int = 0

    def batches(self, batch_size: int = 8) -> list:
        """The factory's batches, as given (``batch_size`` does not re-batch them)."""
        return list(self.items)

    def __iter__(self) -> Iterator:
        return iter(self.items)


def batch_tensors(batch: Any, where: str) -> list[torch.Tensor]:
    """The tensors of one batch (a tensor, a mapping or a tuple/list of tensors; other
    values in a mapping, such as flags, are allowed); SensitivityError in one line otherwise."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        found = [v for v in batch.values() if isinstance(v, torch.Tensor)]
    elif isinstance(batch, (tuple, list)):
        found = [v for v in batch if isinstance(v, torch.Tensor)]
        if len(found) != len(batch):
            found = []
    else:
        found = []
    if not found:
        raise SensitivityError(f"{where} is a {type(batch).__name__}; a batch must be a tensor, "
                               "a dict of tensors or a tuple of tensors (samples first)")
    n = int(found[0].shape[0]) if found[0].dim() else -1
    if n < 1 or any(t.dim() == 0 or int(t.shape[0]) != n for t in found):
        raise SensitivityError(f"{where}: its tensors must share a first (sample) dimension >= 1; "
                               f"got shapes {[list(t.shape) for t in found]}")
    return found


def from_batches(batches: Any, source: str = "factory calibration", salt: str = "") -> BatchSet:
    """A calibration set from a factory's list of batches, checked and fingerprinted
    (``salt``, e.g. the loss function's name, goes into the fingerprint too)."""
    items = tuple(batches)
    if not items:
        raise SensitivityError(f"{source}: no batches")
    h = hashlib.sha256(f"batches:{salt}:".encode())
    n = 0
    seq = 0
    for i, b in enumerate(items):
        tensors = batch_tensors(b, f"{source} batch {i}")
        n += int(tensors[0].shape[0])
        seq = seq or (int(tensors[0].shape[1]) if tensors[0].dim() > 1 else 0)
        keys = list(b) if isinstance(b, Mapping) else list(range(len(tensors)))
        h.update(repr(keys).encode())
        for t in tensors:
            arr = np.ascontiguousarray(t.detach().cpu().float().numpy()
                                       if t.dtype == torch.bfloat16 else t.detach().cpu().numpy())
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.tobytes())
    return BatchSet(items, h.hexdigest(), source, n, seq)
