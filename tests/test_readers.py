"""Readers: every input kind, and every kind of bad input quarantined with file, line, reason."""

import bz2
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lmforge.data.config import SourceConfig
from lmforge.data.document import Doc, Drop
from lmforge.data.plan import plan_shards
from lmforge.data.readers import ShardReader
from lmforge.errors import UserError

MB = 1024 * 1024


def read_all(sources, shard_mb=16.0, max_line_bytes=16 * MB, strict=False):
    records = []
    for shard in plan_shards(sources, shard_mb):
        records += list(ShardReader(shard, max_line_bytes, strict))
    return records


def by_reason(records):
    return {r.reason: r for r in records if isinstance(r, Drop)}


def test_every_bad_jsonl_line_is_quarantined_with_location(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        b'{"id": "a1", "text": "a fine document"}',
        b'{"text": "no id: a stable one is derived"}',
        b'{"text": "broken',
        b"",
        b'{"text": 42}',
        b'{"body": "text under another name"}',
        b"[1, 2, 3]",
        b'{"text": "bad \xff\xfe bytes"}',
        b'{"id": {"nested": 1}, "text": "odd id"}',
        b'{"text": "   "}',
        b'{"id": 7, "text": "an integer id", "url": "https://example.org"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    records = read_all([SourceConfig(path=str(path))])
    assert len(records) == len(lines)  # every line is a Doc or a Drop
    docs = [r for r in records if isinstance(r, Doc)]
    assert [d.id for d in docs] == ["a1", "mixed:2", "7"]
    assert docs[2].meta == {"url": "https://example.org"}
    drops = by_reason(records)
    expected = {
        "malformed_json": 3,
        "blank_line": 4,
        "bad_type": 5,
        "missing_text": 6,
        "not_an_object": 7,
        "undecodable": 8,
        "bad_id": 9,
        "empty_text": 10,
    }
    assert set(drops) == set(expected)
    for reason, line in expected.items():
        assert drops[reason].location == f"{path}:{line}"
        assert drops[reason].step == "read"
    assert drops["malformed_json"].text == '{"text": "broken'
    assert drops["malformed_json"].id is None
    assert drops["missing_text"].id == "mixed:6"  # the line had no id, so one was derived


def test_empty_binary_and_giant_line(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blob.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    giant = tmp_path / "giant.jsonl"
    with open(giant, "wb") as f:
        f.write(b'{"text": "before"}\n{"text": "')
        f.write(b"x" * (50 * MB))
        f.write(b'"}\n{"text": "after"}\n')
    sources = [
        SourceConfig(path=str(tmp_path / n)) for n in ("empty.jsonl", "blob.txt", "giant.jsonl")
    ]
    records = read_all(sources)
    drops = by_reason(records)
    assert drops["empty_file"].location.endswith("empty.jsonl:0")
    assert drops["binary"].location.endswith("blob.txt:1")  # one document: the whole file
    assert drops["line_too_long"].location.endswith("giant.jsonl:2")
    assert len(drops["line_too_long"].text) < 3000  # the quarantine keeps a readable prefix
    assert [d.text for d in records if isinstance(d, Doc)] == ["before", "after"]


def test_strict_stops_with_one_line_naming_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: malformed_json"):
        read_all([SourceConfig(path=str(path))], strict=True)


@pytest.mark.parametrize("suffix", [".gz", ".zst", ".bz2"])
def test_compressed_jsonl(tmp_path, suffix):
    data = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(100)).encode()
    packed = {
        ".gz": gzip.compress,
        ".bz2": bz2.compress,
        ".zst": zstandard.ZstdCompressor().compress,
    }[suffix](data)
    path = tmp_path / f"docs.jsonl{suffix}"
    path.write_bytes(packed)
    docs = read_all([SourceConfig(path=str(path))])
    assert [d.text for d in docs] == [f"document {i}" for i in range(100)]
    assert docs[5].location == f"{path}:6"


def test_parquet_text_files_and_separator(tmp_path):
    table = pa.table({"id": ["p1", "p2", None], "content": ["first", None, "third"]})
    pq.write_table(table, tmp_path / "t.parquet")
    records = read_all([SourceConfig(path=str(tmp_path / "t.parquet"), text_field="content")])
    assert [type(r).__name__ for r in records] == ["Doc", "Drop", "Doc"]
    assert records[1].reason == "missing_text" and records[1].location.endswith("t.parquet:2")
    assert records[2].id == "t:3"

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "one.txt").write_text("The first file is one document.\n")
    (tmp_path / "docs" / "two.md").write_text("# Second\n\nAlso one document.\n")
    docs = read_all([SourceConfig(path=str(tmp_path / "docs"))])
    assert [d.id for d in docs] == ["docs:one.txt", "docs:two.md"]

    (tmp_path / "paras.txt").write_text("para one\nstill one\n\n\n\npara two\n\npara three\n")
    docs = read_all([SourceConfig(path=str(tmp_path / "paras.txt"), separator="\n\n")])
    assert [d.text for d in docs] == ["para one\nstill one", "para two", "para three"]
    assert [d.location.rsplit(":", 1)[1] for d in docs] == ["1", "6", "8"]


