"""Schema of the `data:` section: sources, the ordered cleaning steps, dedup and split."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lmforge.schema import Section

PER_DOC_STEPS = ("normalize", "length", "noise", "quality", "language", "pii", "blocklist")
GLOBAL_STEPS = ("exact_dedup", "near_dedup", "relevance", "perplexity")
ALL_STEPS = PER_DOC_STEPS + GLOBAL_STEPS


class SourceConfig(Section):
    """One input: files (globs allowed) or `builtin:python-docs`."""

    path: str = Field(description="file, directory, glob, or builtin:python-docs")
    name: str | None = Field(None, description="source name kept in metadata (default: derived)")
    weight: float = Field(1.0, gt=0, description="sampling weight kept in metadata")
    format: Literal["auto", "jsonl", "parquet", "text", "hf"] = "auto"
    text_field: str = Field("text", description="JSONL/Parquet field holding the text")
    id_field: str = Field("id", description="field kept as the document id when present")
    separator: str | None = Field(
        None,
        description="plain text: split each file on this line (e.g. '\\n\\n'); "
        "None = one document per file",
    )


class NormalizeConfig(Section):
    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    fix_mojibake: bool = True
    strip_control: bool = Field(True, description="remove control characters and ANSI escapes")
    normalize_whitespace: bool = Field(
        True, description="trim trailing spaces, collapse runs of blank lines and spaces"
    )


class LengthConfig(Section):
    unit: Literal["chars", "words", "tokens"] = "tokens"
    min: int | None = Field(50, ge=0)
    max: int | None = Field(2048, ge=1)

    @model_validator(mode="after")
    def _min_below_max(self) -> LengthConfig:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


class NoiseConfig(Section):
    max_replacement_ratio: float = Field(0.01, ge=0, le=1, description="U+FFFD / chars")
    max_symbol_ratio: float = Field(0.25, ge=0, le=1, description="symbol chars / chars")
    max_punctuation_run: int = Field(
        40, ge=1, description="drop if a run of punctuation/symbols is longer"
    )
    max_nonprintable_ratio: float = Field(0.01, ge=0, le=1)
    drop_patterns: list[str] = Field(
        default_factory=list, description="user regexes: drop on match"
    )


class GopherQualityConfig(Section):
    """Gopher quality rules (Rae et al. 2021) with the paper's thresholds."""

    enabled: bool = True
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3
    max_mean_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    stop_words: list[str] | None = Field(
        None, description="words for min_stop_words; None = Gopher's English 8 + Chinese/Japanese"
    )


class GopherRepetitionConfig(Section):
    """Gopher repetition rules (Table A1 of Rae et al. 2021)."""

    enabled: bool = True
    max_dup_line_fraction: float = 0.30
    max_dup_para_fraction: float = 0.30
    max_dup_line_char_fraction: float = 0.20
    max_dup_para_char_fraction: float = 0.20
    max_top_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16}
    )
    max_dup_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )


class C4Config(Section):
    """C4 rules (Raffel et al. 2020, TFDS c4_utils): the paper's 3 sentences / 5 words."""

    enabled: bool = True
    min_sentences: int = 3
    min_words_per_line: int = 5
    drop_lines_without_terminal_punct: bool = True
    drop_javascript_lines: bool = True
    drop_policy_lines: bool = True
    drop_lorem_ipsum: bool = True
    drop_curly_brace: bool = True
    max_word_length: int = 1000
    remove_citations: bool = Field(True, description="cut [1], [edit], [citation needed]")
    unit: Literal["line", "paragraph"] = Field(
        "line",
        description="what the line rules judge: each line (web text, as C4) or each "
        "blank-line-separated paragraph (hard-wrapped text: books, docs, mail)",
    )


class QualityConfig(Section):
    gopher_quality: GopherQualityConfig = Field(default_factory=GopherQualityConfig)
    gopher_repetition: GopherRepetitionConfig = Field(default_factory=GopherRepetitionConfig)
    c4: C4Config = Field(default_factory=C4Config)


