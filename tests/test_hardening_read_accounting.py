"""Rows in = rows out: every hostile input line (or document) becomes one Doc or one Drop.

Each file below is built with the number of records it must give, counted independently of
the reader (lines, documents, or what a plain decompressor recovers of a damaged stream),
and one more for a damaged stream's unreadable rest or a file that cannot be read at all.
"""

import bz2
import gzip
import json
import os
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lmforge.data import layout
from lmforge.data.config import DataConfig, SourceConfig
from lmforge.data.document import Doc, Drop, safe_str
from lmforge.data.plan import plan_shards
from lmforge.data.prepare import prepare
from lmforge.data.readers import ShardReader
from lmforge.errors import UserError
from lmforge.io import open_binary

MAX_LINE = 64 * 1024
CODECS = {
    "gz": gzip.compress,
    "bz2": lambda data: bz2.compress(data, 1),
    "zst": zstandard.ZstdCompressor(write_checksum=True).compress,  # as the zstd CLI writes
}


def jsonl(texts: list[str]) -> bytes:
    return b"".join(json.dumps({"text": t}).encode() + b"\n" for t in texts)


def good_lines(name: str, n: int) -> bytes:
    """n distinct, ordinary documents."""
    return jsonl(
        [f"{name} document {i}: " + " ".join(f"w{i * 7 + k}" for k in range(12)) for i in range(n)]
    )


def plain_prefix(kind: str, blob: bytes) -> bytes:
    """What a plain streaming decompressor recovers from a cut file, fed a little at a time."""
    out = []
    if kind == "zst":
        decompressor = zstandard.ZstdDecompressor().decompressobj()
    else:
        decompressor = zlib.decompressobj(31) if kind == "gz" else bz2.BZ2Decompressor()
    try:
        for i in range(0, len(blob), 997):
            out.append(decompressor.decompress(blob[i : i + 997]))
    except (OSError, EOFError, zlib.error, zstandard.ZstdError):
        pass
    return b"".join(out)


def delivered(path: Path) -> bytes:
    """The bytes lmforge's open_binary delivers before a damaged stream fails."""
    out = []
    with open_binary(path) as f:
        try:
            while chunk := f.read1(1 << 16):
                out.append(chunk)
        except (OSError, EOFError, zlib.error, zstandard.ZstdError):
            pass
    return b"".join(out)


def rows_of_damaged(data: bytes) -> int:
    """A damaged stream gives its complete lines, then one row for the damage."""
    return data.count(b"\n") + 1


