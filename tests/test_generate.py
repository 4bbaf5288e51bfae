"""Sampling: filters, greedy equivalence with and without the KV cache, seeds, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmforge.cli import main
from lmforge.model.config import ModelConfig
from lmforge.model.files import load_model, save_model_dir
from lmforge.model.generate import generate
from lmforge.model.llama import Transformer
from lmforge.tokenizer.config import TokenizerConfig
from lmforge.tokenizer.train import save_tokenizer, train_char
from test_train_support import documents


def tiny_model(vocab: int = 40, max_seq_len: int = 16) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, ffn_dim=64,
                      max_seq_len=max_seq_len)
    return Transformer(cfg).eval()


def test_generate_draws_with_the_servers_sampler() -> None:
    from lmforge.model.sampling import Sampler, SamplingParams

    model = tiny_model(max_seq_len=64)
    prompt = [1, 2, 3]
    ours = generate(model, prompt, 12, temperature=0.9, top_k=5, top_p=0.8, seed=11)
    sampler = Sampler(1, 40, torch.device("cpu"))
    sampler.add([0], [SamplingParams(12, temperature=0.9, top_k=5, top_p=0.8, seed=11)],
                [prompt])
    seq, theirs = list(prompt), []
    with torch.no_grad():
        for _ in range(12):
            token = int(sampler.sample(model(torch.tensor([seq])).logits[:, -1])[0][0])
            theirs.append(token)
            seq.append(token)
    assert ours == theirs


def test_greedy_with_cache_equals_full_recompute() -> None:
    model = tiny_model(max_seq_len=64)
    prompt = [1, 2, 3]
    fast = generate(model, prompt, 20, temperature=0)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert fast == seq[3:]


def test_seeded_sampling_is_reproducible() -> None:
    model = tiny_model()
    a = generate(model, [1, 2], 30, temperature=1.0, top_k=None, seed=7)
    b = generate(model, [1, 2], 30, temperature=1.0, top_k=None, seed=7)
    c = generate(model, [1, 2], 30, temperature=1.0, top_k=None, seed=8)
    assert a == b and a != c
    assert len(a) == 30  # longer than max_seq_len=16: the cache is rebuilt, decoding goes on


def test_generation_stops_at_eos_or_any_stop_token() -> None:
    model = tiny_model()
    free = generate(model, [1, 2], 10, temperature=0)
    assert generate(model, [1, 2], 10, temperature=0, eos_id=free[0]) == free[:1]
    last = free[-1]
    stop_at = free.index(last) + 1
    assert generate(model, [1, 2], 10, temperature=0, stop_ids={last, 10**6}) == free[:stop_at]


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A pretrain-like dir: model/ (safetensors) and tokenizer/ side by side."""
    texts = documents(50)
    cfg = TokenizerConfig(type="char")
    tok = train_char(cfg, iter(texts))
    save_tokenizer(tok, cfg, tmp_path / "pretrain" / "tokenizer")
    model = tiny_model(vocab=tok.get_vocab_size(), max_seq_len=64)
    save_model_dir(tmp_path / "pretrain" / "model", model.state_dict(), model.cfg)
    return tmp_path


def test_model_dir_round_trip(saved: Path) -> None:
    model, source = load_model(saved)
    assert source.name == "model.safetensors"
    again = tiny_model(vocab=model.cfg.vocab, max_seq_len=64)
    for name, tensor in again.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor)


def test_generate_command(saved: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["generate", str(saved), "-p", "The ", "-n", "25", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    # an untrained model: up to 25 characters (special tokens decode to nothing)
    assert first.startswith("The ") and 4 + 10 < len(first) <= 4 + 25 + 1
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert main(["generate", str(saved), "--top-p", "0"]) == 2
    assert "--top-p" in capsys.readouterr().err
    assert main(["generate", str(saved / "nowhere")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    broken = saved / "export"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    assert main(["generate", str(broken)]) == 2
    assert "config.json is not a Llama/Mistral/Qwen3 config" in capsys.readouterr().err
