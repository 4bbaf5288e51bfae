"""Benchmark corpora built from ../shared/data/tinyshakespeare.txt and the built-in corpus."""

from __future__ import annotations

import json
import random
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from lmforge.data.dedup.shingles import jaccard, word_ngrams
from lmforge.io import atomic_write_json
from lmforge.tokenizer.format import META, bin_path, idx_path, make_meta, split_record

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT / ".." / "shared" / "data" / "tinyshakespeare.txt"
WORK = ROOT / "bench" / "_work" / "data"
FILES = 8
FOOTER = "\n\nThis text is distributed under the terms of the Example Public License, version 2."
THRESHOLD = 0.8


def distinct_builtin_docs() -> list[str]:
    """Built-in docs with their own exact and near (Jaccard >= 0.5) duplicates removed."""
    from lmforge.data import builtin

    texts = [d.text for d in builtin.topic_docs()]
    texts += [d.text for d in builtin.module_docs(builtin.module_names())]
    owners: dict[tuple[str, ...], list[int]] = defaultdict(list)
    kept: list[str] = []
    sizes: list[int] = []
    for text in texts:
        sh = word_ngrams(text)
        overlap: dict[int, int] = defaultdict(int)
        for s in sh:
            for k in owners.get(s, ()):
                overlap[k] += 1
        if any(c / (len(sh) + sizes[k] - c) >= 0.5 for k, c in overlap.items()):
            continue
        for s in sh:
            owners[s].append(len(kept))
        kept.append(text)
        sizes.append(len(sh))
    return kept


def shakespeare_docs(rng: random.Random, target_bytes: int) -> list[str]:
    lines = SHAKESPEARE.read_text().splitlines()
    docs, size = [], 0
    while size < target_bytes:
        starts = [rng.randrange(len(lines) - 10) for _ in range(4)]
        doc = "\n\n".join("\n".join(lines[s : s + 10]) for s in starts)
        docs.append(doc)
        size += len(doc.encode())
    return docs


def variant(text: str, kind: str, rng: random.Random) -> str:
    words = text.split(" ")
    if kind == "exact":
        return text
    if kind == "reflow":
        return "\n".join(
            " ".join(text.split()[i : i + 11]) for i in range(0, len(text.split()), 11)
        )
    if kind == "edit":
        for _ in range(rng.choice((1, 2))):
            words[rng.randrange(len(words))] = rng.choice(["banana", "lantern", "quietly"])
        return " ".join(words)
    return text + FOOTER


def build_corpus(target_mb: float, seed: int = 0) -> tuple[Path, list[tuple[str, str]], int]:
    """Write the corpus files; return their directory, the planted (orig, dup) id pairs and
    the number of documents."""
    rng = random.Random(seed)
    out = WORK / "corpus"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    base = distinct_builtin_docs()
    builtin_bytes = sum(len(t.encode()) for t in base)
    base += shakespeare_docs(rng, int(target_mb * 1e6 / 1.03) - builtin_bytes)
    records = [{"id": f"b{i}", "text": t} for i, t in enumerate(base)]
    eligible = [r for r in records if len(r["text"].split()) >= 150]
    truth = []
    for k, orig in enumerate(rng.sample(eligible, len(records) // 20)):
        kind = ("exact", "reflow", "edit", "footer")[k % 4]
        dup = {"id": f"p{k}-{kind}", "text": variant(orig["text"], kind, rng)}
        records.append(dup)
        if jaccard(orig["text"], dup["text"]) >= THRESHOLD:
            truth.append((orig["id"], dup["id"]))
    rng.shuffle(records)
    per = -(-len(records) // FILES)
    for f in range(FILES):
        with open(out / f"part{f}.jsonl", "w") as fh:
            for r in records[f * per : (f + 1) * per]:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return out, truth, len(records)


def random_tokens(out: Path, vocab: int, counts: dict[str, int], bytes_per_token: int) -> Path:
    """A tokenize-stage directory of uniform random tokens (one document per split), for
    training benchmarks where the content does not change the speed of a step; built once."""
    if (out / META).is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in counts.items():
        rng.integers(0, vocab, n, dtype=np.uint16).tofile(bin_path(out, split))
        np.array([0, n], dtype="<u8").tofile(idx_path(out, split))
        splits[split] = split_record(out, split, "uint16", n * bytes_per_token)
    atomic_write_json(out / META, make_meta(vocab, {"eos": 0}, "0" * 64, splits))
    return out
