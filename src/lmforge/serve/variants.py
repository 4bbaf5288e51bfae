"""Models and their variants: weighted A/B routing sticky per user, shadows, fallback.

A served model name maps to a `ModelGroup`: one or more arms, each a `Variant` with its
own engine and tokenizer, and maybe a shadow. The arm for a request comes from a hash of
(model, user) against the arms' cumulative weights, so a user stays on one arm across
requests and restarts; the first arm is the primary. An arm whose requests fail
`failures` times in a row is taken out for `cooldown_s` (its users go to the primary
meanwhile), and a request that fails on a non-primary arm is retried on the primary. A
shadow gets a copy of each request after it was answered; its output is only logged.

A model's LoRA adapters (`adapters:`, `--adapter NAME=DIR`) are models of their own, each a
group with one arm that submits to the primary's engine under its adapter's name: one copy
of the base weights serves them all, in shared batches (see `adapters`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

from lmforge.errors import UserError
from lmforge.serve.adapters import read_served_adapter
from lmforge.serve.artifacts import load_served_model
from lmforge.serve.config import (
    AdapterSpec,
    EngineConfig,
    FallbackConfig,
    ModelSpec,
    VariantSpec,
)
from lmforge.serve.engine import Engine
from lmforge.serve.metrics import Metrics
from lmforge.tokenizer.chat_tokenizer import ChatTokenizer

log = logging.getLogger("lmforge.serve")


class Variant:
    def __init__(self, model: str, spec: VariantSpec, engine_cfg: EngineConfig,
                 metrics: Metrics, adapters: list[AdapterSpec] | None = None) -> None:
        self.model, self.spec, self.name = model, spec, spec.name
        self.adapter_specs = adapters or []  # served on this variant's engine
        self.adapter: str | None = None  # the adapter requests on this arm run with
        self.engine_cfg, self.metrics = engine_cfg, metrics
        self.engine: Engine | None = None
        self.tokenizer: ChatTokenizer | None = None
        self.load_error: str | None = None
        self.failures = 0
        self.out_until = 0.0
        self.loaded_at = 0

    def load(self) -> None:
        """Build the engine (raises UserError when the model cannot be loaded)."""
        loaded = load_served_model(Path(self.spec.path), self.spec.tokenizer)
        tok = loaded.tokenizer
        adapters = [read_served_adapter(a.name, a.path, loaded.model) for a in self.adapter_specs]
        engine = Engine(loaded.model, tok.decode, self.engine_cfg,
                        stop_token_ids=tok.stop_ids(self.engine_cfg.stop_tokens),
                        metrics=self.metrics.engine(self.model, self.name),
                        name=f"{self.model}/{self.name}", adapters=adapters)
        old = self.engine
        self.engine, self.tokenizer = engine.start(), tok
        self.load_error, self.failures, self.out_until = None, 0, 0.0
        self.loaded_at = int(time.time())
        if old is not None:  # a reload: let the old engine finish its requests in peace
            threading.Thread(target=old.stop, daemon=True).start()

    def available(self, now: float) -> bool:
        return self.engine is not None and now >= self.out_until

    def report(self, ok: bool, fallback: FallbackConfig) -> None:
        if ok:
            self.failures = 0
            return
        self.failures += 1
        if self.failures >= fallback.failures:
            self.out_until = time.monotonic() + fallback.cooldown_s
            self.failures = 0
            log.warning("variant %s/%s failed %d times in a row; its traffic goes to the "
                        "primary for %.0f s", self.model, self.name, fallback.failures,
                        fallback.cooldown_s)

    def state(self) -> dict:
        now = time.monotonic()
        return {"variant": self.name, "path": str(self.spec.path), "weight": self.spec.weight,
                "adapter": self.adapter,
                "loaded": self.engine is not None, "load_error": self.load_error,
                "out_for_s": round(max(0.0, self.out_until - now), 1),
                "running": self.engine.running if self.engine else 0,
                "waiting": self.engine.waiting if self.engine else 0}


class AdapterVariant(Variant):
    """An adapter's only arm: its requests go to the base's primary engine (which the base
    loads, adapter included) under the adapter's name."""

    def __init__(self, spec: AdapterSpec, base: Variant, metrics: Metrics) -> None:
        super().__init__(spec.name, VariantSpec(name="primary", path=spec.path),
                         base.engine_cfg, metrics)
        self.base, self.adapter = base, spec.name

    def load(self) -> None:
        """Take the base's engine (load the base first)."""
        self.engine, self.tokenizer = self.base.engine, self.base.tokenizer
        self.load_error, self.failures, self.out_until = None, 0, 0.0
        self.loaded_at = self.base.loaded_at


