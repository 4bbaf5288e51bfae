"""Text helpers the data steps share: CJK detection, words, sentences, stop words, token estimates.

Chinese and Japanese are written without spaces, so every Han, Hiragana or Katakana character
counts as one word here; Korean (Hangul) is written with spaces and is split like English.
Words are whitespace tokens with leading and trailing punctuation stripped ("end." -> "end");
a token that is only punctuation or symbols is not a word.
"""

from __future__ import annotations

import re
import string

from lmforge.text.cjk import CJK_CHAR_RE, CJK_RANGES, has_cjk

_CJK_OR_SPACED_TOKEN_RE = re.compile(f"[{CJK_RANGES}]|[^\\s{CJK_RANGES}]+")

# Punctuation stripped from both ends of a token: ASCII, general Unicode and CJK (full-width).
PUNCTUATION = (
    string.punctuation
    + "“”‘’«»‹›„‚—–‐‑‒―…·•‣◦●○■□▪▫※†‡§¶°′″"
    + "、。，．！？；：（）［］【】《》〈〉「」『』〔〕｛｝〖〗〘〙〚〛"
    + "～・＂＇｀＾｜＼／＠＃＄％＆＊＋－＝＜＞＿"
)
_PUNCTUATION_SET = frozenset(PUNCTUATION)

# Sentence ends: Latin marks followed by a space or the end (closing quotes/brackets allowed
# in between); CJK full stops need no space after them.
_SENTENCE_END_RE = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)|[。！？!?]+[”’」』）]*")
_WORD_CHAR_RE = re.compile(r"\w")

# Gopher's English stop words (Rae et al. 2021, A.1.1), as in the paper.
EN_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
# Frequent Chinese function words; counted as substrings because Chinese has no spaces.
ZH_STOP_WORDS = frozenset(
    {
        "的",
        "了",
        "是",
        "在",
        "和",
        "有",
        "不",
        "这",
        "我",
        "他",
        "也",
        "就",
        "都",
        "而",
        "及",
        "与",
        "着",
        "或",
        "之",
        "其",
        "以",
        "为",
        "于",
        "但",
        "把",
        "被",
        "从",
        "对",
        "一个",
        "没有",
        "我们",
        "你们",
        "他们",
        "因为",
        "所以",
        "如果",
        "可以",
        "这个",
        "那个",
        "什么",
    }
)
# Frequent Japanese particles and auxiliaries (same substring counting).
JA_STOP_WORDS = frozenset(
    {
        "の",
        "に",
        "は",
        "を",
        "が",
        "で",
        "と",
        "も",
        "から",
        "まで",
        "です",
        "ます",
        "した",
        "して",
        "する",
        "ある",
        "いる",
        "こと",
        "として",
    }
)


def count_cjk(text: str) -> int:
    """Number of Han/Kana characters in `text`."""
    return 0 if text.isascii() else len(CJK_CHAR_RE.findall(text))


def split_words(text: str) -> list[str]:
    """Words of `text`: whitespace tokens stripped of punctuation; each CJK character is a word."""
    if not has_cjk(text):
        return [word for token in text.split() if (word := token.strip(PUNCTUATION))]
    words = []
    for token in _CJK_OR_SPACED_TOKEN_RE.findall(text):
        if len(token) == 1:  # a CJK character, or a lone mark such as "，"
            if token not in _PUNCTUATION_SET:
                words.append(token)
        elif word := token.strip(PUNCTUATION):
            words.append(word)
    return words


def count_words(text: str) -> int:
    """C4's word count: `text.split()` for spaced text; with CJK, every CJK character plus
    the other tokens that are not only punctuation (so "好的。" is 2 words)."""
    if not has_cjk(text):
        return len(text.split())
    others = CJK_CHAR_RE.sub(" ", text).split()
    return len(CJK_CHAR_RE.findall(text)) + sum(1 for t in others if t.strip(PUNCTUATION))


def count_sentences(text: str) -> int:
    """Sentences as a count of end marks that close some words (no abbreviation model).

    "First. Second!" -> 2; "第一句。第二句！" -> 2; a trailing fragment without an end mark
    counts as a sentence too when it holds a word character.
    """
    count = 0
    start = 0
    for match in _SENTENCE_END_RE.finditer(text):
        if _WORD_CHAR_RE.search(text, start, match.start()):
            count += 1
        start = match.end()
    if _WORD_CHAR_RE.search(text, start):
        count += 1
    return count


def estimate_tokens(text: str) -> int:
    """Tokens' worth of text without a tokenizer: ~1 per CJK character, ~4 other chars each.

    BPE tokenizers trained on mixed corpora give about one token per Han/Kana character and
    3.3-4.5 characters per token on English; this estimate sits inside that band.
    """
    cjk = count_cjk(text)
    return cjk + round((len(text) - cjk) / 4)
