"""Nothing lost (issue 16): every write of a label, image, datastore index or model is atomic and durable.

Faults are real where they can be: SIGKILL of a child process in the middle of a write (the child's ``os.sendfile``,
which ``shutil.copy`` and :mod:`lib.atomic` both copy with, is slowed down and reports each chunk, so the kill lands
mid-copy every time), a file-size limit (``RLIMIT_FSIZE``: writes past it fail with ``EFBIG``) for a full disk, and
empty or broken files on disk. monailabel's own ``LocalDatastore`` and ``PUT /model`` (``shutil.copy`` in place) fail
these tests: a truncated label or model, an empty index that stops the start, an old label destroyed by a full disk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from lib import atomic, model_store  # noqa: E402  (apps/liver on sys.path, see conftest)
from lib import server as app_server  # noqa: E402
from lib.datastore import LiverDatastore  # noqa: E402
from lib.validation import BadRequest, InsufficientStorage, NotFound  # noqa: E402

from liverseg.imageio import write_nifti
from tests.conftest import REPO

from .conftest import APP, PHANTOM_SHAPE, Server, make_test_bundle

SHAPE = (32, 32, 16)
RAS = np.diag([2.0, 2.0, 3.0, 1.0])
LPS = np.diag([-2.0, -2.0, 3.0, 1.0])
CHILD_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(APP), str(REPO)]), PYTHONDONTWRITEBYTECODE="1")

# Prepended to a child's script: os.sendfile copies 256 bytes per call, says "W" and waits, so that the parent's
# SIGKILL lands in the middle of a copy (shutil.copy and lib.atomic both copy with os.sendfile on Linux).
SLOW_SENDFILE = """
import os, sys, time
_sendfile = os.sendfile
def _slow_sendfile(out_fd, in_fd, offset, count):
    sent = _sendfile(out_fd, in_fd, offset, min(count, 256))
    sys.stdout.write("W\\n"); sys.stdout.flush()
    time.sleep(0.2)
    return sent
