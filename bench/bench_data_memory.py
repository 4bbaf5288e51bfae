"""Memory of `data prepare` stays flat as the input grows: 1 GB in, peak memory < 1 GB.

    python bench/bench_data_memory.py [--sizes 100,1000] [--workers 2]

Builds JSONL corpora of the given sizes (MB) from ../shared/data/tinyshakespeare.txt
passages and runs the whole default recipe on each, printing the peak memory (PSS summed
over the process tree) and throughput per size.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys

from corpus import FILES, WORK, shakespeare_docs
from measure import timed


def build(size_mb: int) -> tuple[str, int]:
    out = WORK / f"memory-{size_mb}mb"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    docs = shakespeare_docs(random.Random(size_mb), size_mb * 1_000_000)
    per = -(-len(docs) // FILES)
    for f in range(FILES):
        with open(out / f"part{f}.jsonl", "w") as fh:
            for i, text in enumerate(docs[f * per : (f + 1) * per], start=f * per):
                fh.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    return str(out / "*.jsonl"), len(docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        pattern, n_docs = build(size)
        out = WORK / f"memory-{size}mb-out"
        cmd = [
            sys.executable,
            "-m",
            "lmforge",
            "data",
            "prepare",
            pattern,
            "-o",
            str(out),
            f"--workers={args.workers}",
        ]
        wall, pss = timed(cmd)
        print(
            f"input_{size}mb: docs={n_docs} wall_s={wall:.1f} docs_per_s={n_docs / wall:.0f} "
            f"peak_pss_mb={pss:.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
