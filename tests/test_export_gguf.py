"""GGUF export: read back with gguf.GGUFReader, tensors and metadata match the model."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from lmforge.cli import main
from lmforge.errors import UserError
from lmforge.export.gguf import export_gguf, permute
from lmforge.model.config import ModelConfig
from lmforge.model.files import save_model_dir
from lmforge.model.hf import to_hf_state_dict
from lmforge.model.llama import Transformer, apply_rope, rope_tables
from lmforge.tokenizer.chat import render_chat
from lmforge.tokenizer.config import TokenizerConfig
from lmforge.tokenizer.train import save_tokenizer, train_bpe, train_char
from test_serve_support import corpus

EXTRA_ROWS = 3  # embedding rows past the tokenizer's vocabulary: [PADi] tokens in the GGUF
SHAPE = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=80, max_seq_len=64,
             tie_embeddings=False, qkv_bias=True, rope_theta=5000.0)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    cfg = TokenizerConfig(type="bpe", vocab_size=300, min_frequency=1)
    tokenizer = train_bpe(cfg, iter(corpus() * 2))
    directory = tmp_path_factory.mktemp("bpe")
    save_tokenizer(tokenizer, cfg, directory)
    return directory


@pytest.fixture(scope="module")
def model(bpe):
    vocab = json.loads((bpe / "tokenizer.json").read_text())
    size = len(vocab["model"]["vocab"]) + EXTRA_ROWS
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=size, **SHAPE)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def expected_tensors(model: Transformer) -> dict[str, np.ndarray]:
    """llama.cpp name -> float32 data, q/k permuted (checked on its own below)."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.cfg.n_layers)
    cfg, out = model.cfg, {}
    for hf_name, t in to_hf_state_dict(model.state_dict(), cfg).items():
        if "q_proj" in hf_name:
            t = permute(t, cfg.n_heads, cfg.n_heads)
        elif "k_proj" in hf_name:
            t = permute(t, cfg.n_heads, cfg.kv_heads)
        out[names.get_name(hf_name, try_suffixes=(".weight", ".bias"))] = t.float().numpy()
    return out


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def llama_cpp_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """llama.cpp's LLAMA_ROPE_TYPE_NORM: each adjacent pair (2i, 2i + 1) rotated together."""
    d = x.size(-1)
    inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    angle = positions[:, None, None].float() * inv  # (T, 1, D/2)
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((even * angle.cos() - odd * angle.sin(),
                           even * angle.sin() + odd * angle.cos()), dim=-1)
    return rotated.flatten(-2)


def test_permuted_weights_give_the_same_attention_scores_under_llama_cpp_rope(model):
    cfg = model.cfg
    attn = model.model.layers[0].self_attn
    x = torch.randn(7, cfg.dim)
    positions = torch.arange(7)
    cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
    with torch.no_grad():
        def heads(w: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
            return (x @ w.T + b).view(7, n, cfg.head_dim)

        q_hf = apply_rope(heads(attn.q_proj.weight, attn.q_proj.bias, cfg.n_heads),
                          cos[:7, None], sin[:7, None])
        k_hf = apply_rope(heads(attn.k_proj.weight, attn.k_proj.bias, cfg.kv_heads),
                          cos[:7, None], sin[:7, None])
        q_cpp = llama_cpp_rope(heads(permute(attn.q_proj.weight, cfg.n_heads, cfg.n_heads),
                                     permute(attn.q_proj.bias, cfg.n_heads, cfg.n_heads),
                                     cfg.n_heads), positions, cfg.rope_theta)
        k_cpp = llama_cpp_rope(heads(permute(attn.k_proj.weight, cfg.n_heads, cfg.kv_heads),
                                     permute(attn.k_proj.bias, cfg.n_heads, cfg.kv_heads),
                                     cfg.kv_heads), positions, cfg.rope_theta)
    group = cfg.n_heads // cfg.kv_heads
    scores_hf = torch.einsum("thd,shd->hts", q_hf, k_hf.repeat_interleave(group, dim=1))
    scores_cpp = torch.einsum("thd,shd->hts", q_cpp, k_cpp.repeat_interleave(group, dim=1))
    assert (scores_hf - scores_cpp).abs().max() < 1e-5
    assert (q_hf - q_cpp).abs().max() > 1e-2  # the layouts do differ: the permutation matters


def test_f16_file_reads_back_with_the_models_tensors_and_metadata(tmp_path, bpe, model):
    written = export_gguf(model, bpe, tmp_path, "f16", name="tiny")
    reader = gguf.GGUFReader(tmp_path / written["file"])
    expected = expected_tensors(model)
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == set(expected)
    assert {"output.weight", "blk.1.attn_k.bias", "token_embd.weight"} <= set(tensors)
    for name, want in expected.items():
        t = tensors[name]
        assert list(reversed(t.shape.tolist())) == list(want.shape)  # ggml lists dims reversed
        if want.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(t.data, want)
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.F16
            np.testing.assert_array_equal(t.data, want.astype(np.float16))
    cfg = model.cfg
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.name") == "tiny"
    assert field(reader, "llama.block_count") == cfg.n_layers
    assert field(reader, "llama.embedding_length") == cfg.dim
    assert field(reader, "llama.feed_forward_length") == cfg.hidden_dim
    assert field(reader, "llama.context_length") == cfg.max_seq_len
    assert field(reader, "llama.attention.head_count") == cfg.n_heads
    assert field(reader, "llama.attention.head_count_kv") == cfg.kv_heads
    assert field(reader, "llama.rope.freq_base") == cfg.rope_theta
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)


