"""`lmforge serve` as a process (graceful shutdown loses nothing), backpressure, the config
section, and `lmforge chat` against a local model and a server."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.errors import UserError
from lmforge.serve.app import build_app
from lmforge.serve.auth import KeyStore
from lmforge.serve.chat import LocalChat, RemoteChat, chat_loop
from lmforge.serve.config import ServeConfig
from lmforge.serve.engine import visible_device
from lmforge.serve.server import default_model_name, exposure_warning
from test_serve_support import DIALOGUES, ServerThread, make_model_dir, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("cli"))


def script(*lines: str):
    """A stand-in for input(): the given lines, then EOF (Ctrl-D)."""
    pending = list(lines)

    def read(_prompt: str) -> str:
        if not pending:
            raise EOFError
        return pending.pop(0)

    return read


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_process_drains_in_flight_streams_on_sigterm(model_dir: Path,
                                                           tmp_path: Path) -> None:
    port, audit = free_port(), tmp_path / "audit.sqlite"
    db = tmp_path / "keys.sqlite"
    secret = KeyStore(db).create("developer")[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmforge", "serve", str(model_dir), "--name", "tiny",
         "--port", str(port),
         "--auth", str(db), "--audit", str(audit), "--serve.engine.threads=1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        headers = {"Authorization": f"Bearer {secret}"}
        results: list[str] = []
        started = threading.Barrier(5)

        def stream() -> None:  # greedy: a sampled text could hold PII and come back redacted
            body = {"model": "tiny", "prompt": "the", "max_tokens": 110, "stream": True,
                    "ignore_eos": True, "temperature": 0}
            with httpx.stream("POST", url + "/v1/completions", json=body, headers=headers,
                              timeout=60) as response:
                lines = response.iter_lines()
                first = next(lines)
                started.wait(60)
                results.append("\n".join([first, *lines]))

        threads = [threading.Thread(target=stream) for _ in range(4)]
        for t in threads:
            t.start()
        started.wait(60)  # every stream has its first chunk: all four are in flight
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert proc.wait(60) == -signal.SIGTERM  # uvicorn re-raises it after draining
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.stdout.read()
    assert "serving tiny at http://127.0.0.1" in output
    assert len(results) == 4 and all(r.rstrip().endswith("data: [DONE]") for r in results)
    texts = ["".join(json.loads(line[6:])["choices"][0]["text"]
                     for line in r.splitlines() if line.startswith("data: {")) for r in results]
    assert len(texts[0]) == 110 and texts == texts[:1] * 4
    rows = sqlite3.connect(audit).execute(
        "SELECT key_id, status, completion_tokens FROM requests").fetchall()
    assert rows == [(secret.split("-")[1], 200, 110)] * 4


def _wait_ready(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stdout.read()}")
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve did not become ready")


def test_a_full_queue_answers_503_with_retry_after(model_dir: Path, tmp_path: Path) -> None:
    cfg = ServeConfig(models=[{"name": "tiny", "path": model_dir}],
                      engine={"max_batch": 1, "max_queue": 0, "threads": 1},
                      audit={"path": tmp_path / "audit.sqlite"})
    thread = ServerThread(build_app(cfg))
    url = thread.start()
    try:
        body = {"model": "tiny", "prompt": "the", "max_tokens": 100, "ignore_eos": True}
        refused = httpx.post(url + "/v1/completions", json={**body, "n": 2})  # 2 > 1 slot
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        served = httpx.post(url + "/v1/completions", json=body)  # the first choice let go
        assert served.status_code == 200
        assert served.json()["usage"]["completion_tokens"] == 100
    finally:
        thread.stop()


def test_serve_config_section_and_cli_errors(tmp_path: Path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("serve:\n  port: 9100\n  limits: {requests_per_minute: 30}\n"
                      "  models:\n    - {name: demo, path: runs/demo}\n", encoding="utf-8")
    cfg = load_config(config, ["--serve.engine.max_batch=4"]).serve
    assert cfg.port == 9100 and cfg.limits.requests_per_minute == 30
    assert cfg.engine.max_batch == 4 and cfg.models[0].variants[0].name == "primary"
    assert default_model_name(tmp_path / "runs" / "demo" / "pretrain" / "checkpoints") == "demo"
    assert main(["serve", str(tmp_path / "nothing-here")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("serve:\n  models:\n    - {name: x}\n", encoding="utf-8")
    assert main(["serve", "-c", str(bad)]) == 2
    assert "give a path or at least one variant" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--max-batch", "0"]) == 2
    assert "bad value for serve.engine.max_batch" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--device", "gpu"]) == 2
    assert "the device must be cpu, cuda or cuda:N (got 'gpu')" in capsys.readouterr().err


def test_a_gpu_that_is_not_there_is_a_user_error() -> None:
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(UserError, match=f"serve device {missing} is not visible"):
        visible_device(missing)


def test_chat_locally_keeps_history_and_trims_it(model_dir: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("builtins.input", script("hello", "/reset", "what is 2+2", "/exit"))
    assert main(["chat", str(model_dir), "-t", "0", "-n", "40"]) == 0
    out = capsys.readouterr().out
    assert f"assistant> {DIALOGUES['hello']}\n" in out and "(conversation cleared)" in out
    assert f"assistant> {DIALOGUES['what is 2+2']}\n" in out  # a fresh conversation again
    backend = LocalChat(model_dir, None, 40, 0.0, None)
    sizes: list[int] = []
    reply = backend.reply
    backend.reply = lambda messages: (sizes.append(len(messages)), reply(messages))[1]
    with open(os.devnull, "w") as sink:
        assert chat_loop(backend, "be nice", read=script(*["hello"] * 6), out=sink) == 6
    backend.close()
    assert sizes[:2] == [2, 4]  # system + user, then the whole conversation so far
    assert any(b < a for a, b in itertools.pairwise(sizes))  # old turns dropped
    assert max(sizes) < 2 * 6


def test_chat_against_a_server(model_dir: Path, tmp_path: Path) -> None:
    cfg = ServeConfig(models=[{"name": "tiny", "path": model_dir}], engine={"threads": 1},
                      audit={"path": tmp_path / "audit.sqlite"})
    thread = ServerThread(build_app(cfg))
    url = thread.start()
    try:
        backend = RemoteChat(url, None, None, 40, 0.0, None)
        printed: list[str] = []

        class Out:
            def write(self, text: str) -> None:
                printed.append(text)

            def flush(self) -> None:
                pass

        assert chat_loop(backend, None, read=script("hello", "/reset", "what is 2+2"),
                         out=Out()) == 2
        backend.close()
    finally:
        thread.stop()
    text = "".join(printed)
    assert f"assistant> {DIALOGUES['hello']}\n" in text
    assert f"assistant> {DIALOGUES['what is 2+2']}\n" in text
    assert len([p for p in printed if p not in ("assistant> ", "\n")]) > 4  # it streamed


def test_a_public_host_without_auth_prints_a_warning(tmp_path: Path, capsys) -> None:
    assert main(["serve", str(tmp_path / "nothing-here"), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "warning: serving on 0.0.0.0 without --auth" in err and "does not exist" in err
    for host, auth, warned in (("0.0.0.0", None, True), ("::", None, True),
                               ("example.org", None, True), ("10.0.0.5", "k.sqlite", False),
                               ("127.0.0.1", None, False), ("127.5.0.1", None, False),
                               ("::1", None, False), ("localhost", None, False)):
        cfg = ServeConfig(host=host, auth_db=auth)
        assert (exposure_warning(cfg) is not None) == warned, host


def test_keys_cli_refuses_limits_sqlite_cannot_store(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "keys.sqlite")
    for flag in ("--rpm", "--tpm"):
        assert main(["keys", "create", "--db", db, "--role", "user", flag, str(2**63)]) == 2
        assert f"{flag} must be between 1 and {2**63 - 1}" in capsys.readouterr().err
    store = KeyStore(Path(db))
    with pytest.raises(UserError, match="requests per minute must be between"):
        store.create("user", requests_per_minute=10**20)
    store.close()
