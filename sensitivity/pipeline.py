"""The jobs behind ``hwcost sensitivity``: load a model and calibration data, compute the
table, store it keyed by model fingerprint and calibration fingerprint; validate predicted
against measured loss MSE on random mixed configurations.

Everything that can fail on bad input (model, data, loss, gradients) runs before anything
is written, so a failed job stores nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwcost.sensitivity.data import (
    IDS_SUFFIXES,
    BatchSet,
    CalibrationSet,
    from_batches,
    load_calibration,
)
from hwcost.sensitivity.records import SensitivityTable

from hwcost.errors import SensitivityError
from hwcost.precision import parse_precisions
from hwcost.quantizer import DEFAULT as DEFAULT_QUANTIZER
from hwcost.quantizer import Quantizer

DEFAULT_CALIB_SPLIT = "valid.txt"
"""The demo model's default calibration text (``data/corpus``; ``test.txt`` stays held out)."""


@dataclass(frozen=True)
class CalibSpec:
    """Where calibration data comes from and how much of it to take."""

    path: str | None = None
    samples: int = 64
    seq_len: int = 128
    batch_size: int = 8
    seed: int = 0


@dataclass
class Prepared:
    """A loaded model with its partition (for the manifest's layer names), calibration set,
    the digest of its weights and the quantizer scored."""

    loaded: Any
    partition: Any
    calib: CalibrationSet | BatchSet
    batch_size: int
    checkpoint: str = ""
    quantizer: Quantizer = DEFAULT_QUANTIZER

    @property
    def layers(self) -> list[str]:
        return list(self.partition.layer_names())

    @property
    def batches(self) -> list:
        return self.calib.batches(self.batch_size)


@dataclass
class SensitivityRun:
    """A computed (and stored) table with what identifies it."""

    model_id: int
    model_name: str
    model_fingerprint: str
    calib: CalibrationSet
    table: SensitivityTable
    stored_rows: int
    reused: bool = False

    @property
    def checkpoint(self) -> str:
        return self.table.checkpoint

    def to_dict(self) -> dict:
        return {"model": self.model_name, "model_fingerprint": self.model_fingerprint,
                "checkpoint": self.table.checkpoint, "quantizer": self.table.quantizer,
                "model_id": self.model_id, "calib_fingerprint": self.calib.fingerprint,
                "calib_source": self.calib.source, "n_samples": self.calib.n_samples,
                "seq_len": self.calib.seq_len, "method": self.table.method,
                "stored_rows": self.stored_rows, "reused": self.reused,
                "rows": [r.__dict__ for r in self.table.rows]}


def default_calib_path(model_spec: str | None) -> str:
    """The demo corpus' calibration split for the demo model; other models must name data."""
    if model_spec:
        raise SensitivityError("--calib DATA is required for a model other than the demo model "
                               "(a .txt file, or token ids [N, T] in .safetensors/.npy), or a "
                               "factory returning extras['calibration']")
    from hwcost.profiles.loading import demo_model_dir

    return str(demo_model_dir().parent / "corpus" / DEFAULT_CALIB_SPLIT)


