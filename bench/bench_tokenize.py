"""Encoding throughput of `lmforge tokenize` against a plain HF `encode_batch` loop.

    python bench/bench_tokenize.py [--mb 60] [--workers 2] [--repeats 2]

Builds a data-stage-shaped corpus of at least --mb MB in bench/_work/tokenize from
/work/shared/data/tinyshakespeare.txt (or --shakespeare), the Python docs topics and the
standard library's docstrings (shuffled rounds of them up to the size), trains a byte-level BPE with
vocabulary 8192 through lmforge, then measures, each side in its own process and
alternating --repeats times (best kept, the machines are shared):

- peer: one process looping over the same HF tokenizer's `encode_batch` (which runs 2
  threads), writing ids + eos per document to a file, like a nanoGPT prepare script;
- ours: the whole `lmforge tokenize --workers N` command (startup, the equality check,
  encoding, assembly, checksums), plus its encode phase alone from the manifest;
- token identity of both outputs, peak memory (PSS summed over the process tree, so pages
  workers share with their parent count once), and ours on a quarter of the input to show
  memory does not grow with the input;
- tiktoken's own gpt2 encoding, which downloads its vocabulary at first use (offline it
  cannot run, and the output says so).

Prints `name: ours=X peer=Y ratio=Z` lines.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import re
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "tokenize"
SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")


def corpus_documents(shakespeare: Path) -> list[str]:
    """Unique documents: Shakespeare in 40-line pieces, docs topics, stdlib docstrings."""
    import pydoc_data.topics

    lines = shakespeare.read_text(encoding="utf-8").splitlines(keepends=True)
    docs = ["".join(lines[i : i + 40]) for i in range(0, len(lines), 40)]
    for topic in pydoc_data.topics.topics.values():
        paragraphs = topic.split("\n\n")
        docs += ["\n\n".join(paragraphs[i : i + 6]) for i in range(0, len(paragraphs), 6)]
    docstring = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', re.S)
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        found = [inspect.cleandoc(a or b) for a, b in docstring.findall(source)]
        found = [text for text in found if len(text.split()) >= 5]
        if found and "site-packages" not in path.parts:
            docs.append("\n\n".join(found))
    return docs


def write_corpus(data_dir: Path, docs: list[str], target_bytes: float, part_bytes: float) -> int:
    """Shuffled rounds of the documents until target_bytes; returns the text bytes written."""
    rng = random.Random(0)
    rows, total, size, part = [], 0, 0, 0
    (data_dir / "train").mkdir(parents=True, exist_ok=True)

    def flush() -> None:
        nonlocal rows, size, part
        table = pa.table(
            {
                "id": [str(total - len(rows) + i) for i in range(len(rows))],
                "text": rows,
                "source": ["bench"] * len(rows),
            }
        )
        pq.write_table(table, data_dir / "train" / f"part-{part:05d}.parquet", row_group_size=1024)
        rows, size, part = [], 0, part + 1

    while total < target_bytes:
        for text in rng.sample(docs, len(docs)):
            rows.append(text)
            n = len(text.encode("utf-8"))
            total, size = total + n, size + n
            if size >= part_bytes:
                flush()
            if total >= target_bytes:
                break
    if rows:
        flush()
    return total


def tree_memory(root: int) -> int:
    """Proportional set size (shared pages split among sharers) of a process tree, in bytes:
    plain RSS would count the pages forked workers share with their parent several times."""
    total, frontier = 0, [root]
    while frontier:
        pid = frontier.pop()
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        total += next(
            int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:")
        )
        frontier += [int(child) for child in children]
    return total


def measured(command: list[str]) -> tuple[float, int, str]:
    """Run a command; its wall seconds, peak tree memory (sampled every 20 ms) and stdout."""
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_memory(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.monotonic() - started
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{err[-2000:]}")
    return seconds, peak[0], out


def baseline(data_dir: Path, tok_dir: Path, out_file: Path) -> None:
    """The peer: a plain loop over HF encode_batch; prints its encode-loop seconds."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    eos = tok.token_to_id("<|eos|>")
    started = time.monotonic()
    with open(out_file, "wb") as out:
        for part in sorted((data_dir / "train").glob("*.parquet")):
            for batch in pq.ParquetFile(part).iter_batches(batch_size=1024, columns=["text"]):
                for encoding in tok.encode_batch(
                    batch.column(0).to_pylist(), add_special_tokens=False
                ):
                    out.write(np.array([*encoding.ids, eos], dtype=np.uint16).tobytes())
    print(json.dumps({"seconds": time.monotonic() - started}))


