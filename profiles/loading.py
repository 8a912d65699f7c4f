"""Load the model a command names: the demo model, a Hugging Face directory, or a factory.

``load_model(spec)`` accepts

- ``None``: the demo model directory (:func:`demo_model_dir`, ``data/demo_model`` in the
  repository, or ``$HWCOST_DATA/demo_model``);
- a path to a Hugging Face model directory (``config.json`` + weights), loaded locally with
  ``AutoModelForCausalLM.from_pretrained(..., local_files_only=True)``, never downloaded;
- ``package.module:factory``: a Python callable. **Factory contract**: ``factory()`` takes
  no arguments and returns either a :class:`LoadedModel`, a pair ``(model, inputs)``, or a
  triple ``(model, inputs, extras)``. ``inputs`` is either a callable
  ``inputs(shape: Shape, seed: int) -> dict[str, Tensor]`` (preferred: the factory decides
  what a shape means for its model) or a fixed example ``dict[str, Tensor]``. From a fixed
  example, :meth:`LoadedModel.inputs_for` derives inputs of other shapes: integer tensors
  ``[B, S]`` become random ids ``[batch, seq]``, float tensors ``[N, F]`` become
  ``[tokens, F]`` and ``[B, S, F]`` become ``[batch, seq, F]``. ``extras`` is a dict with any
  of ``loss_fn`` (``loss_fn(model, batch) -> Tensor [N]``, one loss per sample; default: the
  causal-LM next-token loss), ``calibration`` (a list of batches for the sensitivity pass)
  and ``held_out`` (a list of batches for the measured loss MSE of a plan). A batch is a
  tensor, a dict of tensors or a tuple of tensors, samples along the first dimension, and is
  passed to ``loss_fn`` as it is. With them, an encoder, a classifier or any model with its
  own loss is planned from the command line (``hwcost run pkg.mod:factory``).

Models are returned in eval mode, on the CPU, in ``dtype`` (float32 unless told otherwise:
``hwcost run`` loads in the baseline dtype of the device, ``profiles.placement.baseline_dtype``);
backends move what they deploy. A Hugging Face checkpoint whose weights in that dtype exceed
the host's available memory is refused before it is read (``profiles.memory``).
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwcost.errors import BadShape, ModelLoadError, first_line
from hwcost.shape import Shape, parse_shape

DATA_ENV = "HWCOST_DATA"
"""Environment variable naming the data folder (default: the repository's ``data/``)."""


InputsFn = Callable[[Shape, int], dict[str, torch.Tensor]]


def demo_model_dir() -> Path:
    """The demo model's directory: ``demo_model`` in the data folder (``$HWCOST_DATA``, the
    checkout's ``data/``, or an installed wheel's ``<prefix>/share/hwcost/data``; see
    ``hwcost.catalog.data_dir``)."""
    from hwcost.catalog import data_dir

    return data_dir() / "demo_model"


@dataclass
class LoadedModel:
    """A model ready to profile: eval mode, in its load dtype (float32 by default)."""

    name: str
    model: nn.Module
    tokenizer: Any | None = None
    source: str = ""
    inputs_fn: InputsFn | None = field(default=None, repr=False)
    example: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = field(default=None, repr=False)
    calibration: list | None = field(default=None, repr=False)
    held_out: list | None = field(default=None, repr=False)

    def inputs_for(self, shape: Shape | str, seed: int = 0) -> dict[str, torch.Tensor]:
        """Inputs of ``shape`` such that ``model(**inputs)`` runs.

        Causal LMs get random token ids ``[batch, tokens]`` (``use_cache=False``: profiling
        times prefill-style passes). Decode shapes with a KV cache (``kv>0``) get one new
        token per sequence and a real cache of ``kv`` tokens (:func:`profiles.decode.decode_inputs`);
        a model without a KV cache, or ``kv`` beyond its positions, is a BadShape.
        """
        shape = parse_shape(shape)
        if shape.kv:
            from hwcost.profiles.decode import decode_inputs

            self.check_shape(shape)
            return decode_inputs(self.model, shape, seed)
        if self.inputs_fn is not None:
            return self.inputs_fn(shape, seed)
        if self.example is not None:
            return _resize_example(self.example, shape, seed)
        vocab = _vocab_size(self.model)
        if vocab is None:
            raise ModelLoadError(f"model {self.name!r} has no vocabulary size in its config and no "
                                 "example inputs; give a factory that returns inputs")
        gen = torch.Generator().manual_seed(seed)
        seq = shape.seq if shape.phase == "prefill" else 1
        ids = torch.randint(0, vocab, (shape.batch, seq), generator=gen)
        return {"input_ids": ids, "use_cache": False}


    def check_shape(self, shape: Shape | str) -> None:
        """Raise BadShape when this model cannot run ``shape``: a decode shape without a KV
        cache, a KV length or a prefill beyond its positions, or a prefill its factory cannot
        make inputs for. Cheap: the model does not run. A campaign checks every shape with it
        before it stores or measures anything, so a shape that cannot run fails at once
        instead of as failed tasks after the others were measured."""
        from hwcost.profiles.decode import check_decode_shape, max_positions

        shape = parse_shape(shape)
        check_decode_shape(self.model, self.name, shape)
        if shape.phase != "prefill":
            return
        limit = max_positions(self.model)
        if limit is not None and shape.seq + shape.kv > limit:
            raise BadShape(f"shape {shape.key}: a prefill of {shape.seq + shape.kv} positions "
                           f"is beyond model {self.name!r}'s {limit} positions")
        if self.inputs_fn is not None or self.example is not None:
            try:  # the factory's own rule for this shape (random ids or resized tensors)
                self.inputs_for(shape, 0)
            except BadShape:
                raise
            except Exception as e:  # noqa: BLE001 - whatever the factory raises, one line
                raise BadShape(f"shape {shape.key}: model {self.name!r} cannot make inputs "
                               f"for it: {type(e).__name__}: {first_line(e)}") from e


def _vocab_size(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    v = getattr(cfg, "vocab_size", None) if cfg is not None else None
    return int(v) if v else None


def _resize_example(example: dict[str, Any], shape: Shape, seed: int) -> dict[str, Any]:
    """Inputs of ``shape`` with the layout of a fixed example (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    seq = shape.seq if shape.phase == "prefill" else 1
    out: dict[str, Any] = {}
    for k, t in example.items():
        if not isinstance(t, torch.Tensor):
            out[k] = t
            continue
        if t.is_floating_point():
            if t.dim() == 2:
                size = (shape.tokens, t.shape[1])
            elif t.dim() == 3:
                size = (shape.batch, seq, t.shape[2])
            else:
                raise BadShape(f"input {k!r} of rank {t.dim()} has no rule for shape {shape.key}; "
                               "return an inputs(shape, seed) callable from the factory")
            out[k] = torch.randn(size, generator=gen, dtype=t.dtype)
        elif t.dim() == 2:
            hi = int(t.max().item()) + 1 if t.numel() else 2
            out[k] = torch.randint(0, max(hi, 2), (shape.batch, seq), generator=gen, dtype=t.dtype)
        else:
            raise BadShape(f"input {k!r} ({t.dtype}, rank {t.dim()}) has no rule for shape "
                           f"{shape.key}; return an inputs(shape, seed) callable from the factory")
    return out


def _prepare(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    model = model.to(dtype).eval()
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "use_cache"):
        cfg.use_cache = False  # profiling times whole passes; a cache would leak between runs
    return model


def load_model(spec: str | None, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load the model a spec names (see the module docstring) in ``dtype``. Raises
    ModelLoadError, or DoesNotFit for a checkpoint larger than the host's free memory."""
    if spec is None or spec == "":
        path = demo_model_dir()
        if not (path / "config.json").exists():
            raise ModelLoadError(f"demo model not found at {path}; build it (see data/README) or "
                                 f"give a model directory or package.module:factory")
        return _load_hf(path, name="demo", dtype=dtype)
    if ":" in spec and not Path(spec).exists():
        return _load_factory(spec, dtype)
    path = Path(spec)
    if path.is_dir():
        return _load_hf(path, name=path.name, dtype=dtype)
    raise ModelLoadError(f"cannot load model {spec!r}: not a directory and not "
                         "package.module:factory")


def config_vocab_size(spec: str | None) -> int | None:
    """The vocabulary size a Hugging Face model directory's ``config.json`` states (the demo
    model's for ``None``), read without loading the model; None for a factory, or when the
    file does not say."""
    path = demo_model_dir() if not spec else Path(spec)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    vocab = cfg.get("vocab_size", (cfg.get("text_config") or {}).get("vocab_size"))
    return vocab if isinstance(vocab, int) else None


def _load_hf(path: Path, name: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    from hwcost.profiles.memory import hf_parameter_count, host_available, require_fits

    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")
    require_fits(name, hf_parameter_count(path), dtype, "this host", host_available())
    try:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging
    except ImportError as e:  # pragma: no cover - transformers is in the torch extra
        raise ModelLoadError(f"loading {path} needs transformers: {e}") from None
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True,
                                                     dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load model from {path}: {first}") from None
    tokenizer = None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception:  # noqa: BLE001 - a missing/odd tokenizer must not stop profiling
        tokenizer = None
    return LoadedModel(name=name, model=_prepare(model, dtype), tokenizer=tokenizer,
                       source=str(path))


def _load_factory(spec: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ModelLoadError(f"bad factory spec {spec!r}; expected package.module:factory")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ModelLoadError(f"cannot import {mod_name!r} for {spec!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing
        raise ModelLoadError(f"importing {mod_name!r} for {spec!r} failed: "
                             f"{type(e).__name__}: {first_line(e)}") from None
    fn = mod
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ModelLoadError(f"module {mod_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ModelLoadError(f"{spec!r} is not callable")
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - the user's factory failed: say so in one line
        raise ModelLoadError(f"factory {spec!r} raised {type(e).__name__}: {first_line(e)}"
                             ) from None
    if isinstance(result, LoadedModel):
        result.model = _prepare(result.model, dtype)
        result.source = result.source or spec
        return _checked_extras(result, spec)
    if not (isinstance(result, tuple) and len(result) in (2, 3)
            and isinstance(result[0], nn.Module)):
        raise ModelLoadError(f"factory {spec!r} must return a LoadedModel, (model, inputs) or "
                             f"(model, inputs, extras); got {type(result).__name__}")
    model, inputs = result[:2]
    extras = result[2] if len(result) == 3 else {}
    if not isinstance(extras, dict) or set(extras) - set(EXTRAS):
        bad = sorted(set(extras) - set(EXTRAS)) if isinstance(extras, dict) else type(extras).__name__
        raise ModelLoadError(f"factory {spec!r}: extras must be a dict with keys among "
                             f"{', '.join(EXTRAS)}; got {bad}")
    name = attr.split(".")[-1]
    if callable(inputs) and not isinstance(inputs, dict):
        n_params = len(inspect.signature(inputs).parameters)
        inputs_fn = inputs if n_params >= 2 else (lambda shape, seed, f=inputs: f(shape))
        loaded = LoadedModel(name, _prepare(model, dtype), None, spec, inputs_fn=inputs_fn, **extras)
    elif isinstance(inputs, dict):
        loaded = LoadedModel(name, _prepare(model, dtype), None, spec, example=inputs, **extras)
    else:
        raise ModelLoadError(f"factory {spec!r}: inputs must be a dict of tensors or a callable "
                             f"(shape, seed) -> dict; got {type(inputs).__name__}")
    return _checked_extras(loaded, spec)


EXTRAS = ("loss_fn", "calibration", "held_out")
"""Keys of a factory's ``extras`` dict (see the module docstring)."""


def _checked_extras(loaded: LoadedModel, spec: str) -> LoadedModel:
    """Refuse a loss that is not callable or batches that are not a non-empty list, in one
    line (each batch's own type is checked where it is used, with its index)."""
    if loaded.loss_fn is not None and not callable(loaded.loss_fn):
        raise ModelLoadError(f"factory {spec!r}: loss_fn must be callable (model, batch) -> [N]; "
                             f"got {type(loaded.loss_fn).__name__}")
    for key in ("calibration", "held_out"):
        v = getattr(loaded, key)
        if v is None:
            continue
        if isinstance(v, (tuple, torch.Tensor, dict)) or not hasattr(v, "__iter__"):
            raise ModelLoadError(f"factory {spec!r}: {key} must be a list of batches; got "
                                 f"{type(v).__name__}")
        v = list(v)
        if not v:
            raise ModelLoadError(f"factory {spec!r}: {key} is an empty list of batches")
        setattr(loaded, key, v)
    return loaded
