"""The Llama-style model: parameter counts, HF parity, KV cache, masks, MoE, presets."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import UserError
from lmforge.model.config import ModelConfig, count_params, flops_per_token, preset_config
from lmforge.model.kv_cache import KVCache
from lmforge.model.llama import Transformer, attention

SMALL = dict(vocab_size=37, dim=32, n_layers=2, n_heads=4, ffn_dim=48, max_seq_len=32)


def build(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**{**SMALL, **overrides})).eval()


@pytest.mark.parametrize("overrides", [
    {}, {"n_kv_heads": 2}, {"qk_norm": True}, {"tie_embeddings": False},
    {"moe": {"num_experts": 4, "top_k": 2, "expert_ffn_dim": 16}},
])
def test_param_count_matches_the_module(overrides: dict) -> None:
    model = build(**overrides)
    assert count_params(model.cfg)["total"] == model.num_params()


def test_hand_counted_params_and_flops() -> None:
    cfg = ModelConfig(vocab_size=100, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128)
    # attention: q 64*64 + k,v 2*64*32 + o 64*64 = 12288; mlp 3*64*128 = 24576; norms 128
    per_layer = 12288 + 24576 + 128
    assert count_params(cfg)["total"] == 100 * 64 + 2 * per_layer + 64
    # 6 * (blocks + final norm + lm_head matmul) + 12 * layers * dim * context
    assert flops_per_token(cfg, 16) == 6 * (2 * per_layer + 64 + 6400) + 12 * 2 * 64 * 16


def test_presets_span_tiny_to_7b() -> None:
    assert count_params(preset_config("7b"))["total"] == 6_738_415_616  # Llama-2-7B
    tiny = preset_config("tiny")
    assert tiny.dim == 128 and count_params(tiny)["total"] < 2_000_000
    sized = ModelConfig(preset="25m", dropout=0.1)
    assert sized.dim == 512 and sized.dropout == 0.1
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig(preset="9b")


def test_hf_parameter_names() -> None:
    names = set(build(tie_embeddings=False).state_dict())
    for name in ("model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight",
                 "model.layers.0.mlp.gate_proj.weight", "model.layers.0.input_layernorm.weight",
                 "model.layers.0.post_attention_layernorm.weight", "model.norm.weight",
                 "lm_head.weight"):
        assert name in names


@pytest.mark.parametrize("overrides,arch", [
    ({}, "LlamaForCausalLM"),
    ({"n_kv_heads": 2, "tie_embeddings": False}, "LlamaForCausalLM"),
    ({"qk_norm": True}, "Qwen3ForCausalLM"),
    ({"sliding_window": 6}, "MistralForCausalLM"),
])
def test_logits_equal_transformers(overrides: dict, arch: str) -> None:
    pytest.importorskip("transformers")
    from lmforge.model.hf import load_into_hf

    model = build(**overrides)
    hf = load_into_hf(model, model.cfg)
    assert type(hf).__name__ == arch
    x = torch.randint(0, 37, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, rtol=1e-5, atol=1e-5)


def test_kv_cache_decoding_matches_full_forward() -> None:
    model = build(n_kv_heads=2, sliding_window=5)
    x = torch.randint(0, 37, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(x).logits
        cache = KVCache(model.cfg, 1)
        steps = [model(x[:, :4], cache=cache).logits]
        steps += [model(x[:, i:i + 1], cache=cache).logits for i in range(4, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_sliding_window_hides_tokens_beyond_it() -> None:
    model = build(sliding_window=4, n_layers=1)
    x = torch.randint(0, 37, (1, 10), generator=torch.Generator().manual_seed(3))
    y = x.clone()
    y[0, 0] = (x[0, 0] + 1) % 37
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    # one layer, window 4: position 4 and later cannot see position 0
    torch.testing.assert_close(a[0, 4:], b[0, 4:])
    assert not torch.allclose(a[0, :4], b[0, :4])


def test_document_mask_equals_separate_documents() -> None:
    model = build()
    gen = torch.Generator().manual_seed(4)
    first, second = torch.randint(0, 37, (1, 7), generator=gen), torch.randint(0, 37, (1, 9),
                                                                              generator=gen)
    packed = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(7), torch.arange(9)]).unsqueeze(0)
    doc_ids = torch.tensor([[0] * 7 + [1] * 9])
    with torch.no_grad():
        together = model(packed, positions=positions, doc_ids=doc_ids).logits
        alone = torch.cat([model(first).logits, model(second).logits], dim=1)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_moe_routes_and_balances() -> None:
    model = build(moe={"num_experts": 4, "top_k": 2, "expert_ffn_dim": 16}).train()
    x = torch.randint(0, 37, (4, 16), generator=torch.Generator().manual_seed(5))
    out = model(x, x)
    assert out.aux_loss is not None and 0.9 < out.aux_loss.item() < 2.0
    out.loss.backward()
    router = model.model.layers[0].mlp.gate.weight
    assert router.grad is not None and router.grad.abs().sum() > 0


def test_loss_ignores_minus_100_targets() -> None:
    model = build()
    x = torch.randint(0, 37, (1, 8), generator=torch.Generator().manual_seed(6))
    y = x.clone()
    y[0, 4:] = -100
    with torch.no_grad():
        logits = model(x).logits
        expected = torch.nn.functional.cross_entropy(logits[0, :4], x[0, :4])
        torch.testing.assert_close(model(x, y).loss, expected)


def test_training_loss_projects_only_the_positions_with_targets() -> None:
    """In training the vocabulary projection runs on positions with a target only: the loss
    and every gradient equal those of the whole projection."""
    model = build(tie_embeddings=False).train()
    x = torch.randint(0, 37, (3, 10), generator=torch.Generator().manual_seed(8))
    y = x.roll(-1, dims=1)
    y[:, :6] = -100
    out = model(x, y)
    assert out.logits.shape == (12, 37)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(x).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    expected.backward()
    torch.testing.assert_close(out.loss, expected)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)
    with torch.no_grad():
        assert model.eval()(x, y).logits.shape == (3, 10, 37)  # eval keeps every position


def test_too_long_sequence_and_small_vocab_are_errors() -> None:
    model = build()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 40, dtype=torch.long))
    with pytest.raises(UserError, match="smaller than the tokenizer"):
        ModelConfig(vocab_size=10).with_vocab(65)
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(dim=30, n_heads=4)


@pytest.mark.parametrize("kv_heads,explicit_mask", [(4, False), (2, False), (4, True)])
def test_cpu_bf16_attention_matches_sdpa(kv_heads: int, explicit_mask: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(2, 4, 12, 16, generator=gen)
    k, v = (torch.randn(2, kv_heads, 12, 16, generator=gen) for _ in range(2))
    mask = torch.ones(12, 12, dtype=torch.bool).tril() & (torch.rand(12, 12, generator=gen) > 0.3)
    mask |= torch.eye(12, dtype=torch.bool)
    args = (mask, False) if explicit_mask else (None, True)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=args[0], is_causal=args[1], enable_gqa=kv_heads != 4)
    eager = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), *args, dropout=0.0)
    assert eager.dtype == torch.bfloat16
    torch.testing.assert_close(eager.float(), expected, rtol=0.05, atol=0.05)


def test_compiled_blocks_match_eager_forward_and_backward() -> None:
    """train.compile: the per-block torch.compile gives the eager model's loss and gradients."""
    from lmforge.train.parallelize import apply_compile

    eager, compiled = build(seed=3).train(), build(seed=3).train()
    apply_compile(compiled)
    x = torch.randint(0, 37, (2, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for model in (eager, compiled):
        loss = model(x, x).loss
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
