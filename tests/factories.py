"""Small real models that tests load through the ``package.module:factory`` spec, in this
process or in subprocesses (``tests.factories:tiny``, with the repository on PYTHONPATH)."""

from __future__ import annotations


def tiny(layers: int = 2):
    """A 2-block Llama (hidden 32, GQA) and a function making its inputs for any shape."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                      use_cache=False)
    model = LlamaForCausalLM(cfg)

    def inputs(shape, seed):
        g = torch.Generator().manual_seed(seed)
        return {"input_ids": torch.randint(0, 64, (shape.batch, shape.seq), generator=g),
                "use_cache": False}

    return model, inputs


def tiny_qwen2(layers: int = 2, hidden: int = 64, intermediate: int = 128):
    """A 2-block Qwen2 (biased q/k/v projections, hidden 64) and its inputs for any shape."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=128, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      use_cache=False, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # a trained model's biases are not zero; make these matter too
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.normal_(0.0, 0.5)

    def inputs(shape, seed):
        g = torch.Generator().manual_seed(seed)
        return {"input_ids": torch.randint(0, 128, (shape.batch, shape.seq), generator=g),
                "use_cache": False}

    return model, inputs


def small_qwen2():
    """The biased Qwen2 at the demo model's width (hidden 256, MLP 768, 2 blocks): wide
    enough that low-precision layers gain on a CPU (``bench/planner.py``'s biased family)."""
    return tiny_qwen2(layers=2, hidden=256, intermediate=768)


def plan_for(model, cycle=("int8", "bf16", "fp32"), *, kind: str = "cpu", device: str = "cpu",
             baseline: str = "fp32") -> dict:
    """A plan document giving the model's linear layers the precisions of ``cycle`` in turn."""
    from hwcost.planner.export import PLAN_TYPE
    from hwcost.profiles.backends import is_linear

    names = [n for n, m in model.named_modules() if is_linear(m)]
    layers = {n: cycle[i % len(cycle)] for i, n in enumerate(names)}
    return {"type": PLAN_TYPE, "version": 1, "data": {
        "model": {"name": type(model).__name__, "fingerprint": "test"},
        "device": {"fingerprint": "test", "name": device, "kind": kind},
        "shape": "batch=1,seq=16,phase=prefill", "objective": "time", "baseline": baseline,
        "precisions": sorted(set(cycle)), "layers": layers,
        "subgraphs": [{"position": i, "layers": [n], "config": [p], "gain_us": 1.0 + i,
                       "loss_mse": 1e-4 * (i % 3), "source": "measured"}
                      for i, (n, p) in enumerate(layers.items())],
        "predicted": {"speedup": 1.2, "loss_mse": 1e-3, "gain_us": 10.0}}}


def tiny_finetuned(layers: int = 2):
    """:func:`tiny`'s architecture with other weights (as a fine-tune of it would have): the
    same structure fingerprint, another checkpoint digest."""
    import torch

    model, inputs = tiny(layers)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=g))
    return model, inputs
