"""The end of a run: last eval and checkpoint, test eval, model dir, plot, summary, sample."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from lmforge.io import atomic_write_json
from lmforge.model.files import save_model_dir
from lmforge.train import checkpoint
from lmforge.train.monitor import console, plot_losses, read_metrics

if TYPE_CHECKING:
    from lmforge.train.trainer import Trainer


def finish(t: Trainer, stopped: str | None, baseline: float | None) -> dict[str, Any]:
    """Everything after the last step; returns the stage metrics for the manifest."""
    if stopped is not None:
        t.log({"step": t.step, "event": "early_stop", "reason": stopped})
        t.say(f"stopped at step {t.step}: {stopped}")
    if t.val_ds is not None and t.last_eval_step != t.step:
        t.run_eval()
    if t.last_ckpt_step != t.step:
        t.save_checkpoint()
    test = None
    if t.test_ds is not None and t.tcfg.test_eval:
        test = t.evaluate(t.test_ds, None)
        t.log({"step": t.step, **test.row("test")})
    state = checkpoint.model_state(t.model)
    metrics = _summary(t, stopped, baseline, test)
    if t.dist.is_main:
        save_model_dir(t.out_dir / "model", state, t.model_cfg)
        atomic_write_json(t.out_dir / "summary.json", metrics)
        if t.tcfg.plot:
            plot_losses(read_metrics(t.out_dir / "metrics.jsonl"), t.out_dir / "loss_curves.png",
                        baseline)
        _print_summary(metrics)
        if t.tcfg.sample_tokens and not (t.dist.enabled and t.tcfg.parallel == "fsdp"):
            _print_sample(t)
    return metrics


def _summary(t: Trainer, stopped: str | None, baseline: float | None, test: Any) -> dict:
    val = t.last_eval
    return {
        "steps": t.step,
        "tokens": t.tokens_seen,
        "params": t.model.num_params(),
        "device": t.rt.device.type,
        "precision": t.rt.precision,
        "world_size": t.dist.world_size,
        "val_loss": val.loss if val else None,
        "val_ppl": val.perplexity if val else None,
        "val_bpb": val.bits_per_byte if val else None,
        "best_val_loss": t.best_val if val else None,
        "test_loss": test.loss if test else None,
        "test_bpb": test.bits_per_byte if test else None,
        "unigram_val_loss": baseline,
        "skipped_steps": t.guard.skipped,
        "rollbacks": t.guard.rollbacks,
        "stopped_early": stopped,
        "elapsed_s": round(time.time() - t.started, 3),
    }


def _print_summary(m: dict[str, Any]) -> None:
    parts = [f"{m['steps']} steps", f"{m['tokens']:,} tokens"]
    if m["val_loss"] is not None:
        parts.append(f"val loss {m['val_loss']:.4f}")
    if m["val_bpb"] is not None:
        parts.append(f"{m['val_bpb']:.3f} bits/byte")
    if m["unigram_val_loss"] is not None:
        parts.append(f"unigram baseline {m['unigram_val_loss']:.4f}")
    if m["test_loss"] is not None:
        parts.append(f"test loss {m['test_loss']:.4f}")
    parts.append(f"{m['skipped_steps']} skipped, {m['rollbacks']} rollbacks")
    console.print("pretrain: " + ", ".join(parts))


def _print_sample(t: Trainer) -> None:
    from lmforge.model.generate import generate
    from lmforge.model.tokenizer import load_tokenizer

    tokenizer_dir = t.out_dir / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        return
    tok = load_tokenizer(tokenizer_dir)
    prompt = tok.encode(t.tcfg.sample_prompt) or [t.train_ds.eos_id]
    ids = generate(t.model, prompt, t.tcfg.sample_tokens, temperature=0.8, top_k=50,
                   seed=t.tcfg.seed, eos_id=None)
    t.model.train()
    console.rule("sample")
    print(t.tcfg.sample_prompt + tok.decode(ids), flush=True)
    console.rule()
