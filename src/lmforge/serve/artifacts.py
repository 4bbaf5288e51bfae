"""What `lmforge serve PATH` can load, and the tokenizer that goes with it.

    PATH = runs/demo                         a run dir: pretrain/checkpoints/best.pt
    PATH = runs/demo/pretrain/checkpoints/step_00000500.pt     a checkpoint
    PATH = runs/demo/pretrain/model          a model dir (model_config.json + safetensors)
    PATH = runs/demo/export                  an HF export (config.json + model*.safetensors)

The tokenizer is the one next to the model: the export dir itself, or the nearest
`tokenizer/` directory walking up from the model (pretrain/tokenizer, then the run's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.model.files import best_checkpoint, find_tokenizer, load_model
from lmforge.model.llama import Transformer
from lmforge.model.tokenizer import TextCodec, load_tokenizer


class ServedTokenizer:
    """The tokenizer plus what serving needs from tokenizer_config.json: special tokens
    and the chat template."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.codec: TextCodec = load_tokenizer(directory)
        config_path = directory / "tokenizer_config.json"
        self.config: dict[str, Any] = (
            json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {})
        self.chat_template: str | None = self.config.get("chat_template")
        self.bos_token = self._named("bos_token")
        self.eos_token = self._named("eos_token")
        self.eos_id = self.codec.token_id(self.eos_token) if self.eos_token else None

    def _named(self, key: str) -> str | None:
        value = self.config.get(key)
        return value.get("content") if isinstance(value, dict) else value

    def encode(self, text: str) -> list[int]:
        """Text to ids; special-token strings in it (chat role markers) become their ids."""
        return self.codec.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.codec.decode(ids)

    def token_text(self, token_id: int) -> str:
        return self.codec.tokenizer.decode([token_id], skip_special_tokens=False)

    def stop_ids(self, extra_tokens: list[str]) -> frozenset[int]:
        """eos plus the extra stop tokens that this vocabulary has."""
        ids = {self.codec.token_id(t) for t in extra_tokens}
        if self.eos_id is not None:
            ids.add(self.eos_id)
        return frozenset(i for i in ids if i is not None)


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: ServedTokenizer
    source: Path


def load_served_model(path: Path, tokenizer: Path | None = None) -> LoadedModel:
    """The model at `path` (any layout in the module docstring; a run's best checkpoint)
    and its tokenizer."""
    path = Path(path)
    model, source = load_model(best_checkpoint(path) or path)
    tok_dir = Path(tokenizer) if tokenizer is not None else find_tokenizer(source)
    return LoadedModel(model.eval(), ServedTokenizer(tok_dir), source)
