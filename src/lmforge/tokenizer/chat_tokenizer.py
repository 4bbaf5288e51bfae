"""A tokenizer directory as a whole: tokenizer.json plus tokenizer_config.json's special
tokens and chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.model.tokenizer import TextCodec, load_tokenizer
from lmforge.tokenizer.chat import TemplateRenderError, end_of_turn_token, render_chat


class ChatTokenizer:
    """The tokenizer plus what tokenizer_config.json adds: special tokens and the chat
    template. Training and serving both render conversations through `render`, so the
    ids a fine-tuned model learns from are the ids the server sends it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.codec: TextCodec = load_tokenizer(directory)
        config_path = directory / "tokenizer_config.json"
        self.config: dict[str, Any] = (
            json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {})
        self.chat_template: str | None = self.config.get("chat_template") or _template_file(
            directory)
        self.bos_token = self._named("bos_token")
        self.eos_token = self._named("eos_token")
        self.eos_id = self.codec.token_id(self.eos_token) if self.eos_token else None

    def _named(self, key: str) -> str | None:
        value = self.config.get(key)
        return value.get("content") if isinstance(value, dict) else value

    def encode(self, text: str) -> list[int]:
        """Text to ids; special-token strings in it (chat role markers) become their ids."""
        return self.codec.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.codec.decode(ids)

    def token_text(self, token_id: int) -> str:
        return self.codec.tokenizer.decode([token_id], skip_special_tokens=False)

    @property
    def end_of_turn_id(self) -> int | None:
        """The token the chat template closes a reply with (what a chat model emits to stop)."""
        token = end_of_turn_token(self.config)
        return None if token is None else self.codec.token_id(token)

    def chat_stop_ids(self) -> frozenset[int]:
        """Where a reply ends: eos and the end-of-turn token."""
        return frozenset(i for i in (self.eos_id, self.end_of_turn_id) if i is not None)

    def stop_ids(self, extra_tokens: list[str]) -> frozenset[int]:
        """eos plus the extra stop tokens that this vocabulary has."""
        ids = {self.codec.token_id(t) for t in extra_tokens}
        if self.eos_id is not None:
            ids.add(self.eos_id)
        return frozenset(i for i in ids if i is not None)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The conversation as the chat template writes it; TemplateRenderError when the
        template rejects it. Only bos/eos are given to the template, as transformers does."""
        if not self.chat_template:
            raise TemplateRenderError(f"{self.directory} has no chat template")
        specials = {"bos_token": self.bos_token or "", "eos_token": self.eos_token or ""}
        return render_chat(self.chat_template, messages, specials, add_generation_prompt)


def _template_file(directory: Path) -> str | None:
    """The template transformers >= 4.47 saves beside tokenizer_config.json, not inside it."""
    path = directory / "chat_template.jinja"
    return path.read_text(encoding="utf-8") if path.is_file() else None