class LanguageConfig(Section):
    allowed: list[str] | None = Field(
        None, description="ISO 639-1 codes to keep (e.g. [en, zh]); None keeps every language"
    )
    min_confidence: float = Field(0.5, ge=0, le=1)
    candidates: list[str] | None = Field(
        None, description="languages the detector chooses among; None = a built-in common set"
    )
    max_chars: int = Field(1000, ge=1, description="detect on this many leading characters")
    high_accuracy: bool = Field(
        False, description="lingua high-accuracy mode: better under ~120 chars, ~350 MB RSS more"
    )


class PIIConfig(Section):
    kinds: list[Literal["email", "phone", "cn_mobile", "ssn", "cn_id", "card", "ip"]] = Field(
        default_factory=lambda: ["email", "phone", "cn_mobile", "ssn", "cn_id", "card", "ip"]
    )


class BlocklistConfig(Section):
    files: list[Path] = Field(default_factory=list, description="one word or phrase per line")
    action: Literal["drop", "redact"] = "drop"
    max_matches: int = Field(0, ge=0, description="drop when more matches than this")


class DedupConfig(Section):
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity of near duplicates")
    num_perm: int = Field(128, ge=8, le=1024)
    bands: int | None = Field(None, ge=1, description="LSH bands (default: derived from threshold)")
    rows: int | None = Field(None, ge=1, description="rows per band (default: derived)")
    ngram: int = Field(5, ge=1, description="word n-gram size of shingles")
    cjk_ngram: int = Field(5, ge=1, description="character n-gram size for CJK text")
    seed: int = 1
    verify: bool = Field(True, description="confirm LSH candidates by their signature agreement")
    verify_margin: float = Field(
        2.0,
        ge=0,
        description="standard errors of the similarity estimate (sqrt(t(1-t)/num_perm)) that a "
        "candidate may fall below the threshold and still be confirmed",
    )

    @model_validator(mode="after")
    def _bands_rows(self) -> DedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither (then they follow threshold)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm")
        return self


class RelevanceConfig(Section):
    reference: list[Path] = Field(
        default_factory=list, description="in-domain reference texts (txt/jsonl files)"
    )
    keep_top: float | None = Field(0.9, gt=0, le=1, description="keep this fraction, best first")
    min_similarity: float | None = Field(None, ge=0, le=1)


class PerplexityConfig(Section):
    model: str | None = Field(None, description="KenLM .arpa/.bin file or an lmforge checkpoint")
    max_percentile: float = Field(0.95, gt=0, le=1, description="drop above this percentile")


class SplitConfig(Section):
    mode: Literal["hash", "contiguous"] = "hash"
    train: float = Field(0.9, ge=0, le=1)
    val: float = Field(0.05, ge=0, le=1)
    test: float = Field(0.05, ge=0, le=1)
    seed: int = 0
    decontaminate: bool = Field(
        True, description="remove train documents that near-duplicate a val/test document"
    )

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self


class DataConfig(Section):
    sources: list[SourceConfig] = Field(
        default_factory=lambda: [SourceConfig(path="builtin:python-docs")]
    )
    steps: list[str] = Field(default_factory=lambda: list(ALL_STEPS))
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    length: LengthConfig = Field(default_factory=LengthConfig)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    pii: PIIConfig = Field(default_factory=PIIConfig)
    blocklist: BlocklistConfig = Field(default_factory=BlocklistConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    relevance: RelevanceConfig = Field(default_factory=RelevanceConfig)
    perplexity: PerplexityConfig = Field(default_factory=PerplexityConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    shard_mb: float = Field(16.0, gt=0, description="target input megabytes per shard")
    max_line_mb: float = Field(16.0, gt=0, description="longer input lines are quarantined")
    workers: int | None = Field(None, ge=1, description="worker processes (default: all cores)")
    strict: bool = Field(False, description="stop at the first bad input line instead")

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, steps: list[str]) -> list[str]:
        for name in steps:
            if name not in ALL_STEPS:
                raise ValueError(f"unknown step {name!r}; choose from {', '.join(ALL_STEPS)}")
        if len(set(steps)) != len(steps):
            raise ValueError("a step is listed twice")
        seen_global = False
        for name in steps:
            if name in GLOBAL_STEPS:
                seen_global = True
            elif seen_global:
                raise ValueError(
                    f"per-document step {name!r} must come before the global steps "
                    f"({', '.join(GLOBAL_STEPS)})"
                )
        return steps
