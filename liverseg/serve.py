"""``liverseg serve``: start the MONAI Label server with the liver app (for OHIF in a browser or 3D Slicer).

What it does, so that the repository stays untouched while the server runs:

1. copies the app (``apps/liver``) to ``<workdir>/app`` (refreshed at each start; the served bundle copies, the
   weights trained through the API and the server log live under it);
2. prepares the datastore ``<workdir>/datastore/<studies name>``: the images of ``--studies`` are copied there once
   (new images are added at later starts, nothing is overwritten; nnU-Net's ``_0000`` channel suffix is dropped from
   the ids), and the labels saved through the API stay there across restarts;
3. sets the environment monailabel 0.8.5 needs here (tracking off, no automatic re-scoring after every saved label,
   bundle zoo source that never queries the zoo API, sessions under the workdir);
4. runs ``monailabel start_server`` on ``--host`` (default 127.0.0.1: this machine only) and ``--port``, prints the
   URLs, and stops it cleanly on Ctrl-C.

A DICOMweb URL as ``--studies`` (``http://127.0.0.1:8042/dicom-web``, e.g. Orthanc with its DICOMweb plugin) is
passed to monailabel's DICOMweb datastore: nothing is copied, the series are fetched into ``<workdir>/dicomweb`` when
first used, and saved ``final`` labels are stored back as DICOM SEG. Before starting, ``liverseg serve`` checks that
the URL answers a QIDO-RS query and that dcmqi's ``itkimage2segimage`` is installed (without it monailabel tries to
download it from GitHub at start-up and stops when offline).

``--pacs`` (``make serve-pacs``) brings its own DICOMweb server: Orthanc with its DICOMweb plugin (Debian:
``apt-get install orthanc orthanc-dicomweb``) is started with its own configuration and storage under
``<workdir>/orthanc`` (default workdir ``.cache/serve-pacs``; remote access refused, DICOM port off), the sample DICOM
study (``--pacs-dicom``, default the synthetic CT in ``sample-data/3Dircadb-phantom``) is uploaded to it, the server
runs on its DICOMweb URL, and the OHIF address of the study is printed once the server answers. Orthanc stops with
the server (Ctrl-C or SIGTERM); what OHIF saves stays in Orthanc's storage for the next start.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Sequence

from liverseg.errors import LiverSegError
from liverseg.pacs import SAMPLE_DICOM

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_APP = REPO_ROOT / "apps" / "liver"
DEFAULT_BUNDLE = REPO_ROOT / "bundles" / "liver_ct_seg"
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
NNUNET_CHANNEL = "_0000"
DEFAULT_WORKDIR = ".cache/serve"
PACS_WORKDIR = ".cache/serve-pacs"
APP_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "model", "logs", "bin", ".pytest_cache")

SERVER_ENV = {
    "MONAI_LABEL_TRACKING_ENABLED": "false",
    "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
    "BUNDLE_DOWNLOAD_SRC": "github",
    # monailabel caches the DICOMweb series list (and the list of labelled series) for 2 h by default: studies
    # sent to the DICOMweb server, and SEG labels saved, while the server runs would stay invisible that long
    "MONAI_LABEL_DICOMWEB_CACHE_EXPIRY": "30",
}
DCMQI_TOOL = "itkimage2segimage"  # dcmqi (pip install dcmqi): NIfTI label -> DICOM SEG, for DICOMweb datastores


def is_dicomweb(studies: str) -> bool:
    """True when ``--studies`` is a DICOMweb URL (``http://`` or ``https://``) rather than a folder."""
    return str(studies).startswith(("http://", "https://"))


def check_dicomweb_url(url: str) -> str:
    """The DICOMweb base URL without trailing slash; :class:`LiverSegError` when it has no host or has a query."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise LiverSegError(
            f"--studies {url}: not a DICOMweb base URL (expected e.g. http://127.0.0.1:8042/dicom-web)"
        )
    return url.strip().rstrip("/")


def check_dicomweb_server(url: str, timeout: float = 10.0) -> None:
    """Raise :class:`LiverSegError` unless ``<url>/studies`` answers a QIDO-RS query (200, or 204 when empty)."""
    request = urllib.request.Request(f"{url}/studies?limit=1", headers={"Accept": "application/dicom+json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise LiverSegError(
            f"--studies {url}: cannot reach the DICOMweb server ({reason}); is it running (e.g. Orthanc with the "
            "DICOMweb plugin) and is the URL its DICOMweb root?"
        ) from e
    if status not in (200, 204):
        raise LiverSegError(
            f"--studies {url}: GET {url}/studies answered HTTP {status}, not a DICOMweb (QIDO-RS) endpoint; "
            "for Orthanc the root is http://<host>:8042/dicom-web"
        )


def _image_suffix(name: str) -> str | None:
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    return None


def datastore_name(studies: Path) -> str:
    """Datastore folder name for a studies folder: ``<parent>_<name>`` (``Dataset001_LiverPhantom_imagesTs``)."""
    studies = studies.resolve()
    parts = [p for p in (studies.parent.name, studies.name) if p]
    return "_".join(parts) or "studies"


def prepare_datastore(studies: str | Path, datastore: str | Path) -> tuple[Path, list[str]]:
    """Copy the images of ``studies`` that are not yet in ``datastore``; return the folder and the new ids.

    Raises:
        LiverSegError: ``studies`` is not a folder, or holds no NIfTI / NRRD image (and the datastore is empty).
    """
    studies, datastore = Path(studies), Path(datastore)
    if not studies.is_dir():
        raise LiverSegError(f"--studies {studies}: not a folder")
    datastore.mkdir(parents=True, exist_ok=True)
    existing = {p.name[: -len(_image_suffix(p.name) or "")] for p in datastore.iterdir() if _image_suffix(p.name)}
    added = []
    for src in sorted(studies.iterdir()):
        suffix = _image_suffix(src.name)
        if not suffix or not src.is_file() or src.name.startswith("."):
            continue
        case_id = src.name[: -len(suffix)]
        if case_id.endswith(NNUNET_CHANNEL):
            case_id = case_id[: -len(NNUNET_CHANNEL)]
        if case_id in existing:
            continue
        tmp = datastore / f".{case_id}.part{suffix}"
        shutil.copy2(src, tmp)
        os.replace(tmp, datastore / f"{case_id}{suffix}")
        existing.add(case_id)
        added.append(case_id)
    if not existing:
        raise LiverSegError(f"--studies {studies}: no image (*.nii.gz, *.nii, *.nrrd) to serve")
    return datastore, added


def prepare_app(app: str | Path, workdir: str | Path) -> Path:
    """Copy the app's code to ``<workdir>/app`` (replacing the previous copy's code, keeping model/ and logs/)."""
    app, dest = Path(app), Path(workdir) / "app"
    if not (app / "main.py").is_file():
        raise LiverSegError(f"--app {app}: no main.py (expected a MONAI Label app folder such as apps/liver)")
    dest.mkdir(parents=True, exist_ok=True)
    for entry in dest.iterdir():
        if entry.name not in ("model", "logs", "bin"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    shutil.copytree(app, dest, ignore=APP_IGNORE, dirs_exist_ok=True)
    return dest


def check_port(host: str, port: int) -> None:
    """Raise :class:`LiverSegError` when ``host:port`` cannot be bound (in use, or not an address of this host)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT does not block
        try:
            s.bind((host, port))
        except OSError as e:
            raise LiverSegError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from e


