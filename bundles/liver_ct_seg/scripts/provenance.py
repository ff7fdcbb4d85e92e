"""Provenance written next to every training or evaluation output: seed, resolved config, versions, command."""

from __future__ import annotations

import datetime
import inspect
import json
import logging
import os
import platform
import subprocess
import sys
from typing import Any

logger = logging.getLogger(__name__)

PACKAGES = ("torch", "monai", "monailabel", "pytorch-ignite", "numpy", "nibabel", "itk", "pydicom")


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _git_commit(path: str) -> str | None:
    try:
        res = subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None


def portable_command(argv: list[str]) -> list[str]:
    """``sys.argv`` as a person would type it: ``python -m monai.bundle ...`` instead of the module's file path."""
    if argv and argv[0].replace("\\", "/").endswith("monai/bundle/__main__.py"):
        return ["python", "-m", "monai.bundle", *argv[1:]]
    return list(argv)


def _repo_relative(path: str) -> str:
    """``path`` relative to the root of the git checkout that holds it (no machine's absolute paths in shared
    records); the absolute path outside a checkout."""
    try:
        res = subprocess.run(
            ["git", "-C", path, "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return path
    top = res.stdout.strip()
    return os.path.relpath(path, top) if top else path


def _write_json_atomic(path: str, data: Any) -> None:
    """JSON with 4-space indent and a final newline (the model zoo's pretty-format-json), written atomically."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=4, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _running_config() -> dict[str, Any] | None:
    """The config (after command-line overrides) of the ``monai.bundle`` workflow that is initializing, if any."""
    from monai.bundle import ConfigParser

    for frame_info in inspect.stack():
        for value in frame_info.frame.f_locals.values():
            if isinstance(value, ConfigParser):
                return value.get()
            # ConfigParser resolves unknown attributes as config ids, so look into instance dicts only
            parser = getattr(value, "__dict__", {}).get("parser")
            if isinstance(parser, ConfigParser):
                return parser.get()
    return None


def write_provenance(output_dir: str, seed: int | None = None, config: dict[str, Any] | None = None) -> str:
    """Write ``provenance.json`` and ``config_resolved.json`` into ``output_dir``; return the provenance path.

    ``config`` defaults to the config of the ``monai.bundle`` workflow being initialized (found on the call stack),
    so a config can call this from its ``initialize`` list without referring to itself.
    """
    os.makedirs(output_dir, exist_ok=True)
    config = config if config is not None else _running_config()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info = {
        "time_utc": stamp,
        "seed": seed,
        "command": portable_command(sys.argv),
        "cwd": _repo_relative(os.getcwd()),
        "git_commit": _git_commit(os.path.dirname(os.path.abspath(__file__))),
        "versions": _versions(),
    }
    path = os.path.join(output_dir, "provenance.json")
    _write_json_atomic(path, info)
    if config is not None:
        _write_json_atomic(os.path.join(output_dir, "config_resolved.json"), config)
    logger.info("provenance written to %s", path)
    return path
