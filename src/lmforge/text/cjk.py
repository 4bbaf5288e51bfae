"""CJK script ranges: what counts as a Chinese or Japanese character (written without spaces)."""

from __future__ import annotations

import re

# Scripts written without spaces: Han (CJK Unified Ideographs, Ext A, compatibility, Ext B-G),
# Hiragana, Katakana (+ phonetic extensions, half-width), and the marks 々 and 〇.
CJK_RANGES = (
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff"
    "\uff66-\uff9f\u3005\u3007\U00020000-\U0003134f"
)
CJK_CHAR_RE = re.compile(f"[{CJK_RANGES}]")


def has_cjk(text: str) -> bool:
    return not text.isascii() and CJK_CHAR_RE.search(text) is not None
