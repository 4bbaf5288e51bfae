"""One fine-tuning run: load the base, encode the examples, train, write the outputs."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import UserError
from lmforge.finetune import stage
from lmforge.finetune.examples import read_examples
from lmforge.io import atomic_write_json, atomic_write_text, write_failed
from lmforge.model.files import load_model, save_model_dir
from lmforge.model.lora import LoraSpec, add_lora, quantize_base, resolve_targets
from lmforge.model.prompt_tuning import add_prompt_tuning, initial_prompt
from lmforge.progress import console
from lmforge.sources import find_tokenizer
from lmforge.tokenizer.chat_tokenizer import ChatTokenizer

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def lora_spec(cfg: Config) -> LoraSpec:
    lora = cfg.finetune.lora
    return LoraSpec(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                    targets=resolve_targets(lora.targets), rslora=lora.rslora)


def adapter_hook(cfg: Config, tok: ChatTokenizer):
    """The change the method makes to the built model (None for full fine-tuning)."""
    method = cfg.finetune.method
    if method == "full":
        return None
    if method == "prompt_tuning":
        pt = cfg.finetune.prompt_tuning
        init_ids = tok.encode(pt.init_text) if pt.init_text else None

        def prefix(model) -> None:
            embed = model.model.embed_tokens
            add_prompt_tuning(model, initial_prompt(embed, pt.virtual_tokens, init_ids,
                                                    cfg.finetune.seed))

        return prefix
    spec = lora_spec(cfg)

    def adapt(model) -> None:
        if method == "qlora":
            quantize_base(model, cfg.finetune.qlora_bits, spec.targets)
        add_lora(model, spec)

    return adapt


def finetune(cfg: Config, out_dir: Path, base: Path, resume: bool) -> dict[str, Any]:
    from lmforge.train import checkpoint
    from lmforge.train.objectives.sft import SFTObjective
    from lmforge.train.trainer import Trainer

    fcfg = cfg.finetune
    model, loaded_from = load_model(base)
    tokenizer_dir = find_tokenizer(loaded_from)
    tok = ChatTokenizer(tokenizer_dir)
    if not tok.chat_template:
        raise UserError(f"{tokenizer_dir} has no chat template; fine-tuning renders "
                        "conversations with the template the server uses")
    block = fcfg.block_size or model.cfg.max_seq_len
    if block > model.cfg.max_seq_len:
        raise UserError(f"finetune.block_size {block} exceeds the base's max_seq_len "
                        f"{model.cfg.max_seq_len}; lower it")
    tcfg = fcfg.model_copy(update={"block_size": block})
    end_of_turn = tok.end_of_turn_id
    examples, drops = read_examples(fcfg.data, fcfg.format)
    virtual = fcfg.prompt_tuning.virtual_tokens if fcfg.method == "prompt_tuning" else 0
    if virtual >= block:
        raise UserError(f"finetune.prompt_tuning.virtual_tokens {virtual} leaves no room in "
                        f"blocks of {block} tokens; use fewer")
    kept, rejected = stage.prepare_examples(examples, tok, block - virtual, end_of_turn)
    rejected = [{"id": d.id, "location": d.location, "step": "read", "reason": d.reason,
                 "detail": d.detail} for d in drops] + rejected
    train, val = stage.split_examples(kept, fcfg.val_fraction, fcfg.seed)
    prompts = stage.reply_prompts(val, fcfg.eval_prompts)  # generate() adds any prefix
    if virtual:  # each example starts with the virtual tokens, which carry no loss
        prefix = list(range(model.cfg.vocab, model.cfg.vocab + virtual))
        train, val = (stage.with_prefix(train, prefix), stage.with_prefix(val, prefix))
    objective = SFTObjective(train, val, prompts, tcfg, model.cfg.vocab, end_of_turn)

    resume_from = resume_state = None
    if resume:
        found = checkpoint.latest_readable(out_dir / "checkpoints",
                                           lambda m: console.print(f"finetune: {m}"))
        if found is None:
            console.print("finetune: --resume found no checkpoint; starting from scratch")
        else:
            resume_from, resume_state = found
    stage.write_quarantine(out_dir, rejected)
    console.print(f"finetune: {fcfg.method} from {loaded_from}; {len(train)} train and "
                  f"{len(val)} val examples of {len(examples) + len(drops)} records")
    trainer = Trainer(tcfg, model.cfg, objective, out_dir, name=stage.STAGE_NAME,
                      record=cfg.model_dump(mode="json"), init_state=model.state_dict(),
                      adapt=adapter_hook(cfg, tok))
    del model
    try:
        summary = trainer.fit(resume_from, resume_state)
        write_outputs(trainer, cfg, summary, tokenizer_dir, str(base.resolve()), tok)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise write_failed(Path(e.filename) if e.filename else out_dir, None, e) from None
    return summary


def write_outputs(trainer: Any, cfg: Config, summary: dict[str, Any], tokenizer_dir: Path,
                  base: str, tok: ChatTokenizer) -> None:
    from lmforge.model.peft import save_lora_adapter, save_prompt_adapter
    from lmforge.train import checkpoint
    from lmforge.train.monitor import plot_losses, read_metrics
    from lmforge.train.stage import copy_tokenizer

    out = trainer.out_dir
    if not trainer.dist.is_main:
        return
    copy_tokenizer(tokenizer_dir, out)
    if cfg.finetune.method == "full":
        save_model_dir(out / "model", checkpoint.model_state(trainer.model), trainer.model_cfg)
    elif cfg.finetune.method == "prompt_tuning":
        save_prompt_adapter(out / "adapter", trainer.model, base)
    else:
        save_lora_adapter(out / "adapter", trainer.model, lora_spec(cfg), base)
    replies = write_replies(trainer, tok, out / "replies.jsonl")
    summary = {**summary, "method": cfg.finetune.method, "base": base,
               "stop_rate": sum(r["stopped"] for r in replies) / max(len(replies), 1)}
    atomic_write_json(out / "summary.json", summary)
    if cfg.finetune.plot:
        plot_losses(read_metrics(out / "metrics.jsonl"), out / "loss_curves.png", None)


def write_replies(trainer: Any, tok: ChatTokenizer, path: Path) -> list[dict[str, Any]]:
    """Greedy replies to the held-out prompts, printed and written as JSONL."""
    objective = trainer.objective
    if not objective.prompts:
        atomic_write_text(path, "")
        return []
    replies = objective.replies(trainer.model, trainer.rt)
    rows = []
    for prompt, reply in zip(objective.prompts, replies, strict=True):
        stopped = bool(reply) and reply[-1] == objective.end_of_turn
        rows.append({"prompt": tok.codec.tokenizer.decode(prompt, skip_special_tokens=False),
                     "reply": tok.decode(reply),
                     "stopped": stopped, "tokens": len(reply)})
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    console.rule("held-out replies (greedy)")
    for row in rows[:3]:
        console.print(f"[bold]prompt[/]: {row['prompt'][-200:]!r}\n[bold]reply[/]: "
                      f"{row['reply'][:300]!r}{'' if row['stopped'] else ' [no end-of-turn]'}")
    console.rule()
    return rows
