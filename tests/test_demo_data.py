"""The shipped demo model and corpus: loads offline with transformers, byte-exact tokenizer,
and a test-split loss far below the unigram baseline that training recorded."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

DATA = Path(__file__).resolve().parents[1] / "data"
MODEL_DIR = DATA / "demo_model"
SEQ = 256
WINDOWS = 16  # 4 batches of 4 windows: 4,096 predicted bytes, a few seconds on CPU


@pytest.fixture(scope="module")
def log() -> dict:
    return json.loads((MODEL_DIR / "training_log.json").read_text())


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)


@pytest.fixture(scope="module")
def model():
    m = transformers.AutoModelForCausalLM.from_pretrained(MODEL_DIR, local_files_only=True)
    return m.eval()


def test_folder_holds_safetensors_and_no_pickle():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert "model.safetensors" in names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= names


def test_model_is_a_small_gqa_llama(model, log):
    n = sum(p.numel() for p in model.parameters())
    assert 3_000_000 <= n <= 8_000_000
    assert n == log["parameters"]
    assert isinstance(model, transformers.LlamaForCausalLM)
    assert next(model.parameters()).dtype == torch.float32
    attn = model.model.layers[0].self_attn
    # Grouped-query attention: key/value projections are narrower than the query projection.
    assert attn.k_proj.weight.shape[0] < attn.q_proj.weight.shape[0]


def test_tokenizer_is_byte_level_and_round_trips(tokenizer):
    text = (DATA / "corpus" / "test.txt").read_text(encoding="utf-8")[:2000] + " naïve “quotes” — \t\x00é"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.pad_token_id == 256
    assert tokenizer.bos_token_id == 257 and tokenizer.eos_token_id == 258


def test_unigram_baseline_in_log_matches_test_split(log):
    data = (DATA / "corpus" / "test.txt").read_bytes()
    counts = Counter(data)
    entropy = -sum(c / len(data) * math.log(c / len(data)) for c in counts.values())
    assert entropy == pytest.approx(log["test_unigram_entropy"], rel=1e-9)


def test_test_split_loss_is_far_below_unigram_baseline(model, log):
    data = (DATA / "corpus" / "test.txt").read_bytes()
    # Evenly spaced windows across the split, so the check is not about one passage.
    stride = (len(data) - SEQ - 1) // WINDOWS
    x = torch.tensor([list(data[i * stride : i * stride + SEQ + 1]) for i in range(WINDOWS)])
    total = 0.0
    with torch.no_grad():
        for batch in x.split(4):
            logits = model(input_ids=batch[:, :-1]).logits
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            ).item()
    loss = total / (WINDOWS * SEQ)
    baseline = log["test_unigram_entropy"]
    assert loss < 0.7 * baseline, (loss, baseline)
    # The few windows agree with the full-split loss that training recorded.
    assert loss == pytest.approx(log["final_test_loss"], abs=0.25)
