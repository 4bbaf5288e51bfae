"""Prompt tuning: N trained virtual tokens in front of every input, the model frozen.

The virtual tokens get the ids just past the vocabulary (vocab .. vocab+N-1), looked up in
their own embedding table by `PromptEmbedding`, which takes the place of the token
embedding. Every consumer puts `prompt_prefix(model)` in front of a sequence: training
examples (with no loss on the prefix), `generate`, the server. That is PEFT's PROMPT_TUNING
computation (its virtual embeddings concatenated before the input embeddings, positions
counting from the first of them), so its adapters load both ways (model/peft.py), and a
packed row of several examples keeps one prefix per example.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmforge.errors import UserError


class PromptEmbedding(nn.Module):
    def __init__(self, base: nn.Embedding, prompt: Tensor) -> None:
        super().__init__()
        self.base = base
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.prompt_embeddings = nn.Parameter(prompt.detach().clone().to(base.weight.dtype))

    @property
    def weight(self) -> Tensor:
        """The vocabulary's embeddings (what the lm_head ties to)."""
        return self.base.weight

    @property
    def virtual_tokens(self) -> int:
        return self.prompt_embeddings.size(0)

    def table(self) -> Tensor:
        """Vocabulary rows then virtual rows: an embedding table for every id a prompt
        may hold (the serving engine looks ids up in it)."""
        return torch.cat((self.base.weight, self.prompt_embeddings.to(self.base.weight.dtype)))

    def forward(self, ids: Tensor) -> Tensor:
        vocab = self.num_embeddings
        x = self.base(ids.clamp(max=vocab - 1))
        virtual = ids >= vocab
        rows = self.prompt_embeddings[(ids - vocab).clamp(0, self.virtual_tokens - 1)]
        return torch.where(virtual.unsqueeze(-1), rows.to(x.dtype), x)


def add_prompt_tuning(model: nn.Module, init: Tensor) -> PromptEmbedding:
    """Freeze the model and put `init` (N, dim) in front of its inputs as virtual tokens."""
    embed = model.model.embed_tokens
    if isinstance(embed, PromptEmbedding):
        raise UserError("the model already carries a prompt-tuning prefix")
    if init.dim() != 2 or init.size(1) != embed.embedding_dim:
        raise UserError(f"virtual token embeddings must be (N, {embed.embedding_dim}), got "
                        f"{tuple(init.shape)}; is the adapter for another base?")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = PromptEmbedding(embed, init.to(embed.weight.device))
    model.model.embed_tokens = wrapped
    return wrapped


def initial_prompt(embed: nn.Embedding, n: int, init_ids: list[int] | None, seed: int) -> Tensor:
    """N starting embeddings: those of `init_ids` (a text's tokens, cycled to length N, as
    PEFT's TEXT init), else of N vocabulary tokens drawn with `seed` (SAMPLE_VOCAB): both
    start on the embedding manifold, where random vectors would not."""
    if init_ids:
        ids = torch.tensor([init_ids[i % len(init_ids)] for i in range(n)])
    else:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(embed.num_embeddings, (n,), generator=generator)
    return embed.weight.detach()[ids.to(embed.weight.device)].clone()


def prompt_prefix(model: nn.Module) -> list[int]:
    """The virtual token ids to put in front of every sequence ([] for a plain model)."""
    embed = model.model.embed_tokens
    if not isinstance(embed, PromptEmbedding):
        return []
    return list(range(embed.num_embeddings, embed.num_embeddings + embed.virtual_tokens))
