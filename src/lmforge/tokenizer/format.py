"""The token format shared by the tokenize stage (writer) and `TokenDataset` (reader).

    TOKENS_DIR/{split}.bin   token ids, documents back to back, eos after each document
                             (little-endian uint16 when the vocabulary fits, else uint32)
    TOKENS_DIR/{split}.idx   little-endian uint64 document start offsets: documents + 1
                             entries, 0 first and the split's token count last
    TOKENS_DIR/meta.json     dtype, vocabulary, special ids, tokenizer hash, and per split
                             the counts and xxh3-64 checksums of both files

Plain arrays, so numpy.memmap, nanoGPT-style readers and other tools read them directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xxhash

FORMAT = "lmforge-tokens"
FORMAT_VERSION = 1
META = "meta.json"
SPLITS = ("train", "val", "test")
IDX_DTYPE = np.dtype("<u8")
TOKEN_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def token_dtype_name(vocab_size: int) -> str:
    """uint16 while every id fits in it, uint32 beyond."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


def bin_path(tokens_dir: Path, split: str) -> Path:
    return Path(tokens_dir) / f"{split}.bin"


def idx_path(tokens_dir: Path, split: str) -> Path:
    return Path(tokens_dir) / f"{split}.idx"


def xxh3_file(path: Path, chunk_bytes: int = 16 << 20) -> str:
    """xxh3-64 of a file, read in chunks so memory stays flat for any file size."""
    digest = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def split_record(tokens_dir: Path, split: str, dtype_name: str, text_bytes: int) -> dict:
    """meta.json's entry for a written split: counts from the file sizes, and checksums."""
    bin_file, idx_file = bin_path(tokens_dir, split), idx_path(tokens_dir, split)
    return {
        "tokens": bin_file.stat().st_size // TOKEN_DTYPES[dtype_name].itemsize,
        "documents": idx_file.stat().st_size // IDX_DTYPE.itemsize - 1,
        "text_bytes": text_bytes,
        "bin_xxh3": xxh3_file(bin_file),
        "idx_xxh3": xxh3_file(idx_file),
    }


def make_meta(
    vocab_size: int,
    special_ids: dict[str, int],
    tokenizer_sha256: str,
    splits: dict[str, dict],
    **extra: object,
) -> dict:
    """The whole meta.json; `special_ids` needs at least 'eos'."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dtype": token_dtype_name(vocab_size),
        "vocab_size": vocab_size,
        "eos_id": special_ids["eos"],
        "special_ids": special_ids,
        "tokenizer_sha256": tokenizer_sha256,
        **extra,
        "splits": splits,
    }
