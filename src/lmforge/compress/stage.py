"""The compress stage: the run's final model quantized or pruned into RUN/compress/, its
quality and speed measured against the original, and the perplexity gate applied.

    RUN/compress/model/   a model directory every command loads (generate, serve, eval,
                          export, chat); see `run` for the rest of the layout

It runs after export (which ships the full-precision model) and before eval.
"""

from __future__ import annotations

from typing import Any

from lmforge.config import Config
from lmforge.pipeline import Stage, StageContext


def run_compress(ctx: StageContext) -> dict[str, Any]:
    from lmforge.compress.run import compress_model

    cfg = ctx.cfg
    source = ctx.inputs["finetune"] if "finetune" in ctx.inputs else ctx.inputs["pretrain"]
    tokenizer = None if "finetune" in ctx.inputs else ctx.inputs["tokenizer"]
    tasks = cfg.compress.tasks if cfg.compress.tasks is not None else cfg.eval.tasks
    report = compress_model(source, ctx.out_dir, cfg.compress, ctx.inputs["data"], tasks,
                            tokenizer)
    size = report["size"]
    metrics: dict[str, Any] = {"method": report["method"],
                               "compressed_bytes": size["compressed_bytes"],
                               "ratio_to_bf16": round(size["ratio_to_bf16"], 4)}
    for batch in ("batch_1", "batch_8"):
        if batch in report.get("speed", {}):
            metrics[f"speedup_{batch}"] = report["speed"][batch]["speedup"]
    return metrics


def _depends_on(cfg: Config) -> dict[str, Any]:
    tasks = cfg.compress.tasks if cfg.compress.tasks is not None else cfg.eval.tasks
    return {"compress": cfg.compress.model_dump(mode="json", exclude={"enabled"}),
            "tasks": tasks}


STAGE = Stage(
    name="compress",
    inputs=("data", "tokenizer", "pretrain"),
    optional_inputs=("finetune",),
    sections=("compress",),
    run=run_compress,
    describe="quantize or prune the run's model; size, quality (paired) and speed vs original",
    config_fn=_depends_on,
    enabled_fn=lambda cfg: cfg.compress.enabled,
    switch="compress.enabled",
)
