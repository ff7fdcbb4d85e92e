# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""Where a run writes, and what a failed run prints.

- :func:`default_run_dir`: training, evaluation and inference write into a new run folder outside the bundle unless
  ``output_dir`` / ``ckpt_dir`` are given, so that trying the bundle never replaces the shipped ``models/model.pt``.
  The folder's parent is ``$LIVER_CT_SEG_RUNS`` when set, ``<checkout>/.cache/runs`` inside the liverseg repository,
  else ``$XDG_CACHE_HOME/liver_ct_seg/runs`` (``~/.cache/liver_ct_seg/runs``).
- :func:`announce` logs the output folders at the start of a run.
- :func:`promote` copies a run's best checkpoint over the bundle's ``models/model.pt``, only when asked
  (``--promote true``); the weights it replaces are kept as ``models/model.previous.pt``.
- :func:`install_short_errors`: under ``python -m monai.bundle``, an uncaught error prints its cause in a few lines
  and the full traceback goes to a log file (``LIVER_CT_SEG_FULL_TRACE=1`` keeps Python's own output).
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import sys
import tempfile
import traceback
from types import TracebackType

logger = logging.getLogger(__name__)

RUNS_ENV = "LIVER_CT_SEG_RUNS"
FULL_TRACE_ENV = "LIVER_CT_SEG_FULL_TRACE"
BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("train", "evaluate", "inference")
MAX_CAUSE_LINES = 6


def runs_root(bundle_root: str | None = None) -> str:
    """The folder that holds the run folders (see the module docstring)."""
    if os.environ.get(RUNS_ENV):
        return os.path.abspath(os.environ[RUNS_ENV])
    root = os.path.abspath(bundle_root or BUNDLE_ROOT)
    checkout = os.path.dirname(os.path.dirname(root))
    if os.path.isdir(os.path.join(checkout, "liverseg")) and os.path.isfile(os.path.join(checkout, "setup.cfg")):
        return os.path.join(checkout, ".cache", "runs")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "liver_ct_seg", "runs")


def default_run_dir(bundle_root: str, kind: str) -> str:
    """A new folder name ``<runs root>/<kind>-<UTC time>`` (not created here; the first writer creates it).

    Under ``torchrun`` every rank gets the same name (from ``TORCHELASTIC_RUN_ID``), so rank 0's checkpoint and the
    other ranks' logs land in one folder.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; valid: {', '.join(KINDS)}")
    root = runs_root(bundle_root)
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return os.path.join(root, f"{kind}-torchrun-{run_id[:12]}")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = os.path.join(root, f"{kind}-{stamp}")
    k = 1
    while os.path.exists(path):
        k += 1
        path = os.path.join(root, f"{kind}-{stamp}-{k}")
    return path


def announce(output_dir: str, ckpt_dir: str | None = None) -> None:
    """Log where this run writes (first lines of a run), and remember it for the error log."""
    global _RUN_DIR
    _RUN_DIR = os.path.abspath(output_dir)
    logger.info("run folder (outputs): %s", _RUN_DIR)
    if ckpt_dir is not None:
        logger.info("checkpoints: %s", os.path.abspath(ckpt_dir))


def _atomic_copy(src: str, dst: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), prefix=os.path.basename(dst) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def promote(ckpt_dir: str, bundle_root: str, enabled: bool = False) -> str | None:
    """Copy ``<ckpt_dir>/model.pt`` to ``<bundle_root>/models/model.pt`` when ``enabled``; return the new path.

    The replaced weights are kept as ``models/model.previous.pt``. Nothing happens when ``enabled`` is false or the
    checkpoint already is the bundle's own file.
    """
    if not enabled:
        return None
    src = os.path.join(ckpt_dir, "model.pt")
    dst = os.path.join(bundle_root, "models", "model.pt")
    if not os.path.isfile(src):
        raise FileNotFoundError(f"promote: the run wrote no checkpoint {src}; nothing to promote")
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return dst
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.isfile(dst):
        _atomic_copy(dst, os.path.join(bundle_root, "models", "model.previous.pt"))
    _atomic_copy(src, dst)
    logger.info("promoted %s to %s (previous weights: models/model.previous.pt)", src, dst)
    return dst


_RUN_DIR: str | None = None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first."""
    out: list[BaseException] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        out.append(cur)
        seen.add(id(cur))
        cur = cur.__cause__ if cur.__cause__ is not None else (None if cur.__suppress_context__ else cur.__context__)
    return out


def _one_line(exc: BaseException, width: int = 200) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= width else text[: width - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def short_report(exc: BaseException, log_path: str | None) -> str:
    """A few lines: the innermost cause first, then what was being done (outer errors), then the log file."""
    chain = _chain(exc)
    lines = [f"liver_ct_seg: the run failed: {_one_line(chain[-1], 400)}"]
    for outer in reversed(chain[:-1]):
        if len(lines) >= MAX_CAUSE_LINES:
            break
        lines.append(f"  while: {_one_line(outer)}")
    if log_path:
        lines.append(f"  full traceback: {log_path}")
    return "\n".join(lines) + "\n"


def _error_log_path() -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder = _RUN_DIR or os.path.join(runs_root(), "errors")
    return os.path.join(folder, f"error-{stamp}-{os.getpid()}.log")


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    path: str | None = _error_log_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(" ".join(sys.argv) + "\n\n" + text)
    except OSError:
        path = None
    if path is None:  # nowhere to write: the full traceback goes to the terminal after all
        sys.stderr.write(text)
    sys.stderr.write(short_report(exc, path))
    sys.stderr.flush()


def is_bundle_cli() -> bool:
    """True in a ``python -m monai.bundle ...`` process (also each rank under ``torchrun -m monai.bundle``)."""
    main = sys.argv[0].replace("\\", "/") if sys.argv and sys.argv[0] else ""
    return main.endswith("monai/bundle/__main__.py")


def install_short_errors(force: bool = False) -> bool:
    """Install the short error report as ``sys.excepthook`` in a bundle CLI process; return whether it was."""
    if os.environ.get(FULL_TRACE_ENV, "") not in ("", "0") or not (force or is_bundle_cli()):
        return False
    sys.excepthook = _excepthook
    return True
