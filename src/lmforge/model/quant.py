"""Quantized linears on PyTorch's own CPU kernels, and a model's quantized layout.

    int8       per-output-channel symmetric int8 weights; activations in bf16 through
               torch._weight_int8pack_mm (AVX-512 / AMX)
    int8-dyn   the same weights, activations quantized per token at run time; int8 x int8
               -> int32 through torch._int_mm (VNNI / AMX), rescaled in fp32
    int4       group-wise asymmetric 4-bit along the input (groups of 32, 64 or 128), weight
               w = (q - 8) * scale + zero as tinygemm holds it; activations in bf16 through
               torch._weight_int4pack_mm_for_cpu

Any of them may carry an `input_scale` (K,): the input is multiplied by it before the
matmul, the weight was divided by it before rounding (AWQ's per-channel scaling, kept as a
multiply so that it works for every projection, o_proj under GQA included).

Why our own modules and not torchao's tensor subclasses: on this CPU (torch 2.13, torchao
0.18, a 2816 x 512 projection at batch 1) torchao's int8 weight-only linear took 352 us where
fp32 took 120 us and the same PyTorch kernel called directly 45 us (the subclass dispatch
costs more than the matmul at decode sizes), and torchao 0.18's int4 layouts need mslk or
CUDA. The kernels are PyTorch's; the modules are thin, and their buffers are plain tensors
that safetensors stores:

    NAME.qweight   int8 (N, K), or uint8 (N, K/2) for int4 (two columns per byte, low first)
    NAME.scales    (N,) for int8, (N, K/g) for int4
    NAME.zeros     (N, K/g), int4 only
    NAME.input_scale  (K,), when calibrated

Off the CPU, or for shapes a kernel refuses (int4 needs N divisible by 16), the weight is
dequantized once and multiplied in the input's dtype.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("int8", "int8-dyn", "int4")
GROUP_SIZES = (32, 64, 128)


class QuantLinear(nn.Module):
    """y = (x * input_scale) @ W^T + b with W held quantized; never trained."""

    def __init__(self, kind: str, in_features: int, out_features: int, group_size: int = 0,
                 bias: bool = False, input_scale: bool = False,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown quantized kind {kind!r}; choose from {', '.join(KINDS)}")
        if kind == "int4" and (group_size not in GROUP_SIZES or in_features % group_size):
            raise ValueError(f"int4 groups of {group_size} do not divide {in_features} inputs")
        self.kind, self.group_size = kind, group_size if kind == "int4" else 0
        self.in_features, self.out_features = in_features, out_features
        n, k = out_features, in_features
        if kind == "int4":
            self.register_buffer("qweight", torch.zeros(n, k // 2, dtype=torch.uint8,
                                                        device=device))
            self.register_buffer("scales", torch.ones(n, k // group_size, dtype=torch.bfloat16,
                                                      device=device))
            self.register_buffer("zeros", torch.zeros(n, k // group_size,
                                                      dtype=torch.bfloat16, device=device))
        else:
            self.register_buffer("qweight", torch.zeros(n, k, dtype=torch.int8, device=device))
            self.register_buffer("scales", torch.ones(n, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(n, device=device) if bias else None)
        self.register_buffer("input_scale", torch.ones(k, device=device) if input_scale
                             else None)
        self._kernel: tuple[Tensor, ...] | None = None

    @classmethod
    def from_float(cls, weight: Tensor, bias: Tensor | None, kind: str, group_size: int = 0,
                   input_scale: Tensor | None = None) -> QuantLinear:
        """Round a float weight (N, K) to the nearest grid point (the weight is first divided
        by `input_scale` when one is given)."""
        n, k = weight.shape
        module = cls(kind, k, n, group_size, bias is not None, input_scale is not None,
                     device=weight.device)
        w = weight.detach().float()
        if input_scale is not None:
            module.input_scale.copy_(input_scale)
            w = w / input_scale
        quantized = quantize_int4(w, group_size) if kind == "int4" else quantize_int8(w)
        for name, value in quantized.items():
            getattr(module, name).copy_(value)
        if bias is not None:
            module.bias.copy_(bias.detach())
        module.prepare()
        return module

    def dequantized(self) -> Tensor:
        """The fp32 weight (N, K) this module multiplies raw inputs by."""
        w = self._grid_weight()
        return w if self.input_scale is None else w * self.input_scale.float()

    def _grid_weight(self) -> Tensor:
        """The stored grid's weight, fp32 (N, K), applied after the input scale."""
        if self.kind == "int4":
            q = unpack_int4(self.qweight).float().view(self.out_features, -1, self.group_size)
            w = (q - 8) * self.scales.float()[..., None] + self.zeros.float()[..., None]
            return w.view(self.out_features, self.in_features)
        return self.qweight.float() * self.scales.float()[:, None]

    def prepare(self) -> None:
        """Lay the weight out for the kernel (after construction, loading or a move)."""
        native = self.qweight.device.type == "cpu" and (
            self.kind != "int4" or self.out_features % 16 == 0)
        if not native:
            self._kernel = ("dense", self._grid_weight())
        elif self.kind == "int4":
            packed = torch._convert_weight_to_int4pack_for_cpu(
                unpack_int4(self.qweight).to(torch.int32), 1)
            scales_zeros = torch.stack((self.scales.t(), self.zeros.t()), dim=-1)
            self._kernel = ("int4", packed, scales_zeros.to(torch.bfloat16).contiguous())
        elif self.kind == "int8":
            self._kernel = ("int8", self.qweight, self.scales.to(torch.bfloat16))
        else:
            self._kernel = ("int8-dyn", self.qweight.t(), self.scales.float())

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.prepare()

    def _apply(self, fn: Any, recurse: bool = True) -> QuantLinear:
        super()._apply(fn, recurse)
        self.prepare()
        return self

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        h = x.reshape(-1, self.in_features)
        if self.input_scale is not None:
            h = h * self.input_scale.to(h.dtype)
        kind, *args = self._kernel
        if kind == "dense":
            y = F.linear(h, args[0].to(h.dtype))
        elif kind == "int4":
            y = torch._weight_int4pack_mm_for_cpu(h.to(torch.bfloat16), args[0],
                                                  self.group_size, args[1]).to(x.dtype)
        elif kind == "int8":
            y = torch._weight_int8pack_mm(h.to(torch.bfloat16), args[0], args[1]).to(x.dtype)
        else:
            y = int8_dynamic_matmul(h, args[0], args[1]).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.group_size else ""
        return (f"{self.kind}, in_features={self.in_features}, "
                f"out_features={self.out_features}{group}")


