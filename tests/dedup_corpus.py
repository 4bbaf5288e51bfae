"""Corpora with planted duplicates for the dedup tests: English and Chinese, with the truth.

`plant`: English base documents are pydoc topics cut at paragraph breaks into 100-400 word
pieces; Chinese ones join two paragraphs of tests/fixtures/zh_paragraphs.txt (each paragraph
used by several documents, so distinct documents overlap partly, as real ones do). Plants: an
exact copy, reflowed whitespace, one or two edited words, an appended footer line.

`web_corpus`: web-style documents (one line per paragraph, so they pass the default filters)
with copies whose line breaks were changed (hard-wrapped, or joined into one paragraph), a few
words edited, a boilerplate header or footer added, and combinations of these; plus
distinct-but-similar documents for precision: one template filled with different facts, and
distinct documents under the same site boilerplate.
"""

from __future__ import annotations

import random
import textwrap
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np

from lmforge.data.dedup.shingles import simplify

ZH_FIXTURE = Path(__file__).parent / "fixtures" / "zh_paragraphs.txt"
PLANT_KINDS = ("exact", "reflow", "edit1", "edit2", "footer")
EN_WORDS = ["banana", "quietly", "orbit", "lantern", "velvet", "harbor", "meadow", "copper"]
ZH_WORDS = ["蓝天", "月亮", "火车", "森林", "钢琴", "雨伞", "花园", "咖啡"]
EN_FOOTER = "\n\nThis article was shared from our community forum, subscribe for more."
ZH_FOOTER = "\n\n本文转载自网络，如有侵权请联系删除。"


@dataclass
class Corpus:
    texts: list[str]
    group: list[int]  # documents with the same group are duplicates of each other
    planted: list[tuple[int, int]]  # (base document, its planted variant)
    kinds: list[str]  # kind of each planted pair


def scores(corpus: Corpus, roots: np.ndarray) -> tuple[float, float, int]:
    """(recall on planted pairs, pair precision, merged pairs of distinct documents) of the
    cluster root of every document; a document that never reached dedup has root -1 and
    counts in neither figure."""
    roots = np.asarray(roots)
    found = [roots[a] == roots[b] for a, b in corpus.planted if roots[a] >= 0 and roots[b] >= 0]
    reached = np.flatnonzero(roots >= 0)
    group, roots = np.asarray(corpus.group)[reached], roots[reached]
    upper = np.triu_indices(len(reached), k=1)
    same_cluster = (roots[:, None] == roots[None, :])[upper]
    same_group = (group[:, None] == group[None, :])[upper]
    false_merges = int((same_cluster & ~same_group).sum())
    precision = 1 - false_merges / max(int(same_cluster.sum()), 1)
    return float(np.mean(found)), precision, false_merges


def zh_paragraphs() -> dict[str, list[str]]:
    """Topic -> paragraphs of the Chinese fixture."""
    by_topic: dict[str, list[str]] = {}
    topic = ""
    for block in ZH_FIXTURE.read_text(encoding="utf-8").split("\n\n"):
        block = block.strip()
        if block.startswith("# "):
            topic, _, block = block.partition("\n")
            topic = topic[2:]
        by_topic.setdefault(topic, []).append(block.strip())
    return by_topic


