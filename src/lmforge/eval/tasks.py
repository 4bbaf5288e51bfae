"""Local task files: lm-evaluation-harness's YAML task format (the subset below), read with
no network, so one file runs in `lmforge eval` and in `lmforge eval --harness` alike.

    task: python_keywords
    output_type: multiple_choice        # or generate_until, loglikelihood_rolling
    dataset_path: json
    dataset_kwargs: {data_files: {test: keywords.jsonl, train: shots.jsonl}}  # beside the YAML
    test_split: test
    fewshot_split: train                # else the test docs, never the doc itself
    num_fewshot: 0
    description: ""
    doc_to_text: "Q: {{question}}\\nA:" # a field name or a Jinja template
    doc_to_target: answer               # a field, a template, or an index into the choices
    doc_to_choice: choices              # a field, a template that renders a list, or a list
    target_delimiter: " "
    fewshot_delimiter: "\\n\\n"
    metric_list: [{metric: acc}, {metric: acc_norm}]
    generation_kwargs: {until: ["\\n"], max_gen_toks: 32}

Templates and field lookups follow lm-eval's rules (`doc_to_*` on a ConfigurableTask), and the
few-shot context is lm-eval's: description, then each shot's text, target delimiter and
target joined by the few-shot delimiter, then the doc's text; shots are drawn with
`random.Random(fewshot_seed).sample` as lm-eval's sampler does.
"""

from __future__ import annotations

import ast
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from lmforge.errors import UserError

MULTIPLE_CHOICE = "multiple_choice"
GENERATE = "generate_until"
ROLLING = "loglikelihood_rolling"
OUTPUT_TYPES = (MULTIPLE_CHOICE, GENERATE, ROLLING)
DEFAULT_METRICS = {MULTIPLE_CHOICE: ["acc", "acc_norm"], GENERATE: ["exact_match"],
                   ROLLING: ["word_perplexity", "byte_perplexity", "bits_per_byte"]}
KNOWN_KEYS = {
    "task", "tag", "output_type", "dataset_path", "dataset_name", "dataset_kwargs",
    "test_split", "validation_split", "training_split", "fewshot_split", "num_fewshot",
    "description", "doc_to_text", "doc_to_target", "doc_to_choice", "target_delimiter",
    "fewshot_delimiter", "metric_list", "generation_kwargs", "fewshot_config", "metadata",
    "should_decontaminate", "doc_to_decontamination_query", "repeats",
}
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