def write_jsonl_inputs(d: Path) -> dict[str, int]:
    """Hostile JSONL inputs; returns file name -> records it must give."""
    expect = {}

    def put(name: str, data: bytes, rows: int) -> None:
        (d / name).write_bytes(data)
        expect[name] = rows

    put("good.jsonl", good_lines("good", 20), 20)
    put("crlf.jsonl", good_lines("crlf", 5).replace(b"\n", b"\r\n") + b"\r\n", 6)
    put("bom.jsonl", b"\xef\xbb\xbf" + good_lines("bom", 3), 3)
    put("nul_start.jsonl", b"\x00\x00\x00" + good_lines("nul", 101), 101)
    lines = good_lines("nulmid", 10).splitlines()
    lines[4] = b'{"text": "a NUL \x00 inside"}'
    put("nul_mid.jsonl", b"\n".join(lines) + b"\n", 10)
    surrogates = [
        r'{"id": "a\ud800", "text": "lone high surrogate in the id"}',
        r'{"text": "lone high \udbff in the text"}',
        r'{"text": "\udc00"}',
        r'{"text": "ok", "url": "\ud800"}',
        r'{"text": "ok", "\udfff": 1}',
        r'{"text": "ok", "tags": [{"k": ["\ud801"]}]}',
        r'{"text": "ok", "x": "\uD800"}',
        r'{"text": "reversed pair \ude00\ud83d"}',
        r'{"text": "a real pair \ud83d\ude00"}',
        r'{"text": "an escaped backslash \\ud800 is literal text"}',
    ]
    put("surrogates.jsonl", "\n".join(surrogates).encode() + b"\n", len(surrogates))
    extras = [
        "null", "true", "false", "0", "-1", "1.5", "-0.0", "1e400", "-1e400",
        "123456789012345678901234567890", "1" * 4000, "NaN", "Infinity", '"s"', '""',
        "[]", "{}", "[1, [2, [3]]]", '{"a": {"b": null}}', '"\\u00e9\\u4e2d\\ud83d\\ude00"',
        '"\\u0000\\u001f"', "[" * 200 + "]" * 200,
    ]  # fmt: skip
    lines = [f'{{"text": "extra {i}", "x": {v}}}' for i, v in enumerate(extras)]
    lines += [
        '{"text": "all extras", ' + ", ".join(f'"f{i}": {v}' for i, v in enumerate(extras)) + "}",
        '{"text": "duplicate keys", "text": "the last one wins"}',
        '{"text": "a huge number", "x": ' + "1" * 5000 + "}",
        '{"text": "too deep", "x": ' + "[" * 300 + "]" * 300 + "}",
        '{"text": "far too deep", "x": ' + "[" * 30_000 + "]" * 30_000 + "}",
    ]
    put("extras.jsonl", "\n".join(lines).encode() + b"\n", len(lines))
    shapes = [
        "[1, 2]", "3", "null", '"a string"', "true", "{}", '{"text": null}',
        '{"text": ["a"]}', '{"id": 1.5, "text": "x"}', '{"id": true, "text": "x"}',
        '{"id": "", "text": "an empty id gets a derived one"}',
    ]  # fmt: skip
    put("shapes.jsonl", "\n".join(shapes).encode() + b"\n", len(shapes))
    bad_utf8 = [
        b'{"text": "\xff"}',
        b'{"text": "overlong \xc0\xaf"}',
        b'{"text": "CESU surrogate \xed\xa0\x80"}',
        b'{"text": "cut \xe4\xb8"}',
        '{"text": "中文文本"}'.encode(),
    ]
    put("utf8.jsonl", b"\n".join(bad_utf8) + b"\n", len(bad_utf8))
    giant = b'{"text": "' + b"x" * (3 * MAX_LINE) + b'"}'
    put("huge.jsonl", good_lines("h1", 1) + giant + b"\n" + good_lines("h2", 1) + giant, 4)
    put("empty.jsonl", b"", 1)
    put("blank.jsonl", b"\n   \n\t\n", 3)
    put("nonl.jsonl", good_lines("nonl", 2).rstrip(b"\n"), 2)
    put("fake.jsonl.gz", good_lines("fake", 3), 1)  # not gzip data: unreadable from line 1
    (d / "fifo.jsonl").unlink(missing_ok=True)
    os.mkfifo(d / "fifo.jsonl")
    expect["fifo.jsonl"] = 1
    os.symlink(d / "nowhere.jsonl", d / "dangling.jsonl")
    expect["dangling.jsonl"] = 1
    os.symlink(d / "self.jsonl", d / "self.jsonl")
    expect["self.jsonl"] = 1
    return expect


def write_compressed_inputs(d: Path) -> dict[str, int]:
    """Truncated and corrupt .gz/.zst/.bz2 files, cut at several points."""
    expect = {}
    data = good_lines("z", 3000)
    for kind, compress in CODECS.items():
        packed = compress(data)
        for label, cut in (("10", 0.1), ("50", 0.5), ("90", 0.9)):
            blob = packed[: int(len(packed) * cut)]
            (d / f"cut{label}.jsonl.{kind}").write_bytes(blob)
            expect[f"cut{label}.jsonl.{kind}"] = rows_of_damaged(plain_prefix(kind, blob))
        (d / f"cut_last.jsonl.{kind}").write_bytes(packed[:-1])
        expect[f"cut_last.jsonl.{kind}"] = rows_of_damaged(plain_prefix(kind, packed[:-1]))
        middle = len(packed) // 2
        corrupt = packed[:middle] + bytes(64) + packed[middle + 64 :]
        path = d / f"corrupt.jsonl.{kind}"
        path.write_bytes(corrupt)
        expect[path.name] = rows_of_damaged(delivered(path))
        (d / f"two.jsonl.{kind}").write_bytes(compress(data[:50_000]) + compress(data[50_000:]))
        expect[f"two.jsonl.{kind}"] = 3000  # concatenated members/frames: all of it
    return expect


