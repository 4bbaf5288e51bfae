"""The inference engine: parity with the training model, sampling, stops, batching, limits."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lmforge.model.config import ModelConfig
from lmforge.model.hf import to_hf_config, to_hf_state_dict
from lmforge.model.llama import Transformer
from lmforge.model.sampling import Sampler, SamplingParams
from lmforge.serve import core
from lmforge.serve.artifacts import load_served_model
from lmforge.serve.config import EngineConfig
from lmforge.serve.engine import ContextLengthError, Engine, QueueFull
from lmforge.serve.runner import Decode, Runner
from lmforge.serve.scheduler import Scheduler
from lmforge.serve.textstream import TextStream
from lmforge.train import checkpoint
from test_serve_support import DIALOGUES, chat_text, make_model_dir, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dict(vocab_size=37, dim=32, n_layers=2, n_heads=4, ffn_dim=48, max_seq_len=80)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return load_served_model(make_model_dir(tmp_path_factory.mktemp("engine")))


def make_engine(served, dtype=torch.float32, metrics=None, **cfg) -> Engine:
    tok = served.tokenizer
    return Engine(served.model, tok.decode, EngineConfig(threads=1, **cfg), dtype=dtype,
                  stop_token_ids=tok.stop_ids(["<|end|>"]), metrics=metrics).start()


@pytest.fixture(scope="module")
def engine(served):
    """One engine (its own process) shared by the tests that need no special settings."""
    engine = make_engine(served, max_batch=8)
    yield engine
    engine.stop()


def reference_greedy(model: Transformer, prompt: list[int], n: int, stop: set[int]) -> list[int]:
    """Greedy decoding with the training model's plain forward pass (no cache)."""
    ids, device = list(prompt), model.lm_head.weight.device
    with torch.no_grad():
        for _ in range(n):
            token = int(model(torch.tensor([ids], device=device)).logits[0, -1].argmax())
            if token in stop:
                break
            ids.append(token)
    return ids[len(prompt):]


RUNNER_VARIANTS = [
    {}, {"n_kv_heads": 2}, {"qk_norm": True}, {"sliding_window": 5},
    {"tie_embeddings": False}, {"moe": {"num_experts": 4, "top_k": 2, "expert_ffn_dim": 16}},
    {"qkv_bias": True, "rope_scaling": {"type": "linear", "factor": 2.0}},
]


