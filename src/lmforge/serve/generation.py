"""The inference routes' work: an OpenAI request in, engine requests out, a response back.

For each request: find the model (404), run the input filter (400 naming the rule), pick
the variant for this user, turn messages or prompts into token ids with that variant's
tokenizer and check them against its context (400), queue one engine request per choice
(503 when the queue is full), then answer at once or as server-sent events. Output goes
through the output filter on its way out. A request that fails on a non-primary variant
before anything was sent is run again on the primary. When the response is over (or the
client is gone) the job closes exactly once: engine requests are aborted if still running,
the audit record is filled in, the tokens reserved from the caller's rate limit before the
start and not used are given back, and a shadow (if any) gets a copy of the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from lmforge.model.sampling import SamplingParams
from lmforge.serve import openai_schema as api
from lmforge.serve.audit import AuditLog
from lmforge.serve.config import ServeConfig
from lmforge.serve.engine import (
    ContextLengthError,
    Delta,
    Engine,
    EngineRequest,
    EngineStopped,
    QueueFull,
)
from lmforge.serve.errors import APIError
from lmforge.serve.metrics import Metrics
from lmforge.serve.middleware import CLIENT_CLOSED, AuditRecord
from lmforge.serve.prompt_logprobs import echo_logprobs
from lmforge.serve.ratelimit import TokenBudget
from lmforge.serve.safety import (
    InputFilter,
    LogprobFilter,
    OutputFilter,
    ShownLogprob,
    StreamRedactor,
)
from lmforge.serve.sse import DISCONNECTED, merge_choices, sse, unless_disconnected
from lmforge.serve.variants import ModelGroup, Registry, Variant
from lmforge.tokenizer.chat import TemplateRenderError

log = logging.getLogger("lmforge.serve")
Body = api.CompletionRequest | api.ChatCompletionRequest
LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")  # valid JSON, not a character


@dataclass
class Run:
    """A request's engine sequences on one variant, and each choice's output so far (the
    engine is the one they were submitted to: a reload may give the variant a new one)."""

    variant: Variant
    engine: Engine
    seqs: list[EngineRequest]
    prompts: list[list[int]]
    redactors: list[StreamRedactor]
    token_text: Callable[[int], str]
    texts: list[str] = field(init=False)
    finish: list[str | None] = field(init=False)
    logprobs: list[list[ShownLogprob]] = field(init=False)
    logprob_filters: list[LogprobFilter] = field(init=False)
    echoes: list[dict[str, list] | None] = field(init=False)  # each prompt's own logprobs
    completion_tokens: list[int] = field(init=False)
    pending: list[tuple[AsyncIterator[Delta], Delta]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.seqs)
        self.texts, self.finish, self.echoes = [""] * n, [None] * n, [None] * n
        self.logprobs, self.completion_tokens = [[] for _ in range(n)], [0] * n
        self.logprob_filters = [LogprobFilter(r, self.token_text) for r in self.redactors]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def take(self, index: int, delta: Delta) -> tuple[str, list[ShownLogprob]]:
        """Fold a delta into choice `index`; the filtered text and logprobs to send now."""
        if delta.prompt_logprobs is not None:
            self.echoes[index] = echo_logprobs(self.prompts[index], delta.prompt_logprobs,
                                               self.variant.tokenizer,
                                               self.redactors[index].rules)
        text = self.redactors[index].push(delta.text)
        final = delta.finish_reason is not None
        if final:
            text += self.redactors[index].finish()
            self.finish[index] = api.finish_reason(delta)
        self.texts[index] += text
        self.logprob_filters[index].add(delta.logprobs, delta.text_ends)
        shown = self.logprob_filters[index].release(final)
        self.logprobs[index] += shown
        self.completion_tokens[index] = delta.completion_tokens
        return text, shown

    def abort(self) -> None:
        for seq in self.seqs:
            self.engine.abort(seq)


@dataclass
class Job:
    group: ModelGroup
    body: Body
    record: AuditRecord
    budget: TokenBudget  # the caller's tokens per minute: reserved, then settled
    run: Run | None = None
    closed: bool = False

    @property
    def chat(self) -> bool:
        return isinstance(self.body, api.ChatCompletionRequest)


class Generation:
    def __init__(self, cfg: ServeConfig, registry: Registry, metrics: Metrics,
                 audit: AuditLog | None) -> None:
        self.cfg, self.registry, self.metrics, self.audit = cfg, registry, metrics, audit
        self.input_filter = InputFilter(cfg.safety.input)
        self.output_filter = OutputFilter(cfg.safety.output)
        self.shadow_tasks: set[asyncio.Task] = set()

    async def handle(self, body: Body, request: Request, user: str,
                     budget: TokenBudget) -> Any:
        record: AuditRecord = request.scope["lmforge.audit"]
        record.model, record.prompt = body.model, _audit_prompt(body)
        group = self.registry.get(body.model)
        if group is None:
            raise APIError(404, f"the model {body.model!r} does not exist; GET /v1/models "
                           "lists the served models", "model_not_found", "model")
        self._check_limits(body)
        self._check_input(body, record, group)
        job = Job(group, body, record, budget)
        record.on_close.append(lambda: self._close(job, DISCONNECTED))
        job.run = self._start(group.pick(user), body, budget)
        if body.stream:
            await self._first_deltas(job)
            return StreamingResponse(self._events(job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
        return await self._answer(job, request)

    # ---- preparing ---------------------------------------------------------------------

    def _check_limits(self, body: Body) -> None:
        limits = self.cfg.limits
        if body.n > limits.max_n:
            raise APIError(400, f"n must be at most {limits.max_n}", "invalid_value", "n")
        tokens = _token_limit(body)
        if tokens is not None and tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens must be at most {limits.max_tokens} on this "
                           "server", "invalid_value", "max_tokens")
        if isinstance(body, api.CompletionRequest) and len(body.prompts()) > limits.max_prompts:
            raise APIError(400, f"at most {limits.max_prompts} prompts per request",
                           "invalid_value", "prompt")

    def _check_input(self, body: Body, record: AuditRecord, group: ModelGroup) -> None:
        if isinstance(body, api.ChatCompletionRequest):
            texts, param = [m.text() for m in body.messages], "messages"
        else:  # a prompt sent as token ids is checked as the text it decodes to
            tok, vocab = group.primary.tokenizer, group.primary.engine.vocab
            texts = [p if isinstance(p, str) else tok.decode([t for t in p if 0 <= t < vocab])
                     for p in body.prompts()]
            param = "prompt"
        rejection = self.input_filter.check(texts)
        record.filters["input"] = rejection.rule if rejection else "pass"
        if rejection is not None:
            self.metrics.filter_events.labels("input", rejection.rule).inc()
            raise APIError(400, rejection.message, "content_filter", param)

    def _encode(self, variant: Variant, body: Body) -> list[list[int]]:
        tok = variant.tokenizer
        if isinstance(body, api.ChatCompletionRequest):
            if not tok.chat_template:
                raise APIError(400, f"model {body.model!r} has no chat template; use "
                               "/v1/completions", "no_chat_template", "messages")
            try:
                text = tok.render(body.template_messages())
            except TemplateRenderError as e:
                raise APIError(400, str(e), "invalid_messages", "messages") from None
            return [_tokens(tok, text, "messages")]
        prompts, vocab = [], variant.engine.vocab
        for prompt in body.prompts():
            if isinstance(prompt, str):
                prompts.append(_tokens(tok, prompt, "prompt"))
            elif all(0 <= t < vocab for t in prompt):
                prompts.append(list(prompt))
            else:
                raise APIError(400, f"prompt token ids must be in [0, {vocab})",
                               "invalid_value", "prompt")
        return prompts

    def _start(self, variant: Variant, body: Body, budget: TokenBudget | None = None) -> Run:
        """Queue every choice of the request on `variant` (all of them or none), after
        reserving the most tokens they may use from `budget`."""
        engine, limit = variant.engine, _token_limit(body)
        jobs = []
        for prompt in self._encode(variant, body):
            try:
                ids, max_tokens = engine.fit(prompt, limit, body.truncate_prompt_tokens)
            except ContextLengthError as e:
                param = "messages" if isinstance(body, api.ChatCompletionRequest) else "prompt"
                raise APIError(400, str(e), "context_length_exceeded", param) from None
            jobs += [(ids, _params(body, max_tokens, c)) for c in range(body.n)]
        if budget is not None:
            budget.reserve(sum(len(ids) + params.max_tokens for ids, params in jobs))
        seqs: list[EngineRequest] = []
        loop = asyncio.get_running_loop()
        scored = body.logprobs if getattr(body, "echo", False) else None  # the prompt's too
        try:
            for ids, params in jobs:
                seqs.append(engine.submit(ids, params, loop, variant.adapter, scored))
        except BaseException as e:  # none queued: the reserved tokens all go back
            for seq in seqs:
                engine.abort(seq)
            if budget is not None:
                budget.settle(0)
            if not isinstance(e, QueueFull | EngineStopped):
                raise
            state = "overloaded" if isinstance(e, QueueFull) else "shutting down"
            raise APIError(503, f"the server is {state} ({e}); retry shortly", "overloaded",
                           retry_after=1) from None
        return Run(variant, engine, seqs, [ids for ids, _ in jobs],
                   [self.output_filter.stream() for _ in seqs], variant.tokenizer.token_text)

    def _fall_back(self, job: Job, error: str) -> bool:
        """Move a failed run from a non-primary arm to the primary; False if it was primary."""
        run, group = job.run, job.group
        if run.variant is group.primary:
            return False
        log.warning("model %s variant %s failed (%s); retrying on the primary", group.name,
                    run.variant.name, error)
        run.variant.report(False, group.fallback)
        self.metrics.variant_requests.labels(group.name, run.variant.name, "error").inc()
        self.metrics.fallbacks.labels(group.name, run.variant.name).inc()
        run.abort()
        job.run = self._start(group.primary, job.body)
        return True

    # ---- answering at once -------------------------------------------------------------

    async def _answer(self, job: Job, request: Request) -> JSONResponse:
        error = await unless_disconnected(request, self._collect(job.run))
        if error == DISCONNECTED:
            job.record.status = CLIENT_CLOSED
            self._close(job, DISCONNECTED)
            return JSONResponse({}, status_code=CLIENT_CLOSED)
        if error is not None and self._fall_back(job, error):
            error = await self._collect(job.run)
        self._close(job, error)
        if error is not None:
            raise APIError(500, f"generation failed: {error}", "generation_failed")
        return JSONResponse(self._response(job))

    async def _collect(self, run: Run) -> str | None:
        """Run every choice to its end; the first error, if any."""
        async def drain(index: int) -> str | None:
            async for delta in run.engine.deltas(run.seqs[index]):
                run.take(index, delta)
                if delta.error:
                    return delta.error
            return None

        results = await asyncio.gather(*(drain(i) for i in range(len(run.seqs))))
        return next((e for e in results if e is not None), None)

    def _response(self, job: Job) -> dict[str, Any]:
        run, body = job.run, job.body
        tok = run.variant.tokenizer
        choices = []
        for i in range(len(run.seqs)):
            if job.chat:
                logprobs = api.chat_logprobs(run.logprobs[i]) if body.logprobs else None
                choices.append({"index": i, "message": {"role": "assistant",
                                                        "content": run.texts[i]},
                                "logprobs": logprobs, "finish_reason": run.finish[i]})
                continue
            echo = tok.decode(run.prompts[i]) if body.echo else ""
            logprobs = (api.completion_logprobs(run.logprobs[i], len(echo), run.echoes[i])
                        if body.logprobs is not None else None)
            choices.append({"index": i, "text": echo + run.texts[i], "logprobs": logprobs,
                            "finish_reason": run.finish[i]})
        return {"id": api.response_id(job.chat, job.record.request_id),
                "object": "chat.completion" if job.chat else "text_completion",
                "created": api.now(), "model": body.model, "choices": choices,
                "usage": api.usage(run.prompt_tokens, sum(run.completion_tokens))}

    # ---- streaming ---------------------------------------------------------------------

    async def _first_deltas(self, job: Job) -> None:
        """Wait for each choice's first delta, so a failing variant can still be swapped
        for the primary before any byte is sent; the deltas are kept for the stream."""
        for _ in range(2):
            run = job.run
            iters = [run.engine.deltas(seq) for seq in run.seqs]
            firsts = await asyncio.gather(*(anext(it) for it in iters))
            run.pending = list(zip(iters, firsts, strict=True))
            error = next((d.error for d in firsts if d.error), None)
            if error is None or not self._fall_back(job, error):
                return

    async def _events(self, job: Job) -> AsyncIterator[str]:
        body, run = job.body, job.run
        rid, created = api.response_id(job.chat, job.record.request_id), api.now()
        obj = "chat.completion.chunk" if job.chat else "text_completion"
        error: str | None = DISCONNECTED
        echoed = [not getattr(body, "echo", False)] * len(run.seqs)
        try:
            if job.chat:
                for i in range(len(run.seqs)):
                    yield sse(api.chat_chunk(rid, created, body.model, i,
                                              {"role": "assistant", "content": ""}, None, None))
            async for index, delta in merge_choices(run.pending):
                if delta.error:
                    run.take(index, delta)
                    error = delta.error
                    yield sse(APIError(500, f"generation failed: {delta.error}",
                                        "generation_failed").body())
                    break
                chunk = self._chunk(job, rid, created, index, delta, echoed)
                if chunk is not None:
                    yield sse(chunk)
            else:
                error = None
                if body.include_usage:
                    yield sse(api.usage_chunk(rid, created, body.model, obj,
                                               run.prompt_tokens, sum(run.completion_tokens)))
            yield "data: [DONE]\n\n"
        finally:
            self._close(job, error)

    def _chunk(self, job: Job, rid: str, created: int, index: int, delta: Delta,
               echoed: list[bool]) -> dict | None:
        run, body = job.run, job.body
        before = sum(len(e.text) for e in run.logprobs[index])
        text, shown = run.take(index, delta)
        finish = run.finish[index]
        if not text and finish is None and not shown:
            return None
        tok = run.variant.tokenizer
        if job.chat:
            logprobs = api.chat_logprobs(shown) if body.logprobs else None
            content = {"content": text} if text or finish is None else {}
            return api.chat_chunk(rid, created, body.model, index, content, finish, logprobs)
        echo, prompt = "", None
        if not echoed[index]:
            echo, echoed[index] = tok.decode(run.prompts[index]), True
            prompt = run.echoes[index]
        logprobs = None
        if body.logprobs is not None:
            start = len(tok.decode(run.prompts[index])) if body.echo else 0
            logprobs = api.completion_logprobs(shown, start + before, prompt)
        return api.completion_chunk(rid, created, body.model, index, echo + text, finish,
                                    logprobs)

    # ---- the end of a request ----------------------------------------------------------

    def _close(self, job: Job, error: str | None) -> None:
        """Abort leftovers, fill the audit record, charge tokens, report health, mirror."""
        if job.closed or job.run is None:
            return
        job.closed = True
        run, record, group = job.run, job.record, job.group
        run.abort()
        record.variant = run.variant.name
        record.output = run.texts[0] if len(run.texts) == 1 else json.dumps(run.texts)
        record.prompt_tokens = run.prompt_tokens
        record.completion_tokens = sum(run.completion_tokens)
        record.error = error
        redacted: dict[str, int] = {}
        for redactor in run.redactors:
            for kind, n in redactor.counts.items():
                redacted[kind] = redacted.get(kind, 0) + n
                self.metrics.filter_events.labels("output", kind).inc(n)
        record.filters["output"] = redacted
        job.budget.settle(record.prompt_tokens + record.completion_tokens)
        failed = error is not None and error != DISCONNECTED
        run.variant.report(not failed, group.fallback)
        self.metrics.variant_requests.labels(group.name, run.variant.name,
                                             "error" if failed else "ok").inc()
        if not failed and group.shadow is not None and group.shadow.engine is not None:
            task = asyncio.get_running_loop().create_task(
                self._mirror(group, job.body, record.request_id))
            self.shadow_tasks.add(task)
            task.add_done_callback(self.shadow_tasks.discard)

    async def _mirror(self, group: ModelGroup, body: Body, request_id: str) -> None:
        """Run the request on the shadow and log its output next to the answer's."""
        shadow, started = group.shadow, time.perf_counter()
        row: dict[str, Any] = {"request_id": request_id, "model": group.name,
                               "variant": shadow.name, "prompt": _audit_prompt(body)}
        try:
            run = self._start(shadow, body)
            try:
                error = await self._collect(run)
            finally:
                run.abort()
            row.update(output=run.texts[0] if len(run.texts) == 1 else json.dumps(run.texts),
                       prompt_tokens=run.prompt_tokens,
                       completion_tokens=sum(run.completion_tokens),
                       status=500 if error else 200, error=error)
        except APIError as e:
            row.update(status=e.status, error=e.message)
        row["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        self.metrics.shadow.labels(group.name, shadow.name,
                                   "ok" if row["status"] == 200 else "error").inc()
        if self.audit is not None:
            self.audit.record_shadow(row)

    async def drain_shadows(self, timeout: float) -> None:
        """Let mirrored requests finish (shutdown), so their rows are written too."""
        if self.shadow_tasks:
            await asyncio.wait(set(self.shadow_tasks), timeout=timeout)


