"""The `eval:` section: what `lmforge run` evaluates its model on (and `lmforge eval -c`'s
defaults)."""

from __future__ import annotations

from pydantic import Field

from lmforge.schema import Section


class EvalConfig(Section):
    enabled: bool = Field(True, description="evaluate the run's model at the end of `lmforge run`")
    tasks: list[str] = Field(
        default_factory=list, description="task YAML files (lm-eval's format, local JSONL "
        "data) or builtin:NAME")
    perplexity: list[str] = Field(
        default_factory=lambda: ["held-out"], description="perplexity and bits-per-byte on "
        "these: a split of the run's data (train, val, test; held-out: test, or val when the "
        "run has no test split) or a .txt/.jsonl file")
    harness: list[str] = Field(
        default_factory=list, description="lm-evaluation-harness task names or YAML files, "
        "run on the HF export (needs `pip install lm-eval`)")
    batch_size: int = Field(16, ge=1, description="rows per forward pass; scores do not change")
    num_fewshot: int | None = Field(None, ge=0, description="override each task's num_fewshot")
    fewshot_seed: int = Field(1234, description="seed of the few-shot sampler (lm-eval's)")
    limit: int | None = Field(None, ge=1, description="score only each task's first N docs")
    apply_chat_template: bool = Field(
        False, description="render each prompt as a user turn with the model's chat template")
    bootstrap_iters: int = Field(1000, ge=0, description="resamples for corpus metrics' stderr")
    seed: int = Field(1234, description="bootstrap seed")
