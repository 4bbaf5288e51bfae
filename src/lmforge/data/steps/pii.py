"""pii: replace personal data in documents with typed placeholders ([EMAIL], [PHONE], ...).

The detectors live in lmforge.text.pii, shared with the server's output filter, so training
data and served replies agree on what counts as personal data.
"""

from __future__ import annotations

from lmforge.data.config import PIIConfig
from lmforge.data.document import Doc
from lmforge.data.steps.base import Step, StepResult
from lmforge.text.pii import PIIRedactor


class PII(Step):
    name = "pii"

    def __init__(self, cfg: PIIConfig) -> None:
        self.redactor = PIIRedactor(cfg.kinds)

    def process(self, docs: list[Doc]) -> StepResult:
        result = StepResult(kept=docs)
        for doc in docs:
            text, counts = self.redactor.redact(doc.text)
            if counts:
                doc.text = text
                result.modified += 1
                result.counters.update(counts)
        return result