def prepare(model_spec: str | None, calib: CalibSpec, *, loaded: Any = None,
            part: Any = None, quantizer: Quantizer = DEFAULT_QUANTIZER) -> Prepared:
    """Load the model (``profiles.loading``), its calibration set, partition it and digest
    its weights (``profiles.checkpoint``).

    ``loaded`` and ``part`` skip the load and the cut: ``hwcost run`` loads the model once and
    cuts it once for profiling and sensitivity (``profiles.campaign.cut_model``).

    Calibration data: ``calib.path`` when given; else the factory's own batches
    (``extras["calibration"]``, scored with its ``loss_fn``, which is checked on the first
    batch here); else the demo corpus for the demo model.
    """
    from hwcost.profiles.checkpoint import checkpoint_digest
    from hwcost.profiles.loading import load_model
    from hwcost.profiles.partition import partition
    from hwcost.profiles.placement import follow_model

    if loaded is None:
        _check_ids_before_loading(model_spec, calib)
    loaded = loaded if loaded is not None else load_model(model_spec)
    if calib.path is None and getattr(loaded, "calibration", None) is not None:
        loss = getattr(loaded, "loss_fn", None)
        # the table depends on the loss as much as on the data: both name it
        salt = f"{loss.__module__}.{loss.__qualname__}" if loss is not None else "causal_lm"
        cset: CalibrationSet | BatchSet = from_batches(loaded.calibration,
                                                       f"{loaded.name} calibration", salt=salt)
        example = loaded.inputs_for(f"batch=1,seq={max(cset.seq_len, 2)}")
        _check_loss(loaded, follow_model(cset.items[0], loaded.model))
    else:
        path = calib.path or default_calib_path(model_spec)
        vocab = getattr(getattr(loaded.model, "config", None), "vocab_size", None)
        cset = load_calibration(path, tokenizer=loaded.tokenizer, samples=calib.samples,
                                seq_len=calib.seq_len, seed=calib.seed, vocab_size=vocab)
        example = {"input_ids": cset.input_ids[:1]}
        if hasattr(loaded.model, "config"):
            example["use_cache"] = False
    if part is None:
        part = partition(loaded.model, follow_model(example, loaded.model))
    return Prepared(loaded, part, cset, calib.batch_size, checkpoint_digest(loaded.model),
                    quantizer)


def _check_ids_before_loading(model_spec: str | None, calib: CalibSpec) -> None:
    """Token ids that do not fit the model's vocabulary (or the asked samples and length)
    fail here, from the model's ``config.json``, in a second rather than after the load."""
    from hwcost.profiles.loading import config_vocab_size

    if calib.path is None or Path(calib.path).suffix.lower() not in IDS_SUFFIXES:
        return
    vocab = config_vocab_size(model_spec)
    if vocab is not None:
        load_calibration(calib.path, tokenizer=None, samples=calib.samples,
                         seq_len=calib.seq_len, seed=calib.seed, vocab_size=vocab)


def _check_loss(loaded: Any, batch: Any) -> None:
    """One forward pass of the factory's loss on its first batch: a mean instead of
    per-sample losses, NaN, or a batch the model cannot take fail here, in one line, before
    anything is measured."""
    import torch
    from hwcost.sensitivity.loss import batch_size, causal_lm_loss, checked_losses

    loss_fn = getattr(loaded, "loss_fn", None) or causal_lm_loss
    try:
        with torch.no_grad():
            out = loss_fn(loaded.model, batch)
    except SensitivityError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's loss: any failure is bad input
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SensitivityError(f"loss_fn failed on calibration batch 0: {type(e).__name__}"
                               f"{': ' + first if first else ''}") from None
    checked_losses(out, batch_size(batch), "loss_fn")


def compute_and_store(store: Any, model_spec: str | None, calib: CalibSpec,
                      precisions: str | Sequence[str], method: str = "taylor",
                      prepared: Prepared | None = None, progress: bool = False) -> SensitivityRun:
    """Compute the table (one forward+backward pass over the calibration set) and store it
    under the model's architecture, its checkpoint digest and the quantizer scored.
    ``progress`` shows a bar with an ETA per calibration batch (on stderr)."""
    from hwcost.profiles.partition import register_model
    from hwcost.sensitivity.taylor import analyze
    from tqdm import tqdm

    prep = prepared or prepare(model_spec, calib)
    precs = [p.value for p in parse_precisions(precisions)]
    # leave=True: the finished bar (100%, its time) stays, as the profile and validation bars do;
    # a cleared bar on a fast pass showed nothing at all
    batches = tqdm(prep.batches, desc="sensitivity", unit="batch", disable=not progress)
    table = analyze(prep.loaded.model, batches, getattr(prep.loaded, "loss_fn", None),
                    precisions=precs, layers=prep.layers, method=method,
                    calib_fingerprint=prep.calib.fingerprint,
                    checkpoint=prep.checkpoint or None, quantizer=prep.quantizer)
    model_id = register_model(store, prep.loaded, prep.partition)
    store.put_checkpoint(model_id, table.checkpoint, prep.loaded.name, prep.loaded.source)
    n = store.put_sensitivity_table(prep.partition.model_fingerprint, table)
    return SensitivityRun(model_id, prep.loaded.name, prep.partition.model_fingerprint,
                          prep.calib, table, n)


