"""The `export:` section: how RUN/export/ (an HF model directory) is written."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.schema import Section


class ExportConfig(Section):
    enabled: bool = Field(True, description="write RUN/export/ at the end of `lmforge run`")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weight dtype on disk")
    max_shard_mb: float = Field(
        5000.0, gt=0, description="weights above this size are split into shards + an index")
