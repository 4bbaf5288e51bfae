"""The tokenizer and tokenize stages as `lmforge run` steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import UserError
from lmforge.io import sha256_file
from lmforge.pipeline import Stage, StageContext
from lmforge.sources import find_tokenizer, local_path
from lmforge.tokenizer.encode import STAGE_NAME, WORK, tokenize
from lmforge.tokenizer.train import STAGE_NAME as TOKENIZER_STAGE
from lmforge.tokenizer.train import copy_base_tokenizer, tokenizer_file, train_and_save


def _tokenizer_depends_on(cfg: Config) -> dict[str, Any]:
    """The section, plus the content of an adopted tokenizer file (edits to it count); with
    model.init_from, only the base and its tokenizer file."""
    if cfg.model.init_from:
        base = base_tokenizer_dir(cfg)
        return {"init_from": cfg.model.init_from,
                "base_sha256": sha256_file(tokenizer_file(base))}
    section = cfg.tokenizer.model_dump(mode="json")
    if cfg.tokenizer.path is not None and cfg.tokenizer.path.exists():
        section["path_sha256"] = sha256_file(tokenizer_file(cfg.tokenizer.path))
    return {"tokenizer": section}


def base_tokenizer_dir(cfg: Config) -> Path:
    """The tokenizer of model.init_from, which continued pretraining must keep."""
    if cfg.tokenizer.path is not None:
        raise UserError("tokenizer.path and model.init_from both name a tokenizer; continued "
                        "pretraining keeps the base's, so unset tokenizer.path")
    return find_tokenizer(local_path(cfg.model.init_from))


def _tokenize_depends_on(cfg: Config) -> dict[str, Any]:
    """The section without `workers`: the output is byte-identical for any worker count."""
    return {"tokenize": cfg.tokenize.model_dump(mode="json", exclude={"workers"})}


def _run_tokenizer(ctx: StageContext) -> dict[str, Any]:
    if ctx.cfg.model.init_from:
        return copy_base_tokenizer(base_tokenizer_dir(ctx.cfg), ctx.out_dir)
    return train_and_save(ctx.cfg.tokenizer, ctx.inputs.get("data"), ctx.out_dir)


def _run_tokenize(ctx: StageContext) -> dict[str, Any]:
    return tokenize(
        ctx.inputs["data"], ctx.inputs["tokenizer"], ctx.out_dir, ctx.cfg.tokenize, ctx.resume
    )


TOKENIZER = Stage(
    name=TOKENIZER_STAGE,
    inputs=("data",),
    sections=("tokenizer",),
    run=_run_tokenizer,
    describe="train a byte-level BPE (or char) tokenizer on the train split, or adopt one "
    "(model.init_from: the base's, verbatim)",
    config_fn=_tokenizer_depends_on,
)

TOKENIZE = Stage(
    name=STAGE_NAME,
    inputs=("data", "tokenizer"),
    sections=("tokenize",),
    run=_run_tokenize,
    describe="encode every split into uint16/uint32 token shards with a document index",
    excluded=(WORK,),
    config_fn=_tokenize_depends_on,
)
