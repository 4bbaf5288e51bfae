"""Shared text helpers: CJK-aware words, sentences and token estimates."""

from lmforge.data.text import (
    count_cjk,
    count_sentences,
    count_words,
    estimate_tokens,
    has_cjk,
    split_words,
)


def test_split_words_strips_punctuation_and_keeps_inner_marks():
    words = split_words('He said: "Don\'t stop," (twice)... e.g. 3.11 -- ok!')
    assert words == ["He", "said", "Don't", "stop", "twice", "e.g", "3.11", "ok"]


def test_split_words_makes_each_cjk_character_a_word_in_mixed_text():
    words = split_words("我们用 PyTorch 训练模型，然后部署。")
    assert words == ["我", "们", "用", "PyTorch", "训", "练", "模", "型", "然", "后", "部", "署"]


def test_split_words_edge_cases():
    assert split_words("") == []
    assert split_words("   \n\t ") == []
    assert split_words("!!! ... ——— 。，") == []
    assert split_words("😀 ok") == ["😀", "ok"]  # a symbol is not punctuation: it stays a token


def test_korean_is_split_on_spaces_like_english():
    assert split_words("도시는 넓은 강가에 있다.") == ["도시는", "넓은", "강가에", "있다"]
    assert not has_cjk("도시는 넓은 강가에 있다.")


def test_count_cjk_counts_han_and_kana_only():
    assert count_cjk("中文 text かな カナ 한국어") == 6
    assert count_cjk("plain ascii") == 0


def test_count_words_for_c4_lines():
    assert count_words("Five words are right here.") == 5
    assert count_words("He said , yes") == 4  # like str.split()
    assert count_words("好的。") == 2
    assert count_words("我们用 PyTorch 训练。") == 6


def test_count_sentences_english_and_chinese():
    assert count_sentences("First one. Second one! Third?") == 3
    assert count_sentences("Pi is 3.14 exactly. Really") == 2
    assert count_sentences("第一句。第二句！第三句？") == 3
    assert count_sentences("他说：“好。”然后走了。") == 2
    assert count_sentences("... !!!") == 0
    assert count_sentences("") == 0


def test_estimate_tokens_one_per_cjk_char_and_four_chars_otherwise():
    assert estimate_tokens("a" * 400) == 100
    assert estimate_tokens("中" * 100) == 100
    assert estimate_tokens("中" * 100 + "a" * 40) == 110
    assert estimate_tokens("") == 0
