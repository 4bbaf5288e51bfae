"""Log-likelihoods of continuations, batched whole prompts, with lm-eval's token rules.

lm-evaluation-harness's hf backend defines what a score means, so these follow it exactly:
a (context, continuation) pair is encoded as the whole string and split at the context's
length (trailing spaces of the context move to the continuation); an empty context is the
prefix token (BOS, else EOS); the input is the last max_length + 1 tokens minus the final
one; a document's rolling log-likelihood is the sum over lm-eval's disjoint windows, the
first predicted from the prefix token. Requests run longest first in batches, and each
row's score depends only on its own tokens (right padding under a causal mask), so scores
do not change with the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


class Scorer:
    """Scores token pairs under a model in eval mode."""

    def __init__(self, model: Transformer, batch_size: int = 16,
                 max_length: int | None = None, virtual: Sequence[int] = ()) -> None:
        """`virtual`: prompt tuning's virtual token ids, put before every input."""
        self.model = model.eval()
        self.batch_size = batch_size
        self.virtual = list(virtual)
        self.max_length = max_length or model.cfg.max_seq_len - len(self.virtual)
        self.device = next(model.parameters()).device

    def loglikelihood(self, pairs: Sequence[Pair], label: str = "scoring"
                      ) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probs, whether greedy decoding gives it) per pair."""
        inputs = [self.virtual + (ctx + cont)[-(self.max_length + 1):][:-1]
                  for ctx, cont in pairs]
        order = sorted(range(len(pairs)), key=lambda i: (-len(inputs[i]), i))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        with count_progress(label, len(pairs), "requests") as advance, torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                scored = self._batch([inputs[i] for i in batch], [pairs[i][1] for i in batch])
                for i, result in zip(batch, scored, strict=True):
                    results[i] = result
                advance(len(batch))
        return results

    def _batch(self, inputs: list[list[int]], continuations: list[list[int]]
               ) -> list[tuple[float, bool]]:
        longest = max(len(x) for x in inputs)
        ids = torch.zeros(len(inputs), longest, dtype=torch.long)
        for row, x in enumerate(inputs):
            ids[row, :len(x)] = torch.tensor(x)
        logits = self.model(ids.to(self.device)).logits
        out = []
        for row, (x, cont) in enumerate(zip(inputs, continuations, strict=True)):
            n = len(cont)
            logprobs = F.log_softmax(logits[row, len(x) - n:len(x)].float(), dim=-1)
            target = torch.tensor(cont, device=logprobs.device)
            total = logprobs.gather(1, target[:, None]).sum().item()
            greedy = bool((logprobs.argmax(-1) == target).all())
            out.append((total, greedy))
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