class ModelGroup:
    def __init__(self, spec: ModelSpec, engine_cfg: EngineConfig, fallback: FallbackConfig,
                 metrics: Metrics) -> None:
        self.name, self.fallback = spec.name, fallback
        self.parent: str | None = None  # an adapter's base model
        self.arms = [Variant(spec.name, v, engine_cfg, metrics,
                             spec.adapters if i == 0 else None)
                     for i, v in enumerate(spec.variants)]
        self.shadow = (Variant(spec.name, spec.shadow, engine_cfg, metrics)
                       if spec.shadow is not None else None)

    @classmethod
    def for_adapter(cls, spec: AdapterSpec, base: ModelGroup, metrics: Metrics) -> ModelGroup:
        """An adapter of `base` as a model of its own: one arm, no shadow."""
        group = cls(ModelSpec(name=spec.name, path=spec.path), base.primary.engine_cfg,
                    base.fallback, metrics)
        group.parent, group.arms = base.name, [AdapterVariant(spec, base.primary, metrics)]
        return group

    @property
    def primary(self) -> Variant:
        return self.arms[0]

    def load(self) -> None:
        """Load every variant; only a primary that cannot load is fatal."""
        for variant in [*self.arms, *([self.shadow] if self.shadow else [])]:
            try:
                variant.load()
            except UserError as e:
                if variant is self.primary:
                    raise UserError(f"model {self.name}: {e}") from None
                variant.load_error = str(e)
                log.warning("model %s: variant %s is not served: %s", self.name, variant.name,
                            e)

    def pick(self, user: str) -> Variant:
        """The arm for this user: fixed by a hash, the primary when that arm is out."""
        total = sum(v.spec.weight for v in self.arms)
        digest = hashlib.sha256(f"{self.name}\x00{user}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64 * total
        chosen = self.arms[-1]
        for arm in self.arms:
            if point < arm.spec.weight:
                chosen = arm
                break
            point -= arm.spec.weight
        return chosen if chosen.available(time.monotonic()) else self.primary

    def stop(self, timeout: float) -> None:
        if self.parent is not None:
            return  # the base's engine: the base stops it
        for variant in [*self.arms, *([self.shadow] if self.shadow else [])]:
            if variant.engine is not None:
                variant.engine.stop(timeout)

    def state(self) -> dict:
        return {"model": self.name, "parent": self.parent,
                "variants": [v.state() for v in self.arms],
                "shadow": self.shadow.state() if self.shadow else None}


class Registry:
    """Every served model by name."""

    def __init__(self, specs: list[ModelSpec], engine_cfg: EngineConfig,
                 fallback: FallbackConfig, metrics: Metrics) -> None:
        self.groups: dict[str, ModelGroup] = {}
        for spec in specs:  # a base before its adapters, which take its engine
            base = self.groups[spec.name] = ModelGroup(spec, engine_cfg, fallback, metrics)
            for adapter in spec.adapters:
                self.groups[adapter.name] = ModelGroup.for_adapter(adapter, base, metrics)

    def load(self) -> None:
        for group in self.groups.values():
            group.load()

    def get(self, name: str) -> ModelGroup | None:
        return self.groups.get(name)

    def reload(self, name: str) -> None:
        """Reload a model's variants from disk (a blocking call: run it off the event loop);
        an adapter or its base reloads both, and the base's other adapters."""
        base = self.groups[name].parent or name
        for group in self.groups.values():
            if group.name == base or group.parent == base:
                group.load()

    def ready(self) -> bool:
        return bool(self.groups) and all(g.primary.engine is not None
                                         and g.primary.engine.dead is None
                                         for g in self.groups.values())

    def stop(self, timeout: float) -> None:
        for group in self.groups.values():
            group.stop(timeout)
