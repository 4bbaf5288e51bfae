"""Checkpoint files: atomic writes, keep-last-K rotation, best model, and loading.

    RUN_DIR/pretrain/checkpoints/step_00000500.pt   full training state (resume, rollback)
    RUN_DIR/pretrain/checkpoints/best.pt            model weights of the best val loss

A step checkpoint holds the model, optimizer(s), GradScaler, RNG states of every rank,
loader position, step, tokens seen, stability and monitor state, and the config. Each file
is written to a temp name, fsynced and renamed, so a kill -9 leaves either the old file or
the new one, never half of one; a full disk is a one-line error and leaves the earlier
files intact. Resuming passes over step checkpoints that do not load whole (a disk fault,
a copy cut short) to the newest one that does. Everything in a checkpoint loads with
torch.load(weights_only=True).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.errors import UserError
from lmforge.io import atomic_path, write_failed

FORMAT_VERSION = 1
# What a step checkpoint must hold to resume from it (Trainer.save_checkpoint writes these).
STEP_KEYS = ("step", "tokens_seen", "model", "optimizers", "rng", "loader", "stability",
             "best_val", "evals_since_best", "metrics_bytes", "model_config")
STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
BEST = "best.pt"


def step_path(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step_{step:08d}.pt"


def list_steps(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every step checkpoint, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for path in ckpt_dir.iterdir():
        match = STEP_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest(ckpt_dir: Path) -> Path | None:
    steps = list_steps(ckpt_dir)
    return steps[-1][1] if steps else None


def latest_readable(ckpt_dir: Path, say: Callable[[str], None]
                    ) -> tuple[Path, dict[str, Any]] | None:
    """The newest step checkpoint that loads whole, with its state; each newer one that does
    not (truncated, corrupt, missing keys) is reported through `say` and passed over. None
    when there are no step checkpoints; a UserError when none of them is readable."""
    steps = list_steps(ckpt_dir)
    for _, path in reversed(steps):
        try:
            return path, load(path, STEP_KEYS)
        except UserError as e:
            say(f"skipped {path.name}, it is not readable: {e}")
    if steps:
        raise UserError(f"none of the {len(steps)} step checkpoints in {ckpt_dir} is readable; "
                        "run without --resume to start over")
    return None


def state_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint state: what its file needs, about."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(state_bytes(v) for v in obj)
    return 0


def save(path: Path, state: dict[str, Any]) -> None:
    """Write atomically; a full disk (or any failed write) is a UserError naming the path, the
    space needed and the space free, and leaves the earlier checkpoints as they were."""
    try:
        with atomic_path(path) as tmp:
            torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    except (OSError, RuntimeError) as e:  # torch's zip writer raises RuntimeError
        raise write_failed(path, state_bytes(state), e) from None


def prune(ckpt_dir: Path, keep_last: int) -> None:
    """Delete step checkpoints beyond the newest `keep_last` (best.pt is separate)."""
    for _, path in list_steps(ckpt_dir)[:-keep_last]:
        path.unlink(missing_ok=True)


def drop_after(ckpt_dir: Path, step: int) -> list[Path]:
    """Delete step checkpoints newer than `step`: after resuming from an older checkpoint they
    belong to an abandoned run, and a rollback must never jump forward into them."""
    dropped = [path for s, path in list_steps(ckpt_dir) if s > step]
    for path in dropped:
        path.unlink(missing_ok=True)
    return dropped


def load(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A checkpoint written by `save` holding the `required` keys, or a UserError naming
    what is wrong with the file."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass a .pt file from a checkpoints/ dir")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                        "pick another checkpoint") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} is not an lmforge checkpoint (format {FORMAT_VERSION})")
    missing = [key for key in required if key not in state]
    if missing:
        raise UserError(f"checkpoint {path} lacks {', '.join(missing)}; pick another checkpoint")
    return state


def resolve(target: str | Path) -> Path:
    """A checkpoint file from a file, a checkpoints/ dir, a pretrain dir or a run dir:
    the latest step checkpoint there, else best.pt."""
    path = Path(target)
    if path.is_file():
        return path
    for ckpt_dir in (path, path / "checkpoints", path / "pretrain" / "checkpoints"):
        found = latest(ckpt_dir)
        if found is not None:
            return found
        if (ckpt_dir / BEST).is_file():
            return ckpt_dir / BEST
    raise UserError(f"no checkpoint found at {path}; pass a .pt file or a run directory "
                    "that has pretrain/checkpoints/")


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on CPU; a collective call under FSDP2/DDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def optimizer_states(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> list[dict]:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return [get_optimizer_state_dict(model, opt, options=options) for opt in optimizers]


def load_optimizer_states(model: nn.Module, optimizers: list[torch.optim.Optimizer],
                          states: list[dict]) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    if len(states) != len(optimizers):
        raise UserError(f"checkpoint has {len(states)} optimizer states, the config builds "
                        f"{len(optimizers)}; resume with the same train.optimizer")
    options = StateDictOptions(full_state_dict=True)
    for opt, state in zip(optimizers, states, strict=True):
        set_optimizer_state_dict(model, opt, state, options=options)
