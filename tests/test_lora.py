"""LoRA and QLoRA: adapters in PEFT's format both ways, merge parity, frozen quantized bases."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import UserError
from lmforge.export.hf import write_hf_model
from lmforge.model.config import ModelConfig
from lmforge.model.files import load_model
from lmforge.model.llama import Transformer
from lmforge.model.lora import (
    LoraSpec,
    QuantizedLinear,
    add_lora,
    lora_modules,
    merge_lora,
    quantize_base,
    resolve_targets,
)
from lmforge.model.peft import load_lora_adapter, save_lora_adapter
from test_export import SHAPE, random_model

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

SPEC = LoraSpec(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "o_proj", "down_proj"))


def trained_lora(model, spec: LoraSpec = SPEC, seed: int = 1) -> None:
    """Adapters with non-zero B, as after training (a fresh B is zero and hides mistakes)."""
    add_lora(model, spec)
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.weight.normal_(0, 0.05)


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


@pytest.mark.parametrize("family", [dict(tie_embeddings=True),
                                    dict(qkv_bias=True, tie_embeddings=False)])
@pytest.mark.parametrize("rslora", [False, True])
def test_an_lmforge_adapter_loads_in_peft_with_equal_logits(tmp_path, family, rslora):
    model = random_model(**family)
    write_hf_model(tmp_path / "base", model.state_dict(), model.cfg, None)
    spec = LoraSpec(rank=4, alpha=8.0, targets=SPEC.targets, rslora=rslora)
    trained_lora(model, spec)
    save_lora_adapter(tmp_path / "adapter", model, spec, str(tmp_path / "base"))
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    hf = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    x = torch.randint(0, 101, (2, 24))
    assert (logits(hf, x) - logits(model, x)).abs().max() < 1e-5


def test_a_peft_trained_adapter_loads_in_lmforge_with_equal_logits(tmp_path):
    model = random_model(tie_embeddings=False)
    write_hf_model(tmp_path / "base", model.state_dict(), model.cfg, None)
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["k_proj", "gate_proj", "up_proj"],
                             lora_dropout=0.1, task_type="CAUSAL_LM")
    hf = peft.get_peft_model(base, config)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    hf.save_pretrained(tmp_path / "adapter")
    hf.eval()
    ours, _ = load_model(tmp_path / "base")
    spec = load_lora_adapter(tmp_path / "adapter", ours)
    assert spec.rank == 8 and set(spec.targets) == {"k_proj", "gate_proj", "up_proj"}
    ours.eval()
    x = torch.randint(0, 101, (2, 24))
    assert (logits(hf, x) - logits(ours, x)).abs().max() < 1e-5


def test_merging_gives_the_unmerged_logits_and_plain_weights(tmp_path):
    model = random_model(qkv_bias=True)
    trained_lora(model)
    x = torch.randint(0, 101, (2, 24))
    before = logits(model, x)
    merge_lora(model)
    assert not lora_modules(model)
    assert all(".lora_" not in k and "base_layer" not in k for k in model.state_dict())
    assert (logits(model, x) - before).abs().max() < 1e-5
    write_hf_model(tmp_path, model.state_dict(), model.cfg, None)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (logits(hf, x) - before).abs().max() < 1e-5


def test_only_adapter_weights_train_and_a_fresh_adapter_changes_nothing():
    model = random_model()
    x = torch.randint(0, 101, (2, 16))
    before = logits(model, x)
    wrapped = add_lora(model, SPEC)
    assert len(wrapped) == 2 * len(SPEC.targets)  # two layers
    assert (logits(model, x) - before).abs().max() == 0
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    model(x).logits.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    assert all(p.grad is not None for n, p in model.named_parameters() if ".lora_A." in n)


@pytest.mark.parametrize("bits", [4, 8])
def test_a_quantized_base_is_frozen_smaller_and_close(bits):
    model = random_model()
    x = torch.randint(0, 101, (2, 16))
    reference = logits(model, x)
    targets = resolve_targets(["all-linear"])
    weights = {n.removesuffix(".weight"): p.detach().clone() for n, p in model.named_parameters()
               if n.rsplit(".", 2)[-2] in targets}
    packed = quantize_base(model, bits, targets)
    assert packed < sum(w.numel() * 4 for w in weights.values()) * (0.2 if bits == 4 else 0.3)
    for name, weight in weights.items():
        quantized = model.get_submodule(name)
        assert isinstance(quantized, QuantizedLinear)
        error = (quantized.weight - weight).norm() / weight.norm()
        assert error < (0.12 if bits == 4 else 0.01), (name, error)
    cosine = torch.cosine_similarity(logits(model, x).flatten(), reference.flatten(), dim=0)
    assert cosine > (0.95 if bits == 4 else 0.999)
    add_lora(model, SPEC)
    model(x).logits.sum().backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == \
        {n for n, p in model.named_parameters() if ".lora_" in n}
    with pytest.raises(UserError, match="quantized base"):
        merge_lora(model)


def test_user_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="not projections"):
        resolve_targets(["qproj"])
    model = random_model()
    trained_lora(model)
    save_lora_adapter(tmp_path / "a", model, SPEC, None)
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "dora").mkdir()
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps({**config,
                                                                        "use_dora": True}))
    with pytest.raises(UserError, match="DoRA"):
        load_lora_adapter(tmp_path / "dora", random_model())
    other = Transformer(ModelConfig(**{**SHAPE, "ffn_dim": 48}))
    with pytest.raises(UserError, match="shape"):
        load_lora_adapter(tmp_path / "a", other)


@pytest.mark.parametrize("merge", [True, False])
def test_export_of_an_adapter_merged_or_beside_its_base(tmp_path, merge):
    from lmforge.cli import main
    from test_serve_support import make_model_dir

    base_dir = make_model_dir(tmp_path / "base", steps=5)
    model, _ = load_model(base_dir)
    trained_lora(model)
    save_lora_adapter(tmp_path / "adapter", model, SPEC, str(base_dir))
    args = ["export", str(tmp_path / "adapter"), "-o", str(tmp_path / "out")]
    assert main([*args, "--merge-lora"] if merge else args) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    if merge:
        assert not (tmp_path / "out" / "adapter").exists()
    else:
        hf = peft.PeftModel.from_pretrained(hf, tmp_path / "out" / "adapter")
    x = torch.randint(0, model.cfg.vocab, (2, 20))
    assert (logits(hf.eval(), x) - logits(model.eval(), x)).abs().max() < 1e-5
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_a_frozen_bases_stacked_weights_follow_in_place_changes():
    """The stacked q/k/v weight a frozen base keeps between training steps is rebuilt when a
    weight changes in place or is replaced."""
    model = random_model()
    add_lora(model, SPEC)
    x = torch.randint(0, 101, (1, 12))
    before = model(x).logits.detach()  # with grad on, as in training: the stack is kept
    attn = model.model.layers[0].self_attn
    assert getattr(attn.q_proj, "_fused_weight", None) is not None
    fresh = random_model()
    with torch.no_grad():
        attn.k_proj.weight.mul_(1.5)
        fresh.model.layers[0].self_attn.k_proj.weight.mul_(1.5)
    changed = model(x).logits.detach()
    assert not torch.allclose(before, changed)
    assert (changed - logits(fresh, x)).abs().max() < 1e-5  # B is zero: the base alone
