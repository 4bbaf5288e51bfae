"""GPTQ (Frantar et al. 2022): int4 weights rounded one input column at a time, each
column's rounding error pushed onto the columns not yet rounded, weighted by the inverse
Hessian H = 2 X^T X of the layer's calibration inputs, so that the layer's outputs, not its
weights, stay close.

Written here because the maintained implementations (llm-compressor, GPTQModel) are
GPU-first pipelines that need their own model classes; this is the algorithm alone, on the
Hessians `calibrate.collect(hessian=True)` accumulates, for our int4 layout (groups along
the input, grid w = (q - 8) * scale + zero, each group's grid fixed from its weights as
updated when rounding reaches it). Calibration runs once through the original model, not
layer by layer through the already quantized ones: simpler, and on our models the
sequential variant did not change perplexity measurably (see docs/compression.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmforge.model.quant import group_grid, int4_tensors

BLOCK = 128  # columns updated together before the rest of the matrix catches up
DAMP = 0.01  # share of the mean diagonal added to H, so its Cholesky factor exists


@torch.no_grad()
def gptq_int4(weight: Tensor, hessian: Tensor, group_size: int) -> dict[str, Tensor]:
    """The QuantLinear int4 buffers of `weight` (N, K), rounded with GPTQ."""
    w = weight.detach().float().clone()
    n, k = w.shape
    h = hessian.float().clone()
    dead = torch.diag(h) == 0  # inputs that were always zero carry no information
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += DAMP * torch.diag(h).mean() * torch.eye(k, device=h.device)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)),
                                    upper=True)
    codes = torch.zeros_like(w)
    scales = torch.zeros(n, k // group_size, device=w.device)
    zeros = torch.zeros_like(scales)
    for start in range(0, k, BLOCK):
        end = min(start + BLOCK, k)
        block = w[:, start:end].clone()
        errors = torch.zeros_like(block)
        inv = inverse[start:end, start:end]
        for i in range(end - start):
            column = start + i
            if column % group_size == 0:  # this group's grid, from its current weights
                span = block[:, i:i + group_size]
                g = column // group_size
                scale, zero = group_grid(span.amin(1), span.amax(1))
                scales[:, g], zeros[:, g] = scale, zero
            g = column // group_size
            q = ((block[:, i] - zeros[:, g]) / scales[:, g] + 8).round().clamp(0, 15)
            codes[:, column] = q
            error = (block[:, i] - ((q - 8) * scales[:, g] + zeros[:, g])) / inv[i, i]
            block[:, i:] -= error[:, None] * inv[i, i:][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ inverse[start:end, end:]
    return int4_tensors(codes, scales, zeros)
