"""Partition into sequential subgraphs: round trip, signatures, splitting, errors."""

from __future__ import annotations

import pytest
import torch
from hwcost.profiles.loading import LoadedModel
from hwcost.profiles.partition import partition, register_model
from hwcost.profiles.signature import model_fingerprint
from torch import nn

from hwcost.errors import PartitionError
from hwcost.shape import parse_shape


def _llama(layers=2, hidden=64, inter=128, heads=4, kv=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, use_cache=False)
    return LlamaForCausalLM(cfg).eval()


def _qwen2(layers=2):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, use_cache=False)
    return Qwen2ForCausalLM(cfg).eval()


def _gpt2(layers=2):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=256, n_embd=64, n_layer=layers, n_head=4, n_positions=64,
                     bos_token_id=0, eos_token_id=0, use_cache=False)
    return GPT2LMHeadModel(cfg).eval()


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(),
                         nn.Linear(32, 8)).eval()


def _ids(batch=2, seq=8):
    return {"input_ids": torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(1)),
            "use_cache": False}


def _main(out):
    return out.logits if hasattr(out, "logits") else out


MODELS = {
    "llama": (_llama, _ids),
    "qwen2": (_qwen2, _ids),
    "gpt2": (_gpt2, _ids),
    "mlp": (_mlp, lambda batch=2, seq=8: {"input": torch.randn(batch * seq, 16)}),
}


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("max_configs", [64, 27, 4096])
def test_pieces_in_sequence_equal_the_model(arch, max_configs):
    build, inputs = MODELS[arch]
    model = build()
    part = partition(model, inputs(), max_configs=max_configs)
    assert part.pieces, "a model with linear layers has pieces"
    # every quantizable layer lands in exactly one slot, in execution order
    names = part.layer_names()
    assert len(names) == len(set(names))
    assert set(names) == {n for n, m in model.named_modules() if type(m).__name__ in ("Linear", "Conv1D")}
    for p in part.pieces:
        assert 1 <= len(p.slots) <= part.k_max
        assert 3 ** len(p.slots) <= max_configs
    # round trip at another shape than the one partitioned on
    new = inputs(batch=1, seq=12)
    captured, out = part.capture_stages(model, new)
    with torch.no_grad():
        y = part.run_all(model, captured)
    torch.testing.assert_close(y, _main(out), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_each_piece_runs_alone_on_its_captured_input(arch):
    build, inputs = MODELS[arch]
    model = build()
    part = partition(model, inputs())
    caps = part.capture_inputs(model, inputs(batch=1, seq=5))
    assert len(caps) == len(part.pieces)
    with torch.no_grad():
        for piece, cap in zip(part.pieces, caps):
            alone = piece.extract(model)
            # the extracted module holds exactly the piece's layers, under model-root names
            got = {n for n, m in alone.named_modules() if type(m).__name__ in ("Linear", "Conv1D")}
            assert got == set(piece.layer_names)
            a = piece.run(alone, cap)
            b = piece.run(model, cap)
            assert len(a) == len(b)
            for u, v in zip(a, b):
                torch.testing.assert_close(u, v, rtol=0, atol=0)
    # a head piece leaves the model itself untouched (its output projection still runs)
    with torch.no_grad():
        out = _main(model(**inputs()))
    torch.testing.assert_close(out, _main(model(**inputs())))


def _family(name):
    import transformers as T

    cls = {"mistral": (T.MistralConfig, T.MistralForCausalLM),
           "phi3": (T.Phi3Config, T.Phi3ForCausalLM),
           "gemma3": (T.Gemma3TextConfig, T.Gemma3ForCausalLM),
           "opt": (T.OPTConfig, T.OPTForCausalLM),
           "gpt_neox": (T.GPTNeoXConfig, T.GPTNeoXForCausalLM)}[name]
    kw = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, use_cache=False,
              pad_token_id=0, ffn_dim=128, word_embed_proj_dim=64)
    torch.manual_seed(0)
    return cls[1](cls[0](**kw)).eval()


@pytest.mark.parametrize(("name", "kinds"), [
    ("mistral", ["MistralAttention.head", "MistralAttention.tail", "MistralMLP"]),
    ("phi3", ["Phi3Attention", "Phi3MLP"]),  # fused qkv_proj and gate_up_proj
    ("gemma3", ["Gemma3Attention.head", "Gemma3Attention.tail", "Gemma3MLP"]),  # sandwich norms
    ("opt", ["OPTAttention.head", "OPTAttention.tail", "Linear"]),  # flat fc1/fc2, 2-D tokens
])
def test_more_decoder_families_round_trip(name, kinds):
    model = _family(name)
    part = partition(model, _ids())
    assert [p.kind for p in part.pieces][:len(kinds)] == kinds
    captured, out = part.capture_stages(model, _ids(batch=1, seq=5))
    with torch.no_grad():
        torch.testing.assert_close(part.run_all(model, captured), out.logits, rtol=0, atol=0)


