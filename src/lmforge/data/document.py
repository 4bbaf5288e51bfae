"""The record that flows through the data stage, and the record of a dropped one.

Every string of either ends up in a Parquet column, and Parquet holds valid UTF-8 only: a
lone surrogate (from a JSON `\\ud800` escape, or a file name's undecodable bytes) makes
pyarrow refuse the whole batch. Readers quarantine a document that carries one; a `Drop`
makes its own strings storable, so writing the quarantine never fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Doc:
    """A document between reader and writer.

    `meta` holds the input's own extra fields (kept as JSON in the output); `annotations`
    holds what steps measured (language, language_score, relevance, perplexity).
    """

    id: str
    text: str
    source: str
    location: str
    weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)


def is_valid_unicode(text: str) -> bool:
    """Whether `text` can be stored as UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_str(text: str) -> str:
    """`text` with each lone surrogate written as its backslash escape (`\\ud800`), so
    Parquet can store it and a reader can still see what was there."""
    if is_valid_unicode(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(slots=True)
class Drop:
    """A document or input line that did not make it into a split, and why.

    `id` is None when the input line had none (malformed JSON, say); `text` is then the raw
    line, cut to a readable size for very long lines.
    """

    id: str | None
    text: str
    source: str
    location: str
    step: str
    reason: str
    detail: str = ""
    duplicate_of: str | None = None

    def __post_init__(self) -> None:
        self.id = None if self.id is None else safe_str(self.id)
        self.text = safe_str(self.text)
        self.source = safe_str(self.source)
        self.location = safe_str(self.location)
        self.detail = safe_str(self.detail)
        if self.duplicate_of is not None:
            self.duplicate_of = safe_str(self.duplicate_of)

    @classmethod
    def of(
        cls, doc: Doc, step: str, reason: str, detail: str = "", duplicate_of: str | None = None
    ) -> Drop:
        return cls(doc.id, doc.text, doc.source, doc.location, step, reason, detail, duplicate_of)