"""


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def temps(folder: Path) -> list:
    return sorted(p.name for p in Path(folder).rglob("*") if atomic.is_temp(p.name))


def labels(seed: int, sparse: bool) -> np.ndarray:
    """A label on :data:`SHAPE`: a box (compresses to a few hundred bytes) or noise in {0, 1, 2} (several KB)."""
    lab = np.zeros(SHAPE, np.uint8)
    if sparse:
        lab[8:20, 8:20, 4:10] = 1
        lab[12:15, 12:15, 6:8] = 2
    else:
        lab[:] = np.random.default_rng(seed).integers(0, 3, SHAPE)
    return lab


@pytest.fixture
def store(tmp_path):
    """A datastore folder with a RAS and an LPS image, the RAS one with a saved final label ("A"), and label "B"."""
    root = tmp_path / "datastore"
    rng = np.random.default_rng(0)
    for name, affine in (("c_ras", RAS), ("c_lps", LPS)):
        write_nifti(root / f"{name}.nii.gz", rng.normal(40, 20, SHAPE).astype(np.int16), affine)
    files = tmp_path / "uploads"
    a = write_nifti(files / "a.nii.gz", labels(1, sparse=True), RAS)
    b = write_nifti(files / "b.nii.gz", labels(2, sparse=False), RAS)
    ds = LiverDatastore(str(root), extensions=("*.nii.gz",))
    ds.save_label("c_ras", str(a), "final", {})
    return root, a, b


def label_file(root: Path) -> Path:
    return root / "labels" / "final" / "c_ras.nii.gz"


def run_child(script: str, kill_after_chunks: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``script`` in a child Python; with ``kill_after_chunks``, SIGKILL it once it has copied that many chunks
    (see :data:`SLOW_SENDFILE`). Returns the finished process (``returncode`` -9 when killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=CHILD_ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    out = []
    if kill_after_chunks is not None:
        deadline = time.time() + timeout
        chunks = 0
        while chunks < kill_after_chunks and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            chunks += line.strip() == "W"
        assert chunks == kill_after_chunks, f"the child did not start copying:\n{''.join(out)}{proc.stderr.read()}"
        proc.kill()
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out) + stdout, stderr)


# ---------------------------------------------------------------------------------------------------------------
# lib.atomic
# ---------------------------------------------------------------------------------------------------------------


def test_atomic_write_replaces_or_leaves_untouched(tmp_path):
    f = tmp_path / "x.json"
    atomic.write_text(f, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.atomic_write(f, "w") as out:
            out.write("new, half written")
            raise RuntimeError("boom")
    assert f.read_text() == "old" and temps(tmp_path) == []

    def reject(tmp: str) -> None:
        assert Path(tmp).read_bytes() == b"new"  # complete and on disk when checked, before the rename
        raise ValueError("rejected")

    with pytest.raises(ValueError, match="rejected"):
        with atomic.atomic_write(f, "wb", check=reject) as out:
            out.write(b"new")
    assert f.read_text() == "old" and temps(tmp_path) == []
    atomic.copy_file(f, tmp_path / "y.json")
    atomic.write_text(f, "new")
    assert f.read_text() == "new" and (tmp_path / "y.json").read_text() == "old" and temps(tmp_path) == []
    with pytest.raises(ValueError, match="mode"):
        with atomic.atomic_write(f, "a"):
            pass


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_full_disk_is_507_and_keeps_the_old_file(tmp_path, monkeypatch, code):
    f = tmp_path / "model.pt"
    f.write_bytes(b"old weights")
    src = tmp_path / "new.pt"
    src.write_bytes(b"n" * 5000)

    def full(out_fd, in_fd, offset, count):
        os.write(out_fd, b"n" * 100)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "sendfile", full)
    with pytest.raises(InsufficientStorage, match="previous version is kept") as e:
        atomic.copy_file(src, f, what="the model weights")
    assert "the model weights could not be saved" in e.value.msg
    assert f.read_bytes() == b"old weights" and temps(tmp_path) == []
    assert app_server._status_of(e.value) == 507
    # other errors are not storage errors
    monkeypatch.setattr(os, "sendfile", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError) as e2:
        atomic.copy_file(src, f)
    assert not isinstance(e2.value, InsufficientStorage) and f.read_bytes() == b"old weights"


def test_stale_temps_are_removed(tmp_path):
    keep = tmp_path / ".notes.txt"
    keep.write_text("not ours")
    stale = Path(atomic.temp_path(tmp_path / "c.nii.gz"))
    stale.write_bytes(b"partial")
    assert stale.name.startswith(".c.nii.gz.liverseg-") and stale.name.endswith(".tmp") and atomic.is_temp(stale.name)
    assert atomic.remove_stale_temps(tmp_path, "other.nii.gz") == 0 and stale.exists()
    assert atomic.remove_stale_temps(tmp_path) == 1 and not stale.exists() and keep.exists()


# ---------------------------------------------------------------------------------------------------------------
# the datastore: labels, images, index
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"{", b"null", b'{"objects": 3}', b"\xff\xfe\x00garbage"])
def test_broken_index_is_rebuilt_at_start(store, caplog, content):
    """monailabel's LocalDatastore refuses to start on an empty index (ValidationError)."""
    root, a, _ = store
    index = root / "datastore_v2.json"
    index.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="lib.datastore"):
        ds = LiverDatastore(str(root), extensions=("*.nii.gz",))
    assert "is empty or broken" in caplog.text and "rebuilt from the images and labels on disk" in caplog.text
    assert sorted(ds.list_images()) == ["c_lps", "c_ras"]
    assert ds.get_label_by_image_id("c_ras", "final") == "c_ras"
    assert sha(ds.get_label_uri("c_ras", "final")) == sha(a)
    assert (root / "datastore_v2.json.broken").read_bytes() == content
    assert json.loads(index.read_text())["objects"]["c_ras"]["labels"]["final"]["ext"] == ".nii.gz"


