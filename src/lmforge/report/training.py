"""The tokenizer and training sections: the vocabulary, tokens per split, and the curves.

Training curves come from RUN/<stage>/metrics.jsonl (one object per logged step, per eval
and per event, see lmforge.train.monitor), parsed here so the report needs no training code.
"""

from __future__ import annotations

from typing import Any

from lmforge.report import figures
from lmforge.report.artifacts import Run, read_json, read_jsonl
from lmforge.report.parts import Section, Table, is_number, key_values

TRAINING_STAGES = ("pretrain", "finetune")
# Chart panels: title and the metrics.jsonl keys drawn in it.
PANELS = (("loss", ("loss", "val_loss")), ("learning rate", ("lr",)),
          ("gradient norm", ("grad_norm",)))


def tokenizer_section(run: Run) -> Section | None:
    if not (run.has("tokenizer") or run.has("tokenize")):
        return None
    ctx: dict[str, Any] = {"tables": []}
    metrics = dict(run.manifests.get("tokenizer", {}).get("metrics") or {})
    special = metrics.pop("special_ids", None) or {}
    if metrics:
        ctx["tables"].append(key_values(metrics, "tokenizer"))
    if special:
        ctx["tables"].append(Table(["token", "id"], list(special.items()), "special tokens"))
    meta = read_json(run.stage_dir("tokenize") / "meta.json")
    if isinstance(meta, dict):
        ctx["tables"].append(split_table(meta))
        encoding = {k: v for k, v in meta.items() if k not in ("splits", "special_ids")}
        ctx["tables"].append(key_values(encoding, "token files (meta.json)"))
    return Section("tokenizer", "Tokenizer", "sections/tables.html.jinja", ctx)


def split_table(meta: dict[str, Any]) -> Table:
    """Documents, tokens and text bytes per split, and how many bytes a token holds."""
    rows = []
    for split, counts in (meta.get("splits") or {}).items():
        tokens, text_bytes = counts.get("tokens", 0), counts.get("text_bytes", 0)
        per_token = text_bytes / tokens if is_number(tokens) and tokens else None
        rows.append([split, counts.get("documents"), tokens, text_bytes, per_token])
    return Table(["split", "documents", "tokens", "text bytes", "bytes per token"], rows,
                 "tokens per split")


def training_section(run: Run) -> Section | None:
    stages = [_stage_part(run, name) for name in TRAINING_STAGES if run.has(name)]
    if not stages:
        return None
    return Section("training", "Training", "sections/training.html.jinja", {"stages": stages})


def _stage_part(run: Run, stage: str) -> dict[str, Any]:
    rows = read_jsonl(run.stage_dir(stage) / "metrics.jsonl")
    panels = curve_panels(rows)
    summary = read_json(run.stage_dir(stage) / "summary.json")
    if not isinstance(summary, dict):
        summary = run.manifests[stage].get("metrics") or {}
    events = [[row.get("step"), row["event"],
               {k: v for k, v in row.items() if k not in ("step", "event")}]
              for row in rows if "event" in row]
    return {
        "name": stage,
        "chart": figures.data_uri(figures.curves_png(stage, panels)) if panels else None,
        "summary": key_values(summary, "final numbers (summary.json)"),
        "events": Table(["step", "event", "details"], events, "events"),
    }


def curve_panels(rows: list[dict[str, Any]]) -> list[figures.Panel]:
    """The chart panels that have at least one point, each line against the step."""
    panels = []
    for title, keys in PANELS:
        lines = []
        for key in keys:
            points = [(row["step"], row[key]) for row in rows
                      if is_number(row.get(key)) and is_number(row.get("step"))]
            if points:
                xs, ys = zip(*points, strict=True)
                lines.append((key, list(xs), list(ys)))
        if lines:
            panels.append((title, lines))
    return panels
