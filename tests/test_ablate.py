"""`lmforge ablate`: two data recipes (configs/ablate/raw.yaml and clean.yaml) train the same
tiny model on the same number of tokens and are scored on one held-out set that neither
trained on; a re-run skips the trained recipes; recipe mistakes are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from lmforge.cli import main
from lmforge.errors import UserError
from lmforge.eval.ablate import check_tokens_seen, merge
from test_train_support import TINY_MODEL, TINY_TRAIN, documents

ROOT = Path(__file__).resolve().parents[1]
RAW, CLEAN = ROOT / "configs" / "ablate" / "raw.yaml", ROOT / "configs" / "ablate" / "clean.yaml"
STEPS = 20


def corpus() -> list[dict[str, str]]:
    """Paragraphs of the stdlib docs, 40 of them twice more with other whitespace (the
    cleaning's exact dedup drops those, raw keeps them), plus junk the cleaning drops."""
    paragraphs = [p.strip() for d in documents(1000) for p in d.split("\n\n")
                  if 200 <= len(p.strip()) <= 1500][:240]
    rows = [{"id": f"doc{i}", "text": p} for i, p in enumerate(paragraphs)]
    for i, p in enumerate(paragraphs[:40]):
        rows += [{"id": f"twin{i}a", "text": p.replace(" ", "  ") + "  "},
                 {"id": f"twin{i}b", "text": "\n" + p.replace("\n", "\n\n")}]
    rows += [{"id": f"short{i}", "text": f"see section {i}."} for i in range(30)]
    rows += [{"id": f"noise{i}", "text": "#$%^&*()" * 20 + f" {i}"} for i in range(20)]
    return rows


@pytest.fixture
def config(tmp_path: Path) -> Path:
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in corpus()), encoding="utf-8")
    cfg = {
        "run": {"dir": str(tmp_path / "run")},
        "data": {"sources": [{"path": str(source)}], "workers": 1,
                 "steps": ["normalize", "length", "noise", "exact_dedup"],
                 "length": {"unit": "chars", "min": 100, "max": 100_000},
                 # Off, so raw keeps twins across splits: the held-out set must drop them.
                 "split": {"mode": "contiguous", "train": 0.7, "val": 0.1, "test": 0.2,
                           "decontaminate": False}},
        "tokenizer": {"type": "char"},
        "model": TINY_MODEL,
        "train": {**TINY_TRAIN, "max_steps": STEPS, "sample_tokens": 0},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def normalised_texts(parts: list[Path]) -> set[str]:
    return {" ".join(t.split()) for part in parts
            for t in pq.read_table(part, columns=["text"]).column("text").to_pylist()}


def test_ablate_compares_recipes_on_a_shared_heldout_set(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["ablate", "-c", str(config), "--recipe", str(RAW), "--recipe", str(CLEAN)]
    assert main(args) == 0
    out = tmp_path / "run" / "ablate"
    captured = capsys.readouterr()
    assert "ablate: recipe raw (1/2)" in captured.err and "clean (2/2)" in captured.err
    result = json.loads((out / "ablation.json").read_text())
    raw, clean = result["recipes"]
    assert (raw["name"], clean["name"], result["baseline"]) == ("raw", "clean", "raw")
    assert raw["data"]["steps"] == [] and raw["data"]["split"]["mode"] == "hash"
    tokens = STEPS * TINY_TRAIN["batch_size"] * TINY_TRAIN["block_size"]
    assert raw["tokens_seen"] == clean["tokens_seen"] == tokens
    assert clean["train_tokens"] < raw["train_tokens"]  # the cleaning dropped junk and twins

    held = result["heldout"]
    assert held["recipe"] == "clean"  # the recipe with the base config's own data section
    assert held["removed_in_a_train_split"] > 0  # raw's twins of clean's test documents
    assert 0 < held["other_form"]["raw"] <= held["docs"]  # normalize rewrote their whitespace
    assert "favours a model trained on that form" in captured.out
    texts = [json.loads(line)["text"] for line in (out / "heldout.jsonl").open()]
    assert len(texts) == held["docs"] > 5
    trained = normalised_texts(list(out.glob("*/data/train/*.parquet")))
    assert trained and not {" ".join(t.split()) for t in texts} & trained

    for row in (raw, clean):
        h = row["heldout"]
        assert 0 < h["bpb_low"] <= h["bits_per_byte"] <= h["bpb_high"]
        assert h["loss_per_token"] > 0 and h["tokens"] > 0
    paired = clean["vs_baseline"]
    assert raw["vs_baseline"] is None and paired["n"] == held["docs"]
    assert paired["low"] <= paired["diff"] <= paired["high"] and paired["low"] < paired["high"]
    diff = clean["heldout"]["bits_per_byte"] - raw["heldout"]["bits_per_byte"]
    assert paired["diff"] == pytest.approx(diff)
    assert len(result["verdicts"]) == 1 and result["verdicts"][0] in captured.out

    page = (out / "ablation.html").read_text()
    assert result["verdicts"][0] in page and "data:image/png;base64," in page
    assert "http" not in page.replace("<!doctype html>", "")  # nothing fetched from a network
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"

    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("pretrain: up to date, skipped") == 2 and "running" not in err


def bad_recipe(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "recipes" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(("name", "text", "message"), [
    ("list.yaml", "- steps\n", "must hold a mapping"),
    ("typo.yaml", "data: {stepz: []}\n", "unknown key 'data.stepz'"),
    ("bad.yaml", "data: {steps: [nope]}\n", "unknown step 'nope'"),
    ("model.yaml", "model: {dim: 64}\n", "sets model; a recipe changes only the data"),
    ("split.yaml", "data: {split: {seed: 3}}\n", "sets data.split.seed"),
    ("broken.yaml", "data: {steps: [\n", "is not valid YAML"),
])
def test_a_bad_recipe_is_a_one_line_error(config: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture, name: str, text: str,
                                          message: str) -> None:
    recipe = bad_recipe(tmp_path, name, text)
    assert main(["ablate", "-c", str(config), "--recipe", str(RAW), "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(recipe) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything trained


@pytest.mark.parametrize(("extra", "message"), [
    (["--recipe", "missing.yaml"], "recipe file missing.yaml not found"),
    (["--recipe", str(RAW)], "two recipes are named 'raw'"),
    (["--heldout", "nope"], "--heldout 'nope' is not a recipe"),
    (["--data.split.test=0", "--data.split.train=0.9"], "no held-out set"),
    (["--train.early_stop_patience=2"], "different numbers of tokens"),
])
def test_a_bad_ablation_is_a_one_line_error(config: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture, extra: list[str],
                                            message: str) -> None:
    args = ["ablate", "-c", str(config), "--recipe", str(RAW), "--recipe", str(CLEAN), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_recipe_merges_mappings_and_replaces_lists() -> None:
    base = {"data": {"steps": ["normalize", "length"], "length": {"min": 5, "max": 9}}}
    over = {"data": {"steps": [], "length": {"min": 1}}}
    assert merge(base, over) == {"data": {"steps": [], "length": {"min": 1, "max": 9}}}
    assert base["data"]["steps"] == ["normalize", "length"]  # the base is left as it was


def test_recipes_that_trained_on_different_token_counts_are_refused() -> None:
    check_tokens_seen({"raw": {"tokens_seen": 2560}, "clean": {"tokens_seen": 2560}})
    with pytest.raises(UserError, match="different numbers of tokens"):
        check_tokens_seen({"raw": {"tokens_seen": 2560}, "clean": {"tokens_seen": 1280}})
