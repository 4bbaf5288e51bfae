"""ONNX export: the graph matches torch, and the torch-free runner generates what torch does."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lmforge.cli import main
from lmforge.errors import UserError
from lmforge.export.onnx import TOLERANCE, check_parity, export_onnx
from lmforge.export.onnx_runner import OnnxDecoder, OnnxLM
from lmforge.model.config import ModelConfig
from lmforge.model.files import load_model
from lmforge.model.generate import generate
from lmforge.model.llama import Transformer
from lmforge.tokenizer.chat_tokenizer import ChatTokenizer
from test_serve_support import DIALOGUES, LINE, corpus, make_model_dir

# Run before the code under test: any import of torch (or a torch submodule) fails.
NO_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, NoTorch())
"""
RUN_GREEDY = """
import json
from pathlib import Path
from lmforge.export.onnx_runner import OnnxLM

job = json.loads(sys.stdin.read())
lm = OnnxLM(Path(job["dir"]))
tokens = [list(lm.stream(p, job["new"], temperature=0, stop_ids=lm.stop_ids))
          for p in job["prompts"]]
loaded = [m for m in sys.modules if m.split(".")[0] == "torch"]
print(json.dumps({"tokens": tokens, "torch": loaded}))
"""
RUN_CLI = """
import contextlib, io, json
from lmforge.cli import main

out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(["generate", sys.argv[1], "--backend", "onnx", "-p", sys.argv[2], "-t", "0",
               "-n", "30"])
print(json.dumps({"rc": rc, "out": out.getvalue(), "torch": "torch" in sys.modules}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained model (run/model, run/tokenizer) exported through the CLI with int8."""
    root = tmp_path_factory.mktemp("onnx")
    make_model_dir(root / "run")
    (root / "eval.txt").write_text(LINE * 2, encoding="utf-8")
    assert main(["export", str(root / "run/model"), "-o", str(root / "out"), "--format", "onnx",
                 "--onnx-int8", "--eval-text", str(root / "eval.txt")]) == 0
    return root


def prompts(tok: ChatTokenizer) -> list[list[int]]:
    """20 prompts: the three chat turns the model learned, and 17 text prefixes."""
    chats = [tok.render([{"role": "user", "content": u}]) for u in DIALOGUES]
    text = corpus()[-1]
    prefixes = [LINE[:n] for n in range(4, 40, 4)] + [text[:n] for n in range(10, 90, 10)]
    return [tok.encode(t) for t in chats + prefixes]


def test_export_writes_graph_tokenizer_and_its_figures(run):
    out = run / "out"
    config = json.loads((out / "onnx_config.json").read_text())
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()}
    parity = config["parity"]
    assert 0 <= parity["max_abs_dlogit_prefill"] <= TOLERANCE
    assert 0 <= parity["max_abs_dlogit_decode"] <= TOLERANCE
    assert parity["decode_steps"] >= 1 and parity["max_abs_logit"] > 1  # a trained model
    inputs = {i["name"]: i for i in config["inputs"]}
    assert inputs["input_ids"]["shape"] == ["batch", "sequence"]
    assert inputs["attention_mask"]["shape"] == ["batch", "total_sequence"]
    assert inputs["past_key_values.1.value"] == {
        "name": "past_key_values.1.value", "dtype": "float32",
        "shape": ["batch", 2, "past_sequence", 16]}
    outputs = [o["name"] for o in config["outputs"]]
    assert outputs == ["logits", "present.0.key", "present.0.value", "present.1.key",
                       "present.1.value"]
    tok = ChatTokenizer(run / "run/tokenizer")
    assert set(config["tokens"]["stop_ids"]) == tok.chat_stop_ids()
    int8 = config["int8"]
    assert int8["ppl_fp32"] < 3  # the model learned the eval text
    assert int8["ppl_delta"] == pytest.approx(int8["ppl_int8"] - int8["ppl_fp32"])
    assert abs(int8["ppl_delta_pct"]) < 5
    assert int8["bytes"] < (out / "model.onnx").stat().st_size


def test_left_padded_batch_gives_each_row_its_own_logits(run):
    decoder = OnnxDecoder(run / "out/model.onnx")
    model, _ = load_model(run / "run/model")
    rows = [[5, 9, 11, 12, 30, 31, 8], [40, 41, 42]]
    width = max(map(len, rows))
    ids = np.array([[0] * (width - len(r)) + r for r in rows])
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    logits, past = decoder.run(ids, mask, positions, decoder.empty_past(2))
    step, _ = decoder.run(np.array([[3], [4]]), np.hstack([mask, [[1], [1]]]),
                          positions[:, -1:] + 1, past)
    for i, r in enumerate(rows):
        with torch.no_grad():
            ref = model(torch.tensor([[*r, 3 + i]])).logits[0].numpy()
        assert np.abs(logits[i, width - len(r):] - ref[:-1]).max() < TOLERANCE
        assert np.abs(step[i, 0] - ref[-1]).max() < TOLERANCE


