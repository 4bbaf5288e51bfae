"""Training faults (issue 10 item 11): a full disk while writing a checkpoint or the model is
a one-line error naming the path and the space, earlier checkpoints intact; `--resume` over a
corrupt latest checkpoint falls back to the newest readable one and says which it skipped."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.errors import UserError
from lmforge.train import checkpoint
from lmforge.train.monitor import read_metrics
from test_train_support import make_run, write_config

CLOCK_FIELDS = {"elapsed_s", "tokens_per_s", "mfu", "peak_mem_mb"}


def lmforge(*args: str, file_limit: int | None = None) -> subprocess.CompletedProcess:
    """Run the CLI; `file_limit` caps the size of every file it writes (RLIMIT_FSIZE), as a
    disk that fills up would: a write past it fails with EFBIG."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lmforge", *args], env=env, text=True,
                          capture_output=True, timeout=300,
                          preexec_fn=limit if file_limit else None)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A run of 30 steps with step checkpoints at 10, 20 and 30."""
    root = tmp_path_factory.mktemp("faults")
    run = make_run(root)
    cfg = write_config(root / "cfg.yaml", run, train={"keep_last": 3})
    result = lmforge("pretrain", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    return run, cfg


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_older_ones(tmp_path):
    run = make_run(tmp_path)
    cfg = write_config(tmp_path / "cfg.yaml", run, train={"max_steps": 30})
    ckpts = run / "pretrain" / "checkpoints"
    first = lmforge("pretrain", "-c", str(cfg), "--train.max_steps=10")
    assert first.returncode == 0, first.stderr
    size = checkpoint.step_path(ckpts, 10).stat().st_size
    before = checkpoint.step_path(ckpts, 10).read_bytes()
    # the next checkpoint is bigger than the limit (it is the same size: shave a little off)
    result = lmforge("pretrain", "-c", str(cfg), "--resume", file_limit=size - 1000)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("lmforge: error: cannot write "), result.stderr
    assert "step_00000020.pt" in lines[-1] and "MB free" in lines[-1]
    assert "needs about" in lines[-1] and "Traceback" not in result.stderr
    assert checkpoint.step_path(ckpts, 10).read_bytes() == before  # intact
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "step_00000010.pt"]
    assert not (run / "pretrain" / "manifest.json").exists()
    again = lmforge("pretrain", "-c", str(cfg), "--resume")  # space is back: it goes on
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr and "step_00000010.pt" in again.stderr


def test_a_failing_model_write_is_one_line_too(tmp_path, monkeypatch):
    from lmforge.model import files

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "save_file", full_disk)
    with pytest.raises(UserError, match=r"cannot write .*model\.safetensors \(No space left "
                                        r"on device\): it needs about .* MB free"):
        files.save_safetensors(tmp_path / "model.safetensors", {"w": torch.zeros(4)})
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random":
        path.write_bytes(os.urandom(len(data)))
    elif how == "missing-keys":
        state = torch.load(path, weights_only=True)
        del state["optimizers"], state["loader"]
        torch.save(state, path)
    elif how == "not-a-checkpoint":
        torch.save({"hello": torch.zeros(3)}, path)


@pytest.mark.parametrize("how", ["truncated", "empty", "random", "missing-keys",
                                 "not-a-checkpoint"])
def test_resume_skips_a_corrupt_latest_checkpoint(finished, tmp_path, how):
    run, _ = finished
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for step in (10, 20, 30):
        src = checkpoint.step_path(run / "pretrain" / "checkpoints", step)
        checkpoint.step_path(ckpts, step).write_bytes(src.read_bytes())
    corrupt(checkpoint.step_path(ckpts, 30), how)
    said: list[str] = []
    path, state = checkpoint.latest_readable(ckpts, said.append)
    assert path == checkpoint.step_path(ckpts, 20) and state["step"] == 20
    assert len(said) == 1 and "step_00000030.pt" in said[0]
    corrupt(checkpoint.step_path(ckpts, 20), "truncated")
    corrupt(checkpoint.step_path(ckpts, 10), "empty")
    with pytest.raises(UserError, match=r"none of the 3 step checkpoints .* run without --resume"):
        checkpoint.latest_readable(ckpts, said.append)


def test_resume_over_a_corrupt_checkpoint_reaches_the_uninterrupted_result(finished, tmp_path):
    run, _ = finished
    reference = read_metrics(run / "pretrain" / "metrics.jsonl")
    copy = tmp_path / "run"
    for stage in ("tokenizer", "tokenize"):
        (copy / stage).mkdir(parents=True)
        for f in (run / stage).iterdir():
            (copy / stage / f.name).write_bytes(f.read_bytes())
    (copy / "pretrain").mkdir()
    for f in (run / "pretrain").rglob("*"):  # the finished run, as if killed after step 30
        target = copy / "pretrain" / f.relative_to(run / "pretrain")
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.write_bytes(f.read_bytes())
    (copy / "pretrain" / "manifest.json").unlink()
    cfg = write_config(tmp_path / "cfg.yaml", copy, train={"keep_last": 3})
    ckpts = copy / "pretrain" / "checkpoints"
    corrupt(checkpoint.step_path(ckpts, 30), "random")
    corrupt(checkpoint.step_path(ckpts, 20), "truncated")
    result = lmforge("pretrain", "-c", str(cfg), "--resume")
    assert result.returncode == 0, result.stderr
    assert "skipped step_00000030.pt, it is not readable" in result.stderr
    assert "skipped step_00000020.pt, it is not readable" in result.stderr
    assert "step_00000010.pt at step 10" in result.stderr

    def train_rows(rows):
        return [{k: v for k, v in r.items() if k not in CLOCK_FIELDS} for r in rows
                if "loss" in r and r["step"] > 10]

    assert train_rows(read_metrics(copy / "pretrain" / "metrics.jsonl")) == \
        train_rows(reference)
