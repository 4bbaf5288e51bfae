"""HF export and import: transformers loads what lmforge writes, and the other way round."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.export.hf import write_hf_model
from lmforge.model.config import ModelConfig
from lmforge.model.files import load_model
from lmforge.model.generate import generate
from lmforge.model.llama import Transformer
from test_serve_support import make_model_dir

transformers = pytest.importorskip("transformers")

FAMILIES = {
    "llama-tied": dict(tie_embeddings=True),
    "llama-untied": dict(tie_embeddings=False),
    "qwen2-bias": dict(qkv_bias=True, tie_embeddings=False),
    "mistral-window": dict(sliding_window=8),
    "qwen3-qknorm": dict(qk_norm=True),
}
SHAPE = dict(vocab_size=101, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96,
             max_seq_len=64)


def random_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**SHAPE, **overrides)).eval()
    with torch.no_grad():  # biases and norms away from their init, so a dropped one shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def hf_load(directory, **kwargs):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        directory, output_loading_info=True, **kwargs)
    return model.eval(), info


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_transformers_with_equal_logits(tmp_path, family):
    model = random_model(**FAMILIES[family])
    write_hf_model(tmp_path, model.state_dict(), model.cfg, None)
    hf, info = hf_load(tmp_path)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert type(hf).__name__ == config["architectures"][0]
    x = torch.randint(0, 101, (2, 40))  # longer than the sliding window
    with torch.no_grad():
        assert (hf(x).logits - model(x).logits).abs().max() < 1e-5
    back, _ = load_model(tmp_path)  # and lmforge imports its own export
    with torch.no_grad():
        assert (back(x).logits - model(x).logits).abs().max() < 1e-5


def test_export_of_a_trained_model_generates_the_same_tokens(tmp_path):
    model_dir = make_model_dir(tmp_path / "run")
    model, _ = load_model(model_dir)
    write_hf_model(tmp_path / "export", model.state_dict(), model.cfg, tmp_path / "run/tokenizer")
    hf, _ = hf_load(tmp_path / "export")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    prompt = tok.apply_chat_template([{"role": "user", "content": "hello"}],
                                     add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, add_special_tokens=False).input_ids
    ours = generate(model, ids, 40, temperature=0)
    theirs = hf.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False)[0, len(ids):]
    gen = json.loads((tmp_path / "export/generation_config.json").read_text())
    end = tok.convert_tokens_to_ids("<|end|>")
    assert end in gen["eos_token_id"]  # the end-of-turn token stops generation
    assert theirs.tolist() == ours[:len(theirs)]
    assert theirs[-1] == end  # it stopped at the end of the turn, before max_new_tokens
    assert tok.decode(theirs, skip_special_tokens=True) == "hi there, how can I help?"


def test_large_exports_are_sharded_with_an_index(tmp_path):
    model = random_model(tie_embeddings=False)
    written = write_hf_model(tmp_path, model.state_dict(), model.cfg, None, max_shard_mb=0.03)
    shards = [f for f in written["files"] if f.startswith("model-")]
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    hf, info = hf_load(tmp_path)
    assert not info["missing_keys"]
    x = torch.randint(0, 101, (1, 16))
    with torch.no_grad():
        assert (hf(x).logits - model(x).logits).abs().max() < 1e-5
        assert (load_model(tmp_path)[0](x).logits - model(x).logits).abs().max() < 1e-5


def test_bfloat16_export_is_stored_and_loaded_as_bfloat16(tmp_path):
    model = random_model()
    write_hf_model(tmp_path, model.state_dict(), model.cfg, None, dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    hf, _ = hf_load(tmp_path, dtype="auto")
    assert next(hf.parameters()).dtype == torch.bfloat16


def test_a_training_model_dir_loads_in_transformers(tmp_path):
    from lmforge.model.files import save_model_dir

    model = random_model(tie_embeddings=False, qkv_bias=True)
    save_model_dir(tmp_path, model.state_dict(), model.cfg)
    hf, info = hf_load(tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.randint(0, 101, (1, 12))
    with torch.no_grad():
        assert (hf(x).logits - model(x).logits).abs().max() < 1e-5


def test_export_command_writes_a_dir_and_refuses_a_foreign_one(tmp_path, capsys):
    from lmforge.cli import main

    make_model_dir(tmp_path / "run")
    assert main(["export", str(tmp_path / "run/model"), "-o", str(tmp_path / "out"),
                 "--tokenizer", str(tmp_path / "run/tokenizer"), "--dtype", "bfloat16"]) == 0
    assert json.loads((tmp_path / "out/config.json").read_text())["torch_dtype"] == "bfloat16"
    assert main(["export", str(tmp_path / "run/model"), "-o", str(tmp_path / "out")]) == 0
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["export", str(tmp_path / "run/model"), "-o", str(foreign)]) == 2
    assert "not written by lmforge" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert main(["export", str(tmp_path / "missing"), "-o", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
