"""One tokenized split, memory-mapped and checked before anything reads it.

    ds = TokenDataset("runs/demo/tokens", "train")
    len(ds), ds.tokens[:10], ds.doc_offsets[:3], ds.meta["vocab_size"]

Opening checks file sizes against meta.json, the document index, and the xxh3 checksum of
the token file, so a truncated or corrupted shard is a one-line error naming the file
instead of a silent wrong read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import UserError
from lmforge.io import read_json, sha256_file
from lmforge.tokenizer.format import (
    FORMAT,
    FORMAT_VERSION,
    IDX_DTYPE,
    META,
    TOKEN_DTYPES,
    bin_path,
    idx_path,
    xxh3_file,
)

RETOKENIZE = "re-run `lmforge tokenize` to rebuild it"


class TokenDataset:
    """A split of token ids with its document offsets.

    `tokens` is a read-only memmap (uint16 or uint32); `doc_offsets[i]` is where document i
    starts and `doc_offsets[-1] == len(self)`. Pass `tokenizer` (a tokenizer directory or
    tokenizer.json) to also check the split was made with that tokenizer.
    """

    def __init__(
        self,
        tokens_dir: str | Path,
        split: str = "train",
        name: str | None = None,
        verify: bool = True,
        tokenizer: str | Path | None = None,
    ) -> None:
        self.dir = Path(tokens_dir)
        self.split = split
        self.name = name or self.dir.name
        self.meta = load_meta(self.dir)
        splits = self.meta["splits"]
        if split not in splits:
            raise UserError(
                f"{self.dir / META} has no split {split!r} (it has {', '.join(splits) or 'none'}); "
                "pick one of those"
            )
        self.split_meta: dict[str, Any] = splits[split]
        self.dtype = TOKEN_DTYPES[self.meta["dtype"]]
        self.vocab_size: int = self.meta["vocab_size"]
        self.eos_id: int = self.meta["eos_id"]
        self.tokens = self._map(bin_path(self.dir, split), self.dtype, self.split_meta["tokens"])
        self.doc_offsets = self._map(
            idx_path(self.dir, split), IDX_DTYPE, self.split_meta["documents"] + 1
        )
        self._check_index()
        if verify:
            self._check_checksums()
        if tokenizer is not None:
            check_tokenizer(self.meta, Path(tokenizer), self.dir / META)

    def __len__(self) -> int:
        return int(self.split_meta["tokens"])

    def __repr__(self) -> str:
        return (
            f"TokenDataset({str(self.dir)!r}, {self.split!r}, name={self.name!r}: "
            f"{len(self):,} tokens, {self.num_documents:,} documents, {self.meta['dtype']})"
        )

    @property
    def num_documents(self) -> int:
        return int(self.split_meta["documents"])

    def document(self, i: int) -> np.ndarray:
        """The tokens of document i, its trailing eos included."""
        return self.tokens[int(self.doc_offsets[i]) : int(self.doc_offsets[i + 1])]

    def _map(self, path: Path, dtype: np.dtype, count: int) -> np.ndarray:
        if not path.is_file():
            raise UserError(f"{path} is missing; {RETOKENIZE}")
        size = path.stat().st_size
        expected = count * dtype.itemsize
        if size != expected:
            state = "truncated" if size < expected else "longer than recorded"
            raise UserError(
                f"{path} is {state}: {size:,} bytes, meta.json says {expected:,}; {RETOKENIZE}"
            )
        if count == 0:
            return np.empty(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=(count,))

    def _check_index(self) -> None:
        offsets = self.doc_offsets
        path = idx_path(self.dir, self.split)
        if offsets[0] != 0 or offsets[-1] != len(self):
            raise UserError(
                f"{path} does not span the token file (first {offsets[0]}, last {offsets[-1]}, "
                f"tokens {len(self)}); {RETOKENIZE}"
            )
        if np.any(offsets[1:] <= offsets[:-1]):
            raise UserError(f"{path} has document offsets out of order; {RETOKENIZE}")

    def _check_checksums(self) -> None:
        for path, key in (
            (bin_path(self.dir, self.split), "bin_xxh3"),
            (idx_path(self.dir, self.split), "idx_xxh3"),
        ):
            if xxh3_file(path) != self.split_meta[key]:
                raise UserError(
                    f"{path} is corrupted: its xxh3 checksum does not match meta.json; {RETOKENIZE}"
                )


def load_meta(tokens_dir: Path) -> dict[str, Any]:
    """meta.json of a tokens directory, checked for the fields readers rely on."""
    path = Path(tokens_dir) / META
    if not path.is_file():
        raise UserError(
            f"{path} not found; run `lmforge tokenize DATA_DIR --tokenizer TOK_DIR -o {tokens_dir}`"
        )
    try:
        meta = read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); {RETOKENIZE}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is not an lmforge tokens meta file; {RETOKENIZE}")
    if meta.get("version") != FORMAT_VERSION:
        raise UserError(
            f"{path} has format version {meta.get('version')}, "
            f"this lmforge reads {FORMAT_VERSION}; {RETOKENIZE}"
        )
    required = ("dtype", "vocab_size", "eos_id", "tokenizer_sha256", "splits")
    missing = [key for key in required if key not in meta]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; {RETOKENIZE}")
    if meta["dtype"] not in TOKEN_DTYPES:
        raise UserError(f"{path} has unknown dtype {meta['dtype']!r}; {RETOKENIZE}")
    if meta["vocab_size"] > np.iinfo(TOKEN_DTYPES[meta["dtype"]]).max + 1:
        raise UserError(
            f"{path}: vocab_size {meta['vocab_size']} does not fit dtype {meta['dtype']}; "
            f"{RETOKENIZE}"
        )
    return meta


def check_tokenizer(meta: dict[str, Any], tokenizer: Path, meta_path: Path) -> None:
    """Raise unless the tokens were made by this tokenizer (same tokenizer.json bytes)."""
    file = tokenizer / "tokenizer.json" if tokenizer.is_dir() else tokenizer
    if not file.is_file():
        raise UserError(f"{file} not found; pass a tokenizer directory holding tokenizer.json")
    if sha256_file(file) != meta["tokenizer_sha256"]:
        raise UserError(
            f"{meta_path} was made with a different tokenizer than {file}; "
            "re-run `lmforge tokenize` with this tokenizer or point at the matching one"
        )
