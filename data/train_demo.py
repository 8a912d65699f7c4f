"""Train the demo causal LM of data/demo_model/ on data/corpus/ (seeded, CPU).

The model is a small Llama (transformers ``LlamaForCausalLM`` built from a config) over a
byte-level vocabulary: token id ``b`` is the byte ``b`` (0..255), followed by a few special
tokens. The tokenizer is a real ``tokenizers`` byte-level BPE with no merges, wrapped in
``PreTrainedTokenizerFast`` and saved beside the weights, so both ``AutoTokenizer`` and
``AutoModelForCausalLM`` load the folder offline.

Usage::

    nohup nice python data/train_demo.py --max-minutes 21 > train.log 2>&1 &

``--fit-time`` (the default) lowers the planned step count after a short calibration so that
the cosine schedule ends inside the time budget on a busy machine; the count is logged, and
``--steps N --no-fit-time`` repeats that schedule exactly.

The run is seeded: batches are drawn from a seeded generator and the initial weights come from
a seeded ``torch.manual_seed``. Bit-exact results need the same torch build and thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

HERE = Path(__file__).parent
SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 256, 257, 258
VOCAB_SIZE = 264  # 256 bytes + 3 specials, padded to a multiple of 8


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what ByteLevel uses)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars), strict=True))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Return a byte-level tokenizer whose id for byte ``b`` is ``b``."""
    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    for i, tok in enumerate(SPECIALS):
        vocab[tok] = 256 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # use_regex=False: no word splitting, every byte is one token.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def build_config(layers: int) -> LlamaConfig:
    """The demo model's architecture: Llama with grouped-query attention (4 heads, 2 KV heads)."""
    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,  # a separate lm_head is a quantizable layer, as in most real LMs
        pad_token_id=256,
        bos_token_id=257,
        eos_token_id=258,
        torch_dtype="float32",
    )


def load_split(name: str) -> np.ndarray:
    """Return a corpus split as an array of byte ids."""
    return np.frombuffer((HERE / "corpus" / f"{name}.txt").read_bytes(), dtype=np.uint8)


def unigram_entropy(data: np.ndarray) -> float:
    """Entropy in nats/byte of the split's own byte frequencies (a unigram model fitted to it)."""
    p = np.bincount(data, minlength=256) / len(data)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def unigram_cross_entropy(train: np.ndarray, test: np.ndarray) -> float:
    """Cross-entropy in nats/byte of ``test`` under add-one-smoothed byte frequencies of ``train``."""
    p = (np.bincount(train, minlength=256) + 1) / (len(train) + 256)
    return float(-np.log(p[test]).mean())


def windows(data: np.ndarray, seq: int) -> torch.Tensor:
    """Cut a split into non-overlapping windows of ``seq + 1`` bytes (inputs and shifted targets)."""
    n = (len(data) - 1) // seq
    idx = np.arange(n)[:, None] * seq + np.arange(seq + 1)[None, :]
    return torch.from_numpy(data[idx].astype(np.int64))


@torch.no_grad()
def evaluate(
    model: LlamaForCausalLM, data: np.ndarray, seq: int, batch: int, limit: int | None = None
) -> float:
    """Mean next-byte cross-entropy (nats/byte) over non-overlapping windows of a split."""
    model.eval()
    w = windows(data, seq)
    if limit is not None:
        w = w[:limit]
    total, count = 0.0, 0
    for i in range(0, len(w), batch):
        x = w[i : i + batch]
        logits = model(input_ids=x[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, VOCAB_SIZE), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += x[:, 1:].numel()
    model.train()
    return total / count


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def main() -> None:
    """Train, evaluate, and save the model, tokenizer and training log."""
    ap = argparse.ArgumentParser(description="Train the demo byte-level Llama on data/corpus/.")
    ap.add_argument("--steps", type=int, default=2000, help="planned steps (an upper bound with --fit-time)")
    ap.add_argument("--fit-time", action=argparse.BooleanOptionalAction, default=True,
                    help="after --calibrate steps, lower --steps so training fits --max-minutes")
    ap.add_argument("--calibrate", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    # One thread: on the shared 2-core machine two OpenMP threads spin-wait on each other and a step
    # took 7 s instead of 0.6 s (measured with 6 other busy processes).
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="bf16 autocast on CPU (about 2x faster here than fp32)")
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--max-minutes", type=float, default=21.0,
                    help="training wall-time budget; stop early (and say so) past it")
    ap.add_argument("--out", type=Path, default=HERE / "demo_model")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train, valid, test = load_split("train"), load_split("valid"), load_split("test")

    model = LlamaForCausalLM(build_config(args.layers))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}  train bytes: {len(train):,}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )

    history, start, step = [], time.monotonic(), 0
    stopped_early = False
    model.train()
    steps = args.steps
    budget = args.max_minutes * 60
    for step in range(args.steps):
        if step >= steps:
            break
        if args.fit_time and step == args.calibrate:
            # Fix the total once, inside warm-up (whose lr does not depend on the total), so that a
            # rerun with --steps <logged steps> --no-fit-time repeats this run's schedule exactly.
            elapsed = time.monotonic() - start
            fit = int(args.calibrate * budget / elapsed * 0.9)  # 10 % slack for evals and contention
            steps = max(args.warmup + 1, min(args.steps, fit))
            print(f"calibrated: {elapsed / args.calibrate:.2f} s/step -> {steps} steps", flush=True)
        if time.monotonic() - start > budget:
            stopped_early = True
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, args.lr, args.warmup)
        starts = rng.integers(0, len(train) - args.seq - 1, size=args.batch)
        x = torch.from_numpy(np.stack([train[s : s + args.seq + 1] for s in starts]).astype(np.int64))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB_SIZE), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{time.monotonic() - start:7.1f}s", flush=True)
        if (step + 1) % args.eval_every == 0:
            v = evaluate(model, valid, args.seq, 32, limit=64)
            history.append({"step": step + 1, "train_loss": loss.item(), "valid_loss": v,
                            "seconds": time.monotonic() - start})
            print(f"step {step + 1:5d}  valid {v:.4f} nats/byte", flush=True)
    steps_done = step if stopped_early or step >= steps else step + 1
    train_seconds = time.monotonic() - start

    valid_loss = evaluate(model, valid, args.seq, 32)
    test_loss = evaluate(model, test, args.seq, 32)
    log = {
        "parameters": n_params,
        "steps": steps_done,
        "steps_planned": steps,
        "stopped_early": stopped_early,
        "tokens_trained": steps_done * args.batch * args.seq,
        "train_seconds": round(train_seconds, 1),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "torch": torch.__version__,
        "loss_unit": "nats per byte (= per token); non-overlapping windows of seq bytes",
        "final_valid_loss": valid_loss,
        "final_test_loss": test_loss,
        "test_unigram_entropy": unigram_entropy(test),
        "test_unigram_cross_entropy_from_train": unigram_cross_entropy(train, test),
        "history": history,
    }
    print(json.dumps({k: v for k, v in log.items() if k != "history"}, indent=2), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    build_tokenizer().save_pretrained(args.out)
    (args.out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")


if __name__ == "__main__":
    main()
