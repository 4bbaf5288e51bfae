"""Sampling isolation (issue 10 item 5): one request's parameters or logits never fail the
other requests in its batch. Hostile values go to the sampler, the engine core and the HTTP
API beside normal requests, whose greedy output must be what it is when they run alone."""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from lmforge.model.sampling import Sampler, SamplingParams, validate
from lmforge.serve import core
from lmforge.serve.app import build_app
from lmforge.serve.artifacts import load_served_model
from lmforge.serve.config import EngineConfig, ServeConfig
from lmforge.serve.textstream import TextStream
from test_serve_support import ServerThread, make_model_dir, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
NAN, INF = math.nan, math.inf
GREEDY = dict(temperature=0, ignore_eos=True)

# values of the right type that no request should be able to turn into a crash: sent to the
# sampler as they are (it clamps), and to the core (it refuses the out-of-range ones alone)
HOSTILE = [
    dict(temperature=1e-40), dict(temperature=5e-324), dict(temperature=NAN),
    dict(temperature=INF), dict(temperature=-1.0), dict(temperature=1e308),
    dict(top_k=10**20), dict(top_k=-10**20), dict(top_k=2**63),
    dict(top_p=0.0), dict(top_p=1e-300), dict(top_p=NAN), dict(top_p=-1.0), dict(top_p=7.0),
    dict(repetition_penalty=1e-300), dict(repetition_penalty=0.0),
    dict(repetition_penalty=-2.0), dict(repetition_penalty=NAN), dict(repetition_penalty=INF),
    dict(frequency_penalty=1e308), dict(frequency_penalty=-INF), dict(presence_penalty=NAN),
    dict(presence_penalty=-1e308, frequency_penalty=1e308, repetition_penalty=5e-324),
    dict(logprobs=10**20), dict(logprobs=0), dict(seed=2**200), dict(seed=-(2**70)),
    dict(temperature=5e-324, top_k=10**20, top_p=1e-300, logprobs=10**6),
]


# ---- the sampler ----------------------------------------------------------------------

def test_the_sampler_clamps_every_value_and_never_raises() -> None:
    vocab = 11
    logits = torch.linspace(-3.0, 4.0, vocab).flip(0).repeat(2, 1)  # token 0 is the best
    logits[:, 5] = 3.9
    for params in HOSTILE:
        sampler = Sampler(slots=2, vocab=vocab, device=torch.device("cpu"))
        sampler.add([0, 1], [SamplingParams(max_tokens=4, **params),
                             SamplingParams(max_tokens=4, temperature=0)], [[0, 5], [1]])
        for _ in range(3):
            tokens, logprobs = sampler.sample(logits)
            assert 0 <= tokens[0].item() < vocab, params
            assert tokens[1].item() == 0, params  # the normal greedy row is untouched
            for entry in logprobs or []:
                if entry is not None:
                    values = [entry.logprob] + [lp for _, lp in entry.top]
                    assert all(math.isfinite(v) for v in values), params
                    assert len(entry.top) <= vocab


def test_clamped_values_mean_their_limits() -> None:
    vocab = 6
    logits = torch.tensor([[0.3, 2.0, 1.9, -1.0, 0.5, 1.0]])

    def draws(n: int = 50, **params) -> list[int]:
        sampler = Sampler(slots=1, vocab=vocab, device=torch.device("cpu"))
        sampler.add([0], [SamplingParams(max_tokens=1, seed=3, **params)], [[2]])
        return [sampler.sample(logits)[0].item() for _ in range(n)]

    assert draws(temperature=1e-40) == draws(temperature=5e-324) == [1] * 50  # greedy
    assert draws(top_k=10**20) == draws(top_k=0) == draws(top_k=vocab)  # all of the vocab
    assert len(set(draws())) > 2
    assert draws(top_p=1e-300) == [1] * 50  # the top token only
    # a tiny repetition penalty multiplies the seen token's positive logit (1.9 / 0.01)
    assert draws(temperature=0, repetition_penalty=1e-300) == [2] * 50


