"""Config: YAML + dotted overrides, one-line errors naming the key path, exit code 2."""

import re

import pytest

from lmforge.cli import main
from lmforge.config import dump_config, load_config
from lmforge.errors import UserError


def test_defaults_and_dotted_override():
    cfg = load_config(None, ["--data.dedup.threshold=0.85", "--run.name", "exp1"])
    assert cfg.data.dedup.threshold == 0.85
    assert cfg.run.name == "exp1"
    assert str(cfg.run.path) == "runs/exp1"


def test_yaml_file_and_list_index_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  sources:\n    - path: a.jsonl\n    - path: b.jsonl\n")
    cfg = load_config(path, ["--data.sources.1.weight=3"])
    assert [s.weight for s in cfg.data.sources] == [1.0, 3.0]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "--data.dedup.treshold=0.85",
            "unknown key 'data.dedup.treshold'; did you mean 'data.dedup.threshold'",
        ),
        ("--data.dedup.threshold=1.5", "bad value for data.dedup.threshold"),
        ("--data.steps=[normalize,bogus]", "unknown step 'bogus'"),
        ("--data.split.train=0.5", "train + val + test must be 1.0"),
        ("--data.steps=[near_dedup,quality]", "must come before the global steps"),
        ("--data.dedup.bands=4", "set both bands and rows"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(UserError, match=re.escape(expected)):
        load_config(None, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(UserError, match="mapping of sections"):
        load_config(scalar)


def test_cli_errors_are_one_line_with_exit_2(capsys):
    assert main(["config", "show", "--data.dedup.x=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmforge: error: config: unknown key 'data.dedup.x'")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert main(["no-such-command"]) == 2
    assert main(["run"]) == 2


def test_config_show_prints_resolved_yaml(capsys):
    assert main(["config", "show", "--data.dedup.threshold=0.7"]) == 0
    out = capsys.readouterr().out
    assert "threshold: 0.7" in out
    assert out == dump_config(load_config(None, ["--data.dedup.threshold=0.7"]))
