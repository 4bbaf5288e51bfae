"""The data stage as a pipeline step: `lmforge run` calls it with the run's config."""

from __future__ import annotations

from typing import Any

from lmforge.config import Config
from lmforge.data import layout
from lmforge.data.plan import plan_shards
from lmforge.data.prepare import STAGE_NAME, input_files, prepare, semantic_config
from lmforge.pipeline import Stage, StageContext


def _depends_on(cfg: Config) -> dict[str, Any]:
    shards = plan_shards(cfg.data.sources, cfg.data.shard_mb)
    return {"data": semantic_config(cfg.data), "input_files": input_files(shards)}


def _run(ctx: StageContext) -> dict[str, Any]:
    return prepare(ctx.cfg.data, ctx.out_dir, resume=ctx.resume)


STAGE = Stage(
    name=STAGE_NAME,
    inputs=(),
    sections=("data",),
    run=_run,
    describe="clean, filter, deduplicate and split the raw text",
    excluded=(layout.WORK,),
    config_fn=_depends_on,
)
