"""``liverseg`` command line: thin argument parsing over the importable API.

Each sub-command lives in the module that implements it, as a ``register_cli(subparsers)`` function that adds a
parser and sets ``func`` (called with the parsed namespace; returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from liverseg import __version__
from liverseg.errors import LiverSegError

COMMAND_MODULES = (
    "liverseg.phantom",
    "liverseg.convert",
    "liverseg.verify",
    "liverseg.preview",
    "liverseg.windowing",
    "liverseg.evaluation",
    "liverseg.realeval",
    "liverseg.compare",
    "liverseg.serve",
    "liverseg.segment",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liverseg", description="Liver / liver-tumor CT segmentation toolkit: data tooling."
    )
    parser.add_argument("--version", action="version", version=f"liverseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except LiverSegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
