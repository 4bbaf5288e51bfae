"""blocklist: drop or redact documents that use words from the user's lists.

The matcher (list files, word boundaries, CJK substrings) lives in lmforge.text.blocklist,
shared with the server's input and output filters.
"""

from __future__ import annotations

from lmforge.data.config import BlocklistConfig
from lmforge.data.document import Doc
from lmforge.data.steps.base import Step, StepResult
from lmforge.text.blocklist import Blocklist, replace_matches


class BlocklistStep(Step):
    """action "drop": drop a document with more than `max_matches` matches (reason "blocklist");
    action "redact": replace every match with [BLOCKED] and keep the document."""

    name = "blocklist"

    def __init__(self, cfg: BlocklistConfig) -> None:
        self.cfg = cfg
        self.blocklist = Blocklist.from_files(cfg.files)

    def process(self, docs: list[Doc]) -> StepResult:
        if not self.blocklist:
            return StepResult(kept=docs)
        result = StepResult(kept=[])
        for doc in docs:
            matches = self.blocklist.find(doc.text)
            if matches:
                result.counters["matches"] += len(matches)
            if self.cfg.action == "redact":
                if matches:
                    doc.text = replace_matches(doc.text, matches)
                    result.modified += 1
                result.kept.append(doc)
            elif len(matches) > self.cfg.max_matches:
                detail = f"{len(matches)} matches, first {matches[0].term!r}"
                result.dropped.append((doc, "blocklist", detail))
            else:
                result.kept.append(doc)
        return result
