"""Slow and greedy clients against a real uvicorn server on loopback, configured as
`lmforge serve` configures it: a bounded slowloris (a few dozen sockets sending a header
byte at a time) neither starves /health nor outlives the header timeout, a stalled body is
cut off, and one address cannot hold more than its share of connections.

The attackers connect from 127.0.0.2 (Linux routes all of 127/8 to loopback), the
well-behaved client from 127.0.0.1, so the per-client cap tells them apart."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import pytest

from lmforge.serve.config import ServeConfig
from lmforge.serve.metrics import Metrics
from test_serve_support import ServerThread

ATTACKER = "127.0.0.2"
LIMITS = {"max_concurrency": 24, "max_connections_per_client": 8, "header_timeout_s": 1.5,
          "body_timeout_s": 1.0}


async def tiny_app(scope, receive, send) -> None:
    """/health, and an echo of the body's length for anything else."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(size).encode()})


@pytest.fixture(params=["httptools", "h11"])
def server(request, monkeypatch):
    """The guarded server over each of uvicorn's HTTP implementations."""
    if request.param == "h11":
        from uvicorn.protocols.http import auto
        from uvicorn.protocols.http.h11_impl import H11Protocol

        monkeypatch.setattr(auto, "AutoHTTPProtocol", H11Protocol)
    metrics = Metrics()
    thread = ServerThread(tiny_app, ServeConfig(limits=LIMITS), metrics)
    url = thread.start()
    yield url, int(url.rsplit(":", 1)[1]), metrics
    thread.stop()


def attacker_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((ATTACKER, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_server(sock: socket.socket) -> bytes | None:
    """What the server sent before closing, or None while the socket is still open."""
    sock.setblocking(False)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except BlockingIOError:
        return None
    except ConnectionResetError:
        pass
    return received or b"(closed)"


def closed(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("lmforge_connections_closed_total",
                                             {"reason": reason}) or 0.0


def test_slowloris_cannot_starve_health_and_is_cut_off(server) -> None:
    url, port, metrics = server
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    socks = [attacker_socket(port) for _ in range(32)]
    connected = time.monotonic()
    stop = threading.Event()

    def drip() -> None:  # one more header byte per socket every 0.25 s
        for i in range(len(request)):
            if stop.wait(0.25):
                return
            for sock in socks:
                with contextlib.suppress(OSError):  # refused sockets are closed
                    sock.send(request[i:i + 1])

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        time.sleep(0.3)
        answers = {i: closed_by_server(sock) for i, sock in enumerate(socks)}
        refused = [a for a in answers.values() if a is not None]
        assert len(refused) == 32 - 8  # over the cap: answered at once
        assert all(a.startswith(b"HTTP/1.1 503") and b"too_many_connections" in a
                   for a in refused)
        while time.monotonic() - connected < 1.2:  # the 8 let in are still open
            assert httpx.get(url + "/health", timeout=2).status_code == 200
            time.sleep(0.1)
        time.sleep(max(0.0, connected + 1.9 - time.monotonic()))  # past the timeout (1.5 s)
        held = [socks[i] for i, a in answers.items() if a is None]
        timed_out = [closed_by_server(sock) for sock in held]
        assert all(a is not None and a.startswith(b"HTTP/1.1 408") and b"request_timeout" in a
                   for a in timed_out)
        assert httpx.get(url + "/health", timeout=2).status_code == 200
    finally:
        stop.set()
        dripper.join()
        for sock in socks:
            sock.close()
    assert closed(metrics, "per_client_limit") == 24 and closed(metrics, "header_timeout") == 8


def test_a_stalled_body_and_an_idle_connection_are_closed(server) -> None:
    _, port, metrics = server
    stalled = attacker_socket(port)
    stalled.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    idle = attacker_socket(port)  # connects and sends nothing
    time.sleep(0.5)
    assert closed_by_server(stalled) is None and closed_by_server(idle) is None
    time.sleep(1.5)  # past the body timeout (1 s) and the header timeout (1.5 s)
    assert closed_by_server(stalled) is not None and closed_by_server(idle) == b"(closed)"
    assert closed(metrics, "body_timeout") == 1 and closed(metrics, "header_timeout") == 1
    stalled.close()
    idle.close()


def test_slow_but_steady_bodies_and_long_requests_are_not_cut(server) -> None:
    url = server[0]

    def steady():  # 12 pieces, 0.3 s apart: 3.6 s in all, never 1 s without a read
        for _ in range(12):
            time.sleep(0.3)
            yield b"y" * 10

    answer = httpx.post(url + "/echo", content=steady(), timeout=10)
    assert answer.status_code == 200 and answer.text == "120"
    with httpx.Client(base_url=url) as client:  # kept alive: each request gets a fresh wait
        for _ in range(3):
            assert client.get("/health").status_code == 200
            time.sleep(0.6)
