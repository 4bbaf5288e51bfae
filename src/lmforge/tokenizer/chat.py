"""Chat messages to prompt text with the tokenizer's own Jinja template.

Rendered the way transformers' `apply_chat_template` renders it (sandboxed Jinja with
trim_blocks and lstrip_blocks, `raise_exception`, the `{% generation %}` tag that marks
assistant text for training, and the special tokens as variables), so a served model sees
exactly the text it was fine-tuned on.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError, nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateRenderError(ValueError):
    """The template refused the messages (a role it does not know, a bad order, ...)."""


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` renders its body unchanged."""

    tags = frozenset({"generation"})

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise(message: str) -> None:
    raise TemplateRenderError(message)


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent,
                                                                   ensure_ascii=False)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat(template: str, messages: list[dict[str, str]],
                special_tokens: dict[str, str | None], add_generation_prompt: bool = True) -> str:
    """The prompt text; TemplateRenderError when the template rejects the conversation."""
    try:
        return _compile(template).render(messages=messages,
                                         add_generation_prompt=add_generation_prompt,
                                         **special_tokens)
    except TemplateRenderError:
        raise
    except TemplateError as e:
        raise TemplateRenderError(f"the chat template failed: {e}") from None


def special_token_strings(config: dict[str, Any]) -> dict[str, str | None]:
    """bos/eos/pad/unk tokens of a tokenizer_config.json as the template's variables."""
    out: dict[str, str | None] = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(key)
        out[key] = value.get("content") if isinstance(value, dict) else value
    return out


def end_of_turn_token(config: dict[str, Any], added_tokens: list[str] | None = None
                      ) -> str | None:
    """The special token the chat template closes an assistant turn with (`<|end|>`,
    `<|im_end|>`, `<|eot_id|>`, `</s>`...): what a chat model must learn to emit to stop."""
    template = config.get("chat_template")
    if not isinstance(template, str):
        return None
    specials = special_token_strings(config)
    marker = "\x00lmforge-reply\x00"
    try:
        text = render_chat(template, [{"role": "user", "content": "hi"},
                                      {"role": "assistant", "content": marker}],
                           specials, add_generation_prompt=False)
    except TemplateRenderError:
        return None
    after = text.split(marker)[-1].lstrip(" \n")
    candidates = [t for t in (*specials.values(), *config.get("additional_special_tokens", []),
                              *(added_tokens or [])) if isinstance(t, str) and t]
    for token in sorted(candidates, key=len, reverse=True):
        if after.startswith(token):
            return token
    return None
