"""The `model:` section: a Llama-style decoder, named presets, parameter count and FLOPs.

    model: {preset: 25m, dropout: 0.1}      # a preset, then any key overridden

`vocab_size` is normally left out: the trainer takes it from the tokenizer. Presets carry a
reference vocabulary only so that `lmforge estimate` and the preset table can count parameters.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lmforge.errors import UserError
from lmforge.schema import Section


class RopeScaling(Section):
    """RoPE frequency scaling for a context longer than pretraining's (HF `rope_scaling`)."""

    type: Literal["linear", "llama3"] = Field(
        description="linear: positions / factor; llama3: Llama 3.1's banded scaling")
    factor: float = Field(gt=0)
    low_freq_factor: float = Field(1.0, gt=0, description="llama3 only")
    high_freq_factor: float = Field(4.0, gt=0, description="llama3 only")
    original_max_position_embeddings: int = Field(8192, ge=1, description="llama3 only")


class MoEConfig(Section):
    """Mixture-of-experts feed-forward (off when num_experts is 0)."""

    num_experts: int = Field(0, ge=0, description="experts per layer; 0 = dense SwiGLU")
    top_k: int = Field(2, ge=1, description="experts each token is routed to")
    aux_loss_coef: float = Field(0.01, ge=0, description="weight of the load-balancing loss")
    expert_ffn_dim: int | None = Field(None, ge=1, description="hidden size of one expert")

    @property
    def enabled(self) -> bool:
        return self.num_experts > 0


# Architecture of each preset; `vocab` is the reference vocabulary used for counting only.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, ffn_dim=512, max_seq_len=256,
                 tie_embeddings=True, vocab=4096),
    "6m": dict(dim=256, n_layers=6, n_heads=8, n_kv_heads=4, ffn_dim=768, max_seq_len=512,
               tie_embeddings=True, vocab=8192),
    "25m": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1408, max_seq_len=1024,
                tie_embeddings=True, vocab=8192),
    "125m": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_dim=2048,
                 max_seq_len=2048, tie_embeddings=True, vocab=32000),
    "350m": dict(dim=1024, n_layers=24, n_heads=16, n_kv_heads=8, ffn_dim=2816,
                 max_seq_len=2048, tie_embeddings=True, vocab=32000),
    "1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192, max_seq_len=4096,
               tie_embeddings=True, vocab=32000, rope_theta=500000.0),
    "3b": dict(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, ffn_dim=8192, max_seq_len=4096,
               tie_embeddings=True, vocab=32000, rope_theta=500000.0),
    "7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008,
               max_seq_len=4096, tie_embeddings=False, vocab=32000),
}


