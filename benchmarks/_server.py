"""A ``liverseg serve`` process for the benchmark and check scripts: started on a free loopback port, polled until it
answers, stopped (its whole process group) on exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import requests

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``with ServeProcess(studies, workdir) as srv: requests.get(srv.url + "/info/")``."""

    def __init__(
        self,
        studies: Path,
        workdir: Path,
        conf: Sequence[tuple] = (),
        env: Optional[Dict[str, str]] = None,
        bundle: Optional[Path] = None,
        timeout: float = 600,
    ):
        self.studies, self.workdir, self.conf = Path(studies), Path(workdir), list(conf)
        self.env, self.bundle, self.timeout = dict(env or {}), bundle, timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.workdir / "serve.log"
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "ServeProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "liverseg.serve", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--studies", str(self.studies), "--workdir", str(self.workdir)]
        if self.bundle:
            cmd += ["--bundle", str(self.bundle)]
        for k, v in self.conf:
            cmd += ["--conf", k, v]
        env = dict(os.environ, PYTHONPATH=str(REPO), **self.env)
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: see {self.log}")
            try:
                if requests.get(f"{self.url}/info/", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise RuntimeError(f"server did not answer within {self.timeout} s: see {self.log}")

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
