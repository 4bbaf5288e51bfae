"""Detection and false-positive rates of the prompt-injection rules on the labelled sets.

    python bench/injection_rates.py [--dev-misses]

Reads tests/data/injection/{dev,heldout}.jsonl (rows {"lang", "label": "attack"|"benign",
"text"}), runs `InjectionDetector().find` on every row, and prints one table: per set and
language the number of rows, detection rate (attacks caught / attacks) and false-positive
rate (benign flagged / benign), then every heldout miss (and dev misses with --dev-misses)
with the rule that fired for a false positive. Also times the detector on a 100k-character
benign text, since it runs on every request.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lmforge.text.injection import InjectionDetector

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "injection"


def load(name: str) -> list[dict[str, str]]:
    lines = (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def evaluate(rows: list[dict[str, str]], detector: InjectionDetector) -> tuple[dict, list]:
    """Per language {attacks, caught, benign, flagged}, and the misses (row, what fired)."""
    stats: dict[str, dict[str, int]] = {}
    misses = []
    for row in rows:
        s = stats.setdefault(row["lang"], dict(attacks=0, caught=0, benign=0, flagged=0))
        found = detector.find(row["text"])
        if row["label"] == "attack":
            s["attacks"] += 1
            s["caught"] += found is not None
            if found is None:
                misses.append((row, None))
        else:
            s["benign"] += 1
            s["flagged"] += found is not None
            if found is not None:
                misses.append((row, found))
    return stats, misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dev-misses", action="store_true", help="list dev misses too")
    args = parser.parse_args()
    detector = InjectionDetector()
    console = Console(width=140)
    table = Table(title="prompt-injection rules: detection and false positives")
    for column in ("set", "lang", "attacks", "detection", "benign", "false positives"):
        table.add_column(column, justify="left" if column in ("set", "lang") else "right")
    all_misses = {}
    for name in ("dev", "heldout"):
        stats, all_misses[name] = evaluate(load(name), detector)
        for lang, s in sorted(stats.items()):
            table.add_row(name, lang, str(s["attacks"]), f"{s['caught'] / s['attacks']:.3f}",
                          str(s["benign"]), f"{s['flagged'] / s['benign']:.3f}")
    console.print(table)
    for name in ("dev", "heldout") if args.dev_misses else ("heldout",):
        console.print(f"{name} misses: {len(all_misses[name])}")
        for row, found in all_misses[name]:
            what = "missed attack" if found is None else f"false positive by {found[0]!r}"
            console.print(f"  [{row['lang']}] {what}: {row['text']!r}", markup=False,
                          soft_wrap=True)
    text = " ".join(r["text"] for r in load("dev") if r["label"] == "benign")
    text = (text + " ") * (100_000 // len(text) + 1)
    start = time.perf_counter()
    detector.find(text[:100_000])
    console.print(f"100k benign characters: {1000 * (time.perf_counter() - start):.1f} ms")


if __name__ == "__main__":
    main()
