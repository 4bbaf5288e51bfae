"""OpenAI API shapes: validated request bodies and the JSON of responses and stream chunks.

Requests are pydantic models with the OpenAI names, ranges and defaults (max_tokens 16 for
completions, temperature 1, ...) plus vLLM's common extensions (top_k, repetition_penalty,
ignore_eos, truncate_prompt_tokens). Unknown fields are rejected, naming the field. A number
outside its range (NaN and infinity included) is a 400 naming the field and the range; the
sampling ranges are the engine's own (`sampling.RANGES`), which it checks again.
Responses are built as plain dicts: they are written once per token when streaming.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from lmforge.model.sampling import RANGES, range_problem
from lmforge.serve.engine import Delta
from lmforge.serve.safety import ShownLogprob

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256  # per string: the text stream looks for each one's start after every token
# (lowest, highest, lowest excluded) of every numeric field: the engine's, and the API's own
LIMITS: dict[str, tuple[float, float, bool]] = {
    **RANGES,
    "max_tokens": (0, math.inf, False),  # 0: completions echo the prompt only; chat needs 1
    "max_completion_tokens": RANGES["max_tokens"],
    "logprobs": (0, 20, False),  # vLLM's default max_logprobs; OpenAI's top_logprobs cap
    "top_logprobs": (0, 20, False),
    "n": (1, math.inf, False),
    "best_of": (1, math.inf, False),
    "seed": (-(2**63), 2**63 - 1, False),  # an int64, as vLLM takes it
    "truncate_prompt_tokens": (1, math.inf, False),
}


def limited(name: str, default: Any) -> Any:
    """A Field with LIMITS[name] as its bounds (they show in the OpenAPI schema)."""
    low, high, low_excluded = LIMITS[name]
    bounds: dict[str, float] = {"gt" if low_excluded else "ge": low}
    if high != math.inf:
        bounds["le"] = high
    return Field(default, **bounds)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1)
    temperature: float = limited("temperature", 1.0)
    top_p: float = limited("top_p", 1.0)
    top_k: int = limited("top_k", 0)  # vLLM extension; 0 or -1: off, above the vocab: all
    n: int = limited("n", 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: float = limited("presence_penalty", 0.0)
    frequency_penalty: float = limited("frequency_penalty", 0.0)
    repetition_penalty: float = limited("repetition_penalty", 1.0)
    seed: int | None = limited("seed", None)
    user: str | None = Field(None, max_length=256)
    ignore_eos: bool = False
    truncate_prompt_tokens: int | None = limited("truncate_prompt_tokens", None)
    logit_bias: dict[str, float] | None = None

    @field_validator(*LIMITS, mode="before", check_fields=False)
    @classmethod
    def _in_range(cls, value: Any, info: ValidationInfo) -> Any:
        """A number outside its range, NaN and infinity included, named with the range
        (pydantic's own message names one bound, and says NaN is above 2)."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = range_problem(value, *LIMITS[info.field_name])
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        strings = [stop] if isinstance(stop, str) else stop or []
        if len(strings) > MAX_STOP_STRINGS:
            raise ValueError(f"takes at most {MAX_STOP_STRINGS} strings, got {len(strings)}")
        if any(len(s) > MAX_STOP_CHARS for s in strings):
            raise ValueError(f"strings must have at most {MAX_STOP_CHARS} characters each")
        return stop

    @model_validator(mode="after")
    def _supported(self) -> _Request:
        if self.logit_bias:
            raise ValueError("logit_bias is not supported by this server; leave it out")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = limited("max_tokens", 16)
    logprobs: int | None = limited("logprobs", None)
    echo: bool = False
    best_of: int | None = limited("best_of", None)
    suffix: str | None = None

    @model_validator(mode="after")
    def _completion_only(self) -> CompletionRequest:
        if self.best_of not in (None, self.n):
            raise ValueError("best_of is not supported; leave it out or set it equal to n")
        if self.suffix:
            raise ValueError("suffix is not supported by this server; leave it out")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt is an empty list; send a string or token ids")
        return self

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Request):
    messages: list[Message] = Field(..., min_length=1)
    max_tokens: int | None = limited("max_tokens", None)
    max_completion_tokens: int | None = limited("max_completion_tokens", None)
    logprobs: bool = False
    top_logprobs: int | None = limited("top_logprobs", None)

    @field_validator("max_tokens")
    @classmethod
    def _some_tokens(cls, max_tokens: int | None) -> int | None:
        """0 is for completions' echo; a chat reply needs a token."""
        if max_tokens == 0:
            raise ValueError("must be at least 1 for chat completions, got 0")
        return max_tokens

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def template_messages(self) -> list[dict[str, str]]:
        """Messages as the chat template reads them ('developer' is OpenAI's new 'system')."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in self.messages]


# ---- responses ------------------------------------------------------------------------

def response_id(chat: bool, request_id: str) -> str:
    """The response's id carries the audit log's request id, so `POST /v1/feedback` with
    it finds the request (and its A/B variant)."""
    return f"{'chatcmpl' if chat else 'cmpl'}-{request_id}"


def request_of(response: str) -> str | None:
    """The request id inside a response id, or None when it is not one of ours."""
    prefix, _, request = response.partition("-")
    ok = prefix in ("cmpl", "chatcmpl") and len(request) == 32
    return request if ok and all(c in "0123456789abcdef" for c in request) else None


class FeedbackRequest(BaseModel):
    """A user's score for one response: thumbs (0/1), stars (1-5), any number in range."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=64, description="the response's id (cmpl-... or chatcmpl-...)")
    score: float = Field(ge=-1e6, le=1e6, allow_inf_nan=False)
    comment: str | None = Field(None, max_length=4000)


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def model_card(name: str, created: int, context: int, parent: str | None = None
               ) -> dict[str, Any]:
    """A model's card; an adapter names its base model as `parent` (as vLLM's do)."""
    return {"id": name, "object": "model", "created": created, "owned_by": "lmforge",
            "max_model_len": context, "root": parent or name, "parent": parent}


def completion_logprobs(entries: list[ShownLogprob], offset: int,
                        prompt: dict[str, list] | None = None) -> dict[str, Any]:
    """The completions API's logprobs object; `offset` is where this text starts, after
    the echoed `prompt`'s own logprobs object when there is one."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.text)
    shown = {
        "tokens": [e.text for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [dict(e.top) for e in entries],
        "text_offset": offsets,
    }
    return shown if prompt is None else {key: prompt[key] + shown[key] for key in shown}


def chat_logprobs(entries: list[ShownLogprob]) -> dict[str, Any]:
    def item(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [
        {**item(e.text, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
        for e in entries
    ]}


def completion_chunk(rid: str, created: int, model: str, index: int, text: str,
                     finish_reason: str | None, logprobs: dict | None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": logprobs,
                         "finish_reason": finish_reason}]}


def chat_chunk(rid: str, created: int, model: str, index: int, delta: dict[str, str],
               finish_reason: str | None, logprobs: dict | None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                         "finish_reason": finish_reason}]}


def usage_chunk(rid: str, created: int, model: str, obj: str, prompt_tokens: int,
                completion_tokens: int) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def finish_reason(delta: Delta) -> str:
    return "length" if delta.finish_reason == "length" else "stop"
