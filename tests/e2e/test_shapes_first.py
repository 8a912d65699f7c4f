"""A campaign checks every shape before it measures anything: a shape the model cannot run
(a prefill or a KV length beyond its positions, a decode step for a model without a KV cache,
a shape its factory cannot make inputs for) is one line, exit status 1, and nothing stored:
not the device, not the model, not a campaign whose other shapes were measured first."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from hwcost.app.main import cli
from hwcost.store import open_store

MLP = '''
import torch
from torch import nn


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)), {"x": torch.randn(2, 8)}


def picky():
    """Makes inputs for sequences of at most 8 tokens, and says so in its own words."""
    import transformers as T

    model = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2))

    def inputs(shape, seed):
        if shape.seq > 8:
            raise ValueError(f"this factory makes at most 8 tokens, not {shape.seq}")
        return {"input_ids": torch.zeros(shape.batch, shape.seq, dtype=torch.long)}

    return model, inputs
'''


@pytest.mark.parametrize("model, shape, message", [
    ("tests.zoo.families:gpt2", "batch=1,seq=128",
     "shape batch=1,seq=128,phase=prefill: a prefill of 128 positions is beyond model "
     "'gpt2''s 64 positions"),
    ("tests.zoo.families:gpt2", "batch=2,kv=64,phase=decode",
     "shape batch=2,kv=64,phase=decode: a decode step at kv=64 needs position 65, beyond "
     "model 'gpt2''s 64 positions"),
    ("shapes_mod:mlp", "batch=1,kv=8,phase=decode", "model 'mlp' has no KV cache"),
    ("shapes_mod:picky", "batch=1,seq=16",
     "shape batch=1,seq=16,phase=prefill: model 'picky' cannot make inputs for it: "
     "ValueError: this factory makes at most 8 tokens, not 16"),
    ("tests.zoo.families:gpt2", "batch=1,sq=8", "cannot parse shape 'batch=1,sq=8'"),
])
def test_a_shape_the_model_cannot_run_is_refused_before_anything_is_measured(
        sqlite_url, tmp_path, monkeypatch, model, shape, message):
    (tmp_path / "shapes_mod.py").write_text(MLP)
    monkeypatch.syspath_prepend(str(tmp_path))
    # worker mode, the good shape first: the fleet journey's campaign that ended "complete"
    # with every task of its decode shape failed
    res = CliRunner().invoke(cli, ["profile", model, "--shape", "batch=1,seq=8", "--shape", shape,
                                   "--precisions", "fp32,bf16", "--threads", "1", "--quick",
                                   "--worker", "w0", "--campaign", "c", "--db", sqlite_url])
    assert res.exit_code == 1, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and message in last, res.output
    with open_store(sqlite_url) as s:
        assert s.devices() == [] and s.models() == [] and s.measurement_count() == 0
        assert s.campaign_statuses() == []


def test_run_refuses_text_calibration_for_a_model_without_tokenizer_before_profiling(
        tmp_path, sqlite_url):
    text = tmp_path / "notes.txt"
    text.write_text("a few words of text, and no tokenizer to turn them into ids\n" * 20)
    res = CliRunner().invoke(cli, ["run", "tests.factories:tiny", "--shape", "batch=1,seq=8",
                                   "--calib", str(text), "--quick", "--db", sqlite_url])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == (
        "Error: notes.txt is text: a tokenizer is needed (the model has none)")
    with open_store(sqlite_url) as s:
        assert s.devices() == [] and s.models() == [] and s.measurement_count() == 0
