"""Schema of the `tokenizer:` and `tokenize:` sections."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from lmforge.schema import Section


class TokenizerConfig(Section):
    """How the tokenizer stage makes `tokenizer.json`: train BPE, build a char vocabulary,
    or reuse an existing file."""

    type: Literal["bpe", "char"] = Field(
        "bpe", description="bpe: byte-level BPE; char: one token per character of the train split"
    )
    path: Path | None = Field(
        None,
        description="reuse this tokenizer.json (or a directory holding one) instead of training",
    )
    vocab_size: int = Field(
        8192, ge=300, description="BPE vocabulary size, special tokens included"
    )
    min_frequency: int = Field(2, ge=1, description="BPE: a pair is merged only if seen this often")
    max_train_mb: float | None = Field(
        None, gt=0, description="train on at most this many MB of the train split (None: all)"
    )
    bos_token: str = "<|bos|>"
    eos_token: str = Field("<|eos|>", description="appended after every document by `tokenize`")
    pad_token: str = "<|pad|>"
    chat_template: str | None = Field(
        None, description="Jinja chat template (default: <|role|> turns closed by <|end|>)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> TokenizerConfig:
        if self.path is not None and self.type == "char":
            raise ValueError("set either type: char or path (an existing tokenizer), not both")
        if len({self.bos_token, self.eos_token, self.pad_token}) != 3:
            raise ValueError("bos_token, eos_token and pad_token must be three different strings")
        return self


class TokenizeConfig(Section):
    """How the tokenize stage encodes the data splits into token shards."""

    workers: int | None = Field(None, ge=1, description="worker processes (default: all cores)")
    shard_mb: float = Field(
        8.0, gt=0, description="text per shard: the unit of parallel work and of resume"
    )
    engine: Literal["auto", "hf"] = Field(
        "auto",
        description="auto: the fastest encoder proven to give the HF tokenizer's ids "
        "(tiktoken for byte-level BPE, numpy for char), else HF; hf: always HF tokenizers",
    )
