"""Shared by the benchmark scripts: what a report states about the code and the machine, and the command line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]

# put on sys.path by the code a benchmark runs in a child process, which then imports peak_rss_gb from here
CHILD_PATH = str(Path(__file__).resolve().parent)


def vmhwm_gb(pid: int | str = "self") -> float | None:
    """Peak resident set (``VmHWM``) of process ``pid`` in GB, from ``/proc``; None where there is no entry."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GB. ``VmHWM`` on Linux: ``getrusage()``'s ``ru_maxrss`` starts from
    the parent's resident set at fork and keeps it across exec, so a child started by a benchmark that holds a
    synthetic CT would report the parent's memory as its own peak. Elsewhere ``ru_maxrss`` (bytes on macOS, KiB on
    other systems)."""
    hwm = vmhwm_gb()
    if hwm is not None:
        return hwm
    import resource
    import sys

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return kib / 1024**2


def code_version() -> str:
    """``git`` commit of the repository and whether ``bundles/`` or ``apps/`` differ from it (read-only git calls)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "bundles", "apps", "liverseg"], cwd=REPO, capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown (no git)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    changes = " + uncommitted changes in bundles/, apps/ or liverseg/" if dirty.stdout.strip() else ""
    return head.stdout.strip() + changes


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def without_note(argv: Sequence[str]) -> list[str]:
    """The arguments without ``--note TEXT`` (the note is printed under the table, not in the command)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(a)
    return out
