"""The training loop: one `Trainer` per run, `Trainer.fit()` to train.

What is optimised is the `objective` (train/objectives/): it yields the batches, turns each
into a loss and scores the held-out splits; the trainer gets only its own `train:` section,
the model's config, and optionally weights to start from (`init_state`) and a change to
the built model (`adapt`, e.g. LoRA adapters that leave the base frozen).

Per optimizer step: set the LR from the schedule, run `grad_accum` micro-batches forward
and backward under autocast, clip, let the stability guard judge the step (apply, skip, or
roll back), then log, evaluate and checkpoint on their cadence. Everything that decides what
happens next (weights, optimizer, loader position, RNG, guard, best val) is in the
checkpoint, so a resumed run continues exactly where the saved one was. The end of a run
(the last eval and checkpoint, the test eval) is part of `fit`, which returns the summary.
"""

from __future__ import annotations

import contextlib
import math
import resource
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import UserError
from lmforge.model.config import ModelConfig, flops_per_token
from lmforge.model.llama import Transformer
from lmforge.train import checkpoint, distributed
from lmforge.train.clock import command_start_time
from lmforge.train.config import TrainConfig
from lmforge.train.mfu import peak_tflops
from lmforge.train.monitor import MetricsLog, ProgressBar, TensorBoard, console
from lmforge.train.objectives.base import EvalResult, Objective
from lmforge.train.optim import build_optimizers
from lmforge.train.parallelize import parallelize
from lmforge.train.runtime import Runtime, rng_state, seed_everything, set_rng_state
from lmforge.train.schedule import lr_factor
from lmforge.train.stability import StabilityGuard


class Interrupted(SystemExit):
    """SIGINT/SIGTERM arrived: a checkpoint was saved; exit 0 without a stage manifest, so the
    next `--resume` continues the stage instead of skipping it."""

    def __init__(self) -> None:
        super().__init__(0)


class Diverged(UserError):
    """Rollbacks did not help; the run stops with advice instead of burning compute."""


