"""``hwcost sensitivity`` through click's CliRunner, on a tiny Hugging Face model directory."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hwcost.app.main import cli
from hwcost.store import open_store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny byte-level Llama saved like the demo model (config, safetensors, tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = importlib.util.spec_from_file_location("train_demo", ROOT / "data" / "train_demo.py")
    td = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(td)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("models") / "tiny"
    LlamaForCausalLM(cfg).save_pretrained(path)
    td.build_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def text(tmp_path) -> Path:
    p = tmp_path / "calib.txt"
    p.write_text("".join(f"Sentence {i} is about calibration data and quantization.\n"
                         for i in range(60)))
    return p


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _n_rows(url: str) -> tuple[int, int]:
    with open_store(url) as s:
        models = s.models()
        rows = sum(len(s.sensitivity_table(m.fingerprint).rows) for m in models
                   if s.sensitivity_keys(m.fingerprint))
        return len(models), rows


def test_run_stores_table_and_show_prints_it(model_dir, text, sqlite_url):
    common = ["--calib", text, "--samples", 6, "--seq-len", 16, "--precisions", "bf16,int8",
              "--db", sqlite_url]
    res = _invoke("sensitivity", model_dir, *common)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("model        tiny (")
    assert lines[1].startswith("calibration  calib.txt: 6 x 16 tokens (")
    assert lines[-1] == "stored 16 rows (taylor)"  # 7 linears + lm_head, 2 precisions
    assert _n_rows(sqlite_url) == (1, 16)

    res = _invoke("sensitivity", "run", model_dir, *common, "--json", "--method", "noise")
    out = json.loads(res.output)
    assert out["method"] == "noise" and out["stored_rows"] == 16 and out["model"] == "tiny"
    assert {r["precision"] for r in out["rows"]} == {"bf16", "int8"}

    res = _invoke("sensitivity", "show", "tiny", "--db", sqlite_url, "--json")
    shown = json.loads(res.output)
    assert shown["method"] == "taylor" and len(shown["rows"]) == 16
    assert shown["rows"][0]["layer"] == "model.layers.0.self_attn.q_proj"


def test_validate_reuses_stored_table_and_plots(model_dir, text, sqlite_url, tmp_path):
    common = ["--calib", text, "--samples", 6, "--seq-len", 16, "--precisions", "int8,fp8_e4m3",
              "--db", sqlite_url]
    plot = tmp_path / "scatter.png"
    res = _invoke("sensitivity", "validate", model_dir, *common, "--configs", 6, "--plot", plot)
    assert res.exit_code == 0, res.output
    assert "table        taylor, computed and stored" in res.output
    assert "spearman" in res.output and f"plot         {plot}" in res.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = _invoke("sensitivity", "validate", model_dir, *common, "--configs", 6, "--json")
    out = json.loads(res.output)
    assert out["table_reused"] is True and out["n_configs"] == 6 and len(out["points"]) == 6
    assert all(p["measured"] > 0 and p["predicted"] > 0 for p in out["points"])
    assert -1.0 <= out["spearman"] <= 1.0


def test_bad_calibration_stores_nothing(model_dir, tmp_path, sqlite_url):
    # the model's config.json alone as well: a load would fail on the missing weights, so the
    # same vocabulary error there proves the ids are checked first, from the config
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    (config_only / "config.json").write_bytes((Path(model_dir) / "config.json").read_bytes())
    ids = tmp_path / "ids.npy"
    np.save(ids, np.full((4, 16), 300, dtype=np.int64))
    for model in (model_dir, config_only):
        res = _invoke("sensitivity", model, "--calib", ids, "--db", sqlite_url)
        assert res.exit_code == 1
        assert res.output == ("Error: calibration data ids.npy has token id 300, outside the "
                              "model's vocabulary of 264\n")
    np.save(ids, np.zeros((2, 3, 4), dtype=np.int64))
    res = _invoke("sensitivity", model_dir, "--calib", ids, "--db", sqlite_url)
    assert res.output == "Error: calibration token ids must have shape [N, T], got [2, 3, 4] in ids.npy\n"
    np.save(ids, np.full((4, 16), 7, dtype=np.int64))  # good ids: then the load fails
    res = _invoke("sensitivity", config_only, "--calib", ids, "--db", sqlite_url)
    assert res.exit_code == 1 and "vocabulary" not in res.output
    assert _n_rows(sqlite_url) == (0, 0)


def test_usage_errors(model_dir, sqlite_url):
    res = _invoke("sensitivity", model_dir, "--db", sqlite_url)
    assert res.exit_code == 1
    assert res.output == ("Error: --calib DATA is required for a model other than the demo model "
                          "(a .txt file, or token ids [N, T] in .safetensors/.npy), or a factory "
                          "returning extras['calibration']\n")
    res = _invoke("sensitivity", "show", "nope", "--db", sqlite_url)  # read-only: no store made
    assert res.exit_code == 1 and res.output.startswith("Error: no store at ")
    assert _invoke("db", "init", "--db", sqlite_url).exit_code == 0
    res = _invoke("sensitivity", "show", "nope", "--db", sqlite_url)
    assert res.exit_code == 1
    assert res.output.startswith("Error: no model 'nope' in the store")
    res = _invoke("sensitivity", "validate", model_dir, "--configs", 2)
    assert res.exit_code == 2 and "2 is not in the range x>=3" in res.output


def test_help_texts():
    for args in (["sensitivity", "--help"], ["sensitivity", "run", "--help"],
                 ["sensitivity", "validate", "--help"], ["sensitivity", "show", "--help"]):
        res = _invoke(*args)
        assert res.exit_code == 0 and "Usage: " in res.output
    docs = (ROOT / "docs" / "cli.md").read_text()
    for cmd in ("hwcost sensitivity", "hwcost sensitivity validate", "hwcost sensitivity show"):
        assert cmd in docs
