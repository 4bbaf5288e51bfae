"""A Llama-style decoder: RMSNorm, RoPE, SwiGLU (or MoE), grouped-query attention via SDPA.

Parameter names are Hugging Face Llama's (`model.layers.0.self_attn.q_proj.weight`, ...), so
an export is a plain save. The forward pass is kept lean for small models where per-op
overhead dominates: RoPE tables are built once, q/k/v and gate/up are one matmul each, and
queries and keys are rotated in one call.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.model.config import ModelConfig, RopeScaling
from lmforge.model.kv_cache import KVCache
from lmforge.model.lora import fused_linear
from lmforge.model.moe import MoE

EAGER_MAX_KEYS = 512


IGNORE = -100  # a target that carries no loss (prompt tokens, padding)


class Output(NamedTuple):
    logits: Tensor  # (B, T, V); training with IGNORE targets: (N, V), the N others only
    loss: Tensor | None
    aux_loss: Tensor | None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """x / rms(x) * weight in fp32, returned in x's dtype (HF's LlamaRMSNorm).

        Written out on CPU: there F.rms_norm is a longer chain of the same ops, and forward
        plus backward took 1.7x as long (683 vs 394 us at 768 x 128, torch 2.13)."""
        if x.device.type != "cpu":
            weight = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
            return F.rms_norm(x, self.weight.shape, weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * self.weight).to(x.dtype)


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> Tensor:
    """Inverse frequencies of RoPE, scaled the way transformers scales them."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    if scaling is None:
        return inv_freq
    if scaling.type == "linear":
        return inv_freq / scaling.factor
    # llama3: long wavelengths slowed by `factor`, short ones kept, a smooth band between
    old = scaling.original_max_position_embeddings
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old / low, inv_freq / scaling.factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return torch.where(medium, smoothed, scaled)


def rope_tables(head_dim: int, max_len: int, theta: float,
                scaling: RopeScaling | None = None) -> tuple[Tensor, Tensor]:
    """cos and sin of shape (max_len, head_dim), in HF's half-split (rotate_half) layout."""
    inv_freq = rope_frequencies(head_dim, theta, scaling)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, T, H, D) queries or keys; cos/sin broadcast as (T, 1, D) or (B, T, 1, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def causal_bias(t: int, device: torch.device) -> Tensor:
    """(t, t) fp32 scores offset: 0 where a query may look, -inf at later positions.
    Built once per shape in eager mode; under torch.compile it is part of the graph."""
    if torch.compiler.is_compiling():
        return torch.full((t, t), float("-inf"), device=device).triu(1)
    return _cached_causal_bias(t, device)


@functools.lru_cache(maxsize=8)
def _cached_causal_bias(t: int, device: torch.device) -> Tensor:
    return torch.full((t, t), float("-inf"), device=device).triu(1)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool,
              dropout: float) -> Tensor:
    """Scaled dot-product attention over (B, H, T, D) queries and (B, H_kv, S, D) keys/values.
    `mask` (True = may attend) broadcasts to (B, H, T, S).

    PyTorch's fused SDPA, except for bf16/fp16 on CPU with short keys: there plain
    matmul-softmax-matmul (softmax in fp32) ran forward plus backward in a sixth of the time
    of SDPA's flash kernel (T=64, 4 heads of 32). In fp32 SDPA is the faster one (torch 2.13,
    2 threads: 4.5 vs 5.2 ms at B=12 T=64 4x32, 31 vs 41 ms at B=4 T=256 8x64 with a
    document mask).
    """
    if q.device.type != "cpu" or k.size(-2) > EAGER_MAX_KEYS or q.dtype == torch.float32:
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)  # SDPA takes an additive mask in the query's dtype
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                              dropout_p=dropout, enable_gqa=k.size(1) != q.size(1))
    if k.size(1) != q.size(1):
        k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
        v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)
    if is_causal:
        bias = causal_bias(q.size(-2), q.device)
    elif mask is not None:
        bias = mask if mask.dtype != torch.bool else torch.zeros(
            mask.shape, device=q.device).masked_fill_(~mask, float("-inf"))
    else:
        bias = torch.zeros((), device=q.device)
    # one op scales, masks and (for bf16 scores) promotes to fp32 for the softmax
    scores = torch.add(bias, q @ k.mT, alpha=q.size(-1) ** -0.5)
    probs = scores.softmax(dim=-1).to(q.dtype)
    if dropout:
        probs = F.dropout(probs, dropout)
    return probs @ v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        bias = cfg.qkv_bias
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None,
                is_causal: bool, cache: KVCache | None) -> Tensor:
        b, t, _ = x.shape
        h, h_kv = self.n_heads, self.n_kv_heads
        # q, k and v in one matmul (one large GEMM beats three small ones; same parameters)
        qkv = fused_linear(x, (self.q_proj, self.k_proj, self.v_proj))
        qkv = qkv.view(b, t, h + 2 * h_kv, self.head_dim)
        if self.q_norm is not None:
            q, k, v = qkv.split((h, h_kv, h_kv), dim=2)
            qk = torch.cat((self.q_norm(q), self.k_norm(k)), dim=2)
        else:
            qk, v = qkv.split((h + h_kv, h_kv), dim=2)
        # queries and keys rotated together: half the elementwise ops of two calls
        q, k = apply_rope(qk, *rope).split((h, h_kv), dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        y = attention(q, k, v, mask, is_causal, self.dropout if self.training else 0.0)
        y = self.o_proj(y.transpose(1, 2).reshape(b, t, -1))
        return F.dropout(y, self.dropout, self.training) if self.dropout else y


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = fused_linear(x, (self.gate_proj, self.up_proj)).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MoE(cfg, MLP) if cfg.moe.enabled else MLP(cfg.dim, cfg.hidden_dim)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None,
                is_causal: bool, cache: KVCache | None = None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, is_causal, cache)
        y = self.mlp(self.post_attention_layernorm(x))
        return x + (F.dropout(y, self.dropout, self.training) if self.dropout else y)


