"""Hugging Face conversion: our parameter names already are HF's, so this maps configs.

Which HF family a model is follows from its config: MoE is `qwen3_moe`, QK-norm `qwen3`,
q/k/v biases `qwen2`, a sliding window (without those) `mistral`, anything else `llama`.
`hf_config_dict` writes the `config.json` that transformers and vLLM read; `from_hf_config`
reads one back (from any of those families). transformers itself is imported only by the
helpers that build transformers objects for parity checks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lmforge.errors import UserError
from lmforge.model.config import ModelConfig, RopeScaling

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}


def model_type(cfg: ModelConfig) -> str:
    """The HF `model_type` whose modeling code computes exactly this network."""
    if cfg.qkv_bias and (cfg.qk_norm or cfg.moe.enabled):
        raise UserError("no Hugging Face family has both q/k/v biases and QK-norm or MoE; "
                        "set model.qkv_bias: false or model.qk_norm: false")
    if cfg.moe.enabled:
        if not cfg.qk_norm:
            raise UserError("an MoE model exports as Qwen3-MoE, which has QK-norm; "
                            "set model.qk_norm: true")
        return "qwen3_moe"
    if cfg.qk_norm:
        return "qwen3"
    if cfg.qkv_bias:
        return "qwen2"
    return "mistral" if cfg.sliding_window is not None else "llama"


def hf_architecture(cfg: ModelConfig) -> str:
    """The transformers model class an export of this config loads as."""
    return ARCHITECTURES[model_type(cfg)]


def _rope_fields(cfg: ModelConfig) -> dict[str, Any]:
    """RoPE both ways: `rope_parameters` (transformers 5) and `rope_theta` + `rope_scaling`
    (transformers 4 and vLLM)."""
    scaling = None
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        scaling = {"rope_type": s.type, "factor": s.factor}
        if s.type == "llama3":
            scaling |= {"low_freq_factor": s.low_freq_factor,
                        "high_freq_factor": s.high_freq_factor,
                        "original_max_position_embeddings": s.original_max_position_embeddings}
    parameters = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if scaling is not None:
        parameters = {**scaling, "rope_theta": cfg.rope_theta}
    return {"rope_theta": cfg.rope_theta, "rope_scaling": scaling,
            "rope_parameters": parameters}


def hf_config_dict(cfg: ModelConfig, special_ids: dict[str, int | None] | None = None,
                   dtype: str = "float32") -> dict[str, Any]:
    """The `config.json` of an HF export of this model."""
    kind = model_type(cfg)
    ids = special_ids or {}
    out: dict[str, Any] = {
        "architectures": [ARCHITECTURES[kind]],
        "model_type": kind,
        "vocab_size": cfg.vocab,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        **_rope_fields(cfg),
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "bos_token_id": ids.get("bos"),
        "eos_token_id": ids.get("eos"),
        "pad_token_id": ids.get("pad"),
        "torch_dtype": dtype,
        "use_cache": True,
    }
    if kind == "llama":
        out |= {"attention_bias": False, "mlp_bias": False}
    elif kind == "mistral":
        out["sliding_window"] = cfg.sliding_window
    else:  # the Qwen families switch the window on per layer
        window = cfg.sliding_window is not None
        out |= {"use_sliding_window": window, "sliding_window": cfg.sliding_window,
                "max_window_layers": 0 if window else cfg.n_layers}
        if kind != "qwen2":
            out["attention_bias"] = False
    if kind == "qwen3_moe":
        out |= {"num_experts": cfg.moe.num_experts, "num_experts_per_tok": cfg.moe.top_k,
                "moe_intermediate_size": cfg.expert_dim, "norm_topk_prob": True,
                "decoder_sparse_step": 1, "mlp_only_layers": [],
                "router_aux_loss_coef": cfg.moe.aux_loss_coef}
    return out


def to_hf_config(cfg: ModelConfig, bos_token_id: int | None = None,
                 eos_token_id: int | None = None) -> Any:
    """A transformers config describing the same network as `cfg`."""
    import transformers

    fields = hf_config_dict(cfg, {"bos": bos_token_id, "eos": eos_token_id})
    kind = fields.pop("model_type")
    return transformers.AutoConfig.for_model(kind, **fields)


def _get(hf: dict[str, Any], key: str, default: Any = None) -> Any:
    value = hf.get(key, default)
    return default if value is None else value


def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", _get(hf, "rope_theta", 10000.0)))
    source = scaling or params
    kind = source.get("rope_type", source.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in ("linear", "llama3"):
        raise UserError(f"RoPE scaling {kind!r} is not supported; supported: linear, llama3")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return theta, RopeScaling(type=kind, **{k: source[k] for k in keys if k in source})


def from_hf_config(hf: dict[str, Any]) -> ModelConfig:
    """Our ModelConfig from an HF `config.json` (Llama, Mistral, Qwen2, Qwen3, Qwen3-MoE)."""
    kind = hf.get("model_type")
    if kind not in ARCHITECTURES:
        raise UserError(f"model_type {kind!r} is not supported; supported: "
                        f"{', '.join(ARCHITECTURES)}")
    if _get(hf, "hidden_act", "silu") != "silu":
        raise UserError(f"hidden_act {hf['hidden_act']!r} is not supported; lmforge runs "
                        "SwiGLU (silu) models")
    if kind == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
        raise UserError("Llama models with attention_bias or mlp_bias are not supported")
    theta, scaling = _rope_from_hf(hf)
    window = hf.get("sliding_window")
    if kind != "mistral" and not hf.get("use_sliding_window", False):
        window = None
    elif kind != "mistral" and window is not None and _get(hf, "max_window_layers", 0) > 0:
        raise UserError("a sliding window on only some layers (max_window_layers > 0) is not "
                        "supported")
    moe = {}
    if kind == "qwen3_moe":
        moe = dict(num_experts=hf["num_experts"], top_k=hf["num_experts_per_tok"],
                   expert_ffn_dim=hf["moe_intermediate_size"],
                   aux_loss_coef=_get(hf, "router_aux_loss_coef", 0.01))
    heads = hf["num_attention_heads"]
    head_dim = _get(hf, "head_dim", hf["hidden_size"] // heads)
    return ModelConfig(
        vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=heads, n_kv_heads=_get(hf, "num_key_value_heads", heads),
        head_size=None if head_dim * heads == hf["hidden_size"] else head_dim,
        ffn_dim=hf["intermediate_size"], max_seq_len=hf["max_position_embeddings"],
        rope_theta=theta, rope_scaling=scaling, norm_eps=_get(hf, "rms_norm_eps", 1e-6),
        tie_embeddings=bool(_get(hf, "tie_word_embeddings", False)),
        qk_norm=kind.startswith("qwen3"), qkv_bias=kind == "qwen2",
        sliding_window=window, moe=moe, init_std=_get(hf, "initializer_range", 0.02),
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

    hf_model = getattr(transformers, hf_architecture(cfg))(to_hf_config(cfg))
    missing, unexpected = hf_model.load_state_dict(
        to_hf_state_dict(model.state_dict(), cfg, fused_experts=True), strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"HF weights do not line up: missing {missing}, unexpected {unexpected}")
    if cfg.tie_embeddings:
        hf_model.tie_weights()
    return hf_model.eval()
