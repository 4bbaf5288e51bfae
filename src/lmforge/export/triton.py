"""Triton Inference Server export: a model repository around the ONNX export.

    REPO/NAME/config.pbtxt      platform onnxruntime_onnx, max_batch_size, dynamic_batching,
                                every input and output of the graph, KV-cache tensors included
    REPO/NAME/1/model.onnx      the ONNX export (export/onnx.py), parity-checked as always,
                                with its onnx_config.json and tokenizer files beside it

`tritonserver --model-repository REPO` serves it. With max_batch_size > 0 Triton adds the
batch axis itself, so each tensor's dims leave it out; the other dynamic axes (sequence,
past_sequence, total_sequence) are -1:

    input_ids, attention_mask, position_ids    TYPE_INT64  [ -1 ]
    past_key_values.N.key/value                TYPE_FP32   [ kv_heads, -1, head_dim ]
    logits                                     TYPE_FP32   [ -1, vocab ]
    present.N.key/value                        TYPE_FP32   [ kv_heads, -1, head_dim ]

The client keeps the cache: it sends the prompt with pasts of length 0, then each new
token with the presents it got back (onnx_runner.OnnxDecoder.step does the same against
ONNX Runtime). Triton's dynamic batcher joins requests whose shapes agree (same lengths),
and runs the others apart.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lmforge.errors import UserError
from lmforge.export.onnx import export_onnx
from lmforge.io import atomic_write_text
from lmforge.model.llama import Transformer

CONFIG_FILE = "config.pbtxt"
VERSION = "1"
TRITON_TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32"}
QUEUE_DELAY_US = 100  # how long the dynamic batcher waits for requests to join a batch
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def tensor_entry(spec: dict[str, Any]) -> str:
    """One input/output of config.pbtxt: the graph's shape less the batch axis, -1 where
    the graph's axis is dynamic."""
    dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in spec["shape"][1:])
    return (f'  {{\n    name: "{spec["name"]}"\n    data_type: {TRITON_TYPES[spec["dtype"]]}\n'
            f"    dims: [ {dims} ]\n  }}")


def model_config(name: str, onnx_config: dict[str, Any], max_batch_size: int) -> str:
    """config.pbtxt (protobuf text format, Triton's ModelConfig) for the exported graph."""
    inputs = ",\n".join(tensor_entry(s) for s in onnx_config["inputs"])
    outputs = ",\n".join(tensor_entry(s) for s in onnx_config["outputs"])
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
            f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}\n")


def check_repository_options(name: str, max_batch_size: int) -> None:
    if not NAME.fullmatch(name):
        raise UserError(f"Triton model name {name!r} must be letters, digits, '_', '.' or "
                        "'-'; pass another --triton-name")
    if max_batch_size < 1:
        raise UserError(f"--max-batch-size must be at least 1, got {max_batch_size}")


def export_triton(model: Transformer, tokenizer_dir: Path, repo: Path, name: str = "lmforge",
                  max_batch_size: int = 8) -> dict[str, Any]:
    """REPO/NAME/config.pbtxt and REPO/NAME/1/ (the ONNX export); returns the ONNX config."""
    check_repository_options(name, max_batch_size)
    onnx_config = export_onnx(model, tokenizer_dir, repo / name / VERSION)
    atomic_write_text(repo / name / CONFIG_FILE, model_config(name, onnx_config,
                                                              max_batch_size))
    return onnx_config