def server_command(app_dir: Path, studies: str, host: str, port: int, conf: Sequence[tuple[str, str]]) -> list[str]:
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app_dir), "--studies", studies]
    cmd += ["--host", host, "--port", str(port)]
    for k, v in conf:
        cmd += ["--conf", k, v]
    return cmd


def server_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for k, v in SERVER_ENV.items():
        env.setdefault(k, v)
    env.setdefault("MONAI_LABEL_SESSION_PATH", str(workdir / "sessions"))
    env.setdefault("MONAI_LABEL_DICOMWEB_CACHE_PATH", str(workdir / "dicomweb"))
    # the console scripts of this Python environment first (dcmqi's itkimage2segimage, monailabel's own tools),
    # also when the environment is not activated (``.venv/bin/python -m liverseg serve``)
    scripts = sysconfig.get_path("scripts")
    path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != scripts]
    env["PATH"] = os.pathsep.join([scripts, *path])
    return env


def prepare(args: argparse.Namespace) -> tuple[list[str], dict[str, str], str]:
    """Everything but starting the server: returns ``(command, environment, url)``."""
    workdir = Path(args.workdir or DEFAULT_WORKDIR).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if not 0 < args.port < 65536:
        raise LiverSegError(f"--port {args.port}: must be in 1..65535")
    studies = str(args.studies)
    env = server_env(workdir)
    if is_dicomweb(studies):
        studies = check_dicomweb_url(studies)
        if not shutil.which(DCMQI_TOOL, path=env["PATH"]):
            raise LiverSegError(
                f"--studies {studies}: a DICOMweb datastore needs dcmqi's {DCMQI_TOOL} (labels are stored as DICOM "
                "SEG), not found on PATH: pip install dcmqi"
            )
    else:
        datastore, added = prepare_datastore(studies, workdir / "datastore" / datastore_name(Path(studies)))
        if added:
            logger.info("Copied %d image(s) from %s to the datastore %s", len(added), studies, datastore)
        studies = str(datastore)
    app_dir = prepare_app(args.app, workdir)
    conf = [tuple(c) for c in (args.conf or [])]
    if "bundle" not in {k for k, _ in conf}:
        bundle = Path(args.bundle).resolve()
        if not (bundle / "configs" / "inference.json").is_file():
            raise LiverSegError(f"--bundle {bundle}: no configs/inference.json (expected bundles/liver_ct_seg)")
        conf.append(("bundle", str(bundle)))
    configure_access(env, args.host, args.port, workdir, Path(args.app))
    host_for_url = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{host_for_url}:{args.port}/"
    return server_command(app_dir, studies, args.host, args.port, conf), env, url


