"""Model directories on disk and loading a model from any lmforge artifact.

    RUN_DIR/pretrain/model/model.safetensors   weights under HF Llama names
    RUN_DIR/pretrain/model/model_config.json   our ModelConfig (vocab included)

`load_model` accepts that directory, a checkpoint file (.pt), a checkpoints/ directory, a
pretrain directory or a run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmforge.errors import UserError
from lmforge.io import atomic_path, atomic_write_json
from lmforge.model.config import ModelConfig
from lmforge.model.hf import from_hf_state_dict, to_hf_state_dict
from lmforge.model.llama import Transformer

WEIGHTS = "model.safetensors"
CONFIG = "model_config.json"


def save_model_dir(out: Path, state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """Write weights (tied lm_head left out, as HF does) and config, each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in to_hf_state_dict(state, cfg).items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_json(out / CONFIG, cfg.model_dump(mode="json"))


def find_model_dir(path: Path) -> Path | None:
    for candidate in (path, path / "model", path / "pretrain" / "model"):
        if (candidate / WEIGHTS).is_file() and (candidate / CONFIG).is_file():
            return candidate
    return None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Path]:
    """A model in eval mode and the file it came from (a .pt checkpoint or a model dir)."""
    from lmforge.train import checkpoint

    path = Path(path)
    model_dir = None if path.is_file() else find_model_dir(path)
    if model_dir is not None:
        try:
            cfg = ModelConfig.model_validate(json.loads((model_dir / CONFIG).read_text()))
        except ValueError as e:
            raise UserError(f"{model_dir / CONFIG} is not a valid model config ({e})") from None
        state = from_hf_state_dict(load_file(str(model_dir / WEIGHTS)), cfg)
        source = model_dir / WEIGHTS
    else:
        source = checkpoint.resolve(path)
        ckpt = checkpoint.load(source)
        cfg = ModelConfig.model_validate(ckpt["model_config"])
        state = ckpt["model"]
    with torch.device(device):
        model = Transformer(cfg)
    model.load_state_dict(state)
    return model.eval(), source
