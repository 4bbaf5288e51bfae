"""Adapters in PEFT's file format, both ways.

    ADAPTER/adapter_config.json         peft_type, r, lora_alpha, target_modules, ... or
                                        peft_type PROMPT_TUNING, num_virtual_tokens, ...
    ADAPTER/adapter_model.safetensors   base_model.model.<our name>.lora_A.weight, ...
                                        (prompt tuning: prompt_embeddings)

`peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), ADAPTER)` loads
what `save_lora_adapter` and `save_prompt_adapter` write, and `load_adapter_model` reads what
peft saves. What lmforge cannot
compute the same way (DoRA, per-module ranks, bias training, modules_to_save, regex
targets) is a one-line error rather than a silently different model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from lmforge.errors import UserError
from lmforge.io import atomic_write_json
from lmforge.model.lora import LoraSpec, add_lora, lora_state, resolve_targets
from lmforge.model.prompt_tuning import PromptEmbedding, add_prompt_tuning

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
UNSUPPORTED = {"use_dora": "DoRA", "rank_pattern": "per-module ranks",
               "alpha_pattern": "per-module alphas", "modules_to_save": "modules_to_save",
               "layers_to_transform": "layers_to_transform", "lora_bias": "lora_bias"}


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def save_lora_adapter(out: Path, model: nn.Module, spec: LoraSpec, base: str | None,
                      dtype: torch.dtype = torch.float32) -> None:
    """adapter_config.json + adapter_model.safetensors of the model's LoRA weights."""
    from lmforge.model.files import save_safetensors

    out.mkdir(parents=True, exist_ok=True)
    tensors = {PREFIX + name: t.to("cpu", dtype).contiguous()
               for name, t in lora_state(model).items()}
    save_safetensors(out / WEIGHTS, tensors)
    atomic_write_json(out / CONFIG, {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
        "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
        "target_modules": list(spec.targets), "use_rslora": spec.rslora, "bias": "none",
        "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": None, "use_dora": False,
    })


def save_prompt_adapter(out: Path, model: nn.Module, base: str | None) -> None:
    """adapter_config.json + adapter_model.safetensors of the model's virtual tokens."""
    from lmforge.model.files import save_safetensors

    embed = model.model.embed_tokens
    if not isinstance(embed, PromptEmbedding):
        raise ValueError("the model has no prompt-tuning prefix to save")
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(out / WEIGHTS, {"prompt_embeddings": embed.prompt_embeddings.detach()
                                     .to("cpu", torch.float32).contiguous()})
    atomic_write_json(out / CONFIG, {
        "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
        "num_virtual_tokens": embed.virtual_tokens, "token_dim": embed.embedding_dim,
        "num_transformer_submodules": 1, "num_attention_heads": model.cfg.n_heads,
        "num_layers": model.cfg.n_layers, "prompt_tuning_init": "SAMPLE_VOCAB",
        "prompt_tuning_init_text": None, "tokenizer_name_or_path": None,
        "inference_mode": True,
    })


@torch.no_grad()
def load_prompt_adapter(directory: Path, model: nn.Module) -> int:
    """Put the virtual tokens of a PROMPT_TUNING adapter in front of `model`'s inputs;
    returns how many there are."""
    config = read_config(directory)
    if int(config.get("num_transformer_submodules") or 1) != 1:
        raise UserError(f"{directory}: num_transformer_submodules must be 1 (a decoder-only "
                        f"model), got {config['num_transformer_submodules']}")
    tensors = load_file(str(_weights(directory)))
    prompt = tensors.get("prompt_embeddings")
    n = int(config.get("num_virtual_tokens") or 0)
    if prompt is None or prompt.dim() != 2 or prompt.size(0) != n:
        raise UserError(f"{directory}: expected prompt_embeddings of {n} virtual tokens, found "
                        f"{None if prompt is None else tuple(prompt.shape)}")
    add_prompt_tuning(model, prompt)
    return n


def read_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable adapter config ({e})") from None
    if not isinstance(config, dict) or config.get("peft_type") not in ("LORA", "PROMPT_TUNING"):
        raise UserError(f"{path}: peft_type {config.get('peft_type')!r} is not supported; "
                        "lmforge loads LORA and PROMPT_TUNING adapters")
    return config


def lora_spec(config: dict[str, Any], where: Path) -> LoraSpec:
    """The LoraSpec of a PEFT LoRA config, or a UserError for what lmforge does not run."""
    for key, what in UNSUPPORTED.items():
        if config.get(key):
            raise UserError(f"{where}: {what} adapters are not supported; train a plain LoRA")
    if config.get("bias", "none") != "none":
        raise UserError(f"{where}: bias {config['bias']!r} is not supported (only 'none')")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets] if targets == "all-linear" else None
    if not targets:
        raise UserError(f"{where}: target_modules must be a list of module names")
    return LoraSpec(rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                    dropout=float(config.get("lora_dropout") or 0.0),
                    targets=resolve_targets(targets), rslora=bool(config.get("use_rslora")))


def _weights(directory: Path) -> Path:
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise UserError(f"{path} is missing; an adapter dir holds {CONFIG} and {WEIGHTS}")
    return path


def adapter_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """The adapter's weights under lmforge's names (PEFT's prefix and `.default` dropped)."""
    out = {}
    for name, tensor in load_file(str(_weights(directory))).items():
        name = name.removeprefix(PREFIX).replace(".default.", ".")
        out[name] = tensor
    return out


@torch.no_grad()
def load_lora_adapter(directory: Path, model: nn.Module) -> LoraSpec:
    """Add the adapter of `directory` to `model` (frozen base) and load its weights."""
    config = read_config(directory)
    if config["peft_type"] != "LORA":
        raise UserError(f"{directory} is a {config['peft_type']} adapter, not LoRA")
    spec = lora_spec(config, Path(directory))
    add_lora(model, spec)
    expected = lora_state(model)
    tensors = adapter_tensors(directory)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise UserError(f"{directory} does not fit this model: "
                        f"{len(missing)} missing (e.g. {missing[:1]}), "
                        f"{len(unexpected)} unexpected (e.g. {unexpected[:1]}) adapter weights")
    params = dict(model.named_parameters())
    for name, tensor in tensors.items():
        if params[name].shape != tensor.shape:
            raise UserError(f"{directory}: {name} has shape {tuple(tensor.shape)}, the model "
                            f"needs {tuple(params[name].shape)} (another base model?)")
        params[name].copy_(tensor)
    return spec


def load_adapter_model(adapter_dir: Path, base: Path | None = None,
                       device: str | torch.device = "cpu") -> tuple[nn.Module, Path]:
    """The base model (`base`, else the adapter config's base_model_name_or_path) with the
    adapter on it, and the base's path."""
    from lmforge.model.files import load_model

    config = read_config(adapter_dir)
    if base is None:
        named = config.get("base_model_name_or_path")
        if not named or not Path(named).exists():
            raise UserError(f"{adapter_dir}: the base model {named!r} is not a local path; "
                            "pass the base model directory")
        base = Path(named)
    model, _ = load_model(base, device)
    if config["peft_type"] == "PROMPT_TUNING":
        load_prompt_adapter(adapter_dir, model)
    else:
        load_lora_adapter(adapter_dir, model)
    return model.eval(), base
