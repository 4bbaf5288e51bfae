"""Two CPU processes under torchrun (gloo): DDP matches one process on the same global
batch; FSDP2 trains and its checkpoint loads in a single process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.model.files import load_model
from lmforge.train.monitor import read_metrics
from test_train_support import make_run, write_config

TRAIN = {"max_steps": 6, "eval_every": 3, "ckpt_every": 3, "warmup_steps": 2}


def torchrun(cfg: Path, *overrides: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "lmforge", "pretrain", "-c", str(cfg), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def losses(run: Path) -> list[float]:
    rows = read_metrics(run / "pretrain" / "metrics.jsonl")
    return [r["loss"] for r in rows if "loss" in r and "event" not in r]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("dist"))


def test_ddp_equals_one_process_on_the_same_global_batch(run_dir: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "ddp.yaml", run_dir, train={**TRAIN, "batch_size": 4})
    torchrun(cfg, "--train.parallel=ddp")
    ddp = losses(run_dir)
    single = write_config(tmp_path / "one.yaml", run_dir, train={**TRAIN, "batch_size": 8})
    assert main(["pretrain", "-c", str(single)]) == 0
    one = losses(run_dir)
    assert len(ddp) == len(one) == TRAIN["max_steps"]
    assert ddp == pytest.approx(one, rel=1e-4)


def test_fsdp_trains_and_saves_a_full_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "fsdp.yaml", run_dir, train={**TRAIN, "batch_size": 4})
    torchrun(cfg, "--train.parallel=fsdp")
    values = losses(run_dir)
    assert len(values) == TRAIN["max_steps"] and values[-1] < values[0]
    model, _ = load_model(run_dir / "pretrain" / "checkpoints" / "step_00000006.pt")
    assert model.num_params() > 20_000
