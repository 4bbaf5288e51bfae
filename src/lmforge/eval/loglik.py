"""Log-likelihoods of continuations, batched whole prompts, with lm-eval's token rules.

lm-evaluation-harness's hf backend defines what a score means, so these follow it exactly:
a (context, continuation) pair is encoded as the whole string and split at the context's
length (trailing spaces of the context move to the continuation); an empty context is the
prefix token (BOS, else EOS); the input is the last max_length + 1 tokens minus the final
one; a document's rolling log-likelihood is the sum over lm-eval's disjoint windows, the
first predicted from the prefix token. Requests run longest first in batches, and each
row's score depends only on its own tokens (right padding, masked out), so scores do not
change with the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lmforge.model.llama import Transformer
from lmforge.progress import count_progress

Pair = tuple[list[int], list[int]]  # (context ids, continuation ids)


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str,
                prefix_id: int) -> Pair:
    """Context and continuation ids as lm-eval's causal `_encode_pair` makes them."""
    if context == "":
        ids = encode(continuation)
        return ([prefix_id], ids) if not ids or ids[0] != prefix_id else (ids[:1], ids[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation, context = context[-spaces:] + continuation, context[:-spaces]
    whole, head = encode(context + continuation), encode(context)
    return head, whole[len(head):]


def rolling_windows(tokens: list[int], prefix_id: int, max_length: int) -> list[Pair]:
    """lm-eval's disjoint rolling windows (context_len 1): every token is predicted once,
    each window sees at most max_length tokens."""
    if not tokens:
        return []
    first = min(max_length, len(tokens))
    windows = [([prefix_id], tokens[:first])]  # input: prefix + tokens[:first - 1]
    predicted = first
    while predicted < len(tokens):
        count = min(len(tokens) - predicted, max_length)
        end = predicted + count
        inputs = tokens[max(end - max_length - 1, 0):end - 1]
        windows.append((inputs[:len(inputs) - (count - 1)], tokens[end - count:end]))
        predicted += count
    return windows


@dataclass
class _Row:
    """One forward row: a shared prefix and the continuations that follow it, side by side
    (each attends to the prefix and to itself only), or one plain (context + continuation)."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)  # 0: the prefix; k: continuation k
    members: list[tuple[int, list[int]]] = field(default_factory=list)  # (pair, logit rows)


class Scorer:
    """Scores token pairs under a model in eval mode. Pairs that share their context (the
    choices of one question) are scored in one row: the context runs once, not once per
    choice, which is most of a multiple-choice task's compute."""

    def __init__(self, model: Transformer, batch_size: int = 16,
                 max_length: int | None = None, virtual: Sequence[int] = ()) -> None:
        """`virtual`: prompt tuning's virtual token ids, put before every input."""
        self.model = model.eval()
        self.batch_size = batch_size
        self.virtual = list(virtual)
        self.max_length = max_length or model.cfg.max_seq_len - len(self.virtual)
        self.device = next(model.parameters()).device
        self.share = model.cfg.sliding_window is None  # windows count positions, not rows

    def rows(self, pairs: Sequence[Pair]) -> list[_Row]:
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, _) in enumerate(pairs):
            groups.setdefault(tuple(ctx), []).append(i)
        rows = []
        for ctx, members in groups.items():
            prefix = self.virtual + list(ctx)
            conts = [pairs[i][1] for i in members]
            width = len(prefix) + sum(len(c) - 1 for c in conts)
            fits = all(len(c) > 0 and len(ctx) + len(c) <= self.max_length + 1 for c in conts)
            if self.share and ctx and fits and width <= self.model.cfg.max_seq_len:
                rows.append(self._shared(prefix, members, conts))
            else:
                rows += [self._plain(pairs[i], i) for i in members]
        return rows

    def _shared(self, prefix: list[int], members: list[int], conts: list[list[int]]) -> _Row:
        row = _Row(list(prefix), list(range(len(prefix))), [0] * len(prefix))
        for k, (i, cont) in enumerate(zip(members, conts, strict=True), 1):
            start = len(row.tokens)
            row.tokens += cont[:-1]
            row.positions += range(len(prefix), len(prefix) + len(cont) - 1)
            row.segments += [k] * (len(cont) - 1)
            row.members.append((i, [len(prefix) - 1, *range(start, start + len(cont) - 1)]))
        return row

    def _plain(self, pair: Pair, i: int) -> _Row:
        ctx, cont = pair
        x = self.virtual + (ctx + cont)[-(self.max_length + 1):][:-1]
        return _Row(x, list(range(len(x))), [0] * len(x),
                    [(i, list(range(len(x) - len(cont), len(x))))])

    def loglikelihood(self, pairs: Sequence[Pair], label: str = "scoring"
                      ) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probs, whether greedy decoding gives it) per pair."""
        rows = sorted(self.rows(pairs), key=lambda r: (-len(r.tokens), r.members[0][0]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        with count_progress(label, len(pairs), "requests") as advance, torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start:start + self.batch_size]
                for i, result in self._batch(batch, pairs):
                    results[i] = result
                advance(sum(len(r.members) for r in batch))
        return results

    def _batch(self, rows: list[_Row], pairs: Sequence[Pair]
               ) -> list[tuple[int, tuple[float, bool]]]:
        longest = max(len(r.tokens) for r in rows)
        ids = torch.zeros(len(rows), longest, dtype=torch.long)
        positions = torch.zeros(len(rows), longest, dtype=torch.long)
        segments = torch.full((len(rows), longest), -1, dtype=torch.long)
        for b, row in enumerate(rows):
            n = len(row.tokens)
            ids[b, :n], positions[b, :n] = torch.tensor(row.tokens), torch.tensor(row.positions)
            segments[b, :n] = torch.tensor(row.segments)
        q, k = segments[:, :, None], segments[:, None, :]
        order = torch.arange(longest)
        mask = (order[None, :] <= order[:, None]) & ((k == 0) | (k == q)) & (q >= 0)
        mask |= torch.eye(longest, dtype=torch.bool)  # padding looks at itself: no empty row
        wanted = torch.tensor([(b, p) for b, row in enumerate(rows)
                               for _, where in row.members for p in where])
        logits = self.model(ids.to(self.device), positions=positions.to(self.device),
                            attn_mask=mask.to(self.device),
                            logit_rows=wanted.to(self.device)).logits  # only scored positions
        logprobs = F.log_softmax(logits.float(), dim=-1)
        out, at = [], 0
        for row in rows:
            for i, where in row.members:
                target = torch.tensor(pairs[i][1], device=logprobs.device)
                picked = logprobs[at:at + len(where)]
                at += len(where)
                total = picked.gather(1, target[:, None]).sum().item()
                out.append((i, (total, bool((picked.argmax(-1) == target).all()))))
        return out

    def rolling(self, token_lists: Sequence[list[int]], prefix_id: int,
                label: str = "perplexity") -> list[float]:
        """Each document's total log-likelihood over its rolling windows."""
        windows, owner = [], []
        for doc, tokens in enumerate(token_lists):
            for window in rolling_windows(tokens, prefix_id, self.max_length):
                windows.append(window)
                owner.append(doc)
        totals = [0.0] * len(token_lists)
        for doc, (ll, _) in zip(owner, self.loglikelihood(windows, label), strict=True):
            totals[doc] += ll
        return totals
