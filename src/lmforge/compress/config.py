"""The `compress:` section: how RUN/compress/ shrinks the run's model, and the quality gate.

    compress:
      enabled: true
      method: int4-weight        # int8-weight, int8-dynamic, int4-weight,
                                 # magnitude, wanda, 2:4, structured
      group_size: 64
      calibration: gptq          # int4: gptq or awq (calibrated), rtn (round to nearest)
      max_ppl_increase: 0.05     # the stage fails when held-out perplexity rises more
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmforge.schema import Section

QUANT_METHODS = ("int8-weight", "int8-dynamic", "int4-weight")
PRUNE_METHODS = ("magnitude", "wanda", "2:4", "structured")
Method = Literal["int8-weight", "int8-dynamic", "int4-weight", "magnitude", "wanda", "2:4",
                 "structured"]


class CompressConfig(Section):
    enabled: bool = Field(False, description="write RUN/compress/ during `lmforge run`")
    method: Method = Field("int8-weight", description="quantization: int8-weight, "
                           "int8-dynamic, int4-weight; pruning: magnitude, wanda, 2:4, structured")
    group_size: Literal[32, 64, 128] = Field(64, description="int4: inputs per scale")
    calibration: Literal["gptq", "awq", "rtn"] = Field(
        "gptq", description="int4: gptq rounds column by column, compensating each error "
        "through the calibration inputs' Hessian; awq searches activation-aware scales and "
        "clips; rtn rounds to nearest (no calibration text)")
    embeddings: bool = Field(True, description="quantize the embedding table and output head")
    sparsity: float = Field(0.5, gt=0, lt=1, description="magnitude/wanda: share of weights "
                            "zeroed in each projection")
    head_ratio: float = Field(0.25, ge=0, lt=1, description="structured: share of key/value "
                              "head groups removed per layer")
    channel_ratio: float = Field(0.25, ge=0, lt=1, description="structured: share of MLP "
                                 "channels removed per layer")
    calibration_data: str = Field(
        "train", description="calibration text: a split of the run's data (train, val) or a "
        ".txt/.jsonl file")
    calibration_samples: int = Field(32, ge=1, description="calibration windows")
    calibration_seq_len: int = Field(256, ge=8, description="tokens per calibration window")
    recovery_steps: int = Field(0, ge=0, description="pruning: steps of LM training after "
                                "pruning (zeros kept zero)")
    recovery_method: Literal["full", "lora"] = Field(
        "full", description="recovery training of all weights, or of LoRA adapters merged after")
    recovery_lr: float = Field(1e-4, gt=0)
    recovery_batch_size: int = Field(4, ge=1)
    tasks: list[str] | None = Field(
        None, description="eval tasks scored before and after (default: the eval section's)")
    perplexity: list[str] = Field(
        default_factory=lambda: ["held-out"], description="perplexity sets scored before "
        "and after; the first is the gate's")
    max_ppl_increase: float | None = Field(
        None, gt=0, description="fail the stage when the first perplexity set's perplexity "
        "rises by more than this fraction (0.02 = 2%)")
    speed_tokens: int = Field(32, ge=0, description="new tokens per sequence in the decode "
                              "speed check at batch 1 and 8 (0: skip it)")

    @model_validator(mode="after")
    def _check(self) -> CompressConfig:
        if not self.perplexity and self.max_ppl_increase is not None:
            raise ValueError("max_ppl_increase needs a perplexity set to measure")
        return self

    @property
    def quantizes(self) -> bool:
        return self.method in QUANT_METHODS

    @property
    def needs_calibration(self) -> bool:
        return (self.method == "int4-weight" and self.calibration != "rtn") or self.method in (
            "wanda", "2:4", "structured")