def runner_and_reference(overrides: dict, dtype: torch.dtype, device: torch.device,
                         seed: int) -> tuple[Runner, Transformer]:
    """A small random model's runner (4 slots) and the model itself, both in `dtype`."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**SMALL, **overrides)).eval()
    with torch.no_grad():  # biases away from their zero init, so a dropped one shows
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
    reference = copy.deepcopy(model).to(device=device, dtype=dtype)
    return Runner(model, slots=4, dtype=dtype, device=device), reference


def logit_gap(reference: Transformer, logits: torch.Tensor, seqs: list[list[int]]) -> float:
    """The largest gap between each row of `logits` and the reference's forward pass over
    the whole sequence (its last position)."""
    device = reference.lm_head.weight.device
    with torch.no_grad():
        refs = [reference(torch.tensor([seq], device=device)).logits[0, -1].float()
                for seq in seqs]
    return max((row.float() - ref).abs().max().item()
               for row, ref in zip(logits, refs, strict=True))


def worst_runner_error(overrides: dict, dtype: torch.dtype, device: torch.device) -> float:
    """The largest logit gap between the runner and the training model's forward on the same
    sequences: three prompts prefilled packed into slots 2, 0, 1; decode steps with slot 3
    an idle dummy row; then a fourth prompt prefilled into slot 3 in the same forward pass
    as a decode step (its dummy row included), and decode steps with all four."""
    runner, reference = runner_and_reference(overrides, dtype, device, seed=0)
    seqs = [torch.randint(0, 37, (n,)).tolist() for n in (7, 3, 12)]
    slot_of = [2, 0, 1]

    def worst_error(logits: torch.Tensor, which: list[int]) -> float:
        return logit_gap(reference, logits, [seqs[i] for i in which])

    worst = worst_error(runner.prefill(slot_of, seqs), [0, 1, 2])  # one packed forward
    for step in range(16):
        live = list(range(len(seqs)))
        idle = SMALL["max_seq_len"] - 1  # an idle slot: token 0 at the last position
        tokens, positions = [0] * 4, [idle] * 4
        for i, token in zip(live, torch.randint(0, 37, (len(live),)).tolist(), strict=True):
            tokens[slot_of[i]], positions[slot_of[i]] = token, len(seqs[i])
            seqs[i].append(token)
        decode = Decode(torch.tensor(tokens, device=device),
                        torch.tensor(positions, device=device),
                        max(len(seqs[i]) for i in live))
        if step == 12:
            seqs.append(torch.randint(0, 37, (9,)).tolist())
            slot_of.append(3)
            logits, first = runner.step(decode, runner.pack([3], [seqs[3]]))
            worst = max(worst, worst_error(first, [3]))
        else:
            logits = runner.decode(decode.tokens, decode.pos, decode.length)
        worst = max(worst, worst_error(logits[[slot_of[i] for i in live]], live))
    return worst


def worst_prefix_error(overrides: dict, dtype: torch.dtype, device: torch.device) -> float:
    """Like `worst_runner_error` for prompts that reuse another slot's prefix: one prompt
    prefilled in slot 0; a second sharing its first 9 tokens and a third equal to it, each
    given slot 0's prefix (`copy_prefix`) and prefilled for the rest only, together; then
    decode steps for all three."""
    runner, reference = runner_and_reference(overrides, dtype, device, seed=1)
    first = torch.randint(0, 37, (14,)).tolist()
    seqs = [first, first[:9] + torch.randint(0, 37, (5,)).tolist(), list(first)]

    def worst_error(logits: torch.Tensor, which: list[int]) -> float:
        return logit_gap(reference, logits, [seqs[i] for i in which])

    worst = worst_error(runner.prefill([0], [seqs[0]]), [0])
    runner.copy_prefix(0, 1, 9)
    runner.copy_prefix(0, 2, 13)
    rest = runner.step(None, runner.pack([1, 2], [seqs[1][9:], seqs[2][13:]], [9, 13]))[1]
    worst = max(worst, worst_error(rest, [1, 2]))
    for _ in range(6):
        new = torch.randint(0, 37, (3,)).tolist()
        positions = [len(seq) for seq in seqs]
        for seq, token in zip(seqs, new, strict=True):
            seq.append(token)
        logits = runner.decode(torch.tensor(new, device=device),
                               torch.tensor(positions, device=device), max(positions) + 1)
        worst = max(worst, worst_error(logits, [0, 1, 2]))
    return worst


@pytest.mark.parametrize("overrides", RUNNER_VARIANTS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 0.03)])
def test_runner_logits_match_the_model(overrides: dict, dtype: torch.dtype, tol: float) -> None:
    assert worst_runner_error(overrides, dtype, torch.device("cpu")) < tol
    assert worst_prefix_error(overrides, dtype, torch.device("cpu")) < tol


def assert_greedy_equals_training_forward(served, engine: Engine, dtype: torch.dtype,
                                          device: str = "cpu") -> None:
    """Every dialogue's greedy reply through the engine is the training model's own."""
    tok = served.tokenizer
    reference = Transformer(served.model.cfg).to(device=device, dtype=dtype).eval()
    reference.load_state_dict(served.model.state_dict())
    stop = set(engine.stop_token_ids)
    for user in DIALOGUES:
        prompt = tok.encode(chat_text(user, "").rsplit("<|end|>", 1)[0])
        out = engine.complete(prompt, SamplingParams(max_tokens=60, temperature=0))
        assert out.token_ids == reference_greedy(reference, prompt, 60, stop)
        assert out.text == DIALOGUES[user] and out.finish_reason == "stop"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_engine_greedy_equals_training_forward(served, engine, dtype: torch.dtype) -> None:
    if dtype == torch.float32:
        assert_greedy_equals_training_forward(served, engine, dtype)
        return
    engine = make_engine(served, dtype=dtype, max_batch=4)
    try:
        assert_greedy_equals_training_forward(served, engine, dtype)
    finally:
        engine.stop()


def test_seeded_output_does_not_depend_on_the_batch(served, engine) -> None:
    prompt = served.tokenizer.encode("where is")
    params = dict(max_tokens=40, temperature=2.0, top_p=0.98, ignore_eos=True)
    alone = engine.complete(prompt, SamplingParams(seed=11, **params)).text
    greedy = engine.complete(prompt, SamplingParams(max_tokens=40, temperature=0)).text
    results: dict[int, str] = {}

    def run(seed: int) -> None:
        results[seed] = engine.complete(prompt, SamplingParams(seed=seed, **params)).text

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(5, 17)]
    requests = [engine.submit(prompt, SamplingParams(max_tokens=40, temperature=0))
                for _ in range(3)]  # greedy rows in the same batches as the sampled ones
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[11] == alone
    assert len(set(results.values())) > 6  # different seeds, different samples
    assert [engine.wait(r).text for r in requests] == [greedy] * 3


class Steps:
    """An engine observer that keeps what the core reported after each step."""

    def __init__(self) -> None:
        self.running: list[int] = []
        self.tokens = self.prompt_tokens = self.cached_tokens = 0

    def step(self, running: int, waiting: int, tokens: int, prompt_tokens: int,
             cached_tokens: int) -> None:
        self.running.append(running)
        self.tokens += tokens
        self.prompt_tokens += prompt_tokens
        self.cached_tokens += cached_tokens

    def first_token(self, seconds: float) -> None:
        pass

    def finished(self, seconds: float, reason: str) -> None:
        pass


def test_requests_join_and_leave_the_running_batch(served) -> None:
    steps = Steps()
    engine = make_engine(served, max_batch=4, metrics=steps)
    prompt = served.tokenizer.encode("the quick")
    try:
        long = engine.generate(prompt, SamplingParams(max_tokens=110, temperature=0,
                                                      ignore_eos=True))
        for _ in range(5):
            next(long)  # the long request is running
        short = engine.complete(prompt, SamplingParams(max_tokens=5, temperature=0,
                                                       ignore_eos=True))
        rest = list(long)
    finally:
        engine.stop()
    assert short.completion_tokens == 5 and rest[-1].completion_tokens == 110
    assert 2 in steps.running  # the short one joined mid-flight ...
    assert steps.running[-1] == 0 and steps.running.index(2) > 0  # ... and both left
    assert steps.running.count(2) >= 3  # its prefill rides on a decode step, then 4 more
    # the short one starts like the long one: all of its prompt but the last token reused
    assert (steps.prompt_tokens, steps.cached_tokens) == (2 * len(prompt), len(prompt) - 1)


def test_core_steps_mix_prompt_packs_with_the_running_batch(served, monkeypatch) -> None:
    """Requests that join running ones, in two packs (PACK_TOKENS made small): the first
    pack runs alone, the second in the same forward as the decode step; every greedy
    output is still the training model's."""
    monkeypatch.setattr(core, "PACK_TOKENS", 10)
    tok = served.tokenizer
    prompts = [tok.encode(chat_text(user, "").rsplit("<|end|>", 1)[0]) for user in DIALOGUES]
    assert all(len(p) > 10 for p in prompts)
    params = SamplingParams(max_tokens=15, temperature=0, ignore_eos=True)
    tokens: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    with torch.inference_mode():
        engine_core = core.EngineCore(served.model, EngineConfig(max_batch=4), torch.float32,
                                      frozenset())
        engine_core.add(0, prompts[0], params)
        for step in range(40):
            if step == 3:  # two more join the running one, one pack each
                for i in range(1, len(prompts)):
                    engine_core.add(i, prompts[i], params)
            for rid, token, _, _, error in engine_core.step():
                assert error is None
                tokens[rid].append(token)
    for i, prompt in enumerate(prompts):
        assert tokens[i] == reference_greedy(served.model, prompt, 15, set())


