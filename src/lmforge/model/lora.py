"""LoRA: a frozen base projection plus a trained low-rank update, in PEFT's layout.

    y = base(x) + B(A(dropout(x))) * alpha / r        (rsLoRA: alpha / sqrt(r))

`add_lora` swaps the targeted projections of a Transformer for `LoRALinear` and freezes
everything else. Names match PEFT's (`q_proj.base_layer.weight`, `q_proj.lora_A.weight`),
so adapters move between lmforge and peft by renaming a prefix (model/peft.py). A is
initialised as PEFT does (Kaiming-uniform), B as zeros, so training starts from the base
model exactly. `merge_lora` folds B @ A into the base weights for export. The base may be a
`QuantizedLinear` (QLoRA): it is dequantized on the fly and never trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import UserError
from lmforge.model.quant import QuantLinear, fused_quantized

NF4_BLOCK = 64  # weights per 4-bit block, each with its own scale (QLoRA's choice)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    rslora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


class Dropout(nn.Module):
    """Inverted dropout with its mask drawn by `torch.rand` (torch 2.13 on CPU: 3.7 ms for a
    1024 x 512 mask, against 6.5 ms for nn.Dropout's bernoulli_); the same distribution."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def mask(self, x: Tensor) -> Tensor:
        return torch.rand(x.shape, device=x.device) >= self.p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        return x * self.mask(x) * (1.0 / (1.0 - self.p))


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, spec: LoraSpec) -> None:
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.lora_A = nn.Linear(self.in_features, spec.rank, bias=False)
        self.lora_B = nn.Linear(spec.rank, self.out_features, bias=False)
        self.dropout = Dropout(spec.dropout) if spec.dropout else nn.Identity()
        self.scale = spec.scale
        self.reset_lora()

    @torch.no_grad()
    def reset_lora(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    @property
    def weight(self) -> Tensor:
        """The base weight (dequantized for a quantized base), for fused matmuls."""
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def delta(self, x: Tensor) -> Tensor:
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scale

    def forward(self, x: Tensor) -> Tensor:
        return self.base_layer(x) + self.delta(x)

    def merged_weight(self) -> Tensor:
        update = self.lora_B.weight.float() @ self.lora_A.weight.float() * self.scale
        return (self.base_layer.weight.float() + update).to(self.lora_A.weight.dtype)


def fused_linear(x: Tensor, modules: tuple[nn.Module, ...]) -> Tensor:
    """The outputs of several projections of the same input, concatenated: one matmul over
    their stacked weights (plus each LoRA update), or one call each for quantized bases."""
    if all(isinstance(m, QuantLinear) for m in modules):
        return fused_quantized(modules)(x)
    if any(isinstance(getattr(m, "base_layer", m), QuantizedLinear | QuantLinear)
           for m in modules):
        return torch.cat([m(x) for m in modules], dim=-1)
    biases = [m.bias for m in modules]
    out = F.linear(x, fused_weight(modules), None if biases[0] is None else torch.cat(biases))
    adapted = [m for m in modules if isinstance(m, LoRALinear)]
    if not adapted:
        return out
    return out + stacked_delta(x, modules, adapted)


def fused_weight(modules: tuple[nn.Module, ...]) -> Tensor:
    """The projections' weights stacked. A frozen base being trained through (LoRA) keeps
    its stack between steps, on the first module, until a weight is replaced or changed in
    place: the copy cost 30 ms of a 1.3 s LoRA step of the 25m preset. Inference (no grad)
    stacks per call, as it did, and holds no second copy."""
    weights = [m.weight for m in modules]
    if (not torch.is_grad_enabled() or any(w.requires_grad for w in weights)
            or torch.compiler.is_compiling()):
        return torch.cat(weights)
    key = tuple((id(w), w._version) for w in weights)
    cached = getattr(modules[0], "_fused_weight", None)
    if cached is None or cached[0] != key:
        cached = (key, torch.cat(weights))
        modules[0]._fused_weight = cached
    return cached[1]


def stacked_delta(x: Tensor, modules: tuple[nn.Module, ...], adapted: list[LoRALinear]
                  ) -> Tensor:
    """The LoRA updates of projections that share their input, as two matmuls: the input
    (dropped out once: it is one input) times every A stacked, times the B's laid out
    block-diagonally over the outputs (zero where a projection has no adapter), with each
    scale folded in. A step of LoRA on q/k/v spent a tenth of its time drawing three dropout
    masks of the same tensor; one is enough."""
    dropout = adapted[0].dropout
    rescale = 1.0
    if isinstance(dropout, Dropout) and dropout.training:  # its 1/(1-p) goes into B
        x, rescale = x * dropout.mask(x), 1.0 / (1.0 - dropout.p)
    low = F.linear(x, torch.cat([m.lora_A.weight for m in adapted]))
    blocks = []
    for m in modules:
        if isinstance(m, LoRALinear):
            blocks.append(m.lora_B.weight * (m.scale * rescale))
        else:
            blocks.append(x.new_zeros(m.out_features, 0))
    return F.linear(low, torch.block_diag(*blocks))


def resolve_targets(targets: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Target names, with `all-linear` for every projection; a one-line error otherwise."""
    if "all-linear" in targets:
        return PROJECTIONS
    unknown = [t for t in targets if t not in PROJECTIONS]
    if unknown or not targets:
        raise UserError(f"LoRA targets {unknown or '[]'} are not projections; choose from "
                        f"{', '.join(PROJECTIONS)} or all-linear")
    return tuple(dict.fromkeys(targets))


def add_lora(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Wrap every targeted projection of the decoder layers (not the MoE experts); freeze all
    other parameters. Returns the wrapped modules' names."""
    device = next(model.parameters()).device
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf in spec.targets and ".experts." not in name and not isinstance(module,
                                                                               LoRALinear):
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            setattr(parent, leaf, LoRALinear(module, spec).to(device))
            wrapped.append(name)
    if not wrapped:
        raise UserError(f"no module of the model matches the LoRA targets {list(spec.targets)}")
    return wrapped


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state(model: nn.Module) -> dict[str, Tensor]:
    """The adapter weights under our names (`...q_proj.lora_A.weight`)."""
    return {f"{name}.{part}.weight": getattr(m, part).weight.detach()
            for name, m in lora_modules(model).items() for part in ("lora_A", "lora_B")}


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold each adapter into its base weight and put a plain Linear back in its place."""
    for name, m in lora_modules(model).items():
        if isinstance(m.base_layer, QuantizedLinear):
            raise UserError("merging into a quantized base would round the update away; "
                            "load the base in full precision and merge there")
        merged = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                           device=m.lora_A.weight.device, dtype=m.lora_A.weight.dtype)
        merged.weight.copy_(m.merged_weight())
        if m.bias is not None:
            merged.bias.copy_(m.bias)
        parent_name, leaf = name.rsplit(".", 1)
        setattr(model.get_submodule(parent_name), leaf, merged)


class QuantizedLinear(nn.Module):
    """A frozen projection held in 4 bits (NF4, torchao's, as QLoRA and torchtune hold it:
    blocks of 64 with double-quantized scales) or 8 bits (int8 per output channel). The
    matmul runs on the dequantized weight; gradients flow to the input only."""

    def __init__(self, linear: nn.Linear, bits: int) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise UserError(f"quantized base weights are 4 or 8 bits, got {bits}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits = bits
        weight = linear.weight.detach().float()
        self.dtype = linear.weight.dtype
        if bits == 4:
            from torchao.quantization import to_nf4

            if weight.numel() % NF4_BLOCK:
                raise UserError(f"a {tuple(weight.shape)} weight cannot be held in 4-bit "
                                f"blocks of {NF4_BLOCK}; use finetune.qlora.bits=8")
            # the scales are quantized again in groups: up to 256 scales per group (QLoRA's),
            # fewer where a small matrix has fewer blocks
            scaler_group = math.gcd(weight.numel() // NF4_BLOCK, 256)
            self.nf4 = to_nf4(weight.to(torch.bfloat16), NF4_BLOCK, scaler_group)
        else:
            scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
            self.register_buffer("qweight", (weight / scale).round().clamp(-127, 127)
                                 .to(torch.int8), persistent=False)
            self.register_buffer("scales", scale, persistent=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(),
                                                                   requires_grad=False)

    @property
    def weight(self) -> Tensor:
        if self.bits == 4:
            return self.nf4.get_original_weight().to(self.dtype)
        return (self.qweight.float() * self.scales).to(self.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None
                        else self.bias.to(x.dtype))

    def nbytes(self) -> int:
        if self.bits == 4:
            n = self.nf4
            return sum(t.numel() * t.element_size() for t in
                       (n.quantized_data, n.quantized_scalers, n.quantization_factor,
                        n.scaler_mean))
        return self.qweight.numel() + self.scales.numel() * 4


def quantize_base(model: nn.Module, bits: int, targets: tuple[str, ...]) -> int:
    """Replace the targeted projections' weights by `QuantizedLinear` (before `add_lora`);
    returns the bytes the quantized weights take."""
    total = 0
    for name, module in list(model.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf in targets and isinstance(module, nn.Linear) and ".experts." not in name:
            quantized = QuantizedLinear(module, bits)
            setattr(model.get_submodule(name.rsplit(".", 1)[0]), leaf, quantized)
            total += quantized.nbytes()
    return total
