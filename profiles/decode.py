"""Decode steps on a real KV cache: inputs for ``phase=decode,kv=N`` shapes and the rewind that
makes a decode step repeatable.

A decode shape ``batch=B,kv=N,phase=decode`` means one new token per sequence against a cache
that already holds ``N`` tokens. :func:`decode_inputs` builds that cache the way ``generate()``
does, with a real prefill pass of ``N`` random tokens through the model (a Hugging Face
``DynamicCache``), and returns the inputs of the next step: ``input_ids [B, 1]``, the cache and
``use_cache=True``. Running the step appends one token to every layer's cache (``torch.cat``,
as in ``generate()``); :func:`rewind` cuts each layer back to ``N`` tokens (a view, no copy), so
the same step can be timed again and again on exactly the cache length the shape names.

Pieces captured from a decode pass (``Partition.capture_inputs``) hold the cache object in
their attention's keyword arguments; :func:`cache_layers` finds the cache layers a piece
appends to, so timing rewinds only those.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from hwcost.errors import BadShape
from hwcost.shape import Shape

CACHE_KWARGS = ("cache", "past_key_values")
"""Names under which Hugging Face models take their KV cache (``cache`` from transformers 5.2x)."""


def cache_kwarg(model: nn.Module) -> str | None:
    """The keyword ``model.forward`` takes its KV cache under, or None when it has none."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    for name in CACHE_KWARGS:
        if name in params:
            return name
    return None


def max_positions(model: nn.Module) -> int | None:
    """The model's position limit (``max_position_embeddings`` / ``n_positions``), if it has one."""
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        v = getattr(cfg, key, None) if cfg is not None else None
        if isinstance(v, int) and v > 0:
            return v
    return None


def check_decode_shape(model: nn.Module, name: str, shape: Shape) -> None:
    """Raise BadShape unless ``model`` can run one decode step of ``shape`` on a KV cache."""
    if not shape.kv:
        return
    if cache_kwarg(model) is None:
        raise BadShape(f"shape {shape.key}: model {name!r} has no KV cache (its forward takes "
                       f"no {' or '.join(CACHE_KWARGS)}); profile it with prefill shapes")
    limit = max_positions(model)
    if limit is not None and shape.kv + 1 > limit:
        raise BadShape(f"shape {shape.key}: a decode step at kv={shape.kv} needs position "
                       f"{shape.kv + 1}, beyond model {name!r}'s {limit} positions")
    if getattr(getattr(model, "config", None), "vocab_size", None) is None:
        raise BadShape(f"shape {shape.key}: model {name!r} has no vocab_size in its config to "
                       "draw decode tokens from")


def decode_inputs(model: nn.Module, shape: Shape, seed: int = 0) -> dict[str, Any]:
    """Inputs of one decode step of ``shape``: a ``DynamicCache`` filled by a real prefill of
    ``shape.kv`` random tokens, the next token ids ``[batch, 1]`` and ``use_cache=True``.

    The cache lives on the model's device; call :func:`rewind` after each step to keep it at
    ``shape.kv`` tokens."""
    check_decode_shape(model, type(model).__name__, shape)
    key = cache_kwarg(model)
    vocab = int(model.config.vocab_size)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (shape.batch, shape.kv), generator=gen).to(device)
    nxt = torch.randint(0, vocab, (shape.batch, 1), generator=gen).to(device)
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
    cache = getattr(out, key, None) or getattr(out, "past_key_values", None)
    if cache is None:
        raise BadShape(f"shape {shape.key}: {type(model).__name__} returned no KV cache from "
                       "a prefill with use_cache=True")
    return {"input_ids": nxt, key: cache, "use_cache": True}


def _is_cache(obj: Any) -> bool:
    return hasattr(obj, "layers") and hasattr(obj, "get_seq_length")


def find_caches(obj: Any) -> list[Any]:
    """Cache objects inside nested args/kwargs (tuples, lists, dicts), each once."""
    found: dict[int, Any] = {}

    def walk(o: Any) -> None:
        if _is_cache(o):
            found.setdefault(id(o), o)
        elif isinstance(o, (tuple, list)):
            for x in o:
                walk(x)
        elif isinstance(o, dict):
            for x in o.values():
                walk(x)

    walk(obj)
    return list(found.values())


def layer_indices(modules: Iterable[nn.Module]) -> list[int]:
    """``layer_idx`` of every attention module among ``modules`` and their descendants: the
    cache layers a piece holding them appends to."""
    out: set[int] = set()
    for m in modules:
        for sub in m.modules():
            idx = getattr(sub, "layer_idx", None)
            if isinstance(idx, int):
                out.add(idx)
    return sorted(out)


def _tokens(layer: Any) -> int | None:
    """Tokens a cache layer holds (None: a layer that holds no key tensor yet)."""
    keys = getattr(layer, "keys", None)
    if not isinstance(keys, torch.Tensor) or keys.dim() < 2:
        return None
    return int(keys.shape[-2])


def rewind(caches: Sequence[Any], kv: int, layers: Sequence[int] | None = None) -> None:
    """Cut the named layers (default: all) of each cache back to ``kv`` tokens, dropping what
    the last decode step appended. Slicing makes views: nothing is copied."""
    for cache in caches:
        idxs = range(len(cache.layers)) if layers is None else layers
        for i in idxs:
            extra = (_tokens(cache.layers[i]) or 0) - kv
            if extra > 0:
                cache.layers[i].crop(-extra)


def cache_lengths(caches: Sequence[Any]) -> dict[int, list[int]]:
    """Each cache's per-layer token counts, by ``id(cache)``: what :func:`restore` cuts back to."""
    return {id(cache): [_tokens(layer) or 0 for layer in cache.layers] for cache in caches}


def restore(caches: Sequence[Any], lengths: dict[int, list[int]],
            layers: Sequence[int] | None = None) -> None:
    """Cut the named layers (default: all) of each cache back to the token counts
    :func:`cache_lengths` took; a cache or layer it did not see (made by the pass since)
    started empty."""
    for cache in caches:
        before = lengths.get(id(cache), [])
        idxs = range(len(cache.layers)) if layers is None else layers
        for i in idxs:
            if i < len(cache.layers):
                rewind([cache], before[i] if i < len(before) else 0, [i])


def step_fn(fn: Any, inputs: Sequence[Any], kv: int, layers: Sequence[int] | None = None):
    """``fn`` followed by :func:`rewind` of the caches of the input it ran on, so every call is
    the same decode step. ``inputs`` are the inputs it will be called with (input dicts or
    captured ``PieceInput``); their caches are found once, not per call."""
    found = {id(inp): find_caches(getattr(inp, "sides", inp)) for inp in inputs}
    if not any(found.values()):
        return fn

    def step(inp: Any) -> Any:
        out = fn(inp)
        rewind(found.get(id(inp)) or find_caches(getattr(inp, "sides", inp)), kv, layers)
        return out

    return step
