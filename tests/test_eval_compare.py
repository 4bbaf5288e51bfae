"""`lmforge compare A B` on evaluations built by hand with known answers: the paired
verdict, the every-metric rule, small-n warnings, and refusing unpaired examples."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmforge.cli import main


def write_eval(out: Path, correct: list[int], lls: list[float] | None = None) -> Path:
    """An eval dir with an accuracy task (and a perplexity task when `lls` is given)."""
    (out / "samples").mkdir(parents=True)
    tasks = {}
    mc = [{"doc_id": i, "doc": {"q": i}, "target": 0, "scores": {"acc": float(c)}}
          for i, c in enumerate(correct)]
    tasks["mc"] = {"metrics": {"acc": {"value": sum(correct) / len(correct), "stderr": 0.0,
                                       "lower_is_better": False}}, "samples": "samples/mc.jsonl"}
    (out / "samples" / "mc.jsonl").write_text("".join(json.dumps(s) + "\n" for s in mc))
    if lls is not None:
        rows = [[ll, 10, 50] for ll in lls]
        ppl = [{"doc_id": i, "text": f"doc {i}", "stats": {"bits_per_byte": r}}
               for i, r in enumerate(rows)]
        bpb = -sum(lls) / (50 * len(lls)) / math.log(2)
        tasks["ppl"] = {"metrics": {"bits_per_byte": {"value": bpb, "stderr": 0.0,
                                                      "lower_is_better": True}},
                        "samples": "samples/ppl.jsonl"}
        (out / "samples" / "ppl.jsonl").write_text("".join(json.dumps(s) + "\n" for s in ppl))
    (out / "results.json").write_text(json.dumps({"model": str(out), "tasks": tasks}))
    return out


def compare(tmp_path: Path, a: Path, b: Path, capsys, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "cmp.json"
    assert main(["compare", str(a), str(b), "-o", str(out), "--iters", "2000", *extra]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def test_a_clearly_better_b_replaces_a(tmp_path, capsys):
    a = [1] * 100 + [0] * 100
    b = [1] * 140 + [0] * 60  # right wherever A was, and on 40 more
    result, out = compare(tmp_path, write_eval(tmp_path / "a", a), write_eval(tmp_path / "b", b),
                          capsys)
    assert result["replace"] and out.strip().splitlines()[-1].startswith("B replaces A")
    row = result["metrics"][0]
    assert row["metric"] == "mc/acc" and math.isclose(row["diff"], 0.2)
    assert row["ci"][0] > 0 and row["p_mcnemar"] < 1e-9  # exact-ish: 40 discordant, all for B


def test_b_must_be_better_on_every_metric(tmp_path, capsys):
    a = [1] * 100 + [0] * 100
    b = [1] * 140 + [0] * 60
    worse = [-60.0 - (i % 7) for i in range(200)]
    better = [ll + 5.0 for ll in worse]  # A's documents are more likely: B's bits-per-byte is worse
    result, out = compare(tmp_path, write_eval(tmp_path / "a", a, better),
                          write_eval(tmp_path / "b", b, worse), capsys)
    assert not result["replace"]
    assert out.strip().splitlines()[-1].startswith("keep A: not better on ppl/bits_per_byte")
    bpb = next(r for r in result["metrics"] if r["metric"] == "ppl/bits_per_byte")
    assert bpb["lower_is_better"] and bpb["diff"] > 0 and bpb["ci"][0] > 0


def test_a_tie_keeps_a_and_few_examples_are_flagged(tmp_path, capsys):
    a = [1, 0] * 5
    result, _ = compare(tmp_path, write_eval(tmp_path / "a", a),
                        write_eval(tmp_path / "b", list(reversed(a))), capsys)
    assert not result["replace"] and result["warnings"]
    assert "too few to decide" in result["warnings"][0]


def test_unpaired_examples_are_refused(tmp_path, capsys):
    a = write_eval(tmp_path / "a", [1, 0, 1])
    b = write_eval(tmp_path / "b", [1, 0, 1, 1])
    assert main(["compare", str(a), str(b)]) == 2
    assert "scored different examples" in capsys.readouterr().err


@pytest.mark.parametrize("confidence", ["1.5", "0.2"])
def test_a_confidence_out_of_range_is_one_line(tmp_path, capsys, confidence):
    a = write_eval(tmp_path / "a", [1, 0])
    assert main(["compare", str(a), str(a), "--confidence", confidence]) == 2
    assert "--confidence" in capsys.readouterr().err
