"""Stage order, manifests, and skip-if-unchanged (make/DVC style).

Each stage reads the artifact directories of the stages it names in `inputs` and writes
one directory, `RUN_DIR/<stage>/`, ending with a `manifest.json`. A stage is skipped when
its manifest records the same config hash and the same input fingerprints and its files
are still there. A stage's fingerprint hashes its config and its output files, so any
change upstream reaches every stage after it. A stage only deletes or overwrites what
lmforge wrote in its directory (`lmforge.outputs`): a user's files there are kept.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from lmforge import __version__
from lmforge.config import Config
from lmforge.errors import UserError
from lmforge.io import atomic_write_json, read_json, sha256_file, sha256_json
from lmforge.outputs import MANIFEST, claim, seal

LIBRARIES = ("numpy", "pyarrow", "torch", "tokenizers", "tiktoken", "scikit-learn", "pydantic")

console = Console(stderr=True, highlight=False)


@dataclass
class StageContext:
    """What a stage's run function gets: the config, where to write, where its inputs are."""

    cfg: Config
    out_dir: Path
    inputs: dict[str, Path]
    resume: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """A pipeline stage. `run` writes into ctx.out_dir and returns the metrics to record."""

    name: str
    inputs: tuple[str, ...]
    sections: tuple[str, ...]
    run: Callable[[StageContext], dict[str, Any]]
    describe: str = ""
    excluded: tuple[str, ...] = ()  # top-level names under out_dir not listed in the manifest
    # What the result depends on, when not simply `sections` (e.g. raw input files' sizes).
    config_fn: Callable[[Config], dict[str, Any]] | None = None
    # Whether the run includes this stage (None: always), and the config key that says so.
    enabled_fn: Callable[[Config], bool] | None = None
    switch: str = ""
    # Inputs used when that stage is part of the run (the export takes the fine-tuned model
    # when there is one).
    optional_inputs: tuple[str, ...] = ()

    def config_of(self, cfg: Config) -> dict[str, Any]:
        if self.config_fn is not None:
            return self.config_fn(cfg)
        dumped = cfg.model_dump(mode="json")
        return {section: dumped[section] for section in self.sections}


# Run order; each entry is "module:attribute" of a Stage, imported only when the run needs it.
STAGE_REFS = (
    "lmforge.data.stage:STAGE",
    "lmforge.tokenizer.stage:TOKENIZER",
    "lmforge.tokenizer.stage:TOKENIZE",
    "lmforge.train.stage:STAGE",
    "lmforge.finetune.stage:STAGE",
    "lmforge.export.stage:STAGE",
    "lmforge.compress.stage:STAGE",
    "lmforge.eval.stage:STAGE",
)


def stages() -> list[Stage]:
    """All stages in run order."""
    found = []
    for ref in STAGE_REFS:
        module, attr = ref.split(":")
        found.append(getattr(importlib.import_module(module), attr))
    return found


def fingerprint(manifest: dict[str, Any]) -> str:
    files = [(f["path"], f["sha256"]) for f in manifest["files"]]
    return sha256_json({"config_hash": manifest["config_hash"], "files": files})


