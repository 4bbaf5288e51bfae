"""Prefix reuse across cache slots: finding the longest cached start of a prompt.

A prompt that starts the way a sequence in another slot did (a shared system prompt, the
history of a chat that comes back with one more turn, the same prompt again) can take
that slot's keys and values for the shared part and be prefilled for the rest only: vLLM's
automatic prefix caching, over whole slots instead of paged blocks. Each slot offers the
tokens its cache holds: a running sequence's prompt and output so far, or what the last
sequence there left behind (until the slot is reused).
"""

from __future__ import annotations

from collections.abc import Iterable

# (slot, tokens, how many of the first tokens the slot's cache holds)
Holding = tuple[int, list[int], int]


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """The length of the longest common prefix of a[:limit] and b[:limit]. List slices
    compare in C, so a binary search over slice equality beats a Python loop."""
    n = min(len(a), len(b), limit)
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        mid = (low + high) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid
    return low


def longest_prefix(prompt: list[int], holdings: Iterable[Holding]) -> tuple[int, int]:
    """(slot, length) of the longest start of the prompt, all but its last token (whose
    logits the prefill must compute), that some slot holds; (-1, 0) when none does."""
    best_slot, best = -1, 0
    limit = len(prompt) - 1
    for slot, tokens, held in holdings:
        if min(held, limit) > best and tokens[0] == prompt[0]:
            length = common_prefix(tokens, prompt, min(held, limit))
            if length > best:
                best_slot, best = slot, length
    return best_slot, best
