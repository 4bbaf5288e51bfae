"""The record that flows through the data stage, and the record of a dropped one."""

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

    @classmethod
    def of(
        cls, doc: Doc, step: str, reason: str, detail: str = "", duplicate_of: str | None = None
    ) -> Drop:
        return cls(doc.id, doc.text, doc.source, doc.location, step, reason, detail, duplicate_of)