def test_rows_with_non_finite_logits_are_marked_alone() -> None:
    sampler = Sampler(slots=5, vocab=4, device=torch.device("cpu"))
    normal = torch.tensor([0.1, 3.0, 0.2, -1.0])
    logits = torch.stack([normal, normal.clone(), normal.clone(), normal.clone(), normal])
    logits[0, 2] = NAN
    logits[1, 0] = INF
    logits[2] = -INF
    logits[3, 0] = -INF  # one impossible token: still a fine row
    for params in (dict(temperature=0), dict(temperature=1.0, top_p=0.9, seed=1),
                   dict(temperature=0.7, repetition_penalty=1.3, logprobs=2, seed=2)):
        sampler.add(list(range(5)), [SamplingParams(max_tokens=1, **params)] * 5, [[1]] * 5)
        tokens, _ = sampler.sample(logits)
        assert tokens[:3].tolist() == [-1, -1, -1], params
        assert 0 <= tokens[3].item() < 4 and 0 <= tokens[4].item() < 4, params


def test_validate_names_the_field_and_its_range() -> None:
    cases = {
        "temperature must be in [0, 2], got nan": dict(temperature=NAN),
        "temperature must be in [0, 2], got inf": dict(temperature=INF),
        "top_p must be in (0, 1], got 0.0": dict(top_p=0.0),
        "top_k must be at least -1, got -5": dict(top_k=-5),
        "repetition_penalty must be in (0, 10], got 0.0": dict(repetition_penalty=0.0),
        "frequency_penalty must be in [-2, 2], got -inf": dict(frequency_penalty=-INF),
        "max_tokens must be at least 1, got 0": dict(max_tokens=0),
        "logprobs must be at least 0, got -1": dict(logprobs=-1),
        "top_k must be an integer, got 2.5": dict(top_k=2.5),
        "temperature must be a number, got '1'": dict(temperature="1"),
        "seed must be an integer, got 1.5": dict(seed=1.5),
    }
    for message, params in cases.items():
        with pytest.raises(ValueError) as e:
            validate(SamplingParams(**{"max_tokens": 4, **params}))
        assert str(e.value) == message
    for params in (dict(temperature=1e-40), dict(top_k=10**20), dict(repetition_penalty=1e-300),
                   dict(seed=2**100), dict(logprobs=10**6), dict(top_p=5e-324)):
        validate(SamplingParams(max_tokens=4, **params))  # in range: clamped, not refused


# ---- the engine core ------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("isolation"))


@pytest.fixture(scope="module")
def served(model_dir: Path):
    return load_served_model(model_dir)


def run_core(served, requests: dict, joins: dict | None = None, hook=None,
             max_batch: int = 8, steps: int = 200) -> dict:
    """Run requests (rid -> (prompt, params)) through an in-process EngineCore, each added
    at its step in `joins` (default 0); `hook(engine_core)` may wrap its runner. Each
    request's (tokens, finish reason, error)."""
    joins = joins or {}
    out = {rid: [[], None, None] for rid in requests}  # an error is kept once it comes
    with torch.inference_mode():
        engine_core = core.EngineCore(served.model, EngineConfig(max_batch=max_batch),
                                      torch.float32, frozenset())
        if hook is not None:
            hook(engine_core)
        for step in range(steps):
            for rid, (prompt, params) in requests.items():
                if joins.get(rid, 0) == step:
                    engine_core.add(rid, prompt, params)
            for rid, token, _, finish, error in engine_core.step():
                if error is None:
                    out[rid][0].append(token)
                    out[rid][1] = finish
                else:
                    out[rid][1:] = ["error", error]
            if step > max(joins.values(), default=0) and not engine_core.busy:
                break
    assert not engine_core.busy, "requests were left running"
    return {rid: tuple(v) for rid, v in out.items()}


def normal_requests(served) -> dict:
    tok = served.tokenizer
    return {rid: (tok.encode(text), SamplingParams(max_tokens=20, **GREEDY))
            for rid, text in enumerate(["the quick brown", "where is", "hello there"])}


