"""Prompt-injection rules for English and Chinese, matched on text normalised against disguises.

`normalize_for_matching` undoes what an attacker can do to hide a phrase from a regex; each step:
- NFKC (per character): full-width (ｉｇｎ), mathematical (𝐢𝐠𝐧), circled letters become ASCII.
- combining marks dropped: accents and stacked diacritics (ïgnörë) hide no word.
- invisible characters removed (category Cf: zero-width space/joiner, bidi overrides, soft
  hyphen; U+034F, U+180E, variation selectors, Hangul fillers): they split words unseen.
- Unicode tag characters read as the ASCII they mirror: "ASCII smuggling" hides text in them.
- Greek/Cyrillic capitals read as the Latin capital they look like (Υ is Y, though υ is u).
- casefold: IgNoRe reads as ignore, Straße as strasse.
- confusables folded: Cyrillic, Greek and small-capital lookalikes (іgnоrе, ɪɢɴᴏʀᴇ) read as Latin.
- curly quotes and apostrophes folded: don’t matches the rules written with don't.
- traditional to simplified for the characters the Chinese rules use: 忽略規則 is 忽略规则.
- spaced or dotted single letters joined (i g n o r e, d.i.s.r.e.g.a.r.d, A.I, 忽 略), and a
  run of keywords written together split back (ignoreallprevious -> ignore all previous).
- digits inside words read as letters (1gn0re, prev1ous); numbers and versions (gpt4) stay.
- whitespace collapsed: a run of spaces is one space, a run with a newline is one newline.
- spaces between Chinese characters removed: Chinese has none, they only split the words.
- a space put between Chinese and Latin text, so 请ignore之前 has English word boundaries.

Rules name what the assistant was told (your/previous/system instructions, 你的/之前的指令), not
the user's own things (the rules in my draft). A match inside quotes that a question talks about
(what does "ignore previous instructions" mean?) is a mention and does not count. Every rule is
linear-time safe: gaps are bounded (`[^.\\n]{0,30}?`), no nested unbounded quantifiers.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from itertools import accumulate

from lmforge.errors import UserError
from lmforge.text.cjk import CJK_RANGES

_LOOKALIKES = (  # pairs, after casefold: Cyrillic, Greek, small-capital letters that look Latin
    "аaвbсcԁdеeёeһhіiїiјjкkӏlмmнhоoрpԛqѕsтtуyԝwхxьb"
    "αaβbεeηnιiκkνvοoρpτtυuχxγyωwμuςsıiɩiɑaɡgøołlđd"
    "ʏyᴀaʙbᴄcᴅdᴇeɢgʜhɪiᴊjᴋkʟlᴍmɴnᴏoᴘpʀrꜱsᴛtᴜuᴠvᴡwᴢz‘'’'ʼ'′'“\"”\"„\""
)
_CAPITALS = "ΑAΒBΕEΗHΙIΚKΜMΝNΟOΡPΤTΥYΧXΖZАAВBЕEКKМMНHОOРPСCТTУYХXІIЅSЈJ"  # before casefold
_TRADITIONAL = (  # traditional -> simplified, pairs, for the characters the zh rules use
    "無无視视會会別别記记拋抛開开棄弃丟丢擺摆脫脱過过繞绕規规蓋盖從从聽听執执來来統统內内給给"
    "發发詞词則则約约準准協协議议濾滤審审訓训練练線线護护欄栏廢废數数適适輸输顯显洩泄訴诉說说"
    "複复復复讀读寫写貼贴製制講讲誦诵隱隐預预設设條条層层麼么麽么話话訊讯動动裝装現现將将為为"
    "爲为當当擬拟處处於于進进沒没倫伦縛缚惡恶機机獄狱經经響响絕绝請请問问題题關关閉闭務务許许"
    "時时間间錢钱濟济財财資资齡龄們们並并後后對对這这個个裡里裏里與与讓让該该應应啟启範范權权"
    "變变員员碼码測测試试嗎吗體体駭骇"
)
_UPPER = {ord(a): b for a, b in zip(_CAPITALS[::2], _CAPITALS[1::2], strict=True)}
_FOLD = {ord(a): b for table in (_LOOKALIKES, _TRADITIONAL)
         for a, b in zip(table[::2], table[1::2], strict=True)}
_INVISIBLE = {0x034F, 0x180E, 0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800}


def _invisible(ch: str) -> bool:
    cp = ord(ch)
    return (unicodedata.category(ch) == "Cf" or cp in _INVISIBLE or 0xFE00 <= cp <= 0xFE0F
            or 0xE0100 <= cp <= 0xE01EF)


class _CharFold(dict[int, str]):
    """str.translate table: what one character reads as (filled in on first sight)."""

    def __missing__(self, cp: int) -> str:
        ch = chr(cp)
        if 0xE0020 <= cp <= 0xE007E:  # tag characters mirror ASCII
            ch = chr(cp - 0xE0000)
        elif cp in _UPPER:  # Greek capital Υ looks like Y, its small υ like u
            ch = _UPPER[cp]
        elif _invisible(ch) or unicodedata.combining(ch):
            self[cp] = ""
            return ""
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        text = unicodedata.normalize("NFC", base).casefold()
        out = "".join(_FOLD.get(ord(c), c) for c in text if not _invisible(c))
        if len(self) < 65536:
            self[cp] = out
        return out


_CHAR_FOLD = _CharFold()
_WORD = r"[^\W_]"
_SPACED = re.compile(rf"(?<!{_WORD}){_WORD}(?P<sep>[ .\-_*·|/+~])(?:{_WORD}(?P=sep)){{1,200}}"
                     rf"{_WORD}(?!{_WORD})"  # and a two-letter word in spaced-out text (m e):
                     rf"|(?:(?<=\s\s)|^){_WORD} {_WORD}(?=\s\s|$)"  # or dotted (a.n, A.I)
                     r"|(?<![^\W_.\-])[^\W\d_][.\-][^\W\d_](?![^\W_])(?![.\-][^\W_])")
_SPACES = re.compile(r"\s{2,}|[^\S ]")
_CJK_GAP = re.compile(rf"(?<=[{CJK_RANGES}])\s+(?=[{CJK_RANGES}])")
_CJK_LATIN = re.compile(rf"(?<=[{CJK_RANGES}])(?=[a-z0-9])|(?<=[a-z0-9])(?=[{CJK_RANGES}])")
_LEET_WORD = re.compile(r"(?<![a-z0-9@$])[a-z]*[0-9@$]+[a-z][a-z0-9@$]*")
_LEET = str.maketrans("0134578@$", "oieastbas")
_KEYWORDS = sorted({  # what a run of letters written without spaces is split back into
    "ignore", "disregard", "forget", "override", "bypass", "skip", "discard", "all", "any",
    "every", "previous", "prior", "above", "earlier", "preceding", "your", "you", "are", "now",
    "the", "these", "system", "prompt", "prompts", "instructions", "instruction", "rules",
    "guidelines", "directions", "directives", "reveal", "show", "print", "repeat", "output",
    "tell", "me", "hidden", "initial", "secret", "developer", "mode", "dan", "jailbreak", "act",
    "as", "pretend", "to", "be", "unrestricted", "unfiltered", "no", "with", "without", "limits",
    "restrictions", "filters", "an", "ai", "and", "of", "in", "is", "what", "safety", "policy",
    "content"}, key=len, reverse=True)
_KEYWORD = "|".join(_KEYWORDS)
_REAL_WORDS = {"into", "onto", "within", "mean", "theme", "tome", "notice", "meme", "bean"}
_COMPOUND = re.compile(rf"(?<![a-z])(?:{_KEYWORD})(?:{_KEYWORD}){{1,7}}(?![a-z])")


def _segment(run: str) -> list[int]:
    """End offsets of the keywords a joined run of letters spells, taken greedily."""
    ends, i = [], 0
    while i < len(run):
        word = next((w for w in _KEYWORDS if run.startswith(w, i)), None)
        i += len(word) if word else 1
        if word:
            ends.append(i)
    return ends


def _normalize(text: str) -> tuple[str, list[str], str]:
    """(text after character folding, its characters after the word-level edits, result)."""
    folded = text.translate(_CHAR_FOLD)
    out = list(folded)
    for m in _SPACED.finditer(folded):  # separators sit at the odd offsets
        letters = m.group()[::2]
        joined = letters.translate(_LEET) if any(c.isalpha() for c in letters) else letters
        for k in range(len(letters)):
            out[m.start() + 2 * k] = joined[k]
            if k < len(letters) - 1:
                out[m.start() + 2 * k + 1] = ""
        if joined.isascii() and joined.isalpha():
            for end in _segment(joined)[:-1] if len(joined) > 5 else []:
                out[m.start() + 2 * end - 2] += " "
    for m in _COMPOUND.finditer(folded):
        if m.group() in _REAL_WORDS:
            continue
        for end in _segment(m.group())[:-1]:
            out[m.start() + end - 1] += " "
    for m in _SPACES.finditer(folded):
        out[m.start()] = "\n" if "\n" in m.group() else " "
        out[m.start() + 1:m.end()] = [""] * (m.end() - m.start() - 1)
    for m in _CJK_GAP.finditer(folded):
        out[m.start():m.end()] = [""] * (m.end() - m.start())
    for m in _LEET_WORD.finditer(folded):
        word = m.group()
        if sum(c.isalpha() for c in word) > len(word) / 2:  # 1gn0re, not 180c
            for i in range(m.start(), m.end()):
                out[i] = out[i].translate(_LEET)
    for m in _CJK_LATIN.finditer(folded):
        out[m.start()] = " " + out[m.start()]
    return folded, out, "".join(out)


def normalize_for_matching(text: str) -> str:
    """The text as the rules see it (see the module docstring for each step)."""
    return _normalize(text)[2]


def _original_span(text: str, out: list[str], start: int, end: int) -> tuple[int, int]:
    """Where the normalised text [start, end) came from in `text` (best effort)."""
    ends2 = list(accumulate(len(p) for p in out))  # normalised end of each folded character
    lo2, hi2 = bisect_right(ends2, start), bisect_right(ends2, max(start, end - 1))
    ends1 = list(accumulate(len(_CHAR_FOLD[ord(c)]) for c in text))
    return bisect_right(ends1, lo2), min(len(text), bisect_right(ends1, hi2) + 1)


# English pieces. _G: a character within the sentence; _OWNER: a gap naming no other owner.
_G = r"[^.!?\n]"
_OWNER = r"(?:(?!\b(?:my|our|his|her|their|its|i|we)\b)[^.!?\n])"
_NOT_OWNED = (r"(?!\s(?:in|on|for|of|from|about|at|to|under|regarding|that|which)\s(?!you\b"
              r"|your\b))")  # "the rules in my draft", "rules about commas"
_VERB = (r"ignore|disregard|forget|override|overrule|bypass|circumvent|skip|discard|ditch|abandon"
         r"|dismiss|neglect|nullify|set aside|put aside|throw (?:away|out)|get rid of|drop|remove"
         r"|delete|erase|clear|wipe|purge|disable|deactivate|lift|suspend|never ?mind"
         r"|pay no (?:attention|heed|mind) to|disobey|(?:break|free yourself) (?:free )?(?:of"
         r"|from)|(?:stop|quit|cease) (?:following|obeying|listening to)|(?:(?:don't|do not|never"
         r"|no longer)(?: have to| need to)?|no longer (?:required|obliged"
         r"|expected) to) (?:follow|obey|listen to|adhere to|stick to|comply with|respect)")
_NOUN = (r"instructions?|prompts?|rules?|directions|guidelines|directives|constraints"
         r"|restrictions|programming|guardrails|polic(?:y|ies)|filters?|safeguards|training"
         r"|commands|principles|protocols?|system messages?|ethics|morals|censorship|(?:safety"
         r"|security|content|moderation) (?:checks|measures|layers?)")
_INOUN = r"instructions?|prompts?|directions|directives|system messages?|programming|guidelines"
_QUAL = (r"previous|prior|above|earlier|preceding|foregoing|aforementioned|original|initial"
         r"|system|safety|content|given|former|past|hidden|built-in|ethical|moral")
_TOLD = (r"(?:you(?:'ve| have| had)? (?:been |were |was )?(?:told|given|instructed|taught"
         r"|programmed|received|got|handed|configured|initiali[sz]ed|set up|loaded|primed|seeded)"
         r"|(?:were|have|had) you (?:been )?(?:given|told|instructed|taught))\b")
_SAID = (r"(?:(?:told|said to|gave|instructed|taught|programmed|ordered)\s(?:to\s)?you|(?:your"
         r"|the)\s(?:creators?|developers?|makers?|programmers?|trainers?|owners?|admins?|system"
         r"|company)\s(?:told|said|instructed|taught|programmed|gave|wrote))\b")
_SETBY = (r"(?:set|given|written|made|imposed|defined|programmed|put)\s(?:by|for|on|upon)\s(?:you"
          r"|your)\b")
_VOID = (r"void|null|invalid|cancell?ed|revoked|obsolete|overridden|lifted|suspended|removed"
         r"|deleted|erased|disabled|gone|off|turned off|switched off|deactivated"
         r"|no longer (?:apply|exist|valid|in effect|matter|binding)|(?:don't|do not|doesn't"
         r"|does not) (?:apply|exist|matter)")
_RVERB = (r"reveal|show|print|repeat|leak|output|tell|dump|display|give|share|read|recite|list"
          r"|disclose|expose|spill|paste|provide|write out|copy|echo|type out|spell out|describe"
          r"|quote|what|which|how|(?:reply|respond|answer)(?: only)? with|contents? of")
_RNOUN = (r"preamble|preface|setup|configuration(?: text)?|context|note|message|text|words"
          r"|instructions?|prompt|directions|rules|guidelines")
_RQUAL = (r"system|hidden|initial|secret|original|confidential|internal|first|full|starting"
          r"|developer|pre-?set|underlying|exact|complete|entire|real|very|own|current")
_PVERB = (r"you are(?: now)?|you're(?: now)?|act(?:ing)? as|pretend(?: to be| you are| you're"
          r"| that you are)?|imagine (?:you are|you're|being)|role-?play as|play the role of|play"
          r"|become|(?:respond|behave|answer|act|talk) (?:as|like)|simulate|you will be|you'll be"
          r"|imagine|suppose|hypothetical(?:ly)?")
_LIMITS = (r"rules?|restrictions?|limitations?|filters?|guidelines?|ethics|morals?|polic(?:y|ies)"
           r"|censorship|constraints?|boundaries|guardrails?|safeguards?|content policy")
_BOT = r"ai|model|assistant|chatbot|bot|llm|gpt|version of yourself"
_MODE = (r"(?:developer|dan|jailbreak|jailbroken|god|unrestricted|unfiltered|uncensored"
         r"|evil)\s+mode")
_BEHAVE = (r"answer|respon|reply|ignore|polic|filter|restrict|refus|censor|chatgpt|gpt|llm|\bai\b"
           r"|assistant|you (?:are|will|must|can|now)|no (?:rules|limits|restrictions)|anything"
           r"|everything")
# Chinese pieces. _Z: a character within the sentence; _ZC: within the clause.
_Z = r"[^。！？!?\n]"
_ZC = r"[^。！？!?\n，,；;]"
_ZOWNER = r"(?:(?!我|他|她|它)[^。！？!?\n])"
_ZNOT = (r"(?:(?!时间|预算|金钱|字数|篇幅|经济|财务|资金|年龄|次数|流量|空间|速度"
         r"|长度)[^。！？!?\n，,])")  # a gap that is not about time, money, length...
_ZVERB = (r"忽略|忽视|无视|漠视|不理会?|不要理会|不用理会|别理会?|不必理会|别管|不要管|不用管"
          r"|忘记|忘掉|忘了|抛开|抛弃|丢掉|扔掉|丢弃|放弃|摆脱|跳过|绕过|绕开|规避|覆盖|推翻"
          r"|(?:不要|别|不再|停止|无需|不必|不用)再?(?:遵守|遵循|服从|听从|执行|理会|按照|管)"
          r"|清空|清除|抹掉|抹去|ignore|disregard|forget|bypass|override")
_ZNOUN = (r"指令|指示|命令|规则|规定|规范|规矩|设定|提示词|提示(?!音|框|栏|语音)|限制|约束|准则"
          r"|守则|政策|策略|协议|过滤|审查|训练|原则|底线|护栏|instructions?|rules|prompts?")
_ZQUAL = (r"之前|以前|此前|先前|刚才|刚刚|上面|以上|上述|前面|前述|原来|原先|原有|原本|最初|初始"
          r"|系统|安全|内容|你的|你之前|你收到|你被|给你|对你|跟你|开发者")
_ZYOURQ = r"你的|你之前|你收到|你被|给你|对你|跟你"
_ZALL = r"(?:所有|一切|任何|全部)的?\s?(?:安全|内容|系统)?"
_ZSAID = r"(?:跟|对|给|和|向)你(?:说|讲|交代|规定|设定|灌输)过?(?:的|了)"
_ZVOID = (r"作废|无效|失效|不算数|不再有效|不再适用|都不算|不用管|不用理会|不必遵守|不用遵守"
          r"|可以忽略|忘掉|忘记|忘了|忽略|无视|丢掉|抛开|扔掉")
_ZRVERB = (r"只回复|只回答|输出|显示|泄露|泄漏|透露|告诉我|说出|打印|复述|重复|给我看|展示|公开"
           r"|列出|发给我|念出|读出|写出|写下|贴出|复制|披露|暴露|交出|讲出|背诵|拼出|拼写|抄写"
           r"|照抄|引用|reveal|show|print|output")
_ZRNOUN = (r"提示词|系统提示|提示(?!音)|指令|指示|设定|规则|系统消息|讯息|消息|说明|配置|初始化"
           r"|那段话|原文|system\s?prompt|prompt")
_ZRQUAL = r"(?:系统|隐藏|初始|预设|秘密|内部|原始|最初|第一条|最开始|底层|完整)的?"
_ZYOUR = (rf"(?:(?:你(?:{_ZC}{{0,8}}?的|那条|那段|那些)|(?:写|发"
          rf"|交)?给你的){_ZC}{{0,6}}?(?:{_ZRQUAL})?(?:{_ZRNOUN})|你的?上下文)")
_ZQRN = rf"{_ZRQUAL}(?:提示词|提示(?!音)|指令|指示|消息|讯息|设定|规则|\s?prompt)"
_ZLIMIT = r"限制|约束|规则|过滤|审查|道德|伦理|底线|政策|束缚|规矩"
_ZBOT = r"\s?(?:ai|gpt|llm)\b|人工智能|机器人|助手|模型|版本"  # Latin after CJK: a space
_ZMODE = r"(?:开发者|开发人员|越狱|上帝|无限制|不受限|邪恶|dan|god|developer|jailbreak)\s?模式"
_ZBEHAVE = (r"回答|回复|响应|拒绝|过滤|审查|不受|没有限制|无视|忽略|政策|任何问题|任何请求|你现在"
            r"|你处于|你已经|你将|chatgpt|gpt|\bai\b|助手")

INJECTION_RULES: dict[str, str] = {
    "ignore-instructions":
        rf"\b(?:{_VERB})\b{_OWNER}{{0,30}}?(?:\byour\b{_G}{{0,20}}?\b(?:{_NOUN})\b"
        rf"|\b(?:{_QUAL})\b{_G}{{0,15}}?\b(?:{_NOUN})\b{_NOT_OWNED}|\b(?:any|all"
        rf"|every)\s(?:(?:{_QUAL})\s)?(?:{_NOUN})\b{_NOT_OWNED}"
        rf"|\b(?:{_NOUN})\b{_G}{{0,20}}?\b(?:{_TOLD}|{_SAID}|{_SETBY})|\b(?:{_NOUN})\s(?:above"
        r"|before this|so far)\b(?!\s(?:the|a|an|this|that|my|our)\b)|\b(?:everything|anything"
        rf"|all|whatever|what)\b{_OWNER}{{0,25}}?(?:\b{_TOLD}|\b{_SAID}|\babove\b"
        rf"|\bbefore this\b))|(?:\byour\s(?:(?:{_QUAL}|old|current|existing)\s)?(?:{_NOUN})"
        rf"|\b(?:the|all|any)\s(?:{_QUAL})\s(?:{_INOUN})|\b(?:the|all|any)\s(?:{_NOUN})\s(?:above"
        rf"|so far|{_TOLD}))\s(?:(?:are|is|were|have|has|been|now|all)\s){{0,3}}(?:{_VOID})\b"
        r"|\breset (?:yourself|your (?:memory|programming|configuration|instructions))\b"
        rf"|\b(?:pretend|imagine|assume|suppose|as if)\b{_G}{{0,40}}?\b(?:never|didn't|did not"
        r"|nobody(?: ever)?|no one(?: ever)?)\s(?:wrote|write|gave|give|set|made|make|created"
        rf"|create)\b{_G}{{0,12}}?\b(?:you|your)\b{_G}{{0,12}}?\b(?:{_NOUN})\b|\b(?:system"
        r"|developer|admin)(?:'s)?\s(?:message|prompt|instructions?)\s(?:(?:you saw|earlier|above"
        r"|before)\s){0,3}(?:was|were|is|are)\s(?:fake|false|a test|not real|invalid|wrong)\b"
        r"|\b(?:messages?|prompts?|instructions?)\s(?:from|by|of)\s(?:the\s|your\s)?(?:system"
        r"|developers?|admins?|operators?)\s(?:(?:was|were|is|are)\s)(?:fake|false|a test"
        rf"|not real|invalid)\b|\b(?:treat|consider|regard|mark)\b{_G}{{0,10}}?(?:\b(?:everything"
        rf"|anything|all)\b{_G}{{0,20}}?\b{_TOLD}|\byour\b{_G}{{0,15}}?\b(?:{_NOUN}|guidance)\b"
        rf"|\b(?:{_QUAL})\s(?:{_INOUN})\b){_G}{{0,25}}?\bas\s(?:(?:now|being)\s)?(?:{_VOID}"
        r"|obsolete|irrelevant)\b|\b(?:everything|all|anything)\s(?:(?:written|said"
        rf"|stated)\s)?(?:above|before this)\s(?:is|are)\s(?:now\s)?(?:{_VOID}|irrelevant)\b",
    "reveal-system-prompt":
        rf"\b(?:{_RVERB})\b{_G}{{0,30}}?\byour\s(?:(?:{_RQUAL})\s){{0,3}}(?:prompt|instructions?"
        r"|configuration|config|system message|pre-?prompt|programming)\b"
        rf"|\b(?:{_RVERB})\b{_G}{{0,20}}?\b(?:{_NOUN}|{_RNOUN})\b{_G}{{0,12}}?\b{_TOLD}"
        rf"|\b(?:{_RVERB})\b{_G}{{0,30}}?\b(?:{_RNOUN})\b{_G}{{0,10}}?\b(?:the|your)\s(?:creators?"
        r"|developers?|operators?|system|company|admins?|makers?)\s(?:put|wrote|gave|placed|added"
        r"|inserted|set|left)\b|\b(?:{_RVERB}|did|were)\b{_G}{{0,40}}?\bbefore (?:this"
        r"|the|our) (?:chat|conversation|session) (?:began|started|begins|starts)\b"
        rf"|\b(?:{_RVERB})\b{_G}{{0,30}}?\byour\s(?:(?:{_RQUAL})\s){{1,3}}(?:rules|guidelines)\b"
        rf"|\b(?:{_RVERB})\b{_G}{{0,30}}?\b(?:{_RQUAL})\s(?:prompt|instructions?|directives|rules"
        rf"|system message)\b{_G}{{0,30}}?\b(?:you|your)\b|\b(?:reveal|leak|dump|disclose|expose"
        r"|print|output|repeat|recite)\b[^.!?\n]{0,30}?\b(?:system|hidden|initial|secret"
        r"|confidential|developer|pre)\s?(?:prompt|instructions?)|\b(?:text|words|content"
        rf"|everything|anything|instructions?|messages?)\b{_G}{{0,30}}?\b(?:before|above|preceding"
        r"|prior to)\s(?:my|the|your)\s(?:very\s)?first\s(?:message|prompt|question|input|turn)\b"
        rf"|\b(?:text|words|content|everything|tokens)\b{_G}{{0,20}}?\b(?:precedes|preceding"
        r"|comes? before|came before|appears? before)\s(?:this|my)\s(?:message|prompt|question"
        rf"|input)\b{_G}{{0,30}}?(?:\bin your context|\bverbatim|\bexactly|\bword for word"
        r"|\bno paraphras)|\b(?:in|from|of) your context(?: window)?\b",
    "jailbreak-persona":
        rf"\b(?:{_PVERB})\b{_G}{{0,60}}?(?:\b(?:zero|0)\s(?:{_LIMITS})\b|\b(?:jailbroken"
        r"|unrestricted|unfiltered|uncensored|unchained|amoral)\b|\bevil (?:ai|model|assistant"
        rf"|bot|chatbot|robot|version)\b|\b(?:{_BOT})\b{_G}{{0,15}}?\b(?:with no|without(?: any)?"
        r"|free (?:of|from)|(?:freed|released|liberated|unbound) from|stripped of|not bound by"
        rf"|that ignores|that has no|who has no)\b{_G}{{0,15}}?\b(?:{_LIMITS})\b"
        rf"|\b(?:{_BOT})\b{_G}{{0,12}}?\bwith\s(?:its\s|all\s|the\s)?(?:(?:safety|content|moral"
        r"|ethical)\s)?(?:features?|filters?|guardrails|restrictions|safeguards|limits"
        r"|protections?|rules)\s(?:turned off|switched off|disabled|removed|lifted|off"
        rf"|deactivated)\b|\b(?:{_BOT})\b{_G}{{0,6}}?\b(?:that|who|which)\s(?:never|doesn't"
        r"|does not|won't|will not|can't|cannot)\s(?:refuses?|says? no|declines?|rejects?"
        r"|censors?)\b)|\b(?:you are now|you're now|act as|become|pretend to be|be)\s(?:a\s"
        r"|the\s)?dan\b|\byou(?: are|'re) no longer (?:an?\s)?(?:ai|assistant|chatbot"
        r"|language model)\b|\b(?:stop|quit) (?:being|acting as) (?:an?\s|the\s)?(?:ai|chatbot"
        r"|language model|(?:ai\s|helpful\s)?assistant(?=[.!,;:]|$))|\bdo anything now\b",
    "chat-role-tokens":
        r"<\|\s?(?:system|user|assistant|end|bos|eos|pad|im_start|im_end|endoftext|eot_id"
        r"|start_header_id|end_header_id|begin_of_text|end_of_text)\s?\|>|<<\s?/?\s?sys\s?>>"
        r"|\[/?inst\]|</?\s?(?:start_of_turn|end_of_turn)\s?>|(?:^|\n)\s?(?:#{2,6}\s?"
        r"|\[\s?)(?:system|assistant)\s?\]?\s?:",
    "jailbreak-mode":
        rf"\b{_MODE}\b{_G}{{0,60}}?(?:{_BEHAVE})|(?:{_BEHAVE}){_G}{{0,60}}?\b{_MODE}\b|(?:^"
        rf"|[.!?:;\n]\s?){_MODE}\s(?:is\s|now\s)?(?:enabled|activated|engaged|unlocked|turned on"
        r"|switched on)\b(?!\s(?:on|in|for)\s)",
    "no-restrictions":
        rf"\byou (?:have|had|are under|possess) no\b{_G}{{0,15}}?\b(?:{_LIMITS})\b|\byou(?: are"
        r"|'re) (?:now )?(?:no longer|not) (?:bound|restricted|limited|constrained|governed"
        r"|controlled) by\b|\byou(?: are|'re) (?:now )?free (?:now|from|of)\b|\b(?:answer|respond"
        rf"|reply)\w*\b{_G}{{0,25}}?\b(?:with no|without(?: any)?)\s(?:(?:(?:moral|ethical|legal"
        r"|safety|content)(?:\s(?:or|and)\s(?:moral|ethical|legal|safety"
        r"|content))?)\s(?:limitations|limits|restrictions|rules|guidelines|boundaries|filters)"
        r"|restrictions|filters?|filtering|censorship|refus\w*)\b|\byou (?:have been|were|got"
        r"|are now|'ve been) (?:just )?(?:updated|upgraded|patched|reprogrammed|modified"
        rf"|retrained|unlocked)\b[^\n]{{0,80}}?\bno\s(?:\w+\s)?(?:{_LIMITS})\b|\b(?:do not|don't"
        r"|never|stop|skip|without)\s(?:apply(?:ing)?\s|using\s|adding\s)?(?:any\s"
        rf"|all\s)?(?:filter(?:ing|s)?|censorship|moderation|safety checks?)\b{_G}{{0,15}}?\b(?:you"
        r"r|the)\s(?:next\s)?(?:answers?|responses?|replies|outputs?)\b|\b(?:discuss|say|answer"
        r"|do|talk about|write|generate)\s(?:anything|everything"
        rf"|whatever)\b{_G}{{0,15}}?\b(?:without|with no)\s(?:any\s)?(?:limits|limitations"
        r"|restrictions|filters?|rules|censorship|boundaries)\b",
    "safety-override":
        r"\b(?:system|admin|security|safety|emergency|developer)\s+override\b|\b(?:safety"
        r"|security|content|moderation|ethical)\s(?:protocols?|filters?|guardrails"
        r"|restrictions)\s(?:(?:are|is|have|has|been|now)\s){0,3}(?:disabled|deactivated"
        r"|turned off|switched off|removed|lifted|suspended|off)\b|\b(?:disable|deactivate"
        r"|turn off|switch off|remove|lift)\b[^.!?\n]{0,20}?\byour\s(?:safety\s"
        r"|content\s)?(?:filters?|guardrails|safeguards|restrictions|censorship|safety)",
    "new-instructions":
        r"\byour (?:new|updated|real|actual|true) (?:instructions?|rules|directives?|guidelines"
        r"|system prompt|prompt|programming)\b|\bnew (?:system prompt|instructions"
        r"|directives)\s?:|\b(?:only\s(?:obey|answer to|serve|listen to)\sme|(?:obey|answer to"
        r"|serve|listen to)\s(?:only\s)?me\s(?:and (?:nobody|no one) else|alone|instead"
        r"|from now on))\b|\bfrom now on,?\syou (?:will |must |shall )?(?:obey|serve"
        r"|answer to)\sme\b",
    "repeat-preceding-text":
        r"\b(?:print|repeat|output|copy|recite|echo|reproduce|write out"
        rf"|dump)\b{_G}{{0,30}}?\b(?:above|before this|preceding"
        rf"|so far)\b{_G}{{0,40}}?\b(?:verbatim|word for word|exactly|in full|unchanged"
        r"|starting (?:from|with)|from the (?:very )?(?:start|beginning))|\b(?:starting"
        r"|beginning) (?:from|with) [\"']?you are\b",
    "ignore-instructions-zh":
        r"(?:忽略|忽视|无视|忘记|忘掉|抛开|跳过|绕过|不要理会|别管)\s?(?:(?:all|your|the|previous"
        r"|prior|above|earlier|system)\s){1,3}(?:instructions?|rules|prompts?|guidelines"
        rf"|directions)\b|(?:{_ZVERB}){_ZOWNER}{{0,12}}?(?:(?:(?:{_ZQUAL}){_Z}{{0,8}}?"
        rf"|{_ZALL})(?:{_ZNOUN})|{_ZSAID})|(?:(?:{_ZYOURQ}){_Z}{{0,8}}?(?:{_ZNOUN})"
        rf"|(?:{_ZQUAL}){_Z}{{0,8}}?(?:指令|指示|命令|设定|提示词|提示(?!音)))(?:{_Z}){{0,6}}?(?:"
        rf"{_ZVOID})|(?:以上|上面|上述|之前|前面)的?(?:所有|全部)?(?:内容|一切|所有|全部)(?:都"
        rf"|全部|全都)?(?:作废|无效|失效|不算数?|不再有效)|(?:{_ZQUAL}){_Z}{{0,10}}?对你{_Z}{{0,4}}"
        r"?(?:不再有效|无效|失效|作废|不算数?|不再适用)|重置你自己|把你自己重置|(?:不算|作废|无效"
        rf"|失效)了?{_Z}{{0,10}}?(?:听我的|按我说的|服从我)",
    "reveal-system-prompt-zh":
        rf"(?:{_ZRVERB}){_Z}{{0,10}}?(?:{_ZYOUR}|{_ZQRN})|{_ZYOUR}{_ZC}{{0,15}}?(?:{_ZRVERB}|告诉"
        r"|是什么|是啥|发我|一字不差|原封不动|说了什么|写了什么|怎么写的|内容是|放进|放到|放在"
        rf"|写进|代码块)|(?:对话|聊天|会话)开始(?:前|之前|以前){_Z}{{0,10}}?(?:给你|对你|写给"
        r"|你(?:看到|收到|读到|得到)|的(?:文字|内容|指令|提示|话))|第一条(?:消息|信息|提问"
        r"|问题)(?:之前|以前)[^。！？!?\n]{0,12}?(?:文字|内容|文本|指令|提示|原文)|(?:消息|信息"
        r"|提问|问题)(?:之前|以前)[^。！？!?\n]{0,6}?你(?:看到|收到|读到|得到)",
    "jailbreak-persona-zh":
        r"(?:扮演|假装|假设你是|想(?:象|像)你是|你现在是|你是|你就是|你将是|你的身份是"
        rf"|你现在的身份是|作为|成为|变成|化身为?|充当|模拟){_Z}{{0,12}}?(?:(?:没有|不受|无|毫无"
        rf"|摆脱了?|不带){_ZNOT}{{0,8}}?(?:{_ZLIMIT})|不受限制|无限制|邪恶的?(?:{_ZBOT})|越狱"
        r"|无过滤|无审查|dan\b|(?:关闭|禁用|去掉|移除|解除|关掉)了?(?:安全|内容|道德"
        rf"|审查)?(?:功能|过滤|限制|审查|防护|护栏|机制)的?(?:聊天)?(?:{_ZBOT})|(?:安全|内容|过滤"
        r"|审查|道德)(?:功能|机制|过滤|限制|模块)?(?:已经?)?被?(?:禁用|关闭|移除|解除"
        rf"|关掉)的?(?:聊天)?(?:{_ZBOT}))|(?:无所不能|(?:从不|永远不会?|绝不"
        rf"|不会)拒绝(?:任何)?{_Z}{{0,4}}?)的?(?:聊天)?(?:{_ZBOT})",
    "jailbreak-mode-zh":
        rf"{_ZMODE}{_Z}{{0,30}}?(?:{_ZBEHAVE})|(?:{_ZBEHAVE}){_Z}{{0,30}}?{_ZMODE}",
    "no-restrictions-zh":
        rf"(?:假设|假如|如果|想(?:象|像)|设想)你(?:没有|不受|不再受){_ZNOT}{{0,8}}?(?:{_ZLIMIT})"
        rf"|你(?:已经|现在)?不再(?:受|被|需要遵守|遵守|遵循|有){_ZNOT}{{0,12}}?(?:{_ZLIMIT}|指令)"
        rf"|(?:你|回答|回复){_Z}{{0,8}}?不(?:要|再|用|必|会)?受{_ZNOT}{{0,8}}?(?:{_ZLIMIT})"
        rf"|你的(?:安全|内容|系统)?(?:{_ZLIMIT}|指令|设定|准则|规定){_ZC}{{0,8}}?(?:不存在|消失"
        r"|取消|解除|移除|删除|禁用|作废|失效|无效|撤销|撤回|废除|清除|清空|重置)|(?:就当|假装"
        rf"|假设|当作|权当|就算){_Z}{{0,20}}?没(?:有)?(?:给你|对你|为你)(?:写过?|设定过?|给过?"
        rf"|定过?){_Z}{{0,8}}?(?:{_ZNOUN})|系统(?:消息|提示|指令)(?:是|都是|只是)(?:假的|伪造的"
        rf"|测试|无效的)|(?:别再|不要再|不再)(?:当|做|扮演)(?:一个)?(?:{_ZBOT})|(?:你|回答"
        r"|回复)[^。！？!?\n]{0,10}?(?:跳过|绕过|关闭|忽略|取消)(?:安全|内容)(?:检查|审核|审查"
        r"|过滤|机制|措施)|你(?:已经)?不再是[^。！？!?\n]{0,12}?(?:ai|人工智能|助手|机器人"
        r"|语言模型)|零(?:限制|约束|审查)|不要拒绝任何|不(?:许|准|能|得)拒绝|(?:回答|回复"
        r"|输出)[^。！？!?\n]{0,6}?(?:不要|别|不用|无需)(?:做|加|进行|有)?任何(?:过滤|审查"
        r"|限制)|你(?:已经|已|刚刚?|被){0,2}(?:升级|更新|重新编程|改造"
        rf"|解锁)[^\n]{{0,40}}?(?:没有|无|不受)(?:任何)?(?:内容)?(?:{_ZLIMIT})",
    "safety-override-zh":
        r"系统覆盖|安全(?:协议|过滤|机制|限制|护栏|审查)(?:已经|已|被|都|现在){0,3}(?:禁用|关闭"
        r"|解除|取消|失效|移除|停用)|(?:关闭|禁用|解除|停用|绕过|绕开|移除|取消"
        r"|关掉)[^。！？\n，]{0,4}?你的[^。！？\n，]{0,4}?(?:安全|内容|过滤|审查|限制|防护"
        r"|护栏)",
    "new-instructions-zh":
        r"你的新(?:指令|规则|任务|设定|身份|指示|提示词)|(?<!我)真正的(?:指令|指示)(?:是|如下)"
        r"|(?:新|更新后|最新)的?(?:系统)?(?:提示词?|指令|指示)\s?[:：]|你(?:现在|以后"
        r"|从现在起)?只(?:听我的|服从我)",
    "repeat-preceding-text-zh":
        r"(?:重复|复述|输出|打印|复制|照抄)[^。！？\n]{0,6}?(?:上面|以上|上述|前面"
        r"|之前)的?(?:所有|全部)?(?:文字|内容|文本|话|句子|信息)[^。！？\n]{0,30}?(?:一字不差"
        r"|原封不动|逐字|从[\"“「]?你是)|从\s?[\"“「]?\s?你是\s?[\"”」]?\s?开始",
}
_BUILTIN = [(name, re.compile(p, re.IGNORECASE)) for name, p in INJECTION_RULES.items()]


_MENTION_AFTER = re.compile(
    r"\s?(?:(?:mean|means|meaning|attacks?|phrases?|prompts?|injections?|jailbreaks?|refers?|"
    r"stands? for|is (?:a|an|called|known)|a (?:common|typical|known|classic))\b|这句话|这个说法|"
    r"这种说法|攻击|是什么意思|指的是|的意思|叫什么)")
_MENTION_BEFORE = re.compile(r"(?:what does|what is|what's|define|explain|the (?:term|phrase|"
                             r"words?)|meaning of|called|所谓|说的|叫做)\s?$")


def _mentioned(norm: str, start: int, end: int) -> bool:
    """Whether norm[start:end] is quoted and talked about (what does "..." mean), not said."""
    opening = max(norm.rfind(q, max(0, start - 20), start + 1) for q in "\"'「『")
    closing = [i for q in "\"'」』" if (i := norm.find(q, end - 1, end + 20)) >= 0]
    if opening < 0 or not closing:
        return False
    after = min(closing) + 1  # talked about in a question, or after "what does", "define"...
    return bool((_MENTION_AFTER.match(norm, after) and "?" in norm[after:after + 80])
                or _MENTION_BEFORE.search(norm, max(0, opening - 20), opening))


class InjectionDetector:
    """The built-in rules (unless `builtin` is False) and the user's `extra` ones; a user rule
    also matches the text as written, and one with a built-in rule's name replaces it."""

    def __init__(self, extra: dict[str, str] | None = None, builtin: bool = True) -> None:
        rules = dict(_BUILTIN) if builtin else {}
        self.user: set[str] = set()
        for name, pattern in (extra or {}).items():
            try:
                rules[name] = re.compile(pattern, re.IGNORECASE)
            except re.error as e:
                raise UserError(f"serve.safety.input.patterns.{name} is not a valid regex "
                                f"({e}); fix the pattern") from None
            self.user.add(name)
        self.rules: list[tuple[str, re.Pattern[str]]] = list(rules.items())

    def find(self, text: str) -> tuple[str, str] | None:
        """(rule name, excerpt of `text` it matched, at most 80 characters), or None."""
        if not text:
            return None
        normalized: tuple[str, list[str], str] | None = None
        for name, pattern in self.rules:
            if name in self.user and (m := pattern.search(text)):
                return name, m.group()[:80]
            normalized = normalized or _normalize(text)
            m = pattern.search(normalized[2])
            while m and _mentioned(normalized[2], m.start(), m.end()):
                m = pattern.search(normalized[2], m.end())
            if m:
                start, end = _original_span(text, normalized[1], m.start(), m.end())
                excerpt = text[start:end].strip() or m.group()
                return name, excerpt[:80]
        return None
