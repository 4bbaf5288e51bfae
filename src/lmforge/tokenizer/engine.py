"""Encoders that give exactly the HF tokenizer's ids, faster when they can.

HF `tokenizers` is the reference. Two common tokenizer shapes have a faster engine:

- byte-level BPE (no normalizer, a regex Split + ByteLevel pre-tokenizer, a BPE model):
  tiktoken, built from the same vocabulary as ranks and the same regex;
- character level (WordLevel over single characters, a per-character Split): a numpy
  lookup table indexed by code point.

Why tiktoken can differ from HF, and how each case is closed:
1. tiktoken merges any adjacent pair whose concatenation is a token; HF only pairs listed
   in `merges`. We require every multi-byte token to be the result of exactly one merge
   and ids to increase with merge order, so priorities agree; an unlisted split of a token
   winning a merge is still conceivable, so:
2. a piece that is itself a token: tiktoken emits it whole (HF's `ignore_merges`, which our
   trained tokenizers set);
3. the two regex engines (onig in HF, fancy-regex in tiktoken) could classify a character
   differently; the tests run every assigned Unicode code point through both;
4. text that spells a special token: HF would emit the special id; the tokenize stage
   encodes it as plain text in every engine (a document cannot inject an eos).
Before a fast engine is used it must reproduce HF's ids on a sample of the data plus a
built-in probe (`choose_encoder`); on any difference the run uses HF and says why.
"""

from __future__ import annotations

import functools
import itertools
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

CHAR_SPLIT = r"[\s\S]"
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PROBE = (
    "Don't panic: it's 42, they'll say, we've 3.14159 and 1,000,000 + 0x1F.\n\n\n"
    "中文分词很重要。我们在2024年测试了12345个例子！"
    "日本語のテキスト、カタカナ。한국어 텍스트입니다.\n"
    "emoji 🎉🎉 👍🏽 👨‍👩‍👧 ❤️ café naïve Ελληνικά русский العربية हिन्दी\n"
    "def f(x):\n\tif x  >=  10:\n\t\treturn x ** 2  # comment\r\n    pass\n"
    "   leading and trailing spaces   \n\n  \t \n<|eos|> <|user|> text that spells specials"
)


