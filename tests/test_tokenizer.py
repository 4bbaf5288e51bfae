"""Tokenizer training: round trips, AutoTokenizer parity, char and adopted tokenizers, the
fast engines' equality with HF, and `tokenizer inspect`."""

from __future__ import annotations

import inspect
import json
import pydoc_data.topics
import textwrap
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from lmforge.cli import main
from lmforge.errors import UserError
from lmforge.tokenizer.config import TokenizerConfig
from lmforge.tokenizer.engine import HFEncoder, byte_decoder, choose_encoder, fast_encoder
from lmforge.tokenizer.inspect import inspect_tokenizer
from lmforge.tokenizer.train import BPE_PATTERN, ROLE_TOKENS, train_and_save

CHINESE = [
    "自然语言处理是人工智能的一个重要分支，它研究如何让计算机理解和生成人类语言。",
    "今天天气很好，我们一起去公园散步吧。",
    "机器学习模型需要大量的数据来进行训练，数据的质量直接影响模型的效果。",
    "北京是中国的首都，也是一座历史悠久的文化名城。",
    "他在2023年发表了三篇论文，其中一篇获得了最佳论文奖。",
    "中文分词是中文信息处理的基础任务之一，词语之间没有空格。",
    "这个程序用Python编写，运行速度很快。",
    "春天来了，花园里开满了红色和黄色的花。",
]
SCHEMA = pa.schema([(name, pa.string()) for name in ("id", "text", "source", "language")])
SAMPLES = {
    "english": "The quick brown fox doesn't jump; it's 3.14159 times lazier than 1,000 dogs.",
    "chinese": "自然语言处理很重要。我们在2024年测试了12345个例子！中文和English混合。",
    "emoji": "Great job 🎉🎉 👍🏽 family: 👨‍👩‍👧 love ❤️ flags 🇨🇳🇺🇸",
    "code": "def f(x):\n\tif x  >=  10:\n\t\treturn {'a': [1, 2]}  # note\r\n    pass\n",
    "whitespace": "a  b   c\t\td\n\n\n   \r\n  end   \n\n\n\n        \t",
    "rare": "Ελληνικά русский العربية हिन्दी ﷺ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u200b zero-width",
}


def corpus_docs() -> list[dict[str, str]]:
    """Real English from the Python docs, code from the stdlib, Chinese, emoji, whitespace."""
    docs = []
    for _name, topic in sorted(pydoc_data.topics.topics.items()):
        paragraphs = topic.split("\n\n")
        for i in range(0, len(paragraphs), 6):
            docs.append({"text": "\n\n".join(paragraphs[i : i + 6]), "source": "python-docs"})
    for module in (json, textwrap, inspect):
        docs.append({"text": inspect.getsource(module), "source": "code"})
    rng = np.random.default_rng(0)
    for _ in range(120):
        picked = rng.choice(len(CHINESE), size=4)
        docs.append({"text": "".join(CHINESE[i] for i in picked), "source": "zh"})
    docs += [{"text": text, "source": kind} for kind, text in SAMPLES.items()]
    docs.append({"text": "", "source": "empty"})
    language = {"zh": "zh", "empty": None}
    return [
        {"id": f"doc-{i}", **d, "language": language.get(d["source"], "en")}
        for i, d in enumerate(docs)
    ]