def find_stored(store: Any, prep: Prepared, precisions: str | Sequence[str], method: str,
                *, any_calibration: bool = False) -> SensitivityRun | None:
    """The stored table for this architecture, checkpoint (weights digest), quantizer and
    calibration set when it covers ``precisions`` and the model's layers, else None.
    ``any_calibration``: also the latest such table on another calibration set (when the
    user did not name the calibration data or its size). Another checkpoint of the same
    architecture never matches: its weights differ."""
    from hwcost.errors import NoSensitivityTable, NoSuchModel

    precs = [p.value for p in parse_precisions(precisions)]
    try:
        model = store.get_model(prep.partition.model_fingerprint)
    except NoSuchModel:
        return None
    calibs = [prep.calib.fingerprint]
    if any_calibration:
        calibs += [c for ck, q, c in store.sensitivity_keys(model.fingerprint, method)
                   if ck == prep.checkpoint and q == prep.quantizer.key and c not in calibs]
    for calib in calibs:
        try:
            table = store.sensitivity_table(model.fingerprint, method, checkpoint=prep.checkpoint,
                                            quantizer=prep.quantizer.key, calib_fingerprint=calib)
        except NoSensitivityTable:
            continue
        if set(precs) <= set(table.precisions) and set(prep.layers) <= set(table.layers):
            return SensitivityRun(model.id, prep.loaded.name, model.fingerprint, prep.calib,
                                  table, 0, reused=True)
    return None


def stored_or_computed(store: Any, prep: Prepared, precisions: str | Sequence[str],
                       method: str, *, any_calibration: bool = False,
                       progress: bool = False) -> SensitivityRun:
    """:func:`find_stored`, else a freshly computed (and stored) table."""
    found = find_stored(store, prep, precisions, method, any_calibration=any_calibration)
    if found is not None:
        return found
    return compute_and_store(store, None, CalibSpec(), precisions, method, prepared=prep,
                             progress=progress)


@dataclass
class ValidationReport:
    """A validation run: the table it checked and the comparison."""

    run: SensitivityRun
    result: Any  # sensitivity.validate.ValidationResult
    plot: Path | None

    def to_dict(self) -> dict:
        return {"model": self.run.model_name, "model_fingerprint": self.run.model_fingerprint,
                "calib_fingerprint": self.run.calib.fingerprint, "table_reused": self.run.reused,
                "plot": str(self.plot) if self.plot else None, **self.result.to_dict()}


def validate_model(store: Any, model_spec: str | None, calib: CalibSpec,
                   precisions: str | Sequence[str], n_configs: int = 50, seed: int = 0,
                   method: str = "taylor", plot: str | Path | None = None,
                   progress: Callable[[int, int], None] | None = None) -> ValidationReport:
    """Draw random mixed configurations, measure their loss MSE (emulated, forward only) and
    compare with the sums predicted by the table (stored, or computed and stored)."""
    from hwcost.sensitivity.validate import random_configs, scatter_plot, validate

    if n_configs < 3:
        raise SensitivityError(f"--configs must be >= 3 to correlate, got {n_configs}")
    prep = prepare(model_spec, calib)
    run = stored_or_computed(store, prep, precisions, method)
    precs = [p.value for p in parse_precisions(precisions)]
    configs = random_configs(prep.layers, precs, n_configs, seed)
    result = validate(prep.loaded.model, prep.batches, run.table, configs,
                      getattr(prep.loaded, "loss_fn", None), progress=progress)
    path = scatter_plot(result, plot, title=f"{run.model_name}: {n_configs} random configurations") \
        if plot else None
    return ValidationReport(run, result, path)