def _tokens(tok: Any, text: str, param: str) -> list[int]:
    """`text` as token ids. A lone surrogate (JSON can carry one, no tokenizer takes it) is
    the client's mistake: 400, with the prompt still audited."""
    lone = LONE_SURROGATE.search(text)
    if lone is not None:
        raise APIError(400, f"{param} holds the lone surrogate \\u{ord(lone.group()):04x}, "
                       "which is not a Unicode character; send well-formed text",
                       "invalid_value", param)
    return tok.encode(text)


def _token_limit(body: Body) -> int | None:
    if isinstance(body, api.ChatCompletionRequest):
        return body.token_limit
    return body.max_tokens


def _params(body: Body, max_tokens: int, choice: int) -> SamplingParams:
    if isinstance(body, api.ChatCompletionRequest):
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
    else:
        logprobs = body.logprobs
    return SamplingParams(
        max_tokens=max_tokens, temperature=body.temperature, top_k=max(body.top_k, 0),
        top_p=body.top_p, repetition_penalty=body.repetition_penalty,
        frequency_penalty=body.frequency_penalty, presence_penalty=body.presence_penalty,
        stop=body.stop_strings(), ignore_eos=body.ignore_eos,
        seed=None if body.seed is None else body.seed + choice, logprobs=logprobs)


def _audit_prompt(body: Body) -> str:
    if isinstance(body, api.ChatCompletionRequest):
        return json.dumps(body.template_messages(), ensure_ascii=False)
    prompts = body.prompts()
    if len(prompts) == 1 and isinstance(prompts[0], str):
        return prompts[0]
    return json.dumps(prompts, ensure_ascii=False)
