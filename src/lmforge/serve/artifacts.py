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
from types import SimpleNamespace
from typing import Any

from lmforge.errors import UserError
from lmforge.model.llama import Transformer
from lmforge.model.tokenizer import TextCodec, load_tokenizer
from lmforge.train import checkpoint

HF_CONFIG = "config.json"
HF_INDEX = "model.safetensors.index.json"


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
    """The model at `path` (any layout in the module docstring) and its tokenizer."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a run dir, checkpoint, model dir or "
                        "HF export dir")
    if path.is_dir() and (path / HF_CONFIG).is_file():
        model, source = _load_hf_export(path), path
    else:
        from lmforge.model.files import load_model

        model, source = load_model(_best_checkpoint(path) or path)
    tok_dir = Path(tokenizer) if tokenizer is not None else find_tokenizer(source)
    return LoadedModel(model.eval(), ServedTokenizer(tok_dir), source)


def _best_checkpoint(path: Path) -> Path | None:
    """A run dir, pretrain dir or checkpoints dir serves its best checkpoint."""
    if path.is_file():
        return None
    for ckpt_dir in (path / "pretrain" / "checkpoints", path / "checkpoints", path):
        if (ckpt_dir / checkpoint.BEST).is_file():
            return ckpt_dir / checkpoint.BEST
    return None


def find_tokenizer(source: Path) -> Path:
    start = source if source.is_dir() else source.parent
    for directory in (start, *list(start.parents)[:3]):
        for candidate in (directory, directory / "tokenizer"):
            if (candidate / "tokenizer.json").is_file():
                return candidate
    raise UserError(f"no tokenizer.json found next to {source}; pass --tokenizer DIR "
                    "(the run's tokenizer directory)")


def _load_hf_export(directory: Path) -> Transformer:
    import torch
    from safetensors.torch import load_file

    from lmforge.model.hf import from_hf_config, from_hf_state_dict

    raw = json.loads((directory / HF_CONFIG).read_text(encoding="utf-8"))
    try:
        cfg = from_hf_config(SimpleNamespace(**raw))
    except (AttributeError, TypeError, ValueError) as e:
        raise UserError(f"{directory / HF_CONFIG} is not a Llama/Mistral/Qwen3 config ({e}); "
                        "export the model with lmforge") from None
    if (directory / HF_INDEX).is_file():
        index = json.loads((directory / HF_INDEX).read_text(encoding="utf-8"))
        files = sorted(set(index["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        if not (directory / name).is_file():
            raise UserError(f"{directory / name} is missing; re-export the model")
        state.update(load_file(str(directory / name)))
    model = Transformer(cfg)
    try:
        model.load_state_dict(from_hf_state_dict(state, cfg))
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"weights in {directory} do not match its config.json ({first})") from None
    return model
