"""Train (or adopt) a tokenizer and save it as files `AutoTokenizer.from_pretrained` loads.

    TOK_DIR/tokenizer.json            the HF tokenizers pipeline
    TOK_DIR/tokenizer_config.json     tokenizer class, special tokens, Jinja chat template
    TOK_DIR/special_tokens_map.json   bos / eos / pad (+ unk) and the chat role tokens

Byte-level BPE splits text with `BPE_PATTERN` first: runs of CJK characters stand apart
from other letters (so Chinese words are learned from Chinese text alone), every digit is
its own piece (numbers tokenize uniformly), and English contractions, punctuation runs and
whitespace follow GPT-4's rules. Bytes make every string encodable: no unknown token.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.errors import UserError
from lmforge.io import atomic_path, atomic_write_json, read_json, sha256_file
from lmforge.outputs import remove_outputs
from lmforge.progress import byte_progress, console
from lmforge.tokenizer.config import TokenizerConfig
from lmforge.tokenizer.datasource import check_data_dir, iter_texts, split_files, split_text_bytes
from lmforge.tokenizer.engine import CHAR_SPLIT

CJK = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}"
BPE_PATTERN = (
    rf"[{CJK}]+"  # a run of CJK characters
    r"|'(?i:[sdmt]|ll|ve|re)"  # English contractions
    rf"|[^\r\n\p{{L}}\p{{M}}\p{{N}}]?[^\p{{N}}\p{{P}}\p{{S}}\p{{C}}\p{{Z}}{CJK}]+"  # a word
    r"|\p{N}"  # one digit
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"  # punctuation and symbols
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"  # line breaks and other whitespace
)
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
UNK_TOKEN = "<|unk|>"
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
         "chat_template.jinja")  # the last only in a copy of a base model's (transformers >= 4.47)
STAGE_NAME = "tokenizer"
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('chat roles are system, user and assistant, got ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|end|>' }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def special_tokens(cfg: TokenizerConfig) -> list[str]:
    """Special tokens in id order: they take the first ids of a trained vocabulary."""
    unk = [UNK_TOKEN] if cfg.type == "char" and cfg.path is None else []
    return [cfg.bos_token, cfg.eos_token, cfg.pad_token, *unk, *ROLE_TOKENS]


def build_tokenizer(
    cfg: TokenizerConfig, data_dir: Path | None
) -> tuple[Tokenizer, dict[str, Any]]:
    """Train on the train split of a data-stage output (streamed), or adopt cfg.path."""
    started = time.monotonic()
    if cfg.path is not None:
        tokenizer, stats = adopt(cfg), {"source": str(cfg.path)}
    elif data_dir is None:
        raise UserError("training a tokenizer needs a data directory (DATA_DIR)")
    else:
        tokenizer, stats = _train_on_split(cfg, Path(data_dir))
    stats |= {
        "type": "file" if cfg.path is not None else cfg.type,
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "special_ids": {t: tokenizer.token_to_id(t) for t in special_tokens(cfg)},
        "seconds": round(time.monotonic() - started, 2),
    }
    return tokenizer, stats


def _train_on_split(cfg: TokenizerConfig, data_dir: Path) -> tuple[Tokenizer, dict[str, Any]]:
    check_data_dir(data_dir)
    files = split_files(data_dir, "train")
    if not files:
        raise UserError(f"{data_dir}/train has no parquet files; the tokenizer trains on it")
    limit = cfg.max_train_mb * 1e6 if cfg.max_train_mb else None
    planned = split_text_bytes(data_dir, "train")
    counts = {"documents": 0, "bytes": 0}
    with byte_progress(
        f"train {cfg.type} tokenizer", int(min(planned, limit or planned))
    ) as update:
        texts = _counted(iter_texts(files, limit), counts, update)
        tokenizer = train_char(cfg, texts) if cfg.type == "char" else train_bpe(cfg, texts)
    return tokenizer, {
        "train_documents": counts["documents"],
        "train_mb": round(counts["bytes"] / 1e6, 3),
    }


def _counted(
    batches: Iterator[list[str]], counts: dict[str, int], update: Callable[[int, int], None]
) -> Iterator[str]:
    for texts in batches:
        size = sum(len(t.encode("utf-8")) for t in texts)
        counts["documents"] += len(texts)
        counts["bytes"] += size
        update(len(texts), size)
        yield from texts


def train_bpe(cfg: TokenizerConfig, texts: Iterator[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(BPE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in special_tokens(cfg)],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    # A piece that is itself a token is emitted whole (as tiktoken and Llama 3 do).
    spec = json.loads(tokenizer.to_str())
    spec["model"]["ignore_merges"] = True
    return Tokenizer.from_str(json.dumps(spec))


def train_char(cfg: TokenizerConfig, texts: Iterator[str]) -> Tokenizer:
    """One token per character seen in the train split; anything else is <|unk|>."""
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    specials = special_tokens(cfg)
    vocab = {token: i for i, token in enumerate([*specials, *sorted(chars - set(specials))])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(CHAR_SPLIT), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tokenizer


def adopt(cfg: TokenizerConfig) -> Tokenizer:
    """An existing tokenizer.json, with any missing special tokens appended to its vocabulary."""
    file = tokenizer_file(Path(cfg.path))
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust loader raises plain Exceptions
        raise UserError(
            f"{file} is not a tokenizers JSON file ({e}); point tokenizer.path at one"
        ) from None
    missing = [t for t in special_tokens(cfg) if tokenizer.token_to_id(t) is None]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return tokenizer


def tokenizer_file(path: Path) -> Path:
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{file} not found; pass a tokenizer directory or a tokenizer.json file")
    return file


def save_tokenizer(tokenizer: Tokenizer, cfg: TokenizerConfig, out_dir: Path) -> None:
    """Write the three files transformers reads, each atomically, into a directory that
    holds nothing else lmforge did not write (refused otherwise)."""
    remove_outputs(out_dir, FILES, STAGE_NAME)
    with atomic_path(out_dir / "tokenizer.json") as tmp:
        tokenizer.save(str(tmp))
    named = {"bos_token": cfg.bos_token, "eos_token": cfg.eos_token, "pad_token": cfg.pad_token}
    if tokenizer.token_to_id(UNK_TOKEN) is not None and cfg.type == "char":
        named["unk_token"] = UNK_TOKEN
    special_map = {**named, "additional_special_tokens": list(ROLE_TOKENS)}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "clean_up_tokenization_spaces": False,
        "chat_template": cfg.chat_template or DEFAULT_CHAT_TEMPLATE,
    }
    atomic_write_json(out_dir / "tokenizer_config.json", config)
    atomic_write_json(out_dir / "special_tokens_map.json", special_map)


def copy_base_tokenizer(base_dir: Path, out_dir: Path) -> dict[str, Any]:
    """A base model's tokenizer files, byte for byte: continued pretraining keeps the base's
    ids, and adding tokens (as `tokenizer.path` adoption does) would grow the vocabulary past
    the base's embedding."""
    remove_outputs(out_dir, FILES, STAGE_NAME)
    for name in FILES:
        if (base_dir / name).is_file():
            with atomic_path(out_dir / name) as tmp:
                shutil.copyfile(base_dir / name, tmp)
    summary = tokenizer_summary(out_dir)
    stats = {"type": "base", "source": str(base_dir), "vocab_size": summary["vocab_size"],
             "special_ids": summary["special_ids"]}
    console.print(f"  tokenizer: the base's, vocabulary {stats['vocab_size']:,} "
                  f"from {base_dir} -> {out_dir}")
    return stats


