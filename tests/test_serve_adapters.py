"""Several LoRA adapters served over one copy of the base weights, batched together."""

from __future__ import annotations

import copy
from pathlib import Path

import httpx
import pytest
import torch

from lmforge.cli import main
from lmforge.errors import UserError
from lmforge.model.config import ModelConfig
from lmforge.model.llama import Transformer
from lmforge.model.lora import LoraSpec, add_lora, lora_state, merge_lora
from lmforge.model.peft import save_lora_adapter
from lmforge.model.sampling import SamplingParams
from lmforge.serve import core
from lmforge.serve.adapters import read_served_adapter
from lmforge.serve.app import build_app
from lmforge.serve.artifacts import load_served_model
from lmforge.serve.config import EngineConfig, ServeConfig
from lmforge.serve.runner import Runner
from test_serve_support import ServerThread, chat_text, make_model_dir, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dict(vocab_size=37, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48,
             max_seq_len=80, qkv_bias=True)
DOG = "the lazy dog is here."


def random_adapter(base: Transformer, spec: LoraSpec, out: Path, seed: int) -> Transformer:
    """Save a LoRA adapter of `base` with random (non-zero) B; the merged model."""
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    add_lora(model, spec)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    save_lora_adapter(out, model, spec, None)
    merge_lora(model)
    return model.eval()


def test_runner_adds_each_rows_adapter_in_one_pass(tmp_path: Path) -> None:
    """Three prompts on the base and two adapters (different targets, ranks, rsLoRA) in
    one prefill, then mixed decode steps with an idle row: every row's logits are those of
    its adapter merged into the base."""
    torch.manual_seed(0)
    base = Transformer(ModelConfig(**SMALL)).eval()
    specs = [LoraSpec(rank=4, alpha=8, targets=("q_proj", "k_proj", "v_proj", "o_proj",
                                                 "gate_proj", "up_proj", "down_proj")),
             LoraSpec(rank=2, alpha=4, targets=("q_proj", "v_proj", "down_proj"), rslora=True)]
    merged = [base] + [random_adapter(base, s, tmp_path / f"a{i}", i + 1)
                       for i, s in enumerate(specs)]
    adapters = [read_served_adapter(f"a{i}", tmp_path / f"a{i}", base) for i in range(2)]
    runner = Runner(base, slots=4, dtype=torch.float32, device=torch.device("cpu"),
                    adapters=adapters)
    seqs = [[1, 5, 9, 3], [1, 5, 9, 3, 7, 2], [4, 4, 8]]  # slots 0, 1, 2 on adapters 0, 1, 2
    logits = runner.prefill([0, 1, 2], seqs, adapters=[0, 1, 2])
    assert_rows_match(merged, [0, 1, 2], seqs, logits)
    for _ in range(4):
        tokens = [int(row.argmax()) for row in logits] + [0]
        seqs = [[*s, t] for s, t in zip(seqs, tokens, strict=False)]
        pos = torch.tensor([len(s) - 1 for s in seqs] + [runner.context - 1])
        logits = runner.decode(torch.tensor(tokens), pos, max(len(s) for s in seqs),
                               adapters=[0, 1, 2, -1])[:3]
        assert_rows_match(merged, [0, 1, 2], seqs, logits)
    # one adapter for every row: the whole-batch path
    logits = runner.prefill([3], [[2, 6, 1]], adapters=[2])
    assert_rows_match(merged, [2], [[2, 6, 1]], logits)


def assert_rows_match(models: list[Transformer], which: list[int], seqs: list[list[int]],
                      logits: torch.Tensor) -> None:
    with torch.no_grad():
        for row, a, seq in zip(logits, which, seqs, strict=True):
            ref = models[a](torch.tensor([seq])).logits[0, -1]
            assert torch.allclose(row, ref, atol=1e-4), (a, (row - ref).abs().max())


