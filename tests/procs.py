"""Subprocesses that tests start, each in its own process group, so that nothing they spawn outlives the test.

``subprocess.run(..., timeout=...)`` kills only the direct child on a timeout: a ``torchrun`` launcher's workers, or a
server's training and scoring processes, would go on running (and loading the machine) after the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to every process of ``proc``'s group (started with ``start_new_session=True``); no error when
    the group is gone."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(cmd: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)`` in a new process group; the whole
    group is killed when the command ends, times out or the test is interrupted."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:  # timeout, Ctrl-C: nothing of the command survives
        kill_group(proc)
        proc.communicate()
        raise
    finally:
        kill_group(proc)  # leftovers whose parent already exited
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