def byte_decoder() -> dict[str, int]:
    """GPT-2's map from ByteLevel's printable stand-in characters back to bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class Encoder(ABC):
    """Encodes document texts to ids; `name` says which engine it is."""

    name: str

    @abstractmethod
    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """One uint32 array of ids per text (special-token strings encoded as plain text)."""

    def encode_documents(self, texts: list[str], eos: int) -> tuple[np.ndarray, np.ndarray]:
        """All documents' ids back to back with eos after each, and each document's length."""
        eos_array = np.array([eos], dtype=np.uint32)
        parts: list[np.ndarray] = []
        lengths = np.empty(len(texts), dtype=np.int64)
        for i, ids in enumerate(self.encode(texts)):
            parts += (ids, eos_array)
            lengths[i] = len(ids) + 1
        flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint32)
        return flat.astype(np.uint32, copy=False), lengths


class HFEncoder(Encoder):
    name = "hf"

    def __init__(self, tokenizer_json: str) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.encode_special_tokens = True

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.uint32) for e in encodings]

    def encode_one(self, text: str) -> np.ndarray:
        """Encode without the batch thread pool (safe in a process that will fork)."""
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, np.uint32)


class TiktokenEncoder(Encoder):
    name = "tiktoken"

    def __init__(self, pattern: str, ranks: dict[bytes, int]) -> None:
        import tiktoken

        self.encoding = tiktoken.Encoding(
            "lmforge", pat_str=pattern, mergeable_ranks=ranks, special_tokens={}
        )

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        encode = self.encoding.encode_to_numpy
        return [encode(text, disallowed_special=()) for text in texts]


class CharEncoder(Encoder):
    name = "char"

    def __init__(self, vocab: dict[str, int], unk_id: int) -> None:
        self.table = np.full(0x110000, unk_id, dtype=np.uint32)
        for char, i in vocab.items():
            self.table[ord(char)] = i

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        ids, lengths = self._lookup(texts)
        return np.split(ids, np.cumsum(lengths)[:-1]) if texts else []

    def encode_documents(self, texts: list[str], eos: int) -> tuple[np.ndarray, np.ndarray]:
        ids, lengths = self._lookup(texts)
        return np.insert(ids, np.cumsum(lengths), np.uint32(eos)), lengths + 1

    def _lookup(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        code_points = np.frombuffer("".join(texts).encode("utf-32-le"), dtype="<u4")
        return self.table[code_points], np.fromiter(map(len, texts), np.int64, len(texts))


def fast_encoder(spec: dict[str, Any]) -> Encoder | None:
    """The fast engine for this tokenizer.json, or None when its shape has none."""
    if spec.get("normalizer") is not None or any(
        not token.get("special", False) for token in spec.get("added_tokens", [])
    ):
        return None
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") == "BPE":
        pattern = byte_level_pattern(pre)
        ranks = bpe_ranks(spec)
        return TiktokenEncoder(pattern, ranks) if pattern and ranks else None
    if model.get("type") == "WordLevel" and pre == {
        "type": "Split",
        "pattern": {"Regex": CHAR_SPLIT},
        "behavior": "Isolated",
        "invert": False,
    }:
        vocab, unk = model["vocab"], model.get("unk_token")
        specials = {t["content"] for t in spec.get("added_tokens", [])}
        chars = {c: i for c, i in vocab.items() if c not in specials}
        if unk in vocab and all(len(c) == 1 for c in chars):
            return CharEncoder(chars, vocab[unk])
    return None


def byte_level_pattern(pre: dict[str, Any]) -> str | None:
    """The regex of a byte-level pre-tokenizer tiktoken can reproduce, else None."""
    if pre.get("type") == "ByteLevel":
        plain = pre.get("use_regex", True) and not pre.get("add_prefix_space", False)
        return GPT2_PATTERN if plain else None
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(steps) != 2:
        return None
    split, byte_level = steps
    if (
        split.get("type") == "Split"
        and "Regex" in split.get("pattern", {})
        and split.get("behavior") == "Isolated"
        and not split.get("invert", False)
        and byte_level.get("type") == "ByteLevel"
        and not byte_level.get("use_regex", True)
        and not byte_level.get("add_prefix_space", False)
    ):
        return split["pattern"]["Regex"]
    return None


def bpe_ranks(spec: dict[str, Any]) -> dict[bytes, int] | None:
    """tiktoken ranks (token bytes -> id) when merge priorities equal id order, else None."""
    model = spec["model"]
    if (
        model.get("dropout")
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
        or model.get("byte_fallback")
    ):
        return None
    decode = byte_decoder()
    specials = {t["content"] for t in spec.get("added_tokens", [])}
    ranks: dict[bytes, int] = {}
    for token, i in model["vocab"].items():
        if token in specials:
            continue
        if any(ch not in decode for ch in token):
            return None
        ranks[bytes(decode[ch] for ch in token)] = i
    merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    vocab = model["vocab"]
    merged = [vocab.get(left + right, -1) for left, right in merges]
    in_order = all(i >= 0 for i in merged) and all(a < b for a, b in itertools.pairwise(merged))
    multi_byte = {i for b, i in ranks.items() if len(b) > 1}
    if len(ranks) != len(set(ranks.values())) or not in_order or multi_byte != set(merged):
        return None
    if sum(len(b) == 1 for b in ranks) != 256:
        return None
    return ranks


@functools.cache
def load_encoder(tokenizer_file: str, engine: str) -> Encoder:
    """This process's encoder, built once (a forked worker inherits the parent's)."""
    text = Path(tokenizer_file).read_text(encoding="utf-8")
    if engine == HFEncoder.name:
        return HFEncoder(text)
    encoder = fast_encoder(json.loads(text))
    if encoder is None or encoder.name != engine:
        raise ValueError(f"{tokenizer_file} has no {engine} engine")
    return encoder


def choose_encoder(tokenizer_file: Path, preference: str, sample: list[str]) -> tuple[str, str]:
    """The engine to encode with and why: the fast one only if it equals HF on the sample."""
    if preference == HFEncoder.name:
        return HFEncoder.name, "hf: requested with tokenize.engine=hf"
    spec = json.loads(Path(tokenizer_file).read_text(encoding="utf-8"))
    texts = [PROBE, *sample]
    try:
        fast = fast_encoder(spec)
        fast_ids = fast.encode(texts) if fast is not None else []
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # a regex tiktoken rejects, or a panic in its Rust code
        return HFEncoder.name, f"hf: the fast engine failed on this tokenizer ({e})"
    if fast is None:
        return HFEncoder.name, "hf: this tokenizer's shape has no faster exact engine"
    reference = HFEncoder(json.dumps(spec))
    for i, (text, ids) in enumerate(zip(texts, fast_ids, strict=True)):
        if not np.array_equal(reference.encode_one(text), ids):
            where = "the built-in probe" if i == 0 else f"sample document {i}"
            return HFEncoder.name, f"hf: {fast.name} differed from HF on {where}"
    return fast.name, f"{fast.name}: ids identical to HF on {len(sample):,} sample documents"