def tokenizer_summary(tok_dir: Path) -> dict[str, Any]:
    """What the tokenize stage needs from a tokenizer directory: file, hash, vocab, ids."""
    file = tokenizer_file(Path(tok_dir))
    config_path = file.parent / "tokenizer_config.json"
    if not config_path.is_file():
        raise UserError(
            f"{config_path} not found; make the tokenizer with `lmforge tokenizer train`"
        )
    config = read_json(config_path)
    tokenizer = Tokenizer.from_file(str(file))
    ids = {}
    for role in ("bos", "eos", "pad", "unk"):
        token = config.get(f"{role}_token")
        token = token.get("content") if isinstance(token, dict) else token
        if token is not None and tokenizer.token_to_id(token) is not None:
            ids[role] = tokenizer.token_to_id(token)
    if "eos" not in ids:
        raise UserError(
            f"{config_path} names no eos_token that the tokenizer knows; "
            "set tokenizer.eos_token and re-run `lmforge tokenizer train`"
        )
    return {
        "file": file,
        "sha256": sha256_file(file),
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "special_ids": ids,
    }


def train_and_save(cfg: TokenizerConfig, data_dir: Path | None, out_dir: Path) -> dict[str, Any]:
    """The tokenizer stage: build, save, and return the metrics for the manifest."""
    tokenizer, stats = build_tokenizer(cfg, data_dir)
    save_tokenizer(tokenizer, cfg, out_dir)
    console.print(
        f"  tokenizer: {stats['type']}, vocabulary {stats['vocab_size']:,} "
        f"in {stats['seconds']:.1f}s -> {out_dir}"
    )
    return stats
