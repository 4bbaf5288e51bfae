"""A conversation as token ids and which of them the loss is on (the assistant's turns).

The mask comes from rendering prefixes, not from `{% generation %}` markers (few templates
have them): for each assistant turn, the conversation before it with the generation prompt
is exactly what the server renders and encodes for that request, and the conversation
through it adds the reply and its end-of-turn token. Those ids must continue one another;
a template or tokenizer for which they do not cannot be trained on faithfully, and the
example says so instead of learning from ids the server never sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmforge.tokenizer.chat import TemplateRenderError
from lmforge.tokenizer.chat_tokenizer import ChatTokenizer


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    trained: list[bool]  # per id: part of an assistant turn (the model learns to write it)


class Untrainable(Exception):
    """An example that cannot be trained on: `reason` (a short code) and `detail`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def encode_conversation(tok: ChatTokenizer, messages: list[dict[str, Any]],
                        end_of_turn: int | None) -> Encoded:
    """Ids and mask of a conversation, up to its last assistant turn."""
    ids: list[int] = []
    trained: list[bool] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _encode(tok, messages[:i], True)
        _extend(ids, trained, prompt, False, i)
        through = _encode(tok, messages[:i + 1], False)
        _extend(ids, trained, through, True, i)
        turn = through[len(prompt):]
        if end_of_turn is not None and end_of_turn not in turn:
            raise Untrainable("no_end_of_turn", f"turn {i}: the template does not close the "
                              "reply with the end-of-turn token, so the model cannot learn "
                              "to stop")
    if not any(trained):
        raise Untrainable("empty_mask", "no assistant tokens to train on")
    return Encoded(ids, trained)


def _encode(tok: ChatTokenizer, messages: list[dict[str, Any]], generation_prompt: bool
            ) -> list[int]:
    try:
        return tok.encode(tok.render(messages, add_generation_prompt=generation_prompt))
    except TemplateRenderError as e:
        raise Untrainable("template_error", str(e)) from None


def _extend(ids: list[int], trained: list[bool], longer: list[int], flag: bool,
            turn: int) -> None:
    if longer[:len(ids)] != ids:
        raise Untrainable("template_not_prefix_stable", f"turn {turn}: the rendered "
                          "conversation's ids do not continue those before it")
    trained += [flag] * (len(longer) - len(ids))
    ids += longer[len(ids):]
