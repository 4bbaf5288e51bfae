"""Pipeline: manifests, skip-if-unchanged, a change redoes the stage and those after it."""

import json

import pytest

from lmforge import pipeline
from lmforge.config import load_config
from lmforge.errors import UserError
from lmforge.pipeline import Stage


@pytest.fixture
def toy_stages(monkeypatch):
    """Two tiny stages: `a` copies run.name into a file, `b` reads it back."""
    calls = []

    def run_a(ctx):
        calls.append("a")
        (ctx.out_dir / "a.txt").write_text(ctx.cfg.data.split.mode)
        return {"n": 1}

    def run_b(ctx):
        calls.append("b")
        text = (ctx.inputs["a"] / "a.txt").read_text()
        (ctx.out_dir / "b.txt").write_text(text.upper())
        return {}

    stages = [
        Stage("a", (), ("data",), run_a),
        Stage("b", ("a",), ("run",), run_b),
    ]
    monkeypatch.setattr(pipeline, "stages", lambda: stages)
    return calls


def test_skip_rerun_and_force(tmp_path, toy_stages):
    cfg = load_config(None, [f"--run.dir={tmp_path}"])
    pipeline.run_pipeline(cfg)
    assert toy_stages == ["a", "b"]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["stage"] == "a" and manifest["metrics"] == {"n": 1}
    assert manifest["files"][0]["path"] == "a.txt" and len(manifest["files"][0]["sha256"]) == 64
    assert "python" in manifest["libraries"]

    pipeline.run_pipeline(cfg)  # nothing changed: both skipped
    assert toy_stages == ["a", "b"]

    changed = load_config(
        None,
        [
            f"--run.dir={tmp_path}",
            "--data.split.mode=contiguous",
            "--data.split.train=0.9",
            "--data.split.val=0.1",
            "--data.split.test=0",
        ],
    )
    assert "config changed" in pipeline.stale_reason(
        pipeline.stages()[0], changed, tmp_path / "a", {}
    )
    pipeline.run_pipeline(changed)  # a's config changed: a and everything after it
    assert toy_stages == ["a", "b", "a", "b"]
    assert (tmp_path / "b" / "b.txt").read_text() == "CONTIGUOUS"

    pipeline.run_pipeline(changed, force=["b"])  # only b, on purpose
    assert toy_stages == ["a", "b", "a", "b", "b"]


def test_missing_output_file_makes_stage_stale(tmp_path, toy_stages):
    cfg = load_config(None, [f"--run.dir={tmp_path}"])
    pipeline.run_pipeline(cfg)
    (tmp_path / "b" / "b.txt").unlink()
    pipeline.run_pipeline(cfg)
    assert toy_stages == ["a", "b", "b"]


def test_killed_stage_is_not_taken_for_finished(tmp_path, toy_stages):
    cfg = load_config(None, [f"--run.dir={tmp_path}"])
    pipeline.run_pipeline(cfg)

    def boom(ctx):
        raise KeyboardInterrupt

    stage = Stage("a", (), ("data",), boom)
    with pytest.raises(KeyboardInterrupt):
        pipeline.execute(stage, pipeline.StageContext(cfg, tmp_path / "a", {}), {})
    assert not (tmp_path / "a" / "manifest.json").exists()


def test_unknown_stage_names(tmp_path, toy_stages):
    cfg = load_config(None, [f"--run.dir={tmp_path}"])
    with pytest.raises(UserError, match="unknown stage 'c'"):
        pipeline.run_pipeline(cfg, force=["c"])
