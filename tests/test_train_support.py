"""Helpers for the model/train tests (no tests here): a tiny char-level run directory.

`make_run(tmp_path)` writes RUN_DIR/tokenizer (a char tokenizer.json) and RUN_DIR/tokenize
(train/val/test token shards of stdlib documentation text, meta.json) plus the two stage
manifests, so `lmforge pretrain` and the Trainer run on it without the data stage.
"""

from __future__ import annotations

import pydoc_data.topics
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lmforge.io import atomic_write_json, sha256_file
from lmforge.tokenizer.config import TokenizerConfig
from lmforge.tokenizer.format import META, bin_path, idx_path, make_meta, split_record
from lmforge.tokenizer.train import save_tokenizer, train_char

TINY_MODEL = {"dim": 32, "n_layers": 2, "n_heads": 2, "ffn_dim": 64, "max_seq_len": 64}
TINY_TRAIN = {
    "max_steps": 30, "batch_size": 4, "block_size": 32, "lr": 3e-3, "warmup_steps": 5,
    "eval_every": 10, "eval_batches": 4, "ckpt_every": 10, "precision": "fp32",
    "tensorboard": False, "plot": False, "sample_tokens": 0, "peak_tflops": 1.0,
    "threads": 1,
}


def documents(limit: int = 400) -> list[str]:
    """Stdlib documentation topics: real English text the running Python ships."""
    texts = [t.strip() for t in pydoc_data.topics.topics.values() if len(t.strip()) > 200]
    return sorted(texts)[:limit]


def write_split(tokens_dir: Path, split: str, docs: list[list[int]], text_bytes: int) -> dict:
    flat = np.concatenate([np.asarray(d, dtype=np.uint16) for d in docs]) if docs else \
        np.zeros(0, dtype=np.uint16)
    flat.tofile(bin_path(tokens_dir, split))
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype("<u8")
    offsets.tofile(idx_path(tokens_dir, split))
    return split_record(tokens_dir, split, "uint16", text_bytes)


def make_run(root: Path, n_docs: int = 300) -> Path:
    """A run dir with tokenizer/ and tokenize/ finished; returns the run dir."""
    run = root / "run"
    tok_dir, tokens_dir = run / "tokenizer", run / "tokenize"
    tokens_dir.mkdir(parents=True)
    texts = documents(n_docs)
    cfg = TokenizerConfig(type="char")
    tokenizer = train_char(cfg, iter(texts))
    save_tokenizer(tokenizer, cfg, tok_dir)
    eos = tokenizer.token_to_id(cfg.eos_token)
    encoded = [[*e.ids, eos] for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    n_val = n_test = max(2, len(texts) // 20)
    parts = {"train": slice(n_val + n_test, None), "val": slice(0, n_val),
             "test": slice(n_val, n_val + n_test)}
    splits = {
        name: write_split(tokens_dir, name, encoded[part],
                          sum(len(t.encode()) for t in texts[part]))
        for name, part in parts.items()
    }
    meta = make_meta(tokenizer.get_vocab_size(), {"eos": eos},
                     sha256_file(tok_dir / "tokenizer.json"), splits)
    atomic_write_json(tokens_dir / META, meta)
    for stage in ("tokenizer", "tokenize"):
        atomic_write_json(run / stage / "manifest.json",
                          {"stage": stage, "config_hash": stage, "files": []})
    return run


def write_config(path: Path, run_dir: Path, model: dict[str, Any] | None = None,
                 train: dict[str, Any] | None = None) -> Path:
    cfg = {"run": {"dir": str(run_dir)}, "model": {**TINY_MODEL, **(model or {})},
           "train": {**TINY_TRAIN, **(train or {})}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path
