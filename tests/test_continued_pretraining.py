"""Continued pretraining: `lmforge run` with model.init_from keeps the base's tokenizer byte
for byte and its architecture, and starts from its weights; `hf:ORG/NAME` sources resolve
through huggingface_hub's cache with no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lmforge.cli import main
from lmforge.errors import UserError
from lmforge.model.files import load_model
from lmforge.sources import local_path
from test_train_support import TINY_TRAIN, documents

transformers = pytest.importorskip("transformers")


def hf_base(directory: Path) -> Path:
    """A small HF Llama with its own BPE tokenizer (no lmforge role tokens) and an embedding
    padded past the tokenizer's vocabulary, as released models often have."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(documents(50), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                                eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(directory)
    config = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size() + 8, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=64, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory


def run_config(tmp_path: Path, base: str, **train) -> Path:
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(documents(120)), encoding="utf-8")
    cfg = {"run": {"dir": str(tmp_path / "run")},
           "data": {"sources": [{"path": str(text), "format": "text"}], "steps": [],
                    "split": {"mode": "contiguous", "train": 0.9, "val": 0.1, "test": 0.0}},
           "model": {"init_from": base},
           "train": {**TINY_TRAIN, "max_steps": 2, "eval_every": 0, "ckpt_every": 0, **train}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_run_continues_from_the_base_with_its_tokenizer_and_architecture(tmp_path):
    base = hf_base(tmp_path / "base")
    cfg = run_config(tmp_path, str(base), lr=1e-9, weight_decay=0.0)
    assert main(["run", "-c", str(cfg), "--until", "pretrain"]) == 0
    run = tmp_path / "run"
    for name in ("tokenizer.json", "tokenizer_config.json"):  # verbatim: no role tokens added
        assert (run / "tokenizer" / name).read_bytes() == (base / name).read_bytes()
    continued, _ = load_model(run / "pretrain" / "model")
    original, _ = load_model(base)
    assert continued.cfg.model_dump() == original.cfg.model_dump()
    for name, weight in original.state_dict().items():  # lr 1e-9: still the base's weights
        assert (continued.state_dict()[name] - weight).abs().max() < 1e-6, name
    manifest = json.loads((run / "tokenizer" / "manifest.json").read_text())
    assert manifest["metrics"]["type"] == "base"


def test_continued_pretraining_learns_from_the_base(tmp_path):
    base = hf_base(tmp_path / "base")
    assert main(["run", "-c", str(run_config(tmp_path, str(base), max_steps=12, lr=3e-3)),
                 "--until", "pretrain"]) == 0
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r and "step" in r]
    assert losses[-1] < losses[0]


def test_a_base_too_small_for_the_shards_and_two_tokenizers_are_refused(tmp_path):
    from lmforge.train.stage import base_weights

    base = hf_base(tmp_path / "base")
    with pytest.raises(UserError, match="adopts the base's tokenizer") as caught:
        base_weights(str(base), token_vocab=10_000)
    assert "\n" not in str(caught.value)
    cfg = yaml.safe_load(run_config(tmp_path, str(base)).read_text())
    cfg["tokenizer"] = {"path": str(base)}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", "-c", str(tmp_path / "two.yaml"), "--until", "tokenizer"]) != 0


def hub_cache(root: Path, repo: str, files_from: Path) -> None:
    """huggingface_hub's cache layout (refs/main -> snapshots/<commit>/) for `repo`."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    storage = root / ("models--" + repo.replace("/", "--"))
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in files_from.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())


def test_hub_sources_resolve_from_the_cache_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    base = hf_base(tmp_path / "base")
    hub_cache(tmp_path / "hub", "org/tiny", base)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    snapshot = local_path("hf:org/tiny")
    assert (snapshot / "config.json").is_file() and snapshot.is_relative_to(tmp_path / "hub")
    model, source = load_model("hf:org/tiny")
    assert source == snapshot
    reference, _ = load_model(base)
    x = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        assert torch.equal(model(x).logits, reference(x).logits)
    with pytest.raises(UserError, match="cannot fetch hf:org/missing") as caught:
        local_path("hf:org/missing")
    assert "\n" not in str(caught.value)
