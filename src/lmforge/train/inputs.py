"""Model keyword arguments from a loader batch."""

from __future__ import annotations

from typing import Any

import torch

from lmforge.tokenizer.loader import Batch


def model_inputs(batch: Batch, doc_mask: bool) -> dict[str, Any]:
    """Per-document attention inputs, or nothing for plain causal windows.

    The loader counts positions from each document's true start, so a window that begins
    mid-document can start at position 10,000. RoPE only sees position differences within
    a document, so the row's first (partial) document is renumbered from 0: same attention,
    and positions stay below the window length.
    """
    if not doc_mask:
        return {}
    t = batch.x.size(1)
    ramp = torch.arange(t, device=batch.x.device).expand_as(batch.positions)
    positions = torch.where(batch.doc_ids == 0, ramp, batch.positions)
    return {"positions": positions, "doc_ids": batch.doc_ids}
