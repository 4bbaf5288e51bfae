"""`lmforge compress`: quantization and pruning of a trained tiny model, each loaded back
by the other commands, its quality cost measured, and the gate refusing a broken one."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from lmforge.cli import main
from lmforge.model.files import load_model
from test_train_support import TINY_TRAIN, documents

MODEL = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 192,
         "max_seq_len": 128}
FAST = ["--compress.speed_tokens=8"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run trained long enough for its weights to have structure (about 10 s), whose
    compress stage quantized it to int8 (the stage inside `lmforge run`)."""
    root = tmp_path_factory.mktemp("compress")
    text = root / "corpus.txt"
    text.write_text("\n\n".join(documents(400)), encoding="utf-8")
    cfg = {"run": {"dir": str(root / "run")},
           "data": {"sources": [{"path": str(text), "format": "text"}], "steps": [],
                    "split": {"mode": "contiguous", "train": 0.8, "val": 0.1, "test": 0.1}},
           "tokenizer": {"type": "bpe", "vocab_size": 512}, "model": MODEL,
           "train": {**TINY_TRAIN, "max_steps": 200, "block_size": 128, "batch_size": 8,
                     "eval_every": 0, "ckpt_every": 100},
           "export": {"enabled": False}, "eval": {"enabled": False},
           "compress": {"enabled": True, "method": "int8-weight", "speed_tokens": 8,
                        "perplexity": ["test"]}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", "-c", str(root / "cfg.yaml")]) == 0
    return root / "run"


def test_the_run_compresses_and_reports(run):
    report = json.loads((run / "compress" / "report.json").read_text())
    assert report["method"] == "int8-weight"
    assert report["size"]["ratio_to_bf16"] < 0.6  # int8 weights and embedding: about half
    assert report["comparison"]["metrics"]  # the paired comparison ran
    assert set(report["speed"]) >= {"batch_1", "batch_8", "greedy_agreement"}
    page = (run / "report.html").read_text()
    assert 'id="compression"' in page and "share of the bf16 size" in page
    assert (run / "compress" / "report.html").is_file()


def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize(("method", "bound"), [("int8-weight", 0.03), ("int8-dynamic", 0.05),
                                               ("int4-weight", 0.25)])
def test_quantized_models_round_trip_within_a_bound(run, tmp_path, method, bound):
    """Saved, loaded back by load_model (what generate, serve, eval and chat use), logits
    within `bound` x the largest logit of the original's."""
    out = tmp_path / "out"
    args = ["compress", str(run), "-o", str(out), "--method", method, "--perplexity", "test"]
    assert main([*args, "--group-size", "32", *FAST]) == 0
    original, _ = load_model(run)
    compressed, _ = load_model(out)
    assert (out / "model" / "quantization.json").is_file()
    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    a, b = logits_of(original, ids), logits_of(compressed, ids)
    assert (a - b).abs().max() <= bound * a.abs().max()
    assert torch.equal(logits_of(load_model(out)[0], ids), b)  # loading is exact
    report = json.loads((out / "report.json").read_text())
    assert report["size"]["compressed_bytes"] < report["size"]["original_bytes"] / 2
    if method.startswith("int8"):  # the engine's greedy tokens: mostly the original's
        assert report["speed"]["greedy_agreement"]["mean_prefix_share"] >= 0.75


def test_a_tied_model_quantized_without_its_embedding_round_trips(run, tmp_path):
    out = tmp_path / "proj"
    assert main(["compress", str(run), "-o", str(out), "--method", "int8-weight",
                 "--perplexity", "--compress.embeddings=false", *FAST]) == 0
    compressed, _ = load_model(out)
    assert compressed.lm_head.weight is compressed.model.embed_tokens.weight
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(3))
    original, _ = load_model(run)
    assert (logits_of(compressed, ids) - logits_of(original, ids)).abs().max() < 0.5


def test_generate_eval_and_export_load_a_compressed_model(run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from lmforge.model.quant import is_quantized
    from lmforge.model.sampling import SamplingParams
    from lmforge.serve.artifacts import load_served_model
    from lmforge.serve.offline import generate

    out = tmp_path / "int4"
    assert main(["compress", str(run), "-o", str(out), "--method", "int4-weight",
                 "--calibration", "rtn", "--group-size", "32", "--perplexity", *FAST]) == 0
    assert main(["generate", str(out), "--prompt", "The", "--max-new-tokens", "5"]) == 0
    served = load_served_model(out)  # what serve and chat load, run by the engine
    assert is_quantized(served.model)
    text = generate(served.model, served.tokenizer.decode, [served.tokenizer.encode("The")],
                    SamplingParams(4, temperature=0.0, ignore_eos=True), max_batch=1)
    assert len(text) == 1 and text[0]
    assert main(["eval", str(out), "--perplexity", str(run / "data" / "test"),
                 "-o", str(tmp_path / "eval")]) == 0
    assert main(["export", str(out), "-o", str(tmp_path / "hf")]) == 0
    assert "written dequantized" in capsys.readouterr().err
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(1))
    ours = logits_of(load_model(out)[0], ids)
    theirs = hf(ids).logits.float().detach()
    assert (ours - theirs).abs().max() < 0.02 * ours.abs().max()  # bf16 activations vs fp32