class Trainer:
    def __init__(self, tcfg: TrainConfig, model_cfg: ModelConfig, objective: Objective,
                 out_dir: Path, *, name: str = "pretrain", record: dict[str, Any] | None = None,
                 init_state: dict[str, torch.Tensor] | None = None,
                 adapt: Callable[[Transformer], None] | None = None) -> None:
        """`record`: the run's config, stored in every checkpoint for provenance."""
        self.tcfg, self.model_cfg, self.objective = tcfg, model_cfg, objective
        self.out_dir, self.name, self.record = out_dir, name, record or {}
        self.started = command_start_time()
        self.dist = distributed.detect()
        self.rt = Runtime.create(self.tcfg, self.dist.local_rank)
        distributed.init(self.dist, self.rt.device)
        self.ckpt_dir = out_dir / "checkpoints"
        self._check_settings(init_state is not None or adapt is not None)
        seed_everything(self.tcfg.seed)
        self.model = self._build_model(init_state, adapt)
        self.optim = build_optimizers(self.model, self.tcfg, self.rt.device)
        self.scaler = self.rt.grad_scaler()
        self.loader = objective.batches(self.dist.rank, self.dist.world_size)
        self.guard = StabilityGuard(self.tcfg.stability)
        self.step = 0
        self.tokens_seen = 0
        self.best_val = math.inf
        self.evals_since_best = 0
        self.last_eval: EvalResult | None = None
        self.last_eval_step = -1
        self.last_ckpt_step = -1
        self.stop_requested = False
        self.injected: set[tuple[str, int]] = set()
        self.metrics: MetricsLog | None = None
        self.flops_per_token = flops_per_token(self.model_cfg, self.tcfg.block_size)
        self.peak = None

    # -- setup ----------------------------------------------------------------------------

    def _check_settings(self, starts_from_weights: bool) -> None:
        tcfg, longest = self.tcfg, self.model_cfg.max_seq_len
        for key in ("block_size", "eval_block_size"):
            value = getattr(tcfg, key)
            if value is not None and value > longest:
                raise UserError(f"train.{key} {value} exceeds model.max_seq_len {longest}; "
                                "raise model.max_seq_len or lower it")
        fsdp = tcfg.parallel == "fsdp" and self.dist.enabled
        if tcfg.optimizer == "muon" and fsdp:
            raise UserError("train.optimizer muon needs whole matrices, FSDP shards them; "
                            "use parallel: ddp or optimizer: adamw")
        if starts_from_weights and fsdp:
            raise UserError(f"{self.name} from existing weights runs under DDP, not FSDP; "
                            "set train.parallel: ddp")

    def _build_model(self, init_state: dict[str, torch.Tensor] | None,
                     adapt: Callable[[Transformer], None] | None) -> Transformer:
        if self.tcfg.parallel == "fsdp" and self.dist.enabled:
            with torch.device("meta"):
                model = Transformer(self.model_cfg)
            self.train_model = parallelize(model, self.tcfg, self.dist, self.rt.device,
                                           self.rt.dtype)
            model.to_empty(device=self.rt.device)
            model.reset_parameters()
            return model
        with torch.device(self.rt.device):
            model = Transformer(self.model_cfg)
        if init_state is not None:
            model.load_state_dict(init_state)
        if adapt is not None:
            adapt(model)
        self.train_model = parallelize(model, self.tcfg, self.dist, self.rt.device, self.rt.dtype)
        return model

    def restore(self, path: Path, state: dict[str, Any] | None = None) -> int:
        """Load a step checkpoint (or its `state`, already read from `path`); returns the
        metrics.jsonl length it recorded."""
        state = state if state is not None else checkpoint.load(path, checkpoint.STEP_KEYS)
        if state["model_config"] != self.model_cfg.model_dump(mode="json"):
            raise UserError(f"{path} holds a different model than the config describes; "
                            "resume with the model section it was trained with")
        checkpoint.load_model_state(self.model, state["model"])
        checkpoint.load_optimizer_states(self.model, self.optim.optimizers, state["optimizers"])
        self.optim.reset_peaks(self.tcfg)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.tcfg.threads is None and state.get("threads") and self.rt.device.type == "cpu":
            # the same thread count as the saved run: reductions split the same way, bit for bit
            self.rt.threads = state["threads"]
            torch.set_num_threads(self.rt.threads)
        rngs = state["rng"]
        set_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world_size else rngs[0])
        self.loader.load_state_dict(state["loader"])
        self.guard.load_state_dict(state["stability"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.best_val, self.evals_since_best = state["best_val"], state["evals_since_best"]
        return state["metrics_bytes"]

    # -- the loop ---------------------------------------------------------------------------

    def fit(self, resume_from: Path | None = None,
            resume_state: dict[str, Any] | None = None) -> dict[str, Any]:
        resume_bytes = (self.restore(resume_from, resume_state) if resume_from is not None
                        else None)
        main = self.dist.is_main
        if resume_from is not None and main:
            for path in checkpoint.drop_after(self.ckpt_dir, self.step):
                self.say(f"removed {path.name}: newer than the checkpoint resumed from")
        if main:
            self.metrics = MetricsLog(self.out_dir / "metrics.jsonl", resume_bytes)
        self.tb = TensorBoard(self.out_dir / "tensorboard", main and self.tcfg.tensorboard,
                              self.step)
        self.peak = peak_tflops(self.rt.device, self.rt.precision, self.tcfg.peak_tflops)
        baseline = self.objective.baseline()
        self._announce(resume_from, baseline)
        previous = self._install_signal_handlers()
        try:
            with ProgressBar(self.tcfg.max_steps, self.step, main, self.name) as bar:
                stopped = self._loop(bar)
            return self._finish(stopped, baseline)
        finally:
            self._restore_signal_handlers(previous)
            self.loader.close()
            self.tb.close()
            if self.metrics is not None:
                self.metrics.close()

    def _loop(self, bar: ProgressBar) -> str | None:
        """Train until max_steps or an early stop; returns why it stopped early, if it did."""
        tcfg = self.tcfg
        tokens_per_step = tcfg.tokens_per_step * self.dist.world_size
        interval_start, interval_tokens = time.perf_counter(), 0
        while self.step < tcfg.max_steps:
            result = self.train_step()
            if result["verdict"] == "rollback":
                self._rollback(result)
                interval_start, interval_tokens = time.perf_counter(), 0
                continue
            self.step += 1
            self.tokens_seen += tokens_per_step
            interval_tokens += tokens_per_step
            if result["verdict"] == "skip":
                self.log({"step": self.step, "event": "skip", "reason": self.guard.reason,
                           "skipped_steps": self.guard.skipped})
            if self.step % tcfg.log_every == 0 or self.step == tcfg.max_steps:
                seconds = time.perf_counter() - interval_start
                rate = interval_tokens / max(seconds, 1e-9)
                self._log_train(result, rate)
                bar.update(self.step, result["loss"], rate)
                interval_start, interval_tokens = time.perf_counter(), 0
            paused = time.perf_counter()
            stop = self._after_step()
            if stop is not None:
                return stop
            interval_start += time.perf_counter() - paused  # evals and saves are not training
        return None

    def _after_step(self) -> str | None:
        """Eval, checkpoint and stop checks after a step; returns a reason to stop early."""
        tcfg = self.tcfg
        stop = None
        if self.has_val and tcfg.eval_every and self.step % tcfg.eval_every == 0:
            stop = self.run_eval()
        if tcfg.ckpt_every and self.step % tcfg.ckpt_every == 0:
            self.save_checkpoint()
        if distributed.broadcast_flag(self.stop_requested, self.rt.device):
            if not (tcfg.ckpt_every and self.step % tcfg.ckpt_every == 0):
                self.save_checkpoint()
            self.log({"step": self.step, "event": "interrupted", "checkpoint": True})
            self.say(f"interrupted at step {self.step}; checkpoint saved, continue with "
                      "--resume")
            raise Interrupted
        return stop

    def train_step(self) -> dict[str, Any]:
        """Forward/backward over grad_accum micro-batches, clip, judge, and maybe apply."""
        tcfg = self.tcfg
        lr = self.optim.set_lr(lr_factor(self.step, tcfg) * self.guard.lr_scale)
        total = torch.zeros((), device=self.rt.device)
        for micro in range(tcfg.grad_accum):
            batch = self.loader.next_batch().to(self.rt.device, non_blocking=True)
            with self._maybe_no_sync(micro < tcfg.grad_accum - 1), self.rt.autocast():
                loss = self.objective.loss(self.train_model, batch)
            loss = self._inject_faults(loss)
            scaled = loss / tcfg.grad_accum
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += loss.detach()
        loss = distributed.mean(total / tcfg.grad_accum)
        if self.scaler is not None:
            for opt in self.optim.optimizers:
                self.scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), tcfg.grad_clip or math.inf, foreach=True)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        loss_value, norm_value = torch.stack([loss.float(), grad_norm.float()]).tolist()
        overflow = self.scaler is not None and not math.isfinite(norm_value)
        verdict = self.guard.judge(loss_value, norm_value, overflow)
        if verdict == "ok":
            if self.scaler is not None:
                for opt in self.optim.optimizers:
                    self.scaler.step(opt)
            else:
                self.optim.step()
        if self.scaler is not None and verdict != "rollback":
            self.scaler.update()
        self.optim.zero_grad()
        return {"loss": loss_value, "grad_norm": norm_value, "lr": lr, "verdict": verdict}

    def _maybe_no_sync(self, skip_sync: bool) -> Any:
        """No gradient reduction on all but the last micro-batch (DDP no_sync, FSDP2 flag)."""
        model = self.train_model
        if hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(not skip_sync)
        elif skip_sync and hasattr(model, "no_sync"):
            return model.no_sync()
        return contextlib.nullcontext()

    def _inject_faults(self, loss: torch.Tensor) -> torch.Tensor:
        """train.debug: make this step's loss NaN or a spike, once per listed step."""
        debug, step = self.tcfg.debug, self.step + 1
        if step in debug.nan_steps and ("nan", step) not in self.injected:
            self.injected.add(("nan", step))
            return loss * float("nan")
        if step in debug.spike_steps and ("spike", step) not in self.injected:
            self.injected.add(("spike", step))
            return loss * debug.spike_scale
        return loss

    # -- stability ------------------------------------------------------------------------

    def _rollback(self, result: dict[str, Any]) -> None:
        failed_step, reason = self.step + 1, self.guard.reason
        if self.guard.rollbacks >= self.tcfg.stability.max_rollbacks:
            raise Diverged(
                f"training diverged at step {failed_step} ({reason}) after "
                f"{self.guard.rollbacks} rollbacks; lower train.lr or raise train.warmup_steps"
            )
        carried = self.guard.state_dict()
        try:
            found = checkpoint.latest_readable(self.ckpt_dir, self.say)
        except UserError:  # none readable: as if there were none
            found = None
        target = found[0] if found is not None else None
        if found is not None:
            self.restore(*found)
        else:
            self.step += 1  # nothing to go back to: drop this step's batch and go on
            self.tokens_seen += self.tcfg.tokens_per_step * self.dist.world_size
        self.guard.skipped = carried["skipped"] + (target is None)
        self.guard.rollbacks, self.guard.lr_scale = carried["rollbacks"], carried["lr_scale"]
        self.guard.on_rollback()
        self.log({"step": failed_step, "event": "rollback", "reason": reason,
                   "loss": result["loss"], "to_step": self.step,
                   "lr_scale": self.guard.lr_scale, "rollbacks": self.guard.rollbacks})
        self.say(f"step {failed_step}: {reason}; rolled back to step {self.step} with LR "
                  f"x{self.guard.lr_scale:g}")

    # -- logging, eval, checkpoints -----------------------------------------------------------

    def say(self, message: str) -> None:
        if self.dist.is_main:
            console.print(f"{self.name}: {message}")

    def log(self, row: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(row)

    def _log_train(self, result: dict[str, Any], tokens_per_s: float) -> None:
        row = {
            "step": self.step, "loss": result["loss"], "lr": result["lr"],
            "grad_norm": result["grad_norm"], "tokens": self.tokens_seen,
            "skipped_steps": self.guard.skipped, "tokens_per_s": round(tokens_per_s, 1),
            "elapsed_s": round(time.time() - self.started, 3),
        }
        if self.peak:
            per_device = tokens_per_s / self.dist.world_size
            row["mfu"] = round(per_device * self.flops_per_token / (self.peak * 1e12), 5)
        row["peak_mem_mb"] = round(self._peak_memory_mb(), 1)
        self.log(row)
        self.tb.log(row, "train")

    def _peak_memory_mb(self) -> float:
        gpu = self.rt.peak_memory_mb()
        return gpu if gpu is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def evaluate(self, split: str, num_batches: int | None) -> EvalResult:
        return self.objective.evaluate(self.train_model, split, self.rt, num_batches)

    def run_eval(self) -> str | None:
        result = self.evaluate("val", self.tcfg.eval_batches)
        self.last_eval, self.last_eval_step = result, self.step
        row = {"step": self.step, **result.row("val"),
               "elapsed_s": round(time.time() - self.started, 3)}
        self.log(row)
        self.tb.log(row, "eval")
        self.say(f"step {self.step}: val loss {result.loss:.4f} (ppl {result.perplexity:.2f}"
                  + (f", {result.bits_per_byte:.3f} bits/byte)" if result.bits_per_byte else ")"))
        if result.loss < self.best_val:
            self.best_val, self.evals_since_best = result.loss, 0
            self._save_best(result)
        else:
            self.evals_since_best += 1
        target, patience = self.tcfg.target_val_loss, self.tcfg.early_stop_patience
        if target is not None and result.loss <= target:
            return f"val loss {result.loss:.4f} reached train.target_val_loss {target}"
        if patience is not None and self.evals_since_best >= patience:
            return f"no better val loss in {patience} evals (train.early_stop_patience)"
        return None

    def _save_best(self, result: EvalResult) -> None:
        state = checkpoint.model_state(self.model)
        if self.dist.is_main:
            checkpoint.save(self.ckpt_dir / checkpoint.BEST, {
                "kind": "best", "step": self.step, "val_loss": result.loss, "model": state,
                "model_config": self.model_cfg.model_dump(mode="json"),
                "config": self.record,
            })

    def save_checkpoint(self) -> None:
        self.last_ckpt_step = self.step
        model_state = checkpoint.model_state(self.model)
        optim_states = checkpoint.optimizer_states(self.model, self.optim.optimizers)
        rngs = distributed.gather_objects(rng_state())
        if self.dist.is_main:
            checkpoint.save(checkpoint.step_path(self.ckpt_dir, self.step), {
                "kind": "step", "step": self.step, "tokens_seen": self.tokens_seen,
                "model": model_state, "optimizers": optim_states,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rngs, "loader": self.loader.state_dict(), "threads": self.rt.threads,
                "stability": self.guard.state_dict(), "best_val": self.best_val,
                "evals_since_best": self.evals_since_best,
                "metrics_bytes": self.metrics.size if self.metrics is not None else 0,
                "model_config": self.model_cfg.model_dump(mode="json"),
                "config": self.record,
            })
            checkpoint.prune(self.ckpt_dir, self.tcfg.keep_last)
        distributed.barrier()

    # -- start and end ----------------------------------------------------------------------

    def _announce(self, resume_from: Path | None, baseline: float | None) -> None:
        if not self.dist.is_main:
            return
        params = self.model.num_params()
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        where = (f"resuming from {resume_from} at step {self.step}" if resume_from
                 else "from scratch")
        described = self.objective.describe()
        self.say(
            f"{params / 1e6:.2f}M parameters"
            + (f" ({trainable / 1e6:.2f}M trained)" if trainable != params else "")
            + (f", {described}" if described else "")
            + f", {self.tcfg.max_steps} steps x "
            f"{self.tcfg.tokens_per_step * self.dist.world_size:,} tokens, "
            f"{self.rt.device.type} {self.rt.precision}"
            + (f" {self.rt.threads} thread{'s' * (self.rt.threads > 1)}"
               if self.rt.device.type == "cpu" else "") + f", {where}"
        )
        if baseline is not None:
            self.say(f"unigram baseline val loss {baseline:.4f} (a model must beat this)")
        if resume_from is None:
            self.log({"step": 0, "event": "start", "objective": self.objective.name,
                      "params": params, "trainable_params": trainable,
                      "unigram_val_loss": baseline, "device": self.rt.device.type,
                      "precision": self.rt.precision, "threads": self.rt.threads,
                      "world_size": self.dist.world_size})

    def _finish(self, stopped: str | None, baseline: float | None) -> dict[str, Any]:
        """The last eval and checkpoint, the test eval; returns the run's summary."""
        if stopped is not None:
            self.log({"step": self.step, "event": "early_stop", "reason": stopped})
            self.say(f"stopped at step {self.step}: {stopped}")
        if self.has_val and self.last_eval_step != self.step:
            self.run_eval()
        if self.last_ckpt_step != self.step:
            self.save_checkpoint()
        test = None
        if self.objective.has_split("test") and self.tcfg.test_eval:
            test = self.evaluate("test", None)
            self.log({"step": self.step, **test.row("test")})
        val = self.last_eval
        summary = {
            "steps": self.step, "tokens": self.tokens_seen, "params": self.model.num_params(),
            "device": self.rt.device.type, "precision": self.rt.precision,
            "world_size": self.dist.world_size,
            "val_loss": val.loss if val else None, "val_ppl": val.perplexity if val else None,
            "val_bpb": val.bits_per_byte if val else None,
            "best_val_loss": self.best_val if val else None,
            "test_loss": test.loss if test else None,
            "test_bpb": test.bits_per_byte if test else None,
            "unigram_val_loss": baseline, "skipped_steps": self.guard.skipped,
            "rollbacks": self.guard.rollbacks, "stopped_early": stopped,
            "elapsed_s": round(time.time() - self.started, 3),
        }
        self._print_summary(summary)
        return summary

    def _print_summary(self, m: dict[str, Any]) -> None:
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
        self.say(", ".join(parts))

    @property
    def has_val(self) -> bool:
        return self.objective.has_split("val")

    def _install_signal_handlers(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}

        def request_stop(signum: int, frame: Any) -> None:
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_requested = True

        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, request_stop)
        except ValueError:  # not the main thread: signals stay with the caller
            pass
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