class ModelConfig(Section):
    preset: str | None = Field(None, description=f"start from a preset: {', '.join(PRESETS)}")
    init_from: str | None = Field(
        None, description="start from these weights: an HF model dir, hf:ORG/NAME, a run dir, a "
        "model dir or a checkpoint (its architecture and tokenizer come along); `lmforge run` "
        "continues pretraining it, `lmforge finetune` fine-tunes it")
    vocab_size: int | None = Field(
        None, ge=2, description="default: the tokenizer's vocabulary size"
    )
    dim: int = Field(128, ge=8, description="hidden size")
    n_layers: int = Field(4, ge=1)
    n_heads: int = Field(4, ge=1)
    n_kv_heads: int | None = Field(None, ge=1, description="key/value heads (GQA); default n_heads")
    head_size: int | None = Field(
        None, ge=2, description="width of one attention head (HF head_dim); default dim / n_heads. "
        "Set by imports whose heads are wider or narrower, and by head pruning")
    ffn_dim: int | None = Field(None, ge=1, description="SwiGLU hidden size; default ~8/3 dim")
    max_seq_len: int = Field(256, ge=1, description="longest context (RoPE table size)")
    rope_theta: float = Field(10000.0, gt=0)
    rope_scaling: RopeScaling | None = Field(None, description="RoPE scaling (imported models)")
    norm_eps: float = Field(1e-5, gt=0)
    tie_embeddings: bool = Field(True, description="share embed_tokens and lm_head")
    dropout: float = Field(0.0, ge=0, lt=1)
    qk_norm: bool = Field(False, description="RMSNorm on queries and keys per head")
    qkv_bias: bool = Field(False, description="biases on the q, k and v projections (Qwen2)")
    sliding_window: int | None = Field(None, ge=1, description="attend to this many past tokens")
    init_std: float = Field(0.02, gt=0)
    moe: MoEConfig = Field(default_factory=MoEConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset") is None:
            return data
        name = data["preset"]
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        base = {k: v for k, v in PRESETS[name].items() if k != "vocab"}
        return {**base, **data}

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.head_size is None and self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.kv_heads}")
        if self.moe.enabled and self.moe.top_k > self.moe.num_experts:
            raise ValueError("moe.top_k must not exceed moe.num_experts")
        return self

    @property
    def head_dim(self) -> int:
        return self.head_size or self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width: explicit, or Llama's 8/3 * dim rounded up to a multiple of 32."""
        if self.ffn_dim is not None:
            return self.ffn_dim
        return 32 * -(-int(8 * self.dim / 3) // 32)

    @property
    def expert_dim(self) -> int:
        return self.moe.expert_ffn_dim or self.hidden_dim

    @property
    def vocab(self) -> int:
        if self.vocab_size is None:
            raise UserError("model.vocab_size is unknown; set it or train from a tokenizer")
        return self.vocab_size

    def with_vocab(self, vocab_size: int) -> ModelConfig:
        """This config with the tokenizer's vocabulary, unless the user set a larger one."""
        if self.vocab_size is not None and self.vocab_size < vocab_size:
            raise UserError(
                f"model.vocab_size={self.vocab_size} is smaller than the tokenizer's {vocab_size}; "
                "remove model.vocab_size or raise it"
            )
        return self.model_copy(update={"vocab_size": self.vocab_size or vocab_size})


def reference_vocab(name: str) -> int:
    return PRESETS[name]["vocab"]


def preset_config(name: str, vocab_size: int | None = None) -> ModelConfig:
    """A preset with its reference vocabulary (or the one given)."""
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}")
    return ModelConfig(preset=name, vocab_size=vocab_size or reference_vocab(name))


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameters by kind: embedding, per-layer blocks, head, and the total and active counts.

    `active` counts only the top-k experts of a MoE layer: what one token touches.
    """
    d, v, hd = cfg.dim, cfg.vocab, cfg.head_dim
    attn = d * cfg.n_heads * hd + 2 * d * cfg.kv_heads * hd + cfg.n_heads * hd * d
    if cfg.qk_norm:
        attn += 2 * hd
    if cfg.qkv_bias:
        attn += (cfg.n_heads + 2 * cfg.kv_heads) * hd
    if cfg.moe.enabled:
        expert = 3 * d * cfg.expert_dim
        ffn = cfg.moe.num_experts * expert + cfg.moe.num_experts * d
        ffn_active = cfg.moe.top_k * expert + cfg.moe.num_experts * d
    else:
        ffn = ffn_active = 3 * d * cfg.hidden_dim
    norms = 2 * d
    embedding = v * d
    head = 0 if cfg.tie_embeddings else v * d
    blocks = cfg.n_layers * (attn + ffn + norms)
    total = embedding + blocks + d + head
    active = embedding + cfg.n_layers * (attn + ffn_active + norms) + d + head
    return {"embedding": embedding, "blocks": blocks, "head": head, "total": total,
            "active": active}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B convention.

    6 x the matmul parameters a token touches (the blocks' active weights and the output
    projection, which costs V*d even when tied; the embedding lookup is free) plus the
    attention scores and values, 12 * layers * dim * context, context capped by the window.
    """
    counts = count_params(cfg)
    matmul_params = counts["active"] - counts["embedding"] - counts["head"] + cfg.vocab * cfg.dim
    context = min(seq_len, cfg.sliding_window or seq_len)
    return 6.0 * matmul_params + 12.0 * cfg.n_layers * cfg.dim * context


def preset_table() -> list[dict[str, Any]]:
    """One row per preset: shape, parameters, and training FLOPs per token at full context."""
    rows = []
    for name in PRESETS:
        cfg = preset_config(name)
        counts = count_params(cfg)
        rows.append({
            "preset": name, "dim": cfg.dim, "layers": cfg.n_layers, "heads": cfg.n_heads,
            "kv_heads": cfg.kv_heads, "ffn_dim": cfg.hidden_dim, "vocab": cfg.vocab,
            "context": cfg.max_seq_len, "params": counts["total"],
            "flops_per_token": flops_per_token(cfg, cfg.max_seq_len),
        })
    return rows
