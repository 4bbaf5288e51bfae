"""Resource limits of reading: memory stays flat however far a small compressed file expands,
and a walk through a symlink loop ends, finding each real file through its first path."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import zstandard

from lmforge.data.config import SourceConfig
from lmforge.data.plan import expand

EXPANDED_MB = 190
LINE = (json.dumps({"text": "word " * 200}) + "\n").encode()  # about 1 KB


def write_bomb(path: Path, kind: str) -> int:
    """A compressed JSONL file of EXPANDED_MB, built a piece at a time; returns its line count."""
    lines_per_piece = 4096
    pieces = EXPANDED_MB * 2**20 // (len(LINE) * lines_per_piece)
    piece = LINE * lines_per_piece
    if kind == "zst":
        with open(path, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as out:
            for _ in range(pieces):
                out.write(piece)
    else:
        import gzip

        with gzip.open(path, "wb", compresslevel=6) as out:
            for _ in range(pieces):
                out.write(piece)
    return pieces * lines_per_piece


MEASURE = textwrap.dedent(
    """
    import resource, sys
    from lmforge.data.config import SourceConfig
    from lmforge.data.plan import plan_shards
    from lmforge.data.readers import ShardReader

    shards = plan_shards([SourceConfig(path=sys.argv[1])], 16.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    docs = drops = 0
    for shard in shards:
        for record in ShardReader(shard, 16 * 2**20):
            if type(record).__name__ == "Doc":
                docs += 1
            else:
                drops += 1
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(docs, drops, (after - before) // 1024)
    """
)


@pytest.mark.parametrize("kind", ["zst", "gz"])
def test_a_small_file_that_expands_far_is_read_in_flat_memory(tmp_path, kind):
    path = tmp_path / f"bomb.jsonl.{kind}"
    lines = write_bomb(path, kind)
    assert path.stat().st_size < EXPANDED_MB * 2**20 / 50  # it is small on disk
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    docs, drops, grown_mb = map(int, out.stdout.split())
    assert (docs, drops) == (lines, 0)
    assert grown_mb < 64, f"reading grew the process by {grown_mb} MB"


def make_loops(root: Path) -> list[Path]:
    """A tree whose links point back up (to itself, its parent, the root) and sideways; the
    real files are the three it returns."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    real = [root / "a" / "one.jsonl", root / "a" / "b" / "two.jsonl", root / "c" / "three.jsonl"]
    for i, path in enumerate(real):
        path.write_text(json.dumps({"text": f"file {i}"}) + "\n")
    (root / "a" / "b" / "up").symlink_to("..", target_is_directory=True)
    (root / "a" / "b" / "root").symlink_to(root, target_is_directory=True)
    (root / "a" / "self").symlink_to(".", target_is_directory=True)
    (root / "c" / "to_a").symlink_to(root / "a", target_is_directory=True)
    return real


def expand_in_time(source: str, seconds: float = 60) -> list[Path]:
    """expand() of a source, failed if it has not returned in `seconds` (a loop never would)."""
    import signal

    def stop(signum, frame):
        raise TimeoutError(f"walking {source} did not end")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        files, _ = expand(SourceConfig(path=source), "test")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return files


@pytest.mark.parametrize("pattern", ["{root}", "{root}/**/*.jsonl", "{root}/**", "{root}/*/**/*"])
def test_a_symlink_loop_ends_and_each_real_file_is_found_once(tmp_path, pattern):
    root = tmp_path / "tree"
    real = make_loops(root)
    files = expand_in_time(pattern.format(root=root))
    assert sorted(p.resolve() for p in files) == sorted(p.resolve() for p in real)
    assert len(files) == len(real)
