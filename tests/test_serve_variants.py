"""Several models at once: weighted sticky A/B routing, shadow mode, fallback, reload."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from lmforge.serve.app import build_app
from lmforge.serve.config import EngineConfig, FallbackConfig, ModelSpec, ServeConfig
from lmforge.serve.metrics import Metrics
from lmforge.serve.variants import ModelGroup
from test_serve_support import ServerThread, make_model_dir, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_weighted_routing_is_sticky_per_user() -> None:
    spec = ModelSpec(name="m", variants=[{"name": "a", "path": "x", "weight": 95},
                                         {"name": "b", "path": "y", "weight": 5}])
    group = ModelGroup(spec, EngineConfig(), FallbackConfig(), Metrics())
    for arm in group.arms:
        arm.engine = object()  # loaded, as far as routing is concerned
    picks = {f"user-{i}": group.pick(f"user-{i}").name for i in range(4000)}
    share = Counter(picks.values())["b"] / len(picks)
    assert 0.04 < share < 0.06
    assert all(group.pick(user).name == name for user, name in list(picks.items())[:200])
    b_users = [u for u, name in picks.items() if name == "b"]
    group.arms[1].report(False, FallbackConfig(failures=2, cooldown_s=60))
    assert group.pick(b_users[0]).name == "b"  # one failure: still in
    group.arms[1].report(False, FallbackConfig(failures=2, cooldown_s=60))
    assert group.pick(b_users[0]).name == "a"  # two in a row: out, its users go to primary


@pytest.fixture(scope="module")
def server(tmp_path_factory, one_thread):  # noqa: F811
    root = tmp_path_factory.mktemp("variants")
    primary = make_model_dir(root / "a")
    other = make_model_dir(root / "b", steps=20, seed=1)  # barely trained: different text
    cfg = ServeConfig(
        models=[{"name": "tiny",
                 "variants": [{"name": "primary", "path": primary, "weight": 50},
                              {"name": "candidate", "path": primary, "weight": 50},
                              {"name": "broken", "path": root / "missing", "weight": 0}],
                 "shadow": {"name": "next", "path": other}},
                {"name": "second", "path": other}],
        audit={"path": root / "audit.sqlite"}, fallback={"failures": 2, "cooldown_s": 60},
        engine={"threads": 1})
    app = build_app(cfg)
    thread = ServerThread(app)
    url = thread.start()
    yield url, app
    thread.stop()


def sse_text(raw: str) -> str:
    events = [json.loads(e[6:]) for e in raw.split("\n\n") if e.startswith("data: {")]
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events)


def ask(url: str, user: str, model: str = "tiny") -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={
        "model": model, "user": user, "temperature": 0, "max_tokens": 30,
        "messages": [{"role": "user", "content": "hello"}]})


def test_ab_shadow_and_per_variant_metrics(server) -> None:
    url, app = server
    state = app.state.lmforge
    group = state.registry.get("tiny")
    assert group.arms[2].load_error and "missing" in group.arms[2].load_error
    users = [f"u{i}" for i in range(12)]
    replies = [ask(url, user) for user in users]
    assert all(r.status_code == 200 for r in replies)
    assert {r.json()["choices"][0]["message"]["content"] for r in replies} == \
        {"hi there, how can I help?"}
    assert ask(url, "x", model="second").json()["choices"][0]["message"]["content"] != \
        "hi there, how can I help?"
    assert _wait_for_shadow_rows(state, len(users))
    rows = {r["request_id"]: r for r in state.audit.query(limit=100)
            if r["model"] == "tiny"}
    assert sorted(r["variant"] for r in rows.values()) == sorted(
        group.pick(u).name for u in users)
    assert {r["variant"] for r in rows.values()} == {"primary", "candidate"}
    shadows = state.audit.query("shadow", limit=100)
    assert {s["request_id"] for s in shadows} == set(rows)
    assert all(s["variant"] == "next" and s["status"] == 200 for s in shadows)
    assert all(s["output"] != "hi there, how can I help?" for s in shadows)
    metrics = httpx.get(url + "/metrics").text
    for variant in ("primary", "candidate"):
        assert f'lmforge_variant_requests_total{{model="tiny",outcome="ok",variant="{variant}"}}' \
            in metrics
        assert f'lmforge_time_to_first_token_seconds_count{{model="tiny",variant="{variant}"}}' \
            in metrics
    assert 'lmforge_shadow_requests_total{model="tiny",outcome="ok",variant="next"}' in metrics


def _wait_for_shadow_rows(state, n: int) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state.audit.flush()
        if state.audit.count("shadow") >= n:
            return True
        time.sleep(0.05)
    return False


def test_failing_variant_falls_back_to_the_primary(server) -> None:
    url, app = server
    group = app.state.lmforge.registry.get("tiny")
    candidate = group.arms[1]
    users = [u for u in (f"f{i}" for i in range(50)) if group.pick(u) is candidate][:3]

    os.kill(candidate.engine.pid, signal.SIGKILL)  # its engine process dies
    streamed = httpx.post(url + "/v1/chat/completions", json={
        "model": "tiny", "user": users[0], "temperature": 0, "stream": True,
        "messages": [{"role": "user", "content": "hello"}]}).text
    assert streamed.endswith("data: [DONE]\n\n")
    assert sse_text(streamed) == "hi there, how can I help?"
    reply = ask(url, users[1])
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == "hi there, how can I help?"
    assert group.pick(users[2]) is group.primary  # two failures: taken out
    state = httpx.get(url + "/admin/variants").json()["data"][0]["variants"]
    assert state[1]["out_for_s"] > 50
    assert httpx.get(url + "/ready").status_code == 200  # the primary still serves
    metrics = httpx.get(url + "/metrics").text
    assert 'lmforge_fallbacks_total{model="tiny",variant="candidate"} 2.0' in metrics


def test_reload_swaps_weights_without_dropping_requests(server) -> None:
    url, app = server
    group = app.state.lmforge.registry.get("second")
    before = group.primary.engine
    reloaded = httpx.post(url + "/admin/models/second/reload")
    assert reloaded.status_code == 200 and reloaded.json()["reloaded"]
    assert group.primary.engine is not before
    assert ask(url, "x", model="second").status_code == 200
    missing = httpx.post(url + "/admin/models/nope/reload")
    assert missing.status_code == 404
    assert Path(app.state.lmforge.audit.path).is_file()
