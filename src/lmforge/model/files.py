"""Model directories on disk and loading a model from any lmforge artifact.

    RUN_DIR/pretrain/model/model.safetensors   weights under HF Llama names
    RUN_DIR/pretrain/model/model_config.json   our ModelConfig (vocab included)
    RUN_DIR/pretrain/model/config.json         the same as HF's config (transformers loads it)

`load_model` accepts that directory, an HF export (config.json + model*.safetensors), a
checkpoint file (.pt), a checkpoints/ directory, a pretrain directory, a PEFT adapter
directory (its base comes along) or a run directory (its fine-tuned model when the run
fine-tuned, else its pretrained one), or `hf:ORG/NAME[@REVISION]`, a Hub model fetched
through huggingface_hub's cache (a second use needs no network);
`best_checkpoint` picks the best checkpoint of a run for those who want it over the final
weights (serving, perplexity scoring). `lmforge.sources.find_tokenizer` finds the tokenizer
that goes with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmforge.errors import UserError
from lmforge.io import atomic_path, atomic_write_json, write_failed
from lmforge.model.config import ModelConfig
from lmforge.model.hf import (
    from_hf_config,
    from_hf_state_dict,
    hf_config_dict,
    to_hf_state_dict,
)
from lmforge.model.llama import Transformer
from lmforge.sources import local_path

WEIGHTS = "model.safetensors"
CONFIG = "model_config.json"
HF_CONFIG = "config.json"
HF_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
QUANT_LAYOUT = "quantization.json"  # which modules are quantized, and how (model/quant.py)


def save_model_dir(out: Path, state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """Write weights (tied lm_head left out, as HF does), our config and HF's config.json
    (so `from_pretrained` loads the directory), each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in to_hf_state_dict(state, cfg).items()}
    save_safetensors(out / WEIGHTS, tensors)
    atomic_write_json(out / CONFIG, cfg.model_dump(mode="json"))
    try:
        atomic_write_json(out / HF_CONFIG, hf_config_dict(cfg))
    except UserError:  # a network no HF family computes (e.g. MoE without QK-norm)
        (out / HF_CONFIG).unlink(missing_ok=True)


def save_quantized_dir(out: Path, model: Transformer) -> None:
    """A quantized model: its buffers as they are (int8/uint8 weights, scales), our config
    and the layout that rebuilds it. No config.json: transformers cannot run these modules;
    `lmforge export` writes a dequantized HF directory instead."""
    from lmforge.model.quant import layout

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    head, table = (getattr(m, "weight", None) for m in (model.lm_head, model.model.embed_tokens))
    if head is not None and head is table:
        state.pop("lm_head.weight")  # still tied (embeddings kept in float): stored once
    save_safetensors(out / WEIGHTS, state)
    atomic_write_json(out / CONFIG, model.cfg.model_dump(mode="json"))
    atomic_write_json(out / QUANT_LAYOUT, {"format": 1, "modules": layout(model)})
    (out / HF_CONFIG).unlink(missing_ok=True)


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """One safetensors file, atomically; a full disk is a one-line error naming the path."""
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
    except Exception as e:  # safetensors raises its own SafetensorError for I/O errors
        if not isinstance(e, OSError) and "I/O error" not in str(e):
            raise
        needed = sum(t.numel() * t.element_size() for t in tensors.values())
        raise write_failed(path, needed, e) from None


def find_model_dir(path: Path) -> Path | None:
    for candidate in (path, path / "model", path / "pretrain" / "model"):
        if (candidate / WEIGHTS).is_file() and (candidate / CONFIG).is_file():
            return candidate
    return None


def finetune_dir(path: Path) -> Path | None:
    """The finetune stage output that `path` names: RUN/finetune of a run that finished
    fine-tuning, or such a directory itself."""
    if (path / "finetune" / "manifest.json").is_file():
        return path / "finetune"
    if path.name == "finetune" and ((path / "adapter").is_dir() or (path / "model").is_dir()):
        return path
    return None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Path]:
    """A model in eval mode and where it came from (a .pt checkpoint, a model dir's weights
    file, an HF export dir, or an adapter dir)."""
    from lmforge.train import checkpoint

    path = local_path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a run dir, checkpoint, model dir, "
                        "adapter dir or HF export dir")
    tuned = finetune_dir(path)
    if tuned is not None:
        adapter = tuned / "adapter"
        path = adapter if (adapter / ADAPTER_CONFIG).is_file() else tuned / "model"
    if (path / ADAPTER_CONFIG).is_file():
        from lmforge.model.peft import load_adapter_model

        model, _ = load_adapter_model(path, device=device)
        return model, path
    model_dir = None if path.is_file() else find_model_dir(path)
    if model_dir is None and path.is_dir() and (path / HF_CONFIG).is_file():
        with torch.device(device):
            return _load_hf_export(path).eval(), path
    if model_dir is not None:
        try:
            cfg = ModelConfig.model_validate(json.loads((model_dir / CONFIG).read_text()))
        except ValueError as e:
            raise UserError(f"{model_dir / CONFIG} is not a valid model config ({e})") from None
        if (model_dir / QUANT_LAYOUT).is_file():
            return _load_quantized(model_dir, cfg, device).eval(), model_dir / WEIGHTS
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


def best_checkpoint(path: Path) -> Path | None:
    """The best checkpoint of a run dir, pretrain dir or checkpoints dir (None elsewhere)."""
    from lmforge.train import checkpoint

    if path.is_file():
        return None
    for ckpt_dir in (path / "pretrain" / "checkpoints", path / "checkpoints", path):
        if (ckpt_dir / checkpoint.BEST).is_file():
            return ckpt_dir / checkpoint.BEST
    return None


def _load_quantized(directory: Path, cfg: ModelConfig, device: str | torch.device
                    ) -> Transformer:
    """Built on the meta device, quantized modules put in place, then filled from disk."""
    from lmforge.model.quant import apply_layout

    try:
        spec = json.loads((directory / QUANT_LAYOUT).read_text(encoding="utf-8"))["modules"]
    except (ValueError, KeyError) as e:
        raise UserError(f"{directory / QUANT_LAYOUT} is not a quantization layout ({e}); "
                        "compress the model again") from None
    with torch.device("meta"):
        model = Transformer(cfg)
        apply_layout(model, spec)
    model.to_empty(device=device)
    if cfg.tie_embeddings and isinstance(model.lm_head, torch.nn.Linear):
        model.lm_head.weight = model.model.embed_tokens.weight  # to_empty untied the pair
    model.reset_parameters()
    state = load_file(str(directory / WEIGHTS), device=str(device))
    if "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied, stored once
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"weights in {directory} do not match its quantization layout "
                        f"({first}); compress the model again") from None
    return model


def _load_hf_export(directory: Path) -> Transformer:
    try:
        raw = json.loads((directory / HF_CONFIG).read_text(encoding="utf-8"))
        cfg = from_hf_config(raw)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{directory / HF_CONFIG} is not a Llama/Mistral/Qwen3 config ({e}); "
                        "export the model with lmforge") from None
    if (directory / HF_INDEX).is_file():
        index = json.loads((directory / HF_INDEX).read_text(encoding="utf-8"))
        files = sorted(set(index["weight_map"].values()))
    else:
        files = [WEIGHTS]
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