def test_broken_index_read_only_is_rebuilt_in_memory(store):
    root, _, _ = store
    (root / "datastore_v2.json").write_text("")
    ds = LiverDatastore(str(root), extensions=("*.nii.gz",), read_only=True)
    assert sorted(ds.list_images()) == ["c_lps", "c_ras"] and ds.get_label_by_image_id("c_ras", "final") == "c_ras"
    assert (root / "datastore_v2.json").read_text() == ""  # read-only: nothing written


def test_saves_are_atomic_and_leave_no_temp(store):
    root, a, b = store
    ds = LiverDatastore(str(root), extensions=("*.nii.gz",))
    ds.save_label("c_ras", str(b), "final", {"client": "x"})
    assert sha(label_file(root)) == sha(b) and ds.get_label_info("c_ras", "final")["client"] == "x"
    new_image = write_nifti(root.parent / "uploads" / "c_new.nii.gz", np.zeros(SHAPE, np.int16), LPS)
    assert ds.add_image("c_new", str(new_image), {}) == "c_new"
    assert sha(root / "c_new.nii.gz") == sha(new_image)
    index = json.loads((root / "datastore_v2.json").read_text())
    assert set(index["objects"]) == {"c_ras", "c_lps", "c_new"}
    assert temps(root) == []
    with pytest.raises(NotFound):
        ds.save_label("nope", str(a), "final", {})


def test_auto_reload_sees_writes_of_another_process(store):
    """Files now arrive by rename: a watching datastore (monailabel's auto reload, on in the server) must still see
    the index and labels that another process (a scoring or training subprocess) writes."""
    root, a, _ = store
    watching = LiverDatastore(str(root), extensions=("*.nii.gz",), auto_reload=True)
    try:
        other = LiverDatastore(str(root), extensions=("*.nii.gz",))
        other.update_image_info("c_lps", {"epistemic_score": 0.5})
        lps_label = write_nifti(root.parent / "uploads" / "lps.nii.gz", labels(3, sparse=True), LPS)
        other.save_label("c_lps", str(lps_label), "final", {})
        deadline = time.time() + 20
        while time.time() < deadline and not (
            watching.get_image_info("c_lps").get("epistemic_score") == 0.5
            and watching.get_label_by_image_id("c_lps", "final")
        ):
            time.sleep(0.1)
        assert watching.get_image_info("c_lps").get("epistemic_score") == 0.5
        assert sha(watching.get_label_uri("c_lps", "final")) == sha(lps_label)
    finally:
        watching._observer.stop()
        watching._observer.join(10)


def test_stale_temps_removed_at_start(store):
    root, _, _ = store
    stale = Path(atomic.temp_path(label_file(root)))
    stale.write_bytes(b"partial label of a killed save")
    LiverDatastore(str(root), extensions=("*.nii.gz",))
    assert not stale.exists()


SAVE_LABEL = SLOW_SENDFILE + """
from lib.datastore import LiverDatastore
ds = LiverDatastore({root!r}, extensions=("*.nii.gz",))
os.sendfile = _slow_sendfile
ds.save_label("c_ras", {label!r}, "final", {{}})
print("DONE")
"""


@pytest.mark.slow
def test_kill_during_label_save_keeps_a_complete_label(store):
    """SIGKILL in the middle of copying the label: the datastore opens and holds the old label, complete.
    (monailabel's shutil.copy in place leaves the first chunks of the new label.)"""
    root, a, b = store
    res = run_child(SAVE_LABEL.format(root=str(root), label=str(b)), kill_after_chunks=2)
    assert res.returncode == -9, res.stderr[-2000:]
    assert temps(root)  # killed mid-copy: its temporary file is there
    ds = LiverDatastore(str(root), extensions=("*.nii.gz",))
    assert sha(ds.get_label_uri("c_ras", "final")) == sha(a)
    assert temps(root) == []  # the killed save's temporary file is removed at the next start
    ds.save_label("c_ras", str(b), "final", {})
    assert sha(ds.get_label_uri("c_ras", "final")) == sha(b)


