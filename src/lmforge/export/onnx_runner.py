"""Run an ONNX export without torch: numpy, onnxruntime and tokenizers only.

    lmforge generate DIR --backend onnx -p "text"      DIR written by `lmforge export --format onnx`

`OnnxDecoder` is one ONNX Runtime session over the exported graph (export/onnx.py describes
its inputs and outputs) and the cache it takes; `OnnxLM` adds the tokenizer and stop ids
from onnx_config.json and generates as `lmforge.model.generate.stream` does: the prompt in
one prefill, one token per step after it with the cache fed back, stopping at eos and at
the end of a chat turn, and rebuilding the cache from the last half of the window when the
context fills up. Tokens are drawn by the rule of the torch sampler (model/sampling.py):
temperature, then top-k and top-p over the sorted distribution, then the inverse CDF at a
uniform number from `random.Random(seed)`; greedy (temperature 0) is the argmax.

This module never imports torch (tests/test_export_onnx.py runs it with torch blocked), so
a serving box needs neither torch nor lmforge's training stack to run the export.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np

from lmforge.errors import UserError

GRAPH = "model.onnx"
CONFIG = "onnx_config.json"
PAST = "past_key_values."
MAX_UNIFORM = 1.0 - 1e-6  # the torch sampler's bound (see model/sampling.py)
TEMPERATURE_FLOOR = 1e-5  # below it a row is greedy, as in the torch sampler


class OnnxDecoder:
    """The exported graph in an ONNX Runtime CPU session; the cache layout is read from the
    graph's own inputs (past_key_values.N.key: batch, kv_heads, past_sequence, head_dim)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("onnxruntime is not installed; pip install 'lmforge[export]' "
                            "(or just onnxruntime)") from None
        if not path.is_file():
            raise UserError(f"{path} not found; export the model with "
                            "`lmforge export SRC -o DIR --format onnx`")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        self.past_names = [i.name for i in inputs if i.name.startswith(PAST)]
        self.output_names = [o.name for o in self.session.get_outputs()]
        _, self.kv_heads, _, self.head_dim = next(i.shape for i in inputs
                                                  if i.name.startswith(PAST))

    def empty_past(self, batch: int) -> list[np.ndarray]:
        """The cache before the first token: every past of length 0."""
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return [np.zeros(shape, np.float32) for _ in self.past_names]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
            past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (B, T, V) and the cache with these tokens appended (the next `past`)."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask,
                "position_ids": position_ids, **dict(zip(self.past_names, past, strict=True))}
        logits, *present = self.session.run(self.output_names, feed)
        return logits, present

    def step(self, input_ids: np.ndarray, past: list[np.ndarray]
             ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Unpadded rows (B, T) after a cache of P positions: positions P..P+T-1."""
        b, t = input_ids.shape
        start = past[0].shape[2]
        mask = np.ones((b, start + t), np.int64)
        positions = np.broadcast_to(np.arange(start, start + t, dtype=np.int64), (b, t))
        return self.run(input_ids.astype(np.int64), mask, np.ascontiguousarray(positions), past)


def perplexity(decoder: OnnxDecoder, ids: list[int]) -> float:
    """exp(mean next-token negative log-likelihood) of `ids`, in one forward pass."""
    logits, _ = decoder.step(np.array([ids], np.int64), decoder.empty_past(1))
    scores = logits[0, :-1].astype(np.float64)
    top = scores.max(axis=-1)
    log_z = top + np.log(np.exp(scores - top[:, None]).sum(axis=-1))
    nll = log_z - scores[np.arange(len(ids) - 1), ids[1:]]
    return float(np.exp(nll.mean()))


def choose(logits: np.ndarray, temperature: float, top_k: int, top_p: float,
           rng: random.Random) -> int:
    """The next token from one row of logits: the argmax at temperature 0, else a draw."""
    if temperature < TEMPERATURE_FLOOR:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float32) / np.float32(temperature)
    u = min(rng.random(), MAX_UNIFORM)
    if not (0 < top_k < scaled.size or top_p < 1.0):
        return _invert_cdf(_softmax(scaled), u)
    order = np.argsort(-scaled, kind="stable")
    probs = _softmax(scaled[order])
    keep = np.cumsum(probs) - probs < np.float32(top_p)
    if 0 < top_k < scaled.size:
        keep[top_k:] = False
    return int(order[_invert_cdf(probs * keep, u)])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _invert_cdf(probs: np.ndarray, u: float) -> int:
    cdf = np.cumsum(probs)
    index = int(np.searchsorted(cdf, np.float32(u) * cdf[-1], side="right"))
    return min(index, probs.size - 1)


class OnnxLM:
    """An ONNX export directory: the graph, its tokenizer and its stop tokens."""

    def __init__(self, directory: Path, tokenizer_dir: Path | None = None,
                 threads: int | None = None) -> None:
        from tokenizers import Tokenizer

        config_path = directory / CONFIG
        if not config_path.is_file():
            raise UserError(f"{directory} holds no {CONFIG}; pass a directory written by "
                            "`lmforge export SRC -o DIR --format onnx`")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        self.decoder = OnnxDecoder(directory / config["graph"], threads)
        tokenizer_file = (tokenizer_dir or directory) / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise UserError(f"{tokenizer_file} not found; pass --tokenizer DIR")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.stop_ids = frozenset(config["tokens"]["stop_ids"])
        self.max_seq_len = int(config["model"]["max_seq_len"])

    def encode(self, text: str) -> list[int]:
        """Text to ids as lmforge encodes prompts: special-token strings become their ids,
        nothing is added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def stream(self, prompt: list[int], max_new_tokens: int, temperature: float = 0.8,
               top_k: int | None = 50, top_p: float | None = None, seed: int | None = None,
               stop_ids: Collection[int] = ()) -> Iterator[int]:
        """Yield new token ids one at a time; the stop token that ends it is yielded last."""
        if not prompt:
            raise ValueError("the prompt must hold at least one token")
        rng = random.Random(seed if seed is not None
                            else int.from_bytes(os.urandom(8), "little"))
        top_p = 1.0 if top_p is None else top_p
        context = list(prompt[-self.max_seq_len:])
        logits, past = self.decoder.step(np.array([context]), self.decoder.empty_past(1))
        for _ in range(max_new_tokens):
            token = choose(logits[0, -1], temperature, top_k or 0, top_p, rng)
            yield token
            if token in stop_ids:
                return
            context.append(token)
            if past[0].shape[2] >= self.max_seq_len:  # full: keep the last half of the window
                keep = context[-(self.max_seq_len // 2):]
                logits, past = self.decoder.step(np.array([keep]), self.decoder.empty_past(1))
            else:
                logits, past = self.decoder.step(np.array([[token]]), past)
