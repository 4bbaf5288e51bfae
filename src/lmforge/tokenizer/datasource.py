"""Reading a data-stage output (DATA_DIR/{train,val,test}/*.parquet) as a stream of texts.

Nothing here loads a split whole: texts come in record batches, and the tokenize stage
cuts each split into shards of whole row groups, so a worker holds one row group at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.errors import UserError
from lmforge.tokenizer.format import SPLITS

TEXT = "text"
BATCH_ROWS = 1024
ENCODE_BATCH_ROWS = 256


@dataclass(frozen=True)
class Shard:
    """Row groups [first, last) of one parquet file: a unit of encoding work."""

    split: str
    index: int
    file: Path
    first: int
    last: int
    text_bytes: int


def split_files(data_dir: Path, split: str) -> list[Path]:
    """The split's parquet parts in name order (none when the split is empty)."""
    directory = Path(data_dir) / split
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))


def check_data_dir(data_dir: Path) -> None:
    """Raise unless data_dir looks like a data-stage output: split parts with a text column."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(
            f"data directory {data_dir} not found; run `lmforge data prepare` or pass its output"
        )
    if not any(split_files(data_dir, split) for split in SPLITS):
        raise UserError(
            f"{data_dir} has no {{train,val,test}}/*.parquet files; pass a data-stage output "
            "directory (`lmforge data prepare INPUT... -o DIR`)"
        )
    for path in (p for split in SPLITS for p in split_files(data_dir, split)):
        _text_column(path)


def _text_column(path: Path) -> int:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise UserError(
            f"{path} is not a readable parquet file ({e}); re-run the data stage"
        ) from None
    index = schema.get_field_index(TEXT)
    kind = schema.field(index).type if index >= 0 else None
    if kind is None or not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UserError(f"{path} has no string column 'text'; pass a data-stage output directory")
    return index


def iter_texts(
    files: list[Path], max_bytes: float | None = None, batch_rows: int = BATCH_ROWS
) -> Iterator[list[str]]:
    """Batches of non-null texts from the files in order, stopping after max_bytes of text."""
    seen = 0
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=[TEXT]):
            texts = [t for t in batch.column(0).to_pylist() if t is not None]
            if max_bytes is not None:
                kept = []
                for text in texts:
                    if seen >= max_bytes:
                        break
                    kept.append(text)
                    seen += len(text.encode("utf-8"))
                texts = kept
            if texts:
                yield texts
            if max_bytes is not None and seen >= max_bytes:
                return


def read_shard(shard: Shard, batch_rows: int = ENCODE_BATCH_ROWS) -> Iterator[list[str | None]]:
    """The shard's texts batch by batch; None stands for a null text (an empty document)."""
    parquet = pq.ParquetFile(shard.file)
    row_groups = list(range(shard.first, shard.last))
    for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=row_groups, columns=[TEXT]):
        yield batch.column(0).to_pylist()


def split_text_bytes(data_dir: Path, split: str) -> int:
    """About how many bytes of text a split holds, from the parquet metadata alone."""
    return sum(shard.text_bytes for shard in plan_shards(data_dir, split, float("inf")))


def plan_shards(data_dir: Path, split: str, shard_bytes: float) -> list[Shard]:
    """Cut a split into shards of whole row groups of about shard_bytes of text each.

    The plan depends only on the files, never on the number of workers, so the output is
    the same whatever the parallelism.
    """
    shards: list[Shard] = []
    for path in split_files(data_dir, split):
        column = _text_column(path)
        meta = pq.ParquetFile(path).metadata
        first, size = 0, 0
        for group in range(meta.num_row_groups):
            size += meta.row_group(group).column(column).total_uncompressed_size
            if size >= shard_bytes or group == meta.num_row_groups - 1:
                shards.append(Shard(split, len(shards), path, first, group + 1, size))
                first, size = group + 1, 0
    return shards
