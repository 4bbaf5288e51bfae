"""`/v1/completions` with echo: the prompt's own logprobs, max_tokens 0, and lm-eval on top."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch

from lmforge.model.sampling import SamplingParams
from lmforge.serve import core
from lmforge.serve.app import build_app
from lmforge.serve.artifacts import load_served_model
from lmforge.serve.config import EngineConfig, ServeConfig
from test_serve_support import LINE, ServerThread, chat_text, make_model_dir, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "the quick brown fox"
GREEDY = dict(temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("echo"))


@pytest.fixture(scope="module")
def served(model_dir: Path):
    return load_served_model(model_dir)


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory, one_thread):  # noqa: F811
    audit = tmp_path_factory.mktemp("audit") / "audit.sqlite"
    cfg = ServeConfig(models=[{"name": "tiny", "path": model_dir}], audit={"path": audit},
                      engine={"max_batch": 8, "threads": 1})
    thread = ServerThread(build_app(cfg))
    yield thread.start()
    thread.stop()


def complete(url: str, **body) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json={"model": "tiny", **body}, timeout=60)


def reference(served, ids: list[int]) -> torch.Tensor:
    """Log-softmax of the training model's plain forward pass over the ids, (T, V)."""
    with torch.no_grad():
        return served.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def assert_prompt_logprobs(served, ids: list[int], logprobs: dict, top: int) -> None:
    """The first len(ids) entries are the prompt's: null first, then the model's own."""
    tok, want = served.tokenizer, reference(served, ids)
    n = len(ids)
    assert logprobs["tokens"][:n] == [tok.token_text(t) for t in ids]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    for i in range(1, n):
        assert abs(logprobs["token_logprobs"][i] - want[i - 1, ids[i]].item()) < 1e-4
        shown = logprobs["top_logprobs"][i]
        values, indices = want[i - 1].topk(top)
        assert list(shown) == [tok.token_text(t) for t in indices.tolist()]
        assert max(abs(a - b) for a, b in zip(shown.values(), values.tolist(),
                                              strict=True)) < 1e-4