def tiktoken_gpt2() -> str:
    code = "import tiktoken; tiktoken.get_encoding('gpt2').encode('hello'); print('ok')"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "unavailable offline: gpt2 vocabulary download timed out after 60 s"
    if done.returncode == 0:
        return "available"
    reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "unknown error"
    return f"unavailable offline: it downloads its vocabulary at first use ({reason[:160]})"


def ours(data_dir: Path, tok_dir: Path, out: Path, workers: int) -> tuple[float, int, dict]:
    command = [
        sys.executable,
        "-m",
        "lmforge",
        "tokenize",
        str(data_dir),
        "--tokenizer",
        str(tok_dir),
        "-o",
        str(out),
        "--workers",
        str(workers),
    ]
    seconds, rss, _ = measured(command)
    return seconds, rss, json.loads((out / "manifest.json").read_text())["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=60.0, help="corpus size (default 60 MB)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shakespeare", type=Path, default=SHAKESPEARE)
    args = parser.parse_args()
    if not args.shakespeare.is_file():
        raise SystemExit(f"{args.shakespeare} not found; pass --shakespeare PATH")

    from lmforge.tokenizer.config import TokenizerConfig
    from lmforge.tokenizer.train import train_and_save

    docs = corpus_documents(args.shakespeare)
    unique = sum(len(d.encode("utf-8")) for d in docs)
    sizes = {"full": args.mb * 1e6, "quarter": args.mb * 1e6 / 4}
    data, total = {}, {}
    for name, target in sizes.items():
        data[name] = WORK / f"data-{name}"
        if not (data[name] / "train").is_dir():
            write_corpus(data[name], docs, target, part_bytes=8e6)
        total[name] = sum(
            len(t.encode("utf-8"))
            for p in sorted((data[name] / "train").glob("*.parquet"))
            for t in pq.read_table(p, columns=["text"])["text"].to_pylist()
        )
    print(
        f"corpus: {total['full'] / 1e6:.1f} MB in {len(docs):,} unique documents of "
        f"{unique / 1e6:.1f} MB (Shakespeare, Python docs topics, stdlib docstrings), "
        "in shuffled rounds"
    )
    tok_dir = WORK / "tokenizer"
    stats = train_and_save(TokenizerConfig(vocab_size=8192, max_train_mb=20), data["full"], tok_dir)
    print(f"tokenizer: byte-level BPE, vocab 8192, {stats['train_mb']} MB in {stats['seconds']}s")

    best: dict[str, list] = {"peer": [], "ours": []}
    for _ in range(args.repeats):
        peer_file = WORK / "peer.bin"
        seconds, rss, out = measured(
            [sys.executable, __file__, "_baseline", str(data["full"]), str(tok_dir), str(peer_file)]
        )
        best["peer"].append((seconds, rss, json.loads(out)["seconds"]))
        seconds, rss, metrics = ours(data["full"], tok_dir, WORK / "tokens", args.workers)
        best["ours"].append((seconds, rss, metrics))
    peer_wall, peer_rss, peer_loop = min(best["peer"], key=lambda r: r[0])
    ours_wall, ours_rss, metrics = min(best["ours"], key=lambda r: r[0])
    _, small_rss, _ = ours(data["quarter"], tok_dir, WORK / "tokens-quarter", args.workers)

    mb = total["full"] / 1e6
    line("tokenize_MBps_whole_command", mb / ours_wall, mb / peer_wall)
    line("tokenize_MBps_encode_phase", metrics["encode_mb_per_s"], mb / peer_loop)
    line("peak_memory_MB", ours_rss / 1e6, peer_rss / 1e6)
    line(
        "peak_memory_MB_quarter_vs_full_input",
        small_rss / 1e6,
        ours_rss / 1e6,
        labels=("quarter", "full"),
    )
    ours_tokens = np.memmap(WORK / "tokens" / "train.bin", dtype=np.uint16, mode="r")
    peer_tokens = np.memmap(WORK / "peer.bin", dtype=np.uint16, mode="r")
    same = len(ours_tokens) == len(peer_tokens) and bool(np.array_equal(ours_tokens, peer_tokens))
    print(f"token_identity: ours={len(ours_tokens):,} peer={len(peer_tokens):,} identical={same}")
    print(f"engine: {metrics['engine']}, workers={metrics['workers']}, shards={metrics['shards']}")
    print(f"tiktoken_gpt2: {tiktoken_gpt2()}")


def line(
    name: str, ours_value: float, peer_value: float, labels: tuple[str, str] = ("ours", "peer")
) -> None:
    print(
        f"{name}: {labels[0]}={ours_value:.2f} {labels[1]}={peer_value:.2f} "
        f"ratio={ours_value / peer_value:.2f}"
    )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "_baseline":
        baseline(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
