"""Perplexity of documents under a reference language model, behind one small interface.

`load_scorer(spec)` picks a backend by what the spec looks like and returns an object with
`score(texts) -> float32 perplexities` (lower = closer to the model's training text). The
KenLM backend reads .arpa, .bin, .binary and .klm files; the lmforge backend
(perplexity_model.py) takes a run directory, checkpoint, model directory or HF export. Other
backends register themselves with `register_backend`; the data stage never needs to know
which one it got.

KenLM sees the text the way `kenlm_sentences` writes it, and a model must be trained on
text prepared the same way (run your training corpus through `kenlm_sentences`, then
`lmplz`): NFKC, lowercase, one sentence per non-empty line, tokens separated by spaces,
where a token is a run of letters/digits, one punctuation mark, or one Han/kana character
(Chinese and Japanese are scored per character, in mixed text too). A document's
perplexity is 10 ** (-sum of log10 P over its lines / (tokens + one </s> per line)), as in
CCNet.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from lmforge.errors import UserError

KEY = "data.perplexity.model"
KENLM_SUFFIXES = (".arpa", ".bin", ".binary", ".klm")
_IDEOGRAPHIC = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKENS = re.compile(f"[{_IDEOGRAPHIC}]|[^\\W{_IDEOGRAPHIC}]+|[^\\w\\s]")


class PerplexityScorer(Protocol):
    name: str

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Per-document perplexity, float32, one per text."""
        ...


@dataclass(frozen=True)
class Backend:
    """How to recognise a model spec (`matches`) and open it (`load`)."""

    name: str
    describes: str  # for error messages: "a KenLM .arpa/.bin/.binary/.klm file"
    matches: Callable[[str], bool]
    load: Callable[[str], PerplexityScorer]


BACKENDS: list[Backend] = []


def register_backend(backend: Backend) -> None:
    BACKENDS.append(backend)


def load_scorer(spec: str) -> PerplexityScorer:
    for backend in BACKENDS:
        if backend.matches(spec):
            return backend.load(spec)
    known = "; ".join(backend.describes for backend in BACKENDS)
    raise UserError(f"{KEY}: {spec!r} is not a model lmforge can score with; give {known}")


def kenlm_sentences(text: str) -> list[str]:
    """The text as KenLM scores it: one space-tokenized, lowercase sentence per line."""
    text = unicodedata.normalize("NFKC", text).lower()
    sentences = [" ".join(_TOKENS.findall(line)) for line in text.splitlines()]
    return [s for s in sentences if s] or [""]


class KenLMScorer:
    name = "kenlm"

    def __init__(self, path: str):
        import kenlm

        if not Path(path).is_file():
            raise UserError(f"{KEY}: {path} does not exist; give the path of a KenLM model file")
        try:
            self._model = kenlm.Model(path)
        except (OSError, RuntimeError) as error:
            message = f"{KEY}: {path} is not a readable KenLM model ({error}); rebuild it"
            raise UserError(message) from error
        self.path = path

    def score(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty(len(texts), dtype=np.float32)
        for k, text in enumerate(texts):
            log10_total, tokens = 0.0, 0
            for sentence in kenlm_sentences(text):
                log10_total += self._model.score(sentence, bos=True, eos=True)
                tokens += sentence.count(" ") + 2 if sentence else 1
            out[k] = 10.0 ** (-log10_total / tokens)
        return out


register_backend(
    Backend(
        name="kenlm",
        describes="a KenLM model file (" + ", ".join(KENLM_SUFFIXES) + ")",
        matches=lambda spec: spec.lower().endswith(KENLM_SUFFIXES),
        load=KenLMScorer,
    )
)


def _load_model_scorer(spec: str) -> PerplexityScorer:
    from lmforge.data.perplexity_model import ModelScorer

    return ModelScorer(spec)


def _is_model(spec: str) -> bool:
    from lmforge.data.perplexity_model import looks_like_model

    return looks_like_model(spec)


register_backend(
    Backend(
        name="lmforge",
        describes="an lmforge run directory, checkpoint (.pt), model directory or HF export",
        matches=_is_model,
        load=_load_model_scorer,
    )
)