def run_core_requests(served, prompts: list[list[int]], joins: list[int],
                      prefix_cache: bool = True) -> tuple[list[list[int]], list[int]]:
    """Greedy, 6 tokens each, through an in-process EngineCore: prompt i is added at step
    joins[i]; each one's tokens, and how many of its prompt positions it took from keys
    already in the cache."""
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    outputs: list[list[int]] = [[] for _ in prompts]
    cached = [0] * len(prompts)
    with torch.inference_mode():
        engine_core = core.EngineCore(
            served.model, EngineConfig(max_batch=4, prefix_cache=prefix_cache),
            torch.float32, frozenset())
        for step in range(40):
            for rid in (i for i, at in enumerate(joins) if at == step):
                engine_core.add(rid, prompts[rid], params)
            for rid, token, *_ in engine_core.step():
                outputs[rid].append(token)
                if len(outputs[rid]) == 1:
                    cached[rid] = engine_core.requests[rid].cached
    return outputs, cached


def test_prompts_reuse_the_keys_of_earlier_sequences(served) -> None:
    """The same prompt while the first still runs (its keys copied from the running slot),
    then a chat that comes back with its history plus a new turn (from the idle slots):
    each is prefilled only past what the cache holds, and greedy output is unchanged."""
    tok = served.tokenizer
    first = tok.encode("where is the cat")  # not token 0 first: see the runner's dummy rows
    assert first[0] != 0
    history, _ = run_core_requests(served, [first], [0])
    follow_up = first + history[0][:5] + tok.encode(" and the dog")
    prompts, joins = [first, list(first), follow_up], [0, 2, 20]
    outputs, cached = run_core_requests(served, prompts, joins)
    assert cached == [0, len(first) - 1, len(first) + 5]  # 6 made, 5 fed back: in the cache
    assert outputs == run_core_requests(served, prompts, joins, prefix_cache=False)[0]
    for prompt, out in zip(prompts, outputs, strict=True):
        assert out == reference_greedy(served.model, prompt, 6, set())


