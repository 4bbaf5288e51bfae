"""quality: the Gopher quality rules, the Gopher repetition rules, then the C4 rules.

The two Gopher rule sets share one word list per document and run cheapest first (quality,
then repetition); C4 runs last because it edits the text (it removes lines). A document is
dropped by the first rule that fires, with a namespaced reason ("gopher_repetition.
dup_line_fraction") and a detail that shows the measured value against its threshold
("0.42 > 0.30"). Lines C4 removes from kept documents are counted in `counters` as
"c4.lines_removed.<why>" ("c4.paragraphs_removed.<why>" with c4.unit: paragraph).
"""

from __future__ import annotations

from lmforge.data.config import QualityConfig
from lmforge.data.document import Doc
from lmforge.data.steps.base import Step, StepResult
from lmforge.data.steps.c4 import C4Rules
from lmforge.data.steps.gopher import GopherQuality, GopherRepetition
from lmforge.data.text import split_words


class Quality(Step):
    name = "quality"

    def __init__(self, cfg: QualityConfig) -> None:
        gq, gr, c4 = cfg.gopher_quality, cfg.gopher_repetition, cfg.c4
        self.gopher_quality = GopherQuality(gq) if gq.enabled else None
        self.gopher_repetition = GopherRepetition(gr) if gr.enabled else None
        self.c4 = C4Rules(c4) if c4.enabled else None

    def process(self, docs: list[Doc]) -> StepResult:
        result = StepResult(kept=[])
        for doc in docs:
            verdict = self._gopher(doc.text)
            if verdict is None and self.c4 is not None:
                outcome = self.c4.apply(doc.text)
                verdict = outcome.drop
                if verdict is None:
                    for why, count in outcome.removed_lines.items():
                        result.counters[f"c4.{self.c4.cfg.unit}s_removed.{why}"] += count
                    if outcome.text != doc.text:
                        doc.text = outcome.text
                        result.modified += 1
            if verdict is None:
                result.kept.append(doc)
            else:
                result.dropped.append((doc, *verdict))
        return result

    def _gopher(self, text: str) -> tuple[str, str] | None:
        if self.gopher_quality is None and self.gopher_repetition is None:
            return None
        words = split_words(text)
        verdict = None
        if self.gopher_quality is not None:
            verdict = self.gopher_quality.check(text, words)
        if verdict is None and self.gopher_repetition is not None:
            verdict = self.gopher_repetition.check(text, words)
        return verdict
