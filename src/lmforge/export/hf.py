"""Write a Hugging Face model directory: what `from_pretrained` and vLLM read.

    DIR/config.json                   architectures, model_type and the shape (model/hf.py)
    DIR/generation_config.json        bos, eos (the end-of-turn token too), pad
    DIR/model.safetensors             weights under HF names, tied lm_head left out; above
                                      `max_shard_mb` model-0000K-of-0000N.safetensors plus
                                      model.safetensors.index.json (HF's sharded layout)
    DIR/tokenizer.json, tokenizer_config.json (chat template), special_tokens_map.json

Every file is written atomically; the index is written last, so a reader that finds it
finds every shard it names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import UserError
from lmforge.io import atomic_path, atomic_write_json
from lmforge.model.config import ModelConfig
from lmforge.model.files import save_safetensors
from lmforge.model.hf import hf_config_dict, to_hf_state_dict

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")
INDEX = "model.safetensors.index.json"


def special_token_ids(tokenizer_dir: Path) -> dict[str, int | None]:
    """bos/eos/pad ids and the end-of-turn id, read from the tokenizer's own files."""
    from tokenizers import Tokenizer

    from lmforge.tokenizer.chat import end_of_turn_token

    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))

    def named(key: str) -> str | None:
        value = config.get(key)
        return value.get("content") if isinstance(value, dict) else value

    ids: dict[str, int | None] = {}
    for role in ("bos", "eos", "pad"):
        token = named(f"{role}_token")
        ids[role] = tokenizer.token_to_id(token) if token else None
    added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
    end = end_of_turn_token(config, added)
    ids["end_of_turn"] = tokenizer.token_to_id(end) if end else None
    return ids


def generation_config(ids: dict[str, int | None]) -> dict[str, Any]:
    """Greedy by default; generation stops at eos and at the end of an assistant turn."""
    stops = [i for i in (ids.get("eos"), ids.get("end_of_turn")) if i is not None]
    return {"bos_token_id": ids.get("bos"),
            "eos_token_id": stops[0] if len(set(stops)) == 1 else sorted(set(stops)),
            "pad_token_id": ids.get("pad"), "do_sample": False}


def shard(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Split tensors, in name order, into groups of at most max_bytes (one tensor larger
    than that gets a shard of its own)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    return shards


def write_weights(out: Path, tensors: dict[str, torch.Tensor], max_bytes: int) -> list[str]:
    """model.safetensors, or shards plus an index; returns the file names written."""
    groups = shard(tensors, max_bytes)
    if len(groups) == 1:
        save_safetensors(out / "model.safetensors", groups[0])
        return ["model.safetensors"]
    names, weight_map = [], {}
    for i, group in enumerate(groups, start=1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_safetensors(out / name, group)
        names.append(name)
        weight_map |= dict.fromkeys(group, name)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    atomic_write_json(out / INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return [*names, INDEX]


def write_hf_model(out: Path, state: dict[str, torch.Tensor], cfg: ModelConfig,
                   tokenizer_dir: Path | None, dtype: str = "float32",
                   max_shard_mb: float = 5000.0) -> dict[str, Any]:
    """The whole export directory; returns what was written (for the stage's manifest)."""
    if dtype not in DTYPES:
        raise UserError(f"export dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", DTYPES[dtype]).contiguous()
               for k, v in to_hf_state_dict(state, cfg).items()}
    files = write_weights(out, tensors, int(max_shard_mb * 1e6))
    ids = special_token_ids(tokenizer_dir) if tokenizer_dir is not None else {}
    atomic_write_json(out / "config.json", hf_config_dict(cfg, ids, dtype))
    atomic_write_json(out / "generation_config.json", generation_config(ids))
    files += ["config.json", "generation_config.json"]
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                with atomic_path(out / name) as tmp:
                    shutil.copyfile(tokenizer_dir / name, tmp)
                files.append(name)
    params = sum(t.numel() for t in tensors.values())
    return {"files": files, "params": params, "dtype": dtype,
            "bytes": sum((out / f).stat().st_size for f in files)}
