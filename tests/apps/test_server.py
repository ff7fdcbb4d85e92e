"""End-to-end tests of the liver app on a real MONAI Label server (``liverseg serve``), driven the way 3D Slicer
does (monailabel.client.MONAILabelClient) and with plain HTTP.

Tests run in file order on one server: inference checks come before training changes the weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient

from liverseg.imageio import write_nifti
from liverseg.volumetry import volumetry

pytestmark = pytest.mark.slow

# The test model (4-64 channels, 100 epochs on 8 phantoms, ~1 min on a CPU) reaches a liver Dice of ~0.9 on
# held-out phantoms; 0.75 leaves room for platform noise while a flipped or shifted mask scores far below it.
DICE_BAR = 0.75
# ~1.5 voxels at the phantoms' ~6 mm spacing; a left-right flip moves the liver centroid by ~100 mm.
CENTROID_TOL_MM = 10.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def centroid_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return (affine @ np.append(np.argwhere(mask).mean(axis=0), 1.0))[:3]


@pytest.fixture(scope="module")
def client(server):
    return MONAILabelClient(server.url, tmpdir=str(server.workdir / "client"))


def test_info_lists_tasks(client):
    info = client.info()
    assert list(info["models"]) == ["liver_ct_seg", "liver_scribbles"]  # the unet variant has no weights: no infer
    assert info["models"]["liver_ct_seg"]["labels"] == {"liver": 1, "tumor": 2}
    assert set(info["trainers"]) == {"liver_ct_seg", "liver_ct_seg_unet"}
    assert set(info["strategies"]) == {"random", "first", "epistemic"}
    assert set(info["scoring"]) == {"dice", "epistemic"}
    assert info["trainers"]["liver_ct_seg"]["config"]["tracking"][0] == "None"


def test_datastore_outside_repository(server, client):
    ds = client.datastore()
    assert set(ds["objects"]) == {"case_ras", "case_lps", "case_extra"}  # nnU-Net's _0000 dropped
    root = server.workdir / "datastore"
    assert any(root.rglob("case_ras.nii.gz"))
    runtime_weights = server.workdir / "app" / "model" / "liver_ct_seg" / "models" / "model.pt"
    assert runtime_weights.is_file()


@pytest.mark.parametrize("case", ["case_ras", "case_lps"])
def test_infer_in_source_world_space(client, phantoms, case, tmp_path):
    """The mask has the input's grid (shape + affine) and overlays the truth in world space (RAS and LPS input)."""
    label_file, params = client.infer("liver_ct_seg", case, {})
    img = nib.load(label_file)
    mask = np.asarray(img.dataobj)
    truth = phantoms[case]
    assert mask.shape == truth.image.shape
    np.testing.assert_allclose(img.affine, truth.affine, atol=1e-3)
    assert set(np.unique(mask)) <= {0, 1, 2}
    assert dice(mask > 0, truth.label > 0) > DICE_BAR
    offset = np.linalg.norm(centroid_mm(mask > 0, img.affine) - centroid_mm(truth.label > 0, truth.affine))
    assert offset < CENTROID_TOL_MM
    # volumetry is reported and matches the returned mask
    vol = params["volumetry"]
    ref = volumetry(mask.astype(np.int16), img.affine)
    assert vol["liver_volume_ml"] == pytest.approx(ref["liver_volume_ml"], rel=1e-3)
    assert vol["num_tumors"] == ref["num_tumors"] == len(vol["tumors"])
    assert vol["total_tumor_volume_ml"] == pytest.approx(sum(t["volume_ml"] for t in vol["tumors"]), abs=1e-3)
    assert vol["liver_volume_ml"] == pytest.approx(truth.info["liver_volume_ml"], rel=0.3)


def test_infer_upload_plain_http(server, phantoms, tmp_path):
    """Upload an LPS image (not in the datastore) and get JSON only."""
    p = phantoms["case_lps"]
    f = write_nifti(tmp_path / "upload.nii.gz", p.image, p.affine)
    with open(f, "rb") as fh:
        r = requests.post(f"{server.url}/infer/liver_ct_seg?output=json", files={"file": ("upload.nii.gz", fh)})
    assert r.status_code == 200, r.text
    vol = r.json()["volumetry"]
    assert vol["liver_volume_ml"] > 0 and vol["tumor_burden_percent"] is not None


