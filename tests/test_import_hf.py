"""Import: a local HF directory of each supported family, made with transformers' own config
classes, loads in lmforge with transformers' logits; anything else is a one-line error."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import UserError
from lmforge.model.files import load_model

transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
FAMILIES = {
    "llama-tied": ("LlamaConfig", dict(tie_word_embeddings=True)),
    "llama-untied-rope-scaled": ("LlamaConfig", dict(
        tie_word_embeddings=False, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "qwen2-bias": ("Qwen2Config", dict(tie_word_embeddings=False)),
    "mistral-window": ("MistralConfig", dict(sliding_window=8, tie_word_embeddings=False)),
    # heads wider than hidden / heads, as Qwen3 ships them (and as head pruning leaves them)
    "llama-wide-heads": ("LlamaConfig", dict(head_dim=32, tie_word_embeddings=True)),
}


def hf_model(tmp_path, family: str):
    name, extra = FAMILIES[family]
    config = getattr(transformers, name)(**SHAPE, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # biases and norms away from their init, so a dropped one shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_an_hf_model_loads_with_transformers_logits(tmp_path, family):
    hf = hf_model(tmp_path, family)
    ours, source = load_model(tmp_path)
    assert source == tmp_path
    x = torch.randint(0, 97, (2, 40))  # longer than the sliding window
    with torch.no_grad():
        assert (ours(x).logits - hf(x).logits).abs().max() < 1e-5
    if family == "qwen2-bias":
        assert ours.cfg.qkv_bias
    if family == "mistral-window":
        assert ours.cfg.sliding_window == 8
    if family == "llama-wide-heads":
        assert ours.cfg.head_dim == 32 and ours.cfg.head_size == 32


def test_an_unsupported_architecture_names_the_supported_ones(tmp_path):
    hf_model(tmp_path, "llama-tied")
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="supported: llama, mistral, qwen2") as caught:
        load_model(tmp_path)
    assert "\n" not in str(caught.value)
