"""The finetune stage: a base model and conversations in, a fine-tuned model or adapter out.

    RUN/finetune/metrics.jsonl      train and eval rows (the pretrain schema, plus val_stop_rate)
    RUN/finetune/checkpoints/       step_*.pt and best.pt (exact resume)
    RUN/finetune/adapter/           lora, qlora: adapter_config.json + adapter_model.safetensors
    RUN/finetune/model/             full: the fine-tuned weights (model dir + HF config.json)
    RUN/finetune/tokenizer/         the base's tokenizer, so the output is usable alone
    RUN/finetune/quarantine.jsonl   every example not trained on, with file:line and reason
    RUN/finetune/replies.jsonl      greedy replies to held-out prompts at the end
    RUN/finetune/summary.json       final numbers

The base is the run's pretrained model in `lmforge run` (which continued from `model.init_from`
when that is set); `lmforge finetune` alone fine-tunes `model.init_from` (an HF directory,
`hf:ORG/NAME`, a run, a model dir or a checkpoint) directly.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import UserError
from lmforge.finetune.examples import Example
from lmforge.finetune.render import Encoded, Untrainable, encode_conversation
from lmforge.io import atomic_write_text
from lmforge.pipeline import Stage, StageContext
from lmforge.progress import console
from lmforge.sources import local_path
from lmforge.tokenizer.chat_tokenizer import ChatTokenizer

STAGE_NAME = "finetune"
DISPLAY_KEYS = {"tensorboard", "plot", "sample_tokens", "threads", "enabled"}


def base_path(cfg: Config, inputs: dict[str, Path]) -> Path:
    """The run's pretrained model when the run has one (in `lmforge run` it continued from
    model.init_from, if that is set), else model.init_from (`lmforge finetune` alone)."""
    if "pretrain" in inputs:
        return inputs["pretrain"] / "model"
    if not cfg.model.init_from:
        raise UserError("finetune needs a base model: set model.init_from to an HF model "
                        "directory, a run or a checkpoint")
    return local_path(cfg.model.init_from)


def prepare_examples(examples: list[Example], tok: ChatTokenizer, block: int,
                     end_of_turn: int | None) -> tuple[list[tuple[Example, Encoded]],
                                                       list[dict[str, Any]]]:
    """Encoded examples, and a quarantine row for each that cannot be trained on."""
    kept, rejected = [], []
    for example in examples:
        try:
            encoded = encode_conversation(tok, example.messages, end_of_turn)
        except Untrainable as e:
            rejected.append(_quarantine_row(example, e.reason, e.detail))
            continue
        if len(encoded.ids) - 1 > block:
            rejected.append(_quarantine_row(example, "too_long", f"{len(encoded.ids)} tokens, "
                                            f"more than finetune.block_size={block} + 1"))
            continue
        kept.append((example, encoded))
    return kept, rejected


def _quarantine_row(example: Example, reason: str, detail: str) -> dict[str, Any]:
    return {"id": example.id, "location": example.location, "step": "encode",
            "reason": reason, "detail": detail}


def split_examples(kept: list[tuple[Example, Encoded]], fraction: float, seed: int
                   ) -> tuple[list[Encoded], list[Encoded]]:
    """(train, val) by a seeded shuffle; val gets `fraction` of them (at least one when there
    are two or more examples and the fraction is not zero)."""
    order = list(range(len(kept)))
    random.Random(seed).shuffle(order)
    n_val = 0 if fraction == 0 or len(kept) < 2 else max(1, round(len(kept) * fraction))
    val = [kept[i][1] for i in sorted(order[:n_val])]
    train = [kept[i][1] for i in sorted(order[n_val:])]
    if not train:
        raise UserError("no example is left to train on (see quarantine.jsonl); fix the data")
    return train, val


def with_prefix(examples: list[Encoded], prefix: list[int]) -> list[Encoded]:
    """The examples with `prefix` (prompt tuning's virtual tokens, no loss) in front."""
    return [Encoded(prefix + e.ids, [False] * len(prefix) + e.trained) for e in examples]


def reply_prompts(val: list[Encoded], count: int) -> list[list[int]]:
    """The first assistant turn's prompt of the first `count` held-out examples."""
    return [e.ids[:e.trained.index(True)] for e in val[:count]]


def run_finetune(ctx: StageContext) -> dict[str, Any]:
    from lmforge.finetune.train import finetune

    return finetune(ctx.cfg, ctx.out_dir, base_path(ctx.cfg, ctx.inputs), ctx.resume)


def write_quarantine(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    import json

    atomic_write_text(out_dir / "quarantine.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if rows:
        reasons: dict[str, int] = {}
        for row in rows:
            reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
        shown = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
        console.print(f"finetune: {len(rows)} examples quarantined ({shown}); "
                      f"see {out_dir / 'quarantine.jsonl'}")


def _depends_on(cfg: Config) -> dict[str, Any]:
    return {"init_from": cfg.model.init_from,
            "finetune": cfg.finetune.model_dump(mode="json", exclude=DISPLAY_KEYS)}


STAGE = Stage(
    name=STAGE_NAME,
    inputs=("tokenizer", "pretrain"),
    sections=("finetune",),
    run=run_finetune,
    describe="fine-tune the model on conversations (full, LoRA, QLoRA; resumable)",
    excluded=("checkpoints", "tensorboard"),
    config_fn=_depends_on,
    enabled_fn=lambda cfg: cfg.finetune.enabled,
    switch="finetune.enabled",
)