def test_session_upload_then_infer(client, phantoms, tmp_path):
    """3D Slicer's flow for an image that is not in the datastore: create a session, infer on it."""
    p = phantoms["case_lps"]
    f = write_nifti(tmp_path / "session.nii.gz", p.image, p.affine)
    session_id = client.create_session(str(f))["session_id"]
    label_file, params = client.infer("liver_ct_seg", "", {}, session_id=session_id)
    img = nib.load(label_file)
    assert img.shape == p.image.shape and np.allclose(img.affine, p.affine, atol=1e-3)
    assert params["volumetry"]["liver_volume_ml"] > 0


def _status(r: requests.Response) -> tuple[int, str]:
    try:
        detail = r.json().get("detail", "")
    except ValueError:
        detail = r.text
    return r.status_code, str(detail)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    (tmp_path / "corrupt.nii.gz").write_bytes(b"this is not a NIfTI file")
    files["corrupt"] = tmp_path / "corrupt.nii.gz"
    (tmp_path / "notes.txt").write_text("hello")
    files["text"] = tmp_path / "notes.txt"
    files["2d"] = write_nifti(tmp_path / "slice.nii.gz", np.zeros((32, 32), np.int16), np.eye(4))
    files["4d"] = write_nifti(tmp_path / "multi.nii.gz", np.zeros((16, 16, 8, 2), np.int16), np.eye(4))
    noise = np.random.default_rng(0).integers(0, 99, (32, 32, 32)).astype(np.int16)  # does not compress away
    data = write_nifti(tmp_path / "whole.nii.gz", noise, np.eye(4)).read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(data[: len(data) // 2])  # a valid header, half the data
    files["truncated"] = tmp_path / "truncated.nii.gz"
    return files


@pytest.mark.parametrize("kind", ["corrupt", "text", "2d", "4d", "truncated"])
def test_bad_uploads_are_400(server, tmp_path, kind):
    f = _bad_files(tmp_path)[kind]
    with open(f, "rb") as fh:
        r = requests.post(f"{server.url}/infer/liver_ct_seg?output=json", files={"file": (f.name, fh)})
    code, detail = _status(r)
    assert code == 400 and detail, (code, detail)
    with open(f, "rb") as fh:
        r = requests.put(f"{server.url}/datastore/image?image=bad_{kind}", files={"file": (f.name, fh)})
    code, detail = _status(r)
    assert code == 400 and detail, (code, detail)
    assert server.alive()


@pytest.mark.parametrize(
    "method, path, code, words",
    [
        ("POST", "/infer/no_such_model?image=case_ras", 404, "unknown model"),
        ("POST", "/infer/liver_ct_seg_unet?image=case_ras", 404, "unknown model"),  # no weights
        ("POST", "/infer/liver_ct_seg?image=no_such_image", 404, "not in the datastore"),
        ("POST", "/infer/liver_ct_seg?image=../../etc/passwd", 400, "image"),  # bad id, or a server path from cwd
        ("POST", "/infer/liver_ct_seg?image=/etc/passwd", 400, "server path"),
        ("POST", "/activelearning/no_such_strategy", 404, "unknown strategy"),
        ("POST", "/train/no_such_model", 404, "unknown trainer"),
        ("POST", "/scoring/no_such_method", 404, "unknown method"),
        ("DELETE", "/datastore/image?id=../case_ras", 400, "invalid image id"),
        ("DELETE", "/datastore/image?id=no_such_image", 404, "not in the datastore"),
    ],
)
def test_bad_requests(server, method, path, code, words):
    r = requests.request(method, server.url + path)
    got, detail = _status(r)
    assert got == code and words in detail, (got, detail)
    assert server.alive()


def test_traversal_ids_do_not_escape(server, phantoms, tmp_path):
    p = phantoms["case_ras"]
    img = write_nifti(tmp_path / "img.nii.gz", p.image, p.affine)
    lab = write_nifti(tmp_path / "lab.nii.gz", p.label, p.affine)
    before = {x for x in server.workdir.rglob("*")}
    with open(img, "rb") as fh:
        r = requests.put(f"{server.url}/datastore/image?image=../../escaped", files={"file": ("x.nii.gz", fh)})
    assert r.status_code == 400
    with open(lab, "rb") as fh:
        url = f"{server.url}/datastore/label?image=case_ras&tag=../../escaped"
        r = requests.put(url, files={"label": ("l.nii.gz", fh)})
    assert r.status_code == 400
    after = {x for x in server.workdir.rglob("*")}
    assert not [x for x in after - before if "escaped" in x.name]
    assert not list(server.workdir.parent.glob("*escaped*"))


@pytest.mark.parametrize(
    "make, code, words",
    [
        (lambda p: (p.label * 3).astype(np.uint8), 400, "valid values"),
        (lambda p: p.label[:20], 400, "shape"),
    ],
)
def test_bad_labels_rejected(server, phantoms, tmp_path, make, code, words):
    p = phantoms["case_lps"]
    f = write_nifti(tmp_path / "bad_label.nii.gz", make(p), p.affine)
    with open(f, "rb") as fh:
        r = requests.put(f"{server.url}/datastore/label?image=case_lps&tag=final", files={"label": (f.name, fh)})
    got, detail = _status(r)
    assert got == code and words in detail, (got, detail)


def test_save_label_and_active_learning(client, server, phantoms, tmp_path):
    p = phantoms["case_ras"]
    f = write_nifti(tmp_path / "case_ras.nii.gz", p.label, p.affine)
    res = client.save_label("case_ras", str(f), tag="final")
    assert res["label"] == "case_ras"
    assert (server.workdir / "datastore").rglob("labels/final/case_ras.nii.gz")
    unlabeled = {"case_lps", "case_extra"}
    assert client.next_sample("first", {})["id"] == "case_extra"  # sorted ids
    assert client.next_sample("random", {})["id"] in unlabeled
    sample = client.next_sample("epistemic", {})
    assert sample["id"] in unlabeled and 0.0 <= sample["epistemic_entropy"] <= 1.0
    infos = client.datastore()["objects"]
    scores = {i: infos[i]["image"]["info"].get("epistemic_entropy") for i in unlabeled}
    assert all(s is not None for s in scores.values())
    assert sample["id"] == max(scores, key=scores.get)


def test_scoring_dice_against_saved_label(server):
    r = requests.post(f"{server.url}/scoring/dice?run_sync=true")
    assert r.status_code == 200, r.text
    res = r.json()
    assert set(res["images"]) == {"case_ras"}
    assert res["images"]["case_ras"]["liver"] > DICE_BAR


def test_batch_infer_on_cpu(server):
    r = requests.post(f"{server.url}/batch/infer/liver_ct_seg?images=unlabeled&run_sync=true")
    assert r.status_code == 200, r.text
    labels = {k: v["labels"] for k, v in requests.get(f"{server.url}/datastore/?output=all").json()["objects"].items()}
    assert "original" in labels["case_lps"] and "original" in labels["case_extra"]


def test_train_through_api_reloads_weights_without_restart(client, server, phantoms, tmp_path):
    """Training (tracking asked for but turned off: MLflow's file store breaks monai 1.6.1) writes the served weights;
    the next inference uses them."""
    p = phantoms["case_lps"]
    f = write_nifti(tmp_path / "case_lps.nii.gz", p.label, p.affine)
    client.save_label("case_lps", str(f), tag="final")
    weights = server.workdir / "app" / "model" / "liver_ct_seg" / "models" / "model.pt"
    before = weights.stat().st_mtime
    task = client.train_start("liver_ct_seg", {"max_epochs": 2, "tracking": "mlflow"})
    assert task["status"] in ("SUBMITTED", "RUNNING")
    deadline = time.time() + 240
    status = client.train_status()
    while status["status"] in ("SUBMITTED", "RUNNING") and time.time() < deadline:
        time.sleep(2)
        status = client.train_status()
    assert status["status"] == "DONE", json.dumps(status)[-2000:]
    assert weights.stat().st_mtime > before
    client.infer("liver_ct_seg", "case_ras", {})
    assert "Reload model from cache" in (server.workdir / "serve.log").read_text()


def test_train_variant_from_scratch_then_serve_after_restart(server):
    """A variant without weights trains from scratch (tiny run); after a restart it is served for inference."""
    r = requests.post(f"{server.url}/train/liver_ct_seg_unet", json={"max_epochs": 1})
    assert r.status_code == 200, r.text
    deadline = time.time() + 240
    while time.time() < deadline:
        st = requests.get(f"{server.url}/train/").json()
        if st["status"] not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(2)
    assert st["status"] == "DONE", json.dumps(st)[-2000:]
    assert (server.workdir / "app" / "model" / "liver_ct_seg_unet" / "models" / "model.pt").is_file()


def test_labels_and_variant_survive_restart(server, client):
    assert server.stop() == 0  # Ctrl-C: clean exit
    server.start()
    objects = requests.get(f"{server.url}/datastore/?output=all").json()["objects"]
    assert "final" in objects["case_ras"]["labels"] and "final" in objects["case_lps"]["labels"]
    info = requests.get(f"{server.url}/info/").json()
    assert set(info["models"]) == {"liver_ct_seg", "liver_ct_seg_unet", "liver_scribbles"}
    r = requests.post(f"{server.url}/infer/liver_ct_seg_unet?image=case_extra&output=json")
    assert r.status_code == 200 and r.json()["variant"] == "unet"