def test_stop_strings_max_tokens_and_logprobs(served, engine) -> None:
    prompt = served.tokenizer.encode("the quick brown")
    stopped = engine.complete(prompt, SamplingParams(max_tokens=50, temperature=0,
                                                     stop=("lazy", "zzz")))
    capped = engine.complete(prompt, SamplingParams(max_tokens=7, temperature=0,
                                                    logprobs=3))
    assert stopped.text == " fox jumps over the " and stopped.finish_reason == "stop"
    assert capped.text == " fox ju" and capped.finish_reason == "length"
    assert len(capped.logprobs) == 7 and all(len(lp.top) == 3 for lp in capped.logprobs)
    assert all(lp.token_id == lp.top[0][0] and lp.logprob <= 0 for lp in capped.logprobs)


def test_context_is_checked_or_the_prompt_truncated(served, engine) -> None:
    context = engine.context
    with pytest.raises(ContextLengthError, match="maximum context length is 128"):
        engine.fit(list(range(10)) * 13, None)
    with pytest.raises(ContextLengthError, match="reduce max_tokens to 118"):
        engine.fit(list(range(10)), 200)
    with pytest.raises(ContextLengthError, match="empty"):
        engine.fit([], 5)
    kept, room = engine.fit(list(range(200)), None, truncate=100)
    assert kept == list(range(100, 200)) and room == context - 100
    prompt = served.tokenizer.encode("the quick brown fox " * 5)
    ids, n = engine.fit(prompt, 8)
    out = engine.complete(ids, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
    assert out.completion_tokens == 8


def test_queue_limit_abort_and_a_dead_core(served) -> None:
    steps = Steps()
    engine = make_engine(served, max_batch=1, max_queue=1, metrics=steps)
    params = SamplingParams(max_tokens=120, temperature=0, ignore_eos=True)
    prompt = served.tokenizer.encode("the")
    try:
        first = engine.submit(prompt, params)  # takes the slot
        second = engine.submit(prompt, params)  # waits
        with pytest.raises(QueueFull):
            engine.submit(prompt, params)
        engine.abort(first)
        engine.abort(second)
        engine.abort(second)  # twice: still fine
        short = engine.complete(prompt, SamplingParams(max_tokens=3, temperature=0,
                                                       ignore_eos=True))
        assert short.completion_tokens == 3 and short.finish_reason == "length"
        assert steps.tokens < 200  # the waiting one never ran (2 x 120 + 3 otherwise)
        running = engine.follow(engine.submit(prompt, params))
        assert next(running).completion_tokens >= 1
        os.kill(engine.pid, signal.SIGKILL)  # the core dies (say, the OOM killer)
        deltas = list(running)
        assert deltas[-1].finish_reason == "error" and "died" in deltas[-1].error
        after = engine.complete(prompt, params)  # new requests fail at once, never hang
        assert after.finish_reason == "error" and "died" in after.error
    finally:
        engine.stop()


def test_scheduler_prefill_budget_and_lowest_free_slot() -> None:
    class Seq:
        def __init__(self, n: int) -> None:
            self.prompt_len, self.slot = n, -1

    sched: Scheduler[Seq] = Scheduler(slots=3, max_prefill_tokens=100)
    a, b, c, d = Seq(60), Seq(60), Seq(500), Seq(10)
    for s in (a, b, c, d):
        sched.add(s)
    assert sched.admit() == [a]  # b would overrun the prefill budget of this step
    assert sched.admit() == [b]
    assert sched.admit() == [c]  # a long prompt still runs when it is first in line
    assert [s.slot for s in (a, b, c)] == [0, 1, 2] and sched.admit() == []
    sched.release(b)
    assert sched.admit() == [d] and d.slot == 1
    assert [s is not None for s in sched.batch()] == [True, True, True]


def test_sampler_penalties_filters_and_distribution() -> None:
    sampler = Sampler(slots=2, vocab=4, device=torch.device("cpu"))
    logits = torch.tensor([[2.0, 1.0, -1.0, 0.5]])

    def start(slot: int, prompt: list[int], **params) -> None:
        sampler.add([slot], [SamplingParams(max_tokens=1, **params)], [prompt])

    def draw(slot: int) -> int:
        return sampler.sample(logits, [slot])[0].item()

    start(0, [0], temperature=0, repetition_penalty=4.0)
    assert draw(0) == 1  # 2.0/4 < 1.0: token 0 loses
    start(1, [3], temperature=0, frequency_penalty=0.6)
    assert draw(1) == 0  # the first pick counts against token 0 ...
    assert draw(1) == 0  # 2.0 - 0.6 > 1.0
    assert draw(1) == 1  # ... twice: 2.0 - 1.2 < 1.0
    start(0, [], top_k=1, seed=0)
    start(1, [], top_p=0.01, seed=0)
    for _ in range(20):
        assert sampler.sample(logits.repeat(2, 1))[0].tolist() == [0, 0]
    start(0, [], temperature=1.0, seed=3)
    sampler.remove(1)  # an idle row: sampled along, ignored
    draws = [sampler.sample(logits.repeat(2, 1))[0][0].item() for _ in range(4000)]
    freqs = torch.bincount(torch.tensor(draws), minlength=4).float() / len(draws)
    assert torch.allclose(freqs, logits.softmax(-1)[0], atol=0.03)
    start(0, [], top_p=0.8, seed=5)
    assert {draw(0) for _ in range(300)} == {0, 1}  # p(0)+p(1) = 0.81 covers top_p=0.8
    start(0, [], temperature=1.0, seed=7, logprobs=2)
    start(1, [], temperature=0)
    tokens, logprobs = sampler.sample(logits.repeat(2, 1))
    assert logprobs[1] is None and logprobs[0].token_id == tokens[0].item()
    assert [t for t, _ in logprobs[0].top] == [0, 1]
    assert logprobs[0].top[0][1] == pytest.approx(logits.log_softmax(-1)[0, 0].item())


def test_text_stream_whole_characters_and_stop_strings() -> None:
    data = "héllo wörld. STOP here".encode()

    def decode(ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    stream = TextStream(decode, prompt=[], stop=("STOP",))
    pieces = [stream.push(b) for b in data]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) == "héllo wörld. " and stream.stopped
    held = TextStream(decode, prompt=[], stop=("STOP",))
    assert [held.push(b) for b in b"a ST"] == ["a", " ", "", ""]
    assert held.push(ord("x")) == "STx" and held.finish() == ""


def test_artifacts_load_a_run_dir_checkpoint_and_hf_export(tmp_path: Path, served) -> None:
    model = served.model
    run = tmp_path / "run"
    tok_dir = served.tokenizer.directory
    (run / "pretrain").mkdir(parents=True)
    shutil.copytree(tok_dir, run / "pretrain" / "tokenizer")
    checkpoint.save(run / "pretrain" / "checkpoints" / "best.pt",
                    {"model": model.state_dict(), "model_config": model.cfg.model_dump()})
    export = tmp_path / "export"
    export.mkdir()
    to_hf_config(model.cfg).save_pretrained(export)
    save_file({k: v.contiguous() for k, v in to_hf_state_dict(model.state_dict(),
                                                              model.cfg).items()},
              str(export / "model.safetensors"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / name, export / name)
    prompt = served.tokenizer.encode("the quick brown")
    expected = None
    for path in (run, export):
        loaded = load_served_model(path)
        engine = make_engine(loaded, max_batch=1)
        try:
            text = engine.complete(prompt, SamplingParams(max_tokens=12, temperature=0)).text
        finally:
            engine.stop()
        expected = expected or text
        assert text == expected == " fox jumps o"
