"""`lmforge eval`: local task files scored as lm-evaluation-harness's hf backend scores them
(checked against lm-eval itself on the export), the same with any batch size, offline."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.errors import UserError
from lmforge.eval.loglik import rolling_windows
from lmforge.eval.tasks import load_task
from test_serve_support import make_model_dir

QUESTIONS = [("the quick brown", ["fox", "dog", "cat"], 0),
             ("jumps over the", ["lazy", "fox", "red"], 0),
             ("the lazy", ["dog", "fox", "brown"], 0), ("a red", ["fox", "dog", "the"], 1)]


def write_tasks(root: Path) -> dict[str, Path]:
    """A multiple-choice, a generation and a perplexity task, each a YAML beside its JSONL."""
    mc = [{"question": q, "choices": c, "answer": a, "id": i}
          for i, (q, c, a) in enumerate(QUESTIONS * 3)]
    gen = [{"prompt": q, "answer": c[a]} for q, c, a in QUESTIONS]
    text = [{"text": "the quick brown fox jumps over the lazy dog. " * 12},
            {"text": "a red fox and a brown dog"}, {"text": "über naïve café 北京"}]
    for name, rows in (("mc", mc), ("gen", gen), ("ppl", text)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows),
                                            encoding="utf-8")
    files = {"mc": """task: toy_mc
output_type: multiple_choice
dataset_path: json
dataset_kwargs: {data_files: {test: mc.jsonl}}
test_split: test
doc_to_text: "Say: {{question}}"
doc_to_target: answer
doc_to_choice: choices
metric_list: [{metric: acc}, {metric: acc_norm}, {metric: macro_f1}]
""", "gen": """task: toy_gen
output_type: generate_until
dataset_path: json
dataset_kwargs: {data_files: {test: gen.jsonl}}
test_split: test
doc_to_text: "{{prompt}}"
doc_to_target: answer
generation_kwargs: {until: [".", "\\n"], max_gen_toks: 6}
metric_list: [{metric: exact_match}, {metric: bleu}, {metric: chrf}]
""", "ppl": """task: toy_ppl
output_type: loglikelihood_rolling
dataset_path: json
dataset_kwargs: {data_files: {test: ppl.jsonl}}
test_split: test
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list: [{metric: word_perplexity}, {metric: byte_perplexity}, {metric: bits_per_byte}]
"""}
    paths = {}
    for name, body in files.items():
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(body, encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A tiny model exported as an HF directory (short context: rolling windows roll), and
    the task files."""
    root = tmp_path_factory.mktemp("eval")
    model_dir = make_model_dir(root, steps=40)
    assert main(["export", str(model_dir), "-o", str(root / "export")]) == 0
    config = json.loads((root / "export" / "config.json").read_text())
    assert config["max_position_embeddings"] < 12 * 45  # the long document takes windows
    return root / "export", write_tasks(root)


def evaluate(model: Path, out: Path, *args: str) -> dict:
    assert main(["eval", str(model), "-o", str(out), *args]) == 0
    return json.loads((out / "results.json").read_text())


def values(results: dict, where: str = "tasks") -> dict[tuple[str, str], float]:
    tasks = results[where]["tasks"] if where == "harness" else results[where]
    return {(t, m): v["value"] for t, task in tasks.items()
            for m, v in (task["metrics"] if where == "tasks" else task).items()}


def test_scores_equal_lm_eval_hf_backend_on_the_export(setup, tmp_path):
    pytest.importorskip("lm_eval")
    export, tasks = setup
    specs = [str(tasks["mc"]), str(tasks["ppl"]), str(tasks["gen"])]
    results = evaluate(export, tmp_path / "out", "--tasks", *specs, "--harness", *specs,
                       "--batch-size", "3")
    ours, theirs = values(results), values(results, "harness")
    assert set(theirs) == set(ours) - {("toy_mc", "macro_f1")}  # lm-eval has no macro F1
    for key, value in theirs.items():
        assert math.isclose(ours[key], value, rel_tol=1e-6, abs_tol=1e-9), key
    assert 0 <= ours[("toy_mc", "macro_f1")] <= 1
    samples = (tmp_path / "out" / "samples" / "toy_mc.jsonl").read_text().splitlines()
    first = json.loads(samples[0])
    assert first["context"] == "Say: the quick brown" and len(first["loglikelihoods"]) == 3


def test_few_shot_contexts_equal_lm_eval_with_the_same_seed(setup, tmp_path):
    pytest.importorskip("lm_eval")
    export, tasks = setup
    results = evaluate(export, tmp_path / "out", "--tasks", str(tasks["mc"]), "--harness",
                       str(tasks["mc"]), "--num-fewshot", "2")
    ours, theirs = values(results), values(results, "harness")
    assert len(theirs) == 2
    for key, value in theirs.items():
        assert math.isclose(ours[key], value, rel_tol=1e-6), key
    context = json.loads((tmp_path / "out" / "samples" / "toy_mc.jsonl").read_text()
                         .splitlines()[0])["context"]
    assert context.count("Say:") == 3 and "\n\n" in context