def test_gptq_beats_round_to_nearest_on_held_out_perplexity(run):
    from lmforge.compress.calibrate import (
        calibration_windows,
        collect,
        read_calibration_texts,
    )
    from lmforge.compress.quantize import quantize_model
    from lmforge.model.tokenizer import load_tokenizer

    model, _ = load_model(run)
    codec = load_tokenizer(run / "tokenizer")
    train = calibration_windows(read_calibration_texts(run / "data" / "train"), codec.encode,
                                128, 32)
    test = calibration_windows(read_calibration_texts(run / "data" / "test"), codec.encode,
                               128, 32)

    def loss(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(m(test[:, :-1], test[:, 1:]).loss)

    stats = collect(model, train, hessian=True)
    rtn, gptq = copy.deepcopy(model), copy.deepcopy(model)
    quantize_model(rtn, "int4-weight", 32)
    quantize_model(gptq, "int4-weight", 32, stats, calibration="gptq")
    assert loss(model) < loss(gptq) < loss(rtn)


def test_structured_pruning_shrinks_the_matrices(run, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    assert main(["compress", str(run), "-o", str(out), "--method", "structured",
                 "--perplexity", "test", "--compress.head_ratio=0.5",
                 "--compress.channel_ratio=0.5", *FAST]) == 0
    original, _ = load_model(run)
    pruned, _ = load_model(out)
    assert pruned.cfg.n_kv_heads == 1 and pruned.cfg.n_heads == 2
    assert pruned.cfg.hidden_dim == 96 and pruned.cfg.head_dim == original.cfg.head_dim
    attn = pruned.model.layers[0].self_attn
    assert tuple(attn.q_proj.weight.shape) == (2 * 16, 64)
    assert tuple(pruned.model.layers[0].mlp.down_proj.weight.shape) == (64, 96)
    assert pruned.num_params() < original.num_params()
    hf = AutoModelForCausalLM.from_pretrained(out / "model").eval()  # a plain, smaller Llama
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(logits_of(pruned, ids), hf(ids).logits.detach(), atol=1e-4)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "2:4"])
def test_unstructured_pruning_reaches_its_sparsity(run, tmp_path, method):
    out = tmp_path / "sparse"
    assert main(["compress", str(run), "-o", str(out), "--method", method, "--sparsity", "0.5",
                 "--perplexity", "--compress.speed_tokens=0"]) == 0
    model, _ = load_model(out)
    weight = model.model.layers[1].mlp.up_proj.weight
    assert abs(float((weight == 0).float().mean()) - 0.5) < 0.01
    if method == "2:4":
        assert bool(((weight.view(weight.size(0), -1, 4) != 0).sum(-1) == 2).all())


def test_recovery_training_keeps_the_zeros(run, tmp_path):
    out = tmp_path / "recovered"
    assert main(["compress", str(run), "-o", str(out), "--method", "magnitude",
                 "--sparsity", "0.6", "--perplexity", "--compress.speed_tokens=0",
                 "--compress.recovery_steps=15", "--compress.recovery_lr=0.002"]) == 0
    done = json.loads((out / "compress.json").read_text())
    assert done["recovery"]["last_loss"] < done["recovery"]["first_loss"]
    assert done["sparsity"] >= 0.6 - 1e-3


def test_the_gate_fails_a_compression_that_hurts_too_much(run, tmp_path, capsys):
    code = main(["compress", str(run), "-o", str(tmp_path / "bad"), "--method", "magnitude",
                 "--sparsity", "0.9", "--perplexity", "test", "--max-ppl-increase", "0.02",
                 "--compress.speed_tokens=0"])
    err = capsys.readouterr().err
    assert code == 2 and "above compress.max_ppl_increase=0.02" in err
    assert "Traceback" not in err


def test_mistakes_are_one_line_errors(run, tmp_path, capsys):
    assert main(["compress", str(tmp_path / "missing"), "-o", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    out = tmp_path / "q"
    assert main(["compress", str(run), "-o", str(out), "--perplexity",
                 "--compress.speed_tokens=0"]) == 0
    assert main(["compress", str(out), "-o", str(tmp_path / "qq"), "--perplexity"]) == 2
    assert "quantized already" in capsys.readouterr().err
    lone = run / "pretrain" / "model"  # a model without its run: no train split to calibrate on
    assert main(["compress", str(lone), "-o", str(tmp_path / "w"), "--method", "wanda",
                 "--perplexity"]) == 2
    assert "--calibration-data FILE" in capsys.readouterr().err
    assert main(["compress", str(run), "-o", str(tmp_path / "s"), "--method", "magnitude",
                 "--sparsity", "1.5", "--perplexity"]) == 2
    assert "compress.sparsity: Input should be less than 1" in capsys.readouterr().err
    assert main(["compress", str(run), "-o", str(tmp_path / "c"), "--method", "wanda",
                 "--calibration-data", str(tmp_path / "nope.txt"), "--perplexity"]) == 2
    assert "calibration data" in capsys.readouterr().err
