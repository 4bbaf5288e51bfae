"""Hugging Face conversion: our parameter names already are HF's, so this maps configs.

A dense model maps to `LlamaConfig`; QK-norm maps to `Qwen3Config` (Llama plus per-head q/k
norms); a sliding window without QK-norm maps to `MistralConfig`; MoE maps to
`Qwen3MoeConfig`. transformers is imported only inside these functions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lmforge.errors import UserError
from lmforge.model.config import ModelConfig


def hf_architecture(cfg: ModelConfig) -> str:
    """The transformers model class an export of this config loads as."""
    if cfg.moe.enabled:
        return "Qwen3MoeForCausalLM"
    if cfg.qk_norm:
        return "Qwen3ForCausalLM"
    if cfg.sliding_window is not None:
        return "MistralForCausalLM"
    return "LlamaForCausalLM"


def _common(cfg: ModelConfig, bos_token_id: int | None, eos_token_id: int | None) -> dict:
    return dict(
        vocab_size=cfg.vocab,
        hidden_size=cfg.dim,
        intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        attention_dropout=cfg.dropout,
        initializer_range=cfg.init_std,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        torch_dtype="float32",
    )


def to_hf_config(cfg: ModelConfig, bos_token_id: int | None = None,
                 eos_token_id: int | None = None) -> Any:
    """A transformers config describing the same network as `cfg`."""
    import transformers

    kwargs = _common(cfg, bos_token_id, eos_token_id)
    arch = hf_architecture(cfg)
    if arch == "LlamaForCausalLM":
        return transformers.LlamaConfig(attention_bias=False, mlp_bias=False, **kwargs)
    if arch == "MistralForCausalLM":
        return transformers.MistralConfig(sliding_window=cfg.sliding_window, **kwargs)
    window = dict(use_sliding_window=cfg.sliding_window is not None,
                  sliding_window=cfg.sliding_window, max_window_layers=0)
    if arch == "Qwen3ForCausalLM":
        return transformers.Qwen3Config(attention_bias=False, **window, **kwargs)
    if not cfg.qk_norm:
        raise UserError("an MoE model exports as Qwen3-MoE, which has QK-norm; "
                        "set model.qk_norm: true")
    return transformers.Qwen3MoeConfig(
        attention_bias=False, num_experts=cfg.moe.num_experts,
        num_experts_per_tok=cfg.moe.top_k, moe_intermediate_size=cfg.expert_dim,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
        router_aux_loss_coef=cfg.moe.aux_loss_coef, **window, **kwargs,
    )


def from_hf_config(hf: Any) -> ModelConfig:
    """Our ModelConfig from a transformers Llama/Mistral/Qwen3(-MoE) config."""
    rope = getattr(hf, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))
    moe = {}
    if getattr(hf, "num_experts", None):
        moe = dict(num_experts=hf.num_experts, top_k=hf.num_experts_per_tok,
                   expert_ffn_dim=hf.moe_intermediate_size,
                   aux_loss_coef=getattr(hf, "router_aux_loss_coef", 0.01))
    window = getattr(hf, "sliding_window", None)
    if hasattr(hf, "use_sliding_window") and not hf.use_sliding_window:
        window = None
    return ModelConfig(
        vocab_size=hf.vocab_size, dim=hf.hidden_size, n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads, n_kv_heads=hf.num_key_value_heads,
        ffn_dim=hf.intermediate_size, max_seq_len=hf.max_position_embeddings,
        rope_theta=float(theta), norm_eps=hf.rms_norm_eps,
        tie_embeddings=bool(hf.tie_word_embeddings), qk_norm=hf.model_type.startswith("qwen3"),
        sliding_window=window, moe=moe,
    )


def to_hf_state_dict(state: dict[str, Tensor], cfg: ModelConfig,
                     fused_experts: bool = False) -> dict[str, Tensor]:
    """The HF checkpoint of our weights: same names; a tied lm_head is left to HF to tie.

    Files on disk keep one tensor per expert (`experts.N.gate_proj.weight`, what HF's loader
    expects); `fused_experts` stacks them the way transformers 5 holds MoE experts in memory.
    """
    out = dict(state)
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    if fused_experts and cfg.moe.enabled:
        for layer in range(cfg.n_layers):
            prefix = f"model.layers.{layer}.mlp.experts."
            experts = [
                {name: out.pop(f"{prefix}{e}.{name}.weight")
                 for name in ("gate_proj", "up_proj", "down_proj")}
                for e in range(cfg.moe.num_experts)
            ]
            out[prefix + "gate_up_proj"] = torch.stack(
                [torch.cat((x["gate_proj"], x["up_proj"])) for x in experts])
            out[prefix + "down_proj"] = torch.stack([x["down_proj"] for x in experts])
    return out


def from_hf_state_dict(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our state dict from an HF checkpoint (adds the tied lm_head HF omits)."""
    out = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings and "lm_head.weight" not in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def load_into_hf(model: torch.nn.Module, cfg: ModelConfig) -> Any:
    """A transformers model holding a copy of our model's weights (for parity checks)."""
    import transformers

    hf_cfg = to_hf_config(cfg)
    hf_model = getattr(transformers, hf_architecture(cfg))(hf_cfg)
    missing, unexpected = hf_model.load_state_dict(
        to_hf_state_dict(model.state_dict(), cfg, fused_experts=True), strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"HF weights do not line up: missing {missing}, unexpected {unexpected}")
    if cfg.tie_embeddings:
        hf_model.tie_weights()
    return hf_model.eval()