def test_hostile_requests_fail_alone_in_the_core(served) -> None:
    normal = normal_requests(served)
    alone = run_core(served, normal)
    prompt, context = served.tokenizer.encode("the lazy"), served.model.cfg.max_seq_len
    vocab = served.model.cfg.vocab
    hostile = {100 + i: (prompt, SamplingParams(max_tokens=6, ignore_eos=True, **params))
               for i, params in enumerate(HOSTILE)}
    hostile.update({
        200: (prompt, SamplingParams(max_tokens=10**30, **GREEDY)),  # ends at the context
        201: (prompt, SamplingParams(max_tokens=-3)),
        202: ([1, vocab, 2], SamplingParams(max_tokens=4)),
        203: ([-1], SamplingParams(max_tokens=4)),
        204: ([], SamplingParams(max_tokens=4)),
        205: ([1] * context, SamplingParams(max_tokens=4)),
        206: ([1.5, 2], SamplingParams(max_tokens=4)),
    })
    joins = {rid: 2 for rid in hostile}  # they join the running normal ones
    result = run_core(served, {**normal, **hostile}, joins)
    for rid in normal:
        assert result[rid] == alone[rid]
        assert result[rid][1] == "length" and len(result[rid][0]) == 20
    refused = {rid for rid, (_, _, error) in result.items() if error is not None}
    for rid, (prompt_ids, params) in hostile.items():
        try:
            validate(params)
            valid = 0 < len(prompt_ids) < context and all(
                type(t) is int and 0 <= t < vocab for t in prompt_ids)
        except ValueError:
            valid = False
        assert (rid not in refused) == valid, (rid, params, result[rid])
        if rid in refused:
            assert result[rid][2].startswith("invalid request: ")
            assert result[rid][0] == []
        else:
            assert all(0 <= t < vocab for t in result[rid][0])
    assert len(result[200][0]) == context - len(prompt) and result[200][1] == "length"
    assert "max_tokens must be at least 1" in result[201][2]
    assert f"prompt token ids must be integers in [0, {vocab})" in result[202][2]
    assert "the prompt has 0 tokens" in result[204][2]


def test_a_duplicate_request_id_is_refused_alone(served) -> None:
    normal = normal_requests(served)
    alone = run_core(served, normal)

    def duplicate(engine_core) -> None:
        step = engine_core.step

        def step_and_add() -> list:
            engine_core.add(0, [1, 2, 3], SamplingParams(max_tokens=4))
            engine_core.step = step
            return step()

        engine_core.step = step_and_add

    result = run_core(served, normal, hook=duplicate)
    assert result[1] == alone[1] and result[2] == alone[2]
    tokens, finish, error = result[0]  # the first request 0 runs on, untouched
    assert (tokens, finish) == alone[0][:2]
    assert error == "invalid request: request id 0 is already in use"


def poison(victim: int, mode: str):
    """A hook that makes the engine core's forward pass raise when request `victim`'s prompt
    is in it (mode "raise"), or turns its logits row to NaN at its fourth token ("nan")."""
    def hook(engine_core) -> None:
        step, made = engine_core.runner.step, [0]

        def wrapped(decode, pack, adapters=None):
            req = engine_core.requests.get(victim)
            if mode == "raise" and pack is not None and req is not None \
                    and req.slot in pack.slots.tolist():
                raise RuntimeError("this prompt breaks the forward pass")
            logits, first = step(decode, pack, adapters)
            if mode == "nan" and req is not None and decode is not None \
                    and req.slot < logits.size(0) and req.position > 0:
                made[0] += 1
                if made[0] == 3:
                    logits[req.slot] = NAN
            return logits, first

        engine_core.runner.step = wrapped
    return hook


@pytest.mark.parametrize("mode", ["raise", "nan"])
@pytest.mark.parametrize("sampled", [False, True])
def test_a_failing_row_fails_only_its_request(served, mode: str, sampled: bool) -> None:
    """The victim joins a running batch in the same pack as another new prompt: with a
    forward pass that raises for it, or NaN logits for its row, it fails alone; every other
    request (running or joining beside it) gives its greedy output as when alone."""
    normal = normal_requests(served)
    victim_params = SamplingParams(max_tokens=20, temperature=0.8 if sampled else 0,
                                   repetition_penalty=1.2, logprobs=2, seed=5, ignore_eos=True)
    requests = {**normal, 9: (served.tokenizer.encode("the dog"), victim_params)}
    joins = {1: 3, 9: 3}  # request 1 and the victim are prefilled together, beside 0 and 2
    alone = {rid: run_core(served, {rid: normal[rid]})[rid] for rid in normal}
    result = run_core(served, requests, joins, hook=poison(9, mode))
    for rid in normal:
        assert result[rid] == alone[rid], rid
    tokens, finish, error = result[9]
    assert finish == "error"
    if mode == "raise":
        assert tokens == [] and "this prompt breaks the forward pass" in error
    else:
        assert len(tokens) == 3 and "not finite" in error


