"""The data stage against datatrove, side by side: same corpus, same parameters, same workers.

    python bench/bench_data.py [--mb 50] [--workers 2] [--peer-python .venv-bench/bin/python]

The corpus (>= 50 MB of JSONL in 8 files) is built from ../shared/data/tinyshakespeare.txt
(documents of four random 10-line passages) plus the built-in python-docs corpus, with
planted near duplicates of 5% of the documents: exact copies, reflowed whitespace, 1-2 word
edits and an appended footer line. Planted pairs whose true 5-gram Jaccard is below the 0.8
threshold are left out of the truth, and the base documents are first cleared of their own
natural near duplicates, so the truth is exactly the planted pairs.

Three comparisons, each side run as a subprocess, timed from spawn to exit, with the peak memory
(PSS) of its whole process tree: (a) heuristic quality filters alone (Gopher repetition + quality),
(b) MinHash dedup alone (word 5-grams, 14 bands x 8 rows), (c) the whole default recipe
(datatrove: its closest offline equivalent, see datatrove_runner.py). Prints one line per
figure: `name: ours=X peer=Y ratio=Z`.

The peer venv: python -m venv .venv-bench && .venv-bench/bin/pip install
'datatrove[processing]==0.10.1' spacy
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq

from corpus import THRESHOLD, WORK, build_corpus, jaccard
from measure import line, timed

ROOT = Path(__file__).resolve().parents[1]


def ours(mode: str, corpus: Path, workers: int) -> tuple[float, float, Path]:
    out = WORK / f"ours-{mode}"
    args = {
        "filters": ["--data.steps=[quality]", "--data.quality.c4.enabled=false",
                    "--data.split.decontaminate=false"],
        "minhash": ["--data.steps=[near_dedup]", "--data.dedup.num_perm=112",
                    "--data.dedup.bands=14", "--data.dedup.rows=8",
                    "--data.split.decontaminate=false"],
        "recipe": [],
    }[mode]  # fmt: skip
    cmd = [sys.executable, "-m", "lmforge", "data", "prepare", f"{corpus}/*.jsonl", "-o", str(out),
           f"--workers={workers}", *args]  # fmt: skip
    wall, rss = timed(cmd)
    return wall, rss, out


def peer(mode: str, corpus: Path, workers: int, python: str) -> tuple[float, float, Path]:
    out = WORK / f"peer-{mode}"
    if out.exists():
        shutil.rmtree(out)
    runner = ROOT / "bench" / "datatrove_runner.py"
    wall, rss = timed([python, str(runner), mode, str(corpus), str(out), str(workers)])
    return wall, rss, out


def our_outcome(out: Path) -> tuple[set[str], dict[str, str]]:
    """(ids removed as duplicates, id -> processed text of every document that reached
    dedup): kept documents from the splits, dedup drops from the quarantine."""
    removed, reached = set(), {}
    for part in sorted((out / "quarantine").glob("*.parquet")):
        for row in pq.read_table(part, columns=["id", "text", "step"]).to_pylist():
            if row["step"] in ("exact_dedup", "near_dedup"):
                removed.add(row["id"])
                reached[row["id"]] = row["text"]
            elif row["step"] in ("split", "relevance", "perplexity"):
                reached[row["id"]] = row["text"]
    for split in ("train", "val", "test"):
        for part in sorted((out / split).glob("*.parquet")):
            for row in pq.read_table(part, columns=["id", "text"]).to_pylist():
                reached[row["id"]] = row["text"]
    return removed, reached


def jsonl_texts(folder: Path) -> dict[str, str]:
    import gzip

    texts = {}
    for path in sorted(folder.rglob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            for line in f:
                doc = json.loads(line)
                texts[doc["id"]] = doc["text"]
    return texts


def precision_recall(removed: set[str], truth: list[tuple[str, str]], reached: dict[str, str]):
    """A planted pair counts when both documents reached dedup and, as the filters left them,
    are still near duplicates; it is found when exactly one of the two was removed. A removed
    document is right when it belongs to a planted pair."""
    pairs = [
        (a, b) for a, b in truth
        if a in reached and b in reached and jaccard(reached[a], reached[b]) >= THRESHOLD
    ]  # fmt: skip
    members = {d for p in truth for d in p}
    found = sum((a in removed) != (b in removed) for a, b in pairs)
    right = len(removed & members)
    return right / max(1, len(removed)), found / max(1, len(pairs)), len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--peer-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    parser.add_argument("--modes", default="filters,minhash,recipe")
    args = parser.parse_args()
    corpus, truth, n_docs = build_corpus(args.mb)
    size = sum(p.stat().st_size for p in corpus.glob("*.jsonl")) / 1e6
    print(f"corpus: {n_docs:,} documents, {size:.1f} MB, {len(truth):,} planted pairs", flush=True)
    for mode in args.modes.split(","):
        ours_wall, ours_rss, ours_out = ours(mode, corpus, args.workers)
        peer_wall, peer_rss, peer_out = peer(mode, corpus, args.workers, args.peer_python)
        line(f"{mode}_docs_per_s", n_docs / ours_wall, n_docs / peer_wall)
        line(f"{mode}_peak_pss_mb", ours_rss, peer_rss)
        if mode == "filters":
            continue
        removed, reached = our_outcome(ours_out)
        our_p, our_r, our_n = precision_recall(removed, truth, reached)
        peer_removed = set(jsonl_texts(peer_out / "removed"))
        peer_reached = jsonl_texts(peer_out / "filtered" if mode == "recipe" else corpus)
        peer_p, peer_r, peer_n = precision_recall(peer_removed, truth, peer_reached)
        line(f"{mode}_dedup_precision", our_p, peer_p, ".4f")
        line(f"{mode}_dedup_recall", our_r, peer_r, ".4f")
        line(f"{mode}_pairs_reaching_dedup", our_n, peer_n, "d")
        line(f"{mode}_docs_reaching_dedup", len(reached), len(peer_reached), "d")


if __name__ == "__main__":
    main()
