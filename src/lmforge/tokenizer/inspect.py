"""`lmforge tokenizer inspect`: what a tokenizer's vocabulary holds and how well it compresses.

Compression is measured on a sample of each split of a data output: bytes and characters
per token, and per language the fertility (tokens per word; for CJK text, per character,
since it has no spaces). The byte-fallback rate is the share of tokens that are lone bytes
of multi-byte characters: text the vocabulary could not cover with whole characters.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from lmforge.tokenizer.datasource import split_files
from lmforge.tokenizer.engine import HFEncoder, byte_decoder
from lmforge.tokenizer.format import SPLITS
from lmforge.tokenizer.train import tokenizer_file

CJK_CHAR = re.compile(
    "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f]"
)


def token_bytes(spec: dict[str, Any]) -> list[bytes]:
    """Each id's bytes (byte-level BPE) or UTF-8 text (other models), indexed by id."""
    vocab = dict(spec["model"]["vocab"])
    vocab |= {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    table: list[bytes] = [b""] * (max(vocab.values()) + 1)
    decode = byte_decoder()
    specials = {t["content"] for t in spec.get("added_tokens", [])}
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
    for token, i in vocab.items():
        if byte_level and token not in specials and all(ch in decode for ch in token):
            table[i] = bytes(decode[ch] for ch in token)
        else:
            table[i] = token.encode("utf-8")
    return table


def inspect_tokenizer(
    tok_dir: Path, data_dir: Path | None = None, top: int = 15, sample_mb: float = 4.0
) -> dict[str, Any]:
    """A JSON-able report; `splits`, `languages` and `most_frequent` need data_dir."""
    file = tokenizer_file(Path(tok_dir))
    spec = json.loads(file.read_text(encoding="utf-8"))
    pieces = token_bytes(spec)
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    ordinary = [i for i in range(len(pieces)) if i not in specials.values()]
    longest = sorted(ordinary, key=lambda i: (-len(pieces[i]), i))[:top]
    report: dict[str, Any] = {
        "tokenizer": str(file),
        "model": spec["model"]["type"],
        "vocab_size": len(pieces),
        "special_tokens": specials,
        "longest_tokens": [_show(pieces[i]) for i in longest],
    }
    if data_dir is not None:
        report |= _measure(file, pieces, Path(data_dir), top, sample_mb * 1e6)
    return report


def _measure(
    file: Path, pieces: list[bytes], data_dir: Path, top: int, sample_bytes: float
) -> dict:
    encoder = HFEncoder(file.read_text(encoding="utf-8"))
    lone_byte = np.array([len(p) == 1 and p[0] >= 0x80 for p in pieces])
    splits: dict[str, dict[str, float]] = {}
    languages: dict[str, Counter] = defaultdict(Counter)
    frequency = np.zeros(len(pieces), dtype=np.int64)
    for split in SPLITS:
        totals: Counter = Counter()
        for texts, langs in _sample(split_files(data_dir, split), sample_bytes):
            encoded = encoder.encode(texts)
            for text, lang, ids in zip(texts, langs, encoded, strict=True):
                counts = _counts(text, ids, lone_byte)
                totals.update(counts)
                languages[lang].update(counts)
            batch_ids = np.concatenate([np.empty(0, np.uint32), *encoded]).astype(np.int64)
            frequency += np.bincount(batch_ids, minlength=len(pieces))[: len(pieces)]
        if totals["tokens"]:
            splits[split] = _rates(totals)
    most = np.argsort(-frequency, kind="stable")[:top]
    return {
        "splits": splits,
        "languages": {lang: _rates(c) for lang, c in sorted(languages.items()) if c["tokens"]},
        "most_frequent_tokens": [
            {"token": _show(pieces[i]), "share": round(frequency[i] / max(frequency.sum(), 1), 4)}
            for i in most
            if frequency[i]
        ],
    }


def _sample(files: list[Path], limit: float):
    """(texts, languages) batches from the start of a split, up to `limit` bytes of text."""
    seen = 0
    for path in files:
        parquet = pq.ParquetFile(path)
        columns = ["text", "language"] if "language" in parquet.schema_arrow.names else ["text"]
        for batch in parquet.iter_batches(batch_size=256, columns=columns):
            texts = [t or "" for t in batch.column(0).to_pylist()]
            langs = batch.column(1).to_pylist() if len(columns) == 2 else [None] * len(texts)
            yield texts, [lang or "unknown" for lang in langs]
            seen += sum(len(t.encode("utf-8")) for t in texts)
            if seen >= limit:
                return


def _counts(text: str, ids: np.ndarray, lone_byte: np.ndarray) -> Counter:
    cjk = len(CJK_CHAR.findall(text))
    words = len(CJK_CHAR.sub(" ", text).split())
    return Counter(
        documents=1,
        bytes=len(text.encode("utf-8")),
        chars=len(text),
        units=cjk + words,
        tokens=len(ids),
        lone_bytes=int(lone_byte[ids].sum()) if len(ids) else 0,
    )


def _rates(c: Counter) -> dict[str, float]:
    tokens = max(c["tokens"], 1)
    return {
        "documents": c["documents"],
        "tokens": c["tokens"],
        "bytes_per_token": round(c["bytes"] / tokens, 3),
        "chars_per_token": round(c["chars"] / tokens, 3),
        "fertility": round(c["tokens"] / max(c["units"], 1), 3),
        "byte_fallback_rate": round(c["lone_bytes"] / tokens, 5),
    }


def _show(piece: bytes) -> str:
    return piece.decode("utf-8", errors="backslashreplace")


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{report['tokenizer']}[/]: {report['model']}, vocabulary {report['vocab_size']:,}, "
        f"special tokens {', '.join(f'{t}={i}' for t, i in report['special_tokens'].items())}"
    )
    columns = {
        "documents": "docs",
        "tokens": "tokens",
        "bytes_per_token": "bytes/tok",
        "chars_per_token": "chars/tok",
        "fertility": "fertility",
        "byte_fallback_rate": "byte fallback",
    }
    for title, rows in (
        ("per split", report.get("splits")),
        ("per language", report.get("languages")),
    ):
        if rows:
            table = Table("", *columns.values(), title=title)
            for name, r in rows.items():
                table.add_row(name, *(_cell(r[key]) for key in columns))
            console.print(table)
    console.print("longest tokens: " + "  ".join(repr(t) for t in report["longest_tokens"]))
    if report.get("most_frequent_tokens"):
        shown = "  ".join(
            f"{t['token']!r} {t['share']:.2%}" for t in report["most_frequent_tokens"]
        )
        console.print("most frequent: " + shown)


def _cell(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"