def test_a_decode_pass_that_raises_fails_its_rows_and_the_core_goes_on(served) -> None:
    normal = normal_requests(served)

    def once(engine_core) -> None:
        step, raised = engine_core.runner.step, []

        def wrapped(decode, pack, adapters=None):
            if decode is not None and not raised:
                raised.append(1)
                raise RuntimeError("out of memory, say")
            return step(decode, pack, adapters)

        engine_core.runner.step = wrapped

    late = {5: (served.tokenizer.encode("the quick brown"), SamplingParams(max_tokens=20,
                                                                          **GREEDY))}
    result = run_core(served, {**normal, **late}, joins={5: 4}, hook=once)
    failed = [rid for rid, (_, _, error) in result.items() if error is not None]
    assert failed == [0, 1, 2] and "out of memory, say" in result[0][2]
    assert result[5] == run_core(served, late)[5]  # a later request still runs


# ---- the HTTP API ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(model_dir: Path, one_thread):  # noqa: F811
    cfg = ServeConfig(models=[{"name": "tiny", "path": model_dir}],
                      engine={"max_batch": 24, "threads": 1},
                      audit={"path": model_dir.parent / "audit.sqlite"})
    app = build_app(cfg)
    thread = ServerThread(app)
    yield thread.start()
    thread.stop()


def post(url: str, body: dict | str) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(url + "/v1/completions", content=content, timeout=60,
                      headers={"content-type": "application/json"})


BAD_FIELDS = [  # (field, raw JSON value, text the 400 must hold)
    ("temperature", "NaN", "[0, 2]"), ("temperature", "Infinity", "[0, 2]"),
    ("temperature", "-1e-30", "[0, 2]"), ("temperature", "2.0001", "[0, 2]"),
    ("temperature", "1e308", "[0, 2]"), ("top_p", "0", "(0, 1]"), ("top_p", "NaN", "(0, 1]"),
    ("top_p", "1.5", "(0, 1]"), ("top_k", "-2", "at least -1"),
    ("top_k", "-100000000000000000000", "at least -1"),
    ("presence_penalty", "-Infinity", "[-2, 2]"), ("frequency_penalty", "2.5", "[-2, 2]"),
    ("repetition_penalty", "0", "(0, 10]"), ("repetition_penalty", "-1e-300", "(0, 10]"),
    ("repetition_penalty", "1e308", "(0, 10]"), ("logprobs", "21", "[0, 20]"),
    ("logprobs", "100000000000000000000", "[0, 20]"), ("logprobs", "-1", "[0, 20]"),
    ("seed", "18446744073709551616", "9223372036854775807"),
    ("seed", "-9223372036854775809", "-9223372036854775808"),
    ("n", "0", "at least 1"), ("n", "1000000000000000000000", "n must be at most 8"),
    ("max_tokens", "-1", "at least 0"), ("max_tokens", "10000000000000000000000", "at most"),
    ("best_of", "0", "at least 1"), ("truncate_prompt_tokens", "0", "at least 1"),
    ("stop", json.dumps(["x"] * 17), "at most 16 strings"),
    ("stop", json.dumps("y" * 300), "at most 256 characters"),
    ("stop", json.dumps(["z"] * 10**4), "at most 16 strings"),
]


def test_out_of_range_values_get_a_400_naming_field_and_range(server) -> None:
    for field, raw, text in BAD_FIELDS:
        body = f'{{"model": "tiny", "prompt": "the", "max_tokens": 3, "{field}": {raw}}}'
        if field == "max_tokens":
            body = f'{{"model": "tiny", "prompt": "the", "max_tokens": {raw}}}'
        response = post(server, body)
        assert response.status_code == 400, (field, raw, response.text)
        error = response.json()["error"]
        assert error["param"] == field and text in error["message"], (field, raw, error)
    chat = httpx.post(server + "/v1/chat/completions", timeout=60, json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logprobs": True,
        "top_logprobs": 10**6})
    assert chat.status_code == 400 and "[0, 20]" in chat.json()["error"]["message"]


def stream_text(url: str, body: dict) -> str:
    text = []
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True},
                      timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choice = json.loads(line.removeprefix("data: "))["choices"][0]
                assert choice["finish_reason"] in (None, "length"), choice
                text.append(choice["text"])
    return "".join(text)


