"""Output clearing: a stage deletes or overwrites only what lmforge wrote in its directory.

Hostile layouts for every stage: a user's folders where the output goes, another stage's
output, a user's file added after a run, an edited output file, links pointing outside, a
run killed with kill -9, an older lmforge's output, and run names that climb out of runs/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmforge import pipeline
from lmforge.cli import main
from lmforge.config import load_config, validate_config
from lmforge.errors import UserError
from lmforge.outputs import OWNER, claim, remove_outputs
from lmforge.pipeline import Stage, StageContext
from lmforge.tokenizer.config import TokenizeConfig, TokenizerConfig
from lmforge.tokenizer.encode import tokenize
from lmforge.tokenizer.train import train_and_save
from test_tokenizer import make_data_dir


def write_stage(ctx: StageContext) -> dict:
    """A toy stage writing a file, a folder of parts and a work file, like the real ones."""
    assert (ctx.out_dir / OWNER).is_file(), "the ownership record comes before any output"
    (ctx.out_dir / "train").mkdir(exist_ok=True)
    (ctx.out_dir / "train" / "part-0.txt").write_text(ctx.cfg.run.name)
    (ctx.out_dir / "stats.json").write_text("{}")
    return {}


TOY = Stage("toy", (), ("run",), write_stage)


def run_toy(out: Path, name: str = "demo", resume: bool = False) -> dict:
    cfg = load_config(None, [f"--run.name={name}"])
    return pipeline.execute(TOY, StageContext(cfg, out, {}, resume=resume), {})


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (links not followed) with its bytes, the record left out."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != OWNER}


def users_folders(out: Path) -> dict[str, bytes]:
    """The issue's case: a directory a user already had, with train/ val/ test/ in it."""
    for split in ("train", "val", "test"):
        (out / split).mkdir(parents=True)
        (out / split / "part-00000.parquet").write_bytes(b"my own shard " + split.encode())
    (out / "stats.json").write_text('{"mine": true}')
    return snapshot(out)


def test_foreign_directory_is_refused_and_left_intact(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    before = users_folders(out)
    with pytest.raises(UserError, match=r"not empty and was not written by lmforge.*another"):
        run_toy(out)
    assert snapshot(out) == before and not (out / OWNER).exists()
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / ".keep").write_text("a dotfile is content too")
    with pytest.raises(UserError, match="not empty"):
        run_toy(hidden)
    assert (hidden / ".keep").read_text() == "a dotfile is content too"


def test_missing_or_empty_directory_is_claimed(tmp_path: Path) -> None:
    run_toy(tmp_path / "new" / "deep")
    (tmp_path / "empty").mkdir()
    run_toy(tmp_path / "empty")
    for out in (tmp_path / "new" / "deep", tmp_path / "empty"):
        assert (out / "train" / "part-0.txt").read_text() == "demo"
        assert json.loads((out / OWNER).read_text())["state"] == "done"


