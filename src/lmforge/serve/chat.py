"""`lmforge chat CKPT_OR_URL`: a terminal chat that streams replies and keeps the history.

A path loads the model in this process (same engine as the server, no HTTP); a URL talks
to a running `lmforge serve` (or any OpenAI-compatible server) with streaming. When the
conversation outgrows the context, the oldest turns are dropped (the system message
stays). Commands: /reset forgets the conversation, /exit (or Ctrl-D) leaves.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from lmforge.errors import UserError

Messages = list[dict[str, str]]


class ContextFull(Exception):
    """The conversation does not fit the model's context any more."""


class LocalChat:
    """The engine in this process."""

    def __init__(self, path: Path, tokenizer: Path | None, max_tokens: int,
                 temperature: float, seed: int | None) -> None:
        from lmforge.serve.artifacts import load_served_model
        from lmforge.serve.config import EngineConfig
        from lmforge.serve.engine import Engine

        loaded = load_served_model(path, tokenizer)
        self.tok = loaded.tokenizer
        if not self.tok.chat_template:
            raise UserError(f"the tokenizer in {self.tok.directory} has no chat_template; "
                            "chat needs a tokenizer made by `lmforge tokenizer train`")
        cfg = EngineConfig(max_batch=1)
        self.engine = Engine(loaded.model, self.tok.decode, cfg,
                             stop_token_ids=self.tok.stop_ids(cfg.stop_tokens)).start()
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed

    def reply(self, messages: Messages) -> Iterator[str]:
        from lmforge.model.sampling import SamplingParams
        from lmforge.tokenizer.chat import render_chat

        text = render_chat(self.tok.chat_template, messages,
                           {"bos_token": self.tok.bos_token or "",
                            "eos_token": self.tok.eos_token or ""})
        prompt = self.tok.encode(text)
        room = self.engine.context - len(prompt)
        if room < min(self.max_tokens, 16):
            raise ContextFull
        params = SamplingParams(max_tokens=min(self.max_tokens, room),
                                temperature=self.temperature, seed=self.seed)
        for delta in self.engine.generate(prompt, params):
            if delta.error:
                raise UserError(f"generation failed: {delta.error}")
            yield delta.text

    def close(self) -> None:
        self.engine.stop()


class RemoteChat:
    """An OpenAI-compatible server, streamed over HTTP."""

    def __init__(self, url: str, model: str | None, api_key: str | None, max_tokens: int,
                 temperature: float, seed: int | None) -> None:
        import httpx

        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(10.0, read=300.0))
        self.model = model or self._first_model()
        self.options = {"max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            self.options["seed"] = seed

    def _first_model(self) -> str:
        import httpx

        try:
            response = self.http.get(f"{self.base}/models")
        except httpx.HTTPError as e:
            raise UserError(f"cannot reach {self.base} ({e}); is `lmforge serve` running?") \
                from None
        _raise_for_error(response.status_code, response.text)
        models = response.json().get("data") or []
        if not models:
            raise UserError(f"{self.base} serves no models")
        return models[0]["id"]

    def reply(self, messages: Messages) -> Iterator[str]:
        body = {"model": self.model, "messages": messages, "stream": True, **self.options}
        with self.http.stream("POST", f"{self.base}/chat/completions", json=body) as response:
            if response.status_code != 200:
                text = response.read().decode("utf-8", "replace")
                if "context_length_exceeded" in text:
                    raise ContextFull
                _raise_for_error(response.status_code, text)
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    raise UserError(f"the server failed: {event['error']['message']}")
                for choice in event.get("choices", []):
                    yield choice.get("delta", {}).get("content") or ""

    def close(self) -> None:
        self.http.close()


def _raise_for_error(status: int, text: str) -> None:
    if status == 200:
        return
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text[:200]
    hint = " (pass --api-key or set LMFORGE_API_KEY)" if status == 401 else ""
    raise UserError(f"the server answered {status}: {message}{hint}")


def open_backend(target: str, model: str | None, api_key: str | None, tokenizer: str | None,
                 max_tokens: int, temperature: float, seed: int | None):
    if target.startswith(("http://", "https://")):
        key = api_key or os.environ.get("LMFORGE_API_KEY")
        return RemoteChat(target, model, key, max_tokens, temperature, seed)
    return LocalChat(Path(target), Path(tokenizer) if tokenizer else None, max_tokens,
                     temperature, seed)


def chat_loop(backend, system: str | None, read: Callable[[str], str] | None = None,
              out: TextIO | None = None) -> int:
    """Read a line, stream the reply, repeat; returns the number of replies."""
    read = read or input
    out = out or sys.stdout
    history: Messages = [{"role": "system", "content": system}] if system else []
    replies = 0
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            out.write("\n")
            return replies
        if line in ("/exit", "/quit"):
            return replies
        if line == "/reset":
            del history[1 if system else 0:]
            out.write("(conversation cleared)\n")
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        out.write("assistant> ")
        reply = _reply_fitting(backend, history, out)
        out.write("\n")
        out.flush()
        history.append({"role": "assistant", "content": reply})
        replies += 1


def _reply_fitting(backend, history: Messages, out: TextIO) -> str:
    """Stream a reply, dropping the oldest turns while the conversation is too long."""
    while True:
        try:
            pieces = []
            for piece in backend.reply(history):
                pieces.append(piece)
                out.write(piece)
                out.flush()
            return "".join(pieces)
        except ContextFull:
            first = 1 if history[0]["role"] == "system" else 0
            if len(history) - first <= 1:
                raise UserError("your message alone does not fit the model's context; "
                                "write a shorter one") from None
            del history[first:first + 2]
