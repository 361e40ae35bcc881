"""``xrec worker``: run a stream worker (several can run side by side on one broker)."""

from __future__ import annotations

import argparse

from xrec.errors import CommandError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("worker", help="run a stream worker: items → store, events → profiles → lists")
    p.add_argument("--web-port", type=int, help="HTTP port for views and /metrics (XREC_WEB_PORT)")
    p.add_argument("--store-path", help="edge store directory (XREC_STORE_PATH)")
    p.add_argument(
        "--no-encoder",
        action="store_true",
        help="do not load a text model: items must carry precomputed vectors (needs --dim)",
    )
    p.add_argument("--dim", type=int, help="vector dimension when running without an encoder")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xrec.broker import ensure_broker
    from xrec.config import Settings

    overrides = {}
    if args.web_port:
        overrides["web_port"] = args.web_port
    if args.store_path:
        overrides["store_path"] = args.store_path
    settings = Settings.from_env(**overrides)
    if args.no_encoder and not args.dim:
        raise CommandError("--no-encoder needs --dim (the dimension of the vectors your items carry)")
    bootstrap = ensure_broker(settings)

    from streams.worker import run_worker

    run_worker(
        settings,
        bootstrap,
        with_encoder=not args.no_encoder,
        dim=args.dim,
        loglevel="debug" if args.verbose else "info",
    )
    return 0