def test_scores_do_not_change_with_batch_size(setup, tmp_path):
    export, tasks = setup
    specs = [str(tasks["mc"]), str(tasks["gen"]), str(tasks["ppl"])]
    one = values(evaluate(export, tmp_path / "one", "--tasks", *specs, "--batch-size", "1"))
    many = values(evaluate(export, tmp_path / "many", "--tasks", *specs, "--batch-size", "5"))
    assert one == many


def test_local_tasks_run_with_sockets_blocked(setup, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    export, tasks = setup
    results = evaluate(export, tmp_path / "out", "--tasks", str(tasks["mc"]), str(tasks["gen"]),
                       "--perplexity", str(tasks["ppl"].with_suffix(".jsonl")))
    assert set(results["tasks"]) == {"toy_mc", "toy_gen", "perplexity_ppl"}


def test_the_chat_template_wraps_each_prompt_as_a_user_turn(setup, tmp_path):
    export, tasks = setup
    evaluate(export, tmp_path / "out", "--tasks", str(tasks["mc"]), "--apply-chat-template")
    sample = json.loads((tmp_path / "out" / "samples" / "toy_mc.jsonl").read_text()
                        .splitlines()[0])
    assert sample["context"].startswith("<|bos|><|user|>\nSay: the quick brown<|end|>")
    assert sample["context"].endswith("<|assistant|>\n")


def test_rolling_windows_are_lm_evals():
    utils = pytest.importorskip("lm_eval.utils")
    for length in (1, 5, 8, 9, 16, 17, 40):
        tokens = list(range(100, 100 + length))
        theirs = [utils.make_disjoint_window(w) for w in
                  utils.get_rolling_token_windows(tokens, 7, max_seq_len=8, context_len=1)]
        assert rolling_windows(tokens, 7, 8) == [tuple(w) for w in theirs]


@pytest.mark.parametrize(("edit", "message"), [
    ({"dataset_path": "hellaswag"}, "dataset_path must be json"),
    ({"doc_to_txt": "x"}, "unknown task keys doc_to_txt"),
    ({"output_type": "ranking"}, "output_type 'ranking'"),
    ({"dataset_kwargs": {"data_files": {"test": "missing.jsonl"}}}, "missing.jsonl not found"),
])
def test_task_file_mistakes_are_one_line_errors(tmp_path, edit, message):
    import yaml

    paths = write_tasks(tmp_path)
    config = yaml.safe_load(paths["mc"].read_text())
    config.update(edit)
    paths["mc"].write_text(yaml.safe_dump(config))
    with pytest.raises(UserError, match=message) as caught:
        load_task(paths["mc"])
    assert "\n" not in str(caught.value)


def test_a_bad_data_line_names_its_file_and_line(tmp_path, capsys):
    paths = write_tasks(tmp_path)
    with (tmp_path / "mc.jsonl").open("a") as f:
        f.write("{not json\n")
    assert main(["eval", str(tmp_path), "-o", str(tmp_path / "out"), "--tasks",
                 str(paths["mc"])]) == 2
    err = capsys.readouterr().err
    assert "mc.jsonl:13: not JSON" in err and "Traceback" not in err


def test_lmforge_run_ends_with_the_eval_stage(tmp_path, capsys):
    import yaml

    from test_train_support import TINY_MODEL, TINY_TRAIN, documents

    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(documents(120)), encoding="utf-8")
    tasks = write_tasks(tmp_path)
    cfg = {"run": {"dir": str(tmp_path / "run")},
           "data": {"sources": [{"path": str(text), "format": "text"}], "steps": [],
                    "split": {"mode": "contiguous", "train": 0.9, "val": 0.1, "test": 0.0}},
           "tokenizer": {"type": "char"}, "model": TINY_MODEL,
           "train": {**TINY_TRAIN, "max_steps": 4, "eval_every": 0},
           "eval": {"tasks": [str(tasks["mc"])]}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", "-c", str(tmp_path / "cfg.yaml")]) == 0
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert set(results["tasks"]) == {"toy_mc", "perplexity_val"}  # no test split: val
    assert results["tasks"]["perplexity_val"]["metrics"]["bits_per_byte"]["value"] > 0
    assert "held-out perplexity on the val split" in capsys.readouterr().err
    assert main(["run", "-c", str(tmp_path / "cfg.yaml")]) == 0
    assert "eval: up to date, skipped" in capsys.readouterr().err
    (tmp_path / "mc.jsonl").write_text((tmp_path / "mc.jsonl").read_text().replace("fox", "cat"))
    assert main(["run", "-c", str(tmp_path / "cfg.yaml")]) == 0
    assert "eval: running (config changed" in capsys.readouterr().err  # the task data changed
