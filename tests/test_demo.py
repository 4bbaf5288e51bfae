"""The README's main job, small: `lmforge run -c configs/demo.yaml` on the built-in corpus."""

import json
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.train.monitor import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the demo config names files relative to the project root
    args = ["run", "-c", "configs/demo.yaml", f"--run.dir={tmp_path}", "--train.max_steps=60"]
    args += ["--train.eval_every=30", "--train.ckpt_every=30", "--tokenizer.vocab_size=2048",
             "--finetune.max_steps=20", "--finetune.eval_every=10"]
    assert main(args) == 0
    stats = json.loads((tmp_path / "data" / "stats.json").read_text())
    assert stats["dedup"]["exact_removed"] > 100 and stats["dedup"]["near_removed"] > 10
    assert stats["output"]["train"]["docs"] > 500 and stats["output"]["val"]["docs"] > 10
    for stage in ("data", "tokenizer", "tokenize", "pretrain", "finetune", "export", "eval"):
        assert json.loads((tmp_path / stage / "manifest.json").read_text())["stage"] == stage
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["tasks"]
    assert results["python_mc"]["n"] == 40 and "perplexity_test" in results
    rows = read_metrics(tmp_path / "pretrain" / "metrics.jsonl")
    baseline = next(r["unigram_val_loss"] for r in rows if "unigram_val_loss" in r)
    final = [r["val_loss"] for r in rows if "val_loss" in r][-1]
    assert final < baseline - 0.5  # clearly better than predicting token frequencies
    assert capsys.readouterr().out.strip()  # the sample
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert hf.num_parameters() > 1e6 and (tmp_path / "export" / "tokenizer.json").is_file()
    export = json.loads((tmp_path / "export" / "manifest.json").read_text())["metrics"]
    assert export["merged"] and export["adapter"].endswith("finetune/adapter")
    replies = (tmp_path / "finetune" / "replies.jsonl").read_text().splitlines()
    assert len(replies) == 16 and (tmp_path / "finetune" / "adapter").is_dir()

    assert main(args) == 0
    err = capsys.readouterr().err
    stages = ("data", "tokenizer", "pretrain", "finetune", "export", "eval")
    assert all(f"{s}: up to date, skipped" in err for s in stages)
