"""The `finetune` section: the trainer's settings (it is a TrainConfig, with fine-tuning
defaults) plus the method, the data and the adapter's shape."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.schema import Section
from lmforge.train.config import TrainConfig

Format = Literal["auto", "messages", "alpaca", "prompt_completion"]


class LoraSection(Section):
    rank: int = Field(8, ge=1, description="r: the update's rank")
    alpha: float = Field(16.0, gt=0, description="the update is scaled by alpha / rank")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="projections to adapt (q_proj ... down_proj, or all-linear)",
    )
    rslora: bool = Field(False, description="scale by alpha / sqrt(rank) (rank-stabilized)")


class PromptTuningSection(Section):
    virtual_tokens: int = Field(20, ge=1, description="N trained embeddings before each input")
    init_text: str | None = Field(
        None, description="start from this text's token embeddings (cycled to N); default: "
        "N embeddings of vocabulary tokens drawn with the seed")


class FinetuneConfig(TrainConfig):
    enabled: bool = Field(False, description="lmforge run fine-tunes after pretraining")
    method: Literal["full", "lora", "qlora", "prompt_tuning"] = Field(
        "lora", description="full: every weight; lora: adapters only; qlora: adapters over a "
        "4/8-bit frozen base; prompt_tuning: N virtual tokens only")
    data: list[str] = Field(
        default_factory=list,
        description="JSONL files (globs allowed) of messages, instruction/output or "
        "prompt/completion records; builtin:python-docs-qa for the built-in set")
    format: Format = Field("auto", description="record shape; auto: detected per record")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="held-out examples for eval")
    eval_prompts: int = Field(
        8, ge=0, description="held-out prompts answered greedily at each eval (stop rate)")
    lora: LoraSection = Field(default_factory=LoraSection)
    qlora_bits: Literal[4, 8] = Field(4, description="qlora: base weights in NF4 or int8")
    prompt_tuning: PromptTuningSection = Field(default_factory=PromptTuningSection)
    block_size: int | None = Field(  # type: ignore[assignment]
        None, ge=1, description="tokens per packed row; default: the base's max_seq_len")
    max_steps: int = Field(200, ge=1, description="optimizer steps")
    batch_size: int = Field(4, ge=1, description="packed rows per micro-batch per rank")
    lr: float = Field(2e-4, gt=0, description="peak learning rate")
    warmup_steps: int = Field(10, ge=0, description="linear warmup (cut at max_steps)")
    weight_decay: float = Field(0.0, ge=0, description="applied to matrices only")
    eval_every: int = Field(50, ge=0, description="steps between val evals; 0 = only at the end")
    ckpt_every: int = Field(100, ge=0, description="steps between checkpoints; 0 = at the end")
    sample_tokens: int = Field(0, ge=0, description="tokens of a free sample at the end (0: off)")
    test_eval: bool = Field(False, description="fine-tuning holds out val only")
