"""`data prepare` end to end: nothing lost, dedup, splits, resume after kill -9, inspection."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from pydoc_data.topics import topics

import pyarrow.parquet as pq
import pytest

from lmforge.cli import main
from lmforge.data.layout import QUARANTINE, SPLITS, read_parts
from lmforge.outputs import claim

FAST_STEPS = "[normalize,length,pii,exact_dedup,near_dedup]"


def english_docs(n: int, words: int = 180) -> list[str]:
    """Real English prose: consecutive pieces of the pydoc topics."""
    text = " ".join(" ".join(topics[k].split()) for k in sorted(topics))
    tokens = text.split()
    docs = [" ".join(tokens[i * words : (i + 1) * words]) for i in range(n)]
    assert all(len(d.split()) == words for d in docs)
    return docs


def write_corpus(path: Path, n: int = 120) -> dict:
    """A JSONL file of real documents with planted duplicates and bad lines."""
    docs = english_docs(n)
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(docs)]
    planted = {
        "exact": (f"d{n}", docs[3]),
        "reflowed": (f"d{n + 1}", "  \n".join(docs[5].split(" ", 40))),
        "edited": (f"d{n + 2}", docs[7].replace(docs[7].split()[50], "banana", 1)),
        "footer": (f"d{n + 3}", docs[9] + "\nCopyright 2024 Example Corp. All rights reserved."),
    }
    lines += [json.dumps({"id": i, "text": t}) for i, t in planted.values()]
    lines += ['{"text": broken', "[1]", '{"no_text": 1}']
    path.write_text("\n".join(lines) + "\n")
    return {"lines": len(lines), "planted": planted}


def prepare(inputs, out, *extra) -> int:
    return main(["data", "prepare", *map(str, inputs), "-o", str(out), *extra])


def all_rows(out: Path) -> dict:
    return {where: read_parts(out / where).to_pylist() for where in (*SPLITS, QUARANTINE)}


def part_bytes(out: Path) -> dict:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for where in (*SPLITS, QUARANTINE)
        for p in sorted((out / where).glob("part-*.parquet"))
    }


def test_nothing_lost_and_duplicates_removed(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "in.jsonl")
    out = tmp_path / "out"
    assert (
        prepare(
            [tmp_path / "in.jsonl"],
            out,
            f"--data.steps={FAST_STEPS}",
            "--workers=2",
            "--data.shard_mb=0.05",
        )
        == 0
    )
    rows = all_rows(out)
    assert sum(len(r) for r in rows.values()) == corpus["lines"]  # every line, exactly once
    ids = [r["id"] for where in SPLITS for r in rows[where]]
    assert len(ids) == len(set(ids))
    dropped = {r["id"]: r for r in rows[QUARANTINE] if r["id"]}
    for kind, (doc_id, _) in corpus["planted"].items():
        assert doc_id in dropped, kind
        assert dropped[doc_id]["reason"] in ("exact_duplicate", "near_duplicate")
    assert dropped["d120"]["duplicate_of"] == "d3"
    assert dropped["d121"]["reason"] == "exact_duplicate"  # reflowed whitespace
    assert dropped["d122"]["reason"] == "near_duplicate" and dropped["d122"]["duplicate_of"] == "d7"
    bad = [r for r in rows[QUARANTINE] if r["step"] == "read"]
    assert sorted(r["reason"] for r in bad) == ["malformed_json", "missing_text", "not_an_object"]
    assert all(r["location"].startswith(str(tmp_path / "in.jsonl") + ":") for r in bad)

    stats = json.loads((out / "stats.json").read_text())
    assert stats["dedup"]["exact_removed"] == 2
    # the planted pairs, plus any passages the pydoc topics themselves repeat
    assert stats["dedup"]["near_removed"] >= 2
    assert stats["summary"]["near_dedup"]["cluster_sizes"]["2"] >= 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "data"
    assert {f["path"] for f in manifest["files"]} >= {"stats.json", "report.html", "funnel.png"}
    assert not (out / "_work").exists()
    capsys.readouterr()

    assert main(["data", "stats", str(out)]) == 0
    assert "near_dedup" in capsys.readouterr().out
    assert main(["data", "show", str(out), "--reason", "near_dup", "-n", "5"]) == 0
    shown = capsys.readouterr().out
    assert "d122" in shown and "kept: d7" in shown and "banana" in shown


def test_same_output_with_one_or_two_workers(tmp_path):
    write_corpus(tmp_path / "in.jsonl", n=80)
    for workers in (1, 2):
        assert (
            prepare(
                [tmp_path / "in.jsonl"],
                tmp_path / f"w{workers}",
                f"--workers={workers}",
                f"--data.steps={FAST_STEPS}",
                "--data.shard_mb=0.03",
            )
            == 0
        )
    one, two = part_bytes(tmp_path / "w1"), part_bytes(tmp_path / "w2")
    assert one and one == two


def test_resume_after_kill9_gives_identical_output(tmp_path):
    docs = english_docs(600, words=100)
    with open(tmp_path / "in.jsonl", "w") as f:
        for i, t in enumerate(docs):
            f.write(json.dumps({"id": f"d{i}", "text": t}) + "\n")
    args = ["--workers=2", "--data.shard_mb=0.02", f"--data.steps={FAST_STEPS}"]
    assert prepare([tmp_path / "in.jsonl"], tmp_path / "whole", *args) == 0

    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "lmforge",
        "data",
        "prepare",
        str(tmp_path / "in.jsonl"),
        "-o",
        str(out),
        *args,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / "_work").glob("done-0000[3-9].json")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list((out / "_work").glob("done-*.json")))
    shards = len(list((tmp_path / "whole" / "train").glob("part-*")))
    assert 0 < finished < shards, "the kill should land mid-run"

    assert prepare([tmp_path / "in.jsonl"], out, *args, "--resume") == 0
    assert part_bytes(out) == part_bytes(tmp_path / "whole")


def test_resume_refuses_a_changed_config(tmp_path, capsys):
    write_corpus(tmp_path / "in.jsonl", n=20)
    out = tmp_path / "out"
    claim(out, "data", clear=False)  # as the interrupted run did before writing anything
    work = out / "_work"
    work.mkdir(parents=True)
    (work / "plan.json").write_text('{"fingerprint": "from another config"}')
    assert prepare([tmp_path / "in.jsonl"], out, "--resume") == 2
    assert "config or the inputs changed" in capsys.readouterr().err


def test_contiguous_split_cuts_one_long_text_like_nanogpt(tmp_path):
    text = "\n\n".join(topics[k] for k in sorted(topics)[:20])
    (tmp_path / "book.txt").write_text(text)
    out = tmp_path / "out"
    assert (
        prepare(
            [tmp_path / "book.txt"],
            out,
            "--data.steps=[]",
            "--data.split.mode=contiguous",
            "--data.split.train=0.9",
            "--data.split.val=0.1",
            "--data.split.test=0",
        )
        == 0
    )
    train = read_parts(out / "train").to_pylist()
    val = read_parts(out / "val").to_pylist()
    assert len(train) == len(val) == 1
    cut = int(len(text) * 0.9)
    assert train[0]["text"] == text[:cut] and val[0]["text"] == text[cut:]
    assert train[0]["id"] == "book#train"


def test_decontamination_removes_train_docs_that_leak_into_val_or_test(tmp_path):
    docs = english_docs(200)
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(docs)]
    lines += [json.dumps({"id": f"copy{i}", "text": t + " extra"}) for i, t in enumerate(docs)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert prepare([tmp_path / "in.jsonl"], out, "--data.steps=[normalize]") == 0
    rows = all_rows(out)
    split_of = {r["id"]: s for s in SPLITS for r in rows[s]}
    leaks = [r for r in rows[QUARANTINE] if r["reason"] == "split_leak"]
    assert leaks
    for i in range(len(docs)):
        pair = [split_of.get(f"d{i}"), split_of.get(f"copy{i}")]
        present = [s for s in pair if s]
        assert len(set(present)) <= 1  # never in two different splits


def test_diff_between_two_versions(tmp_path, capsys):
    write_corpus(tmp_path / "in.jsonl", n=60)
    assert prepare([tmp_path / "in.jsonl"], tmp_path / "a", f"--data.steps={FAST_STEPS}") == 0
    assert prepare([tmp_path / "in.jsonl"], tmp_path / "b", "--data.steps=[normalize]") == 0
    capsys.readouterr()
    assert main(["data", "diff", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "added" in out and "per-source share" in out


def test_inspect_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "stats", str(tmp_path)]) == 2
    assert "not a finished data-stage output" in capsys.readouterr().err
    assert main(["data", "prepare"]) == 2
    assert main(["data", "prepare", "x.jsonl"]) == 2
    assert "needs -o OUTDIR" in capsys.readouterr().err


@pytest.mark.parametrize("count", [1])
def test_parquet_output_schema(tmp_path, count):
    write_corpus(tmp_path / "in.jsonl", n=30)
    assert prepare([tmp_path / "in.jsonl"], tmp_path / "out", "--data.steps=[normalize]") == 0
    part = sorted((tmp_path / "out" / "train").glob("part-*.parquet"))[0]
    names = pq.read_schema(part).names
    assert names[:3] == ["id", "text", "source"] and "meta" in names