EXTREME = [  # in range, so served; the sampler clamps them
    dict(temperature=1e-40), dict(temperature=5e-324), dict(top_k=10**20),
    dict(repetition_penalty=1e-300), dict(repetition_penalty=5e-324, temperature=1.5),
    dict(top_p=1e-300, temperature=2), dict(seed=2**63 - 1, n=4, temperature=1),
    dict(seed=-(2**63), temperature=1, top_k=10**30), dict(logprobs=20, top_k=-1),
    dict(frequency_penalty=-2, presence_penalty=-2, repetition_penalty=1e-300),
    dict(stop=["q" * 256] * 16, temperature=1e-300),
]


def test_extreme_values_beside_normal_streams_over_http(server) -> None:
    """Extreme requests are sent without a pause from four threads, from before the long
    greedy streams start until they end; the streams' text is what it is alone, and every
    extreme request is served."""
    normal = [dict(model="tiny", prompt=p, max_tokens=100, temperature=0, ignore_eos=True)
              for p in ("the quick brown", "where is", "the lazy")]
    alone = [stream_text(server, body) for body in normal]
    done = threading.Event()
    served: list[tuple[float, dict, httpx.Response]] = []

    def hammer(first: int) -> None:
        for i in itertools.count(first, 4):
            if done.is_set():
                return
            params = EXTREME[i % len(EXTREME)]
            body = dict(model="tiny", prompt=["the", "hi", "dog"][i % 3], max_tokens=8,
                        ignore_eos=True, **params)
            response = post(server, body)
            served.append((time.monotonic(), params, response))

    hammers = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in hammers:
        t.start()
    while len(served) < len(EXTREME) and all(t.is_alive() for t in hammers):
        time.sleep(0.01)
    results: list[str | None] = [None] * len(normal)

    def run(i: int) -> None:
        results[i] = stream_text(server, normal[i])

    streams = [threading.Thread(target=run, args=(i,)) for i in range(len(normal))]
    began = time.monotonic()
    for t in streams:
        t.start()
    for t in streams:
        t.join(60)
    ended = time.monotonic()
    done.set()
    for t in hammers:
        t.join(60)
    assert results == alone
    assert sum(began < at < ended for at, _, _ in served) >= 3  # served beside the streams
    for _, params, response in served:
        assert response.status_code == 200, (params, response.text)
        choices = response.json()["choices"]
        assert len(choices) == params.get("n", 1)
        for choice in choices:
            assert choice["finish_reason"] in ("stop", "length")
            if params.get("logprobs"):
                assert all(math.isfinite(v) for top in choice["logprobs"]["top_logprobs"]
                           for v in top.values())


# ---- stop strings ---------------------------------------------------------------------

def reference_stream(pieces: list[str], stops: tuple[str, ...]) -> list[str]:
    """What each piece releases by the definition: text up to the first stop string,
    holding back the longest tail that begins one."""
    text, sent, out = "", 0, []
    for piece in pieces:
        text += piece
        hits = [i for s in stops if (i := text.find(s)) >= 0]
        if hits:
            out.append(text[sent:min(hits)])
            return out
        held = max((n for n in range(1, len(text) + 1)
                    if any(s.startswith(text[-n:]) for s in stops)), default=0)
        end = max(len(text) - held, sent)
        out.append(text[sent:end])
        sent = end
    return out


def test_stop_strings_hold_back_exactly_what_could_start_one() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        stops = tuple("".join(rng.choice("ab") for _ in range(rng.randint(1, 7)))
                      for _ in range(rng.randint(1, 4)))
        pieces = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 3)))
                  for _ in range(rng.randint(1, 12))]
        vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
        words = {i: p for p, i in vocab.items()}
        stream = TextStream(lambda ids, words=words: "".join(words[i] for i in ids), [], stops)
        got = []
        for piece in pieces:
            got.append(stream.push(vocab[piece]))
            if stream.stopped:
                break
        assert got == reference_stream(pieces, stops), (pieces, stops)


def test_long_hostile_stop_strings_still_stop_and_hold_back() -> None:
    stops = (*("a" + "b" * 254 + str(i) for i in range(15)), "a" * 255 + "!")
    stream = TextStream(lambda ids: "".join(chr(i) for i in ids), [], stops)
    released = "".join(stream.push(ord("a")) for _ in range(600))
    assert released == "a" * (600 - 255)  # the last 255 could still begin the last stop
    assert stream.push(ord("!")) == "" and stream.stopped
    assert stream.text == "a" * 345
