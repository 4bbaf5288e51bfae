"""The datatrove side of bench_data.py; runs inside a venv with datatrove installed.

    python datatrove_runner.py {filters|minhash|recipe} INPUT_DIR WORK_DIR WORKERS

Writes WORK_DIR/removed/ (documents the dedup removed) for precision/recall.
"""

import sys

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import (
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.formatters import FTFYFormatter, PIIFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.utils.hashing import HashConfig

CONFIG = MinhashConfig(
    n_grams=5, num_buckets=14, hashes_per_bucket=8, hash_config=HashConfig(64, "xxhash")
)


def run(stage: list, work: str, name: str, tasks: int, workers: int) -> None:
    LocalPipelineExecutor(
        pipeline=stage, tasks=tasks, workers=workers, logging_dir=f"{work}/logs/{name}"
    ).run()


def minhash(source: str, work: str, tasks: int, workers: int) -> None:
    signature = [JsonlReader(source), MinhashDedupSignature(f"{work}/sigs", config=CONFIG)]
    run(signature, work, "sigs", tasks, workers)
    buckets = [MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=CONFIG)]
    run(buckets, work, "buckets", CONFIG.num_buckets, workers)
    run(
        [MinhashDedupCluster(f"{work}/buckets", f"{work}/remove", config=CONFIG)],
        work,
        "cluster",
        1,
        1,
    )
    filter_stage = [
        JsonlReader(source),
        MinhashDedupFilter(f"{work}/remove", exclusion_writer=JsonlWriter(f"{work}/removed")),
        JsonlWriter(f"{work}/output"),
    ]
    run(filter_stage, work, "filter", tasks, workers)


def main() -> None:
    mode, source, work, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    tasks = workers * 4  # the input is several files; one task per file group
    if mode == "filters":
        stage = [
            JsonlReader(source),
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            JsonlWriter(f"{work}/output"),
        ]
        run(stage, work, "filters", tasks, workers)
    elif mode == "minhash":
        minhash(source, work, tasks, workers)
    elif mode == "recipe":
        # datatrove's closest offline equivalent of lmforge's default recipe, the FineWeb way
        # (filter, write, then MinHash the survivors): its language filter needs a fastText
        # model download, and it has no relevance or perplexity filter.
        stage = [
            JsonlReader(source),
            FTFYFormatter(),
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            C4QualityFilter(),
            PIIFormatter(),
            JsonlWriter(f"{work}/filtered", compression=None),
        ]
        run(stage, work, "filters", tasks, workers)
        minhash(f"{work}/filtered", work, tasks, workers)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