def make_data_dir(
    root: Path, docs: list[dict[str, str]] | None = None, row_group: int = 16
) -> Path:
    """A data-stage-shaped output: train in two parquet parts, val and test in one each."""
    docs = corpus_docs() if docs is None else docs
    parts = {
        "train": [docs[i] for i in range(len(docs)) if i % 10 not in (3, 7)],
        "val": docs[3::10],
        "test": docs[7::10],
    }
    for split, rows in parts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        chunks = [rows[: len(rows) // 2], rows[len(rows) // 2 :]] if split == "train" else [rows]
        for n, chunk in enumerate(chunks):
            table = pa.Table.from_pylist(chunk, schema=SCHEMA)
            pq.write_table(table, root / split / f"part-{n:05d}.parquet", row_group_size=row_group)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def bpe_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bpe")
    train_and_save(TokenizerConfig(vocab_size=1200), data_dir, out)
    return out


@pytest.fixture(scope="module")
def char_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("char")
    train_and_save(TokenizerConfig(type="char"), data_dir, out)
    return out


def load(directory: Path) -> Tokenizer:
    return Tokenizer.from_file(str(directory / "tokenizer.json"))


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_bpe_round_trips(bpe_dir: Path, kind: str) -> None:
    tok = load(bpe_dir)
    ids = tok.encode(SAMPLES[kind]).ids
    assert tok.decode(ids) == SAMPLES[kind]
    assert tok.token_to_id("<|unk|>") is None  # bytes cover everything


def test_bpe_vocabulary_and_pre_tokenization(bpe_dir: Path) -> None:
    tok = load(bpe_dir)
    assert tok.get_vocab_size() == 1200
    specials = ["<|bos|>", "<|eos|>", "<|pad|>", *ROLE_TOKENS]
    assert [tok.token_to_id(t) for t in specials] == list(range(len(specials)))
    digits = tok.encode("2024 and 12345").ids
    assert [tok.decode([i]).strip() for i in digits[-5:]] == list("12345")
    mixed = [tok.decode([i]) for i in tok.encode("中文和English混合的句子").ids]
    has_cjk = [any("\u4e00" <= ch <= "\u9fff" for ch in piece) for piece in mixed]
    has_latin = [any(ch.isascii() and ch.isalpha() for ch in piece) for piece in mixed]
    assert not any(c and latin for c, latin in zip(has_cjk, has_latin, strict=True))
    assert tok.decode(tok.encode("语言").ids[:1]) == "语言"  # a frequent Chinese word is a token
    assert len(tok.encode(CHINESE[0]).ids) < 0.7 * len(CHINESE[0].encode("utf-8"))


def test_autotokenizer_loads_and_encodes_identically(bpe_dir: Path) -> None:
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(bpe_dir)
    tok = load(bpe_dir)
    for text in [*SAMPLES.values(), *CHINESE]:
        assert auto(text)["input_ids"] == tok.encode(text).ids
        assert auto.decode(auto(text)["input_ids"]) == text
    assert (auto.bos_token, auto.eos_token, auto.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert auto.eos_token_id == tok.token_to_id("<|eos|>")


def test_chat_template_renders_roles_and_marks_assistant_tokens(bpe_dir: Path) -> None:
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(bpe_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    text = auto.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|bos|><|system|>\nBe brief.<|end|>\n<|user|>\n2+2?<|end|>\n<|assistant|>\n4<|end|>\n"
    )
    prompt = auto.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\n2+2?<|end|>\n<|assistant|>\n")
    out = auto.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert auto.decode(masked) == "4<|end|>"


def test_char_tokenizer(char_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = load(char_dir)
    text = "".join(d["text"] for d in corpus_docs())
    specials = 8  # bos, eos, pad, unk and the four chat role tokens
    assert tok.get_vocab_size() == specials + len(set(text))
    for sample in SAMPLES.values():
        assert tok.decode(tok.encode(sample).ids) == sample
    auto = AutoTokenizer.from_pretrained(char_dir)
    assert auto("中文 ok\n")["input_ids"] == tok.encode("中文 ok\n").ids
    assert tok.encode("☃").ids == [tok.token_to_id("<|unk|>")]


def test_adopting_an_existing_tokenizer_keeps_its_ids(bpe_dir: Path, tmp_path: Path) -> None:
    original = load(bpe_dir)
    config = TokenizerConfig(path=bpe_dir / "tokenizer.json", eos_token="<|endoftext|>")
    stats = train_and_save(config, None, tmp_path / "adopted")
    adopted = load(tmp_path / "adopted")
    assert adopted.get_vocab_size() == original.get_vocab_size() + 1  # only <|endoftext|> is new
    assert stats["special_ids"]["<|endoftext|>"] == original.get_vocab_size()
    assert adopted.encode(SAMPLES["english"]).ids == original.encode(SAMPLES["english"]).ids


def codepoint_probe() -> list[str]:
    """Every assigned code point (private use aside) in letter, digit and space contexts."""
    points = [c for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cn", "Co", "Cs")]
    return [
        "".join(f"a{chr(c)}a {chr(c)}1{chr(c)} {chr(c)}{chr(c)}\n" for c in points[i : i + 256])
        for i in range(0, len(points), 256)
    ]


def test_tiktoken_engine_equals_hf_everywhere(bpe_dir: Path) -> None:
    spec = json.loads((bpe_dir / "tokenizer.json").read_text())
    fast, reference = fast_encoder(spec), HFEncoder(json.dumps(spec))
    assert fast is not None and fast.name == "tiktoken"
    texts = [d["text"] for d in corpus_docs()] + codepoint_probe()
    for got, want in zip(fast.encode(texts), reference.encode(texts), strict=True):
        assert np.array_equal(got, want)
    flat, lengths = fast.encode_documents(["ab", "", "中文"], eos=1)
    assert lengths.tolist() == [
        len(fast.encode(["ab"])[0]) + 1,
        1,
        len(fast.encode(["中文"])[0]) + 1,
    ]
    assert flat[lengths.cumsum() - 1].tolist() == [1, 1, 1]


def test_special_token_strings_in_documents_stay_text(bpe_dir: Path) -> None:
    spec = json.loads((bpe_dir / "tokenizer.json").read_text())
    text = "before <|eos|> <|user|> after"
    ids = HFEncoder(json.dumps(spec)).encode([text])[0]
    assert 1 not in ids.tolist() and np.array_equal(fast_encoder(spec).encode([text])[0], ids)


def test_char_engine_equals_hf(char_dir: Path) -> None:
    spec = json.loads((char_dir / "tokenizer.json").read_text())
    fast, reference = fast_encoder(spec), HFEncoder(json.dumps(spec))
    assert fast is not None and fast.name == "char"
    texts = [*SAMPLES.values(), "unknown ☃ snowman <|eos|>", "", "\r\n\t"]
    for got, want in zip(fast.encode(texts), reference.encode(texts), strict=True):
        assert np.array_equal(got, want)


def hand_made_bpe(merges: list[tuple[str, str]], pattern: str = BPE_PATTERN) -> dict:
    """A byte-level BPE whose vocabulary is the 256 bytes plus the given merges, in order."""
    vocab = {ch: i for i, ch in enumerate(sorted(byte_decoder(), key=byte_decoder().get))}
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return json.loads(tok.to_str())


def test_engine_choice_falls_back_to_hf_when_tiktoken_would_differ(tmp_path: Path) -> None:
    # "bc" merges first, so HF leaves "abcd" as a|bc|d: it has no rule a+bc. tiktoken merges
    # any adjacent pair whose concatenation is a token, and would reach abc|d.
    spec = hand_made_bpe([("b", "c"), ("a", "b"), ("ab", "c")])
    assert fast_encoder(spec) is not None  # the structural checks cannot see this case
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    assert choose_encoder(path, "auto", ["no such pair here"])[0] == "tiktoken"
    engine, why = choose_encoder(path, "auto", ["no such pair here", "xabcd"])
    assert engine == "hf" and "differed from HF on sample document 2" in why
    assert choose_encoder(path, "hf", [])[0] == "hf"


def test_engine_choice_rejects_shapes_tiktoken_cannot_reproduce(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    spec = hand_made_bpe([("a", "b"), ("c", "d")])
    vocab = spec["model"]["vocab"]
    vocab["ab"], vocab["cd"] = vocab["cd"], vocab["ab"]  # ids no longer follow merge order
    path.write_text(json.dumps(spec))
    assert "no faster exact engine" in choose_encoder(path, "auto", [])[1]
    path.write_text(json.dumps(hand_made_bpe([("a", "b")], pattern=r"a{,3}|\s+|.")))
    engine, why = choose_encoder(path, "auto", [])  # tiktoken panics on empty matches
    assert engine == "hf" and "failed" in why


def test_inspect_reports_compression_per_split_and_language(bpe_dir: Path, data_dir: Path) -> None:
    report = inspect_tokenizer(bpe_dir, data_dir, top=5)
    assert report["vocab_size"] == 1200 and len(report["longest_tokens"]) == 5
    assert set(report["splits"]) == {"train", "val", "test"}
    train = report["splits"]["train"]
    assert 2.0 < train["bytes_per_token"] < 8.0 and 0 <= train["byte_fallback_rate"] < 0.05
    assert report["most_frequent_tokens"][0]["share"] > 0.01
    zh, en = report["languages"]["zh"], report["languages"]["en"]
    assert zh["documents"] == 120 and zh["chars_per_token"] < en["chars_per_token"]
    assert 0.3 < zh["fertility"] < 3.0  # tokens per Chinese character
    assert zh["byte_fallback_rate"] > en["byte_fallback_rate"]  # a small vocab, mostly English
    assert main(["tokenizer", "inspect", str(bpe_dir), "--data", str(data_dir)]) == 0


def test_cli_train_and_user_errors(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(data_dir), "-o", str(out), "--vocab-size", "400"]) == 0
    assert load(out).get_vocab_size() == 400
    assert json.loads((out / "manifest.json").read_text())["metrics"]["vocab_size"] == 400
    assert main(["tokenizer", "train", str(data_dir), "-o", str(out), "--vocab-size", "100"]) == 2
    assert main(["tokenizer", "train", str(tmp_path / "nope"), "-o", str(out)]) == 2
    with pytest.raises(UserError, match=r"no .*parquet"):
        train_and_save(TokenizerConfig(), tmp_path, tmp_path / "x")