def test_tokenizer_fields_match_tokenizer_json(tmp_path, bpe, model):
    written = export_gguf(model, bpe, tmp_path, "f16")
    reader = gguf.GGUFReader(tmp_path / written["file"])
    spec = json.loads((bpe / "tokenizer.json").read_text())
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == model.cfg.vocab
    assert tokens[:len(by_id)] == [by_id[i] for i in range(len(by_id))]
    assert tokens[len(by_id):] == [f"[PAD{i}]" for i in range(len(by_id), model.cfg.vocab)]
    control = {t["id"] for t in spec["added_tokens"] if t["special"]}
    assert len(control) == 7  # bos, eos, pad and the four chat role tokens
    assert {i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL} == control
    assert set(types[len(by_id):]) == {gguf.TokenType.UNUSED}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    assert field(reader, "tokenizer.ggml.merges") == merges
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "qwen2"
    assert tokens[field(reader, "tokenizer.ggml.bos_token_id")] == "<|bos|>"
    assert tokens[field(reader, "tokenizer.ggml.eos_token_id")] == "<|eos|>"
    assert tokens[field(reader, "tokenizer.ggml.eot_token_id")] == "<|end|>"
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    template = field(reader, "tokenizer.chat_template")
    original = json.loads((bpe / "tokenizer_config.json").read_text())["chat_template"]
    assert "{% generation %}" not in template and "{% generation %}" in original
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    specials = {"bos_token": "<|bos|>", "eos_token": "<|eos|>"}
    assert render_chat(template, messages, specials) == render_chat(original, messages, specials)


def test_q8_0_tensors_dequantize_within_one_quantization_step(tmp_path, bpe, model):
    written = export_gguf(model, bpe, tmp_path, "q8_0")
    reader = gguf.GGUFReader(tmp_path / written["file"])
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    expected = expected_tensors(model)
    quantized = 0
    for t in reader.tensors:
        want = expected[t.name]
        if want.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
        elif want.shape[-1] % 32:  # ffn_down's rows are 80 long: f16, as llama.cpp does
            assert t.tensor_type == gguf.GGMLQuantizationType.F16 and "ffn_down" in t.name
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape)
            blocks, err = want.reshape(-1, 32), np.abs(got - want).reshape(-1, 32)
            step = np.abs(blocks).max(axis=1, keepdims=True) / 127  # one block's scale
            # half a step from rounding, plus the scale's own f16 rounding times 127
            assert (err <= step * (0.5 + 127 * 2.0 ** -11) + 1e-7).all()
            assert err.max() > 0  # it really was quantized
            quantized += 1
    assert quantized >= 10
    f16 = export_gguf(model, bpe, tmp_path / "f16", "f16")
    assert written["bytes"] < 0.7 * f16["bytes"]


def test_unsupported_models_and_tokenizers_are_refused(tmp_path, bpe, model):
    char_cfg = TokenizerConfig(type="char")
    save_tokenizer(train_char(char_cfg, iter(corpus())), char_cfg, tmp_path / "char")
    with pytest.raises(UserError, match="byte-level BPE"):
        export_gguf(model, tmp_path / "char", tmp_path / "a")
    qk = Transformer(ModelConfig(vocab_size=model.cfg.vocab, **{**SHAPE, "qk_norm": True}))
    with pytest.raises(UserError, match="qk_norm"):
        export_gguf(qk, bpe, tmp_path / "b")
    assert not (tmp_path / "a/model.gguf").exists()


def test_export_command_writes_a_gguf_file(tmp_path, bpe, model):
    save_model_dir(tmp_path / "model", model.state_dict(), model.cfg)
    assert main(["export", str(tmp_path / "model"), "-o", str(tmp_path / "out"), "--format",
                 "gguf", "--gguf-type", "q8_0", "--tokenizer", str(bpe)]) == 0
    reader = gguf.GGUFReader(tmp_path / "out/model.gguf")
    assert len(reader.tensors) == len(expected_tensors(model))
    assert main(["export", str(tmp_path / "model"), "-o", str(tmp_path / "x"), "--format",
                 "gguf", "--onnx-int8"]) == 2
