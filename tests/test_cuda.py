"""The CUDA paths: the serving engine and the trainer on a GPU (skipped where none is visible;
CI has none, so these run on a GPU machine by hand: `pytest tests/test_cuda.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmforge.serve.artifacts import load_served_model
from lmforge.train.monitor import read_metrics
from test_engine import (
    RUNNER_VARIANTS,
    assert_greedy_equals_training_forward,
    make_engine,
    worst_prefix_error,
    worst_runner_error,
)
from test_serve_support import make_model_dir
from test_train import trainer_for
from test_train_support import make_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return load_served_model(make_model_dir(tmp_path_factory.mktemp("cuda-engine")))


@pytest.mark.parametrize("overrides", RUNNER_VARIANTS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 0.03)])
def test_runner_logits_match_the_model_on_cuda(overrides: dict, dtype: torch.dtype,
                                               tol: float) -> None:
    # fp32 on the GPU may run its matmuls in TF32 (the trainer turns it on): 1e-3, not 1e-5
    assert worst_runner_error(overrides, dtype, CUDA) < tol
    assert worst_prefix_error(overrides, dtype, CUDA) < tol


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_engine_greedy_equals_training_forward_on_cuda(served, dtype: str) -> None:
    engine = make_engine(served, dtype=getattr(torch, dtype), max_batch=4, device="cuda")
    try:
        assert_greedy_equals_training_forward(served, engine, getattr(torch, dtype), "cuda")
    finally:
        engine.stop()


def test_engine_dtype_auto_is_bf16_on_cuda(served) -> None:
    from lmforge.serve.engine import resolve_dtype

    assert resolve_dtype("auto", CUDA) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32


@pytest.mark.parametrize("compile_model", [False, True])
def test_bf16_training_with_fused_adamw_and_muon_learns_on_cuda(tmp_path: Path, compile_model: bool
                                                       ) -> None:
    run = make_run(tmp_path / "data")
    trainer = trainer_for(run, tmp_path, device="cuda", precision="auto", compile=compile_model,
                          max_steps=150, eval_every=50, ckpt_every=150, batch_size=8,
                          optimizer="muon", lr=1e-2, muon_lr=0.05, schedule="wsd",
                          warmup_steps=10)
    assert trainer.rt.device.type == "cuda" and trainer.rt.precision == "bf16"
    assert trainer.optim.optimizers[0].defaults["fused"]  # AdamW; Muon takes the matrices
    trainer.fit()
    rows = read_metrics(tmp_path / "pretrain" / "metrics.jsonl")
    evals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert [r["step"] for r in rows if "val_loss" in r] == [50, 100, 150]
    assert evals[-1] < rows[0]["unigram_val_loss"] - 0.3
