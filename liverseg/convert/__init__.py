"""Converters from public dataset layouts to nnU-Net's raw layout (see :mod:`liverseg.dataset`).

One module per source layout, each with an importable ``convert_*`` function and a ``register_cli`` that adds
its ``liverseg convert <source>`` sub-command.
"""

from __future__ import annotations

import argparse
import importlib

SOURCE_MODULES = (
    "liverseg.convert.ircadb",
    "liverseg.convert.lits",
    "liverseg.convert.dicom_seg",
    "liverseg.convert.lits117",
)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="convert a dataset to nnU-Net's raw layout")
    sub = parser.add_subparsers(dest="source", metavar="SOURCE")
    sub.required = True
    for name in SOURCE_MODULES:
        importlib.import_module(name).register_cli(sub)
