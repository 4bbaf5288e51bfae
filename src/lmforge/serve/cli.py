"""Commands: `lmforge serve`, `lmforge keys create|list|revoke`, `lmforge chat`."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from lmforge.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve", help="serve models over an OpenAI-compatible HTTP API",
        description="Serve a run dir (its best checkpoint), a checkpoint, a model dir or an "
        "HF export dir at /v1/completions and /v1/chat/completions. Without --auth anyone "
        "who can reach the port may use it (bind to 127.0.0.1, the default). With -c the "
        "config's serve: section is used; flags and dotted overrides "
        "(--serve.limits.max_tokens=512) change it.",
    )
    serve.add_argument("path", nargs="?", help="what to serve (default: the config's models)")
    serve.add_argument("-c", "--config", help="run config (YAML) with a serve: section")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--auth", metavar="DB", help="turn access control on with this key store")
    serve.add_argument("--name", help="model id clients send (default: the run's name)")
    serve.add_argument("--tokenizer", help="tokenizer dir (default: found next to the model)")
    serve.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                       help="also serve this PEFT LoRA adapter of PATH as model NAME, over "
                       "the same weights (repeatable)")
    serve.add_argument("--device", help="cpu, cuda or cuda:N")
    serve.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    serve.add_argument("--max-batch", type=int, help="sequences decoded together")
    serve.add_argument("--kv-cache-dtype", choices=["auto", "int8"],
                       help="int8: keys and values held in int8 (a quarter of fp32's memory)")
    serve.add_argument("--max-queue", type=int, help="waiting requests before 503")
    serve.add_argument("--audit", metavar="PATH", help="audit log SQLite file")
    serve.add_argument("--no-audit", action="store_true", help="keep no audit log")
    serve.set_defaults(handler=_serve, accepts_overrides=True)

    keys = sub.add_parser("keys", help="create, list and revoke API keys",
                          description="Manage the key store that `lmforge serve --auth DB` "
                          "checks. Roles: user (chat), developer (all inference, logprobs), "
                          "admin (everything, /admin endpoints).")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    create = keys_sub.add_parser("create", help="make a key and print it (shown only once)")
    create.add_argument("--db", required=True, help="key store (SQLite; created if missing)")
    create.add_argument("--role", required=True, choices=["user", "developer", "admin"])
    create.add_argument("--name", help="a label for the key")
    create.add_argument("--rpm", type=int, help="this key's requests per minute")
    create.add_argument("--tpm", type=int, help="this key's tokens per minute")
    create.set_defaults(handler=_keys_create)
    listing = keys_sub.add_parser("list", help="one key per line, id first, newest last")
    listing.add_argument("--db", required=True)
    listing.set_defaults(handler=_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("--db", required=True)
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=_keys_revoke)

    chat = sub.add_parser("chat", help="chat with a model in the terminal",
                          description="Chat with a local model (a run dir, checkpoint or "
                          "export dir) or a server URL (http://host:port). Replies stream; "
                          "the history is kept. /reset clears it, /exit leaves.")
    chat.add_argument("target", help="model path or server URL")
    chat.add_argument("--model", help="model id on the server (default: its first)")
    chat.add_argument("--api-key", help="key for a server with access control "
                      "(default: $LMFORGE_API_KEY)")
    chat.add_argument("--system", help="system message")
    chat.add_argument("--tokenizer", help="tokenizer dir for a local model")
    chat.add_argument("-t", "--temperature", type=float, default=0.7)
    chat.add_argument("-n", "--max-tokens", type=int, default=256)
    chat.add_argument("--seed", type=int)
    chat.set_defaults(handler=_chat)

    ab = sub.add_parser("ab", help="judge live A/B traffic from the audit log")
    ab_sub = ab.add_subparsers(dest="ab_command", metavar="ACTION")
    report = ab_sub.add_parser(
        "report", help="per-variant latency, errors and feedback, with the replace verdict",
        description="Read the server's audit log (read-only): per variant of a model, the "
        "error rate, latency and user feedback (POST /v1/feedback); each candidate replaces "
        "the baseline only if better on every metric with the given confidence.")
    report.add_argument("--audit", required=True, help="the server's audit.sqlite")
    report.add_argument("--model", help="model with variants (default: the only one)")
    report.add_argument("--baseline", help="variant to beat (default: the first seen)")
    report.add_argument("--since-hours", type=float, help="only this recent traffic")
    report.add_argument("--confidence", type=float, default=0.95)
    report.add_argument("-o", "--output", help="also write the report as JSON here")
    report.set_defaults(handler=_ab_report)


def _ab_report(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.io import atomic_write_json
    from lmforge.serve.ab import ab_report, print_report

    if not 0.5 < args.confidence < 1:
        raise UserError(f"--confidence {args.confidence} must be between 0.5 and 1, e.g. 0.95")
    since = args.since_hours * 3600 if args.since_hours else None
    report = ab_report(Path(args.audit), args.model, args.baseline, since, args.confidence)
    print_report(report)
    if args.output:
        atomic_write_json(Path(args.output), report)
    return 0


def _serve(args: argparse.Namespace, overrides: list[str]) -> int:
    from pydantic import ValidationError

    from lmforge.config import describe_validation_error, load_config
    from lmforge.serve.config import ModelSpec
    from lmforge.serve.server import default_model_name, serve

    cfg = load_config(args.config, overrides)
    sc = cfg.serve
    updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if args.auth:
        updates["auth_db"] = Path(args.auth)
    path = args.path or (str(cfg.run.path) if args.config and not sc.models else None)
    if path is not None:
        updates["models"] = [ModelSpec(name=args.name or default_model_name(Path(path)),
                                       path=Path(path))]
        if args.tokenizer:
            updates["models"][0].variants[0].tokenizer = Path(args.tokenizer)
        updates["models"][0].adapters = [_adapter(a) for a in args.adapter]
    elif args.adapter:
        raise UserError("--adapter needs a PATH to serve it over; in a config, list adapters "
                        "under the model's adapters:")
    engine = {k: v for k, v in (("device", args.device), ("dtype", args.dtype),
                                ("max_batch", args.max_batch), ("max_queue", args.max_queue),
                                ("kv_cache_dtype", args.kv_cache_dtype))
              if v is not None}
    if engine:
        updates["engine"] = sc.engine.model_copy(update=engine)
    audit = {}
    if args.audit:
        audit["path"] = Path(args.audit)
    if args.no_audit:
        audit["enabled"] = False
    if audit:
        updates["audit"] = sc.audit.model_copy(update=audit)
    try:
        final = sc.model_validate({**sc.model_dump(), **{k: _dump(v) for k, v in updates.items()}})
    except ValidationError as e:  # a bad flag: named as the config key it sets
        raise UserError(describe_validation_error(e, type(sc), "serve")) from None
    serve(final)
    return 0


def _adapter(arg: str):
    from pydantic import ValidationError

    from lmforge.serve.config import AdapterSpec

    name, sep, path = arg.partition("=")
    if not sep or not name or not path:
        raise UserError(f"--adapter {arg!r}: write it as NAME=DIR, e.g. --adapter sql=runs/sql/"
                        "finetune/adapter")
    try:
        return AdapterSpec(name=name, path=Path(path))
    except ValidationError:
        raise UserError(f"--adapter {arg!r}: a model id is letters, digits and _ . : / -"
                        ) from None


def _dump(value):
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value.model_dump() if hasattr(value, "model_dump") else value


def _store(db: str, must_exist: bool):
    from lmforge.serve.auth import KeyStore

    if must_exist and not Path(db).is_file():
        raise UserError(f"no key store at {db}; make one with `lmforge keys create --db {db}`")
    return KeyStore(Path(db))


def _keys_create(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.serve.auth import MAX_RATE

    for flag, value in (("--rpm", args.rpm), ("--tpm", args.tpm)):
        if value is not None and not 1 <= value <= MAX_RATE:
            raise UserError(f"{flag} must be between 1 and {MAX_RATE}, got {value}")
    store = _store(args.db, must_exist=False)
    key, secret = store.create(args.role, args.name, args.rpm, args.tpm)
    store.close()
    print(secret)
    print(f"created {key.role} key {key.id}; keep it now, it cannot be shown again",
          file=sys.stderr)
    return 0


def _keys_list(args: argparse.Namespace, overrides: list[str]) -> int:
    store = _store(args.db, must_exist=True)
    for key in store.list():
        created = datetime.datetime.fromtimestamp(key.created).isoformat(timespec="seconds")
        status = "revoked" if key.revoked is not None else "active"
        limits = f"rpm={key.requests_per_minute or '-'} tpm={key.tokens_per_minute or '-'}"
        print(f"{key.id}\t{key.role}\t{status}\t{created}\t{limits}\t{key.name or ''}")
    store.close()
    return 0


def _keys_revoke(args: argparse.Namespace, overrides: list[str]) -> int:
    store = _store(args.db, must_exist=True)
    revoked = store.revoke(args.key_id)
    store.close()
    if not revoked:
        raise UserError(f"no active key {args.key_id!r} in {args.db}; "
                        f"`lmforge keys list --db {args.db}` shows the ids")
    print(f"revoked {args.key_id}")
    return 0


def _chat(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmforge.serve.chat import chat_loop, open_backend

    if args.max_tokens < 1 or args.temperature < 0:
        raise UserError("--max-tokens must be >= 1 and --temperature >= 0")
    backend = open_backend(args.target, args.model, args.api_key, args.tokenizer,
                           args.max_tokens, args.temperature, args.seed)
    try:
        chat_loop(backend, args.system)
    finally:
        backend.close()
    return 0