SAVE_LABEL_FSIZE = """
import resource, signal, sys
from lib.datastore import LiverDatastore
from lib.validation import InsufficientStorage
ds = LiverDatastore({root!r}, extensions=("*.nii.gz",))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
try:
    ds.save_label("c_ras", {label!r}, "final", {{}})
except InsufficientStorage as e:
    print("507:", e.msg)
    sys.exit(3)
"""


@pytest.mark.slow
def test_full_disk_during_label_save_keeps_the_old_label(store):
    """A real file-size limit in a child process (EFBIG): the save fails with InsufficientStorage (507) and the old
    label stays intact (monailabel's in-place copy truncated it)."""
    root, a, b = store
    limit = (os.path.getsize(a) + os.path.getsize(b)) // 2
    assert os.path.getsize(a) < limit < os.path.getsize(b)
    res = run_child(SAVE_LABEL_FSIZE.format(root=str(root), label=str(b), limit=limit))
    assert res.returncode == 3, res.stdout + res.stderr[-2000:]
    assert "could not be saved" in res.stdout and "previous version is kept" in res.stdout
    assert sha(label_file(root)) == sha(a) and temps(root) == []
    ds = LiverDatastore(str(root), extensions=("*.nii.gz",))
    assert sha(ds.get_label_uri("c_ras", "final")) == sha(a)


# ---------------------------------------------------------------------------------------------------------------
# model weights
# ---------------------------------------------------------------------------------------------------------------


def tiny_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.InstanceNorm3d(4, affine=True))


def save_weights(path: Path, seed: int, wrap: bool = True) -> Path:
    state = tiny_net(seed).state_dict()
    torch.save({"model": state} if wrap else state, path)
    return path


def bad_weights(tmp_path: Path) -> dict:
    good = save_weights(tmp_path / "good.pt", 5)
    nan = tiny_net(6).state_dict()
    nan["0.weight"][0] = float("nan")
    wrong = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3)).state_dict()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    files = {
        "empty": b"",
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "text": b"not weights",
    }
    out = {}
    for name, data in files.items():
        (tmp_path / f"{name}.pt").write_bytes(data)
        out[name] = tmp_path / f"{name}.pt"
    for name, obj in (("nan", {"model": nan}), ("wrong_shape", {"model": wrong}), ("code", {"model": Evil()})):
        torch.save(obj, tmp_path / f"{name}.pt")
        out[name] = tmp_path / f"{name}.pt"
    torch.save([1, 2], tmp_path / "list.pt")
    out["list"] = tmp_path / "list.pt"
    return out


def test_install_weights_checks_and_keeps_the_last_good(tmp_path):
    models = tmp_path / "models"
    target = models / "model.pt"
    net = tiny_net()
    a, b = save_weights(tmp_path / "a.pt", 1), save_weights(tmp_path / "b.pt", 2, wrap=False)
    info = model_store.install_weights(a, target, net)
    assert sha(target) == sha(a) and info["previous"] is None and info["checksum"] == f"SHA256:{sha(a)}"
    with open(b, "rb") as stream:  # an upload stream
        info = model_store.install_weights(stream, target, net)
    assert sha(target) == sha(b) and sha(model_store.previous_path(target)) == sha(a)
    assert info["previous"] == model_store.previous_path(target)
    for name, bad in bad_weights(tmp_path).items():
        with pytest.raises(BadRequest):
            model_store.install_weights(bad, target, net)
        assert sha(target) == sha(b) and sha(model_store.previous_path(target)) == sha(a), name
        assert temps(models) == [], name
    with pytest.raises(model_store.TooLarge, match="at most 10 are accepted"):
        model_store.install_weights(a, target, net, max_bytes=10)
    # a broken served file is not kept as the last good one
    target.write_bytes(b"")
    model_store.install_weights(a, target, net)
    assert sha(target) == sha(a) and sha(model_store.previous_path(target)) == sha(a)
    deleted = model_store.delete_weights(target)
    assert not target.exists() and deleted.endswith(".deleted") and sha(deleted) == sha(a)
    with pytest.raises(NotFound):
        model_store.delete_weights(target)


