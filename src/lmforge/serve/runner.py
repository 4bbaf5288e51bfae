"""The engine's forward pass: prefill prompts into cache slots, decode every slot at once.

Small models spend their time in per-op overhead, not arithmetic, so the decode step is built
to issue as few ops as possible, on tensors made once at load time:

- q, k and v come from one matmul, gate and up from another, all weights pre-transposed,
  and the residual adds ride on `addmm`;
- RMSNorm is one fused LayerNorm of [x, -x], whose mean is 0 and whose variance is
  mean(x^2), so its first half is exactly RMSNorm(x) (on CPU F.rms_norm is a chain of
  about seven ops; this is three, and measured ~10% faster per step at batch 8-16);
- RoPE is `x * cos + flip(x) * sin'` with the sign of rotate_half folded into sin';
- the KV cache is preallocated per slot, (layers, slots, kv_heads, context, head_dim), and
  new keys land with one `scatter_` (decode) or `index_copy_` (prefill) per layer;
- prompts admitted together are prefilled in one forward pass, packed one after the other
  with attention masked to each prompt's own causal (and sliding-window) span, and that
  pass is the running batch's decode step too (`step`): the prompt tokens are extra rows of
  every matmul and only attention runs apart (on one CPU core a 19-token prompt costs 1.4
  ms in a pass of its own and 1.1-1.3 ms more in a batch-16 step: its rows' arithmetic
  stays, the pass's per-op costs go); a prompt whose start a slot holds brings only the
  rest (`copy_prefix`, spans attending to the slot's cache);
- each slot owns a row of an additive mask that is opened one position per step, so no mask
  is built per step; attention reads a length rounded up to `BUCKET` positions.

Rows of a decode batch are slots 0..B-1; a slot with no sequence decodes a dummy token at
the last position of the context (its row is thrown away; its mask row keeps position 0
open, so its softmax stays finite), which keeps the batch a plain slice of every buffer.
The dummy's key lands where no sequence reads before writing it, so an idle slot keeps the
keys its last sequence left, for a later prompt that starts the same way (`copy_prefix`).

LoRA adapters (see `adapters`) ride on the same pass: each row names its adapter (0 is the
base) and each fused matmul adds every adapter's update to its own rows, gathered and
scattered back; a batch on a single adapter adds it to all rows at once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lmforge.model.llama import Transformer
from lmforge.model.prompt_tuning import PromptEmbedding
from lmforge.model.quant import QuantEmbedding, QuantLinear, concat
from lmforge.serve.adapters import ServedAdapter

BUCKET = 16


# a projection: its weight transposed (K, N), or a quantized module run on its own kernel
Weight = Tensor | QuantLinear


def mm(x: Tensor, w: Weight) -> Tensor:
    return torch.mm(x, w) if isinstance(w, Tensor) else w(x)


def addmm(acc: Tensor, x: Tensor, w: Weight) -> Tensor:
    """acc + x @ w, fused into one op for dense weights."""
    return torch.addmm(acc, x, w) if isinstance(w, Tensor) else acc + w(x)


@dataclass
class Layer:
    norm_in: Tensor  # doubled, see Runner._rms
    qkv_t: Weight
    qkv_bias: Tensor | None  # Qwen2's q/k/v biases (inside the module when quantized)
    o_t: Weight
    norm_post: Tensor
    gate_up_t: Weight | None  # None: the block's MoE module runs instead
    down_t: Weight | None
    moe: torch.nn.Module | None
    q_norm: Tensor | None
    k_norm: Tensor | None


@dataclass
class Decode:
    tokens: Tensor  # (B,) the input token of slots 0..B-1
    pos: Tensor  # (B,) its position
    length: int  # the highest position + 1


@dataclass
class Pack:
    ids: Tensor  # (N,) the prompts' new tokens one after the other
    pos: Tensor  # (N,) each token's position in its sequence
    slots: Tensor  # (P,) each prompt's cache slot
    lens: Tensor  # (P,) each prompt's whole length, cached prefix included
    last: Tensor  # (P,) index of each prompt's last token in ids
    rows: Tensor  # (N * kv_heads,) where each key goes in a layer's flattened cache
    causal: bool  # one prompt: plain causal attention, no mask
    mask: Tensor | None  # several: causal within each prompt only
    # when a prompt continues a prefix already in its slot, each prompt attends to its
    # slot's cache instead: (slot, first row in ids, new tokens, whole length, mask)
    spans: list[tuple[int, int, int, int, Tensor | None]] | None = None
    # rows of ids whose last hidden states `step` keeps in `hidden` (an echoed prompt's
    # positions, scored by `prompt_logprobs`); None, as for most packs: nothing is kept
    keep: Tensor | None = None
    hidden: Tensor | None = None


# the adapters of a step's rows: (adapter, its rows, or None for all of them)
AdapterRows = list[tuple[int, Tensor | None]]


class Runner:
    """Slot-based KV cache and forward passes over a `Transformer`'s weights (copied)."""

    def __init__(self, model: Transformer, slots: int, dtype: torch.dtype,
                 device: torch.device, adapters: list[ServedAdapter] | tuple = (),
                 kv_int8: bool = False) -> None:
        cfg = model.cfg
        self.cfg, self.slots, self.dtype, self.device = cfg, slots, dtype, device
        self.heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.dim, self.context, self.eps = cfg.dim, cfg.max_seq_len, cfg.norm_eps
        self.window = cfg.sliding_window
        self.n_q = self.heads * self.head_dim
        self.n_qk = (self.heads + self.kv_heads) * self.head_dim
        self.layers = [self._layer(block) for block in model.model.layers]
        # adapter i + 1, per layer: group -> (A^T, B^T * scale); index 0 is the base
        self.adapters: list[list[dict[str, tuple[Tensor, Tensor]]]] = [[]] + [
            [{g: (self._own(a), self._own(b)) for g, (a, b) in layer.items()}
             for layer in adapter.layers] for adapter in adapters]
        embed = model.model.embed_tokens  # a prompt-tuned model's virtual rows come after
        if isinstance(embed, QuantEmbedding):  # rows dequantized as they are looked up
            self.embed: Tensor | QuantEmbedding = copy.deepcopy(embed).to(device, dtype)
        else:
            self.embed = self._own(embed.table() if isinstance(embed, PromptEmbedding)
                                   else embed.weight)
        # rows of the table (a prompt-tuned model's virtual ids too) and of the head's output
        self.embed_rows = (self.embed.size(0) if isinstance(self.embed, Tensor)
                           else self.embed.num_embeddings)
        self.vocab = cfg.vocab
        self.norm = self._norm(model.model.norm.weight)
        self.head_t = self._weight(model.lm_head)
        # per position: cos, then sin with rotate_half's sign, over all q and k heads
        half = self.head_dim // 2
        cos, sin = self._own(model.rope_cos), self._own(model.rope_sin)
        sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=1)
        heads = self.heads + self.kv_heads
        self.rope = torch.cat((cos.repeat(1, heads), sin.repeat(1, heads)), dim=1).contiguous()
        shape = (cfg.n_layers, slots, self.kv_heads, self.context, self.head_dim)
        # int8: each key/value vector rounded with its own scale (a quarter of fp32's bytes)
        self.kv_int8 = kv_int8
        self.k = torch.zeros(shape, dtype=torch.int8 if kv_int8 else dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.k_layers, self.v_layers = list(self.k.unbind(0)), list(self.v.unbind(0))
        scale_shape = (*shape[:-1], 1) if kv_int8 else (0,)
        self.k_scale = torch.zeros(scale_shape, dtype=dtype, device=device)
        self.v_scale = torch.zeros_like(self.k_scale)
        self._view_cache: dict[tuple[int, int], tuple[Tensor, list[tuple[Tensor, ...]]]] = {}
        self.mask = torch.full((slots, self.context), float("-inf"), dtype=dtype, device=device)
        self.mask[:, 0] = 0.0
        self._zero = torch.zeros((), dtype=dtype, device=device)
        self._closed = torch.tensor(float("-inf"), dtype=dtype, device=device)
        self._rows = torch.arange(slots, device=device)

    def _own(self, tensor: Tensor) -> Tensor:
        """A copy on the engine's device and dtype (the model itself is left untouched)."""
        return tensor.detach().to(device=self.device, dtype=self.dtype, copy=True)

    def _norm(self, weight: Tensor) -> Tensor:
        """An RMSNorm weight doubled for `_rms`."""
        w = self._own(weight)
        return torch.cat((w, w))

    def _weight(self, *projections: torch.nn.Module) -> Weight:
        """Projections of one input as one operand: dense weights stacked and transposed,
        quantized ones fused into one module on their kernel."""
        if all(isinstance(p, QuantLinear) for p in projections):
            fused = projections[0] if len(projections) == 1 else concat(list(projections))
            return copy.deepcopy(fused).to(self.device)
        return torch.cat([self._own(p.weight) for p in projections]).t().contiguous()

    @torch.no_grad()
    def _layer(self, block: torch.nn.Module) -> Layer:
        attn, mlp = block.self_attn, block.mlp
        qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
        dense = hasattr(mlp, "gate_proj")
        quantized = isinstance(attn.q_proj, QuantLinear)
        return Layer(
            norm_in=self._norm(block.input_layernorm.weight),
            qkv_t=self._weight(*qkv),
            qkv_bias=None if attn.q_proj.bias is None or quantized else torch.cat(
                [self._own(p.bias) for p in qkv]),
            o_t=self._weight(attn.o_proj),
            norm_post=self._norm(block.post_attention_layernorm.weight),
            gate_up_t=self._weight(mlp.gate_proj, mlp.up_proj) if dense else None,
            down_t=self._weight(mlp.down_proj) if dense else None,
            moe=None if dense else copy.deepcopy(mlp).to(device=self.device, dtype=self.dtype),
            q_norm=self._own(attn.q_norm.weight) if attn.q_norm is not None else None,
            k_norm=self._own(attn.k_norm.weight) if attn.k_norm is not None else None,
        )

    def _rms(self, x: Tensor, doubled_weight: Tensor) -> Tensor:
        """RMSNorm(x) * w as LayerNorm([x, -x]) with weight [w, w], first half."""
        mirrored = torch.cat((x, -x), dim=1)
        return F.layer_norm(mirrored, mirrored.shape[-1:], doubled_weight, None,
                            self.eps)[:, :self.dim]

    def _rope(self, layer: Layer, qkv: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotated q and k side by side, (N, n_qk)."""
        n, hd = qkv.size(0), self.head_dim
        qk = qkv[:, :self.n_qk]
        if layer.q_norm is not None:
            q = F.rms_norm(qk[:, :self.n_q].reshape(n, -1, hd), (hd,), layer.q_norm, self.eps)
            k = F.rms_norm(qk[:, self.n_q:].reshape(n, -1, hd), (hd,), layer.k_norm, self.eps)
            qk = torch.cat((q, k), dim=1).view(n, -1)
        swapped = qk.unflatten(1, (-1, 2, hd // 2)).flip(2).view(n, -1)
        return qk * cos + swapped * sin

    def _mlp(self, i: int, x: Tensor, lora: AdapterRows) -> Tensor:
        layer = self.layers[i]
        h = self._rms(x, layer.norm_post)
        if layer.moe is not None:
            return x + layer.moe(h)
        gate_up = mm(h, layer.gate_up_t)
        self._lora(gate_up, h, i, "gate_up", lora)
        gate, up = gate_up.chunk(2, dim=-1)
        act = F.silu(gate) * up
        return self._lora(addmm(x, act, layer.down_t), act, i, "down", lora)

    def _lora(self, out: Tensor, x: Tensor, layer: int, group: str, lora: AdapterRows
              ) -> Tensor:
        """Add each adapter's update of one fused matmul to its rows of `out` (in place)."""
        for adapter, rows in lora:
            update = self.adapters[adapter][layer].get(group)
            if update is None:
                continue
            a_t, b_t = update
            if rows is None:
                out.addmm_(torch.mm(x, a_t), b_t)
            else:
                out.index_add_(0, rows, torch.mm(torch.mm(x.index_select(0, rows), a_t), b_t))
        return out

    def adapter_rows(self, row_adapters: list[int] | None) -> AdapterRows:
        """Group a step's rows by adapter (-1: an idle row, whose output is thrown away)."""
        if not row_adapters:
            return []
        used = set(row_adapters) - {-1}
        if len(used) == 1:
            only = used.pop()
            return [(only, None)] if only else []
        ids = torch.tensor(row_adapters, device=self.device)
        return [(a, torch.nonzero(ids == a).flatten()) for a in sorted(used) if a]

    def logits(self, x: Tensor) -> Tensor:
        """The output head over last hidden states (N, dim): logits (N, V)."""
        return mm(self._rms(x, self.norm), self.head_t)

    def free(self, slot: int) -> None:
        """Close a slot's mask row (position 0 stays open so a dummy row stays finite)."""
        self.mask[slot].fill_(float("-inf"))
        self.mask[slot, 0] = 0.0

    def pack(self, slots: list[int], prompts: list[list[int]],
             cached: list[int] | None = None) -> Pack:
        """Prompts to prefill together, packed one after the other into their slots;
        `cached[i]`: how many of prompt i's first positions its slot already holds
        (`copy_prefix`), so `prompts[i]` is only the rest."""
        cached = cached or [0] * len(prompts)
        new = torch.tensor([len(p) for p in prompts], device=self.device)
        offset = torch.tensor(cached, device=self.device)
        n, kvh = int(new.sum()), self.kv_heads
        ids = torch.tensor([t for p in prompts for t in p], device=self.device)
        segment = torch.repeat_interleave(torch.arange(len(prompts), device=self.device), new)
        starts = torch.cumsum(new, 0) - new
        pos = torch.arange(n, device=self.device) - starts[segment] + offset[segment]
        slot = torch.tensor(slots, device=self.device)
        # where each token's keys go in a layer's cache viewed as (slots * kv_heads * context, hd)
        heads = torch.arange(kvh, device=self.device)
        rows = ((slot[segment, None] * kvh + heads) * self.context + pos[:, None]).view(-1)
        last = starts + new - 1
        if not any(cached):
            causal, mask = self._prefill_mask(segment, pos, len(prompts))
            return Pack(ids, pos, slot, new, last, rows, causal, mask)
        spans, first = [], 0
        for s, m, p in zip(slots, cached, prompts, strict=True):
            spans.append((s, first, len(p), m + len(p), self._span_mask(m, len(p))))
            first += len(p)
        return Pack(ids, pos, slot, new + offset, last, rows, False, None, spans)

    def _span_mask(self, start: int, n: int) -> Tensor | None:
        """Positions start..start+n-1 attending to keys 0..start+n-1: causal (and within
        the sliding window); None when every query sees every key."""
        q = torch.arange(start, start + n, device=self.device)[:, None]
        k = torch.arange(start + n, device=self.device)[None, :]
        allowed = k <= q
        if self.window is not None:
            allowed &= k > q - self.window
        return None if n == 1 and bool(allowed.all()) else allowed

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        """Give slot `target` the keys and values of slot `source`'s first `length`
        positions (a prompt that starts the way another sequence did)."""
        for cache in (self.k, self.v, *((self.k_scale, self.v_scale) if self.kv_int8 else ())):
            cache[:, target, :, :length] = cache[:, source, :, :length]

    @torch.no_grad()
    def prefill(self, slots: list[int], prompts: list[list[int]],
                adapters: list[int] | None = None) -> Tensor:
        """Run prompts into their slots (overwriting them) in one forward pass, packed one
        after the other; each prompt's last-position logits, (P, V). `adapters`: each
        prompt's adapter (default: the base)."""
        rows = [a for a, p in zip(adapters, prompts, strict=True) for _ in p] if adapters else None
        return self.step(None, self.pack(slots, prompts), rows)[1]

    @torch.no_grad()
    def decode(self, tokens: Tensor, pos: Tensor, length: int,
               adapters: list[int] | None = None) -> Tensor:
        """One new token for each of slots 0..B-1 at its position (`length`: the highest
        position + 1); logits (B, V)."""
        return self.step(Decode(tokens, pos, length), None, adapters)[0]

    @torch.no_grad()
    def step(self, decode: Decode | None, pack: Pack | None,
             row_adapters: list[int] | None = None) -> tuple[Tensor | None, Tensor | None]:
        """One forward pass over a decode batch, a pack of prompts, or both at once: the
        prompt tokens ride along as extra rows of every matmul and only attention runs
        apart, which saves a pass's per-op costs (on GPUs, its kernel launches).
        Logits of the decode rows (B, V) and of each prompt's last token (P, V); the hidden
        states of the pack's `keep` rows go to `pack.hidden`. `row_adapters`: the adapter
        of each input row, decode rows first (None: the base).

        A slot in both (a request admitted this step) is a dummy decode row there."""
        b = decode.tokens.size(0) if decode is not None else 0
        if decode is None:
            ids, pos = pack.ids, pack.pos
        elif pack is None:
            ids, pos = decode.tokens, decode.pos
        else:
            ids, pos = torch.cat((decode.tokens, pack.ids)), torch.cat((decode.pos, pack.pos))
        views = self._open_decode(decode) if decode is not None else None
        lora = self.adapter_rows(row_adapters)
        x = F.embedding(ids, self.embed) if isinstance(self.embed, Tensor) else self.embed(ids)
        cos, sin = self.rope[pos].split(self.n_qk, dim=1)
        for i, layer in enumerate(self.layers):
            h = self._rms(x, layer.norm_in)
            qkv = mm(h, layer.qkv_t) if layer.qkv_bias is None else torch.addmm(
                layer.qkv_bias, h, layer.qkv_t)
            self._lora(qkv, h, i, "qkv", lora)
            qk = self._rope(layer, qkv, cos, sin)
            if pack is None:
                y = self._attend_decode(views[i], qk, qkv)
            elif decode is None:
                y = self._attend_pack(i, qk, qkv, pack)
            else:
                y = torch.cat((self._attend_decode(views[i], qk[:b], qkv[:b]),
                               self._attend_pack(i, qk[b:], qkv[b:], pack)))
            x = self._lora(addmm(x, y, layer.o_t), y, i, "o", lora)
            x = self._mlp(i, x, lora)
        if pack is not None:
            self._open_pack(pack)
            if pack.keep is not None:
                pack.hidden = x[b + pack.keep]
            x = x[pack.last] if decode is None else torch.cat((x[:b], x[b + pack.last]))
        logits = self.logits(x)
        return (logits[:b] if decode is not None else None,
                logits[b:] if pack is not None else None)

    def _open_decode(self, decode: Decode) -> list[tuple[Tensor, ...]]:
        """Open each row's mask at its position (and close what leaves the window); the
        per-layer cache views and scatter index this batch uses."""
        b, pos = decode.tokens.size(0), decode.pos
        rows = self._rows[:b]
        self.mask.index_put_((rows, pos), self._zero)
        if self.window is not None:
            old = pos - self.window
            self.mask.index_put_((rows, old.clamp(min=0)),
                                 torch.where(old >= 0, self._closed, self._zero))
        length = min(self.context, -(-decode.length // BUCKET) * BUCKET)
        mask, caches = self._views(b, length)
        where = pos.view(b, 1, 1, 1).expand(b, self.kv_heads, 1, self.head_dim)
        return [(*cache, mask, where) for cache in caches]

    def _attend_decode(self, view: tuple[Tensor, ...], qk: Tensor, qkv: Tensor) -> Tensor:
        k_cache, v_cache, keys, values, *scales, mask, where = view
        b, hd, kvh = qk.size(0), self.head_dim, self.kv_heads
        k, v = qk[:, self.n_q:].view(b, kvh, 1, hd), qkv[:, self.n_qk:].view(b, kvh, 1, hd)
        if self.kv_int8:
            ks_cache, vs_cache, k_scales, v_scales = scales
            (k, k_s), (v, v_s) = quantize_kv(k), quantize_kv(v)
            ks_cache.scatter_(2, where[..., :1], k_s)
            vs_cache.scatter_(2, where[..., :1], v_s)
        k_cache.scatter_(2, where, k)
        v_cache.scatter_(2, where, v)
        if self.kv_int8:
            keys, values = keys.to(self.dtype) * k_scales, values.to(self.dtype) * v_scales
        y = F.scaled_dot_product_attention(
            qk[:, :self.n_q].view(b, self.heads, 1, hd), keys, values, attn_mask=mask,
            enable_gqa=kvh != self.heads)
        return y.reshape(b, -1)

    def _attend_pack(self, layer: int, qk: Tensor, qkv: Tensor, pack: Pack) -> Tensor:
        n, hd, kvh = qk.size(0), self.head_dim, self.kv_heads
        k = qk[:, self.n_q:].reshape(n * kvh, hd)
        v = qkv[:, self.n_qk:].reshape(n * kvh, hd)
        if self.kv_int8:
            (k_q, k_s), (v_q, v_s) = quantize_kv(k), quantize_kv(v)
            self.k_layers[layer].view(-1, hd).index_copy_(0, pack.rows, k_q)
            self.v_layers[layer].view(-1, hd).index_copy_(0, pack.rows, v_q)
            self.k_scale[layer].view(-1, 1).index_copy_(0, pack.rows, k_s)
            self.v_scale[layer].view(-1, 1).index_copy_(0, pack.rows, v_s)
        else:
            self.k_layers[layer].view(-1, hd).index_copy_(0, pack.rows, k)
            self.v_layers[layer].view(-1, hd).index_copy_(0, pack.rows, v)
        if pack.spans is not None:
            return self._attend_spans(layer, qk[:, :self.n_q], pack.spans)
        y = F.scaled_dot_product_attention(
            qk[:, :self.n_q].view(n, self.heads, hd).transpose(0, 1).unsqueeze(0),
            k.view(n, kvh, hd).transpose(0, 1).unsqueeze(0),
            v.view(n, kvh, hd).transpose(0, 1).unsqueeze(0), attn_mask=pack.mask,
            is_causal=pack.causal, enable_gqa=kvh != self.heads)
        return y[0].transpose(0, 1).reshape(n, -1)

    def _attend_spans(self, layer: int, q: Tensor,
                      spans: list[tuple[int, int, int, int, Tensor | None]]) -> Tensor:
        """Each prompt's new queries over its slot's cache: the reused prefix and the keys
        just written."""
        keys, values, hd = self.k_layers[layer], self.v_layers[layer], self.head_dim
        out = []
        for slot, first, n, length, mask in spans:
            k, v = keys[slot, :, :length], values[slot, :, :length]
            if self.kv_int8:
                k = k.to(self.dtype) * self.k_scale[layer, slot, :, :length]
                v = v.to(self.dtype) * self.v_scale[layer, slot, :, :length]
            y = F.scaled_dot_product_attention(
                q[first:first + n].view(n, self.heads, hd).transpose(0, 1).unsqueeze(0),
                k.unsqueeze(0), v.unsqueeze(0),
                attn_mask=mask, enable_gqa=self.kv_heads != self.heads)
            out.append(y[0].transpose(0, 1).reshape(n, -1))
        return torch.cat(out) if len(out) > 1 else out[0]

    def _open_pack(self, pack: Pack) -> None:
        """Each prompt's slot now attends to its prompt (within the sliding window)."""
        cols = torch.arange(self.context, device=self.device)
        lens = pack.lens
        low = (lens - self.window).clamp(min=0) if self.window else torch.zeros_like(lens)
        opened = (cols >= low[:, None]) & (cols < lens[:, None])
        self.mask[pack.slots] = torch.where(opened, self._zero, self._closed)

    def _prefill_mask(self, segment: Tensor, pos: Tensor, prompts: int
                      ) -> tuple[bool, Tensor | None]:
        """Causal within each prompt (and its sliding window), nothing across prompts."""
        if prompts == 1 and (self.window is None or pos.size(0) <= self.window):
            return pos.size(0) > 1, None
        allowed = (segment[None, :] == segment[:, None]) & (pos[None, :] <= pos[:, None])
        if self.window is not None:
            allowed &= pos[None, :] > pos[:, None] - self.window
        return False, allowed

    def _views(self, b: int, length: int) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
        """The mask and, per layer, the cache rows of slots 0..b-1 (whole, and cut to
        `length`): views made once per (b, length), which change only every few steps."""
        key = (b, length)
        if key not in self._view_cache:
            rows = [(k[:b], v[:b], k[:b, :, :length], v[:b, :, :length])
                    for k, v in zip(self.k_layers, self.v_layers, strict=True)]
            if self.kv_int8:  # and each position's scales, written and read alike
                rows = [(*row, ks[:b], vs[:b], ks[:b, :, :length], vs[:b, :, :length])
                        for row, ks, vs in zip(rows, self.k_scale, self.v_scale, strict=True)]
            self._view_cache[key] = (self.mask[:b, :length].view(b, 1, 1, length), rows)
        return self._view_cache[key]


def quantize_kv(x: Tensor) -> tuple[Tensor, Tensor]:
    """int8 values and the scale of each vector along the last axis (symmetric, max/127)."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 127
    return (x / scale).round().clamp(-127, 127).to(torch.int8), scale.to(x.dtype)