def test_hf_save_to_disk_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {"id": ["h1", "h2"], "text": ["alpha doc", "beta doc"], "n": [1, 2]}
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    docs = read_all([SourceConfig(path=str(tmp_path / "hf"))])
    assert [(d.id, d.text, d.meta) for d in docs] == [
        ("h1", "alpha doc", {"n": 1}),
        ("h2", "beta doc", {"n": 2}),
    ]


def test_large_file_is_cut_into_shards_with_the_same_records(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for i in range(5000):
            f.write(json.dumps({"text": f"line {i} " + "word " * (i % 17)}) + "\n")
    whole = read_all([SourceConfig(path=str(path))], shard_mb=64)
    shards = plan_shards([SourceConfig(path=str(path))], 0.02)
    assert len(shards) > 5
    pieces = read_all([SourceConfig(path=str(path))], shard_mb=0.02)
    assert [(d.id, d.text, d.location) for d in pieces] == [
        (d.id, d.text, d.location) for d in whole
    ]


def test_globs_and_missing_inputs(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"text": name}) + "\n")
    docs = read_all([SourceConfig(path=str(tmp_path / "*.jsonl"), name="both", weight=2.5)])
    assert [(d.id, d.source, d.weight) for d in docs] == [
        ("both:a.jsonl:1", "both", 2.5),
        ("both:b.jsonl:1", "both", 2.5),
    ]
    with pytest.raises(UserError, match="no files match"):
        plan_shards([SourceConfig(path=str(tmp_path / "*.parquet"))], 1)
    with pytest.raises(UserError, match="does not exist"):
        plan_shards([SourceConfig(path=str(tmp_path / "nope.jsonl"))], 1)
    with pytest.raises(UserError, match="unknown built-in"):
        plan_shards([SourceConfig(path="builtin:nope")], 1)


def test_builtin_python_docs_has_stable_ids_and_natural_duplicates(monkeypatch):
    monkeypatch.setenv("LMFORGE_CANARY", "secret-one")
    docs = read_all([SourceConfig(path="builtin:python-docs")])
    ids = [d.id for d in docs]
    assert len(ids) == len(set(ids)) > 1000
    assert "python-docs:topic:if" in ids
    assert sum(len(d.text) for d in docs) > 1_000_000
    texts = [d.text for d in docs]
    assert len(texts) - len(set(texts)) > 100  # re-exported objects share their docs
    # signatures show literal defaults only: `environ=os.environ` would put the process's
    # environment (secrets, and an order that varies) into the corpus
    assert not any("secret-one" in t for t in texts)
    assert any("=...," in t or "=...)" in t for t in texts)
    monkeypatch.setenv("LMFORGE_CANARY", "secret-two")
    again = read_all([SourceConfig(path="builtin:python-docs")])
    assert [(d.id, d.text) for d in again] == list(zip(ids, texts, strict=True))


def test_separated_text_quarantines_an_oversized_piece_and_goes_on(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes(b"first piece\n\n" + b"x" * (3 * MB) + b"\n\nlast piece\n")
    for max_line in (1000, 2 * MB):  # cut inside one read, and across several reads
        records = read_all(
            [SourceConfig(path=str(path), separator="\n\n")], max_line_bytes=max_line
        )
        assert [type(r).__name__ for r in records] == ["Doc", "Drop", "Doc"]
        assert records[1].reason == "line_too_long" and records[1].location.endswith(":3")
        assert [records[0].text, records[2].text] == ["first piece", "last piece"]
        assert records[2].location.endswith(":5")