def test_load_checked_names_the_problem(tmp_path):
    net = tiny_net()
    expect = {
        "empty": "torch.load(weights_only=True)", "truncated": "torch.load(weights_only=True)",
        "text": "torch.load(weights_only=True)", "code": "torch.load(weights_only=True)",
        "nan": "non-finite values", "wrong_shape": "do not fit the served network", "list": "not a state dict",
    }  # fmt: skip
    for name, path in bad_weights(tmp_path).items():
        with pytest.raises(BadRequest, match=expect[name].replace("(", r"\(").replace(")", r"\)")):
            model_store.load_checked(path, net)


def test_full_disk_during_model_install(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    net = tiny_net()
    model_store.install_weights(save_weights(tmp_path / "a.pt", 1), target, net)
    before = sha(target)

    def full(out_fd, in_fd, offset, count):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "sendfile", full)
    with pytest.raises(InsufficientStorage, match="No space left on device"):
        model_store.install_weights(save_weights(tmp_path / "b.pt", 2), target, net)
    assert sha(target) == before and temps(tmp_path) == []


INSTALL = SLOW_SENDFILE + """
import torch
from lib import model_store
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.InstanceNorm3d(4, affine=True))
os.sendfile = _slow_sendfile
model_store.install_weights({src!r}, {target!r}, net)
print("DONE")
"""


