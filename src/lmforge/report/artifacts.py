"""Reading a run directory: its stages' manifests in run order, and JSON or JSONL files.

Every file is untrusted and may be missing, torn or from another lmforge version, so the
readers return None (or skip a line) instead of failing: the report shows what is there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import UserError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Run:
    """A run directory and the manifests of its finished stages, inputs before users."""

    dir: Path
    manifests: dict[str, dict[str, Any]]

    def stage_dir(self, stage: str) -> Path:
        return self.dir / stage

    def has(self, stage: str) -> bool:
        return stage in self.manifests


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSONL file; torn or non-object lines (a killed writer) are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def open_run(run_dir: Path) -> Run:
    """The run's stage manifests (RUN/<stage>/manifest.json), or a UserError saying why not."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory; pass a run dir (the config's run.dir)")
    found = {}
    for path in sorted(run_dir.glob(f"*/{MANIFEST}")):
        manifest = read_json(path)
        if isinstance(manifest, dict):
            found[path.parent.name] = manifest
    if not found:
        raise UserError(f"{run_dir} has no stage manifests (STAGE/{MANIFEST}); "
                        "run `lmforge run -c CONFIG` first")
    return Run(run_dir, {name: found[name] for name in run_order(found)})


def run_order(manifests: dict[str, dict[str, Any]]) -> list[str]:
    """Stages after the stages they read (their manifests' inputs), then by start time."""
    depth: dict[str, int] = {}

    def depth_of(name: str, seen: frozenset[str]) -> int:
        if name not in depth:
            inputs = manifests.get(name, {}).get("inputs") or {}
            upstream = [n for n in inputs if n in manifests and n not in seen]
            depth[name] = 1 + max((depth_of(n, seen | {name}) for n in upstream), default=-1)
        return depth[name]

    return sorted(manifests, key=lambda n: (depth_of(n, frozenset()),
                                            str(manifests[n].get("started_at", "")), n))
