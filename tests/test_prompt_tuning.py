"""Prompt tuning: virtual tokens in PEFT's format both ways, a short run that trains only
them, and the served and generated model putting them in front of every prompt."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import UserError
from lmforge.export.hf import write_hf_model
from lmforge.model.files import load_model
from lmforge.model.generate import generate
from lmforge.model.peft import load_adapter_model, save_prompt_adapter
from lmforge.model.prompt_tuning import add_prompt_tuning, prompt_prefix
from lmforge.model.sampling import SamplingParams
from lmforge.serve.artifacts import load_served_model
from lmforge.serve.config import EngineConfig
from lmforge.serve.engine import Engine
from test_export import random_model
from test_finetune import base, run_cli, toy_chats, write_config, write_jsonl  # noqa: F401

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def with_prefix(model, ids: torch.Tensor) -> torch.Tensor:
    prefix = torch.tensor(prompt_prefix(model)).expand(ids.size(0), -1)
    return torch.cat((prefix, ids), dim=1)


@pytest.mark.parametrize("tied", [True, False])
def test_lmforge_virtual_tokens_load_in_peft_with_equal_logits(tmp_path, tied):
    model = random_model(tie_embeddings=tied).eval()
    write_hf_model(tmp_path / "base", model.state_dict(), model.cfg, None)
    torch.manual_seed(1)
    add_prompt_tuning(model, torch.randn(5, model.cfg.dim) * 0.05)
    save_prompt_adapter(tmp_path / "adapter", model, str(tmp_path / "base"))
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    hf = peft.PeftModel.from_pretrained(hf_base, tmp_path / "adapter").eval()
    x = torch.randint(0, model.cfg.vocab, (2, 12))
    with torch.no_grad():
        theirs = hf(input_ids=x).logits
        ours = model(with_prefix(model, x)).logits
    assert theirs.shape == ours.shape and (theirs - ours).abs().max() < 1e-5


def test_a_peft_prompt_tuning_adapter_loads_in_lmforge(tmp_path):
    model = random_model(tie_embeddings=False)
    write_hf_model(tmp_path / "base", model.state_dict(), model.cfg, None)
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    hf = peft.get_peft_model(hf_base, peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                              num_virtual_tokens=6))
    hf.save_pretrained(tmp_path / "adapter")
    hf.eval()
    ours, _ = load_adapter_model(tmp_path / "adapter", tmp_path / "base")
    assert len(prompt_prefix(ours)) == 6
    x = torch.randint(0, model.cfg.vocab, (2, 10))
    with torch.no_grad():
        assert (hf(input_ids=x).logits - ours(with_prefix(ours, x)).logits).abs().max() < 1e-5


def test_virtual_tokens_of_another_width_are_refused():
    model = random_model()
    with pytest.raises(UserError, match="another base"):
        add_prompt_tuning(model, torch.zeros(4, model.cfg.dim + 1))


@pytest.mark.slow
def test_prompt_tuning_trains_only_the_virtual_tokens_and_serves_them(tmp_path, base):  # noqa: F811
    """A short run lowers the val loss with the base untouched; generate and the engine
    put the prefix in front of the prompt and give the same greedy reply."""
    data = write_jsonl(tmp_path / "chat.jsonl", toy_chats(120))
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path, base, data, method="prompt_tuning",
                       max_steps=30, lr=3e-2, eval_every=10, eval_prompts=4,
                       prompt_tuning={"virtual_tokens": 8, "init_text": "say the words back"})
    run_cli("finetune", "-c", str(cfg))
    out = tmp_path / "finetune"
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 8
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) >= 3 and val[-1] < val[0]
    tuned, _ = load_model(tmp_path)
    plain, _ = load_model(base)
    tuned_state = tuned.state_dict()
    for name, weight in plain.state_dict().items():  # the base is frozen
        key = name.replace("embed_tokens.weight", "embed_tokens.base.weight")
        assert torch.equal(tuned_state[key], weight), name
    served = load_served_model(tmp_path)
    tok = served.tokenizer
    prompt = tok.encode(tok.render([{"role": "user", "content": "say fox dog"}]))
    expected = generate(tuned, prompt, 12, temperature=0.0, stop_ids=tok.chat_stop_ids())
    engine = Engine(served.model, tok.decode, EngineConfig(threads=1),
                    stop_token_ids=tok.chat_stop_ids(), dtype=torch.float32).start()
    try:
        got = engine.complete(prompt, SamplingParams(max_tokens=12, temperature=0))
    finally:
        engine.stop()
    assert got.token_ids == expected and got.prompt_tokens == len(prompt)
