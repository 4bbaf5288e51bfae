"""The `train:` section: optimizer, schedule, batch, precision, eval, checkpoints, stability."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.schema import Section


class StabilityConfig(Section):
    """What to do when training goes wrong (see docs/training.md, "Stability")."""

    enabled: bool = True
    spike_factor: float = Field(
        3.0, gt=1, description="a loss above this many times the running median is a spike"
    )
    window: int = Field(50, ge=3, description="steps in the running median of the loss")
    min_history: int = Field(20, ge=1, description="steps of history before spikes are judged")
    max_bad_steps: int = Field(
        3, ge=1, description="non-finite steps in a row that trigger a rollback"
    )
    lr_backoff: float = Field(0.5, gt=0, lt=1, description="LR factor applied at each rollback")
    max_rollbacks: int = Field(5, ge=0, description="stop with an error after this many")


class DebugConfig(Section):
    """Fault injection for tests and drills: the trainer behaves as if these steps went bad."""

    nan_steps: list[int] = Field(default_factory=list, description="make the loss NaN here")
    spike_steps: list[int] = Field(
        default_factory=list, description="multiply the loss by spike_scale here (once each)"
    )
    spike_scale: float = Field(100.0, gt=1)


class TrainConfig(Section):
    # length and batch
    max_steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(12, ge=1, description="sequences per micro-batch per rank")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    block_size: int = Field(64, ge=1, description="tokens per sequence")
    loader: Literal["random", "packed"] = Field(
        "random", description="random windows (nanoGPT) or packed non-overlapping windows"
    )
    doc_mask: bool = Field(
        False, description="attend only within each document; positions restart per document"
    )
    seed: int = 1337
    # optimizer
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", description="muon: Muon for hidden matrices, AdamW for embeddings/norms/head"
    )
    lr: float = Field(1e-3, gt=0, description="peak AdamW learning rate")
    muon_lr: float = Field(0.02, gt=0, description="peak Muon learning rate")
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0, description="applied to matrices only")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 = off")
    # schedule
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = Field(100, ge=0, description="linear warmup (cut at max_steps)")
    decay_fraction: float = Field(
        0.2, gt=0, le=1, description="wsd: the final fraction of steps that decays the LR"
    )
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final LR as a fraction of the peak")
    # execution
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 where the hardware has it (CUDA, AVX512-BF16/AMX CPUs)"
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads for torch; default: the cores other work leaves free"
    )
    compile: bool = Field(False, description="torch.compile the model")
    activation_checkpointing: bool = False
    parallel: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="multi-process strategy under torchrun (auto: ddp)"
    )
    # evaluation
    eval_every: int = Field(100, ge=0, description="steps between val evals; 0 = only at the end")
    eval_batches: int | None = Field(
        20, ge=1, description="val batches per eval; None = the whole val split"
    )
    eval_batch_size: int | None = Field(None, ge=1, description="default: batch_size")
    eval_block_size: int | None = Field(None, ge=1, description="default: block_size")
    test_eval: bool = Field(True, description="evaluate the test split (whole) at the end")
    early_stop_patience: int | None = Field(
        None, ge=1, description="stop after this many evals without a better val loss"
    )
    target_val_loss: float | None = Field(
        None, description="stop once val loss reaches this value (time-to-quality runs)"
    )
    # checkpoints
    ckpt_every: int = Field(500, ge=0, description="steps between checkpoints; 0 = only at the end")
    keep_last: int = Field(2, ge=1, description="step checkpoints kept besides the best")
    # monitoring
    log_every: int = Field(1, ge=1, description="steps between metrics.jsonl rows")
    tensorboard: bool = True
    plot: bool = Field(True, description="write loss_curves.png at the end")
    peak_tflops: float | None = Field(
        None, gt=0, description="device peak for MFU; default: a table (GPU) or measured (CPU)"
    )
    sample_tokens: int = Field(200, ge=0, description="print a sample of this length at the end")
    sample_prompt: str = "\n"
    stability: StabilityConfig = Field(default_factory=StabilityConfig)
    debug: DebugConfig = Field(default_factory=DebugConfig)

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step on one rank."""
        return self.batch_size * self.grad_accum * self.block_size
