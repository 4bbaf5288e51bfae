"""What `lmforge serve PATH` can load, and the tokenizer that goes with it.

    PATH = runs/demo                         a run dir: pretrain/checkpoints/best.pt
    PATH = runs/demo/pretrain/checkpoints/step_00000500.pt     a checkpoint
    PATH = runs/demo/pretrain/model          a model dir (model_config.json + safetensors)
    PATH = runs/demo/export                  an HF export (config.json + model*.safetensors)
    PATH = runs/demo/finetune/adapter        a PEFT adapter: LoRA merged into its base, or
                                             prompt tuning's virtual tokens before each prompt

A run that fine-tuned serves its fine-tuned model.

The tokenizer is the one next to the model: the export dir itself, or the nearest
`tokenizer/` directory walking up from the model (pretrain/tokenizer, then the run's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge.model.files import best_checkpoint, finetune_dir, load_model
from lmforge.model.llama import Transformer
from lmforge.sources import find_tokenizer
from lmforge.tokenizer.chat_tokenizer import ChatTokenizer


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: ChatTokenizer
    source: Path


def load_served_model(path: Path, tokenizer: Path | None = None) -> LoadedModel:
    """The model at `path` (any layout in the module docstring; a run's best checkpoint)
    and its tokenizer."""
    from lmforge.model.lora import lora_modules, merge_lora

    path = Path(path)
    model, source = load_model(path if finetune_dir(path) else best_checkpoint(path) or path)
    if lora_modules(model):  # the engine runs plain weights: the adapter folded in (exact)
        merge_lora(model)
    tok_dir = Path(tokenizer) if tokenizer is not None else find_tokenizer(source)
    return LoadedModel(model.eval(), ChatTokenizer(tok_dir), source)
