"""Exact resume: kill -9 or SIGTERM mid-run, `--resume`, and metrics.jsonl matches an
uninterrupted run bit for bit (every field but the wall-clock ones)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmforge.train.monitor import read_metrics
from test_train_support import make_run, write_config

CLOCK_FIELDS = {"elapsed_s", "tokens_per_s", "mfu", "peak_mem_mb"}
TRAIN = {"max_steps": 300, "ckpt_every": 10, "eval_every": 50, "optimizer": "muon",
         "loader": "packed", "doc_mask": True}
MODEL = {"dropout": 0.1}  # dropout draws from the torch RNG, which the checkpoint restores


def lmforge(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lmforge", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in CLOCK_FIELDS} for r in rows]


def wait_for_step(metrics: Path, proc: subprocess.Popen, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = read_metrics(metrics)
        if any(r.get("step", 0) >= step and "loss" in r for r in rows):
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before step {step}: {proc.stderr.read()}")
        time.sleep(0.005)
    pytest.fail(f"no step {step} within {timeout}s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """One uninterrupted run of the config every test interrupts."""
    root = tmp_path_factory.mktemp("resume")
    run = make_run(root)
    cfg = write_config(root / "cfg.yaml", run, model=MODEL, train=TRAIN)
    proc = lmforge("pretrain", "-c", str(cfg))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return run, read_metrics(run / "pretrain" / "metrics.jsonl")


def interrupted_copy(reference: tuple[Path, list[dict]], tmp_path: Path) -> tuple[Path, Path]:
    """A fresh run dir with the same tokens and config as the reference."""
    source, _ = reference
    run = tmp_path / "run"
    for stage in ("tokenizer", "tokenize"):
        (run / stage).mkdir(parents=True)
        for f in (source / stage).iterdir():
            (run / stage / f.name).write_bytes(f.read_bytes())
    cfg = write_config(tmp_path / "cfg.yaml", run, model=MODEL, train=TRAIN)
    return run, cfg


def test_kill_9_then_resume_is_bit_identical(reference: tuple[Path, list[dict]],
                                             tmp_path: Path) -> None:
    run, cfg = interrupted_copy(reference, tmp_path)
    metrics = run / "pretrain" / "metrics.jsonl"
    proc = lmforge("pretrain", "-c", str(cfg))
    wait_for_step(metrics, proc, 35)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "pretrain" / "manifest.json").exists()
    killed_at = max(r["step"] for r in read_metrics(metrics))
    assert killed_at < TRAIN["max_steps"]

    resumed = lmforge("pretrain", "-c", str(cfg), "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming from" in err
    assert deterministic(read_metrics(metrics)) == deterministic(reference[1])
    assert (run / "pretrain" / "manifest.json").exists()


def test_sigterm_saves_a_checkpoint_and_exits_0(reference: tuple[Path, list[dict]],
                                                tmp_path: Path) -> None:
    run, cfg = interrupted_copy(reference, tmp_path)
    metrics = run / "pretrain" / "metrics.jsonl"
    proc = lmforge("pretrain", "-c", str(cfg))
    wait_for_step(metrics, proc, 23)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    event = [r for r in read_metrics(metrics) if r.get("event") == "interrupted"]
    assert len(event) == 1
    step = event[0]["step"]
    assert (run / "pretrain" / "checkpoints" / f"step_{step:08d}.pt").is_file()
    assert not (run / "pretrain" / "manifest.json").exists()

    resumed = lmforge("pretrain", "-c", str(cfg), "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert deterministic(read_metrics(metrics)) == deterministic(reference[1])
    summary = json.loads((run / "pretrain" / "summary.json").read_text())
    assert summary["steps"] == TRAIN["max_steps"]
