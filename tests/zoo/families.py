"""Tiny models of common families, built from transformers configs (no download), each a
factory for ``hwcost run tests.zoo.families:NAME``.

Every family: hidden 64, 2 layers, vocabulary 128, seeded weights. Causal LMs return their
calibration and held-out token ids through the factory's ``extras`` (the causal-LM loss is the
default); BERT returns its own per-sample loss on the encoder's hidden states, so its pooler
does not reach the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

VOCAB = 128
HIDDEN = 64
SEQ = 16
N_CALIB = 32
N_HELD_OUT = 16
ATTENTIVE_INIT = 0.2
"""Weight init std for the families whose tiny random models would otherwise attend
uniformly. At transformers' default (0.02) a 64-wide BERT's or Gemma-2's query and key
projections barely move the attention scores, so quantizing one of them moves the loss by
float32 round-off (loss MSE 1e-14..1e-13): measured against a first-order prediction of
1e-16..1e-15, a plan of that one layer read 27x and failed the zoo's ratio check by chance
(whichever plan quick timings picked). At 0.2 every layer's loss MSE is far above round-off
and within 0.24-2.5x of its prediction (every layer, bf16 and int8), as a trained model's are."""


def _ids(n: int, seed: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, SEQ), generator=g)


def _inputs(causal: bool) -> Callable:
    import torch

    def inputs(shape, seed):
        g = torch.Generator().manual_seed(seed)
        out = {"input_ids": torch.randint(0, VOCAB, (shape.batch, shape.seq), generator=g)}
        if causal:
            out["use_cache"] = False
        return out
    return inputs


def _causal(build: Callable[[], Any]):
    import torch

    torch.manual_seed(0)
    model = build()
    return model, _inputs(True), _data()


def _data() -> dict:
    """Calibration (32 sequences) and held-out (16) token ids, in batches of 8."""
    return {"calibration": [{"input_ids": _ids(8, 1 + i)} for i in range(N_CALIB // 8)],
            "held_out": [{"input_ids": _ids(8, 100 + i)} for i in range(N_HELD_OUT // 8)]}


def _common(**kw) -> dict:
    base = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64, use_cache=False,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    base.update(kw)
    return base


def llama():
    import transformers as T
    return _causal(lambda: T.LlamaForCausalLM(T.LlamaConfig(**_common(num_key_value_heads=2))))


def qwen2():
    """Biased q/k/v projections."""
    import torch
    import transformers as T

    def build():
        m = T.Qwen2ForCausalLM(T.Qwen2Config(**_common(num_key_value_heads=2)))
        with torch.no_grad():  # initialised to zero: give the biases values, as trained ones have
            for mod in m.modules():
                if isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                    mod.bias.normal_(0.0, 0.02)
        return m
    return _causal(build)


def mistral():
    import transformers as T
    return _causal(lambda: T.MistralForCausalLM(T.MistralConfig(**_common(num_key_value_heads=2))))


def phi3():
    """Fused qkv_proj and gate_up_proj."""
    import transformers as T
    return _causal(lambda: T.Phi3ForCausalLM(T.Phi3Config(**_common(num_key_value_heads=2))))


def gemma2():
    """Sandwich norms, attention and final logit soft-capping."""
    import transformers as T
    return _causal(lambda: T.Gemma2ForCausalLM(T.Gemma2Config(
        **_common(num_key_value_heads=2, head_dim=16, initializer_range=ATTENTIVE_INIT))))


def gemma3():
    import transformers as T
    return _causal(lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(
        **_common(num_key_value_heads=2, head_dim=16))))


def gpt2():
    """Conv1D layers (weight stored [in, out]), biased."""
    import transformers as T
    return _causal(lambda: T.GPT2LMHeadModel(T.GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=64, use_cache=False,
        bos_token_id=1, eos_token_id=2)))


def opt():
    import transformers as T
    return _causal(lambda: T.OPTForCausalLM(T.OPTConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=HIDDEN,
        use_cache=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)))


def gpt_neox():
    """Parallel residual: attention and MLP read the block's input and are summed."""
    import transformers as T
    return _causal(lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(
        **_common(use_parallel_residual=True))))


def falcon():
    """Parallel attention and MLP reading one shared layer norm."""
    import transformers as T
    return _causal(lambda: T.FalconForCausalLM(T.FalconConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        parallel_attn=True, use_cache=False, bos_token_id=1, eos_token_id=2)))


def phi2():
    """Phi-2 style parallel block (one norm, attention and MLP summed)."""
    import transformers as T
    return _causal(lambda: T.PhiForCausalLM(T.PhiConfig(**_common())))


def mixtral():
    """Sparse MoE: 4 experts, top-2 routing."""
    import transformers as T
    return _causal(lambda: T.MixtralForCausalLM(T.MixtralConfig(
        **_common(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2))))


def qwen3_moe():
    """Sparse MoE: 4 experts, top-2 routing."""
    import transformers as T
    return _causal(lambda: T.Qwen3MoeForCausalLM(T.Qwen3MoeConfig(
        **_common(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                  moe_intermediate_size=64, head_dim=16))))


def qwen2_moe():
    """Sparse MoE with a shared expert and its sigmoid gate."""
    import transformers as T
    return _causal(lambda: T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(
        **_common(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                  moe_intermediate_size=64, shared_expert_intermediate_size=64))))


def token_reconstruction_loss(model, batch):
    """BERT's per-sample loss on the encoder's hidden states: cross-entropy of each token
    against the tied input embeddings, mean over the sample's tokens (``[N]``). The pooler's
    output is not used."""
    import torch

    ids = batch["input_ids"]
    hidden = model(input_ids=ids).last_hidden_state
    logits = hidden @ model.get_input_embeddings().weight.t()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           ids.reshape(-1), reduction="none")
    return ce.view(ids.shape[0], -1).mean(dim=1)


def bert():
    """Encoder with a pooler, planned with its own loss (``extras["loss_fn"]``)."""
    import torch
    import transformers as T

    torch.manual_seed(0)
    model = T.BertModel(T.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, initializer_range=ATTENTIVE_INIT))
    return model, _inputs(False), {"loss_fn": token_reconstruction_loss, **_data()}


FAMILIES: dict[str, Callable] = {
    "llama": llama, "qwen2": qwen2, "mistral": mistral, "phi3": phi3, "gemma2": gemma2,
    "gemma3": gemma3, "gpt2": gpt2, "opt": opt, "gpt_neox": gpt_neox, "falcon": falcon,
    "phi2": phi2, "mixtral": mixtral, "qwen2_moe": qwen2_moe, "qwen3_moe": qwen3_moe,
    "bert": bert,
}
"""Family name -> factory; ``hwcost run tests.zoo.families:<name>`` loads one."""