def test_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("keep")
    with pytest.raises(UserError, match="is a file, not a directory"):
        run_toy(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "keep"


def test_another_stages_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_toy(out)
    before = snapshot(out)
    other = Stage("other", (), ("run",), write_stage)
    cfg = load_config(None)
    with pytest.raises(UserError, match="holds lmforge's toy stage, not other"):
        pipeline.execute(other, StageContext(cfg, out, {}), {})
    assert snapshot(out) == before
    (out / OWNER).unlink()  # an older lmforge: only the manifest says whose it is
    with pytest.raises(UserError, match="holds lmforge's toy stage, not other"):
        pipeline.execute(other, StageContext(cfg, out, {}), {})
    assert snapshot(out) == before


def test_user_files_added_after_a_run_survive_reruns(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_toy(out, "first")
    (out / "notes.md").write_text("my notes")
    (out / "train" / "mine.txt").write_text("my file inside lmforge's folder")
    (out / "mine" / "deep").mkdir(parents=True)
    for name in ("second", "third"):
        manifest = run_toy(out, name)
        assert (out / "train" / "part-0.txt").read_text() == name
        assert (out / "notes.md").read_text() == "my notes"
        assert (out / "train" / "mine.txt").read_text() == "my file inside lmforge's folder"
        assert (out / "mine" / "deep").is_dir()
        assert sorted(f["path"] for f in manifest["files"]) == ["stats.json", "train/part-0.txt"]


def test_stale_outputs_are_cleared_but_only_lmforge_s(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_toy(out)
    (out / "train" / "mine.txt").write_text("mine")
    lean = Stage("toy", (), ("run",), lambda ctx: (ctx.out_dir / "other.txt").write_text("x")
                 and {})
    pipeline.execute(lean, StageContext(load_config(None), out, {}), {})
    assert sorted(snapshot(out)) == ["manifest.json", "other.txt", "train/mine.txt"]


def test_an_output_edited_by_the_user_is_not_deleted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_toy(out)
    (out / "stats.json").write_text('{"hand": "edited"}')
    with pytest.raises(UserError, match=r"stats\.json changed after lmforge wrote it"):
        run_toy(out)
    assert (out / "stats.json").read_text() == '{"hand": "edited"}'


def test_a_copy_of_an_output_with_new_mtimes_is_still_lmforge_s(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_toy(out)
    for path in out.rglob("*"):
        if path.is_file() and path.name != OWNER:
            os.utime(path, ns=(1, 1))  # `cp -r` without -p: same bytes, new times
    run_toy(out, "again")
    assert (out / "train" / "part-0.txt").read_text() == "again"


@pytest.mark.parametrize("where", ["top", "nested"])
def test_links_in_an_output_directory_are_refused(tmp_path: Path, where: str) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "part-0.txt").write_text("not lmforge's")
    out = tmp_path / "out"
    run_toy(out)
    link = out / "train" if where == "top" else out / "train" / "elsewhere"
    if where == "top":
        for f in (out / "train").iterdir():
            f.unlink()
        (out / "train").rmdir()
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(UserError, match="symbolic link"):
        run_toy(out)
    (out / "stats.link").symlink_to(outside / "part-0.txt")
    with pytest.raises(UserError, match="symbolic link"):
        run_toy(out)
    assert (outside / "part-0.txt").read_text() == "not lmforge's"


def test_kill_9_mid_stage_leaves_outputs_the_rerun_clears(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from lmforge import pipeline\n"
        "from lmforge.config import load_config\n"
        "def run(ctx):\n"
        "    (ctx.out_dir / 'half.bin').write_bytes(b'x' * 100)\n"
        "    (ctx.out_dir / 'train').mkdir()\n"
        "    (ctx.out_dir / 'train' / 'part-9.txt').write_text('partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "stage = pipeline.Stage('toy', (), ('run',), run)\n"
        "ctx = pipeline.StageContext(load_config(None), Path(sys.argv[1]), {})\n"
        "pipeline.execute(stage, ctx, {})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(out)], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "half.bin").exists() and not (out / "manifest.json").exists()
    run_toy(out)
    assert sorted(snapshot(out)) == ["manifest.json", "stats.json", "train/part-0.txt"]


def test_a_kill_while_the_first_record_is_written_does_not_lock_the_dir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / f".{OWNER}.abc123.tmp").write_text("{")
    run_toy(out)
    assert not list(out.glob(f".{OWNER}.*.tmp"))


@pytest.mark.parametrize("record", ['{"stage": "toy", "state": "do', '[]',
                                    '{"stage": "toy", "state": "done", "files": {"x": 1}}',
                                    '{"stage": "toy", "state": "paused"}'])
def test_a_damaged_record_proves_nothing(tmp_path: Path, record: str) -> None:
    out = tmp_path / "out"
    before = users_folders(out)
    (out / OWNER).write_text(record)
    with pytest.raises(UserError, match="not written by lmforge"):
        run_toy(out)
    assert snapshot(out) == before


def test_resume_keeps_outputs_and_user_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_toy(out)
    (out / "mine.txt").write_text("mine")
    claim(out, "toy", clear=False)
    assert sorted(snapshot(out)) == ["manifest.json", "mine.txt", "stats.json",
                                     "train/part-0.txt"]
    remove_outputs(out, ["train", "mine.txt"], "toy")
    assert sorted(snapshot(out)) == ["manifest.json", "mine.txt", "stats.json"]
    run_toy(out, resume=True)
    assert (out / "mine.txt").read_text() == "mine"


def test_an_older_lmforge_output_is_adopted_by_its_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_toy(out)
    (out / OWNER).unlink()
    (out / "mine.txt").write_text("added later, not in the manifest")
    (out / "_work").mkdir()
    (out / "_work" / "shard.tmp").write_text("internal")
    pipeline.execute(Stage("toy", (), ("run",), write_stage, excluded=("_work",)),
                     StageContext(load_config(None), out, {}), {})
    assert sorted(snapshot(out)) == ["manifest.json", "mine.txt", "stats.json",
                                     "train/part-0.txt"]


# --- run names -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["..", "../elsewhere", "/etc", "a/b", "a\\b", ".", "", "  ",
                                  "a\x00b", "x\n", "../../../tmp/x"])
def test_run_names_cannot_escape_runs(name: str) -> None:
    with pytest.raises(UserError, match=r"^config: bad value for run\.name: .*run\.dir"):
        validate_config({"run": {"name": name}})
    if name.strip() and name.isprintable():  # YAML would read the others differently
        with pytest.raises(UserError, match=r"run\.name"):
            load_config(None, [f"--run.name={name}"])


def test_run_names_in_yaml_are_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"run": {"name": "../../outside"}}))
    with pytest.raises(UserError, match="path separator"):
        load_config(path)


