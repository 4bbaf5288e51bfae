"""language: identify each document's language with lingua; keep allowed, confident ones.

lingua ships its models inside the pip package. One detector is built per process, lazily, on
the first document, from a candidate set (default: 24 widely written languages) plus the allowed
ones. Measured on 1.5 KB English chunks of pydoc topics (2-core box, one process):

    low-accuracy mode (default): ~25 MB RSS, ~0.7 ms/doc on the first 1000 characters,
        every chunk English with confidence 1.0; ~0.4 ms/doc on 500 characters, 2 of 311 wrong
    high-accuracy mode: ~350 MB RSS per process once the Latin-script models are loaded (540 MB
        preloaded), about the same time per document; better on texts under ~120 characters

so the default detects on the first `max_chars` (1000) characters in low-accuracy mode.
Annotations: doc.annotations["language"] (ISO 639-1, None when undetermined) and
["language_score"] (lingua's confidence of that language among the candidates, 0-1).
"""

from __future__ import annotations

from typing import Any

from lmforge.data.config import LanguageConfig
from lmforge.data.document import Doc
from lmforge.data.steps.base import Filter
from lmforge.errors import UserError

DEFAULT_CANDIDATES = (
    "en", "zh", "ja", "ko", "de", "fr", "es", "it", "pt", "nl", "ru", "pl",
    "uk", "sv", "tr", "ar", "fa", "hi", "id", "vi", "th", "cs", "el", "he",
)  # fmt: skip

_detectors: dict[tuple[tuple[str, ...], bool], Any] = {}


def _lingua_language(code: str, key: str) -> Any:
    from lingua import IsoCode639_1, Language

    try:
        return Language.from_iso_code_639_1(IsoCode639_1.from_str(code.lower()))
    except ValueError:
        known = ", ".join(sorted(lang.iso_code_639_1.name.lower() for lang in Language.all()))
        raise UserError(
            f"{key}: {code!r} is not an ISO 639-1 code lingua knows; use one of: {known}"
        ) from None


def detector_for(codes: tuple[str, ...], high_accuracy: bool) -> Any:
    """The lingua detector for these languages, built once per process."""
    key = (codes, high_accuracy)
    if key not in _detectors:
        from lingua import LanguageDetectorBuilder

        builder = LanguageDetectorBuilder.from_languages(
            *(_lingua_language(code, "data.language.candidates") for code in codes)
        )
        if not high_accuracy:
            builder = builder.with_low_accuracy_mode()
        _detectors[key] = builder.build()
    return _detectors[key]


class LanguageDetector:
    """Reusable outside the data stage: `LanguageDetector(["en", "zh"]).detect(text)`."""

    def __init__(
        self, candidates: list[str] | tuple[str, ...] = DEFAULT_CANDIDATES,
        high_accuracy: bool = False, max_chars: int = 1000,
    ) -> None:  # fmt: skip
        for code in candidates:
            _lingua_language(code, "data.language.candidates")
        self.codes = tuple(sorted({code.lower() for code in candidates}))
        self.high_accuracy = high_accuracy
        self.max_chars = max_chars

    def detect(self, text: str) -> tuple[str | None, float]:
        """(ISO 639-1 code, confidence); (None, 0.0) when nothing in the text is a language."""
        detector = detector_for(self.codes, self.high_accuracy)
        values = detector.compute_language_confidence_values(text[: self.max_chars])
        if not values or values[0].value <= 0:
            return None, 0.0
        best = values[0]
        return best.language.iso_code_639_1.name.lower(), float(best.value)


class LanguageId(Filter):
    name = "language"

    def __init__(self, cfg: LanguageConfig) -> None:
        self.cfg = cfg
        self.allowed = None
        if cfg.allowed is not None:
            for code in cfg.allowed:
                _lingua_language(code, "data.language.allowed")
            self.allowed = frozenset(code.lower() for code in cfg.allowed)
        candidates = set(cfg.candidates or DEFAULT_CANDIDATES) | (self.allowed or set())
        self.detector = LanguageDetector(sorted(candidates), cfg.high_accuracy, cfg.max_chars)

    def check(self, doc: Doc) -> tuple[str, str] | None:
        code, score = self.detector.detect(doc.text)
        doc.annotations["language"] = code
        doc.annotations["language_score"] = score
        min_confidence = self.cfg.min_confidence
        if code is None:
            if self.allowed is not None or min_confidence > 0:
                return "undetermined", "no text in any candidate language"
            return None
        if score < min_confidence:
            return "low_confidence", f"{code} {score:.2f} < {min_confidence:.2f}"
        if self.allowed is not None and code not in self.allowed:
            allowed = ", ".join(sorted(self.allowed))
            return "not_allowed", f"{code} ({score:.2f}) not in [{allowed}]"
        return None