class QuantEmbedding(nn.Module):
    """An embedding table held by a QuantLinear (vocab x dim): rows dequantized on lookup.
    A tied model's table is its output head's, held once."""

    def __init__(self, table: QuantLinear, owned: bool) -> None:
        super().__init__()
        if owned:
            self.table = table
        else:  # the head's module, not registered twice (one copy in the state dict)
            self.__dict__["table"] = table
        self.embedding_dim, self.num_embeddings = table.in_features, table.out_features
        # follows the model's float dtype through .to(), so rows come out in it
        self.register_buffer("dtype_marker", torch.zeros(()), persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        t = self.table
        flat = ids.reshape(-1)
        if t.kind == "int4":
            q = unpack_int4(t.qweight[flat]).float().view(flat.numel(), -1, t.group_size)
            rows = (q - 8) * t.scales[flat].float()[..., None] + t.zeros[flat].float()[..., None]
            rows = rows.view(flat.numel(), -1)
        else:
            rows = t.qweight[flat].float() * t.scales[flat].float()[:, None]
        if t.input_scale is not None:
            rows = rows * t.input_scale
        return rows.to(self.dtype_marker.dtype).view(*ids.shape, -1)


def quantize_int8(w: Tensor) -> dict[str, Tensor]:
    """Symmetric per-row int8: scale = max|w| / 127."""
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    return {"qweight": (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8),
            "scales": scales}


def int4_grid(w: Tensor, group_size: int, clip: Tensor | float = 1.0
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric 4-bit grid per group of `group_size` inputs, w ~ (q - 8) * scale + zero:
    (q in 0..15 (N, K/g, g), scale and zero (N, K/g, 1)). Scale and zero are rounded to
    bf16 first, as they are stored, so q is the nearest point of the grid really used;
    `clip` shrinks each group's range (AWQ's clip search)."""
    n, k = w.shape
    groups = w.view(n, k // group_size, group_size)
    high = groups.amax(dim=-1, keepdim=True) * clip
    low = groups.amin(dim=-1, keepdim=True) * clip
    scale, zero = group_grid(low, high)
    q = ((groups - zero) / scale + 8).round().clamp(0, 15)
    return q, scale, zero


def group_grid(low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """Scale and zero (bf16 values, held in fp32) of the grid spanning [low, high]."""
    scale = ((high - low) / 15).clamp(min=1e-8).to(torch.bfloat16).float()
    zero = (low + 8 * scale).to(torch.bfloat16).float()
    return scale, zero


def fake_quantize_int4(w: Tensor, group_size: int, clip: Tensor | float = 1.0) -> Tensor:
    """w rounded to its int4 grid and back, in fp32 (for calibration searches)."""
    q, scale, zero = int4_grid(w, group_size, clip)
    return ((q - 8) * scale + zero).view(w.shape)


def quantize_int4(w: Tensor, group_size: int, clip: Tensor | float = 1.0) -> dict[str, Tensor]:
    q, scale, zero = int4_grid(w, group_size, clip)
    return int4_tensors(q.view(w.shape), scale, zero)


def int4_tensors(q: Tensor, scale: Tensor, zero: Tensor) -> dict[str, Tensor]:
    """A QuantLinear's int4 buffers from codes (N, K) and per-group scale and zero."""
    return {"qweight": pack_int4(q.to(torch.uint8)),
            "scales": scale.reshape(q.size(0), -1).to(torch.bfloat16),
            "zeros": zero.reshape(q.size(0), -1).to(torch.bfloat16)}


def pack_int4(q: Tensor) -> Tensor:
    """(N, K) values 0..15 as (N, K/2) bytes, even columns in the low nibble."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_int4(packed: Tensor) -> Tensor:
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).view(packed.size(0), -1)


def int8_dynamic_matmul(x: Tensor, qweight_t: Tensor, scales: Tensor) -> Tensor:
    """x (M, K) quantized per row to int8, times int8 (K, N), rescaled: fp32 (M, N)."""
    xf = x.float()
    x_scale = xf.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    xq = (xf / x_scale).round().clamp(-127, 127).to(torch.int8)
    return torch._int_mm(xq, qweight_t).float() * x_scale * scales


def layout(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The quantized modules of a model by name: what `apply_layout` needs to rebuild it."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            out[name] = {"kind": module.kind, "group_size": module.group_size,
                         "bias": module.bias is not None,
                         "input_scale": module.input_scale is not None}
        elif isinstance(module, QuantEmbedding):
            out[name] = {"embedding": "owned" if "table" in module._modules else "lm_head"}
    return out


def apply_layout(model: nn.Module, spec: dict[str, dict[str, Any]]) -> None:
    """Put empty quantized modules where `spec` (from `layout`) says, ready for
    load_state_dict. Linears first, so that a tied embedding can point at its head."""
    linears = {k: v for k, v in spec.items() if "embedding" not in v}
    for name, entry in linears.items():
        old = model.get_submodule(name)
        device = old.weight.device if old.weight.device.type != "meta" else None
        new = QuantLinear(entry["kind"], old.in_features, old.out_features,
                          entry.get("group_size", 0), entry["bias"], entry["input_scale"],
                          device=device)
        replace_module(model, name, new)
    for name, entry in spec.items():
        if "embedding" not in entry:
            continue
        if entry["embedding"] == "lm_head":
            replace_module(model, name, QuantEmbedding(model.get_submodule("lm_head"), owned=False))
        else:
            old = model.get_submodule(name)
            table = QuantLinear(entry["kind"], old.embedding_dim, old.num_embeddings,
                                entry.get("group_size", 0), False, False)
            replace_module(model, name, QuantEmbedding(table, owned=True))


def dequantize(model: nn.Module) -> int:
    """Every quantized module back to a float nn.Linear / nn.Embedding holding the
    dequantized weight (the rounding error stays, the size saving goes); how many."""
    embeddings = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantEmbedding)]
    for name, module in embeddings:
        if "table" in module._modules:
            table = module.table
            embedding = nn.Embedding(table.out_features, table.in_features,
                                     device=table.qweight.device)
            embedding.weight.data.copy_(table.dequantized())
            replace_module(model, name, embedding)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    for name, module in linears:
        linear = nn.Linear(module.in_features, module.out_features,
                           bias=module.bias is not None, device=module.qweight.device)
        linear.weight.data.copy_(module.dequantized())
        if module.bias is not None:
            linear.bias.data.copy_(module.bias)
        replace_module(model, name, linear)
    for name, module in embeddings:
        if "table" not in module._modules:  # tied: share the now float head's weight again
            embedding = nn.Embedding(module.table.out_features, module.table.in_features,
                                     device=module.table.qweight.device)
            embedding.weight = model.get_submodule("lm_head").weight
            replace_module(model, name, embedding)
    return len(embeddings) + len(linears)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantLinear | QuantEmbedding) for m in model.modules())


def concat(modules: list[QuantLinear]) -> QuantLinear:
    """Projections of one input as one module (stacked rows): one kernel call for q, k, v."""
    first = modules[0]
    if any(m.kind != first.kind or m.group_size != first.group_size for m in modules):
        raise ValueError("only projections quantized the same way can be fused")
    scale = first.input_scale
    if scale is not None and any(m.input_scale is None or not torch.equal(m.input_scale, scale)
                                 for m in modules):
        raise ValueError("fused projections must share one input scale")
    has_bias = first.bias is not None
    out = QuantLinear(first.kind, first.in_features, sum(m.out_features for m in modules),
                      first.group_size, has_bias, scale is not None,
                      device=first.qweight.device)
    names = ["qweight", "scales"] + (["zeros"] if first.kind == "int4" else [])
    for name in names + (["bias"] if has_bias else []):
        getattr(out, name).copy_(torch.cat([getattr(m, name) for m in modules]))
    if scale is not None:
        out.input_scale.copy_(scale)
    out.prepare()
    return out


def fused_quantized(modules: tuple[QuantLinear, ...]) -> QuantLinear:
    """`concat` of the projections, kept on the first (outside its submodules, so the state
    dict holds one copy) until any of their weights is replaced or changed in place."""
    key = tuple((id(m.qweight), m.qweight._version, m.qweight.device) for m in modules)
    cached = modules[0].__dict__.get("_fused")
    if cached is None or cached[0] != key:
        cached = (key, concat(list(modules)))
        modules[0].__dict__["_fused"] = cached
    return cached[1]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
