"""The pretrain stage: token shards and tokenizer in, a trained model out.

    RUN_DIR/pretrain/metrics.jsonl      train rows, eval rows, events
    RUN_DIR/pretrain/checkpoints/       step_*.pt (last K) and best.pt
    RUN_DIR/pretrain/model/             final weights (safetensors) + model_config.json
    RUN_DIR/pretrain/tokenizer/         copy of the tokenizer, so the model dir is usable alone
    RUN_DIR/pretrain/loss_curves.png    train/val loss and LR
    RUN_DIR/pretrain/summary.json       final numbers (also in the manifest)
    RUN_DIR/pretrain/tensorboard/       TensorBoard events
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.config import Config
from lmforge.errors import UserError
from lmforge.io import write_failed
from lmforge.outputs import remove_outputs
from lmforge.pipeline import Stage, StageContext
from lmforge.train.monitor import console

if TYPE_CHECKING:
    from lmforge.model.config import ModelConfig
    from lmforge.train.trainer import Trainer

# Display-only keys: changing them does not make a trained model stale.
DISPLAY_KEYS = {"tensorboard", "plot", "sample_tokens", "sample_prompt", "threads"}
OUTPUTS = ("checkpoints", "tensorboard", "model", "tokenizer", "metrics.jsonl",
           "loss_curves.png", "summary.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
STAGE_NAME = "pretrain"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _depends_on(cfg: Config) -> dict[str, Any]:
    return {"model": cfg.model.model_dump(mode="json"),
            "train": cfg.train.model_dump(mode="json", exclude=DISPLAY_KEYS)}


def clear_outputs(out_dir: Path) -> None:
    """A fresh (not resumed) run starts from none of lmforge's outputs; a user's files stay."""
    remove_outputs(out_dir, OUTPUTS, STAGE_NAME)


def copy_tokenizer(tokenizer_dir: Path, out_dir: Path) -> None:
    target = out_dir / "tokenizer"
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, target / name)


def pretrainer(cfg: Config, out_dir: Path, tokens_dir: Path,
               tokenizer_dir: Path | None = None) -> Trainer:
    """The Trainer of the pretrain stage: the LM objective on the token shards, from random
    weights or (model.init_from) from a base model's, whose architecture then replaces the
    model section's sizes (continued pretraining)."""
    from lmforge.train.objectives.lm import LMObjective
    from lmforge.train.trainer import Trainer

    objective = LMObjective(tokens_dir, cfg.train, tokenizer_dir)
    record = cfg.model_dump(mode="json")
    if not cfg.model.init_from:
        return Trainer(cfg.train, cfg.model.with_vocab(objective.vocab_size), objective,
                       out_dir, name=STAGE_NAME, record=record)
    model_cfg, init_state = base_weights(cfg.model.init_from, objective.vocab_size)
    return Trainer(cfg.train, model_cfg, objective, out_dir, name=STAGE_NAME, record=record,
                   init_state=init_state)


def base_weights(init_from: str, token_vocab: int) -> tuple[ModelConfig, dict[str, Any]]:
    """The base's config and weights, refused when the token shards use ids past its
    embedding (they were encoded with another tokenizer)."""
    from lmforge.model.files import load_model

    model, loaded_from = load_model(init_from)
    if token_vocab > model.cfg.vocab:
        raise UserError(f"the token shards use a {token_vocab:,}-token vocabulary but "
                        f"{init_from} embeds {model.cfg.vocab:,}; re-run the tokenizer stage so "
                        "it adopts the base's tokenizer")
    console.print(f"pretrain: continuing from {loaded_from} (its architecture: "
                  f"{model.cfg.n_layers} layers, dim {model.cfg.dim}, vocab {model.cfg.vocab:,})")
    return model.cfg, model.state_dict()


def run_pretrain(ctx: StageContext) -> dict[str, Any]:
    from lmforge.train import checkpoint, distributed
    from lmforge.train.artifacts import write_artifacts

    resume_from: Path | None = ctx.options.get("resume_from")
    resume_state = None
    if ctx.resume and resume_from is None:
        found = checkpoint.latest_readable(ctx.out_dir / "checkpoints",
                                           lambda message: console.print(f"pretrain: {message}"))
        if found is None:
            console.print("pretrain: --resume found no checkpoint; starting from scratch")
        else:
            resume_from, resume_state = found
    tokenizer_dir = ctx.inputs["tokenizer"]
    # Under torchrun only rank 0 clears and fills the stage directory: the other ranks wait
    # for it in the process group's rendezvous (the Trainer's init), so none deletes a file
    # another rank is deleting or has just written.
    if distributed.detect().is_main:
        if resume_from is None:
            clear_outputs(ctx.out_dir)
        copy_tokenizer(tokenizer_dir, ctx.out_dir)
    trainer = pretrainer(ctx.cfg, ctx.out_dir, ctx.inputs["tokenize"], tokenizer_dir)
    try:
        summary = trainer.fit(resume_from, resume_state)
        sample = (ctx.cfg.train.sample_prompt, trainer.objective.eos_id)
        write_artifacts(trainer, summary, sample)
    except OSError as e:  # metrics, TensorBoard, the model dir: a full disk is one line too
        if e.errno not in DISK_FULL:
            raise
        path = Path(e.filename) if e.filename else ctx.out_dir
        raise write_failed(path, None, e) from None
    return summary


STAGE = Stage(
    name=STAGE_NAME,
    inputs=("tokenizer", "tokenize"),
    sections=("model", "train"),
    run=run_pretrain,
    describe="train the Llama-style model on the token shards, from scratch or from "
    "model.init_from (resumable, spike-safe)",
    excluded=("checkpoints", "tensorboard"),
    config_fn=_depends_on,
)
