"""Fixtures for the liver app tests: a small-channel copy of the bundle with quickly trained weights, small
phantoms, and a real MONAI Label server started with ``python -m liverseg.serve`` on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from liverseg.dataset import write_case, write_dataset_json
from liverseg.imageio import write_nifti
from liverseg.phantom import generate_phantom
from tests import procs
from tests.conftest import BUNDLE, REPO

APP = REPO / "apps" / "liver"
sys.path.insert(0, str(APP))  # the app's `lib` package, for unit tests

PHANTOM_SHAPE = (64, 64, 32)  # ~6 mm voxels: CPU inference takes well under a second
# the test bundle: the shipped configs with a 16x smaller network, coarse resampling and small patches
TEST_OVERRIDES = {"channels": [4, 8, 16, 32, 64], "pixdim": [5.0, 5.0, 5.0], "roi_size": [32, 32, 16]}
TRAIN_SEEDS = list(range(100, 108))
TRAIN_ARGS = [
    "--max_epochs", "100", "--val_interval", "10", "--num_workers", "0", "--cache_rate", "1",
    "--num_folds", "4", "--early_stop_patience", "100",
    "--optimizer_name", "adagrad", "--loss_name", "ce", "--learning_rate", "0.05",
]  # fmt: skip  (the recipe is pinned: the bundle's defaults may change)
# served test cases (not in the training set): one RAS, one LPS, one more RAS left unlabelled
CASES = {"case_ras": (500, "RAS"), "case_lps": (501, "LPS"), "case_extra": (502, "RAS")}
# readiness is polled every 0.5 s, so a generous cap costs nothing on an idle machine; under load (other jobs on the
# 2 cores) the server took more than the former 120 s to import and start
SERVER_START_TIMEOUT = float(os.environ.get("LIVERSEG_TEST_SERVER_TIMEOUT", "900"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fingerprint() -> str:
    """What the cached test weights depend on: the network (code and definition), the recipe, the phantoms.

    Other config changes (defaults of the shipped recipe, new switches) keep the cache: the app tests need weights
    the served network can load and that segment the phantoms, not the bundle's current recipe.
    """
    inference = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    network = {k: inference.get(k) for k in ("network_def", "strides", "spatial_dims", "in_channels", "out_channels")}
    h = hashlib.sha256(json.dumps([TEST_OVERRIDES, TRAIN_SEEDS, TRAIN_ARGS, PHANTOM_SHAPE, network]).encode())
    for f in [REPO / "liverseg" / "phantom.py", *sorted((BUNDLE / "scripts" / "networks").rglob("*.py"))]:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def make_test_bundle(dest: Path) -> Path:
    """Copy the repository bundle to ``dest`` with :data:`TEST_OVERRIDES` in its inference and train configs."""
    shutil.copytree(BUNDLE, dest, ignore=shutil.ignore_patterns("__pycache__", "models", "eval", "docs", "runs"))
    for name in ("inference.json", "train.json", "evaluate.json"):
        f = dest / "configs" / name
        if f.exists():
            cfg = json.loads(f.read_text())
            cfg.update(TEST_OVERRIDES)
            f.write_text(json.dumps(cfg, indent=2))
    (dest / "models").mkdir()
    return dest


@pytest.fixture(scope="session")
def test_bundle(tmp_path_factory) -> Path:
    """The test bundle with trained weights in ``models/model.pt`` (trained once, ~1 min on 2 cores, then cached
    in ``.cache/tests/apps/<fingerprint of configs, code and recipe>``)."""
    root = tmp_path_factory.mktemp("bundle")
    bundle = make_test_bundle(root / "liver_ct_seg")
    cache = REPO / ".cache" / "tests" / "apps" / _fingerprint()
    if not (cache / "model.pt").is_file():
        data = root / "train_data"
        for i, seed in enumerate(TRAIN_SEEDS):
            p = generate_phantom(seed, shape=PHANTOM_SHAPE, orientation="LPS" if i % 3 == 0 else "RAS")
            write_case(data, f"train_{i:03d}", p.image, p.affine, p.label, split="Tr")
        write_dataset_json(data, "app-test", "")
        out = root / "train_out"
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json"]
        cmd += ["--dataset_dir", str(data), "--output_dir", str(out), "--ckpt_dir", str(out / "ckpt"), *TRAIN_ARGS]
        # the deadline follows the epochs written (a loaded machine trains slowly, not never): 15 min without a new
        # epoch, 4 h in all; one thread (a tiny network: no gain from two, and no spinning against other jobs)
        history = out / "history.csv"
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        res = procs.run(
            cmd, cwd=bundle, env=env, timeout=900, cap=4 * 3600,
            progress=lambda: history.stat().st_size if history.exists() else 0,
        )  # fmt: skip
        if res.returncode != 0 or not (out / "ckpt" / "model.pt").is_file():
            raise RuntimeError(f"training the test model failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out / "ckpt" / "model.pt", cache / "model.pt")
    shutil.copy2(cache / "model.pt", bundle / "models" / "model.pt")
    return bundle


@pytest.fixture(scope="session")
def phantoms():
    return {
        name: generate_phantom(seed, shape=PHANTOM_SHAPE, orientation=o) for name, (seed, o) in CASES.items()
    }


@pytest.fixture(scope="session")
def studies(tmp_path_factory, phantoms) -> Path:
    """A studies folder in nnU-Net naming (``<id>_0000.nii.gz``), as ``make serve`` gets it."""
    d = tmp_path_factory.mktemp("studies") / "imagesTs"
    for name, p in phantoms.items():
        write_nifti(d / f"{name}_0000.nii.gz", p.image, p.affine)
    return d


class Server:
    """A ``liverseg serve`` process (and its monailabel child), started and stopped by the tests."""

    def __init__(self, studies: Path, workdir: Path, bundle: Path, conf: list[tuple[str, str]] | None = None):
        self.studies, self.workdir, self.bundle, self.conf = studies, workdir, bundle, conf or []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = "127.0.0.1"  # what the server binds (tests of an exposed server set "0.0.0.0")
        self.headers: dict[str, str] = {}  # sent with the readiness and liveness checks (a token when required)
        self.env: dict[str, str] = {}  # extra environment of the server process
        self.args: list[str] = []  # extra arguments of `liverseg serve` (e.g. --pacs)
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "serve.log"

    def start(self, timeout: float = SERVER_START_TIMEOUT) -> Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "liverseg.serve", "--host", self.host, "--port", str(self.port)]
        cmd += ["--studies", str(self.studies), "--workdir", str(self.workdir), "--bundle", str(self.bundle)]
        for k, v in self.conf:
            cmd += ["--conf", k, v]
        cmd += self.args
        env = dict(os.environ, PYTHONPATH=str(REPO), **self.env)
        # its own process group: stop() ends the server and whatever it started (training, scoring)
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                if requests.get(f"{self.url}/info/", headers=self.headers, timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout} s:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            procs.kill_group(self.proc, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        procs.kill_group(self.proc)  # anything left: the server if it hung, a training or scoring child
        return self.proc.wait()

    def alive(self) -> bool:
        return requests.get(f"{self.url}/info/", headers=self.headers, timeout=10).status_code == 200


@pytest.fixture(scope="session")
def server(tmp_path_factory, test_bundle, studies):
    """The real server on the test bundle; the ``unet`` variant is requested too (it has no weights: trainer only)."""
    srv = Server(studies, tmp_path_factory.mktemp("serve"), test_bundle, conf=[("variants", "unet")]).start()
    yield srv
    srv.stop()


def interactive_source(test_bundle: Path, root: Path) -> Path:
    """A copy of the test bundle with interactive weights widened from its automatic ones (zero guidance weights): with
    no click it is the automatic model, and a click acts through the configs' smart click (``SoftmaxWithClicksd``)."""
    import importlib.util

    import torch
    from lib import deepedit

    source = root / "liver_ct_seg"
    shutil.copytree(test_bundle, source, ignore=shutil.ignore_patterns("__pycache__"))
    spec = importlib.util.spec_from_file_location("clicks_for_test", source / "scripts" / "clicks.py")
    clicks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(clicks)
    from monai.bundle import ConfigParser
    from monailabel.utils.others.class_utils import unload_module

    parser = ConfigParser(deepedit.merged_deepedit_config(source, "inference.json"))
    parser["bundle_root"] = str(source)
    parser["device"] = "$torch.device('cpu')"
    sys.path.insert(0, str(source))  # the bundle's `scripts` package, as monailabel puts it while it builds
    unload_module("scripts")
    try:
        network = parser.get_parsed_content("network_def")
    finally:
        sys.path.remove(str(source))
        unload_module("scripts")
    net = clicks.load_automatic_weights(network, str(source / "models" / "model.pt"))
    (source / "models" / "deepedit").mkdir()
    torch.save(net.state_dict(), source / "models" / "deepedit" / "model.pt")
    return source
