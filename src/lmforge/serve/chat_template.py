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