def _load_app_security(app: Path):
    """The app's ``lib/security.py`` (the server's access policy), loaded from its file."""
    spec = importlib.util.spec_from_file_location("liverseg_app_security", app / "lib" / "security.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def configure_access(env: dict[str, str], host: str, port: int, workdir: Path, app: Path = DEFAULT_APP) -> None:
    """Put the access settings of the app's server (``apps/liver/lib/security.py``) into ``env`` and check them.

    - ``LIVERSEG_HOST`` / ``LIVERSEG_PORT``: what the server is bound to (its Host / Origin allowlists derive from it);
    - ``MONAI_LABEL_CORS_ORIGINS``, which monailabel 0.8.5 cannot parse in the comma form people write, is moved to
      ``LIVERSEG_ALLOWED_ORIGINS``;
    - bound beyond loopback with no token configured: a random token is made once and kept in ``<workdir>/token``
      (mode 0600), so the server never runs open to the network.

    Raises:
        LiverSegError: a setting the server would refuse (see ``AccessPolicy.from_env``).
    """
    env["LIVERSEG_HOST"], env["LIVERSEG_PORT"] = host, str(port)
    cors = env.pop("MONAI_LABEL_CORS_ORIGINS", "").strip()
    if cors:
        items = json.loads(cors) if cors.startswith("[") else cors.split(",")
        extra = [o.strip() for o in [env.get("LIVERSEG_ALLOWED_ORIGINS", ""), *items] if o and o.strip()]
        env["LIVERSEG_ALLOWED_ORIGINS"] = ",".join(extra)
    security = _load_app_security(app)
    token_file = workdir / "token"
    if (
        not security.is_loopback(host)
        and not env.get("LIVERSEG_TOKEN")
        and not env.get("LIVERSEG_TOKENS_FILE")
        and env.get("LIVERSEG_AUTH", "auto") != "off"
    ):
        if not token_file.is_file():
            tmp = token_file.with_name(".token.part")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, token_file)
        env["LIVERSEG_TOKEN"] = token_file.read_text().strip()
        logger.warning(
            "bound to %s: clients need the token in %s (header 'Authorization: Bearer <token>'; in 3D Slicer: user "
            "admin, password <token>)", host, token_file,
        )  # fmt: skip
    try:
        security.AccessPolicy.from_env(env, [])
    except security.ConfigError as e:
        raise LiverSegError(str(e)) from e


def run_server(cmd: list[str], env: dict[str, str], url: str, holder: dict | None = None) -> int:
    """Run the server in the foreground; Ctrl-C (or SIGTERM) stops it and returns 0. ``holder["proc"]`` gets the
    server process."""
    print(f"MONAI Label server starting: API and docs at {url}  (OHIF viewer: {url}ohif/ , needs a DICOMweb datastore)")
    print("3D Slicer: MONAI Label module, server address " + url.rstrip("/") + " ; stop with Ctrl-C", flush=True)

    def _stop(signum, frame):  # Ctrl-C or SIGTERM: stop the server (also when SIGINT was ignored, e.g. under '&')
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    proc = subprocess.Popen(cmd, env=env)
    if holder is not None:
        holder["proc"] = proc
    try:
        return proc.wait()
    except KeyboardInterrupt:
        logger.info("Stopping the server ...")
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run(args: argparse.Namespace) -> int:
    if args.workdir is None:
        args.workdir = PACS_WORKDIR if args.pacs else DEFAULT_WORKDIR
    if args.pacs:
        return run_pacs(args)
    cmd, env, url = prepare(args)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    check_port(args.host, args.port)
    studies = cmd[cmd.index("--studies") + 1]
    if is_dicomweb(studies):
        check_dicomweb_server(studies)
    return run_server(cmd, env, url)


def ohif_urls(url: str, study_uids: Sequence[str]) -> list[str]:
    """The OHIF addresses of the studies: the viewer, and the MONAI Label mode (auto-segmentation, clicks, save)."""
    uids = ",".join(study_uids)
    base = url.rstrip("/")
    return [f"{base}/ohif/viewer?StudyInstanceUIDs={uids}", f"{base}/ohif/monai-label?StudyInstanceUIDs={uids}"]


