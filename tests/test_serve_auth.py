"""Access control: the keys CLI, roles allowed and denied, revocation, rate limits."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from lmforge.cli import main
from lmforge.serve.app import build_app
from lmforge.serve.auth import KeyStore
from lmforge.serve.config import ServeConfig
from lmforge.serve.ratelimit import RateLimited, RateLimiter
from test_serve_support import ServerThread, make_model_dir, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
COMPLETION = {"model": "tiny", "prompt": "the", "max_tokens": 3}


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_cli_create_list_revoke(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "keys.sqlite")
    secrets = {}
    for role in ("user", "developer", "admin"):
        code, out, _ = cli(capsys, "keys", "create", "--db", db, "--role", role, "--name", role)
        assert code == 0 and out.startswith("lmf-")
        secrets[role] = out.strip()
    code, out, _ = cli(capsys, "keys", "list", "--db", db)
    lines = out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == ["user", "developer", "admin"]
    ids = [line.split("\t")[0] for line in lines]
    assert all(secrets[role].split("-")[1] == key_id
               for role, key_id in zip(("user", "developer", "admin"), ids, strict=True))
    stored = sqlite3.connect(db).execute("SELECT hash FROM keys").fetchall()
    assert all(secret not in str(stored) for secret in secrets.values())  # hashed only
    assert cli(capsys, "keys", "revoke", "--db", db, ids[0])[0] == 0
    assert cli(capsys, "keys", "list", "--db", db)[1].splitlines()[0].split("\t")[2] == "revoked"
    code, _, err = cli(capsys, "keys", "revoke", "--db", db, "nope")
    assert code == 2 and "no active key 'nope'" in err
    code, _, err = cli(capsys, "keys", "list", "--db", str(tmp_path / "missing.sqlite"))
    assert code == 2 and "keys create" in err
    assert KeyStore(Path(db)).verify(secrets["user"]) is None
    assert KeyStore(Path(db)).verify(secrets["admin"]).role == "admin"


@pytest.fixture(scope="module")
def secured(tmp_path_factory, one_thread):  # noqa: F811
    root = tmp_path_factory.mktemp("auth")
    model = make_model_dir(root)
    db = root / "keys.sqlite"
    store = KeyStore(db)
    keys = {role: store.create(role, role)[1] for role in ("user", "developer", "admin")}
    keys["limited"] = store.create("developer", "limited", requests_per_minute=2)[1]
    keys["thrifty"] = store.create("developer", "thrifty", tokens_per_minute=20)[1]
    keys["metered"] = store.create("developer", "metered", tokens_per_minute=200)[1]
    keys["refunded"] = store.create("developer", "refunded", tokens_per_minute=100)[1]
    store.close()
    cfg = ServeConfig(models=[{"name": "tiny", "path": model}], auth_db=db,
                      engine={"threads": 1})
    thread = ServerThread(build_app(cfg))
    url = thread.start()
    yield url, keys, db
    thread.stop()


def call(url: str, key: str | None, method: str, path: str, body: dict | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, url + path, json=body, headers=headers).status_code


@pytest.mark.parametrize("role,expected", [
    ("user", {"models": 200, "chat": 200, "chat_logprobs": 403, "completions": 403,
              "admin": 403}),
    ("developer", {"models": 200, "chat": 200, "chat_logprobs": 200, "completions": 200,
                   "admin": 403}),
    ("admin", {"models": 200, "chat": 200, "chat_logprobs": 200, "completions": 200,
               "admin": 200}),
])
def test_roles_are_allowed_and_denied(secured, role: str, expected: dict) -> None:
    url, keys, _ = secured
    key = keys[role]
    got = {
        "models": call(url, key, "GET", "/v1/models"),
        "chat": call(url, key, "POST", "/v1/chat/completions", CHAT),
        "chat_logprobs": call(url, key, "POST", "/v1/chat/completions",
                              {**CHAT, "logprobs": True}),
        "completions": call(url, key, "POST", "/v1/completions", COMPLETION),
        "admin": call(url, key, "GET", "/admin/keys"),
    }
    assert got == expected


def test_missing_bad_and_revoked_keys_fail(secured, capsys) -> None:
    url, keys, db = secured
    assert call(url, None, "POST", "/v1/chat/completions", CHAT) == 401
    assert call(url, "lmf-000000000000-forged", "POST", "/v1/chat/completions", CHAT) == 401
    assert call(url, "sk-not-ours", "GET", "/v1/models") == 401
    assert httpx.get(url + "/health").status_code == 200  # probes need no key
    client = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    made = httpx.post(url + "/admin/keys", json={"role": "user"}, headers=admin).json()
    assert call(url, made["key"], "POST", "/v1/chat/completions", CHAT) == 200
    assert httpx.delete(url + f"/admin/keys/{made['id']}", headers=admin).status_code == 200
    assert call(url, made["key"], "POST", "/v1/chat/completions", CHAT) == 401
    other = KeyStore(db).create("user")  # revoked from the CLI, while the server runs
    assert call(url, other[1], "GET", "/v1/models") == 200
    assert cli(capsys, "keys", "revoke", "--db", str(db), other[0].id)[0] == 0
    assert call(url, other[1], "GET", "/v1/models") == 401


def test_rate_limits_answer_429_with_retry_after(secured) -> None:
    url, keys, _ = secured
    client = openai.OpenAI(base_url=url + "/v1", api_key=keys["limited"], max_retries=0)
    client.models.list()
    client.models.list()
    with pytest.raises(openai.RateLimitError) as e:
        client.models.list()
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 30
    thrifty = {"Authorization": f"Bearer {keys['thrifty']}"}
    never = httpx.post(url + "/v1/completions", headers=thrifty,
                       json={**COMPLETION, "max_tokens": 30})  # 3 + 30 > 20 a minute
    assert never.status_code == 400
    assert never.json()["error"]["code"] == "tokens_per_minute_exceeded"
    fits = {**COMPLETION, "max_tokens": 10, "ignore_eos": True}  # 13 tokens reserved
    assert httpx.post(url + "/v1/completions", headers=thrifty, json=fits).status_code == 200
    second = httpx.post(url + "/v1/completions", headers=thrifty, json=fits)  # 7 left
    assert second.status_code == 429 and second.json()["error"]["type"] == "rate_limit_error"
    assert "tokens per minute" in second.json()["error"]["message"]
    assert 1 <= int(second.headers["retry-after"]) <= 30


def test_concurrent_requests_cannot_overrun_tokens_per_minute(secured) -> None:
    """Each request reserves its prompt plus max_tokens before it starts, so 24 at once
    against 200 tokens a minute admit 8 (8 x 23 = 184), not all 24 (552)."""
    url, keys, _ = secured
    metered = {"Authorization": f"Bearer {keys['metered']}"}
    body = {**COMPLETION, "max_tokens": 20, "ignore_eos": True}
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(httpx.post(url + "/v1/completions", headers=metered, json=body,
                                  timeout=60))

    threads = [threading.Thread(target=send) for _ in range(24)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refilled = 200 * (time.monotonic() - started) / 60  # the bucket refills as they run
    served = [a for a in answers if a.status_code == 200]
    used = sum(a.json()["usage"]["total_tokens"] for a in served)
    assert {a.status_code for a in answers} == {200, 429}
    assert all(a.json()["usage"]["total_tokens"] == 23 for a in served)
    assert len(served) >= 8 and used <= 200 + refilled


def test_unused_reserved_tokens_come_back_when_a_stream_is_dropped(secured) -> None:
    url, keys, _ = secured
    refunded = {"Authorization": f"Bearer {keys['refunded']}"}
    body = {**COMPLETION, "max_tokens": 90, "ignore_eos": True, "stream": True}  # 93 of 100
    with httpx.stream("POST", url + "/v1/completions", headers=refunded,
                      json=body) as response:
        assert response.status_code == 200
        next(line for line in response.iter_lines() if line.startswith("data: "))
    deadline = time.monotonic() + 10  # a refill alone brings back 17 tokens in 10 s
    while True:
        again = httpx.post(url + "/v1/completions", headers=refunded,
                           json={**body, "stream": False})
        if again.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 90


def test_token_bucket_refills_over_time() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    for _ in range(3):
        limiter.admit("k", 3, None)
    with pytest.raises(RateLimited) as e:
        limiter.admit("k", 3, None)
    assert e.value.retry_after == pytest.approx(20.0)
    now[0] = 20.0
    limiter.admit("k", 3, None)  # one request's worth came back
    limiter.reserve("t", 600, 600)  # a whole minute's tokens
    with pytest.raises(RateLimited) as e:
        limiter.reserve("t", 600, 100)
    assert e.value.retry_after == pytest.approx(10.0)
    limiter.refund("t", 600, 450)  # the request used 150 of them
    limiter.reserve("t", 600, 450)
    with pytest.raises(RateLimited):
        limiter.reserve("t", 600, 1)
    now[0] = 21.0
    limiter.reserve("t", 600, 10)  # 10 tokens a second come back
    limiter.refund("t", 600, 10_000)
    limiter.reserve("t", 600, 600)  # a refund never fills past the minute's allowance
    with pytest.raises(RateLimited):
        limiter.reserve("t", 600, 1)
