"""Fine-tuning: data formats, assistant-only masks, packing, template identity with the
server, a short SFT that learns to stop, and exact resume after kill -9."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from lmforge.finetune.examples import read_examples
from lmforge.finetune.pack import IGNORE, make_batch, pack_rows
from lmforge.finetune.render import Untrainable, encode_conversation
from lmforge.model.files import load_model
from lmforge.serve import openai_schema as api
from lmforge.serve.generation import Generation
from lmforge.tokenizer.chat_tokenizer import ChatTokenizer
from lmforge.train.monitor import read_metrics
from test_serve_support import make_model_dir
from test_train_resume import deterministic, lmforge, wait_for_step

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny pretrained model dir with a char tokenizer and lmforge's chat template."""
    return make_model_dir(tmp_path_factory.mktemp("base"), steps=30)


@pytest.fixture(scope="module")
def tok(base: Path) -> ChatTokenizer:
    return ChatTokenizer(base.parent / "tokenizer")


def toy_chats(n: int, seed: int = 0) -> list[dict]:
    """'say W1 W2' -> 'W2 W1': short replies the model must learn to end."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.sample(WORDS, 2)
        rows.append({"messages": [{"role": "user", "content": f"say {a} {b}"},
                                  {"role": "assistant", "content": f"{b} {a}"}]})
    return rows


def write_jsonl(path: Path, rows: list, extra: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra, encoding="utf-8")
    return path


def test_the_three_formats_are_read_and_bad_lines_quarantined_with_location(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"messages": [{"role": "system", "content": "be brief"},
                      {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"instruction": "reverse", "input": "ab", "output": "ba"},
        {"prompt": "the", "completion": " fox"},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"text": "no chat here"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
        {"prompt": "p", "completion": 3},
    ], extra='{"broken": \n')
    examples, drops = read_examples([str(path)], "auto")
    assert [e.messages[-1]["content"] for e in examples] == ["yo", "ba", " fox"]
    assert examples[1].messages[0] == {"role": "user", "content": "reverse\n\nab"}
    assert [(d.location.rsplit(":", 1)[1], d.reason) for d in drops] == [
        ("4", "bad_messages"), ("5", "unknown_format"), ("6", "no_assistant_turn"),
        ("7", "bad_prompt_completion"), ("8", "malformed_json")]
    assert len(examples) + len(drops) == 8  # rows in = rows out


def test_loss_is_on_assistant_turns_only_with_their_end_of_turn(tok):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say fox"},
                {"role": "assistant", "content": "fox"}, {"role": "user", "content": "dog"},
                {"role": "assistant", "content": "lazy dog"}]
    eot = tok.end_of_turn_id
    encoded = encode_conversation(tok, messages, eot)
    assert encoded.ids == tok.encode(tok.render(messages, add_generation_prompt=False))
    trained = "".join(tok.codec.tokenizer.decode([i], skip_special_tokens=False)
                      for i, t in zip(encoded.ids, encoded.trained, strict=True) if t)
    assert trained == "fox<|end|>\nlazy dog<|end|>\n"
    assert sum(i == eot for i, t in zip(encoded.ids, encoded.trained, strict=True) if t) == 2


def test_an_example_with_an_empty_mask_is_quarantined_never_trained(tmp_path, tok):
    quiet = tmp_path / "tok"
    shutil.copytree(tok.directory, quiet)
    config = json.loads((quiet / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}{% if m['role'] == 'user' %}"
                               "{{ m['content'] }}{% endif %}{% endfor %}")
    (quiet / "tokenizer_config.json").write_text(json.dumps(config))
    messages = toy_chats(1)[0]["messages"]
    with pytest.raises(Untrainable) as caught:
        encode_conversation(ChatTokenizer(quiet), messages, None)
    assert caught.value.reason == "empty_mask"
    with pytest.raises(Untrainable, match="no_end_of_turn"):
        encode_conversation(ChatTokenizer(quiet), messages, tok.end_of_turn_id)


def test_training_prompts_are_the_ids_the_server_sends(tok):
    generation = Generation.__new__(Generation)
    variant = SimpleNamespace(tokenizer=tok)
    for chat in [*toy_chats(5), {"messages": [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": "the dog"},
            {"role": "assistant", "content": "lazy"}]}]:
        messages = chat["messages"]
        encoded = encode_conversation(tok, messages, tok.end_of_turn_id)
        starts = [i for i in range(len(encoded.ids))
                  if encoded.trained[i] and (i == 0 or not encoded.trained[i - 1])]
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        for start, turn in zip(starts, turns, strict=True):
            body = api.ChatCompletionRequest(model="m", messages=messages[:turn])
            assert generation._encode(variant, body) == [encoded.ids[:start]]


def test_packed_rows_give_the_losses_of_the_examples_alone(base, tok):
    model, _ = load_model(base)
    eot = tok.end_of_turn_id
    examples = [encode_conversation(tok, c["messages"], eot) for c in toy_chats(7, seed=3)]
    rows = pack_rows(examples, list(range(7)), 64)
    assert len(rows) < 7 and sorted(i for row in rows for i in row) == list(range(7))

    def token_losses(batch):
        with torch.no_grad():
            logits = model(batch.x, positions=batch.positions, doc_ids=batch.doc_ids).logits
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.y,
                                                   ignore_index=IGNORE, reduction="none")
        return losses[batch.y != IGNORE]

    packed = token_losses(make_batch(examples, rows, 64))
    alone = torch.cat([token_losses(make_batch(examples, [[i]], 64))
                       for row in rows for i in row])
    assert packed.numel() == sum(sum(e.trained[1:]) for e in examples)
    assert (packed - alone).abs().max() < 1e-5


def write_config(path: Path, root: Path, base: Path, data: Path, **finetune) -> Path:
    cfg = {"run": {"name": "ft", "dir": str(root)}, "model": {"init_from": str(base)},
           "finetune": {"data": [str(data)], "block_size": 64, "batch_size": 4,
                        "lora": {"rank": 8, "targets": ["all-linear"]}, **finetune}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    proc = lmforge(*args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.slow
def test_a_short_lora_sft_learns_to_end_its_replies(tmp_path, base):
    data = write_jsonl(tmp_path / "chat.jsonl", toy_chats(200), extra="not json\n")
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path, base, data, max_steps=60, lr=5e-3,
                       eval_every=30, val_fraction=0.2, eval_prompts=40)
    run_cli("finetune", "-c", str(cfg))
    out = tmp_path / "finetune"
    replies = [json.loads(line) for line in (out / "replies.jsonl").read_text().splitlines()]
    assert len(replies) == 40
    assert sum(r["stopped"] for r in replies) / len(replies) >= 0.95
    assert (out / "adapter" / "adapter_config.json").is_file()
    quarantine = (out / "quarantine.jsonl").read_text().splitlines()
    assert [json.loads(q)["reason"] for q in quarantine] == ["malformed_json"]
    rows = read_metrics(out / "metrics.jsonl")
    assert any("val_stop_rate" in r for r in rows)
    chat = subprocess.run([sys.executable, "-m", "lmforge", "chat", str(tmp_path)],
                          input="say fox dog\n/reset\nsay the lazy\n", capture_output=True,
                          text=True, timeout=120)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("assistant>") == 2 and "<|end|>" not in chat.stdout
    from lmforge.serve.artifacts import load_served_model

    assert load_served_model(tmp_path).source == out / "adapter"  # the fine-tuned model


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "qlora"])
def test_full_and_qlora_fine_tuning_write_their_outputs(tmp_path, base, method):
    data = write_jsonl(tmp_path / "chat.jsonl", toy_chats(40))
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path, base, data, max_steps=4, eval_every=0,
                       method=method, qlora_bits=8, eval_prompts=2)
    run_cli("finetune", "-c", str(cfg))
    out = tmp_path / "finetune"
    if method == "full":
        model, _ = load_model(out / "model")
        assert model.cfg.vocab == load_model(base)[0].cfg.vocab
    else:
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["steps"] == 4


RESUMED = {"lora": {"lora": {"rank": 4, "dropout": 0.1, "targets": ["q_proj", "v_proj"]}},
           "prompt_tuning": {"method": "prompt_tuning", "lr": 3e-2,
                             "prompt_tuning": {"virtual_tokens": 4, "init_text": "say"}}}


@pytest.mark.slow
@pytest.mark.parametrize("method", RESUMED)
def test_kill_9_then_resume_is_bit_identical(tmp_path, base, method):
    data = write_jsonl(tmp_path / "chat.jsonl", toy_chats(80))
    settings = dict(max_steps=60, ckpt_every=5, eval_every=20, eval_prompts=2,
                    **RESUMED[method])
    reference = write_config(tmp_path / "ref.yaml", tmp_path / "ref", base, data, **settings)
    run_cli("finetune", "-c", str(reference))
    expected = read_metrics(tmp_path / "ref" / "finetune" / "metrics.jsonl")

    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "cut", base, data, **settings)
    metrics = tmp_path / "cut" / "finetune" / "metrics.jsonl"
    proc = lmforge("finetune", "-c", str(cfg))
    wait_for_step(metrics, proc, 23)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    run_cli("finetune", "-c", str(cfg), "--resume")
    assert deterministic(read_metrics(metrics)) == deterministic(expected)
