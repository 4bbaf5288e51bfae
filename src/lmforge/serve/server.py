"""Running the app under uvicorn: connection limits, read deadlines, graceful shutdown, a
startup line.

On SIGINT/SIGTERM uvicorn stops accepting connections, waits up to `shutdown_timeout_s`
for in-flight requests (streams included) to finish, then runs the app's shutdown, which
stops the engines and writes the last audit rows. More open connections than
`limits.max_concurrency` are answered 503 at once; slow clients and clients holding too
many connections are cut off by the guards in connections.py. Binding an address other
than loopback without access control prints a warning: anyone who can reach the port may
use every model.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

from lmforge.errors import UserError
from lmforge.progress import console
from lmforge.serve.config import ServeConfig
from lmforge.serve.connections import guarded_protocol
from lmforge.serve.metrics import Metrics

NOT_A_NAME = {"checkpoints", "pretrain", "model", "export", "finetune"}


def default_model_name(path: Path) -> str:
    """The run's name for any path inside it: runs/demo/pretrain/checkpoints/best.pt -> demo."""
    path = Path(path).resolve()
    node = path.parent if path.is_file() else path
    while node.name in NOT_A_NAME and node.parent != node:
        node = node.parent
    return node.name or "model"


def exposure_warning(cfg: ServeConfig) -> str | None:
    """A warning when the server listens beyond this machine with no keys required."""
    if cfg.auth_db is not None or cfg.host == "localhost":
        return None
    try:
        if ipaddress.ip_address(cfg.host).is_loopback:
            return None
    except ValueError:  # a host name: it may resolve to anything
        pass
    return (f"warning: serving on {cfg.host} without --auth: anyone who can reach port "
            f"{cfg.port} may use it; create keys with `lmforge keys create --db keys.sqlite "
            "--role admin` and pass --auth keys.sqlite")


def uvicorn_config(app: Any, cfg: ServeConfig, metrics: Metrics | None = None,
                   log_level: str = "info") -> Any:
    """The uvicorn.Config `lmforge serve` runs `app` with (tests start servers with it).
    No route is a websocket, so upgrades are off: a connection stays with the guarded
    protocol from its first byte to its last."""
    import uvicorn

    return uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=log_level,
                          limit_concurrency=cfg.limits.max_concurrency,
                          timeout_graceful_shutdown=int(cfg.shutdown_timeout_s),
                          http=guarded_protocol(cfg.limits, metrics), ws="none")


def serve(cfg: ServeConfig) -> None:
    import uvicorn

    from lmforge.serve.app import build_app

    if not cfg.models:
        raise UserError("nothing to serve; pass a PATH or list serve.models in the config")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    warning = exposure_warning(cfg)
    if warning is not None:
        console.print(warning, style="bold yellow", markup=False)
    app = build_app(cfg)
    names = ", ".join(m.name for m in cfg.models)
    auth = f"keys in {cfg.auth_db}" if cfg.auth_db else "no keys (local use)"
    audit = f"audit log {cfg.audit_path()}" if cfg.audit.enabled else "no audit log"
    console.print(f"[bold]serving[/] {names} at http://{cfg.host}:{cfg.port}/v1 ({auth}; "
                  f"{audit})")
    server = uvicorn.Server(uvicorn_config(app, cfg, app.state.lmforge.metrics))
    try:
        server.run()
    except KeyboardInterrupt:  # Ctrl-C after a graceful shutdown, as uvicorn.run treats it
        return
    if not server.started:
        raise UserError(f"could not listen on {cfg.host}:{cfg.port} (the error is above); "
                        "pick another --port or --host")
