"""`lmforge data prepare`: raw inputs to clean, deduplicated train/val/test splits.

Three phases over a fixed shard plan: (1) per shard in parallel: read, per-document steps,
dedup features; (2) once, globally: dedup, relevance/perplexity cuts, split,
decontamination; (3) per shard in parallel: write splits and quarantine. Shards carry
done-markers keyed by a fingerprint of the config and inputs, so `--resume` after a kill -9
redoes only unfinished shards, and the output does not depend on the number of workers.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
from pathlib import Path
from typing import Any

from lmforge import __version__
from lmforge.data import builtin, layout
from lmforge.data.config import DataConfig
from lmforge.data.decide import decide
from lmforge.data.executor import LocalExecutor
from lmforge.data.plan import Shard, plan_shards
from lmforge.data.process import ShardTask, features_for, process_shard
from lmforge.data.stats import Stats
from lmforge.data.write import WriteTask, check_accounting, write_shard
from lmforge.errors import UserError
from lmforge.io import atomic_write_json, read_json, sha256_json
from lmforge.outputs import remove_outputs
from lmforge.progress import byte_progress, console

PLAN = "plan.json"
OUTPUT_NAMES = (
    *layout.SPLITS,
    layout.QUARANTINE,
    layout.WORK,
    "stats.json",
    "report.html",
    "funnel.png",
    "lengths.png",
)
UNHASHED_KEYS = ("workers", "strict")
STAGE_NAME = "data"


def semantic_config(cfg: DataConfig) -> dict[str, Any]:
    """The config minus the keys that cannot change the output (worker count, strictness)."""
    dumped = cfg.model_dump(mode="json")
    for key in UNHASHED_KEYS:
        dumped.pop(key, None)
    return dumped


def input_files(shards: list[Shard]) -> list[dict[str, Any]]:
    """Every input file with size and mtime (or the builtin's Python build), in plan order."""
    seen: dict[str, dict[str, Any]] = {}
    for shard in shards:
        if shard.path in seen:
            continue
        if shard.format == "builtin":
            seen[shard.path] = {"path": shard.path, "version": builtin.fingerprint()}
        else:
            p = Path(shard.path)
            files = sorted(p.rglob("*")) if p.is_dir() else [p]
            stat = [(f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
            seen[shard.path] = {
                "path": shard.path,
                "bytes": sum(s for s, _ in stat),
                "mtime_ns": max((m for _, m in stat), default=0),
            }
    return list(seen.values())


def fingerprint(cfg: DataConfig, shards: list[Shard]) -> str:
    plan = [(s.path, s.format, s.start, s.end, s.size) for s in shards]
    return sha256_json(
        {
            "config": semantic_config(cfg),
            "inputs": input_files(shards),
            "plan": plan,
            "version": __version__,
        }
    )


def _start(out_dir: Path, fp: str, resume: bool) -> Path:
    work = out_dir / layout.WORK
    plan_path = work / PLAN
    if resume and plan_path.is_file():
        if read_json(plan_path).get("fingerprint") != fp:
            raise UserError(
                f"cannot resume {out_dir}: the config or the inputs changed since the interrupted "
                "run; run again without --resume"
            )
        console.print(f"resuming {out_dir}: finished shards are kept")
        return work
    if resume:
        console.print(f"nothing to resume in {out_dir}; starting from scratch")
    remove_outputs(out_dir, OUTPUT_NAMES, STAGE_NAME)  # only what lmforge wrote: a user's stay
    work.mkdir(parents=True, exist_ok=True)
    for split in (*layout.SPLITS, layout.QUARANTINE):
        (out_dir / split).mkdir(exist_ok=True)
    atomic_write_json(plan_path, {"fingerprint": fp})
    return work


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def prepare(cfg: DataConfig, out_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Run the data stage into out_dir; returns the headline metrics."""
    shards = plan_shards(cfg.sources, cfg.shard_mb)
    fp = fingerprint(cfg, shards)
    work = _start(out_dir, fp, resume)
    pool = LocalExecutor(cfg.workers)
    total = sum(s.size for s in shards)
    console.print(f"data: {len(shards)} shards, {total / 1e6:,.1f} MB, {pool.workers} workers")

    # Build the steps and warm pyarrow here, once: forked workers then share those pages
    # (models, tables, the pandas module pyarrow pulls in) instead of each making its own.
    features_for(cfg)
    layout.warm_up()
    tasks = [ShardTask(s, cfg, work, fp) for s in shards]
    with byte_progress("clean", total) as update:
        shard_stats = pool.map(process_shard, tasks, update)
    counts = [read_json(layout.work_file(work, "done", s.index, ".json"))["docs"] for s in shards]

    console.print("data: global dedup and split")
    global_stats, summary = decide(cfg, shards, work, counts)
    release_memory()  # phase 2's tables are gone: the writers fork from a lean process

    writes = [WriteTask(s, out_dir, work, fp) for s in shards]
    with byte_progress("write", total) as update:
        write_stats = pool.map(write_shard, writes, update)

    stats = Stats()
    for part in shard_stats:
        stats.merge(Stats.from_json(part))
    stats.merge(global_stats)
    for part in write_stats:
        stats.merge(Stats.from_json(part))
    result = summarize(stats, summary, cfg, shards, total)
    check_accounting(result)
    atomic_write_json(out_dir / "stats.json", result)
    from lmforge.data.report import print_funnel, write_report

    write_report(out_dir, result)
    print_funnel(result)
    remove_outputs(out_dir, (layout.WORK,), STAGE_NAME)
    return {key: result[key] for key in ("input", "output", "dedup")}


def summarize(
    stats: Stats, summary: dict[str, Any], cfg: DataConfig, shards: list[Shard], total_bytes: int
) -> dict[str, Any]:
    data = stats.to_json()
    counters = data["counters"]
    read = data["steps"].get("read", {})
    output = {
        split: {
            "docs": counters.get("docs_out", {}).get(split, 0),
            "chars": counters.get("chars_out", {}).get(split, 0),
        }
        for split in layout.SPLITS
    }
    by_source = {
        name: {
            split: counters.get("docs_out", {}).get(f"{split}/{name}", 0) for split in layout.SPLITS
        }
        for name in read
    }
    quarantined = sum(
        n
        for cells in data["steps"].values()
        for cell in cells.values()
        for n in cell["dropped"].values()
    )
    return {
        "input": {
            "records": sum(c["in"] for c in read.values()),
            "bytes": total_bytes,
            "shards": len(shards),
            "sources": [
                {"name": s.name or "", "path": s.path, "weight": s.weight} for s in cfg.sources
            ],
        },
        "output": output,
        "quarantined": quarantined,
        "by_source": by_source,
        "dedup": {
            "exact_removed": summary.get("exact_duplicates", 0),
            "near_removed": summary.get("near_dedup", {}).get("removed", 0),
            "split_leaks_removed": summary.get("split_leaks_removed", 0),
        },
        "summary": summary,
        "pii": counters.get("pii", {}),
        "languages": _languages(data),
        **data,
        "command": " ".join(["lmforge", *sys.argv[1:]]),
    }


def _languages(data: dict[str, Any]) -> dict[str, int]:
    return data["counters"].get("language", {})
