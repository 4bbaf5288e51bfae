"""`lmforge ablate`: which data recipe makes the better model, measured fairly.

A recipe is a partial config (a YAML mapping of `data:` keys) merged over the base config.
Each recipe goes through the pipeline up to pretrain under one protocol: the same model, the
same training section (so the same number of training tokens) and a hash split with the
base config's seed and fractions, so a document's split depends only on its id and a test
document is a test document for every recipe. Every model is then scored on one shared
held-out set: one recipe's test documents minus any whose text some recipe trained on.
Bits-per-byte is what is compared, since each recipe trains its own tokenizer and per-token
losses are not comparable; a paired bootstrap over the held-out documents gives each
recipe's difference from the baseline (the first recipe) with a CI. The held-out text is in
its recipe's form, which favours that recipe's model; `heldout.other_form` counts the
documents another recipe holds with other text (docs/ablation.md).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lmforge.config import Config, validate_config
from lmforge.data.layout import SPLITS
from lmforge.errors import UserError
from lmforge.eval.ablate_report import format_note, verdict
from lmforge.io import atomic_write_text, read_json
from lmforge.progress import console

HELDOUT_FILE = "heldout.jsonl"
BOOTSTRAP_ITERS = 2000
CONFIDENCE = 0.95
# The split keys every recipe shares; a recipe may still turn split.decontaminate off.
PROTOCOL_SPLIT_KEYS = ("mode", "train", "val", "test", "seed")


@dataclass(frozen=True)
class Recipe:
    """One data recipe: its name (the file's stem), its file, and the resolved run config."""

    name: str
    path: Path
    cfg: Config
    overrides: dict[str, Any]  # what the file itself says

    @property
    def run_dir(self) -> Path:
        return self.cfg.run.path


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: mappings merge key by key; anything else, lists too, replaces."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def protocol(base: Config, run_dir: Path) -> dict[str, Any]:
    """What every recipe run is forced to: its own run dir, the base config's split as a
    hash split, and no stage after pretrain."""
    split = base.data.split
    return {
        "run": {"dir": str(run_dir)},
        "data": {"split": {"mode": "hash", "train": split.train, "val": split.val,
                           "test": split.test, "seed": split.seed}},
        "finetune": {"enabled": False},
        "export": {"enabled": False},
        "eval": {"enabled": False},
    }


def read_recipe(path: Path) -> dict[str, Any]:
    """A recipe file's mapping (an empty file is the base config's own recipe)."""
    if not path.is_file():
        raise UserError(f"recipe file {path} not found; pass an existing YAML file with --recipe")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "cannot be parsed"
        raise UserError(f"recipe {path}{where} is not valid YAML: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"recipe {path} must hold a mapping of config keys, "
                        "e.g. 'data: {steps: []}'")
    return raw


def check_recipe_keys(path: Path, raw: dict[str, Any]) -> None:
    """A recipe changes the data only: the model, training and split are the fixed protocol."""
    split = raw.get("data", {}).get("split", {})
    changed = [key for key in raw if key != "data"]
    changed += [f"data.split.{key}" for key in split if key in PROTOCOL_SPLIT_KEYS]
    if changed:
        raise UserError(f"recipe {path} sets {changed[0]}; a recipe changes only the data "
                        "section (the model, training and split are the ablation's protocol: "
                        "set them in the base config)")


def load_recipes(base: Config, paths: list[Path], out: Path) -> list[Recipe]:
    """Each recipe merged over the base config, forced to the protocol, and validated."""
    if len(paths) < 2:
        raise UserError("an ablation compares recipes: pass at least two --recipe files")
    names = [path.stem for path in paths]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is not None:
        raise UserError(f"two recipes are named {repeated!r} (a recipe's name is its file "
                        "stem); rename one of the files")
    dumped = base.model_dump(mode="json")
    recipes = []
    for path, name in zip(paths, names, strict=True):
        raw = read_recipe(path)
        try:
            cfg = validate_config(merge(merge(dumped, raw), protocol(base, out / name)))
        except UserError as e:
            raise UserError(f"recipe {path}: {e}") from None
        check_recipe_keys(path, raw)
        recipes.append(Recipe(name, path, cfg, raw))
    return recipes


def check_protocol(base: Config) -> None:
    """Refuse, before any training, a base config the comparison cannot be fair under."""
    if base.train.early_stop_patience is not None or base.train.target_val_loss is not None:
        raise UserError("train.early_stop_patience and train.target_val_loss stop a run early, "
                        "so recipes would train on different numbers of tokens; unset both in "
                        "the base config")
    if base.data.split.test == 0:
        raise UserError("the base config's data.split.test is 0, so there is no held-out set; "
                        "give the test split a share, e.g. --data.split.test=0.1 with "
                        "--data.split.train lowered to match")


def heldout_recipe(base: Config, recipes: list[Recipe], name: str | None) -> Recipe:
    """The recipe whose test split is the held-out set: `name`, else the one with the base
    config's own data section, else the first."""
    if name is not None:
        chosen = next((r for r in recipes if r.name == name), None)
        if chosen is None:
            raise UserError(f"--heldout {name!r} is not a recipe; choose from "
                            f"{', '.join(r.name for r in recipes)}")
        return chosen
    own = base.data.model_copy(update={"split": recipes[0].cfg.data.split}).model_dump()
    return next((r for r in recipes if r.cfg.data.model_dump() == own), recipes[0])


def train_recipes(recipes: list[Recipe]) -> None:
    """The pipeline up to pretrain for each recipe; what is up to date is skipped."""
    from lmforge.pipeline import run_pipeline

    for i, recipe in enumerate(recipes, 1):
        console.print(f"[bold]ablate[/]: recipe {recipe.name} ({i}/{len(recipes)}) "
                      f"-> {recipe.run_dir}")
        run_pipeline(recipe.cfg, until="pretrain")


def split_records(run_dir: Path, split: str) -> Iterator[tuple[str, str]]:
    """(id, text) of each non-empty document of one split of a recipe's data stage."""
    import pyarrow.parquet as pq

    for part in sorted((run_dir / "data" / split).glob("*.parquet")):
        if part.name.startswith("."):
            continue
        for batch in pq.ParquetFile(part).iter_batches(columns=["id", "text"]):
            ids, texts = batch.column(0).to_pylist(), batch.column(1).to_pylist()
            yield from ((i, t) for i, t in zip(ids, texts, strict=True) if t)


def text_key(text: str) -> int:
    """A document's identity up to whitespace: cleaning recipes collapse spaces, raw ones not."""
    import xxhash

    return xxhash.xxh3_128_intdigest(" ".join(text.split()).encode("utf-8"))


def other_forms(recipes: list[Recipe], source: Recipe, kept: dict[str, str]) -> dict[str, int]:
    """Per other recipe, how many held-out documents it holds with other text (one of the two
    cleanings rewrote them): on those, the held-out text favours `source`'s format."""
    counts = {}
    for recipe in recipes:
        if recipe is not source:
            form = dict(split_records(recipe.run_dir, "test"))
            counts[recipe.name] = sum(form.get(doc_id, text) != text
                                      for doc_id, text in kept.items())
    return counts


def build_heldout(recipes: list[Recipe], source: Recipe) -> tuple[list[str], dict[str, Any]]:
    """`source`'s test documents that no recipe trained on (a raw recipe keeps duplicates
    whose twins may be test documents elsewhere), each text once."""
    trained = {text_key(text) for r in recipes for _, text in split_records(r.run_dir, "train")}
    kept: dict[str, str] = {}
    seen: set[int] = set()
    in_train = repeats = 0
    for doc_id, text in split_records(source.run_dir, "test"):
        key = text_key(text)
        if key in trained:
            in_train += 1
        elif key in seen:
            repeats += 1
        else:
            seen.add(key)
            kept[doc_id] = text
    texts = list(kept.values())
    info = {"recipe": source.name, "test_docs": len(texts) + in_train + repeats,
            "removed_in_a_train_split": in_train, "removed_repeats": repeats,
            "docs": len(texts), "bytes": sum(len(t.encode("utf-8")) for t in texts),
            "other_form": other_forms(recipes, source, kept)}
    if not texts:
        raise UserError(f"the held-out set is empty: {source.name}'s test split has "
                        f"{info['test_docs']} documents and {in_train} of them are in a train "
                        "split; raise data.split.test in the base config")
    return texts, info


def best_step(metrics_path: Path) -> int | None:
    """The step of the lowest val loss: the weights in best.pt, which the evaluator loads."""
    from lmforge.train.monitor import read_metrics

    evals = [row for row in read_metrics(metrics_path) if "val_loss" in row]
    return min(evals, key=lambda row: row["val_loss"])["step"] if evals else None


def training_record(recipe: Recipe) -> dict[str, Any]:
    """What a recipe kept and trained on: from its data, tokenize and pretrain outputs."""
    run = recipe.run_dir
    stats = read_json(run / "data" / "stats.json")
    meta = read_json(run / "tokenize" / "meta.json")
    summary = read_json(run / "pretrain" / "summary.json")
    return {
        "input_docs": stats["input"]["records"],
        "docs": {split: stats["output"][split]["docs"] for split in SPLITS},
        "train_tokens": meta["splits"]["train"]["tokens"],
        "tokens_seen": summary["tokens"],
        "evaluated_step": best_step(run / "pretrain" / "metrics.jsonl"),
    }


def check_tokens_seen(records: dict[str, dict[str, Any]]) -> None:
    seen = {name: record["tokens_seen"] for name, record in records.items()}
    if len(set(seen.values())) != 1:
        counts = ", ".join(f"{name} {n:,}" for name, n in seen.items())
        raise UserError(f"the recipes trained on different numbers of tokens ({counts}); "
                        "re-run the ablation so every recipe's pretrain finishes")


def bpb(rows: np.ndarray) -> float:
    from lmforge.eval.evaluate import corpus_value

    return corpus_value("bits_per_byte", rows)


def bootstrap_ci(rows: np.ndarray, iters: int = BOOTSTRAP_ITERS, seed: int = 0) -> list[float]:
    """Percentile CI of the corpus bits-per-byte, resampling documents."""
    rng = np.random.default_rng(seed)
    draws = [bpb(rows[rng.integers(0, len(rows), len(rows))]) for _ in range(iters)]
    alpha = 1 - CONFIDENCE
    return [float(q) for q in np.quantile(draws, [alpha / 2, 1 - alpha / 2])]


def score(recipe: Recipe, texts: list[str], heldout: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-document [loglikelihood, words, bytes] of the recipe's model on the held-out set,
    and its bits-per-byte (with CI) and loss per token of its own tokenizer."""
    from lmforge.eval.evaluate import EvalOptions, run_task
    from lmforge.eval.runner import Evaluator
    from lmforge.eval.tasks import text_task

    console.print(f"[bold]ablate[/]: scoring {recipe.name} on {len(texts):,} held-out documents")
    ev = Evaluator.load(recipe.run_dir / "pretrain", recipe.cfg.eval.batch_size)
    metric = run_task(text_task("heldout", texts, heldout), ev, EvalOptions()).metrics[
        "bits_per_byte"]
    rows = np.asarray(metric.stats, dtype=np.float64)
    tokens = sum(len(ev.encode(text)) for text in texts)
    low, high = bootstrap_ci(rows)
    return rows, {"bits_per_byte": metric.value, "bpb_low": low, "bpb_high": high,
                  "bpb_stderr": metric.stderr, "loss_per_token": -rows[:, 0].sum() / tokens,
                  "tokens": tokens, "loglikelihood": rows[:, 0].sum()}


def versus(base_rows: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """Paired bootstrap of bpb(recipe) - bpb(baseline) over the same held-out documents."""
    from lmforge.eval.stats import paired_bootstrap

    boot = paired_bootstrap(base_rows, rows, statistic=bpb, iters=BOOTSTRAP_ITERS, seed=0,
                            confidence=CONFIDENCE)
    return dataclasses.asdict(boot)


def write_heldout(path: Path, texts: list[str]) -> None:
    lines = [json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts]
    atomic_write_text(path, "".join(lines))


def recipe_rows(recipes: list[Recipe], records: dict[str, dict[str, Any]],
                scored: dict[str, tuple[np.ndarray, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every number of each recipe, with its paired difference from the first (baseline)."""
    base_rows = scored[recipes[0].name][0]
    rows = []
    for i, r in enumerate(recipes):
        rows.append({"name": r.name, "path": str(r.path), "recipe": r.overrides,
                     **records[r.name], "heldout": scored[r.name][1],
                     "vs_baseline": versus(base_rows, scored[r.name][0]) if i else None,
                     "data": r.cfg.data.model_dump(mode="json")})
    return rows


def run_ablation(base: Config, paths: list[Path], out: Path | None = None,
                 heldout: str | None = None) -> dict[str, Any]:
    """Train every recipe, score each model on the shared held-out set, compare with the
    first recipe; returns every number for the report."""
    started = time.time()
    out = out if out is not None else base.run.path / "ablate"
    check_protocol(base)
    recipes = load_recipes(base, paths, out)
    source = heldout_recipe(base, recipes, heldout)
    train_recipes(recipes)
    records = {r.name: training_record(r) for r in recipes}
    check_tokens_seen(records)
    texts, held = build_heldout(recipes, source)
    out.mkdir(parents=True, exist_ok=True)
    write_heldout(out / HELDOUT_FILE, texts)
    console.print(f"[bold]ablate[/]: held-out set: {held['docs']:,} test documents of "
                  f"{source.name} ({held['removed_in_a_train_split']:,} removed: in a train "
                  f"split) -> {out / HELDOUT_FILE}")
    if any(held["other_form"].values()):
        console.print(f"[bold]ablate[/]: note: {format_note(held)}")
    scored = {r.name: score(r, texts, out / HELDOUT_FILE) for r in recipes}
    rows = recipe_rows(recipes, records, scored)
    baseline = rows[0]
    verdicts = [verdict(row["name"], baseline["name"], row["heldout"]["bits_per_byte"],
                        baseline["heldout"]["bits_per_byte"], row["vs_baseline"])
                for row in rows[1:]]
    train = base.train
    return {
        "out": str(out),
        "baseline": baseline["name"],
        "heldout": {**held, "path": str(out / HELDOUT_FILE)},
        "protocol": {"split": recipes[0].cfg.data.split.model_dump(mode="json"),
                     "max_steps": train.max_steps, "batch_size": train.batch_size,
                     "block_size": train.block_size, "grad_accum": train.grad_accum,
                     "tokens_per_recipe": baseline["tokens_seen"],
                     "bootstrap_iters": BOOTSTRAP_ITERS, "confidence": CONFIDENCE},
        "recipes": rows,
        "verdicts": verdicts,
        "wall_time_s": round(time.time() - started, 1),
    }
