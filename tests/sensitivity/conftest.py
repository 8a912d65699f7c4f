"""Tiny real models (built from configs, no download) and calibration batches."""

from __future__ import annotations

import pytest
import torch


def tiny_llama(dtype=torch.float64, seed: int = 0, vocab: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, use_cache=False)
    return LlamaForCausalLM(cfg).to(dtype).eval()


def tiny_gpt2(dtype=torch.float64, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=4, use_cache=False,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).to(dtype).eval()


@pytest.fixture
def llama64():
    return tiny_llama()


@pytest.fixture
def ids():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 64, (12, 16), generator=gen)


@pytest.fixture
def batches(ids):
    return [{"input_ids": ids[:5]}, {"input_ids": ids[5:]}]


def tiny_qwen2(dtype=torch.float64, seed: int = 0):
    """Qwen2: biased q/k/v projections (the layers that crashed the bf16 Taylor term)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, use_cache=False)
    model = Qwen2ForCausalLM(cfg).to(dtype).eval()
    with torch.no_grad():  # HF initialises biases to zero: make them matter
        for m in model.modules():
            if getattr(m, "bias", None) is not None and m.bias.dim() == 1:
                m.bias.normal_(0.0, 0.5)
    return model
