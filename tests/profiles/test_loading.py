"""Model loading: HF directories, factories, the demo model location, inputs per shape."""

from __future__ import annotations

import pytest
import torch
from hwcost.profiles.loading import LoadedModel, demo_model_dir, load_model
from torch import nn

from hwcost.errors import BadShape, ModelLoadError

FACTORIES = '''
import torch
from torch import nn
from hwcost.profiles.loading import LoadedModel


def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return model, {"input": torch.randn(3, 8)}


def mlp_fn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return model, lambda shape, seed: {"input": torch.randn(shape.tokens, 8)}


def loaded():
    return LoadedModel("named", nn.Sequential(nn.Linear(4, 4)).double(), None, "",
                       example={"input": torch.randn(2, 4)})


def wrong():
    return 42


NOT_CALLABLE = 3
'''


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "hwcost_test_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "hwcost_test_factories"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    path = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def test_hf_directory_loads_in_eval_fp32_and_takes_shaped_inputs(llama_dir):
    lm = load_model(str(llama_dir))
    assert lm.name == llama_dir.name and lm.source == str(llama_dir)
    assert not lm.model.training
    assert {p.dtype for p in lm.model.parameters()} == {torch.float32}
    inputs = lm.inputs_for("batch=2,seq=5", seed=1)
    assert inputs["input_ids"].shape == (2, 5) and int(inputs["input_ids"].max()) < 64
    assert torch.equal(inputs["input_ids"], lm.inputs_for("batch=2,seq=5", seed=1)["input_ids"])
    assert not torch.equal(inputs["input_ids"], lm.inputs_for("batch=2,seq=5", seed=2)["input_ids"])
    with torch.no_grad():
        assert lm.model(**inputs).logits.shape == (2, 5, 64)
    assert lm.inputs_for("batch=3,phase=decode")["input_ids"].shape == (3, 1)


def test_kv_cache_shapes_get_a_cache_and_a_kv_beyond_positions_is_refused(llama_dir):
    lm = load_model(str(llama_dir))
    inputs = lm.inputs_for("batch=1,kv=16,phase=decode")
    assert inputs["input_ids"].shape == (1, 1) and inputs["use_cache"] is True
    limit = lm.model.config.max_position_embeddings
    with pytest.raises(BadShape, match=f"needs position {limit + 1}, beyond model 'llama"):
        lm.inputs_for(f"batch=1,kv={limit},phase=decode")


def test_demo_model_dir_follows_hwcost_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HWCOST_DATA", str(tmp_path))
    assert demo_model_dir() == tmp_path / "demo_model"
    with pytest.raises(ModelLoadError) as e:
        load_model(None)
    assert str(e.value).startswith(f"demo model not found at {tmp_path / 'demo_model'}")
    monkeypatch.delenv("HWCOST_DATA")
    assert demo_model_dir().parts[-2:] == ("data", "demo_model")


def test_factory_with_a_fixed_example_is_resized_per_shape(factories):
    lm = load_model(f"{factories}:mlp")
    assert lm.name == "mlp" and isinstance(lm.model, nn.Sequential)
    x = lm.inputs_for("batch=2,seq=7")["input"]
    assert x.shape == (14, 8)
    assert lm.model(x).shape == (14, 4)


def test_factory_with_an_inputs_callable(factories):
    lm = load_model(f"{factories}:mlp_fn")
    assert lm.inputs_for("batch=1,seq=5")["input"].shape == (5, 8)


def test_factory_returning_a_loaded_model_is_prepared(factories):
    lm = load_model(f"{factories}:loaded")
    assert isinstance(lm, LoadedModel) and lm.name == "named"
    assert next(lm.model.parameters()).dtype == torch.float32
    assert lm.source == f"{factories}:loaded"


@pytest.mark.parametrize(("spec", "message"), [
    ("no_such_module_xyz:make", "cannot import 'no_such_module_xyz' for 'no_such_module_xyz:make': "
                                "No module named 'no_such_module_xyz'"),
    ("{f}:missing", "module '{f}' has no attribute 'missing'"),
    ("{f}:NOT_CALLABLE", "'{f}:NOT_CALLABLE' is not callable"),
    ("{f}:wrong", "factory '{f}:wrong' must return a LoadedModel, (model, inputs) or (model, "
                   "inputs, extras); got int"),
    ("/no/such/dir", "cannot load model '/no/such/dir': not a directory and not "
                     "package.module:factory"),
    (":x", "bad factory spec ':x'; expected package.module:factory"),
])
def test_bad_specs_get_one_clear_error(factories, spec, message):
    with pytest.raises(ModelLoadError) as e:
        load_model(spec.format(f=factories))
    assert str(e.value) == message.format(f=factories)


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a Hugging Face model directory"):
        load_model(str(tmp_path))
