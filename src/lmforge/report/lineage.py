"""The config and lineage sections: what each stage was told, what it read, what it wrote.

Every stage's manifest records its resolved config, the fingerprints of the manifests it
read and its files with sha256, so a served model traces back to its data and settings.
"""

from __future__ import annotations

from typing import Any

import yaml

from lmforge.report.artifacts import Run
from lmforge.report.parts import Section, Table


def config_section(run: Run) -> Section:
    stages = [{"name": name, "command": m.get("command", ""),
               "yaml": yaml.safe_dump(m.get("config", {}), sort_keys=False, allow_unicode=True)}
              for name, m in run.manifests.items()]
    return Section("config", "Config", "sections/config.html.jinja", {"stages": stages})


def _stages_table(manifests: dict[str, dict[str, Any]]) -> Table:
    rows = [[name, m.get("started_at"), m.get("wall_time_s"), m.get("lmforge_version"),
             (m.get("libraries") or {}).get("torch"), m.get("config_hash")]
            for name, m in manifests.items()]
    return Table(["stage", "started", "wall time (s)", "lmforge", "torch", "config hash"], rows,
                 "stages")


def _inputs_table(manifests: dict[str, dict[str, Any]]) -> Table:
    rows = [[name, upstream, (record or {}).get("fingerprint"), (record or {}).get("path")]
            for name, m in manifests.items()
            for upstream, record in (m.get("inputs") or {}).items()]
    return Table(["stage", "input", "fingerprint", "manifest"], rows, "inputs")


def _files_table(manifests: dict[str, dict[str, Any]]) -> Table:
    rows = [[name, f.get("path"), f.get("bytes"), f.get("sha256")]
            for name, m in manifests.items() for f in m.get("files") or []]
    return Table(["stage", "file", "bytes", "sha256"], rows, "files")


def lineage_section(run: Run) -> Section:
    tables = [_stages_table(run.manifests), _inputs_table(run.manifests),
              _files_table(run.manifests)]
    return Section("lineage", "Lineage", "sections/tables.html.jinja", {"tables": tables})