@pytest.mark.parametrize(("name", "kinds"), [
    # attention and MLP read the block's input (two norms) and are summed with it
    ("gpt_neox", ["GPTNeoXAttention.branch", "GPTNeoXMLP.branch"]),
    # one shared norm; the block adds the attention into the MLP's output in place
    ("falcon", ["FalconAttention.branch", "FalconMLP.branch"]),
    # q, k, v and dense exceed the cap: the attention branch is cut before its projection
    ("phi2", ["PhiAttention.head", "PhiAttention.tail", "PhiMLP.branch"]),
])
def test_parallel_residual_blocks_are_cut_into_sequential_branches(name, kinds):
    from tests.zoo.families import FAMILIES

    model = FAMILIES[name]()[0].eval()
    part = partition(model, _ids(seq=8) | {"input_ids": _ids()["input_ids"] % 128})
    assert [p.kind for p in part.pieces][:len(kinds)] == kinds
    assert len(part.layer_names()) == len([m for m in model.modules()
                                            if isinstance(m, nn.Linear)])
    ids = {"input_ids": torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(4)),
           "use_cache": False}
    captured, out = part.capture_stages(model, ids)
    with torch.no_grad():
        torch.testing.assert_close(part.run_all(model, captured), out.logits, rtol=0, atol=0)
        for piece, cap in zip(part.pieces, part.capture_inputs(model, ids)):  # each alone
            piece.run(piece.extract(model), cap)


def test_gemma2_final_soft_cap_is_an_epilogue_after_the_chain():
    from tests.zoo.families import gemma2

    model = gemma2()[0].eval()
    part = partition(model, {"input_ids": torch.arange(8)[None], "use_cache": False})
    assert part.pieces[-1].layer_names == ("lm_head",)
    assert [p.kind for p in part.pieces][:3] == ["Gemma2Attention.head", "Gemma2Attention.tail",
                                                 "Gemma2MLP"]


def test_a_branch_that_ends_stays_out_of_the_chain():
    """BERT's pooler reads the hidden states but its output is not the model's main output:
    it is left out (baseline precision) instead of refusing the model."""
    from tests.zoo.families import bert

    model = bert()[0].eval()
    part = partition(model, {"input_ids": torch.arange(8)[None]})
    assert part.ended == ("pooler",)
    assert "pooler.dense" not in part.layer_names()
    assert len(part.layer_names()) == 12  # 2 layers x (q, k, v, attn out, intermediate, out)


