"""The ``cryptoface`` command line: each sub-command lives in its own module with a ``register``."""

from __future__ import annotations

import argparse
import importlib
import sys

from cryptoface.errors import CryptoFaceError
from cryptoface.heap import limit_arenas

# Modules under cryptoface.cli, each exposing register(subparsers) that sets ``func`` on its parser.
COMMAND_MODULES = [
    "eval_cmd",
    "model_cmd",
    "service_cmd",
    "admin_cmd",
    "bench_cmd",
    "bench_match_cmd",
    "train_cmd",
    "prepare_cmd",
    "ui_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryptoface", description="Face recognition under CKKS encryption.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"cryptoface.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cryptoface`` script; returns the process exit status."""
    limit_arenas()  # before any engine or server thread exists (cryptoface.heap)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CryptoFaceError as exc:
        print(f"cryptoface: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
