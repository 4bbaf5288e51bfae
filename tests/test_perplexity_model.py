"""The perplexity step scored by an lmforge model: text like its training text scores lower."""

import json

import numpy as np

from lmforge.cli import main
from lmforge.data.layout import read_parts
from lmforge.data.perplexity import load_scorer
from test_serve_support import LINE, make_model_dir


def test_model_scores_its_kind_of_text_lower(tmp_path):
    make_model_dir(tmp_path)
    scorer = load_scorer(str(tmp_path / "model"))
    assert scorer.name == "lmforge"
    texts = [LINE * 3, "zq xv kj wq pz yx qq jj vk zx " * 3, "a", ""]
    ppl = scorer.score(texts)
    assert ppl[0] < 3 < ppl[1]  # the trained line is nearly certain, letter soup is not
    assert np.isnan(ppl[2]) and np.isnan(ppl[3])  # fewer than two tokens: nothing to score
    long = LINE * 20  # longer than the model's 128-token context: scored in windows
    assert scorer.score([long])[0] < min(5, ppl[1])


def test_perplexity_step_drops_the_least_likely_documents(tmp_path):
    make_model_dir(tmp_path / "lm")
    docs = [LINE * 3 + f" {i}" for i in range(8)] + ["zq xv kj wq pz yx qq jj vk zx " * 4]
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(docs)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = [
        "data",
        "prepare",
        str(tmp_path / "in.jsonl"),
        "-o",
        str(out),
        "--data.steps=[perplexity]",
        f"--data.perplexity.model={tmp_path / 'lm' / 'model'}",
        "--data.perplexity.max_percentile=0.8",
    ]
    assert main(args) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["steps"]["perplexity"]["in"]["dropped"] == {"high_perplexity": 1}
    dropped = [r for r in read_parts(out / "quarantine").to_pylist() if r["step"] == "perplexity"]
    assert [r["id"] for r in dropped] == ["d8"]  # the letter soup
