"""The export stage: the run's final model as an HF directory in RUN/export/.

    RUN/export/   config.json, generation_config.json, model.safetensors, tokenizer files

transformers' `from_pretrained`, vLLM and lm-eval's hf backend load it as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.pipeline import Stage, StageContext
from lmforge.progress import console


def export_model(source: Path, out: Path, dtype: str = "float32", max_shard_mb: float = 5000.0,
                 tokenizer: Path | None = None) -> dict[str, Any]:
    """Load any model lmforge reads (run, checkpoint, model dir, HF dir) and write it out."""
    from lmforge.export.hf import write_hf_model
    from lmforge.model.files import find_tokenizer, load_model

    model, loaded_from = load_model(source)
    tokenizer_dir = tokenizer if tokenizer is not None else find_tokenizer(loaded_from)
    written = write_hf_model(out, model.state_dict(), model.cfg, tokenizer_dir, dtype,
                             max_shard_mb)
    console.print(f"  export: {written['params'] / 1e6:.2f}M parameters in {dtype}, "
                  f"{len(written['files'])} files, {written['bytes'] / 1e6:.1f} MB -> {out}")
    return {"source": str(loaded_from), "params": written["params"], "dtype": dtype,
            "bytes": written["bytes"]}


def run_export(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.cfg.export
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
    enabled_fn=lambda cfg: cfg.export.enabled,
    switch="export.enabled",
)
