"""The export stage: the run's final model as an HF directory in RUN/export/.

    RUN/export/   config.json, generation_config.json, model.safetensors, tokenizer files

When the run fine-tuned, the fine-tuned model is exported (LoRA adapters merged in).

transformers' `from_pretrained`, vLLM and lm-eval's hf backend load it as it is.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import UserError
from lmforge.pipeline import Stage, StageContext
from lmforge.progress import console


def export_model(source: Path, out: Path, dtype: str = "float32", max_shard_mb: float = 5000.0,
                 tokenizer: Path | None = None, merge_lora: bool = False) -> dict[str, Any]:
    """Load any model lmforge reads (run, checkpoint, model dir, HF dir, fine-tuned run or
    adapter dir) and write it out. A LoRA adapter is folded into the weights with
    `merge_lora`, else the base is written and the adapter copied to out/adapter (PEFT loads
    the pair); so is a prompt-tuning adapter always (virtual tokens have no weights to fold
    into)."""
    from lmforge.export.hf import write_hf_model
    from lmforge.model.files import load_model
    from lmforge.model.lora import lora_modules
    from lmforge.model.lora import merge_lora as merge
    from lmforge.model.peft import read_config
    from lmforge.model.prompt_tuning import prompt_prefix
    from lmforge.model.quant import dequantize
    from lmforge.sources import find_tokenizer

    model, loaded_from = load_model(source)
    if dequantize(model):  # HF's Llama has no int8/int4 modules: ship the weights they stand for
        console.print("  export: quantized weights written dequantized (the rounding stays, "
                      "the size does not); serve the compressed directory itself to keep it")
    if prompt_prefix(model):
        merge_lora = False
    adapter = loaded_from if lora_modules(model) or prompt_prefix(model) else None
    base = None if adapter is None else Path(read_config(adapter)["base_model_name_or_path"])
    tokenizer_dir = tokenizer
    if tokenizer_dir is None:  # next to the model, else (an adapter's) next to its base
        try:
            tokenizer_dir = find_tokenizer(loaded_from)
        except UserError:
            if base is None:
                raise
            tokenizer_dir = find_tokenizer(base)
    if adapter is not None and merge_lora:
        merge(model)
    elif base is not None:
        model, _ = load_model(base)
    written = write_hf_model(out, model.state_dict(), model.cfg, tokenizer_dir, dtype,
                             max_shard_mb)
    what = ""
    if adapter is not None:
        what = "merged with its adapter" if merge_lora else "base, adapter in adapter/"
        if not merge_lora:
            shutil.copytree(adapter, out / "adapter", dirs_exist_ok=True)
    console.print(f"  export: {written['params'] / 1e6:.2f}M parameters in {dtype} {what}, "
                  f"{len(written['files'])} files, {written['bytes'] / 1e6:.1f} MB -> {out}")
    return {"source": str(loaded_from), "params": written["params"], "dtype": dtype,
            "bytes": written["bytes"], "adapter": None if adapter is None else str(adapter),
            "merged": adapter is not None and merge_lora}


def run_export(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.cfg.export
    if "finetune" in ctx.inputs:  # the run fine-tuned: ship that model, adapters merged
        return export_model(ctx.inputs["finetune"], ctx.out_dir, cfg.dtype, cfg.max_shard_mb,
                            merge_lora=True)
    return export_model(ctx.inputs["pretrain"] / "model", ctx.out_dir, cfg.dtype,
                        cfg.max_shard_mb, tokenizer=ctx.inputs["tokenizer"])


def _depends_on(cfg: Config) -> dict[str, Any]:
    return {"export": cfg.export.model_dump(mode="json", exclude={"enabled"})}


STAGE = Stage(
    name="export",
    inputs=("tokenizer", "pretrain"),
    sections=("export",),
    run=run_export,
    describe="write the final model as an HF directory (transformers, vLLM, lm-eval load it)",
    config_fn=_depends_on,
    optional_inputs=("finetune",),
    enabled_fn=lambda cfg: cfg.export.enabled,
    switch="export.enabled",
)
