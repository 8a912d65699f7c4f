"""A campaign times the whole model's baseline in the same interleaved rounds as every unique
piece's baseline config, and stores both from that window: the gains' microseconds (a ratio
to the in-group baseline times the piece's baseline row) and the predicted speedup's
denominator (the whole model) then agree on how fast the machine ran. Timed minutes apart on
a shared machine they disagreed by 20 % and every prediction carried it."""

from __future__ import annotations

import hwcost.profiles.bench as bench
import pytest
import torch
from hwcost.profiles.campaign import QUICK_TIMING, run_campaign
from hwcost.profiles.loading import LoadedModel
from transformers import LlamaConfig, LlamaForCausalLM

from hwcost.store import open_store
from tests.zoo import families

SHAPE = "batch=1,seq=8,phase=prefill"


def _tiny() -> LoadedModel:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, use_cache=False)
    return LoadedModel("tiny-window", LlamaForCausalLM(cfg).eval(), None, "test")


def _family(name: str):
    """A zoo family: biased q/k/v (qwen2), Conv1D (gpt2), a parallel residual (falcon), MoE
    (mixtral)."""
    return lambda: LoadedModel(f"window-{name}", getattr(families, name)()[0].eval(), None, "test")


MODELS = {"llama": _tiny, **{n: _family(n) for n in ("qwen2", "gpt2", "falcon", "mixtral")}}


@pytest.mark.parametrize("family", list(MODELS))
def test_model_latency_and_piece_baselines_come_from_one_window(family, sqlite_url, monkeypatch):
    calls = []
    real = bench.time_interleaved

    def spy(fns, inputs, backend="cpu", **kw):  # the real harness, its calls recorded
        out = real(fns, inputs, backend, **kw)
        calls.append(out)
        return out

    monkeypatch.setattr(bench, "time_interleaved", spy)
    with open_store(sqlite_url) as store:
        rep = run_campaign(store, MODELS[family](), "cpu", [SHAPE], "fp32,int8", threads=1, n_inputs=2,
                           timing=QUICK_TIMING, progress=False)
        window = [c for c in calls if "model" in c]
        assert len(window) == 1, "one timing holds the whole model"
        window = window[0]
        rows = store.model_costs(rep.model_fingerprint, rep.device, SHAPE, allow_unstable=True)
        sigs = {r.signature for r in rows}
        assert sigs and sigs <= set(window), "every unique piece's baseline is in that window"
        for r in rows:
            if set(r.config.split(",")) == {"fp32"}:
                assert r.median_us == window[r.signature].median_us
                assert r.baseline_us == r.median_us
            else:  # configs keep the baseline of their own interleave group
                assert r.baseline_us and r.baseline_us != window[r.signature].median_us
        assert rep.baseline_us[SHAPE] == window["model"].median_us