def list_files(out_dir: Path, excluded: tuple[str, ...],
               kept: set[str] | frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """The stage's output files with hashes; `kept`: a user's files there, never listed."""
    files = []
    for path in sorted(out_dir.rglob("*")):
        rel = path.relative_to(out_dir)
        if not path.is_file() or rel.parts[0] in excluded:
            continue
        if rel.name == MANIFEST or rel.as_posix() in kept:
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue
        files.append(
            {"path": rel.as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}
        )
    return files


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def stale_reason(stage: Stage, cfg: Config, out_dir: Path, inputs: dict[str, dict]) -> str | None:
    """Why the stage must run, or None when its artifact is up to date."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        return "no previous result"
    if manifest.get("config_hash") != sha256_json(stage.config_of(cfg)):
        changed = _changed_keys(manifest.get("config", {}), stage.config_of(cfg))
        return "config changed: " + (", ".join(changed[:4]) or "(defaults)")
    recorded = manifest.get("inputs", {})
    for name, upstream in inputs.items():
        if recorded.get(name, {}).get("fingerprint") != fingerprint(upstream):
            return f"input {name} changed"
    for f in manifest.get("files", []):
        path = out_dir / f["path"]
        if not path.is_file() or path.stat().st_size != f["bytes"]:
            return f"output {f['path']} missing or changed"
    return None


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys: list[str] = []
        for key in sorted(set(old) | set(new)):
            keys += _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return keys
    return [] if old == new else [f"{prefix.rstrip('.')}={new!r}"]


def execute(stage: Stage, ctx: StageContext, upstream: dict[str, dict]) -> dict[str, Any]:
    """Run one stage and write its manifest. The directory is claimed first (refused when it
    holds what lmforge did not write) and, unless resuming, cleared of lmforge's old outputs;
    the old manifest goes too, so a killed stage is never mistaken for a finished one."""
    kept = claim(ctx.out_dir, stage.name, clear=not ctx.resume, internal=stage.excluded)
    (ctx.out_dir / MANIFEST).unlink(missing_ok=True)
    started = time.time()
    metrics = stage.run(ctx)
    manifest = {
        "stage": stage.name,
        "lmforge_version": __version__,
        "config": stage.config_of(ctx.cfg),
        "config_hash": sha256_json(stage.config_of(ctx.cfg)),
        "inputs": {
            name: {"path": str(ctx.inputs[name] / MANIFEST), "fingerprint": fingerprint(m)}
            for name, m in upstream.items()
        },
        "files": list_files(ctx.out_dir, stage.excluded, kept),
        "metrics": metrics,
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - started, 3),
        "command": " ".join(["lmforge", *sys.argv[1:]]),
        "libraries": library_versions(),
    }
    atomic_write_json(ctx.out_dir / MANIFEST, manifest)
    seal(ctx.out_dir, stage.name)
    return manifest


def run_pipeline(
    cfg: Config,
    force: list[str] | None = None,
    resume: bool = False,
    until: str | None = None,
    options: dict[str, Any] | None = None,
) -> None:
    """Walk the stages in order, skipping those whose config and inputs are unchanged."""
    all_stages = stages()
    names = [s.name for s in all_stages]
    for name in [*(force or []), *([until] if until else [])]:
        if name not in names:
            raise UserError(f"unknown stage {name!r}; stages are: {', '.join(names)}")
    run_dir = cfg.run.path
    manifests: dict[str, dict] = {}
    for stage in all_stages:
        out_dir = run_dir / stage.name
        if stage.enabled_fn is not None and not stage.enabled_fn(cfg):
            console.print(f"[bold]{stage.name}[/]: off ({stage.switch}: false)")
            if stage.name == until:
                break
            continue
        wanted = [*stage.inputs, *(n for n in stage.optional_inputs if n in manifests)]
        upstream = {name: manifests[name] for name in wanted}
        reason = "forced with --force" if stage.name in (force or []) else None
        reason = reason or stale_reason(stage, cfg, out_dir, upstream)
        if reason is None:
            console.print(f"[bold]{stage.name}[/]: up to date, skipped ({out_dir})")
            manifests[stage.name] = read_manifest(out_dir) or {}
        else:
            console.print(f"[bold]{stage.name}[/]: running ({reason})")
            ctx = StageContext(
                cfg=cfg,
                out_dir=out_dir,
                inputs={name: run_dir / name for name in upstream},
                resume=resume,
                options=dict(options or {}),
            )
            manifest = execute(stage, ctx, upstream)
            console.print(
                f"[bold]{stage.name}[/]: done in {manifest['wall_time_s']:.1f}s -> {out_dir}"
            )
            manifests[stage.name] = manifest
        if stage.name == until:
            break


def require_input(run_dir: Path, stage: str, hint: str) -> dict[str, Any]:
    """The manifest of an upstream stage, or a UserError telling which command makes it."""
    manifest = read_manifest(run_dir / stage)
    if manifest is None:
        raise UserError(f"{run_dir / stage} has no finished {stage} stage; run `{hint}` first")
    return manifest
