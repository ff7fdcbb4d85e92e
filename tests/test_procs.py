"""tests.procs: a test's subprocess and everything it started end with it (timeout included)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests import procs


def _gone(pid: int, wait_s: float = 10.0) -> bool:
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":  # a zombie waiting for init: not running
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc (Linux)")
def test_timeout_kills_the_grandchildren(tmp_path):
    pid_file = tmp_path / "pid"
    cmd = ["bash", "-c", f"sleep 300 & echo $! > {pid_file}; wait"]
    with pytest.raises(subprocess.TimeoutExpired):
        procs.run(cmd, timeout=2)
    assert _gone(int(pid_file.read_text()))


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc (Linux)")
def test_leftovers_of_a_finished_command_are_killed(tmp_path):
    pid_file = tmp_path / "pid"
    res = procs.run(["bash", "-c", f"sleep 300 >/dev/null 2>&1 & echo $! > {pid_file}; echo done"], timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "done"
    assert _gone(int(pid_file.read_text()))


def test_a_working_command_outlives_the_stall_timeout_and_a_stalled_one_does_not(tmp_path):
    """With ``progress``, ``timeout`` is the longest time without progress: a command that keeps writing runs past
    it, one that stops writing is killed about ``timeout`` after its last write."""
    log = tmp_path / "progress.txt"
    working = ["bash", "-c", f"for i in 1 2 3 4 5 6; do echo $i >> {log}; sleep 0.5; done; echo done"]
    progress = lambda: log.read_text() if log.exists() else ""  # noqa: E731
    t0 = time.monotonic()
    res = procs.run(working, timeout=1.5, progress=progress, poll_s=0.2)
    assert res.returncode == 0 and res.stdout.strip() == "done" and time.monotonic() - t0 > 2.5
    log.unlink()
    stalled = ["bash", "-c", f"echo 1 >> {log}; sleep 300"]
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        procs.run(stalled, timeout=1.5, progress=progress, poll_s=0.2)
    assert time.monotonic() - t0 < 30
    with pytest.raises(subprocess.TimeoutExpired):  # the cap ends even a working command
        procs.run(working, timeout=60, progress=lambda: time.monotonic(), cap=1.0, poll_s=0.2)
