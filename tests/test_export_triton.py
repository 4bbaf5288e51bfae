"""Triton export: config.pbtxt parses with Triton's own schema and names the graph's tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from lmforge.cli import main
from lmforge.export.onnx import TOLERANCE
from lmforge.export.onnx_runner import OnnxDecoder
from lmforge.model.config import ModelConfig
from lmforge.model.files import save_model_dir
from lmforge.model.kv_cache import KVCache
from lmforge.model.llama import Transformer
from lmforge.tokenizer.config import TokenizerConfig
from lmforge.tokenizer.train import save_tokenizer, train_char
from test_serve_support import corpus

DTYPES = {model_config_pb2.TYPE_INT64: np.int64, model_config_pb2.TYPE_FP32: np.float32}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A random model exported as REPO/tiny/ with max_batch_size 4; returns (REPO, model)."""
    root = tmp_path_factory.mktemp("triton")
    cfg = TokenizerConfig(type="char")
    tokenizer = train_char(cfg, iter(corpus()))
    save_tokenizer(tokenizer, cfg, root / "tokenizer")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tokenizer.get_vocab_size(), dim=64, n_layers=2,
                                    n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=64)).eval()
    save_model_dir(root / "model", model.state_dict(), model.cfg)
    assert main(["export", str(root / "model"), "-o", str(root / "repo"), "--format", "triton",
                 "--triton-name", "tiny", "--max-batch-size", "4",
                 "--tokenizer", str(root / "tokenizer")]) == 0
    return root / "repo", model


def parsed(repo) -> model_config_pb2.ModelConfig:
    text = (repo / "tiny/config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_config_parses_and_lists_every_graph_tensor_with_dynamic_dims(repo):
    repo, model = repo
    config = parsed(repo)
    cfg = model.cfg
    assert config.name == "tiny" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    session = OnnxDecoder(repo / "tiny/1/model.onnx").session
    assert [i.name for i in config.input] == [i.name for i in session.get_inputs()]
    assert [o.name for o in config.output] == [o.name for o in session.get_outputs()]
    dims = {t.name: list(t.dims) for t in [*config.input, *config.output]}
    assert dims["input_ids"] == dims["attention_mask"] == dims["position_ids"] == [-1]
    assert dims["past_key_values.0.key"] == [cfg.kv_heads, -1, cfg.head_dim]
    assert dims["present.1.value"] == [cfg.kv_heads, -1, cfg.head_dim]
    assert dims["logits"] == [-1, cfg.vocab]
    types = {t.name: t.data_type for t in [*config.input, *config.output]}
    assert types["input_ids"] == model_config_pb2.TYPE_INT64
    assert types["logits"] == types["past_key_values.1.key"] == model_config_pb2.TYPE_FP32


def test_repository_graph_runs_in_onnxruntime_with_the_configs_shapes(repo):
    """Feed tensors shaped as config.pbtxt says (batch axis added, -1 filled in), prefill
    then one decode step: outputs have the configured shapes and torch's logits."""
    repo, model = repo
    config = parsed(repo)
    decoder = OnnxDecoder(repo / "tiny/1/model.onnx")
    batch, past_len, new = 3, 0, 5
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.cfg.vocab, (batch, new + 1))
    cache = KVCache(model.cfg, batch)
    present: list[np.ndarray] = []
    for tokens in (ids[:, :new], ids[:, new:]):
        lengths = {"input_ids": tokens.shape[1], "position_ids": tokens.shape[1],
                   "attention_mask": past_len + tokens.shape[1]}
        feed = {}
        for spec in config.input:
            shape = [batch] + [lengths.get(spec.name, past_len) if d == -1 else d
                               for d in spec.dims]
            feed[spec.name] = np.zeros(shape, DTYPES[spec.data_type])
        feed["input_ids"] = tokens
        feed["attention_mask"][:] = 1
        feed["position_ids"][:] = np.arange(past_len, past_len + tokens.shape[1])
        if present:
            feed.update(zip(decoder.past_names, present, strict=True))
        logits, *present = decoder.session.run([o.name for o in config.output], feed)
        for spec, value in zip(config.output, [logits, *present], strict=True):
            assert value.shape[0] == batch and len(value.shape) == len(spec.dims) + 1
            assert all(d in (-1, n) for d, n in zip(spec.dims, value.shape[1:], strict=True))
        with torch.no_grad():
            ref = model(torch.from_numpy(tokens), cache=cache).logits.numpy()
        assert np.abs(logits - ref).max() <= TOLERANCE
        past_len += tokens.shape[1]
    assert present[0].shape == (batch, model.cfg.kv_heads, new + 1, model.cfg.head_dim)


def test_version_folder_is_a_complete_onnx_export(repo):
    repo, _ = repo
    names = {p.name for p in (repo / "tiny/1").iterdir()}
    assert {"model.onnx", "onnx_config.json", "tokenizer.json"} <= names
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "config.pbtxt"]


def test_a_bad_model_name_is_refused_before_anything_is_written(tmp_path, repo, capsys):
    repo, _ = repo
    source = repo.parent / "model"
    assert main(["export", str(source), "-o", str(tmp_path / "r"), "--format", "triton",
                 "--triton-name", "../up"]) == 2
    assert "--triton-name" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
