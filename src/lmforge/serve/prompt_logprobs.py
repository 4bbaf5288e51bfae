"""The prompt's own log-probs, for `/v1/completions` with `echo` and `logprobs`.

With echo, OpenAI's legacy completions and vLLM score the prompt too: each prompt token's
logprob given the tokens before it (the first has none: nothing predicts it) and the top
alternatives there. That is what evaluation harnesses read (lm-evaluation-harness sends the
context plus a continuation with echo and sums the continuation's logprobs).

Engine core side (`score`): the prefill pass already runs every prompt position; the core
keeps the last hidden states of an echo prompt's rows only (`Pack.keep`, never the batch's
other rows) and turns them into logprobs SCORE_ROWS positions at a time, keeping only each
position's chosen token and top-k, so a long prompt never holds a (tokens, vocab) matrix.

Frontend side (`echo_logprobs`): the entries as the completions API shows them. The echoed
prompt is the client's own text, which the input filter has checked, so its tokens are
shown as sent, like the echoed text itself (redacting it would only garble what the client
wrote and break `text_offset` against the text they hold). The alternatives are the model's
output, so they go through the output filter's rule for alternatives of generated tokens:
one that would complete a redacted match after the text before it shows as the placeholder.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lmforge.model.sampling import LOGPROB_FLOOR, TokenLogprob
from lmforge.serve.runner import Runner
from lmforge.serve.safety import ALTERNATIVE_WINDOW, OutputFilter
from lmforge.serve.textstream import TextStream

SCORE_ROWS = 256  # prompt positions scored at once: a (256, vocab) float32 block


@torch.no_grad()
def score(runner: Runner, hidden: Tensor, targets: list[int], top: int) -> list[TokenLogprob]:
    """Logprob of targets[i] under the logits of hidden state i (the position before it),
    with the `top` most likely tokens there."""
    out: list[TokenLogprob] = []
    top = min(top, runner.vocab)
    for start in range(0, len(targets), SCORE_ROWS):
        logits = runner.logits(hidden[start:start + SCORE_ROWS]).float()
        logprobs = logits.log_softmax(dim=-1).clamp(min=LOGPROB_FLOOR)
        ids = targets[start:start + SCORE_ROWS]
        chosen = logprobs.gather(1, torch.tensor(ids, device=logits.device)[:, None])
        if top:
            values, indices = (t.tolist() for t in logprobs.topk(top, dim=-1))
        else:
            values = indices = [[] for _ in ids]
        out += [TokenLogprob(token, lp, list(zip(i, v, strict=True)))
                for token, lp, i, v in zip(ids, chosen[:, 0].tolist(), indices, values,
                                           strict=True)]
    return out


def echo_logprobs(prompt: list[int], entries: list[TokenLogprob], tokenizer: Any,
                  rules: OutputFilter) -> dict[str, list]:
    """The completions logprobs object of an echoed prompt: `entries` score prompt[1:]
    (the first token gets null, as OpenAI sends it); offsets index the echoed text."""
    stream = TextStream(tokenizer.decode, [])
    tokens, logprobs, tops, offsets = [], [], [], []
    for i, token in enumerate(prompt):
        raw = stream.text
        offsets.append(len(raw))
        tokens.append(tokenizer.token_text(token))
        entry = entries[i - 1] if i else None
        logprobs.append(entry.logprob if entry else None)
        tops.append(None if entry is None else {
            _alternative(rules, raw, tokenizer.token_text(t), t == token): lp
            for t, lp in entry.top})
        stream.push(token)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops,
            "text_offset": offsets}


def _alternative(rules: OutputFilter, raw: str, text: str, chosen: bool) -> str:
    """An alternative's text, or the placeholder of the match it would complete."""
    if chosen or not rules.active:
        return text
    placeholder = rules.alternative(raw, max(0, len(raw) - ALTERNATIVE_WINDOW), len(raw), text)
    return text if placeholder is None else placeholder
