"""Subprocesses that tests start, each in its own process group, so that nothing they spawn outlives the test.

``subprocess.run(..., timeout=...)`` kills only the direct child on a timeout: a ``torchrun`` launcher's workers, or a
server's training and scoring processes, would go on running (and loading the machine) after the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any, Callable, Optional


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to every process of ``proc``'s group (started with ``start_new_session=True``); no error when
    the group is gone."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(
    cmd: list[str],
    timeout: float,
    progress: Optional[Callable[[], Any]] = None,
    cap: Optional[float] = None,
    poll_s: float = 5.0,
    **kwargs: Any,
) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)`` in a new process group; the whole
    group is killed when the command ends, times out or the test is interrupted.

    With ``progress`` (a function whose value changes as the command works, e.g. the lines of its training log), the
    deadline follows the work: ``timeout`` is then the longest time without a change of ``progress()``, and ``cap``
    (if given) the longest run in all; on a loaded machine a slow but working command is not killed.
    """
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    )
    try:
        if progress is None:
            out, err = proc.communicate(timeout=timeout)
        else:
            start = last_change = time.monotonic()
            seen = progress()
            while True:
                try:
                    out, err = proc.communicate(timeout=poll_s)  # output is kept across these retries
                    break
                except subprocess.TimeoutExpired:
                    now, value = time.monotonic(), progress()
                    if value != seen:
                        seen, last_change = value, now
                    if now - last_change > timeout or (cap is not None and now - start > cap):
                        raise subprocess.TimeoutExpired(cmd, now - start) from None
    except BaseException:  # timeout, Ctrl-C: nothing of the command survives
        kill_group(proc)
        proc.communicate()
        raise
    finally:
        kill_group(proc)  # leftovers whose parent already exited
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
