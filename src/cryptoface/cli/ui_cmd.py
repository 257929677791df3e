"""``cryptoface ui``: the client's web app on this machine (the key set stays here; see cryptoface.ui)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from cryptoface.cli.service_cmd import _connect, _connection_args, _load_model
from cryptoface.params import DEFAULT_PROTOCOL, PROTOCOLS

DEFAULT_PORT = 8470


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ui", help="a web app on 127.0.0.1 for enrol / verify / identify (after keygen)")
    _connection_args(p)
    p.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL, help="as for enroll/verify")
    p.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--standin", action="store_true",
                   help="TESTING ONLY: clear embeddings, encrypted, instead of encrypted inference (small key sets)")
    p.add_argument("--model", type=Path, default=None, help="model for --standin (default: the bundled one)")
    p.set_defaults(func=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    from cryptoface.client.settings import resolve_settings
    from cryptoface.ui import UiSession, check_loopback, new_secret, serve_ui

    check_loopback(args.host)
    client = _connect(args)
    client.progress = None  # the pages show the server's progress; no terminal bar
    server = resolve_settings(args.server, None, None, args.home).server

    def announce(url: str) -> None:
        print(f"CryptoFace web app for key set {client.key_id[:12]} (server {server}):\n  {url}\n"
              "Open this link in a browser on this machine; it holds this session's secret, keep it private. "
              "Ctrl-C stops the app.", flush=True)

    standin = _load_model(args.model) if args.standin else None
    with client, contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it shut down on
        serve_ui(UiSession(client, server, new_secret(), host=args.host, standin=standin), port=args.port,
                 announce=announce)
    print("web app stopped; running tasks were cancelled", flush=True)
    return 0