def _announce_when_ready(url: str, lines: Sequence[str], proc_alive, timeout: float = 3600.0) -> None:
    """Print ``lines`` once the server answers ``GET /info/`` (polled from a daemon thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc_alive():
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/info/", timeout=5) as r:
                if r.status == 200:
                    print("\n".join(lines), flush=True)
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1.0)


def run_pacs(args: argparse.Namespace) -> int:
    """``--pacs``: Orthanc with the sample DICOM study, then the server on its DICOMweb URL; Orthanc stops with it.

    Raises:
        LiverSegError: Orthanc or its DICOMweb plugin is not installed (with the install command), a port is taken,
            the DICOM folder is missing or holds no DICOM study.
    """
    from liverseg import pacs

    if pacs.missing_orthanc():
        what = "Orthanc" if not pacs.orthanc_binary() else "Orthanc's DICOMweb plugin"
        raise LiverSegError(
            f"serve-pacs (--pacs) needs Orthanc and its DICOMweb plugin, {what} is not installed: "
            f"{pacs.ORTHANC_INSTALL} (as root); without it `make serve` works in NIfTI-folder mode (3D Slicer)"
        )
    dicom = Path(args.pacs_dicom)
    if not dicom.is_dir():
        raise LiverSegError(f"--pacs-dicom {dicom}: not a folder (expected a DICOM series folder, one file per slice)")
    if not 0 < args.pacs_port < 65536 or args.pacs_port == args.port:
        raise LiverSegError(f"--pacs-port {args.pacs_port}: must be in 1..65535 and differ from --port {args.port}")
    orthanc = pacs.Orthanc(Path(args.workdir).resolve() / "orthanc", port=args.pacs_port)
    if args.dry_run:
        args.studies = orthanc.dicomweb_url
        print(" ".join(prepare(args)[0]))
        return 0
    check_port(args.host, args.port)

    def _stop(signum, frame):  # SIGTERM while Orthanc starts or the study uploads: clean up as for Ctrl-C
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        orthanc.start()
        orthanc.upload_folder(dicom)
        uids = pacs.study_uids(dicom)
        args.studies = orthanc.dicomweb_url
        cmd, env, url = prepare(args)
        print(f"Orthanc (DICOMweb) at {orthanc.dicomweb_url} with the study of {dicom}; storage {orthanc.root}")
        viewer, monai_label = ohif_urls(url, uids)
        lines = [
            "",
            f"OHIF viewer:          {viewer}",
            f"OHIF with MONAI Label: {monai_label}",
            "  (auto-segment in the MONAI Label panel; save with 'Export DICOM SEG' in the Segmentation panel)",
            "",
        ]
        holder: dict = {}
        threading.Thread(
            target=_announce_when_ready,
            args=(url, lines, lambda: holder.get("proc") is None or holder["proc"].poll() is None),
            daemon=True,
        ).start()
        return run_server(cmd, env, url, holder=holder)
    except KeyboardInterrupt:
        return 0
    finally:
        orthanc.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="start the MONAI Label server with the liver app",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000, what OHIF's MONAI Label panel expects)")
    p.add_argument(
        "--studies",
        default=str(REPO_ROOT / "sample-data" / "Dataset001_LiverPhantom" / "imagesTs"),
        help="folder of images to annotate (copied into the workdir's datastore) or a DICOMweb URL",
    )
    p.add_argument("--app", default=str(DEFAULT_APP), help="MONAI Label app folder (default apps/liver)")
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle to serve (default bundles/liver_ct_seg)")
    p.add_argument(
        "--conf",
        nargs=2,
        action="append",
        metavar=("KEY", "VALUE"),
        help="app option, repeatable, e.g. --conf variants unet,aunet,dalunet",
    )
    p.add_argument(
        "--workdir",
        default=None,
        help=f"runtime folder: datastore, app copy, weights, logs (default {DEFAULT_WORKDIR}; with --pacs "
        f"{PACS_WORKDIR})",
    )
    p.add_argument(
        "--pacs",
        action="store_true",
        help="start Orthanc (apt-get install orthanc orthanc-dicomweb) with the sample DICOM study and serve it "
        "(OHIF mode; ignores --studies)",
    )
    p.add_argument("--pacs-port", type=int, default=8042, help="Orthanc's HTTP port with --pacs (default 8042)")
    p.add_argument(
        "--pacs-dicom",
        default=str(SAMPLE_DICOM),
        help="DICOM series folder uploaded to Orthanc with --pacs (default: the synthetic CT in sample-data)",
    )
    p.add_argument("--dry-run", action="store_true", help="prepare the workdir and print the server command only")
    p.set_defaults(func=_run)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m liverseg.serve ...``: the same as ``liverseg serve ...``."""
    from liverseg.cli import main as cli_main

    return cli_main(["serve", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
