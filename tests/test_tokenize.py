"""The tokenize stage: exact ids, worker-count independence, kill -9 resume, validation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from lmforge.cli import main
from lmforge.errors import UserError
from lmforge.tokenizer.config import TokenizeConfig, TokenizerConfig
from lmforge.tokenizer.dataset import TokenDataset
from lmforge.tokenizer.encode import WORK, tokenize
from lmforge.tokenizer.format import META, bin_path
from lmforge.tokenizer.train import train_and_save
from test_tokenizer import make_data_dir

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data"), row_group=4)


@pytest.fixture(scope="module")
def bpe_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bpe")
    train_and_save(TokenizerConfig(vocab_size=1000), data_dir, out)
    return out


def split_texts(data_dir: Path, split: str) -> list[str]:
    files = sorted((data_dir / split).glob("*.parquet"))
    return [t or "" for f in files for t in pq.read_table(f, columns=["text"])["text"].to_pylist()]


def run_tokenize(data_dir: Path, tok_dir: Path, out: Path, **cfg: object) -> dict:
    return tokenize(data_dir, tok_dir, out, TokenizeConfig(**cfg))


def output_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".bin", ".idx")}


def test_tokens_are_the_hf_ids_with_eos_after_each_document(
    data_dir: Path, bpe_dir: Path, tmp_path: Path
) -> None:
    metrics = run_tokenize(data_dir, bpe_dir, tmp_path / "tokens", workers=1, shard_mb=0.02)
    assert metrics["engine"] == "tiktoken" and metrics["shards"] > 20
    hf = Tokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    eos = hf.token_to_id("<|eos|>")
    for split in SPLITS:
        ds = TokenDataset(tmp_path / "tokens", split, tokenizer=bpe_dir)
        texts = split_texts(data_dir, split)
        assert ds.num_documents == len(texts) and ds.tokens.dtype == np.uint16
        for i in (0, 1, len(texts) // 2, len(texts) - 1):
            assert ds.document(i).tolist() == [*hf.encode(texts[i]).ids, eos]
        assert ds.split_meta["text_bytes"] == sum(len(t.encode()) for t in texts)
    assert not (tmp_path / "tokens" / WORK).exists()


def test_output_is_identical_for_any_worker_count_and_engine(
    data_dir: Path, bpe_dir: Path, tmp_path: Path
) -> None:
    one = run_tokenize(data_dir, bpe_dir, tmp_path / "one", workers=1, shard_mb=0.02)
    two = run_tokenize(data_dir, bpe_dir, tmp_path / "two", workers=2, shard_mb=0.02)
    hf = run_tokenize(data_dir, bpe_dir, tmp_path / "hf", workers=2, shard_mb=0.5, engine="hf")
    assert one["engine"] == two["engine"] == "tiktoken" and hf["engine"] == "hf"
    reference = output_bytes(tmp_path / "one")
    assert len(reference) == 6
    assert output_bytes(tmp_path / "two") == reference
    assert output_bytes(tmp_path / "hf") == reference
    meta = [json.loads((tmp_path / d / META).read_text())["splits"] for d in ("one", "two", "hf")]
    assert meta[0] == meta[1] == meta[2]


def test_char_tokenizer_encodes_one_token_per_character(data_dir: Path, tmp_path: Path) -> None:
    train_and_save(TokenizerConfig(type="char"), data_dir, tmp_path / "char")
    metrics = run_tokenize(data_dir, tmp_path / "char", tmp_path / "tokens", workers=2)
    assert metrics["engine"] == "char"
    hf = Tokenizer.from_file(str(tmp_path / "char" / "tokenizer.json"))
    ds = TokenDataset(tmp_path / "tokens", "val")
    texts = split_texts(data_dir, "val")
    for i, text in enumerate(texts):
        assert ds.document(i).tolist() == [*hf.encode(text).ids, hf.token_to_id("<|eos|>")]
        assert len(ds.document(i)) == len(text) + 1


def test_resume_after_kill_9_gives_identical_output(
    data_dir: Path, bpe_dir: Path, tmp_path: Path
) -> None:
    run_tokenize(data_dir, bpe_dir, tmp_path / "reference", workers=1, shard_mb=0.5)
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "lmforge",
        "tokenize",
        str(data_dir),
        "--tokenizer",
        str(bpe_dir),
        "-o",
        str(out),
        "--workers",
        "2",
        "--tokenize.shard_mb=0.001",
        "--tokenize.engine=hf",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list((out / WORK).glob("*.done.json")) and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / WORK).glob("*.done.json")))
    assert done > 0 and not (out / META).exists(), "the run was not interrupted mid-way"

    assert main([*command[3:], "--resume"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert 0 < manifest["metrics"]["shards_reused"] < manifest["metrics"]["shards"]
    assert output_bytes(out) == output_bytes(tmp_path / "reference")
    assert all(TokenDataset(out, split) for split in SPLITS)


def test_damaged_output_and_wrong_tokenizer_are_user_errors(
    data_dir: Path, bpe_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tokens"
    run_tokenize(data_dir, bpe_dir, out, workers=1)
    other = tmp_path / "other"
    train_and_save(TokenizerConfig(vocab_size=600), data_dir, other)
    with pytest.raises(UserError, match="different tokenizer"):
        TokenDataset(out, "train", tokenizer=other)
    data = bytearray(bin_path(out, "val").read_bytes())
    data[len(data) // 2] ^= 0x01
    bin_path(out, "val").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"val\.bin is corrupted"):
        TokenDataset(out, "val")
    bin_path(out, "test").write_bytes(bin_path(out, "test").read_bytes()[:-2])
    with pytest.raises(UserError, match=r"test\.bin is truncated"):
        TokenDataset(out, "test")


def test_cli_forms_and_empty_splits(bpe_dir: Path, tmp_path: Path) -> None:
    docs = [{"id": str(i), "text": f"document number {i}", "source": "s"} for i in range(40)]
    data = make_data_dir(tmp_path / "data", docs)
    for part in (data / "test").glob("*.parquet"):
        part.unlink()
    out = tmp_path / "tokens"
    argv = ["tokenize", str(data), "--tokenizer", str(bpe_dir), "-o", str(out), "--workers", "1"]
    assert main(argv) == 0
    assert len(TokenDataset(out, "test")) == 0 and len(TokenDataset(out, "train")) > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "tokenize" and manifest["metrics"]["splits"]["test"]["tokens"] == 0
    assert main(["tokenize", str(data), "-o", str(out)]) == 2
    assert (
        main(["tokenize", str(tmp_path / "missing"), "--tokenizer", str(bpe_dir), "-o", str(out)])
        == 2
    )