def write_parquet_inputs(d: Path) -> dict[str, int]:
    expect = {}
    pq.write_table(pa.table({"text": [1, 2, 3]}), d / "int_text.parquet")
    expect["int_text.parquet"] = 3
    pq.write_table(pa.table({"text": pa.array([b"a", b"b"], pa.binary())}), d / "bin.parquet")
    expect["bin.parquet"] = 2
    strings = pa.array([b"fine", b"\xff\xfe", b"also fine", b"ok"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": strings}), d / "bad_utf8.parquet")
    expect["bad_utf8.parquet"] = 4
    rows = pa.table({"text": [f"row {i} " * 20 for i in range(30)]})
    pq.write_table(rows, d / "groups.parquet", row_group_size=10, compression="none")
    column = pq.ParquetFile(d / "groups.parquet").metadata.row_group(1).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    blob = bytearray((d / "groups.parquet").read_bytes())
    blob[start : start + column.total_compressed_size] = b"\xff" * column.total_compressed_size
    (d / "groups.parquet").write_bytes(bytes(blob))
    expect["groups.parquet"] = 30
    pq.write_table(rows, d / "cut.parquet")
    (d / "cut.parquet").write_bytes((d / "cut.parquet").read_bytes()[:-20])
    expect["cut.parquet"] = 1
    typed = pa.table(
        {
            "text": ["typed extras"],
            "when": pa.array([0], pa.timestamp("s", tz="UTC")),
            "price": pa.array([1], pa.decimal128(5, 2)),
            "blob": pa.array([b"\x00\xff"], pa.binary()),
            "tags": pa.array([{"a": [1, 2]}]),
            "pairs": pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())),
        }
    )
    pq.write_table(typed, d / "typed.parquet")
    expect["typed.parquet"] = 1
    return expect