class Decoder(nn.Module):
    """Embeddings, blocks and the final norm: HF's `model.` prefix."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


class Transformer(nn.Module):
    """The causal language model. `forward` returns logits and, given targets, the loss."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.moe_layers = [m for m in self.modules() if isinstance(m, MoE)]
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; the two residual projections scaled by 1/sqrt(2 L).

        Also refills the RoPE tables, so a model built on the meta device (FSDP) and moved
        with to_empty() is complete after this call."""
        cfg = self.cfg
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)
        std = self.cfg.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(
                    ("o_proj", "down_proj")) else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: Tensor,
        targets: Tensor | None = None,
        *,
        positions: Tensor | None = None,
        doc_ids: Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
        attn_mask: Tensor | None = None,
        logit_rows: Tensor | None = None,
    ) -> Output:
        """input_ids (B, T). `positions`/`doc_ids` (B, T) come from packed batches and keep
        attention inside each document; `cache` makes this a prefill or decode step;
        `attn_mask` (B, T, T, True where a query may look), with `positions`, lays several
        continuations of one shared prefix side by side in a row (eval's choice scoring);
        `logit_rows` (N, 2) [batch, position] pairs: logits (N, vocab) only there."""
        t = input_ids.size(1)
        start = cache.length if cache is not None else 0
        if start + t > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + t} tokens exceeds max_seq_len "
                             f"{self.cfg.max_seq_len}")
        rope = self._rope(start, t, positions)
        if attn_mask is not None:
            if cache is not None or self.cfg.sliding_window is not None:
                raise ValueError("attn_mask is for full attention without a cache")
            bias = torch.zeros(attn_mask.shape, dtype=self._compute_dtype(),
                               device=attn_mask.device)
            mask, is_causal = bias.masked_fill_(~attn_mask, float("-inf")).unsqueeze(1), False
        else:
            mask, is_causal = self._mask(start, t, doc_ids)
        x = self.model.embed_tokens(input_ids)
        for block in self.model.layers:
            x = block(x, rope, mask, is_causal, cache)
        if cache is not None:
            cache.advance(t)
        x = self.model.norm(x)
        if last_only:
            x = x[:, -1:]
        if logit_rows is not None:
            x = x[logit_rows[:, 0], logit_rows[:, 1]]
        if targets is None:
            return Output(self.lm_head(x), None, None)
        # the vocabulary projection only where there is a loss: fine-tuning rows are mostly
        # prompt (an SFT batch of 4 x 256 had 273 reply tokens), and the projection and its
        # softmax are the largest single cost of a small model's step. On CPU only: picking
        # the rows waits for the forward pass, which on a GPU would stall the launch queue
        flat, h = targets.flatten(), x.flatten(0, 1)
        keep = flat != IGNORE if self.training and x.device.type == "cpu" else None
        if keep is not None and not bool(keep.all()):
            h, flat = h[keep], flat[keep]
        logits = self.lm_head(h)
        loss = F.cross_entropy(logits.float(), flat, ignore_index=IGNORE)
        if logits.size(0) == x.size(0) * x.size(1):
            logits = logits.view(*x.shape[:2], -1)
        aux = None
        if self.moe_layers:
            aux = sum(m.aux_loss for m in self.moe_layers) / len(self.moe_layers)
            loss = loss + self.cfg.moe.aux_loss_coef * aux
        return Output(logits, loss, aux)

    def _rope(self, start: int, t: int, positions: Tensor | None) -> tuple[Tensor, Tensor]:
        dtype = self._compute_dtype()
        if positions is None:
            cos, sin = self.rope_cos[start:start + t], self.rope_sin[start:start + t]
            return cos.to(dtype).unsqueeze(1), sin.to(dtype).unsqueeze(1)
        return self.rope_cos[positions].to(dtype).unsqueeze(2), \
            self.rope_sin[positions].to(dtype).unsqueeze(2)

    def _compute_dtype(self) -> torch.dtype:
        device = self.rope_cos.device.type
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
        return self.model.norm.weight.dtype

    def _mask(self, start: int, t: int, doc_ids: Tensor | None) -> tuple[Tensor | None, bool]:
        """(mask, is_causal) for SDPA. The common cases need no mask tensor at all."""
        window = self.cfg.sliding_window
        needs_window = window is not None and start + t > window
        if doc_ids is None and not needs_window:
            return None, start == 0 and t > 1
        device = self.rope_cos.device
        q_pos = torch.arange(start, start + t, device=device)[:, None]
        k_pos = torch.arange(start + t, device=device)[None, :]
        mask = k_pos <= q_pos
        if needs_window:
            mask = mask & (k_pos > q_pos - window)
        if doc_ids is not None:
            if start:
                raise ValueError("document masks are for training batches, not cached decoding")
            mask = mask & (doc_ids[:, :, None] == doc_ids[:, None, :])
            # additive, made once for all layers (0 where a query may look, -inf elsewhere)
            bias = torch.zeros(mask.shape, device=device).masked_fill_(~mask, float("-inf"))
            return bias.unsqueeze(1), False
        return mask, False