def test_echo_logprobs_are_the_models_own_over_the_prompt(server, served) -> None:
    ids = served.tokenizer.encode(PROMPT)
    body = dict(prompt=PROMPT, echo=True, logprobs=2, max_tokens=4, temperature=0)
    choice = complete(server, **body).json()["choices"][0]
    logprobs, n = choice["logprobs"], len(ids)
    assert choice["text"].startswith(PROMPT) and len(choice["text"]) == n + 4
    assert_prompt_logprobs(served, ids, logprobs, top=2)
    assert logprobs["text_offset"] == list(range(n + 4))  # one character per token
    assert "".join(logprobs["tokens"]) == choice["text"]
    with httpx.stream("POST", server + "/v1/completions", timeout=60,
                      json={"model": "tiny", "stream": True, **body}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: {")]
    streamed = {key: [] for key in logprobs}
    for event in events:
        for key, values in event["choices"][0]["logprobs"].items():
            streamed[key] += values
    assert "".join(e["choices"][0]["text"] for e in events) == choice["text"]
    assert streamed == logprobs


def test_max_tokens_zero_echoes_only_the_prompt(server, served) -> None:
    ids = served.tokenizer.encode(PROMPT)
    done = complete(server, prompt=ids, echo=True, logprobs=1, max_tokens=0).json()
    choice = done["choices"][0]
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["tokens"]) == len(ids)
    assert_prompt_logprobs(served, ids, choice["logprobs"], top=1)
    assert done["usage"]["completion_tokens"] == 0
    with httpx.stream("POST", server + "/v1/completions", timeout=60,
                      json={"model": "tiny", "prompt": PROMPT, "echo": True, "logprobs": 0,
                            "max_tokens": 0, "stream": True}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: {")]
    assert [e["choices"][0]["text"] for e in events] == [PROMPT]
    assert events[0]["choices"][0]["logprobs"]["top_logprobs"][1] == {}
    one = complete(server, prompt=ids[:1], echo=True, logprobs=1, max_tokens=0).json()
    assert one["choices"][0]["logprobs"]["token_logprobs"] == [None]  # nothing to score
    plain = complete(server, prompt=PROMPT, max_tokens=0, logprobs=1).json()["choices"][0]
    assert plain["text"] == "" and plain["finish_reason"] == "length"
    assert plain["logprobs"]["tokens"] == []


@pytest.mark.parametrize("body, param, text", [
    (dict(messages=[{"role": "user", "content": "hello"}], max_tokens=0), "max_tokens",
     "at least 1 for chat"),
    (dict(prompt=PROMPT, echo=True, logprobs=21, max_tokens=0), "logprobs", "[0, 20]"),
    (dict(prompt=PROMPT, max_tokens=-1), "max_tokens", "at least 0"),
])
def test_out_of_range_echo_requests_are_400(server, body: dict, param: str, text: str) -> None:
    route = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    response = httpx.post(server + route, json={"model": "tiny", **body}, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and text in error["message"]
    assert "\n" not in error["message"]


def test_echo_keeps_a_stop_tokens_logprob_so_every_token_is_scored(server, served) -> None:
    """A stop token is not text, but with echo its logprob stays: lm-eval drops the last
    entry (the generated token) from what it sums, so it must be there."""
    tok = served.tokenizer
    ids = tok.encode(chat_text("hello", "hi there, how can I help?").rsplit("<|end|>", 1)[0])
    choice = complete(server, prompt=ids, echo=True, logprobs=1, max_tokens=1,
                      temperature=0).json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["text"] == tok.decode(ids)
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(ids) + 1 and logprobs["tokens"][-1] == "<|end|>"
    assert logprobs["text_offset"][:3] == [0, 0, 0]  # <|bos|> and <|user|> are not text
    assert logprobs["text_offset"][-1] == len(choice["text"])
    assert_prompt_logprobs(served, ids, logprobs, top=1)


def test_alternatives_at_prompt_positions_go_through_the_output_filter(server) -> None:
    """The echoed prompt is the client's own, shown as sent; what the model would have
    written instead is its output, redacted as a generated token's alternatives are."""
    prompt = "write to bob@example.cox"
    choice = complete(server, prompt=prompt, echo=True, logprobs=2,
                      max_tokens=0).json()["choices"][0]
    assert choice["text"] == prompt and "".join(choice["logprobs"]["tokens"]) == prompt
    assert "[EMAIL]" in choice["logprobs"]["top_logprobs"][-1]  # "m" would finish the address


def test_each_choice_echoes_its_own_prompt(server) -> None:
    prompts = ["the quick", "the lazy dog"]
    choices = complete(server, prompt=prompts, echo=True, n=2, max_tokens=2, logprobs=0,
                       temperature=0).json()["choices"]
    for choice in choices:
        prompt = prompts[choice["index"] // 2]
        assert choice["text"].startswith(prompt)
        assert len(choice["logprobs"]["tokens"]) == len(prompt) + 2


def run_core(served, requests: dict[int, tuple[list[int], int | None]], joins: dict[int, int]
             ) -> tuple[dict[int, list[int]], dict]:
    """Greedy requests through an in-process EngineCore, request i added at step joins[i]
    with prompt_logprobs k (None: not scored); each one's tokens and prompt logprobs."""
    tokens: dict[int, list[int]] = {rid: [] for rid in requests}
    scored = {}
    params = SamplingParams(max_tokens=12, **GREEDY)
    with torch.inference_mode():
        engine_core = core.EngineCore(served.model, EngineConfig(max_batch=4), torch.float32,
                                      frozenset())
        for step in range(60):
            for rid in (r for r, at in joins.items() if at == step):
                engine_core.add(rid, requests[rid][0], params, prompt_logprobs=requests[rid][1])
            for rid, token, _, _, error in engine_core.step():
                assert error is None
                tokens[rid].append(token)
            scored.update(engine_core.take_prompt_logprobs())
    return tokens, scored


def test_an_echo_prompt_batched_with_running_requests_scores_as_alone(served) -> None:
    """The echo prompt joins a running batch in the same pack as a plain prompt: its
    logprobs are the ones it gets alone, and nobody else's tokens change."""
    tok = served.tokenizer
    requests = {0: (tok.encode(LINE), None), 1: (tok.encode("the lazy dog"), None),
                2: (tok.encode(PROMPT), 3), 3: (tok.encode("where is the cat"), None)}
    joins = {0: 0, 1: 0, 2: 3, 3: 3}
    tokens, scored = run_core(served, requests, joins)
    alone_tokens, alone = run_core(served, {2: requests[2]}, {2: 0})
    assert tokens[2] == alone_tokens[2]
    for rid in (0, 1, 3):
        assert tokens[rid] == run_core(served, {rid: requests[rid]}, {rid: 0})[0][rid]
    assert list(scored) == [2]
    assert [e.token_id for e in scored[2]] == requests[2][0][1:]
    for batched, single in zip(scored[2], alone[2], strict=True):
        assert abs(batched.logprob - single.logprob) < 1e-5
        assert [t for t, _ in batched.top] == [t for t, _ in single.top]


def test_an_echo_prompt_never_takes_a_cached_prefix(served) -> None:
    """The same prompt was just run, so its keys are in a slot: a plain request reuses
    them, an echo request runs (and scores) every position."""
    ids = served.tokenizer.encode(PROMPT)
    with torch.inference_mode():
        engine_core = core.EngineCore(served.model, EngineConfig(max_batch=2), torch.float32,
                                      frozenset())
        for rid, k in enumerate((None, None, 1)):
            engine_core.add(rid, ids, SamplingParams(max_tokens=3, **GREEDY), prompt_logprobs=k)
            engine_core.step()
            assert engine_core.requests[rid].cached == (len(ids) - 1 if rid == 1 else 0)
            while engine_core.busy:
                engine_core.step()
        scored = engine_core.take_prompt_logprobs()
    want = reference(served, ids)
    assert list(scored) == [2] and len(scored[2]) == len(ids) - 1
    for i, entry in enumerate(scored[2], start=1):
        assert abs(entry.logprob - want[i - 1, ids[i]].item()) < 1e-4


MC_ROWS = [
    ("the quick brown", ["fox", "cat", "dog"], 0),
    ("the quick brown fox jumps over the lazy", ["cow", "dog", "fox"], 1),
    ("the quick brown fox", ["sits", "runs", "jumps"], 2),
    ("the quick brown fox jumps", ["over", "under", "into"], 0),
    ("the quick", ["red", "brown", "blue"], 1),
    ('The "if" statement is used for', ["loops", "classes", "conditional"], 2),
    ("It selects exactly one of the", ["suites", "rows", "lines"], 0),
    ("the lazy", ["cat", "dog", "bird"], 1),
    ("by evaluating the", ["numbers", "words", "expressions"], 2),
    ("hi there, how can I", ["help?", "go?", "eat?"], 0),
]


def write_mc_task(root: Path) -> Path:
    """A 10-row multiple-choice task over a local JSONL file; returns its directory."""
    data = root / "mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                            for q, c, a in MC_ROWS))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "lmforge_tiny_mc.yaml").write_text(
        "task: lmforge_tiny_mc\ndataset_path: json\ndataset_kwargs:\n"
        f"  data_files: {{test: {json.dumps(str(data))}}}\n"
        f"  cache_dir: {json.dumps(str(root / 'datasets'))}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    return tasks


def test_lm_eval_scores_the_same_over_the_server_as_with_transformers(
        server, served, model_dir, tmp_path, monkeypatch) -> None:
    """lm-eval's local-completions (echo, logprobs, token ids) against the live server and
    its hf backend on the same model exported to HF agree: same accuracies, same
    per-choice loglikelihoods, and those are not all 0 (which echo without prompt
    logprobs gave)."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed")
    pytest.importorskip("tenacity", reason="lm-eval's API models need lm-eval[api]")
    from lm_eval.tasks import TaskManager

    from lmforge.export.hf import write_hf_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    export = tmp_path / "hf"
    write_hf_model(export, served.model.state_dict(), served.model.cfg,
                   model_dir.parent / "tokenizer")
    tasks = TaskManager(include_path=str(write_mc_task(tmp_path)))
    backends = {
        "local-completions": f"model=tiny,base_url={server}/v1/completions,tokenizer={export},"
                             "tokenizer_backend=huggingface,tokenized_requests=True,"
                             "max_length=128,batch_size=4",
        "hf": f"pretrained={export},dtype=float32,device=cpu,batch_size=4",
    }
    results = {}
    for backend, args in backends.items():
        out = lm_eval.simple_evaluate(model=backend, model_args=args,
                                      tasks=["lmforge_tiny_mc"], task_manager=tasks,
                                      log_samples=True)
        metrics = out["results"]["lmforge_tiny_mc"]
        lls = [[choice[0][0] for choice in sample["resps"]]  # [[(loglikelihood, greedy)]]
               for sample in out["samples"]["lmforge_tiny_mc"]]
        results[backend] = (metrics["acc,none"], metrics["acc_norm,none"], lls)
    ours, theirs = results["local-completions"], results["hf"]
    assert ours[:2] == theirs[:2]
    flat = [ll for row in ours[2] for ll in row]
    assert not all(ll == 0 for ll in flat)
    assert flat == pytest.approx([ll for row in theirs[2] for ll in row], abs=1e-3)