@dataclass
class Task:
    """A task file read into memory: its docs, how to render them, and what to score."""

    name: str
    path: Path
    output_type: str
    docs: list[dict[str, Any]]
    fewshot_docs: list[dict[str, Any]] | None
    config: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def metric_names(self) -> list[str]:
        return [m["metric"] for m in self.metrics]

    @property
    def until(self) -> list[str]:
        return list(self.config.get("generation_kwargs", {}).get("until", []))

    @property
    def max_gen_toks(self) -> int:
        return int(self.config.get("generation_kwargs", {}).get("max_gen_toks", 256))

    # -- lm-eval's doc_to_* rules ---------------------------------------------------------

    def _lookup(self, spec: Any, doc: dict[str, Any], where: str) -> Any:
        if isinstance(spec, str) and spec in doc:
            return doc[spec]
        if not isinstance(spec, str):
            return spec
        try:
            return _ENV.from_string(spec).render(**doc)
        except jinja2.TemplateError as e:
            raise UserError(f"{self.path}: {where} {spec!r} does not render for a doc ({e}); "
                            "fix the template or the data's field names") from None

    def text(self, doc: dict[str, Any]) -> str:
        value = self._lookup(self.config.get("doc_to_text", ""), doc, "doc_to_text")
        return str(value)

    def choices(self, doc: dict[str, Any]) -> list[str]:
        spec = self.config.get("doc_to_choice")
        if spec is None:
            raise UserError(f"{self.path}: a multiple_choice task needs doc_to_choice")
        if isinstance(spec, dict):
            return [str(v) for v in spec.values()]
        value = self._lookup(spec, doc, "doc_to_choice")
        if isinstance(value, str):
            value = _literal(value, self.path, "doc_to_choice")
        if not isinstance(value, list) or not value:
            raise UserError(f"{self.path}: doc_to_choice gave {value!r}, not a list of choices")
        return [str(v) for v in value]

    def target(self, doc: dict[str, Any]) -> Any:
        """The gold answer: an index (or indices) into the choices, or a reference string."""
        spec = self.config.get("doc_to_target", "")
        if not isinstance(spec, str) or spec in doc:
            return self._lookup(spec, doc, "doc_to_target")
        value = self._lookup(spec, doc, "doc_to_target")
        if value.isdigit() and self.config.get("doc_to_choice") is not None:
            return int(value)
        if len(value) >= 2 and value[0] == "[" and value[-1] == "]":
            try:
                return ast.literal_eval(value)
            except (SyntaxError, ValueError):
                return value
        return value

    def gold_index(self, doc: dict[str, Any], choices: list[str]) -> int | list[int]:
        gold = self.target(doc)
        if isinstance(gold, str):
            if gold not in choices:
                raise UserError(f"{self.path}: target {gold!r} is not one of the choices "
                                f"{choices}; fix doc_to_target or the data")
            return choices.index(gold)
        if isinstance(gold, list):
            return [int(g) for g in gold]
        if not 0 <= int(gold) < len(choices):
            raise UserError(f"{self.path}: target index {gold} is out of range for "
                            f"{len(choices)} choices")
        return int(gold)

    def target_text(self, doc: dict[str, Any]) -> str:
        """What follows the target delimiter in a few-shot example."""
        if self.output_type == MULTIPLE_CHOICE:
            choices = self.choices(doc)
            gold = self.gold_index(doc, choices)
            return choices[gold[0] if isinstance(gold, list) else gold]
        gold = self.target(doc)
        return str(gold[0] if isinstance(gold, list) else gold)

    def context(self, doc: dict[str, Any], num_fewshot: int, rnd: random.Random) -> str:
        """description + shots + the doc's text, as lm-eval builds a plain (no chat) prompt."""
        description = self.config.get("description", "") or ""
        if num_fewshot <= 0:
            return description + self.text(doc)
        pool = self.fewshot_docs if self.fewshot_docs is not None else self.docs
        if len(pool) < num_fewshot + (0 if self.fewshot_docs is not None else 1):
            raise UserError(f"{self.path}: {num_fewshot} shots need more docs than the "
                            f"{len(pool)} there are; lower num_fewshot")
        if self.fewshot_docs is not None:
            shots = rnd.sample(pool, num_fewshot)
        else:
            shots = [d for d in rnd.sample(pool, num_fewshot + 1) if d != doc][:num_fewshot]
        delimiter = self.config.get("fewshot_delimiter", "\n\n")
        sep = self.config.get("target_delimiter", " ")
        shown = delimiter.join(self.text(s) + sep + self.target_text(s) for s in shots)
        return description + shown + delimiter + self.text(doc)