class _Rejoins(nn.Module):
    """The side branch's output is added back after the chain's last layer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.side = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x):
        s = self.side(x)
        return self.b(self.a(x)) + s


def test_a_branch_that_rejoins_is_refused_by_name():
    with pytest.raises(PartitionError) as e:
        partition(_Rejoins(), {"x": torch.randn(2, 8)})
    msg = str(e.value)
    assert msg.startswith("data flow branches at side: its output rejoins the chain of the model "
                          "through operations outside modules")
    assert "\n" not in msg


def test_llama_is_cut_at_attention_and_mlp_and_split_when_configs_exceed():
    model = _llama()
    part = partition(model, _ids(), n_precisions=3, max_configs=64)  # k_max = 3
    kinds = [p.kind for p in part.pieces]
    assert kinds == ["LlamaAttention.head", "LlamaAttention.tail", "LlamaMLP"] * 2 + \
        ["LlamaRMSNorm+Linear"]
    assert part.pieces[0].layer_names == ("model.layers.0.self_attn.q_proj",
                                          "model.layers.0.self_attn.k_proj",
                                          "model.layers.0.self_attn.v_proj")
    whole = partition(model, _ids(), n_precisions=3, max_configs=81)  # 4 slots fit
    assert [p.kind for p in whole.pieces] == ["LlamaAttention", "LlamaMLP"] * 2 + \
        ["LlamaRMSNorm+Linear"]


def test_sequential_mlp_is_packed_to_the_cap():
    model = _mlp()
    assert [len(p.slots) for p in partition(model, {"input": torch.randn(4, 16)}).pieces] == [3]
    part = partition(model, {"input": torch.randn(4, 16)}, n_precisions=4, max_configs=16)
    assert [p.layer_names for p in part.pieces] == [("0", "2"), ("4",)]
    assert part.pieces[0].kind == "Linear+ReLU+Linear+GELU"


def test_identical_blocks_share_a_signature_and_a_deeper_model_adds_none():
    two, four = _llama(layers=2), _llama(layers=4)
    p2, p4 = partition(two, _ids()), partition(four, _ids())
    sigs2 = [p.signature for p in p2.pieces]
    assert sigs2[0:3] == sigs2[3:6]  # block 0 and block 1
    assert len(p2.subgraph_infos()) == 4
    assert {i.signature for i in p4.subgraph_infos()} == {i.signature for i in p2.subgraph_infos()}
    assert len(p4.pieces) == 13
    assert model_fingerprint(two) != model_fingerprint(four)
    # weights do not enter signatures or fingerprints
    other = _llama(layers=2)
    with torch.no_grad():
        for prm in other.parameters():
            prm.add_(1.0)
    assert [p.signature for p in partition(other, _ids()).pieces] == sigs2
    assert model_fingerprint(other) == model_fingerprint(two)


def test_a_width_change_changes_the_signature():
    base = {p.kind: p.signature for p in partition(_llama(), _ids()).pieces}
    wider_mlp = {p.kind: p.signature for p in partition(_llama(inter=192), _ids()).pieces}
    assert wider_mlp["LlamaMLP"] != base["LlamaMLP"]
    assert wider_mlp["LlamaAttention.head"] == base["LlamaAttention.head"]
    more_heads = {p.kind: p.signature for p in partition(_llama(heads=8, kv=8), _ids()).pieces}
    assert more_heads["LlamaAttention.head"] != base["LlamaAttention.head"]
    assert more_heads["LlamaMLP"] == base["LlamaMLP"]


def test_signatures_agree_across_architectures_only_where_structure_does():
    llama = {p.kind: p.signature for p in partition(_llama(), _ids()).pieces}
    gpt2 = {p.kind: p.signature for p in partition(_gpt2(), _ids()).pieces}
    assert not set(llama.values()) & set(gpt2.values())


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.left = nn.Linear(8, 8)
        self.right = nn.Linear(8, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        return self.out(self.left(x) + self.right(x))


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return self.lin(torch.relu(self.lin(x)))


class _NoLinear(nn.Module):
    def forward(self, x):
        return x * 2


@pytest.mark.parametrize(("model", "message"), [
    (_Branchy(), "data flow branches at right: the input of out combines left, right through "
                 "non-module operations"),
    (_Shared(), "data flow branches at lin: it is called 2 times in one pass (shared weights)"),
    (_NoLinear(), "_NoLinear has no quantizable layer (Linear, Conv1D)"),
])
def test_models_that_cannot_be_cut_get_a_clear_error(model, message):
    with pytest.raises(PartitionError) as e:
        partition(model, {"x": torch.randn(2, 8)})
    assert str(e.value) == message


def test_parallel_projections_beyond_the_cap_are_an_error():
    with pytest.raises(PartitionError) as e:
        partition(_llama(), _ids(), n_precisions=3, max_configs=9)
    assert str(e.value) == ("data flow branches at model.layers.0.self_attn: its layers q_proj, "
                            "k_proj, v_proj cannot be cut into pieces of at most 2; raise "
                            "max_configs or profile fewer precisions")
    # GPT-2's fused c_attn is one layer, so the same cap cuts it
    assert [len(p.slots) for p in partition(_gpt2(), _ids(), max_configs=9).pieces] == [2, 2, 2, 2, 1]


def test_config_cap_below_one_layer_is_an_error():
    with pytest.raises(PartitionError, match="max_configs=2 is below the 3 configs"):
        partition(_mlp(), {"input": torch.randn(2, 16)}, n_precisions=3, max_configs=2)


def test_register_model_writes_subgraphs_and_manifest(store):
    model = _llama()
    part = partition(model, _ids())
    loaded = LoadedModel("tiny-llama", model, None, "test")
    mid = register_model(store, loaded, part)
    assert register_model(store, loaded, part) == mid  # idempotent
    stored, items = store.manifest(part.model_fingerprint)
    assert stored.id == mid and stored.name == "tiny-llama"
    assert [(i.position, i.signature, i.layer_names) for i, _ in items] == \
        [(p.position, p.signature, p.layer_names) for p in part.pieces]
    assert [info.slots for _, info in items] == [p.slots for p in part.pieces]
    assert stored.n_layers == 15


def test_another_cut_is_another_model_and_a_mismatched_manifest_is_refused(sqlite_url):
    from hwcost.store import open_store

    model = _llama()
    default, wide = partition(model, _ids()), partition(model, _ids(), max_configs=81)
    assert default.model_fingerprint == model_fingerprint(model)
    assert wide.model_fingerprint != default.model_fingerprint
    loaded = LoadedModel("m", model)
    with open_store(sqlite_url) as store:
        assert register_model(store, loaded, default) != register_model(store, loaded, wide)
        tampered = partition(model, _ids())
        tampered.pieces[0].layer_names = ("model.layers.0.self_attn.q_proj",)
        with pytest.raises(PartitionError, match="is stored with another cut into subgraphs"):
            register_model(store, loaded, tampered)


def test_inputs_for_shapes_feed_the_partition():
    model = _llama()
    loaded = LoadedModel("tiny", model)
    part = partition(model, loaded.inputs_for(parse_shape("batch=1,seq=8")))
    caps = part.capture_inputs(model, loaded.inputs_for("batch=2,seq=16", seed=3))
    assert caps[0].tensors[0].shape == (2, 16, 64)
