"""`lmforge report`: a real tiny run (data with duplicates and PII, char tokenizer, pretrain,
eval) plus a hand-written comparison becomes one self-contained page in which hostile strings
stay text; the page is then opened in headless Chromium (the system's, never a download)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmforge.cli import main
from test_train_support import TINY_MODEL, TINY_TRAIN, documents

HOSTILE = "<script>window.__pwned=1</script>"
ESCAPED = "&lt;script&gt;window.__pwned=1&lt;/script&gt;"
SECTIONS = {"data": "Data", "tokenizer": "Tokenizer", "training": "Training",
            "evaluation": "Evaluation", "comparisons": "Comparisons",
            "stages": "Export, serving and other stages", "config": "Config",
            "lineage": "Lineage"}
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def corpus(path: Path) -> None:
    """Stdlib docs as JSONL, plus an exact duplicate and a document with an email address."""
    texts = documents(120)
    texts += [texts[3], texts[5] + " Write to ada@example.com for a copy."]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")


def comparison() -> dict:
    """What `lmforge compare -o` writes, with hostile strings where a run's names go."""
    return {"a": "runs/a/eval", "b": f"runs/b{HOSTILE}", "confidence": 0.95, "replace": False,
            "verdict": f"keep A {HOSTILE}", "warnings": [f"only 1 example {HOSTILE}"],
            "metrics": [{"metric": f"perplexity_val/bits_per_byte{HOSTILE}", "n": 1,
                         "lower_is_better": True, "a": 5.51, "b": 5.40, "diff": -0.11,
                         "ci": [-0.30, 0.08], "p_bootstrap": 0.21, "p_mcnemar": None,
                         "better": None, "reason": "interval includes 0", "warning": "n < 30"}]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    corpus(root / "docs.jsonl")
    cfg = {
        "run": {"dir": str(root / "run")},
        "data": {"sources": [{"path": str(root / "docs.jsonl"), "name": f"web{HOSTILE}"}],
                 "steps": ["pii", "exact_dedup"],
                 "split": {"mode": "contiguous", "train": 0.9, "val": 0.1, "test": 0.0}},
        "tokenizer": {"type": "char"},
        "model": TINY_MODEL,
        "train": {**TINY_TRAIN, "max_steps": 10},
        "eval": {"enabled": True, "perplexity": ["val"]},
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", "-c", str(root / "cfg.yaml")]) == 0
    assert (root / "run" / "report.html").is_file()  # `lmforge run` ends with the report
    (root / "run" / "compare").mkdir()
    (root / "run" / "compare" / "x.json").write_text(json.dumps(comparison()))
    return root / "run"


@pytest.fixture(scope="module")
def page(run_dir: Path) -> Path:
    out = run_dir.parent / "out" / "page.html"
    assert main(["report", str(run_dir), "-o", str(out)]) == 0
    return out


def test_report_is_one_small_self_contained_file(page: Path) -> None:
    html = page.read_text(encoding="utf-8")
    assert page.stat().st_size < 2_000_000
    for anchor, title in SECTIONS.items():
        assert f'<section id="{anchor}">' in html and f"<h2>{title}</h2>" in html
        assert f'<a href="#{anchor}">' in html
    sources = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", html)
    assert sources and all(s.startswith(("data:image/png;base64,", "#")) for s in sources)
    assert "http://" not in html and "https://" not in html
    assert len(re.findall(r"<img ", html)) >= 3  # funnel, lengths, training curves


def test_report_shows_the_runs_numbers(page: Path) -> None:
    html = page.read_text(encoding="utf-8")
    assert "exact_duplicate" in html and "email" in html  # quarantine reason, PII type
    assert "perplexity_val" in html and "bits_per_byte" in html and "95% CI" in html
    assert "[-0.3, 0.08]" in html and "interval includes 0" in html
    assert "bytes per token" in html and "vocab_size" in html
    assert "sha256" in html and "fingerprint" in html


def test_hostile_strings_are_inert_text(page: Path) -> None:
    html = page.read_text(encoding="utf-8")
    assert HOSTILE not in html and "<script" not in html
    assert html.count(ESCAPED) >= 5  # verdict, B, warning, metric, source name


def test_data_stage_page_is_the_data_section(run_dir: Path) -> None:
    html = (run_dir / "data" / "report.html").read_text(encoding="utf-8")
    assert '<section id="data">' in html and "data:image/png;base64," in html
    assert HOSTILE not in html and ESCAPED in html
    assert (run_dir / "data" / "funnel.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_or_empty_run_is_one_line_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path / "absent")]) == 2
    (tmp_path / "empty" / "data").mkdir(parents=True)
    assert main(["report", str(tmp_path / "empty")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("lmforge: error: ") for line in lines)
    assert "not a directory" in lines[0] and "no stage manifests" in lines[1]


def test_report_never_imports_training_or_serving_code(run_dir: Path) -> None:
    """DESIGN.md: report/ reads artifacts only, so it runs where torch is not installed."""
    code = ("import sys; from pathlib import Path; from lmforge.report.page import build_report; "
            f"build_report(Path({str(run_dir)!r})); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(("
            "'lmforge.train', 'lmforge.model', 'lmforge.serve', 'lmforge.finetune', "
            "'lmforge.eval'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A driver path given here means Selenium Manager never runs (so nothing is downloaded).
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def test_report_renders_in_chromium(page: Path) -> None:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("needs Debian's chromium and chromium-driver: "
                    "apt-get install -y chromium chromium-driver")
    pytest.importorskip("selenium", reason="needs selenium (pip install -e '.[dev]')")
    from selenium.webdriver.common.by import By

    driver = _driver()
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.as_uri())
        shown = {s.get_attribute("id"): s.is_displayed()
                 for s in driver.find_elements(By.TAG_NAME, "section")}
        assert shown == dict.fromkeys(SECTIONS, True)
        widths = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) >= 3 and all(w > 0 for w in widths)
        assert driver.execute_script("return typeof window.__pwned") == "undefined"
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
    finally:
        driver.quit()