def _literal(text: str, path: Path, where: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        raise UserError(f"{path}: {where} rendered {text[:60]!r}, not a Python list literal"
                        ) from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL (or JSON array) file; a bad line is an error naming file:line,
    never skipped (a dropped example would change the score)."""
    if not path.is_file():
        raise UserError(f"{path} not found; dataset_kwargs.data_files paths are relative to "
                        "the task file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        rows = json.loads(text)
        return [r for r in rows if isinstance(r, dict)]
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number}: not JSON ({e.msg}); fix the line") from None
        if not isinstance(doc, dict):
            raise UserError(f"{path}:{number}: a record must be a JSON object")
        docs.append(doc)
    return docs


def _split_files(config: dict[str, Any], path: Path) -> dict[str, list[Path]]:
    if config.get("dataset_path") != "json":
        raise UserError(f"{path}: dataset_path must be json (local JSONL files; nothing is "
                        f"downloaded), got {config.get('dataset_path')!r}")
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, str | list):
        files = {"train": files}
    if not isinstance(files, dict) or not files:
        raise UserError(f"{path}: dataset_kwargs.data_files must name the JSONL file of each "
                        "split, e.g. {test: data.jsonl}")
    return {split: [path.parent / f for f in ([names] if isinstance(names, str) else names)]
            for split, names in files.items()}


def task_files(path: Path) -> list[Path]:
    """The task file and the data files it names (what a result depends on)."""
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        return [path]
    try:
        splits = _split_files(config, path)
    except UserError:
        return [path]
    return [path, *sorted({f for files in splits.values() for f in files})]


def load_task(path: str | Path) -> Task:
    """A task YAML and its local JSONL docs; every mistake is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"task file {path} not found; pass a task YAML (see docs/evaluation.md)")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(config, dict) or "task" not in config:
        raise UserError(f"{path}: a task file is a mapping with at least `task:` and "
                        "`dataset_path: json`")
    unknown = sorted(set(config) - KNOWN_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown task keys {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(KNOWN_KEYS))}")
    output_type = config.get("output_type", GENERATE)
    if output_type not in OUTPUT_TYPES:
        raise UserError(f"{path}: output_type {output_type!r}; use one of "
                        f"{', '.join(OUTPUT_TYPES)}")
    splits = _split_files(config, path)
    docs = _split_docs(splits, config, path, "test_split", ("test", "validation", "train"))
    fewshot = config.get("fewshot_split") or config.get("training_split")
    fewshot_docs = None
    if fewshot is not None:
        if fewshot not in splits:
            raise UserError(f"{path}: fewshot split {fewshot!r} is not in data_files")
        fewshot_docs = [d for f in splits[fewshot] for d in read_jsonl(f)]
    metrics = config.get("metric_list") or [{"metric": m} for m in DEFAULT_METRICS[output_type]]
    return Task(name=str(config["task"]), path=path, output_type=output_type, docs=docs,
                fewshot_docs=fewshot_docs, config=config, metrics=list(metrics))


def _split_docs(splits: dict[str, list[Path]], config: dict[str, Any], path: Path,
                key: str, fallbacks: tuple[str, ...]) -> list[dict[str, Any]]:
    name = config.get(key) or config.get("validation_split") or next(
        (s for s in fallbacks if s in splits), None)
    if name not in splits:
        raise UserError(f"{path}: {key} {name!r} is not in data_files ({', '.join(splits)})")
    docs = [d for f in splits[name] for d in read_jsonl(f)]
    if not docs:
        raise UserError(f"{path}: the {name} split has no records")
    return docs


def text_task(name: str, texts: list[str], source: Path) -> Task:
    """Perplexity on plain documents: a loglikelihood_rolling task over `texts`."""
    if not texts:
        raise UserError(f"{source} holds no text to score")
    return Task(name=name, path=source, output_type=ROLLING,
                docs=[{"text": t} for t in texts], fewshot_docs=None,
                config={"doc_to_target": "text"},
                metrics=[{"metric": m} for m in DEFAULT_METRICS[ROLLING]])


def read_texts(path: Path) -> list[str]:
    """Documents to score: a .txt file is one document, a .jsonl file one per record's
    `text`, a directory of parquet parts (a data-stage split) one per row."""
    if path.is_dir():
        import pyarrow.parquet as pq

        parts = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
        return [t for part in parts for t in pq.read_table(part, columns=["text"])
                .column("text").to_pylist() if t]
    if path.suffix == ".jsonl":
        rows = read_jsonl(path)
        if any(not isinstance(r.get("text"), str) for r in rows):
            raise UserError(f"{path}: every record needs a string `text` field to score")
        return [r["text"] for r in rows]
    if not path.is_file():
        raise UserError(f"{path} not found; pass a .txt or .jsonl file or a data split")
    return [path.read_text(encoding="utf-8")]
