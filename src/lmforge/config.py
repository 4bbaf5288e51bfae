"""The whole run's config: one YAML file, a section per stage, dotted CLI overrides.

    cfg = load_config("configs/demo.yaml", ["--data.dedup.threshold=0.85"])

Unknown keys and bad values raise `UserError` naming the key path and what is allowed.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from lmforge.compress.config import CompressConfig
from lmforge.data.config import DataConfig
from lmforge.errors import UserError
from lmforge.eval.config import EvalConfig
from lmforge.export.config import ExportConfig
from lmforge.finetune.config import FinetuneConfig
from lmforge.model.config import ModelConfig
from lmforge.schema import Section
from lmforge.serve.config import ServeConfig
from lmforge.tokenizer.config import TokenizeConfig, TokenizerConfig
from lmforge.train.config import TrainConfig


class RunSection(Section):
    name: str = Field("demo", description="run name; the run directory defaults to runs/<name>")
    dir: Path | None = Field(None, description="run directory (default: runs/<name>)")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        """A name is one folder under runs/: it cannot climb out of it or point elsewhere."""
        problem = run_name_problem(name)
        if problem:
            raise ValueError(f"{problem}; use a plain name like 'demo-2', or set run.dir to "
                             "an explicit directory")
        return name

    @field_validator("dir", mode="before")
    @classmethod
    def _explicit_dir(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty; give a directory, or leave run.dir out for runs/<name>")
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("contains a NUL character")
        return value

    @property
    def path(self) -> Path:
        return self.dir if self.dir is not None else Path("runs") / self.name


def run_name_problem(name: str) -> str | None:
    """Why `name` is not a plain run name, or None when it is."""
    if not name.strip():
        return "is empty"
    if name in (".", ".."):
        return f"{name!r} names a directory, not a run"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains a control character"
    return None


class Config(Section):
    run: RunSection = Field(default_factory=RunSection)
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn ['--a.b=1', '--c', 'x'] into {'a.b': 1, 'c': 'x'}; values are read as YAML scalars."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise UserError(f"unexpected argument {arg!r}; overrides look like --section.key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise UserError(f"override --{key} has no value; write --{key}=VALUE")
            i += 1
            value = args[i]
        try:
            overrides[key] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            overrides[key] = value
        i += 1
    return overrides


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set each dotted key in the raw config; a numeric part indexes into a list."""
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node: Any = raw
        for depth, part in enumerate(parts):
            where = ".".join(parts[: depth + 1])
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise UserError(f"cannot override {dotted}: {where} is not an item of the list")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise UserError(f"cannot override {dotted}: {'.'.join(parts[:depth])} is a value")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when path is None) and apply dotted overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} not found; pass an existing YAML file with -c")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise UserError(f"config file {path}{where} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise UserError(f"config file {path} must hold a mapping of sections, e.g. 'data:'")
    apply_overrides(raw, parse_overrides(overrides or []))
    return validate_config(raw)


def validate_config(raw: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise UserError(describe_validation_error(e, Config)) from None


def describe_validation_error(error: ValidationError, model: type[BaseModel],
                              section: str = "") -> str:
    """One line naming the first bad key path and what is allowed there (`section`: where
    `model` sits in the whole config, e.g. "serve")."""
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    outer = [section] if section else []
    key = ".".join([*outer, *loc]) or "(top level)"
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        suggestion = (f"; did you mean {'.'.join([*outer, *loc[:-1], hint[0]])!r}?"
                      if hint else "")
        return f"config: unknown key {key!r}{suggestion} (allowed: {', '.join(allowed)})"
    value = first.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict | list) else ""
    message = first["msg"].removeprefix("Value error, ")
    return f"config: bad value for {key}: {message}{shown}"


def _allowed_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    current: Any = model
    for part in loc:
        if part.isdigit():
            continue
        field = current.model_fields.get(part) if hasattr(current, "model_fields") else None
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    return sorted(current.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
