"""The torchao export applied exactly as docs/planner.md says (its python blocks, run as
written) on the demo model and on a biased Qwen2: forward passes run, every layer runs in its
planned precision, and the outputs agree with the backend's deployment of the same plan."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")

from hwcost.planner.deploy import deploy, deployed_layers  # noqa: E402
from hwcost.planner.export import to_torchao  # noqa: E402

from tests.factories import plan_for, tiny_qwen2  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs" / "planner.md"


def doc_block(title: str) -> str:
    """The python block of docs/planner.md whose first line is ``# torchao export: <title>``."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    found = [b for b in blocks if b.startswith(f"# torchao export: {title}\n")]
    assert len(found) == 1, f"docs/planner.md has {len(found)} blocks titled {title!r}"
    return found[0]


def demo():
    from hwcost.profiles.loading import load_model

    return load_model(None).model


MODELS = {"demo": demo, "qwen2": lambda: tiny_qwen2()[0]}


def apply_as_documented(tmp_path, monkeypatch, doc, how: str, **env):
    (tmp_path / "plan.torchao.json").write_text(json.dumps(to_torchao(doc)))
    monkeypatch.chdir(tmp_path)
    scope = dict(env)
    for title in ("load", how, "casts"):
        exec(compile(doc_block(title), f"docs/planner.md[{title}]", "exec"), scope)
    return scope["model"]


def check(model, reference, doc, ids):
    got = {n: d.precision for n, d in deployed_layers(model).items()}
    assert got == doc["data"]["layers"]
    with torch.inference_mode():
        y = model(input_ids=ids).logits
        ref = reference(input_ids=ids).logits
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    # same formats, torchao's int8 scale is absmax/127.5 where ours is absmax/127
    assert (y - ref).norm() / ref.norm() < 0.05


@pytest.mark.parametrize("family", sorted(MODELS))
def test_quantize_as_documented(tmp_path, monkeypatch, family):
    model = MODELS[family]()
    doc = plan_for(model)
    reference = deploy(model, doc)
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    out = apply_as_documented(tmp_path, monkeypatch, doc, "apply with quantize_", model=model)
    check(out, reference, doc, ids)


def test_transformers_as_documented(tmp_path, monkeypatch):
    model = tiny_qwen2()[0]
    model.save_pretrained(tmp_path / "ckpt")
    doc = plan_for(model)
    doc["data"]["layers"]["lm_head"] = "int8"  # transformers skips the output layer unless told
    reference = deploy(model, doc)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    out = apply_as_documented(tmp_path, monkeypatch, doc, "load through transformers",
                              model_dir=str(tmp_path / "ckpt"))
    check(out, reference, doc, ids)


def test_export_is_torchaos_own_serialization():
    """What torchao writes for the configs we emit is what we emit (nothing defaulted away)."""
    from torchao.core.config import config_from_dict, config_to_dict

    doc = plan_for(tiny_qwen2()[0], ("int8", "fp8_e4m3", "bf16"))
    q = to_torchao(doc)["data"]["quantize"]
    again = config_to_dict(config_from_dict(q))
    for name, cfg in q["_data"]["fqn_to_config"].items():
        written = again["_data"]["fqn_to_config"][name]["_data"]
        assert {k: written[k] for k in cfg["_data"]} == cfg["_data"]
