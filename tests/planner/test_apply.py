"""Apply a plan with the CPU backend's real kernels and validate it: latency against the
baseline, true loss MSE on held-out ids, Validation and ModelLatency rows stored."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture
def tiny_llama():
    from hwcost.profiles.loading import LoadedModel

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    model.config.use_cache = False
    return LoadedModel(name="tiny-llama", model=model)


def test_validate_applies_real_kernels_and_stores(sqlite_url, tiny_llama, tmp_path):
    from hwcost.planner.apply import deploy, layer_map_hash, validate_plan_on_device
    from hwcost.planner.export import PLAN_TYPE
    from hwcost.profiles.backends import get_backend
    from hwcost.profiles.partition import partition, register_model

    from hwcost.device import local_device
    from hwcost.store import open_store

    store = open_store(sqlite_url)
    part = partition(tiny_llama.model, tiny_llama.inputs_for("batch=1,seq=16"))
    register_model(store, tiny_llama, part)
    dev = local_device("cpu")
    store.put_device(dev)
    names = part.layer_names()
    layers = {n: ("int8" if "mlp" in n else "bf16" if "self_attn" in n else "fp32") for n in names}
    doc = {"type": PLAN_TYPE, "version": 1, "data": {
        "model": {"name": "tiny-llama", "fingerprint": part.model_fingerprint},
        "device": {"fingerprint": dev.fingerprint, "name": dev.name, "kind": "cpu"},
        "shape": "batch=1,seq=16,phase=prefill", "objective": "time", "baseline": "fp32",
        "layers": layers, "predicted": {"speedup": 1.3, "loss_mse": 1e-4}}}
    ids = tmp_path / "heldout.npy"
    np.save(ids, np.random.default_rng(0).integers(0, 96, size=(16, 32)))

    res = validate_plan_on_device(store, doc, None, loaded=tiny_llama, eval_data=str(ids),
                                  samples=16, seq_len=32, threads=1,
                                  timing={"min_samples": 5, "max_seconds": 0.5,
                                          "warmup_max_s": 0.2, "min_sample_us": 50.0})
    assert res.plan_id >= 1 and res.n_eval_samples == 16 and res.threads == 1
    assert res.baseline_us > 0 and res.plan_us > 0
    assert res.measured_speedup == pytest.approx(res.baseline_us / res.plan_us)
    assert res.measured_loss_mse > 0  # int8 and bf16 kernels really change the losses
    assert res.predicted_speedup == 1.3

    [v] = store.validations(res.plan_id)
    lat = {h: store.model_latency(part.model_fingerprint, dev.fingerprint, doc["data"]["shape"], h,
                                  allow_unstable=True) for h in ("all:fp32", layer_map_hash(layers))}
    assert v.id == res.validation_id and v.device == dev.fingerprint and v.checkpoint != "unknown"
    assert v.plan_id == res.plan_id and v.measured_loss_mse == pytest.approx(res.measured_loss_mse)
    assert all(r is not None and r.median_us > 0 for r in lat.values())
    assert json.loads(lat[layer_map_hash(layers)].config) == layers
    # the deployed plan stores int8 weights in its MLP layers
    m = deploy(tiny_llama.model, layers, get_backend("cpu"))
    mlp = dict(m.named_modules())[next(n for n in names if "mlp" in n)]
    assert any(b.dtype == torch.int8 for b in mlp.buffers())
    store.close()