def word_shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = simplify(text).split()
    return {tuple(words[k : k + n]) for k in range(max(1, len(words) - n + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def english_bases(seed: int = 0, max_jaccard: float = 0.5) -> list[str]:
    """Pieces of pydoc topics; pieces that repeat an earlier one (pydoc has a few) are left out."""
    kept: list[tuple[str, set]] = []
    for doc in _pydoc_pieces(seed):
        shingles = word_shingles(doc)
        if all(jaccard(shingles, other) < max_jaccard for _, other in kept):
            kept.append((doc, shingles))
    return [doc for doc, _ in kept]


def _pydoc_pieces(seed: int) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for text in topics.values():
        current: list[str] = []
        target = rng.randint(100, 400)
        for paragraph in text.split("\n\n"):
            current.append(paragraph)
            if sum(len(p.split()) for p in current) >= target:
                docs.append("\n\n".join(current))
                current, target = [], rng.randint(100, 400)
    return docs


def chinese_bases() -> list[str]:
    paragraphs = [p for ps in zh_paragraphs().values() for p in ps]
    n = len(paragraphs)
    return [paragraphs[k] + "\n" + paragraphs[(k + step) % n] for step in (1, 7) for k in range(n)]


def _reflow(text: str, chinese: bool) -> str:
    if chinese:
        return "  " + text.replace("\n", "\n\n    ") + " \n"
    return textwrap.fill(text, width=57, break_long_words=False, break_on_hyphens=False)


def _edit(text: str, edits: int, rng: random.Random, chinese: bool) -> str:
    if chinese:
        chars = list(text)
        for _ in range(edits):
            at = rng.randrange(0, len(chars) - 2)
            chars[at : at + 2] = rng.choice(ZH_WORDS)
        return "".join(chars)
    words = text.split(" ")
    for _ in range(edits):
        words[rng.randrange(len(words))] = rng.choice(EN_WORDS)
    return " ".join(words)


def plant(bases: list[str], chinese: bool, seed: int = 0) -> Corpus:
    """Every other base document gets one variant (kinds in turn), all shuffled together."""
    rng = random.Random(seed)
    entries = [(text, g, None) for g, text in enumerate(bases)]
    for n, g in enumerate(range(0, len(bases), 2)):
        kind = PLANT_KINDS[n % len(PLANT_KINDS)]
        text = bases[g]
        if kind == "reflow":
            text = _reflow(text, chinese)
        elif kind.startswith("edit"):
            text = _edit(text, int(kind[-1]), rng, chinese)
        elif kind == "footer":
            text += ZH_FOOTER if chinese else EN_FOOTER
        entries.append((text, g, kind))
    rng.shuffle(entries)
    base_at = {g: k for k, (_, g, kind) in enumerate(entries) if kind is None}
    planted = [(base_at[g], k) for k, (_, g, kind) in enumerate(entries) if kind]
    kinds = [kind for _, _, kind in entries if kind]
    return Corpus([e[0] for e in entries], [e[1] for e in entries], planted, kinds)


# ---------------------------------------------------------------- web-style corpora

WEB_KINDS = (
    "exact", "wrap", "join", "edit1", "edit2", "footer", "header", "chrome",
    "wrap+edit1", "join+footer", "wrap+header+edit2", "join+edit1+footer",
)  # fmt: skip
FILTERED_ONLY = ("chrome",)  # duplicates only once the line filters have removed the chrome
EN_HEADERS = (
    "Home | Articles | Forum | Contact",
    "Posted by admin on March 3, 2021 in Programming.",
    "You are here: Home > Docs > Reference",
)
EN_FOOTERS = (
    "This article was shared from our community forum, subscribe for more.",
    "Copyright 2024 Example Corp. All rights reserved.",
    "Share this: Facebook Twitter Email",
    "We use cookies to improve your experience. Read our privacy policy.",
)
EN_CHROME = (
    "Home", "Latest news", "Sign in | Register", "Share on Facebook", "Tweet this story",
    "Subscribe to our weekly newsletter", "Related articles", "Most read this week",
    "Advertisement", "Previous post | Next post", "Comments (12)", "Back to top",
    "Accept all cookies to continue reading our site.", "Read our privacy policy.",
)  # fmt: skip
ZH_CHROME = (
    "首页", "最新资讯", "登录 | 注册", "分享到微信", "分享到微博", "订阅我们的周刊",
    "相关文章", "本周热读", "广告", "上一篇 | 下一篇", "评论（12）", "返回顶部",
    "本站使用cookie，请阅读隐私政策。", "扫码关注",
)  # fmt: skip
ZH_HEADERS = (
    "首页 > 新闻 > 正文",
    "发布时间：2023年5月1日 来源：本站原创",
    "当前位置：首页 - 技术文章",
)
ZH_FOOTERS = (
    "本文转载自网络，如有侵权请联系删除。",
    "版权所有 © 2024 示例公司 保留所有权利",
    "关注我们的公众号，获取更多精彩内容！",
    "本站使用cookie来改善您的体验，请阅读我们的隐私政策。",
)
EN_SITE = (
    "Example Docs | Tutorials | Reference | Community | Blog",
    "Questions? Visit the community forum or write to the editors, we read every message.",
)
ZH_SITE = (
    "示例网 | 教程 | 参考 | 社区 | 博客",
    "有问题请访问社区论坛或写信给编辑部，我们会阅读每一封来信。",
)
EN_TEMPLATE = (
    "{name} grew up in the town of {city}, a place that most visitors remember for its {feature} "
    "and its quiet streets. As a child, {name} spent long afternoons {hobby} with friends near "
    "the old {place} at the edge of the town.",
    "After finishing school, {name} moved away to study {subject} at a university far from home "
    "and wrote a long thesis about {topic}. The thesis was later read by many people working "
    "in {field} who found it useful.",
    "These days {name} works as a {job} for a company that makes {product} and lives with a "
    "{pet} in a small house close to the {place2}. On most weekends the family enjoys {hobby2} "
    "and cooking {food} for their neighbours.",
    "Like many people of that generation, {name} believes that a good life is built from small "
    "habits, patient work and the company of friends, and says so to anyone who will listen. "
    "Asked what advice to give to young people, the answer is always the same: read widely, "
    "travel when you can and never stop asking questions about the world.",
)
EN_FACTS = {
    "name": "Alice Bruno Chen Dmitri Elena Farah Gustavo Hana Ivan Julia Kofi Leila Marco Nadia",
    "city": "Lisbon Oslo Nairobi Kyoto Denver Porto Hanoi Quito Dublin Perth Tallinn Accra",
    "feature": "lighthouse bakeries vineyards bridges markets gardens harbour museums cathedral",
    "hobby": "fishing painting climbing reading swimming sketching cycling singing gardening",
    "place": "mill church station bridge library market quarry harbour orchard brewery",
    "subject": "chemistry history music physics medicine geology economics botany law",
    "topic": "glaciers bees sailing ships medieval coins volcanoes jazz rivers comets",
    "field": "agriculture shipping education tourism mining banking publishing aviation",
    "job": "nurse pilot chef librarian carpenter teacher engineer baker plumber editor",
    "product": "bicycles furniture violins tractors umbrellas telescopes shoes kites",
    "pet": "dog cat parrot tortoise rabbit goat hamster ferret",
    "place2": "river park forest beach lake hills stadium valley",
    "hobby2": "hiking chess kayaking baking dancing birdwatching camping running",
    "food": "curry dumplings pasta soup pancakes risotto tacos stew",
}
ZH_TEMPLATE = (
    "{name}出生在{city}，那里以{feature}闻名，街道安静而整洁。小时候，{name}常常和朋友们"
    "在{place}附近{hobby}，一玩就是一个下午。",
    "中学毕业以后，{name}离开家乡去外地的大学学习{subject}，毕业论文写的是关于{topic}的研究。"
    "这篇论文后来被许多从事{field}工作的人读过。",
    "现在{name}在一家生产{product}的公司担任{job}，和一只{pet}住在{place2}旁边的小房子里。"
    "到了周末，一家人喜欢一起{hobby2}，还会做{food}招待邻居。",
    "和那一代的许多人一样，{name}相信美好的生活来自于细小的习惯、耐心的工作和朋友的陪伴，"
    "并且乐于把这个想法告诉每一个愿意倾听的人。",
)
ZH_FACTS = {
    "name": "张伟 李娜 王芳 刘洋 陈静 杨帆 赵磊 黄蕾 周杰 吴敏 徐涛 孙丽",
    "city": "杭州 成都 西安 厦门 青岛 昆明 大连 苏州 桂林 拉萨 南京 洛阳",
    "feature": "西湖 火锅 城墙 海滩 啤酒 鲜花 广场 园林 山水 寺庙 梅花 牡丹",
    "hobby": "钓鱼 画画 爬山 读书 游泳 放风筝 骑车 唱歌 下棋 踢球",
    "place": "小河 寺庙 车站 石桥 图书馆 菜市场 果园 码头 操场 茶馆",
    "subject": "化学 历史 音乐 物理 医学 地质 经济 植物 法律 数学",
    "topic": "冰川 蜜蜂 帆船 古钱币 火山 爵士乐 河流 彗星 稻米 丝绸",
    "field": "农业 航运 教育 旅游 采矿 银行 出版 航空 环保 气象",
    "job": "护士 飞行员 厨师 图书管理员 木匠 教师 工程师 面包师 编辑",
    "product": "自行车 家具 小提琴 拖拉机 雨伞 望远镜 皮鞋 风筝",
    "pet": "小狗 小猫 鹦鹉 乌龟 兔子 山羊 仓鼠 金鱼",
    "place2": "河边 公园 树林 海边 湖边 山脚 体育场 山谷",
    "hobby2": "徒步 下象棋 划船 烤面包 跳舞 观鸟 露营 跑步",
    "food": "咖喱 饺子 意面 鸡汤 煎饼 炒饭 包子 炖菜",
}


def prose_paragraphs(max_jaccard: float = 0.2) -> list[str]:
    """The plain-prose paragraphs of the pydoc topics (no code, markup or lists), one line each;
    a paragraph that repeats an earlier one (pydoc has many) is left out."""
    kept: list[tuple[str, set]] = []
    for key in sorted(topics):
        for block in topics[key].split("\n\n"):
            words = block.split()
            if block.startswith((" ", "\t")) or len(words) < 25 or not block.endswith("."):
                continue
            if any(c in block for c in "{}*=`>|"):
                continue
            shingles = word_shingles(block)
            if all(jaccard(shingles, other) <= max_jaccard for _, other in kept):
                kept.append((" ".join(words), shingles))
    return [paragraph for paragraph, _ in kept]


def english_web_bases() -> list[str]:
    """Four consecutive prose paragraphs per document; neighbours share two of them."""
    paragraphs = prose_paragraphs()
    return ["\n\n".join(paragraphs[k : k + 4]) for k in range(0, len(paragraphs) - 3, 2)]


def chinese_web_bases() -> list[str]:
    """Three fixture paragraphs per document (each paragraph in six documents, at most two
    shared by any two documents)."""
    paragraphs = [p for ps in zh_paragraphs().values() for p in ps]
    n = len(paragraphs)
    return [
        "\n".join(paragraphs[(k + step) % n] for step in steps)
        for steps in ((0, 1, 2), (0, 5, 11))
        for k in range(n)
    ]


def _wrap(text: str, rng: random.Random, chinese: bool) -> str:
    """Hard-wrap every paragraph, as books, mail and copied PDFs are."""
    if chinese:
        width = rng.randint(30, 40)  # an 80-column line holds 40 CJK characters
        lines = [p[k : k + width] for p in text.split("\n") for k in range(0, len(p), width)]
        return "\n".join(lines)
    width = rng.randint(50, 78)
    wrapped = (textwrap.fill(p, width, break_on_hyphens=False) for p in text.split("\n\n"))
    return "\n\n".join(wrapped)


def _join(text: str, chinese: bool) -> str:
    """All paragraphs run together into one."""
    return "".join(text.split("\n")) if chinese else " ".join(text.split())


def web_variant(text: str, kind: str, rng: random.Random, chinese: bool) -> str:
    """The copy of `text` that `kind` names: words edited, then boilerplate, then layout."""
    parts = kind.split("+")
    for part in parts:
        if part.startswith("edit"):
            text = _edit(text, int(part[-1]), rng, chinese)
    gap = "\n" if chinese else "\n\n"
    if "chrome" in parts:  # each site's navigation around every paragraph, C4 removes it all
        chrome = ZH_CHROME if chinese else EN_CHROME
        blocks = [[*rng.sample(chrome, 2), p] for p in text.split(gap)]
        text = gap.join([line for block in blocks for line in block] + rng.sample(chrome, 3))
    if "header" in parts:
        text = rng.choice(ZH_HEADERS if chinese else EN_HEADERS) + gap + text
    if "footer" in parts:
        text = text + gap + rng.choice(ZH_FOOTERS if chinese else EN_FOOTERS)
    if "wrap" in parts:
        text = _wrap(text, rng, chinese)
    if "join" in parts:
        text = _join(text, chinese)
    return text


def fill_template(rng: random.Random, chinese: bool) -> str:
    """One document of the template with facts drawn at random."""
    vocabulary, template = (ZH_FACTS, ZH_TEMPLATE) if chinese else (EN_FACTS, EN_TEMPLATE)
    facts = {key: rng.choice(words.split()) for key, words in vocabulary.items()}
    return ("\n" if chinese else "\n\n").join(p.format(**facts) for p in template)


def shingle_set(text: str, chinese: bool, n: int = 5) -> set:
    """The shingles dedup compares: word n-grams, or character n-grams of Chinese."""
    if not chinese:
        return word_shingles(text, n)
    chars = simplify(text).replace(" ", "")
    return {chars[k : k + n] for k in range(max(1, len(chars) - n + 1))}


def web_corpus(chinese: bool, seed: int = 0, templates: int = 40, threshold: float = 0.8) -> Corpus:
    """Every fourth base is framed by the same site boilerplate, the others get one copy each
    (WEB_KINDS in turn); `templates` template documents with different facts join them.
    Every document but a copy is its own group. A copy is a planted pair (the truth recall is
    measured on) when its shingles' Jaccard similarity with its base reaches `threshold`, or
    when its kind is FILTERED_ONLY; other copies (several edits in a short text) stay in the
    corpus, in their base's group, as borderline cases that may go either way."""
    rng = random.Random(seed)
    bases = chinese_web_bases() if chinese else english_web_bases()
    site = ZH_SITE if chinese else EN_SITE
    gap = "\n" if chinese else "\n\n"
    entries: list[tuple[str, int, str]] = []  # (text, group, family)
    for g, text in enumerate(bases):
        framed = g % 4 == 1
        entries.append((gap.join([site[0], text, site[1]]) if framed else text, g, "base"))
        if not framed:
            kind = WEB_KINDS[len(entries) % len(WEB_KINDS)]
            entries.append((web_variant(text, kind, rng, chinese), g, kind))
    for t in range(templates):
        entries.append((fill_template(rng, chinese), len(bases) + t, "template"))
    rng.shuffle(entries)
    base_at = {g: k for k, (_, g, family) in enumerate(entries) if family == "base"}
    planted, kinds = [], []
    for k, (text, g, family) in enumerate(entries):
        if family not in WEB_KINDS:
            continue
        base = entries[base_at[g]][0]
        similar = jaccard(shingle_set(base, chinese), shingle_set(text, chinese)) >= threshold
        if similar or family in FILTERED_ONLY:
            planted.append((base_at[g], k))
            kinds.append(family)
    return Corpus([e[0] for e in entries], [e[1] for e in entries], planted, kinds)
