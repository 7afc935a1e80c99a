"""Command line: ``sluiceway serve``, ``worker``, ``classify`` and ``models``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from sluiceway import __version__, logs
from sluiceway.config import Settings
from sluiceway.edge import EdgeProtocol


def _serve(args: argparse.Namespace) -> int:
    # Flags become SLUICEWAY_* variables so every worker process builds the same Settings.
    for name in ("host", "port", "workers"):
        value = getattr(args, name)
        if value is not None:
            os.environ[f"SLUICEWAY_{name.upper()}"] = str(value)
    if args.broker is not None:
        os.environ["SLUICEWAY_BROKER_URL"] = args.broker
    if args.model_repository is not None:
        os.environ["SLUICEWAY_MODEL_REPOSITORY"] = args.model_repository
    settings = Settings()
    logs.configure(settings.log_level)
    if settings.broker_url and settings.repository_poll_s:
        from sluiceway.app import POLL_IN_SPLIT_MODE

        # Here, once: raised in each worker process, uvicorn would start them again and again.
        print(f"sluiceway serve: {POLL_IN_SPLIT_MODE}", file=sys.stderr)
        return 2
    uvicorn.run(
        "sluiceway.cli:served_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=EdgeProtocol,  # httptools with header, time and concurrency limits
        timeout_keep_alive=settings.keep_alive_timeout_s,
        access_log=False,  # our RequestContext logs access when SLUICEWAY_ACCESS_LOG is on
        log_config=None,
        backlog=4096,
        timeout_graceful_shutdown=int(settings.request_timeout_s),
    )
    return 0


def served_app() -> Any:
    """The app as ``sluiceway serve`` runs it in each process, logging configured first: with
    ``SLUICEWAY_WORKERS`` > 1 each worker is a fresh process that runs only this factory, and
    would otherwise write nothing below WARNING and have no log settings to serve."""
    from sluiceway.app import create_app

    settings = Settings()
    logs.configure(settings.log_level)
    return create_app(settings)


def _worker(args: argparse.Namespace) -> int:
    import uvloop

    from sluiceway.kinds import served_kinds
    from sluiceway.split.command import select_kinds, serve_until_signalled

    for name, value in (
        ("BROKER_URL", args.broker),
        ("WORKER_MODELS", args.models),
        ("MODEL_REPOSITORY", args.model_repository),
        ("WORKER_ID", args.id),
    ):
        if value is not None:
            os.environ[f"SLUICEWAY_{name}"] = value
    settings = Settings()
    logs.configure(settings.log_level)
    if not settings.broker_url:
        print("sluiceway worker: give --broker redis://HOST:PORT/DB", file=sys.stderr)
        return 2
    try:
        kinds = select_kinds(served_kinds(settings), settings.worker_models)
    except ValueError as error:
        print(f"sluiceway worker: {error}", file=sys.stderr)
        return 2
    uvloop.run(serve_until_signalled(settings, kinds))
    return 0


def _classify(args: argparse.Namespace) -> int:
    from sluiceway import classify  # loads the model runtimes; only this command needs them

    settings = Settings()
    logs.configure("DEBUG" if args.verbose else settings.log_level)
    # httpx logs every request at INFO and httpcore every socket step at DEBUG: not essentials.
    logging.getLogger("httpx").setLevel(logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.INFO)
    return classify.run(args.urls, args.k, settings)


def _models(args: argparse.Namespace) -> int:
    """``sluiceway models list|load|unload``: a running server's models, for operators."""
    import httpx

    base = args.url.rstrip("/")
    token = args.token or os.environ.get("SLUICEWAY_ADMIN_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(timeout=args.timeout, headers=headers) as http:
            if args.action == "list":
                response = http.get(f"{base}/v1/models")
            else:
                if not args.name:
                    print(f"sluiceway models {args.action}: name a model", file=sys.stderr)
                    return 2
                response = http.post(f"{base}/v2/repository/models/{args.name}/{args.action}")
    except httpx.HTTPError as error:
        print(f"sluiceway models: {base} cannot be reached: {error}", file=sys.stderr)
        return 1
    if response.is_error:
        print(
            f"sluiceway models {args.action}: {response.status_code} {response.text}",
            file=sys.stderr,
        )
        return 1
    body: dict[str, Any] = response.json()
    if args.action == "list":
        for model in body["models"]:
            reason = f"  ({model['reason']})" if model.get("reason") else ""
            print(
                f"{model['name']:<24} {model['version']:<4} {model['state']:<12}"
                f" {model.get('kind', '')}{reason}"
            )
    else:
        print(f"{body['name']} version {body['version']}: {body['state']}")
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
    serve.add_argument("--broker", help="redis://HOST:PORT/DB: run as an API node of split mode")
    serve.add_argument("--model-repository", help="a folder of your own models to serve")
    serve.set_defaults(run=_serve)
    worker = commands.add_parser("worker", help="run a model worker of split mode (over Redis)")
    worker.add_argument("--broker", help="redis://HOST:PORT/DB (or SLUICEWAY_BROKER_URL)")
    worker.add_argument("--models", help="comma-separated models to serve (default: all)")
    worker.add_argument("--model-repository", help="the folder of your own models (shared path)")
    worker.add_argument("--id", help="this worker's name, unique per live worker (default random)")
    worker.set_defaults(run=_worker)
    classify = commands.add_parser(
        "classify", help="print the top birds of each image URL (standalone, no server)"
    )
    classify.add_argument("urls", nargs="+", metavar="URL", help="image URLs")
    classify.add_argument(
        "--k",
        type=int,
        default=3,
        choices=range(0, 11),
        metavar="K",
        help="matches per image, 0-10 (default 3)",
    )
    classify.add_argument("-v", "--verbose", action="store_true", help="DEBUG logging")
    classify.set_defaults(run=_classify)
    models = commands.add_parser("models", help="list, load or unload a running server's models")
    models.add_argument("action", choices=("list", "load", "unload"))
    models.add_argument("name", nargs="?", help="the model to load or unload")
    models.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    models.add_argument("--token", help="the admin token (default: $SLUICEWAY_ADMIN_TOKEN)")
    models.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (loads)")
    models.set_defaults(run=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sluiceway`` command."""
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code
