"""The model side of an evaluation: load any lmforge model, encode as lm-eval's hf backend
does, score log-likelihoods in batches, and generate through the serving engine.

Generation runs on the serving engine's core in this process (`lmforge.serve.offline`), the
server's continuous batching: every prompt of a task is queued at once and `batch_size`
sequences decode together, greedy, each ending at EOS, a stop string or max_gen_toks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lmforge.errors import UserError
from lmforge.eval.loglik import Pair, Scorer
from lmforge.model.files import best_checkpoint, finetune_dir, load_model
from lmforge.model.llama import Transformer
from lmforge.model.lora import lora_modules, merge_lora
from lmforge.model.prompt_tuning import prompt_prefix
from lmforge.model.sampling import SamplingParams
from lmforge.progress import count_progress
from lmforge.sources import find_tokenizer, local_path
from lmforge.tokenizer.chat_tokenizer import ChatTokenizer


class Evaluator:
    """One model and its tokenizer, ready to score and to generate."""

    def __init__(self, model: Transformer, tok: ChatTokenizer, source: str,
                 batch_size: int = 16, max_length: int | None = None) -> None:
        self.model, self.tok, self.source = model.eval(), tok, source
        self.batch_size = batch_size
        self.virtual = prompt_prefix(model)  # prompt tuning: before every input
        longest = model.cfg.max_seq_len - len(self.virtual)
        if max_length is not None and max_length > longest:
            raise UserError(f"eval max_length {max_length} exceeds the model's context "
                            f"{longest}; lower it")
        self.max_length = max_length or longest
        self.scorer = Scorer(model, batch_size, self.max_length, self.virtual)
        bos = tok.codec.token_id(tok.bos_token) if tok.bos_token else None
        if bos is None and tok.eos_id is None:
            raise UserError(f"{tok.directory} names neither a bos_token nor an eos_token; "
                            "log-likelihoods need one to condition the first token on")
        self.prefix_id: int = bos if bos is not None else tok.eos_id  # lm-eval's prefix token

    @classmethod
    def load(cls, spec: str | Path, batch_size: int = 16,
             max_length: int | None = None) -> Evaluator:
        """A run dir (its fine-tuned model, else its best checkpoint), checkpoint, model
        dir, adapter dir, HF dir or export, or hf:ORG/NAME."""
        path = local_path(spec)
        pick = path if finetune_dir(path) else best_checkpoint(path) or path
        model, source = load_model(pick)
        if lora_modules(model):  # generation runs on the engine, which runs plain weights
            merge_lora(model)
        return cls(model, ChatTokenizer(find_tokenizer(source)), str(spec), batch_size,
                   max_length)

    def encode(self, text: str) -> list[int]:
        """As HF's tokenizer.encode with its defaults (the tokenizer's own post-processor,
        if it has one, adds its special tokens), which is what lm-eval scores."""
        return self.tok.codec.tokenizer.encode(text).ids

    def loglikelihood(self, pairs: Sequence[Pair], label: str) -> list[tuple[float, bool]]:
        return self.scorer.loglikelihood(pairs, label)

    def rolling(self, texts: Sequence[str], label: str) -> list[float]:
        return self.scorer.rolling([self.encode(t) for t in texts], self.prefix_id, label)

    def generate(self, contexts: Sequence[str], until: Sequence[str], max_gen_toks: int,
                 label: str) -> list[str]:
        """Greedy continuations, cut before the first stop string (as lm-eval does)."""
        from lmforge.serve.offline import generate

        room = self.max_length - max_gen_toks
        if room < 1:
            raise UserError(f"max_gen_toks {max_gen_toks} leaves no room for a prompt in a "
                            f"{self.max_length}-token context; lower it")
        prompts = [self.encode(c)[-room:] or [self.prefix_id] for c in contexts]
        stops = frozenset({self.tok.eos_id}) if self.tok.eos_id is not None else frozenset()
        params = SamplingParams(max_tokens=max_gen_toks, temperature=0.0, stop=tuple(until))
        with count_progress(label, len(prompts), "examples") as advance:
            texts = generate(self.model, self.tok.decode, prompts, params,
                             max_batch=self.batch_size, stop_token_ids=stops, on_done=advance)
        return [_cut(t, until) for t in texts]


def _cut(text: str, until: Sequence[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text

