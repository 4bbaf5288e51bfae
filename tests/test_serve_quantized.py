"""The serving engine on compressed models: quantized linears run on their own kernels inside
the runner's fused pass, and the KV cache optionally held in int8."""

from __future__ import annotations

import copy

import pytest
import torch

from lmforge.compress.quantize import quantize_model
from lmforge.model.config import ModelConfig
from lmforge.model.llama import Transformer
from lmforge.serve.runner import Runner

SHAPE = dict(vocab_size=64, dim=64, n_heads=4, n_kv_heads=2, ffn_dim=128, n_layers=2,
             max_seq_len=96)


def model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**SHAPE, **overrides)).eval()


def runner_logits(runner: Runner, prompts: list[list[int]], steps: int) -> list[torch.Tensor]:
    """Prefill the prompts into slots 0..P-1, then greedy decode steps: every step's logits."""
    with torch.inference_mode():
        out = [runner.prefill(list(range(len(prompts))), prompts)]
        seqs = [list(p) for p in prompts]
        for _ in range(steps):
            tokens = out[-1].argmax(-1).tolist()
            positions = [len(s) for s in seqs]
            for seq, token in zip(seqs, tokens, strict=True):
                seq.append(token)
            out.append(runner.decode(torch.tensor(tokens), torch.tensor(positions),
                                     max(positions) + 1))
    return out


def forward_logits(reference: Transformer, prompts: list[list[int]], steps: int
                   ) -> list[torch.Tensor]:
    """The same sequences through the model's own forward pass (no engine)."""
    seqs = [list(p) for p in prompts]
    out = []
    with torch.inference_mode():
        for _ in range(steps + 1):
            rows = torch.stack([reference(torch.tensor([s])).logits[0, -1] for s in seqs])
            out.append(rows)
            for seq, token in zip(seqs, rows.argmax(-1).tolist(), strict=True):
                seq.append(token)
    return out


PROMPTS = [[3, 9, 27, 11, 5], [7, 1, 2], [60, 61, 62, 63, 4, 8, 15]]


@pytest.mark.parametrize("method", ["int8-weight", "int8-dynamic", "int4-weight"])
def test_engine_runs_quantized_linears_as_the_model_does(method):
    quantized = model()
    quantize_model(quantized, method, group_size=32)
    runner = Runner(quantized, slots=4, dtype=torch.float32, device=torch.device("cpu"))
    ours = runner_logits(runner, PROMPTS, 6)
    theirs = forward_logits(quantized, PROMPTS, 6)
    scale = max(float(t.abs().max()) for t in theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert (a - b).abs().max() <= 0.02 * scale  # bf16 activations on both sides
        assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_an_int8_kv_cache_stays_close_to_the_full_one():
    base = model(1)
    full = Runner(copy.deepcopy(base), 4, torch.float32, torch.device("cpu"))
    small = Runner(copy.deepcopy(base), 4, torch.float32, torch.device("cpu"), kv_int8=True)
    assert small.k.dtype == torch.int8 and small.k.element_size() * 4 == full.k.element_size()
    a, b = runner_logits(full, PROMPTS, 8), runner_logits(small, PROMPTS, 8)
    scale = max(float(t.abs().max()) for t in a)
    for x, y in zip(a, b, strict=True):
        assert (x - y).abs().max() <= 0.02 * scale


def test_an_int8_kv_cache_survives_prefix_reuse():
    """A slot given another's prefix (copy_prefix) copies the scales along with the keys."""
    base = model(2)
    runner = Runner(base, 4, torch.float32, torch.device("cpu"), kv_int8=True)
    first = [5, 6, 7, 8, 9, 10, 11, 12]
    with torch.inference_mode():
        whole = runner.prefill([0], [[*first, 13, 14]])
        runner.prefill([1], [first])
        runner.copy_prefix(1, 2, len(first))
        rest = runner.step(None, runner.pack([2], [[13, 14]], [len(first)]))[1]
    assert (rest - whole).abs().max() <= 0.02 * whole.abs().max()
