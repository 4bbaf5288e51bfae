"""What a training stage leaves for a person and for the stages after it, from a trained
Trainer: the model directory, summary.json, the loss plot and a sample of text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.io import atomic_write_json
from lmforge.model.files import save_model_dir
from lmforge.train import checkpoint
from lmforge.train.monitor import console, plot_losses, read_metrics
from lmforge.train.trainer import Trainer


def write_artifacts(t: Trainer, summary: dict[str, Any],
                    sample: tuple[str, int] | None = None) -> None:
    """model/, summary.json, loss_curves.png (train.plot) and a printed sample of
    train.sample_tokens (`sample`: the prompt text, and the id to start from when it encodes
    to nothing). A collective call under FSDP."""
    state = checkpoint.model_state(t.model)
    if not t.dist.is_main:
        return
    save_model_dir(t.out_dir / "model", state, t.model_cfg)
    atomic_write_json(t.out_dir / "summary.json", summary)
    if t.tcfg.plot:
        plot_losses(read_metrics(t.out_dir / "metrics.jsonl"), t.out_dir / "loss_curves.png",
                    summary.get("unigram_val_loss"))
    fsdp = t.dist.enabled and t.tcfg.parallel == "fsdp"
    if t.tcfg.sample_tokens and not fsdp and sample is not None:
        print_sample(t, t.out_dir / "tokenizer", *sample)


def print_sample(t: Trainer, tokenizer_dir: Path, prompt_text: str, start_id: int) -> None:
    from lmforge.model.generate import generate
    from lmforge.model.tokenizer import load_tokenizer

    if not (tokenizer_dir / "tokenizer.json").is_file():
        return
    tok = load_tokenizer(tokenizer_dir)
    prompt = tok.encode(prompt_text) or [start_id]
    ids = generate(t.model, prompt, t.tcfg.sample_tokens, temperature=0.8, top_k=50,
                   seed=t.tcfg.seed, eos_id=None)
    t.model.train()
    console.rule("sample")
    print(prompt_text + tok.decode(ids), flush=True)
    console.rule()
