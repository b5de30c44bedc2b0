"""imsvc serve | migrate | token."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from imsvc.settings import Settings, SettingsError, load_settings

EXIT_CONFIG = 2


def fail(lines: list[str]) -> None:
    for line in lines:
        print(f"imsvc: configuration error: {line}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def settings_or_exit(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        fail(exc.lines)
        raise AssertionError("unreachable") from None


def uvicorn_options() -> dict[str, Any]:
    """Options shared by `serve` and the test servers."""
    from imsvc.wsproto import CompactDeflateProtocol

    return {
        "ws": CompactDeflateProtocol,
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        "ws_max_size": 1 << 20,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 30,
    }


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from imsvc.db import migrate

    settings = settings_or_exit(**({"dev_mode": True} if args.dev else {}))
    if args.workers > 1 and settings.bus != "postgres":
        # Sockets on different workers would miss each other's messages without a shared bus.
        fail(["BUS: --workers above 1 needs BUS=postgres (LISTEN/NOTIFY between the processes)"])
    if settings.migrate_on_start:
        migrate(settings.database_url)
    if args.workers > 1:
        if args.dev:  # the workers read their settings again, from the environment
            os.environ["DEV_MODE"] = "true"
            os.environ.setdefault("JWT_SECRET", settings.secret)
        uvicorn.run(
            "imsvc.app:from_environment",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            **uvicorn_options(),
        )
        return
    from imsvc.app import GracefulServer, create_app, tune_gc

    app = create_app(settings)
    tune_gc()
    GracefulServer(uvicorn.Config(app, host=args.host, port=args.port, **uvicorn_options())).run()


def run_migrate(args: argparse.Namespace) -> None:
    from imsvc.db import migrate

    migrate(settings_or_exit(dev_mode=True).database_url)


def token(args: argparse.Namespace) -> None:
    from imsvc.auth import mint_token

    # A dev mode's random secret would sign a token no server accepts: a real JWT_SECRET is required.
    settings = settings_or_exit(dev_mode=False)
    try:
        print(mint_token(settings.secret, args.user_id, args.ttl))
    except ValueError as exc:
        print(f"imsvc: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="imsvc", description="Instant messaging with an AI assistant.")
    commands = top.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="migrate (unless MIGRATE_ON_START=false) and serve")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8000)
    serve_cmd.add_argument("--dev", action="store_true", help="dev mode: random secret if none, POST /dev/token")
    serve_cmd.add_argument("--workers", type=int, default=1)
    serve_cmd.set_defaults(run=serve)
    commands.add_parser("migrate", help="alembic upgrade head against DATABASE_URL").set_defaults(run=run_migrate)
    token_cmd = commands.add_parser("token", help="print a signed access token")
    token_cmd.add_argument("user_id")
    token_cmd.add_argument("--ttl", type=int, default=24 * 3600, help="seconds (default one day)")
    token_cmd.set_defaults(run=token)
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.run(args)
