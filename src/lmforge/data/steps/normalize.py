"""normalize: Unicode form, mojibake repair, control characters and ANSI escapes, whitespace.

Conservative by design: ftfy runs with `fix_character_width=False` (it would turn CJK
full-width punctuation into ASCII), keeps curly quotes, ligatures and HTML entities, and only
runs on text that shows a mojibake hint (ftfy costs ~400 us per 1.5 KB, its own badness check
~300 us; the hint regex ~8 us). Leading indentation is kept (code, poetry); paragraph breaks
(one blank line) are kept; runs of blank lines and of inner spaces are collapsed.
"""

from __future__ import annotations

import re
import unicodedata

import ftfy

from lmforge.data.config import NormalizeConfig
from lmforge.data.document import Doc
from lmforge.data.steps.base import Step, StepResult

_FTFY_CONFIG = ftfy.TextFixerConfig(
    unescape_html=False,
    remove_terminal_escapes=True,
    fix_encoding=True,
    restore_byte_a0=True,
    replace_lossy_sequences=True,
    decode_inconsistent_utf8=True,
    fix_c1_controls=True,
    fix_latin_ligatures=False,
    fix_character_width=False,
    uncurl_quotes=False,
    fix_line_breaks=False,
    fix_surrogates=True,
    remove_control_chars=False,
    normalization=None,
    explain=False,
)

# UTF-8 read as Latin-1/Windows-1252 leaves a lead-byte letter (Â-ô) followed by a character
# that was a continuation byte (U+0080-U+00BF or its cp1252 twin: € ‚ ƒ „ … † ‡ ˆ ‰ Š ‹ Œ Ž ‘ ’
# “ ” • – — ˜ ™ š › œ ž Ÿ); C1 controls and the replacement of lost bytes show it too.
_MOJIBAKE_HINT_RE = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
    "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]"
)

_ANSI_RE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: titles, hyperlinks
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
)
# C0/C1 controls except \t and \n, DEL, BOM/zero-width no-break space, zero-width space.
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff\u200b]")
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# Horizontal whitespace other than space and tab (NBSP, en/em spaces, ...); U+3000 is kept:
# it is the ideographic space Chinese uses to indent paragraphs.
_ODD_SPACE_RE = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f]")
_SPACE_RUN_RE = re.compile(" {2,}")


def tidy_whitespace(text: str) -> str:
    """Trailing whitespace off every line, runs of spaces inside a line to one space (the
    indentation stays), runs of blank lines to one, no blank lines at either end."""
    lines: list[str] = []
    for line in text.split("\n"):
        line = line.rstrip()
        if not line:
            if lines and lines[-1]:
                lines.append("")
            continue
        if "  " in line:
            body = line.lstrip()
            line = line[: len(line) - len(body)] + _SPACE_RUN_RE.sub(" ", body)
        lines.append(line)
    if lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    """Return `text` normalized as `cfg` says (pure function, reusable outside the step)."""
    ascii_only = text.isascii()  # no mojibake, no odd spaces, already NFC/NFKC
    if cfg.strip_control:
        # splitlines knows every line break: \r\n, \r, \v, \f, \x1c-\x1e, \x85, U+2028/2029
        text = "\n".join(text.splitlines())
        if "\x1b" in text:
            text = _ANSI_RE.sub("", text)
        if not ascii_only:
            text = _LONE_SURROGATE_RE.sub("\ufffd", text)
    if cfg.fix_mojibake and not ascii_only and _MOJIBAKE_HINT_RE.search(text):
        text = ftfy.fix_text(text, _FTFY_CONFIG)
    if cfg.strip_control:
        text = _CONTROL_RE.sub("", text)
    if cfg.unicode_form != "none" and not ascii_only:
        text = unicodedata.normalize(cfg.unicode_form, text)
    if cfg.normalize_whitespace:
        if not ascii_only:
            text = _ODD_SPACE_RE.sub(" ", text)
        text = tidy_whitespace(text)
    return text


class Normalize(Step):
    """Rewrite each document's text; drop one that becomes empty (reason "empty")."""

    name = "normalize"

    def __init__(self, cfg: NormalizeConfig) -> None:
        self.cfg = cfg

    def process(self, docs: list[Doc]) -> StepResult:
        result = StepResult(kept=[])
        for doc in docs:
            text = normalize_text(doc.text, self.cfg)
            if text != doc.text:
                doc.text = text
                result.modified += 1
            if text.strip():
                result.kept.append(doc)
            else:
                result.dropped.append((doc, "empty", "no text left after normalization"))
        return result
