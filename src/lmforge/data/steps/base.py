"""What a data step is: a name, its parameters, and `process(batch) -> StepResult`.

A filter only answers `check(doc)`: None to keep, or (reason, detail) to drop. A modifier
changes `doc.text` in place and counts what it did in `counters` (e.g. {"email": 3}).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from lmforge.data.document import Doc


@dataclass
class StepResult:
    kept: list[Doc]
    dropped: list[tuple[Doc, str, str]] = field(default_factory=list)  # (doc, reason, detail)
    counters: Counter[str] = field(default_factory=Counter)
    modified: int = 0


class Step(ABC):
    """Base of every per-document step. Subclasses set `name` and implement `process`."""

    name: ClassVar[str]

    @abstractmethod
    def process(self, docs: list[Doc]) -> StepResult:
        """Return the documents kept (possibly modified) and those dropped with a reason."""


class Filter(Step):
    """A step that keeps or drops each document on its own."""

    @abstractmethod
    def check(self, doc: Doc) -> tuple[str, str] | None:
        """None to keep the document, or (reason, detail) to drop it."""

    def process(self, docs: list[Doc]) -> StepResult:
        result = StepResult(kept=[])
        for doc in docs:
            verdict = self.check(doc)
            if verdict is None:
                result.kept.append(doc)
            else:
                result.dropped.append((doc, *verdict))
        return result