def write_text_inputs(d: Path, separated: Path) -> dict[str, int]:
    expect = {}
    (d / "nul.txt").write_bytes(b"text with \x00 a NUL byte\n")
    expect["nul.txt"] = 1
    (d / "bom.txt").write_bytes(b"\xef\xbb\xbfone document after a BOM\n")
    expect["bom.txt"] = 1
    (d / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    expect["latin1.txt"] = 1
    (d / "empty.txt").write_bytes(b"")
    expect["empty.txt"] = 1
    (separated / "paras.txt").write_bytes(b"piece one\n\npiece \x00 two\n\n\n\npiece three\n")
    expect["paras.txt"] = 3
    (separated / "crlf.txt").write_bytes(b"p1\r\nstill p1\r\n\r\np2\r\n\r\n\r\np3")
    expect["crlf.txt"] = 3
    (separated / "blank.txt").write_bytes(b"\n\n\n   \n\n")
    expect["blank.txt"] = 1
    return expect


def hostile_corpus(root: Path) -> tuple[list[SourceConfig], dict[str, int]]:
    plain, separated = root / "plain", root / "separated"
    plain.mkdir(parents=True)
    separated.mkdir()
    expect = write_jsonl_inputs(plain)
    expect |= write_compressed_inputs(plain)
    expect |= write_parquet_inputs(plain)
    expect |= write_text_inputs(plain, separated)
    odd = os.fsdecode(b"caf\xe9.jsonl")  # a file name that is not UTF-8
    (plain / odd).write_bytes(good_lines("odd", 2))
    expect[odd] = 2
    sources = [
        SourceConfig(path=str(plain), name="plain"),
        SourceConfig(path=str(separated), name="separated", separator="\n\n"),
    ]
    return sources, expect


def read_all(sources: list[SourceConfig], shard_mb: float = 16.0) -> list[Doc | Drop]:
    records: list[Doc | Drop] = []
    for shard in plan_shards(sources, shard_mb):
        records += list(ShardReader(shard, MAX_LINE))
    return records


def file_of(record: Doc | Drop) -> str:
    return Path(record.location.rsplit(":", 1)[0]).name


def test_every_hostile_line_is_one_record_with_location_and_reason(tmp_path):
    sources, expect = hostile_corpus(tmp_path)
    records = read_all(sources)
    per_file = Counter(file_of(r) for r in records)
    assert per_file == Counter({safe_str(name): n for name, n in expect.items()})
    assert len(records) == sum(expect.values())
    for drop in (r for r in records if isinstance(r, Drop)):
        path, line = drop.location.rsplit(":", 1)
        assert path.startswith(str(tmp_path)) and line.isdigit()
        assert drop.step == "read" and drop.reason and drop.detail

    docs = Counter(file_of(r) for r in records if isinstance(r, Doc))
    assert docs["nul_start.jsonl"] == 100  # the NUL costs line 1 only
    assert docs["bom.jsonl"] == 3 and docs["crlf.jsonl"] == 5 and docs["nonl.jsonl"] == 2
    assert docs["surrogates.jsonl"] == 2
    assert docs["paras.txt"] == 2 and docs["crlf.txt"] == 3 and docs["typed.parquet"] == 1
    assert docs["groups.parquet"] == 20 and docs["bad_utf8.parquet"] == 3
    for kind in CODECS:
        assert docs[f"two.jsonl.{kind}"] == 3000
    texts = {r.text for r in records if isinstance(r, Doc)}
    assert {"a real pair 😀", "an escaped backslash \\ud800 is literal text"} <= texts
    assert "one document after a BOM\n" in texts
    assert {"p1\nstill p1", "p2", "p3"} <= texts


def test_reasons_of_the_hostile_kinds(tmp_path):
    sources, _ = hostile_corpus(tmp_path)
    records = read_all(sources)
    reasons: dict[str, Counter] = {}
    for r in records:
        reasons.setdefault(file_of(r), Counter())[getattr(r, "reason", "doc")] += 1
    assert reasons["surrogates.jsonl"] == Counter(lone_surrogate=8, doc=2)
    assert reasons["nul_start.jsonl"]["malformed_json"] == 1
    # every JSON type as an extra field is kept; a 5000-digit number and 30,000 levels of
    # nesting do not parse, and 300 levels would not survive being written back
    assert reasons["extras.jsonl"] == Counter(doc=24, malformed_json=2, too_deep=1)
    assert reasons["utf8.jsonl"] == Counter(undecodable=4, doc=1)
    assert reasons["huge.jsonl"] == Counter(line_too_long=2, doc=2)
    assert reasons["empty.jsonl"] == Counter(empty_file=1)
    assert reasons["fake.jsonl.gz"] == Counter(corrupt=1)
    for name in ("fifo.jsonl", "dangling.jsonl", "self.jsonl"):
        assert reasons[name] == Counter(unreadable_file=1)
    for kind in CODECS:
        for label in ("cut10", "cut50", "cut90", "cut_last"):
            assert reasons[f"{label}.jsonl.{kind}"]["truncated"] == 1
        corrupt = reasons[f"corrupt.jsonl.{kind}"]
        assert corrupt["corrupt"] + corrupt["truncated"] == 1
    assert reasons["groups.parquet"] == Counter(doc=20, unreadable_row=10)
    assert reasons["cut.parquet"] == Counter(unreadable_parquet=1)
    assert reasons["int_text.parquet"] == Counter(bad_type=3)
    assert reasons["nul.txt"] == Counter(binary=1) and reasons["latin1.txt"] == Counter(
        undecodable=1
    )
    assert reasons["blank.txt"] == Counter(empty_file=1)
    lone_id = next(r for r in records if getattr(r, "reason", "") == "lone_surrogate")
    assert lone_id.id == "a\\ud800" and lone_id.location.endswith("surrogates.jsonl:1")


def test_every_record_can_be_written_to_parquet(tmp_path):
    sources, _ = hostile_corpus(tmp_path / "in")
    records = read_all(sources)
    docs = [layout.doc_row(r) for r in records if isinstance(r, Doc)]
    drops = [layout.drop_row(r) for r in records if isinstance(r, Drop)]
    for rows, schema, name in (
        (docs, layout.WORK_SCHEMA, "docs"),
        (drops, layout.QUARANTINE_SCHEMA, "q"),
    ):
        writer = layout.PartWriter(tmp_path / f"{name}.parquet", schema, 64)
        for row in rows:
            writer.add(row)
        assert writer.close() == len(rows)
        assert pq.read_table(tmp_path / f"{name}.parquet").num_rows == len(rows)


def test_a_drop_makes_every_string_storable():
    drop = Drop("id\ud800", "text\udcff", "src\udfff", "f\udce9.jsonl:3", "read", "r", "d\ud800")
    table = pa.Table.from_pylist([layout.drop_row(drop)], schema=layout.QUARANTINE_SCHEMA)
    assert table.column("id")[0].as_py() == "id\\ud800"
    assert table.column("location")[0].as_py() == "f\\udce9.jsonl:3"


def test_files_deleted_or_truncated_after_planning(tmp_path):
    gone, shrunk = tmp_path / "gone.jsonl", tmp_path / "shrunk.jsonl"
    gone.write_bytes(good_lines("gone", 5))
    data = good_lines("shrunk", 3000)
    shrunk.write_bytes(data)
    sources = [SourceConfig(path=str(gone)), SourceConfig(path=str(shrunk))]
    shards = plan_shards(sources, 0.02)
    ranges = [(s.start, s.end) for s in shards if s.path == str(shrunk)]
    assert len(ranges) > 5
    gone.unlink()
    size = int(len(data) * 0.4) + 7  # mid-line
    shrunk.write_bytes(data[:size])
    records = [r for s in shards for r in ShardReader(s, MAX_LINE)]
    expected = 1  # the deleted file
    for start, end in ranges:
        if end <= size:
            expected += data[start:end].count(b"\n")
        else:  # the complete lines still there, then one row saying the file changed
            expected += data[start:size].count(b"\n") if start < size else 0
            expected += 1
    assert len(records) == expected
    reasons = Counter(getattr(r, "reason", "doc") for r in records)
    assert reasons["unreadable_file"] == 1
    assert reasons["file_changed"] == sum(1 for _, end in ranges if end > size)
    assert reasons["doc"] == data[:size].count(b"\n")


def test_unreadable_file_is_quarantined(tmp_path, monkeypatch):
    path = tmp_path / "locked.jsonl"
    path.write_bytes(good_lines("locked", 3))
    shards = plan_shards([SourceConfig(path=str(path))], 16)

    def refuse(p):
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr("lmforge.data.readers.open_binary", refuse)
    (record,) = [r for s in shards for r in ShardReader(s, MAX_LINE)]
    assert (record.reason, record.detail) == ("unreadable_file", "Permission denied")
    assert record.location == f"{path}:0"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_permissions_are_quarantined(tmp_path):
    path = tmp_path / "locked.jsonl"
    path.write_bytes(good_lines("locked", 3))
    path.chmod(0)
    (record,) = read_all([SourceConfig(path=str(path))])
    assert record.reason == "unreadable_file"


def test_strict_names_the_damaged_line(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    packed = gzip.compress(good_lines("s", 2000))
    path.write_bytes(packed[: len(packed) // 2])
    lines = plain_prefix("gz", path.read_bytes()).count(b"\n")
    with pytest.raises(UserError, match=rf"cut\.jsonl\.gz:{lines + 1}: truncated: "):
        for shard in plan_shards([SourceConfig(path=str(path))], 16):
            list(ShardReader(shard, MAX_LINE, strict=True))


def test_hf_shards_of_one_split_get_distinct_rows(tmp_path):
    root = tmp_path / "hf"
    (root / "train").mkdir(parents=True)
    (root / "dataset_dict.json").write_text('{"splits": ["train"]}')
    for k in range(2):
        table = pa.table({"text": [f"shard {k} row {i}" for i in range(3)]})
        path = str(root / "train" / f"data-0000{k}-of-00002.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    docs = read_all([SourceConfig(path=str(root))])
    assert [d.id for d in docs] == [f"hf:train:{i}" for i in range(1, 7)]
    assert docs[3].text == "shard 1 row 0" and docs[3].location == f"{root}/train:4"


def test_the_data_stage_writes_every_record_once(tmp_path):
    sources, expect = hostile_corpus(tmp_path / "in")
    cfg = DataConfig(sources=sources, steps=["normalize", "exact_dedup"], workers=1)
    result = prepare(cfg, tmp_path / "out")
    total = sum(expect.values())
    assert result["input"]["records"] == total
    rows = {
        where: layout.read_parts(tmp_path / "out" / where)
        for where in (*layout.SPLITS, "quarantine")
    }
    assert sum(t.num_rows for t in rows.values()) == total
    quarantine = rows["quarantine"].to_pylist()
    assert all(q["location"] and q["reason"] and q["step"] for q in quarantine)
    assert Counter(q["reason"] for q in quarantine)["lone_surrogate"] == 8


def test_the_data_stage_stops_when_a_record_goes_missing(tmp_path, monkeypatch):
    (tmp_path / "in.jsonl").write_bytes(good_lines("lost", 30))
    cfg = DataConfig(
        sources=[SourceConfig(path=str(tmp_path / "in.jsonl"))], steps=["normalize"], workers=1
    )
    real_write = layout.PartWriter.write

    def lose_one(self, table):
        real_write(self, table.slice(1) if self.schema == layout.OUTPUT_SCHEMA else table)

    monkeypatch.setattr(layout.PartWriter, "write", lose_one)
    with pytest.raises(RuntimeError, match=r"30 input records, but 2\d documents"):
        prepare(cfg, tmp_path / "out")
