"""The `serve:` section: what `lmforge serve` runs and how it protects itself.

    serve:
      port: 8000
      auth_db: keys.sqlite                 # access control on (keys made with `lmforge keys`)
      models:
        - name: demo                       # the id clients send as "model"
          variants:                        # weighted A/B arms, sticky per user
            - {name: primary, path: runs/demo, weight: 95}
            - {name: candidate, path: runs/demo-v2, weight: 5}
          shadow: {name: next, path: runs/demo-v3}   # mirrored and logged, never returned
          adapters:                        # LoRA adapters of the primary, each its own model id
            - {name: demo-sql, path: runs/sql/finetune/adapter}
      limits: {requests_per_minute: 60, tokens_per_minute: 20000}

`lmforge serve PATH` needs none of this: flags such as --port and --auth override it, and
PATH becomes a model with a single variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lmforge.schema import Section

PII_KINDS = ["email", "ip", "cn_id", "card", "ssn", "cn_mobile", "phone"]


class EngineConfig(Section):
    """Continuous batching: how many sequences decode together and how long the queue gets."""

    max_batch: int = Field(32, ge=1, description="sequences decoded together in one step")
    max_queue: int = Field(256, ge=0, description="requests waiting for a slot; more get 503")
    max_prefill_tokens: int = Field(
        4096, ge=1, description="prompt tokens admitted per step (a longer prompt runs alone)"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU, bfloat16 on a GPU that supports it"
    )
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    threads: int | None = Field(
        None, ge=1, description="torch threads of the engine process on CPU (default: the physical "
        "cores but one, which is left to the HTTP side)"
    )
    prefix_cache: bool = Field(
        True, description="a prompt that starts like a sequence in another cache slot reuses "
        "that slot's keys for the shared part and is prefilled for the rest only"
    )
    kv_cache_dtype: Literal["auto", "int8"] = Field(
        "auto", description="auto: the engine's dtype; int8: keys and values rounded per vector "
        "(a quarter of fp32's cache memory, dequantized as attention reads them)")
    stop_tokens: list[str] = Field(
        default_factory=lambda: ["<|end|>"],
        description="special tokens that end a reply besides eos (skipped when not in the vocab)",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        kind, _, index = value.partition(":")
        if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (
                kind == "cpu" and index):
            raise ValueError("the device must be cpu, cuda or cuda:N")
        return value


class LimitsConfig(Section):
    """Per-request caps and the default per-key rate limits (a key may carry its own)."""

    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    max_tokens: int = Field(4096, ge=1, description="largest max_tokens a request may ask for")
    max_n: int = Field(8, ge=1, description="largest n (choices per prompt)")
    max_prompts: int = Field(16, ge=1, description="most prompts in one completions request")
    requests_per_minute: int | None = Field(None, ge=1, description="per key; None: unlimited")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="prompt + completion tokens per key; None: unlimited"
    )
    max_concurrency: int = Field(
        1024, ge=1, description="open connections before the server answers 503"
    )
    max_connections_per_client: int | None = Field(
        128, ge=1, description="open connections one client address may hold; more get 503 "
        "(None: no cap, e.g. behind a proxy that is the only client)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's headers must arrive within this time, else 408"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="longest pause between two reads of a request body before "
        "the connection is closed"
    )


class InputFilterConfig(Section):
    blocklist: list[Path] = Field(
        default_factory=list, description="word lists (one term a line) that reject a prompt"
    )
    injection: bool = Field(True, description="reject the built-in prompt-injection patterns")
    patterns: dict[str, str] = Field(
        default_factory=dict, description="more rules: name -> regex (case-insensitive)"
    )


class OutputFilterConfig(Section):
    pii: list[str] = Field(
        default_factory=lambda: list(PII_KINDS),
        description=f"PII kinds redacted from replies: {', '.join(PII_KINDS)}",
    )
    blocklist: list[Path] = Field(
        default_factory=list, description="word lists whose terms are redacted from replies"
    )
    holdback_chars: int = Field(
        64, ge=0, description="most streamed text held back so a match over chunks is caught"
    )

    @model_validator(mode="after")
    def _known_kinds(self) -> OutputFilterConfig:
        unknown = sorted(set(self.pii) - set(PII_KINDS))
        if unknown:
            raise ValueError(f"unknown PII kinds {unknown}; choose from {PII_KINDS}")
        return self


class SafetyConfig(Section):
    input: InputFilterConfig = Field(default_factory=InputFilterConfig)
    output: OutputFilterConfig = Field(default_factory=OutputFilterConfig)


class AuditConfig(Section):
    enabled: bool = True
    path: Path | None = Field(
        None, description="SQLite file (default: audit.sqlite next to auth_db, else ./)"
    )
    retention_days: int = Field(180, ge=1, description="rows older than this are deleted")
    redact_prompts: bool = Field(
        False, description="store prompts and outputs with personal data (every PII kind) "
        "replaced by placeholders such as [EMAIL]"
    )


class VariantSpec(Section):
    name: str = Field(..., min_length=1, pattern=r"^[\w.-]+$")
    path: Path = Field(..., description="run dir, checkpoint (.pt), model dir or HF export dir")
    weight: float = Field(100.0, ge=0, description="share of traffic (relative to the others)")
    tokenizer: Path | None = Field(None, description="default: found next to the model")


class AdapterSpec(Section):
    name: str = Field(..., min_length=1, pattern=r"^[\w.:/-]+$",
                      description="the model id clients send for it")
    path: Path = Field(..., description="a PEFT LoRA adapter dir of the model's primary")


class ModelSpec(Section):
    name: str = Field(..., min_length=1, pattern=r"^[\w.:/-]+$")
    path: Path | None = Field(None, description="shorthand for a single variant named primary")
    variants: list[VariantSpec] = Field(default_factory=list, description="the first is primary")
    shadow: VariantSpec | None = Field(None, description="gets a copy of every request")
    adapters: list[AdapterSpec] = Field(
        default_factory=list, description="served over the primary's weights, batched with it")

    @model_validator(mode="before")
    @classmethod
    def _path_shorthand(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("path") is None:
            return data
        if data.get("variants"):
            raise ValueError(f"model {data.get('name')}: give either path or variants, not both")
        rest = {k: v for k, v in data.items() if k != "path"}
        return {**rest, "variants": [{"name": "primary", "path": data["path"]}]}

    @model_validator(mode="after")
    def _variants(self) -> ModelSpec:
        if not self.variants:
            raise ValueError(f"model {self.name}: give a path or at least one variant")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"model {self.name}: variant names must differ, got {names}")
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError(f"model {self.name}: variant weights must not all be 0")
        return self


class FallbackConfig(Section):
    failures: int = Field(3, ge=1, description="consecutive failures that take a variant out")
    cooldown_s: float = Field(60.0, gt=0, description="how long it stays out before a retry")


class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    auth_db: Path | None = Field(None, description="SQLite key store; None: no keys (local use)")
    models: list[ModelSpec] = Field(default_factory=list)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    shutdown_timeout_s: float = Field(
        30.0, gt=0, description="graceful shutdown waits this long for in-flight requests"
    )
    metrics_public: bool = Field(True, description="false: /metrics needs an admin key")

    @model_validator(mode="after")
    def _unique_models(self) -> ServeConfig:
        names = [m.name for m in self.models] + [a.name for m in self.models for a in m.adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"model and adapter names must differ, got {names}")
        return self

    def audit_path(self) -> Path:
        if self.audit.path is not None:
            return self.audit.path
        if self.auth_db is not None:
            return self.auth_db.parent / "audit.sqlite"
        return Path("audit.sqlite")
