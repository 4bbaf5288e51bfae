"""Calibration: what each projection of a model sees on real text.

One pass of the calibration windows through the model, with a hook on every projection,
gathers per input channel the mean |x| (AWQ's activation scale) and the sum of x^2 (Wanda's
||X_j||, and the channel / head importances of structured pruning), and keeps a sample of
input rows per distinct input (q, k and v share theirs, as do gate and up) for the scale
and clip searches. Memory stays at `rows` x width per input, not tokens x width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from lmforge.errors import UserError
from lmforge.progress import count_progress

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class InputStats:
    """What one projection's input looked like over the calibration tokens."""

    abs_sum: Tensor
    sq_sum: Tensor
    tokens: int = 0
    xtx: Tensor | None = None  # sum of x^T x (K, K), GPTQ's Hessian / 2, when asked for
    sample: list[Tensor] = field(default_factory=list)

    @property
    def mean_abs(self) -> Tensor:
        return self.abs_sum / max(self.tokens, 1)

    @property
    def norm(self) -> Tensor:
        """||X_j||_2 per input channel (Wanda's activation factor)."""
        return self.sq_sum.sqrt()

    def rows(self) -> Tensor:
        return torch.cat(self.sample) if self.sample else self.abs_sum.new_zeros(0, 0)


def calibration_windows(texts: list[str], encode: Callable[[str], list[int]], seq_len: int,
                        samples: int) -> Tensor:
    """`samples` windows of `seq_len` tokens from the texts joined end to end (evenly spaced
    through them, so a long first document does not fill every window)."""
    ids: list[int] = []
    for text in texts:
        ids.extend(encode(text))
        if len(ids) >= seq_len * samples * 4:
            break
    if len(ids) < seq_len:
        raise UserError(f"calibration text has {len(ids)} tokens, fewer than one window of "
                        f"{seq_len}; give more text or lower compress.calibration_seq_len")
    tokens = torch.tensor(ids)
    count = min(samples, len(ids) // seq_len)
    starts = torch.linspace(0, len(ids) - seq_len, count).long().tolist()
    return torch.stack([tokens[s:s + seq_len] for s in starts])


@torch.no_grad()
def collect(model: nn.Module, windows: Tensor, rows: int = 512, batch_size: int = 4,
            hessian: bool = False) -> dict[str, InputStats]:
    """Input statistics of every projection of the decoder layers and of lm_head, by name;
    projections that share an input share one InputStats. `hessian` also sums x^T x
    (K x K per input: 64 MB at width 4096)."""
    stats: dict[str, InputStats] = {}
    per_batch = max(1, rows * batch_size // max(len(windows), 1))
    generator = torch.Generator().manual_seed(0)

    def record(names: list[str], x: Tensor) -> None:
        x = x.detach().reshape(-1, x.size(-1)).float()
        entry = stats.get(names[0])
        if entry is None:
            entry = InputStats(x.new_zeros(x.size(1)), x.new_zeros(x.size(1)))
            stats.update(dict.fromkeys(names, entry))
        entry.abs_sum += x.abs().sum(0)
        entry.sq_sum += x.pow(2).sum(0)
        entry.tokens += x.size(0)
        if hessian:
            entry.xtx = x.t() @ x if entry.xtx is None else entry.xtx.addmm_(x.t(), x)
        if sum(s.size(0) for s in entry.sample) < rows:
            pick = torch.randperm(x.size(0), generator=generator)[:per_batch]
            entry.sample.append(x[pick].clone())

    handles = []
    for module, names, on_output in input_points(model):
        if on_output:
            hook = module.register_forward_hook(
                lambda _m, _a, out, names=names: record(names, out))
        else:
            hook = module.register_forward_pre_hook(
                lambda _m, args, names=names: record(names, args[0]))
        handles.append(hook)
    try:
        with count_progress("calibrate", len(windows), "windows") as advance:
            for start in range(0, len(windows), batch_size):
                batch = windows[start:start + batch_size].to(model.rope_cos.device)
                model(batch)
                advance(len(batch))
    finally:
        for handle in handles:
            handle.remove()
    return stats


def input_points(model: nn.Module) -> list[tuple[nn.Module, list[str], bool]]:
    """Where each projection's input can be seen: (module, projection names, on its output).
    q/k/v and gate/up run as one fused matmul that never calls their modules, so their
    input is read off the norm before them; o_proj, down_proj and lm_head get theirs."""
    points: list[tuple[nn.Module, list[str], bool]] = []
    for i, block in enumerate(model.model.layers):
        attn, mlp = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        points.append((block.input_layernorm, [attn + n for n in ("q_proj", "k_proj", "v_proj")],
                       True))
        points.append((block.self_attn.o_proj, [attn + "o_proj"], False))
        if hasattr(block.mlp, "gate_proj"):
            points.append((block.post_attention_layernorm,
                           [mlp + "gate_proj", mlp + "up_proj"], True))
            points.append((block.mlp.down_proj, [mlp + "down_proj"], False))
    points.append((model.lm_head, ["lm_head"], False))
    return points


def read_calibration_texts(source: Path) -> list[str]:
    """Texts from a data split directory, a .txt or a .jsonl file."""
    from lmforge.eval.tasks import read_texts

    texts = read_texts(source)
    if not texts:
        raise UserError(f"{source} holds no calibration text")
    return texts
