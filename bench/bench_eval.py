"""Benchmark: `lmforge eval` against lm-evaluation-harness's hf backend, same model, same tasks.

The model is the 25m preset (dim 512, 8 layers, GQA 8/4), trained for a few steps on the
stdlib docs with a BPE tokenizer trained on them, exported as an HF directory; both sides load that
directory. The tasks are two local task files in lm-eval's format:

  cloze_mc   1000 docs: 24 words of stdlib docs, four candidate continuations
             (the true next words and three from other paragraphs), acc and acc_norm
  cloze_gen  100 docs: the same starts, greedy continuation up to 32 tokens, exact_match,
             bleu and chrf against the true next words

  ours  `lmforge eval EXPORT --tasks ...` (log-likelihoods batched whole prompts, generation
        on the serving engine's continuous batching)
  peer  lm_eval.simple_evaluate(model="hf", ...) on the same directory and task files

Each side is its own process (imports and model load included, as a user runs it) with the
same batch size; sides alternate for ROUNDS rounds and the median wall times are compared.
Scores must be identical (to 1e-6 relative).

    python bench/bench_eval.py [--rounds 3] [--batch-size 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import sys
from pathlib import Path

from measure import line, timed

WORK = Path(__file__).parent / "_work" / "eval"
MC_DOCS, GEN_DOCS, WORDS, ANSWER_WORDS = 1000, 100, 24, 6
TRAIN_STEPS = 150


def paragraphs() -> list[list[str]]:
    """Runs of 30 words from the stdlib doc paragraphs, one after another."""
    import pydoc_data.topics

    size, words = WORDS + ANSWER_WORDS, []
    for text in pydoc_data.topics.topics.values():
        for para in re.split(r"\n\s*\n", text):
            split = para.split()
            words += [split[i:i + size] for i in range(0, len(split) - size + 1, size)]
    return words


def write_tasks() -> None:
    rng = random.Random(0)
    paras = paragraphs()
    rng.shuffle(paras)
    mc, gen = [], []
    for i, para in enumerate(paras[:MC_DOCS]):
        answer = " ".join(para[WORDS:])
        others = [" ".join(p[WORDS:]) for p in rng.sample(paras, 3) if p is not para]
        choices = [answer, *others[:3]]
        rng.shuffle(choices)
        mc.append({"context": " ".join(para[:WORDS]), "choices": choices,
                   "answer": choices.index(answer), "id": i})
    for para in paras[MC_DOCS:MC_DOCS + GEN_DOCS]:
        gen.append({"context": " ".join(para[:WORDS]), "answer": " ".join(para[WORDS:])})
    for name, rows in (("mc", mc), ("gen", gen)):
        (WORK / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (WORK / "tasks").mkdir(exist_ok=True)
    common = "dataset_path: json\ntest_split: test\ndoc_to_target: answer\n"
    (WORK / "tasks" / "mc.yaml").write_text(
        f"task: cloze_mc\noutput_type: multiple_choice\n{common}"
        f"dataset_kwargs: {{data_files: {{test: {WORK / 'mc.jsonl'}}}}}\n"
        "doc_to_text: '{{context}}'\ndoc_to_choice: choices\n"
        "metric_list: [{metric: acc}, {metric: acc_norm}]\n")
    (WORK / "tasks" / "gen.yaml").write_text(
        f"task: cloze_gen\noutput_type: generate_until\n{common}"
        f"dataset_kwargs: {{data_files: {{test: {WORK / 'gen.jsonl'}}}}}\n"
        "doc_to_text: '{{context}}'\ngeneration_kwargs: {until: ['\\n\\n'], max_gen_toks: 32}\n"
        "metric_list: [{metric: exact_match}, {metric: bleu}, {metric: chrf}]\n")


def train_briefly(model, texts: list[str], tokenizer_dir: Path) -> None:
    """A few AdamW steps on the corpus: random weights give nearly flat logits, where two
    correct implementations can pick different argmaxes on a near tie; a trained model's
    are decisive, so identical scores test the computation, not the ties."""
    import torch

    from lmforge.model.tokenizer import load_tokenizer

    codec = load_tokenizer(tokenizer_dir)
    ids = torch.tensor([t for text in texts for t in codec.encode(text + "\n\n")])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(TRAIN_STEPS):
        starts = torch.randint(0, len(ids) - 65, (16,), generator=gen)
        batch = torch.stack([ids[i:i + 65] for i in starts.tolist()])
        loss = model(batch[:, :-1], batch[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    print(f"# trained {TRAIN_STEPS} steps: loss {loss.item():.2f}", flush=True)


def prepare() -> None:
    import torch

    from lmforge.export.hf import write_hf_model
    from lmforge.model.config import preset_config
    from lmforge.model.llama import Transformer
    from lmforge.tokenizer.config import TokenizerConfig
    from lmforge.tokenizer.train import save_tokenizer, train_bpe

    WORK.mkdir(parents=True, exist_ok=True)
    cfg = TokenizerConfig(vocab_size=4096)
    texts = [" ".join(p) for p in paragraphs()]
    save_tokenizer(train_bpe(cfg, iter(texts)), cfg, WORK / "tokenizer")
    torch.manual_seed(0)
    vocab = json.loads((WORK / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    model = Transformer(preset_config("25m", len(vocab) + 16))
    train_briefly(model, texts, WORK / "tokenizer")
    write_hf_model(WORK / "model", model.state_dict(), model.cfg, WORK / "tokenizer")
    write_tasks()
    print(f"# 25m preset, {model.num_params() / 1e6:.1f}M parameters; "
          f"{MC_DOCS} multiple-choice docs x 4 choices, {GEN_DOCS} generation docs x 32 "
          "tokens", flush=True)


def run_peer(batch_size: int, out: Path) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(WORK / "model"), "dtype": "float32",
                                "device": "cpu"},
        tasks=["cloze_mc", "cloze_gen"], batch_size=batch_size, log_samples=False,
        task_manager=TaskManager(include_path=str(WORK / "tasks")), bootstrap_iters=0)
    scores = {f"{task}/{key.split(',')[0]}": value for task, metrics in
              results["results"].items() for key, value in metrics.items()
              if "," in key and "_stderr" not in key and isinstance(value, int | float)}
    out.write_text(json.dumps(scores))


def ours_scores(out: Path) -> dict[str, float]:
    results = json.loads((out / "results.json").read_text())
    return {f"{task}/{name}": m["value"] for task, info in results["tasks"].items()
            for name, m in info["metrics"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peer", help=argparse.SUPPRESS)  # internal: run the peer side
    args = parser.parse_args()
    if args.peer:
        run_peer(args.batch_size, Path(args.peer))
        return
    os.environ.update(OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1",
                      HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    prepare()
    ours_cmd = [sys.executable, "-m", "lmforge", "eval", str(WORK / "model"), "--tasks",
                str(WORK / "tasks" / "mc.yaml"), str(WORK / "tasks" / "gen.yaml"),
                "-o", str(WORK / "ours"), "--batch-size", str(args.batch_size)]
    peer_cmd = [sys.executable, __file__, "--peer", str(WORK / "peer.json"),
                "--batch-size", str(args.batch_size)]
    ours_t, peer_t = [], []
    for _ in range(args.rounds):
        ours_t.append(timed(ours_cmd)[0])
        peer_t.append(timed(peer_cmd)[0])
        print(f"# round: ours {ours_t[-1]:.1f}s, lm-eval {peer_t[-1]:.1f}s", flush=True)
    ours, theirs = ours_scores(WORK / "ours"), json.loads((WORK / "peer.json").read_text())
    for key, value in sorted(ours.items()):
        same = math.isclose(value, theirs.get(key, math.nan), rel_tol=1e-6, abs_tol=1e-9)
        print(f"# {key}: ours={value:.6g} lm-eval={theirs.get(key, math.nan):.6g} "
              f"{'identical' if same else 'DIFFERENT'}", flush=True)
    ours_s, peer_s = statistics.median(ours_t), statistics.median(peer_t)
    line("eval_wall_s", ours_s, peer_s)
    print(f"eval_speedup: {peer_s / ours_s:.2f}x (goal: >= 3x)", flush=True)


if __name__ == "__main__":
    main()
