"""A local PACS for ``liverseg serve --pacs`` (``make serve-pacs``): Orthanc with its DICOMweb plugin, own
configuration and storage, holding the sample DICOM study, so that OHIF has a DICOMweb server to read from.

Orthanc 1.10 (Debian 12) has no bind-address option: it listens on all interfaces, with remote access refused
(``RemoteAccessAllowed: false``: only loopback clients get an answer), the DICOM protocol port off and no
authentication (loopback only). The storage lives in the given folder (``.cache/serve-pacs/orthanc``), so labels
saved from OHIF (DICOM SEG) persist across restarts.

Example::

    with Orthanc(Path(".cache/pacs"), port=8042) as pacs:
        pacs.upload_folder(SAMPLE_DICOM)
        ...  # pacs.dicomweb_url = http://127.0.0.1:8042/dicom-web
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

from liverseg.errors import LiverSegError

__all__ = [
    "Orthanc",
    "orthanc_binary",
    "dicomweb_plugin",
    "missing_orthanc",
    "ORTHANC_INSTALL",
    "SAMPLE_DICOM",
    "study_uids",
]

logger = logging.getLogger(__name__)

ORTHANC_INSTALL = "apt-get install orthanc orthanc-dicomweb"
PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*",  # Debian / Ubuntu package orthanc-dicomweb
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so*",
)
# the sample CT as DICOM (synthetic phantom_008, 59 slices of 129 x 129, 2 MB; see sample-data/README.md)
SAMPLE_DICOM = Path(__file__).resolve().parents[1] / "sample-data" / "3Dircadb-phantom" / "3Dircadb1.1"
SAMPLE_DICOM = SAMPLE_DICOM / "PATIENT_DICOM"
PR_SET_PDEATHSIG = 1


def orthanc_binary() -> str | None:
    """The Orthanc executable (``$LIVERSEG_ORTHANC`` first, then PATH, then Debian's ``/usr/sbin/Orthanc``)."""
    env = os.environ.get("LIVERSEG_ORTHANC")
    if env:
        return env if os.access(env, os.X_OK) else None
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if os.access(p, os.X_OK)), None)


def dicomweb_plugin() -> str | None:
    """Path of Orthanc's DICOMweb plugin (``$LIVERSEG_ORTHANC_DICOMWEB_PLUGIN`` first), or None."""
    env = os.environ.get("LIVERSEG_ORTHANC_DICOMWEB_PLUGIN")
    if env:
        return env if Path(env).is_file() else None
    for pattern in PLUGIN_GLOBS:
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return str(found[0])
    return None


def missing_orthanc() -> str | None:
    """Why Orthanc cannot be started here (what is missing and the command that installs it), or None."""
    if not orthanc_binary():
        return f"Orthanc is not installed (no 'Orthanc' on PATH): {ORTHANC_INSTALL}"
    if not dicomweb_plugin():
        return f"Orthanc's DICOMweb plugin (libOrthancDicomWeb.so) is not installed: {ORTHANC_INSTALL}"
    return None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the process that started it dies (even by SIGKILL)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _http(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 10.0):
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return r.status, r.read()


class Orthanc:
    """An Orthanc process with its own configuration and storage under ``root`` (HTTP on ``port`` only).

    Args:
        root: folder of the configuration (``orthanc.json``), the storage (``storage/``) and the log (``orthanc.log``).
        port: HTTP port (DICOMweb at ``http://127.0.0.1:<port>/dicom-web``).
        name: the server's name (Orthanc's ``Name``).
    """

    def __init__(self, root: Path, port: int = 8042, name: str = "liverseg"):
        self.root, self.port, self.name = Path(root), int(port), name
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.log = self.root / "orthanc.log"
        self.proc: subprocess.Popen | None = None

    def config(self) -> dict:
        storage = str(self.root / "storage")
        return {
            "Name": self.name,
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SaveJobs": False,
            "Plugins": [dicomweb_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }

    def answers(self, timeout: float = 2.0) -> bool:
        """True when the DICOMweb plugin answers a QIDO-RS query."""
        try:
            status, _ = _http(f"{self.dicomweb_url}/studies?limit=1", headers={"Accept": "application/dicom+json"},
                              timeout=timeout)  # fmt: skip
        except urllib.error.HTTPError as e:
            status = e.code
        except (urllib.error.URLError, OSError):
            return False
        return status in (200, 204)

    def start(self, timeout: float = 300.0) -> Orthanc:
        """Start Orthanc and wait until its DICOMweb plugin answers (polled, so a generous cap costs nothing).

        Raises:
            LiverSegError: Orthanc or its plugin is missing, the port is taken, Orthanc exits or never answers.
        """
        reason = missing_orthanc()
        if reason:
            raise LiverSegError(reason)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", self.port))  # Orthanc binds all interfaces
            except OSError as e:
                raise LiverSegError(
                    f"cannot start Orthanc on port {self.port} ({e.strerror}): another Orthanc or PACS may be running "
                    f"there; pick another port, or serve it directly: make serve STUDIES=http://127.0.0.1:{self.port}"
                    "/dicom-web"
                ) from e
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        with open(self.log, "ab") as log:
            # its own session: Ctrl-C in the terminal reaches liverseg, which stops the app first, then Orthanc
            self.proc = subprocess.Popen(
                [orthanc_binary(), str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if os.name == "posix" else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LiverSegError(f"Orthanc exited with {self.proc.returncode}; its log: {self.log}\n{self._tail()}")
            if self.answers():
                logger.info("Orthanc (pid %d) answers at %s; log %s", self.proc.pid, self.dicomweb_url, self.log)
                return self
            time.sleep(0.2)
        self.stop()
        raise LiverSegError(f"Orthanc did not answer within {timeout:.0f} s; its log: {self.log}\n{self._tail()}")

    def _tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (Orthanc closes its index cleanly), then SIGKILL after ``timeout`` s; waits for the process."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        logger.info("Orthanc stopped")

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def upload(self, files: Iterable[Path]) -> list[str]:
        """``POST /instances`` each file (Orthanc keeps one copy of an instance sent twice); the instance ids."""
        ids = []
        for f in files:
            status, body = _http(
                f"{self.url}/instances", data=Path(f).read_bytes(), headers={"Content-Type": "application/dicom"}
            )
            ids.append(json.loads(body)["ID"])
        return ids

    def upload_folder(self, folder: Path) -> list[str]:
        """Upload every file of ``folder`` (one DICOM file per slice, any name); the instance ids.

        Raises:
            LiverSegError: the folder holds no file, or Orthanc refuses one (not DICOM).
        """
        files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise LiverSegError(f"{folder}: no DICOM file to upload")
        try:
            return self.upload(files)
        except urllib.error.HTTPError as e:
            raise LiverSegError(f"Orthanc refused a file of {folder} (HTTP {e.code}): is it DICOM?") from e


def study_uids(folder: Path) -> list[str]:
    """The StudyInstanceUIDs of the DICOM files in ``folder`` (sorted, each once)."""
    import pydicom

    uids = set()
    for p in sorted(Path(folder).iterdir()):
        if p.is_file():
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            uids.add(str(ds.StudyInstanceUID))
    return sorted(uids)