def test_kill_during_model_install_keeps_a_loadable_model(tmp_path):
    target = tmp_path / "models" / "model.pt"
    net = tiny_net()
    a = save_weights(tmp_path / "a.pt", 1)
    model_store.install_weights(a, target, net)
    b = save_weights(tmp_path / "b.pt", 2)
    res = run_child(INSTALL.format(src=str(b), target=str(target)), kill_after_chunks=2)
    assert res.returncode == -9, res.stderr[-2000:]
    assert sha(target) == sha(a)
    model_store.load_checked(target, net)
    model_store.install_weights(b, target, net)  # the next install removes the killed one's temp file
    assert sha(target) == sha(b) and temps(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------
# inference falls back to the last good weights
# ---------------------------------------------------------------------------------------------------------------


def random_bundle(root: Path, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """The test bundle (small network) with randomly initialised weights in ``models/model.pt``."""
    from monai.bundle import ConfigParser

    bundle = make_test_bundle(root / "liver_ct_seg")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    torch.manual_seed(seed)
    sys.path.insert(0, str(bundle))
    try:
        net = parser.get_parsed_content("network_def")
    finally:
        sys.path.remove(str(bundle))
    torch.save({"model": net.state_dict()}, bundle / "models" / "model.pt")
    return bundle, net


def test_infer_task_falls_back_to_last_good_weights(tmp_path, caplog):
    from lib.infer import LiverSegInferTask

    bundle, net = random_bundle(tmp_path)
    weights = bundle / "models" / "model.pt"
    model_store.install_weights(weights, weights, net)  # reinstalled: the served file is now also model.pt.prev
    task = LiverSegInferTask(str(bundle), {})
    good = {k: v.clone() for k, v in task._get_network("cpu", None).state_dict().items()}
    weights.write_bytes(b"")  # what a kill during monailabel's in-place copy left
    request = {"model_filename": task._config["model_filename"]}  # as monailabel's __call__ passes it
    with caplog.at_level(logging.ERROR, logger="lib.infer"):
        network = task._get_network("cpu", request)
    assert "could not be loaded" in caplog.text and "model.pt.prev" in caplog.text
    for k, v in network.state_dict().items():
        assert torch.equal(v, good[k]), k
    assert task.get_path() == str(weights) + ".prev" and task.weights_path == str(weights)
    for data in (None, request):  # from the cache, without a new attempt on the broken file
        caplog.clear()
        assert task._get_network("cpu", data) is network and "could not be loaded" not in caplog.text
    # new weights replace the broken file: they are served again
    _, other = random_bundle(tmp_path / "other", seed=1)
    model_store.install_weights(tmp_path / "other" / "liver_ct_seg" / "models" / "model.pt", weights, net)
    assert task.get_path() == str(weights)
    for k, v in task._get_network("cpu", request).state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k
    # no last good weights: the error stands
    os.unlink(model_store.previous_path(weights))
    weights.write_bytes(b"")
    with pytest.raises(Exception):
        task._get_network("cpu", request)


# ---------------------------------------------------------------------------------------------------------------
# against a real server
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def durable_server(tmp_path_factory):
    """A real server (``liverseg serve``) on the test bundle with random weights, model upload turned on."""
    from liverseg.phantom import generate_phantom

    root = tmp_path_factory.mktemp("durable")
    bundle, net = random_bundle(root)
    studies = root / "studies"
    phantom = generate_phantom(600, shape=PHANTOM_SHAPE, orientation="LPS")
    write_nifti(studies / "case_lps_0000.nii.gz", phantom.image, phantom.affine)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIVERSEG_ALLOW_MODEL_UPLOAD", "1")
        server = Server(studies, root / "work", bundle).start()
    yield server, bundle, phantom
    server.stop()


def _infer(server, tmp_path: Path) -> np.ndarray:
    import nibabel as nib
    from monailabel.client import MONAILabelClient

    out, _ = MONAILabelClient(server.url, tmpdir=str(tmp_path)).infer("liver_ct_seg", "case_lps", {})
    return np.asarray(nib.load(out).dataobj)


@pytest.mark.slow
def test_server_model_upload_checked_and_zero_byte_model_falls_back(durable_server, tmp_path):
    server, bundle, _ = durable_server
    served = server.workdir / "app" / "model" / "liver_ct_seg" / "models" / "model.pt"
    mask = _infer(server, tmp_path)
    before = sha(served)
    for name, bad in bad_weights(tmp_path).items():
        if name in ("wrong_shape", "code", "list", "nan", "empty"):
            with open(bad, "rb") as f:
                r = requests.put(f"{server.url}/model/liver_ct_seg", files={"file": ("model.pt", f)}, timeout=60)
            assert r.status_code == 400, (name, r.status_code, r.text)
            assert sha(served) == before, name
    assert temps(served.parent) == []
    with open(bundle / "models" / "model.pt", "rb") as f:  # the same weights again: the served ones become .prev
        r = requests.put(f"{server.url}/model/liver_ct_seg", files={"file": ("model.pt", f)}, timeout=60)
    assert r.status_code == 200 and r.json()["previous"], r.text
    assert (served.parent / "model.pt.prev").is_file()
    served.write_bytes(b"")  # a kill during an in-place copy (monailabel's PUT /model) left this
    np.testing.assert_array_equal(_infer(server, tmp_path), mask)  # answered by the last good (same) weights
    assert "could not be loaded" in server.log.read_text()
    r = requests.put(f"{server.url}/model/unknown", files={"file": ("model.pt", b"x")}, timeout=60)
    assert r.status_code == 404 and "liver_ct_seg" in r.json()["detail"]


@pytest.mark.slow
def test_server_starts_on_an_empty_index(durable_server, tmp_path):
    """A kill during monailabel's in-place index write left an empty ``datastore_v2.json``; the server did not start."""
    server, _, phantom = durable_server
    from monailabel.client import MONAILabelClient

    label = write_nifti(tmp_path / "label.nii.gz", phantom.label, phantom.affine)
    MONAILabelClient(server.url, tmpdir=str(tmp_path)).save_label("case_lps", str(label), tag="final")
    server.stop()
    index = next((server.workdir / "datastore").rglob("datastore_v2.json"))
    index.write_text("")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIVERSEG_ALLOW_MODEL_UPLOAD", "1")
        server.start()
    ds = requests.get(f"{server.url}/datastore/?output=all", timeout=60).json()
    assert "final" in ds["objects"]["case_lps"]["labels"], ds
    assert "is empty or broken" in server.log.read_text()
