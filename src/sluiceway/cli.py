"""Command line: ``sluiceway serve`` (and, as they land, ``worker``, ``classify``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import uvicorn

from sluiceway import __version__, logs
from sluiceway.config import Settings


def _serve(args: argparse.Namespace) -> int:
    # Flags become SLUICEWAY_* variables so every worker process builds the same Settings.
    for name in ("host", "port", "workers"):
        value = getattr(args, name)
        if value is not None:
            os.environ[f"SLUICEWAY_{name.upper()}"] = str(value)
    settings = Settings()
    logs.configure(settings.log_level)
    uvicorn.run(
        "sluiceway.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,  # our RequestContext logs access when SLUICEWAY_ACCESS_LOG is on
        log_config=None,
        backlog=4096,
        timeout_graceful_shutdown=int(settings.request_timeout_s),
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``sluiceway`` argument parser."""
    parser = argparse.ArgumentParser(prog="sluiceway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sluiceway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server (embedded models by default)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--workers", type=int, help="HTTP worker processes (default 1)")
    serve.set_defaults(run=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sluiceway`` command."""
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code
