"""Running the app under uvicorn: connection limit, graceful shutdown, a startup line.

On SIGINT/SIGTERM uvicorn stops accepting connections, waits up to `shutdown_timeout_s`
for in-flight requests (streams included) to finish, then runs the app's shutdown, which
stops the engines and writes the last audit rows. More open connections than
`limits.max_concurrency` are answered 503 at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmforge.errors import UserError
from lmforge.progress import console
from lmforge.serve.config import ServeConfig

NOT_A_NAME = {"checkpoints", "pretrain", "model", "export", "finetune"}


def default_model_name(path: Path) -> str:
    """The run's name for any path inside it: runs/demo/pretrain/checkpoints/best.pt -> demo."""
    path = Path(path).resolve()
    node = path.parent if path.is_file() else path
    while node.name in NOT_A_NAME and node.parent != node:
        node = node.parent
    return node.name or "model"


def serve(cfg: ServeConfig) -> None:
    import uvicorn

    from lmforge.serve.app import build_app

    if not cfg.models:
        raise UserError("nothing to serve; pass a PATH or list serve.models in the config")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = build_app(cfg)
    names = ", ".join(m.name for m in cfg.models)
    auth = f"keys in {cfg.auth_db}" if cfg.auth_db else "no keys (local use)"
    audit = f"audit log {cfg.audit_path()}" if cfg.audit.enabled else "no audit log"
    console.print(f"[bold]serving[/] {names} at http://{cfg.host}:{cfg.port}/v1 ({auth}; "
                  f"{audit})")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info",
                limit_concurrency=cfg.limits.max_concurrency,
                timeout_graceful_shutdown=int(cfg.shutdown_timeout_s))
