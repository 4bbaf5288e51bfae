"""`lmforge run` from raw text through data, tokenizer and tokenize into pretrain; reruns
skip what is unchanged and a train-section edit redoes pretrain only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lmforge.cli import main
from lmforge.train.monitor import read_metrics
from test_train_support import TINY_MODEL, TINY_TRAIN, documents


@pytest.fixture
def config(tmp_path: Path) -> Path:
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(documents(200)), encoding="utf-8")
    cfg = {
        "run": {"dir": str(tmp_path / "run")},
        "data": {"sources": [{"path": str(text), "format": "text"}], "steps": [],
                 "split": {"mode": "contiguous", "train": 0.9, "val": 0.1, "test": 0.0}},
        "tokenizer": {"type": "char"},
        "model": TINY_MODEL,
        "train": {**TINY_TRAIN, "max_steps": 20, "sample_tokens": 30},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_trains_and_skips_unchanged_stages(config: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "-c", str(config)]) == 0
    out = capsys.readouterr()
    pretrain = tmp_path / "run" / "pretrain"
    manifest = json.loads((pretrain / "manifest.json").read_text())
    assert manifest["stage"] == "pretrain" and manifest["metrics"]["steps"] == 20
    assert set(manifest["inputs"]) == {"tokenizer", "tokenize"}
    assert "sample" in out.err and len(out.out.strip()) > 0  # the sample is printed
    rows = read_metrics(pretrain / "metrics.jsonl")
    assert rows[0]["event"] == "start" and rows[0]["unigram_val_loss"] > 0
    assert max(r["step"] for r in rows) == 20
    assert (pretrain / "tokenizer" / "tokenizer.json").is_file()

    assert main(["run", "-c", str(config)]) == 0
    err = capsys.readouterr().err
    assert "pretrain: up to date, skipped" in err

    assert main(["run", "-c", str(config), "--train.max_steps=25"]) == 0
    err = capsys.readouterr().err
    assert "data: up to date" in err and "tokenize: up to date" in err
    assert "pretrain: running (config changed: train.max_steps=25)" in err
    assert max(r["step"] for r in read_metrics(pretrain / "metrics.jsonl")) == 25
