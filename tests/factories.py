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
