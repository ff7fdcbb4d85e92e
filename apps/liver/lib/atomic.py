"""Atomic, durable file writes: the one helper every writer of the liver app uses (models, labels, images, the
datastore index).

A write goes to a temporary file in the destination's folder (``.<name>.liverseg-<random>.tmp``), is flushed and
``fsync``-ed, then renamed over the destination with ``os.replace`` (atomic on POSIX file systems), and the folder is
``fsync``-ed so the rename itself survives a power cut. A reader, a crash or a ``SIGKILL`` at any point sees either
the old complete file or the new complete file, never a truncated one. The temporary file is removed on every path
out of the write (success, error, exception); only a killed process can leave one behind, and
:func:`remove_stale_temps` (called under the writer's lock at the next start) removes those. Temporary names do not
end in an image suffix, so a datastore scan (``*.nii.gz``) never lists them.

A full disk (``ENOSPC``), an exhausted quota (``EDQUOT``) or a file-size limit (``EFBIG``) raises
:class:`lib.validation.InsufficientStorage` (HTTP 507, with the reason); the destination is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional, Union

from lib.validation import InsufficientStorage

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
TEMP_TAG = ".liverseg-"
TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"^\..+" + re.escape(TEMP_TAG) + r"[0-9a-f]{16}" + re.escape(TEMP_SUFFIX) + "$")
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
COPY_CHUNK = 1 << 20


def temp_path(path: PathLike) -> str:
    """A fresh temporary name next to ``path`` (same folder, hence same file system): ``.<name>.liverseg-<hex>.tmp``."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}{TEMP_TAG}{secrets.token_hex(8)}{TEMP_SUFFIX}")


def is_temp(name: str) -> bool:
    """Whether ``name`` (a file name, not a path) is one of this module's temporary files."""
    return bool(_TEMP_RE.match(name))


def fsync_dir(folder: PathLike) -> None:
    """``fsync`` a folder, so that a rename or a new file in it is on disk (no-op where folders cannot be opened)."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows: folders cannot be opened, renames are durable by other means
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems (e.g. certain network mounts) refuse fsync on folders
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        logger.warning("could not remove the temporary file %s: %s", path, e)


@contextlib.contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Turn ``ENOSPC`` / ``EDQUOT`` / ``EFBIG`` raised inside the block into :class:`InsufficientStorage` naming
    ``what`` (other errors pass through unchanged)."""
    try:
        yield
    except InsufficientStorage:
        raise
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise InsufficientStorage(
                f"{what} could not be saved: {os.strerror(e.errno)} (errno {errno.errorcode.get(e.errno, e.errno)}); "
                "the previous version is kept. Free disk space (or raise the quota) and save again."
            ) from e
        raise


@contextlib.contextmanager
def atomic_write(
    path: PathLike, mode: str = "wb", what: str = "", check: Optional[Callable[[str], Any]] = None, **open_kwargs: Any
) -> Iterator[IO]:
    """Write ``path`` atomically: yields a file object on a temporary file in the same folder; when the block ends
    without an exception the data is ``fsync``-ed, the file renamed over ``path`` and the folder ``fsync``-ed.
    On any exception the temporary file is removed and ``path`` is untouched.

    Args:
        path: destination file; its folder must exist.
        mode: ``"wb"`` (default) or ``"w"`` (text; ``encoding`` etc. go in ``open_kwargs``).
        what: what is written, for the error message (default: the file name).
        check: called with the temporary file's path once it is complete and on disk, before the rename; an
            exception from it aborts the write (the temporary file is removed, ``path`` untouched).

    Raises:
        ValueError: ``mode`` is not a write mode.
        InsufficientStorage: the disk is full, the quota or the file-size limit is reached.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"unsupported mode {mode!r} for an atomic write; use 'wb' or 'w'")
    path = os.fspath(path)
    tmp = temp_path(path)
    with storage_errors(what or f"the file {os.path.basename(path)}"):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            with os.fdopen(fd, mode, **open_kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            if check is not None:
                check(tmp)
            os.replace(tmp, path)
        except BaseException:
            _remove_quietly(tmp)
            raise
        fsync_dir(os.path.dirname(path) or ".")


def write_bytes(path: PathLike, data: bytes, what: str = "") -> None:
    """:func:`atomic_write` of ``data``."""
    with atomic_write(path, "wb", what) as f:
        f.write(data)


def write_text(path: PathLike, text: str, what: str = "", encoding: str = "utf-8") -> None:
    """:func:`atomic_write` of ``text``."""
    with atomic_write(path, "w", what, encoding=encoding) as f:
        f.write(text)


def copy_file(src: PathLike, dst: PathLike, what: str = "") -> None:
    """Copy ``src`` to ``dst`` atomically (the bytes only: the new file gets its own modification time, which the
    inference cache keys on). Uses ``os.sendfile`` where the platform has it (what ``shutil.copy`` uses on Linux)."""
    with open(src, "rb") as fsrc, atomic_write(dst, "wb", what) as fdst:
        _copy_data(fsrc, fdst)


def _copy_data(fsrc: IO, fdst: IO) -> None:
    sendfile = getattr(os, "sendfile", None)
    if sendfile is not None:
        fdst.flush()
        offset = 0
        try:
            while True:
                sent = os.sendfile(fdst.fileno(), fsrc.fileno(), offset, COPY_CHUNK)
                if sent == 0:
                    return
                offset += sent
        except OSError as e:
            if offset or e.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            # this file system cannot sendfile: copy through user space
    shutil.copyfileobj(fsrc, fdst, COPY_CHUNK)


def replace_with_link(src: PathLike, dst: PathLike) -> None:
    """Make ``dst`` a second name of ``src``'s file (a hard link, no data copied), atomically: ``dst`` is the old
    file or ``src``'s, never missing or partial. Falls back to :func:`copy_file` where hard links are not possible."""
    src, dst = os.fspath(src), os.fspath(dst)
    tmp = temp_path(dst)
    with storage_errors(f"the file {os.path.basename(dst)}"):
        try:
            os.link(src, tmp)
        except OSError as e:
            if e.errno in STORAGE_ERRNOS:
                raise
            copy_file(src, dst)
            return
        try:
            os.replace(tmp, dst)
        except BaseException:
            _remove_quietly(tmp)
            raise
        fsync_dir(os.path.dirname(dst) or ".")


def rename(src: PathLike, dst: PathLike) -> None:
    """``os.replace(src, dst)`` followed by an ``fsync`` of the destination folder (and the source's, if another)."""
    src, dst = os.fspath(src), os.fspath(dst)
    with storage_errors(f"the file {os.path.basename(dst)}"):
        os.replace(src, dst)
        fsync_dir(os.path.dirname(dst) or ".")
        if os.path.dirname(os.path.abspath(src)) != os.path.dirname(os.path.abspath(dst)):
            fsync_dir(os.path.dirname(src) or ".")


def remove_stale_temps(folder: PathLike, name: str = "") -> int:
    """Remove this module's temporary files left in ``folder`` by a killed process (all of them, or only those of
    the destination ``name``); returns how many. Call it only while holding the lock its writers hold."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        if is_temp(entry.name) and (not name or entry.name.startswith(f".{name}{TEMP_TAG}")) and entry.is_file():
            _remove_quietly(str(entry))
            removed += 1
    if removed:
        logger.warning("removed %d temporary file(s) left in %s by an interrupted save", removed, folder)
    return removed