def test_every_model_feature_exports_within_tolerance(tmp_path, run):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=80, dim=64, n_layers=2, n_heads=4, n_kv_heads=1, ffn_dim=96,
                      max_seq_len=32, qk_norm=True, qkv_bias=True, tie_embeddings=False,
                      sliding_window=8)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # biases and norms away from their init, so a dropped one shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    config = export_onnx(model, run / "run/tokenizer", tmp_path)
    assert config["parity"]["prompt_tokens"] > cfg.sliding_window  # the window is exercised
    assert max(config["parity"]["max_abs_dlogit_prefill"],
               config["parity"]["max_abs_dlogit_decode"]) <= TOLERANCE


def test_a_graph_that_differs_from_torch_fails_the_export(run):
    model, _ = load_model(run / "run/model")
    decoder = OnnxDecoder(run / "out/model.onnx")
    assert check_parity(model, decoder)["max_abs_dlogit_decode"] <= TOLERANCE
    with torch.no_grad():
        model.model.norm.weight.mul_(1.001)  # as if a weight got lost on the way
    with pytest.raises(UserError, match="differ from torch's"):
        check_parity(model, decoder)


def test_runner_without_torch_generates_torch_greedy_tokens(run):
    tok = ChatTokenizer(run / "run/tokenizer")
    model, _ = load_model(run / "run/model")
    cases = prompts(tok)
    assert len(cases) == 20
    job = json.dumps({"dir": str(run / "out"), "prompts": cases, "new": 50})
    done = subprocess.run([sys.executable, "-c", NO_TORCH + RUN_GREEDY], input=job,
                          capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout)
    assert result["torch"] == []
    expected = [generate(model, p, 50, temperature=0, stop_ids=tok.chat_stop_ids())
                for p in cases]
    assert result["tokens"] == expected
    end = tok.end_of_turn_id
    assert all(t[-1] == end and len(t) < 50 for t in expected[:3])  # replies end at <|end|>
    assert tok.decode(result["tokens"][0]) == DIALOGUES["hello"]


def test_seeded_sampling_draws_the_torch_samplers_tokens(run):
    tok = ChatTokenizer(run / "run/tokenizer")
    model, _ = load_model(run / "run/model")
    lm = OnnxLM(run / "out")
    drawn = []
    for seed, prompt in enumerate(prompts(tok)[::4]):
        for options in ({"temperature": 1.5, "top_k": None},
                        {"temperature": 1.2, "top_k": 5, "top_p": 0.9}):
            ours = list(lm.stream(prompt, 20, seed=seed, **options))
            assert ours == generate(model, prompt, 20, seed=seed, **options)
            drawn.append(ours != generate(model, prompt, 20, temperature=0))
    assert sum(drawn) >= 3  # these were draws, not the greedy tokens again


def test_generate_backend_onnx_prints_the_torch_text_without_importing_torch(run, capsys):
    done = subprocess.run([sys.executable, "-c", "import sys\n" + RUN_CLI, str(run / "out"),
                           "the quick"], capture_output=True, text=True, timeout=120,
                          check=True)
    result = json.loads(done.stdout)
    assert result["rc"] == 0 and result["torch"] is False
    assert main(["generate", str(run / "run/model"), "-p", "the quick", "-t", "0", "-n",
                 "30"]) == 0
    assert result["out"] == capsys.readouterr().out
    assert result["out"].startswith("the quick brown fox")


def test_export_mistakes_are_one_line_errors(run, tmp_path, capsys):
    from lmforge.model.quant import QuantLinear

    model_dir = str(run / "run/model")
    assert main(["export", model_dir, "-o", str(tmp_path / "a"), "--format", "onnx",
                 "--gguf-type", "q8_0"]) == 2
    assert "--gguf-type is for --format gguf" in capsys.readouterr().err
    assert main(["generate", str(run / "run"), "--backend", "onnx"]) == 2
    assert "onnx_config.json" in capsys.readouterr().err
    model, _ = load_model(model_dir)
    model.model.layers[0].mlp.up_proj = QuantLinear("int8", 64, 128)
    with pytest.raises(UserError, match="export the uncompressed model"):
        export_onnx(model, run / "run/tokenizer", tmp_path / "b")
    moe = Transformer(ModelConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2,
                                  moe={"num_experts": 2, "top_k": 1}))
    with pytest.raises(UserError, match="mixture-of-experts"):
        export_onnx(moe, run / "run/tokenizer", tmp_path / "c")
    assert not (tmp_path / "b/model.onnx").exists()
