"""Calibration data: text and token-id files, seeded sampling, fingerprints, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hwcost.sensitivity.data import fingerprint_ids, from_ids, load_calibration

from hwcost.errors import SensitivityError


class ByteTokenizer:
    """A real (if simple) tokenizer: one token per UTF-8 byte, like the demo model's."""

    def encode(self, text, add_special_tokens=False):
        return list(text.encode("utf-8"))


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n"
                         for i in range(200)))
    return p


def test_text_windows_are_seeded_and_fingerprinted(text_file):
    tok = ByteTokenizer()
    a = load_calibration(text_file, tokenizer=tok, samples=10, seq_len=32, seed=0, vocab_size=256)
    b = load_calibration(text_file, tokenizer=tok, samples=10, seq_len=32, seed=0, vocab_size=256)
    c = load_calibration(text_file, tokenizer=tok, samples=10, seq_len=32, seed=1, vocab_size=256)
    assert a.input_ids.shape == (10, 32) and a.input_ids.dtype == torch.int64
    assert torch.equal(a.input_ids, b.input_ids) and a.fingerprint == b.fingerprint
    assert not torch.equal(a.input_ids, c.input_ids) and a.fingerprint != c.fingerprint
    raw = text_file.read_bytes()
    for row in a.input_ids:  # every window is a contiguous piece of the text
        assert bytes(row.tolist()) in raw
    assert [b["input_ids"].shape[0] for b in a.batches(4)] == [4, 4, 2]


def test_fingerprint_depends_on_ids_and_shape():
    ids = torch.arange(12).view(3, 4)
    assert fingerprint_ids(ids) == fingerprint_ids(ids.clone().to(torch.int32))
    assert fingerprint_ids(ids) != fingerprint_ids(ids.view(4, 3))
    changed = ids.clone()
    changed[2, 3] = 0
    assert fingerprint_ids(ids) != fingerprint_ids(changed)


def test_npy_and_safetensors_ids(tmp_path):
    from safetensors.numpy import save_file

    ids = np.random.default_rng(0).integers(0, 100, size=(20, 16), dtype=np.int64)
    np.save(tmp_path / "ids.npy", ids)
    save_file({"input_ids": ids}, str(tmp_path / "ids.safetensors"))
    a = load_calibration(tmp_path / "ids.npy", samples=8, seq_len=10, seed=3, vocab_size=100)
    b = load_calibration(tmp_path / "ids.safetensors", samples=8, seq_len=10, seed=3, vocab_size=100)
    assert a.input_ids.shape == (8, 10)
    assert torch.equal(a.input_ids, b.input_ids) and a.fingerprint == b.fingerprint
    rows = {tuple(r) for r in ids[:, :10].tolist()}
    assert all(tuple(r) in rows for r in a.input_ids.tolist())
    whole = load_calibration(tmp_path / "ids.npy", samples=1000, seq_len=1000)
    assert torch.equal(whole.input_ids, torch.from_numpy(ids))  # at most what the file holds


@pytest.mark.parametrize(("ids", "message"), [
    (np.zeros(16, dtype=np.int64), "calibration token ids must have shape [N, T], got [16] in t"),
    (np.zeros((2, 3, 4), dtype=np.int64), "calibration token ids must have shape [N, T], got [2, 3, 4] in t"),
    (np.zeros((4, 8), dtype=np.float32), "calibration token ids must be integers, got torch.float32 in t"),
    (np.full((4, 8), 300), "calibration data t has token id 300, outside the model's vocabulary of 264"),
    (np.full((4, 8), -1), "calibration data t has a negative token id (-1)"),
    (np.zeros((4, 1), dtype=np.int64),
     "calibration data needs N >= 1 sequences of T >= 2 tokens, got [4, 1] in t"),
])
def test_bad_ids(ids, message):
    with pytest.raises(SensitivityError) as e:
        from_ids(ids, vocab_size=264, source="t")
    assert str(e.value) == message


def test_bad_files(tmp_path, text_file):
    with pytest.raises(SensitivityError, match="does not exist"):
        load_calibration(tmp_path / "missing.txt")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(SensitivityError, match="expected .txt"):
        load_calibration(tmp_path / "x.csv")
    with pytest.raises(SensitivityError, match="a tokenizer is needed"):
        load_calibration(text_file, tokenizer=None)
    with pytest.raises(SensitivityError, match="room for"):
        load_calibration(text_file, tokenizer=ByteTokenizer(), samples=10_000, seq_len=64)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(SensitivityError, match="cannot read token ids from bad.npy"):
        load_calibration(tmp_path / "bad.npy")