@pytest.mark.parametrize("name", ["demo", "demo-2", "exp_3.b", "实验一", "..hidden"])
def test_plain_run_names_are_accepted(name: str) -> None:
    assert load_config(None, [f"--run.name={name}"]).run.path.parts == ("runs", name)


def test_an_explicit_run_dir_may_go_anywhere_but_not_be_empty(tmp_path: Path) -> None:
    assert load_config(None, ["--run.dir=../elsewhere"]).run.path == Path("../elsewhere")
    with pytest.raises(UserError, match=r"run\.dir: is empty"):
        load_config(None, ["--run.dir="])


def test_cli_reports_a_bad_run_name_in_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("run: {name: ..}\n")
    assert main(["run", "-c", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "run.name" in err and "Traceback" not in err


# --- every real stage --------------------------------------------------------------------

def corpus(path: Path) -> Path:
    docs = [f"Document number {i} talks about topic {i % 7} at some length, twice over."
            for i in range(60)]
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
    return path


def test_data_prepare_refuses_a_users_folders(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    before = users_folders(out)
    argv = ["data", "prepare", str(corpus(tmp_path / "in.jsonl")), "-o", str(out),
            "--data.steps=[normalize]", "--workers=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(out) in err and "another" in err
    assert snapshot(out) == before


def test_data_prepare_rerun_keeps_a_users_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["data", "prepare", str(corpus(tmp_path / "in.jsonl")), "-o", str(out),
            "--data.steps=[normalize]", "--workers=1"]
    assert main(argv) == 0
    (out / "train" / "README.txt").write_text("what these shards are for")
    (out / "quarantine" / "mine.parquet.bak").write_bytes(b"backup")
    assert main([*argv, "--data.split.seed=7"]) == 0
    assert main([*argv, "--resume"]) == 0
    assert (out / "train" / "README.txt").read_text() == "what these shards are for"
    assert (out / "quarantine" / "mine.parquet.bak").read_bytes() == b"backup"
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert "train/README.txt" not in listed and any(p.startswith("train/part-") for p in listed)
    stats = json.loads((out / "stats.json").read_text())
    assert sum(s["docs"] for s in stats["output"].values()) + stats["quarantined"] == 60
    assert not (out / "_work").exists()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def char_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("char")
    train_and_save(TokenizerConfig(type="char"), data_dir, out)
    return out


def test_tokenizer_train_refuses_a_foreign_dir(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tok"
    out.mkdir()
    (out / "tokenizer.json").write_text('{"my": "own tokenizer"}')
    assert main(["tokenizer", "train", str(data_dir), "-o", str(out), "--type", "char"]) == 2
    with pytest.raises(UserError, match="not written by lmforge"):
        train_and_save(TokenizerConfig(type="char"), data_dir, out)
    assert (out / "tokenizer.json").read_text() == '{"my": "own tokenizer"}'


def test_tokenizer_rerun_keeps_a_users_file(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", str(data_dir), "-o", str(out), "--type", "char"]
    assert main(argv) == 0
    (out / "NOTES.md").write_text("mine")
    assert main(argv) == 0
    assert (out / "NOTES.md").read_text() == "mine"
    assert (out / "tokenizer.json").is_file()


def test_tokenize_refuses_foreign_and_other_stage_dirs(
    data_dir: Path, char_dir: Path, tmp_path: Path
) -> None:
    base = ["tokenize", str(data_dir), "--tokenizer", str(char_dir), "--workers", "1"]
    assert main([*base, "-o", str(char_dir)]) == 2  # the tokenizer's own directory
    assert (char_dir / "tokenizer.json").is_file()
    foreign = tmp_path / "tokens"
    foreign.mkdir()
    (foreign / "train.bin").write_bytes(b"my tokens")
    assert main([*base, "-o", str(foreign)]) == 2
    with pytest.raises(UserError, match="not written by lmforge"):
        tokenize(data_dir, char_dir, foreign, TokenizeConfig(workers=1))
    assert (foreign / "train.bin").read_bytes() == b"my tokens"
    (foreign / "train.bin").unlink()
    assert main([*base, "-o", str(foreign)]) == 0
    (foreign / "mine.txt").write_text("mine")
    assert main([*base, "-o", str(foreign)]) == 0
    assert (foreign / "mine.txt").read_text() == "mine"  # a user's file beside the outputs
    assert (foreign / "train.bin").stat().st_size > 0
    (foreign / "_work").mkdir()  # the work dir is lmforge's alone, as a whole
    (foreign / "_work" / "scratch.txt").write_text("scratch")
    assert main([*base, "-o", str(foreign)]) == 0
    assert not (foreign / "_work").exists()


def test_pretrain_refuses_a_foreign_dir_and_keeps_a_users_files(tmp_path: Path) -> None:
    from test_train_support import TINY_MODEL, TINY_TRAIN, make_run

    run = make_run(tmp_path, n_docs=60)
    pretrain = run / "pretrain"
    (pretrain / "checkpoints").mkdir(parents=True)
    (pretrain / "checkpoints" / "best.pt").write_bytes(b"someone else's weights")
    train = {**TINY_TRAIN, "max_steps": 4, "eval_every": 2, "ckpt_every": 2}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"run": {"dir": str(run)}, "tokenizer": {"type": "char"},
                                   "model": TINY_MODEL, "train": train}))
    assert main(["pretrain", "-c", str(cfg)]) == 2
    assert main(["pretrain", "-c", str(cfg), "--resume"]) == 2
    assert (pretrain / "checkpoints" / "best.pt").read_bytes() == b"someone else's weights"

    (pretrain / "checkpoints" / "best.pt").unlink()
    (pretrain / "checkpoints").rmdir()  # an empty folder of theirs is still theirs
    assert main(["pretrain", "-c", str(cfg)]) == 0
    (pretrain / "NOTES.md").write_text("mine")
    (pretrain / "checkpoints" / "scratch.txt").write_text("in lmforge's own folder")
    assert main(["pretrain", "-c", str(cfg)]) == 0
    assert (pretrain / "NOTES.md").read_text() == "mine"
    assert not (pretrain / "checkpoints" / "scratch.txt").exists()  # checkpoints/ is lmforge's
    manifest = json.loads((pretrain / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 4
    assert "NOTES.md" not in {f["path"] for f in manifest["files"]}
