"""`POST /v1/feedback` and `lmforge ab report`: user scores keyed by response id land in the
audit log, and live A/B traffic gets the replace/keep verdict `lmforge compare` gives."""

from __future__ import annotations

import json
import random

import httpx
import pytest

from lmforge.cli import main
from lmforge.serve.app import build_app
from lmforge.serve.audit import AuditLog
from lmforge.serve.config import ServeConfig
from test_serve_support import ServerThread, make_model_dir, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def server(tmp_path_factory, one_thread):  # noqa: F811
    root = tmp_path_factory.mktemp("feedback")
    model = make_model_dir(root / "m", steps=30)
    cfg = ServeConfig(models=[{"name": "tiny", "variants": [
        {"name": "primary", "path": model, "weight": 50},
        {"name": "candidate", "path": model, "weight": 50}]}],
        audit={"path": root / "audit.sqlite"}, engine={"threads": 1})
    app = build_app(cfg)
    thread = ServerThread(app)
    yield thread.start(), app, root / "audit.sqlite"
    thread.stop()


def test_feedback_is_recorded_and_the_ab_report_reads_it(server, tmp_path, capsys):
    url, app, db = server
    audit = app.state.lmforge.audit
    for i in range(16):
        reply = httpx.post(url + "/v1/chat/completions", json={
            "model": "tiny", "user": f"u{i}", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "hi"}]}).json()
        answer = httpx.post(url + "/v1/feedback", json={"id": reply["id"], "score": i % 2})
        assert answer.status_code == 200 and answer.json()["recorded"], answer.text
    audit.flush()
    rows = audit.query("feedback", limit=100)
    assert len(rows) == 16 and {r["score"] for r in rows} == {0.0, 1.0}
    requests = {r["request_id"] for r in audit.query(limit=100)}
    assert {r["request_id"] for r in rows} <= requests
    out = tmp_path / "ab.json"
    assert main(["ab", "report", "--audit", str(db), "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"primary", "candidate"}
    assert sum(v["feedback_n"] for v in report["variants"].values()) == 16
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("keep ")  # n=8 a side


@pytest.mark.parametrize(("body", "status"), [
    ({"id": "cmpl-" + "0" * 32, "score": 1}, 404),  # well formed, never answered
    ({"id": "nonsense", "score": 1}, 404),
    ({"id": "cmpl-" + "0" * 32, "score": "great"}, 400),
    ({"id": "cmpl-" + "0" * 32, "score": 1, "extra": 1}, 400),
])
def test_bad_feedback_is_refused(server, body, status):
    url, _, _ = server
    answer = httpx.post(url + "/v1/feedback", json=body)
    assert answer.status_code == status, answer.text
    assert "error" in answer.json()


def fake_traffic(db, candidate_latency: float, candidate_errors: float, seed: int = 0) -> None:
    """300 requests a side: the primary at ~200 ms, no errors, feedback 0.5 on average."""
    rng = random.Random(seed)
    log = AuditLog(db)
    for i in range(600):
        arm = "candidate" if i % 2 else "primary"
        failed = arm == "candidate" and rng.random() < candidate_errors
        latency = rng.gauss(candidate_latency if arm == "candidate" else 200.0, 20.0)
        rid = f"{i:032x}"
        log.record({"request_id": rid, "ts": 1e9 + i, "route": "POST /v1/chat/completions",
                    "model": "m", "variant": arm, "latency_ms": latency,
                    "status": 500 if failed else 200})
        score = rng.random() < (0.8 if arm == "candidate" else 0.5)
        log.record_feedback({"request_id": rid, "score": float(score)})
    log.close()


def test_a_faster_better_liked_candidate_replaces_the_primary(tmp_path, capsys):
    fake_traffic(tmp_path / "audit.sqlite", candidate_latency=150.0, candidate_errors=0.0)
    assert main(["ab", "report", "--audit", str(tmp_path / "audit.sqlite")]) == 0
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    assert verdict.startswith("candidate replaces primary"), verdict


def test_a_candidate_that_fails_more_is_kept_out(tmp_path, capsys):
    fake_traffic(tmp_path / "audit.sqlite", candidate_latency=150.0, candidate_errors=0.1)
    out = tmp_path / "ab.json"
    assert main(["ab", "report", "--audit", str(tmp_path / "audit.sqlite"), "-o", str(out)]) == 0
    candidate = json.loads(out.read_text())["candidates"]["candidate"]
    assert not candidate["replace"] and "error_rate" in candidate["verdict"]
    error = next(m for m in candidate["metrics"] if m["metric"] == "error_rate")
    assert error["fisher_p"] < 1e-6 and error["diff"] > 0


def test_a_missing_log_and_a_log_without_ab_traffic_are_one_line_errors(tmp_path, capsys):
    assert main(["ab", "report", "--audit", str(tmp_path / "nope.sqlite")]) == 2
    AuditLog(tmp_path / "empty.sqlite").close()
    assert main(["ab", "report", "--audit", str(tmp_path / "empty.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "no model" in err and "Traceback" not in err