def test_adapters_of_another_base_or_kind_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = Transformer(ModelConfig(**SMALL)).eval()
    other = Transformer(ModelConfig(**{**SMALL, "dim": 48})).eval()
    random_adapter(other, LoraSpec(rank=2), tmp_path / "other", 0)
    with pytest.raises(UserError, match="another base"):
        read_served_adapter("x", tmp_path / "other", base)
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "adapter_config.json").write_text(
        '{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}')
    with pytest.raises(UserError, match="PROMPT_TUNING adapter"):
        read_served_adapter("x", tmp_path / "pt", base)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny chat model and a LoRA adapter trained to answer "hello" differently."""
    root = tmp_path_factory.mktemp("adapters")
    served = load_served_model(make_model_dir(root))
    tok = served.tokenizer
    model = copy.deepcopy(served.model).train()
    spec = LoraSpec(rank=8, alpha=16, targets=("q_proj", "v_proj", "o_proj", "down_proj"))
    add_lora(model, spec)
    ids = tok.encode(chat_text("hello", DOG))
    batch = torch.tensor([ids])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(80):
        loss = model(batch[:, :-1], batch[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(lora_state(model)) and loss.item() < 0.05
    save_lora_adapter(root / "dog", model, spec, str(root / "model"))
    return root, served


def test_core_batches_requests_on_different_adapters(tiny, monkeypatch) -> None:
    """Base and adapter requests for the same prompt, added together, run in one forward
    pass with per-row adapters, and each greedy reply is its own model's. A later adapter
    request lands in the base's old slot: it reuses the keys the adapter's sequence left
    (in another slot), never the base's."""
    root, served = tiny
    tok = served.tokenizer
    prompt = tok.encode(chat_text("hello", "").rsplit("<|end|>", 1)[0])
    adapter = read_served_adapter("dog", root / "dog", served.model)
    params = SamplingParams(max_tokens=40, temperature=0)
    passes = []
    outputs: dict[int, list[int]] = {0: [], 1: [], 2: []}
    with torch.inference_mode():
        engine_core = core.EngineCore(served.model, EngineConfig(max_batch=4), torch.float32,
                                      tok.stop_ids(["<|end|>"]), [adapter])
        step = engine_core.runner.step
        monkeypatch.setattr(engine_core.runner, "step",
                            lambda d, p, rows=None: passes.append(rows) or step(d, p, rows))
        engine_core.add(0, prompt, params)
        engine_core.add(1, prompt, params, adapter=1)
        for later in (False, True):
            if later:
                engine_core.add(2, prompt, params, adapter=1)
            while engine_core.busy:
                for rid, token, _, _, error in engine_core.step():
                    assert error is None
                    if not outputs[rid]:
                        cached = engine_core.requests[rid].cached, engine_core.requests[rid].slot
                    outputs[rid].append(token)
    assert set(passes[0]) == {0, 1} and set(passes[1]) == {0, 1}
    assert cached == (len(prompt) - 1, 0)  # request 2: slot 0, the prefix from slot 1
    texts = [tok.decode(outputs[i]) for i in (0, 1, 2)]
    assert texts == ["hi there, how can I help?", DOG, DOG]


def test_server_serves_each_adapter_as_a_model(tiny) -> None:
    """`adapters:` under a model: /v1/models lists the adapter with its parent, requests to
    either id get their own model's reply, and concurrent ones are answered correctly."""
    root, _ = tiny
    cfg = ServeConfig(models=[{"name": "tiny", "path": root / "model",
                               "adapters": [{"name": "tiny-dog", "path": root / "dog"}]}],
                      audit={"enabled": False}, engine={"threads": 1})
    thread = ServerThread(build_app(cfg))
    url = thread.start()
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
            assert cards["tiny-dog"]["parent"] == "tiny" and cards["tiny"]["parent"] is None

            def reply(model: str) -> str:
                body = {"model": model, "messages": [{"role": "user", "content": "hello"}],
                        "temperature": 0, "max_tokens": 40}
                r = client.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
                return r.json()["choices"][0]["message"]["content"]

            assert reply("tiny") == "hi there, how can I help?"
            assert reply("tiny-dog") == DOG
            import concurrent.futures

            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                got = list(pool.map(reply, ["tiny", "tiny-dog"] * 3))
            assert got == ["hi there, how can I help?", DOG] * 3
    finally:
        thread.stop()


def test_adapter_flag_errors(tiny, capsys) -> None:
    root, _ = tiny
    assert main(["serve", str(root / "model"), "--adapter", "nodir"]) == 2
    assert "NAME=DIR" in capsys.readouterr().err
    assert main(["serve", "--adapter", f"x={root / 'dog'}"]) == 2
    assert "needs a PATH" in capsys.readouterr().err
    with pytest.raises(ValueError, match="names must differ"):
        ServeConfig(models=[{"name": "tiny", "path": root / "model",
                             "adapters": [{"name": "tiny", "path": root / "dog"}]}])
