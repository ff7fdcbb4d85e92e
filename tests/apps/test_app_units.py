"""Unit tests of the liver app's pieces and of ``liverseg serve``'s preparation (no server process)."""

from __future__ import annotations

import argparse
import http.server
import json
import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import nibabel as nib
import numpy as np
import pytest
from lib import bundles  # noqa: E402  (apps/liver on sys.path, see conftest)
from lib import datastore as app_datastore  # noqa: E402
from lib import server as app_server  # noqa: E402
from lib.validation import BadRequest, NotFound, check_id, read_header  # noqa: E402

from liverseg import serve
from liverseg.errors import LiverSegError
from liverseg.imageio import write_nifti

from .conftest import BUNDLE, free_port, make_test_bundle

# ---------------------------------------------------------------------------------------------------------------
# runtime bundles and variants
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("", []),
        (None, []),
        ("unet", ["unet"]),
        ("unet, aunet,dalunet", ["unet", "aunet", "dalunet"]),
        ("unet+2d,unet", ["unet+2d", "unet"]),
        ("all", bundles.available_variants(BUNDLE)),
    ],
)
def test_parse_variants(spec, expected):
    assert bundles.parse_variants(spec, BUNDLE) == expected


@pytest.mark.parametrize("spec", ["vnet", "unet,nope", "unet+", "../unet", "unet+3d"])
def test_parse_variants_rejects_unknown(spec):
    with pytest.raises(ValueError, match="unknown bundle variant"):
        bundles.parse_variants(spec, BUNDLE)


@pytest.mark.parametrize(
    "variant, name, target",
    [
        ("", "liver_ct_seg", "scripts.networks.AttentionUNetDS"),
        ("unet", "liver_ct_seg_unet", "scripts.networks.UNet"),
        ("dalunet", "liver_ct_seg_dalunet", "scripts.networks.DALUNet"),
        ("2d", "liver_ct_seg_2d", "scripts.networks.UNet"),
        ("2d+aunet", "liver_ct_seg_2d_aunet", "scripts.networks.AttentionUNet"),  # later overrides win
    ],
)
def test_prepare_bundle_merges_variant(tmp_path, variant, name, target):
    b = bundles.prepare_bundle(BUNDLE, tmp_path, variant)
    assert b.name == name and b.path == tmp_path / name
    for cfg in ("inference.json", "train.json"):
        c = json.loads((b.path / "configs" / cfg).read_text())
        assert c["network_def"]["_target_"] == target
    # the 2D override's nested ids land in the configs that have them, and only there
    inf = json.loads((b.path / "configs" / "inference.json").read_text())
    assert ("train" in inf) is False
    assert inf["spatial_dims"] == (2 if "2d" in variant else 3)
    # overlays and code are copied as they are
    assert (b.path / "configs" / "evaluate.json").read_bytes() == (BUNDLE / "configs" / "evaluate.json").read_bytes()
    assert (b.path / "scripts" / "networks" / "__init__.py").is_file()
    assert not list(b.path.rglob("__pycache__"))


def test_prepare_bundle_weights_rules(tmp_path):
    src = make_test_bundle(tmp_path / "src")
    weights = src / "models" / "model.pt"
    weights.write_bytes(b"v1")
    b = bundles.prepare_bundle(src, tmp_path / "rt")
    assert b.weights.read_bytes() == b"v1"
    # weights trained through the API (newer runtime file) are kept at the next start
    b.weights.write_bytes(b"trained")
    os.utime(b.weights, (time.time() + 10, time.time() + 10))
    bundles.prepare_bundle(src, tmp_path / "rt")
    assert b.weights.read_bytes() == b"trained"
    # newer shipped weights replace them
    weights.write_bytes(b"v2")
    os.utime(weights, (time.time() + 20, time.time() + 20))
    bundles.prepare_bundle(src, tmp_path / "rt")
    assert b.weights.read_bytes() == b"v2"
    # a variant reads models/<variant>/model.pt; without it, no runtime weights
    v = bundles.prepare_bundle(src, tmp_path / "rt", "unet")
    assert not v.weights.exists() and v.source_weights == src / "models" / "unet" / "model.pt"
    # the source is only read
    assert sorted(p.name for p in (src / "models").iterdir()) == ["model.pt"]


def test_prepare_bundle_is_idempotent(tmp_path):
    b = bundles.prepare_bundle(BUNDLE, tmp_path, "unet")
    files = {p: p.stat().st_mtime_ns for p in b.path.rglob("*") if p.is_file()}
    time.sleep(0.01)
    bundles.prepare_bundle(BUNDLE, tmp_path, "unet")
    assert {p: p.stat().st_mtime_ns for p in b.path.rglob("*") if p.is_file()} == files


def test_prepare_bundle_rejects_non_bundle(tmp_path):
    with pytest.raises(ValueError, match="not a MONAI bundle"):
        bundles.prepare_bundle(tmp_path, tmp_path / "rt")


# ---------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["case_001", "phantom-12", "a.b", "A1"])
def test_check_id_accepts(value):
    assert check_id(value) == value


@pytest.mark.parametrize("value", ["", "../x", "..", "a/b", "/etc/passwd", "a\\b", ".hidden", "a..b", "x" * 300, 5])
def test_check_id_rejects(value):
    with pytest.raises(BadRequest, match="invalid"):
        check_id(value)


def test_read_header_good(tmp_path):
    f = write_nifti(tmp_path / "ok.nii.gz", np.zeros((8, 9, 10), np.int16), np.diag([-2.0, -2.0, 3.0, 1.0]))
    shape, affine = read_header(str(f))
    assert shape == (8, 9, 10) and affine[0, 0] == -2.0


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("bad.nii.gz", b"garbage", "not a readable"),
        ("bad.nii", b"garbage", "not a readable"),
        ("bad.nrrd", b"garbage", "not a readable"),
        ("notes.txt", b"hello", "unsupported"),
        ("noext", b"hello", "unsupported"),
        ("slice.nii.gz", np.zeros((8, 8), np.int16), "3D"),
        ("vec.nii.gz", np.zeros((8, 8, 8, 3), np.int16), "3D"),
    ],
)
def test_read_header_bad(tmp_path, name, content, words):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_nifti(path, content, np.eye(4))
    with pytest.raises(BadRequest, match=words):
        read_header(str(path))


def test_truncated_gzip_rejected(tmp_path):
    noise = np.random.default_rng(0).integers(0, 99, (32, 32, 32)).astype(np.int16)  # does not compress away
    f = write_nifti(tmp_path / "ok.nii.gz", noise, np.eye(4))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadRequest, match="truncated"):
        read_header(str(f))


# ---------------------------------------------------------------------------------------------------------------
# monailabel 0.8.5 + monai 1.6.1 traps
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_image_path_key_breaks_plain_bundle_task_but_not_ours(test_bundle, phantoms, tmp_path):
    """monai 1.6.1 Spacingd calls .update() on the str ``image_path``: plain BundleInferTask fails, ours works."""
    from lib.infer import LiverSegInferTask
    from monailabel.tasks.infer.bundle import BundleInferTask

    p = phantoms["case_lps"]
    image = str(write_nifti(tmp_path / "img.nii.gz", p.image, p.affine))
    plain = BundleInferTask(str(test_bundle), {})
    with pytest.raises(AttributeError, match="'str' object has no attribute 'update'"):
        plain({"image": image, "device": "cpu"})
    ours = LiverSegInferTask(str(test_bundle), {})
    out, params = ours({"image": image, "device": "cpu"})
    assert out.endswith(".nii.gz") and "volumetry" in params
    os.remove(out)


@pytest.mark.parametrize(
    "request_in, tracking",
    [
        ({}, "None"),
        ({"tracking": "mlflow"}, "None"),  # file store: rejected by monai 1.6.1
        ({"tracking": ["mlflow", "None"]}, "None"),
        ({"tracking": "mlflow", "tracking_uri": "sqlite:///runs.db"}, "mlflow"),
        ({"tracking": "None"}, "None"),
    ],
)
def test_train_tracking_off_unless_sqlite(monkeypatch, request_in, tracking):
    from lib.train import LiverSegTrainTask
    from monailabel.tasks.train.bundle import BundleTrainTask

    seen = {}
    monkeypatch.setattr(BundleTrainTask, "__call__", lambda self, request, datastore: seen.update(request) or {})
    task = LiverSegTrainTask(str(BUNDLE), {})
    task(dict(request_in, run_id=""), datastore=None)
    assert seen["tracking"] == tracking and seen["run_id"] == "run" and seen["multi_gpu"] is False


@pytest.mark.parametrize(
    "n, val_split, n_train, n_val", [(1, 0.2, 1, 1), (2, 0.2, 1, 1), (5, 0.2, 4, 1), (10, 0.3, 7, 3)]
)
def test_train_partition_always_validates(n, val_split, n_train, n_val):
    from lib.train import LiverSegTrainTask

    task = LiverSegTrainTask(str(BUNDLE), {})
    data = [{"image": f"i{i}", "label": f"l{i}"} for i in range(n)]
    train, val = task._partition_datalist(data, {"val_split": val_split})
    assert (len(train), len(val)) == (n_train, n_val)
    if n > 1:
        assert not {d["image"] for d in train} & {d["image"] for d in val}


@pytest.mark.parametrize("max_epochs, val_interval, expected", [(2, 5, 2), (1, 5, 1), (20, 5, 5), (3, 0, 1)])
def test_train_always_saves_weights(max_epochs, val_interval, expected):
    from lib.train import LiverSegTrainTask

    task = LiverSegTrainTask(str(BUNDLE), {})
    task._request = {"val_interval": val_interval}
    out = task._update_overrides({"train#trainer#max_epochs": max_epochs})
    assert out["val_interval"] == expected
    assert out["ckpt_dir"] == os.path.join(str(BUNDLE), "models", "staging") and out["num_workers"] == 0


@pytest.mark.parametrize(
    "pretrained, exists, expected", [(True, True, "weights"), (False, True, ""), (True, False, "")]
)
def test_train_fine_tunes_through_bundle_switch(tmp_path, pretrained, exists, expected):
    """The bundle's train#handlers already hold a (disabled) CheckpointLoader, so monailabel would not add its own:
    the app sets the bundle's ``pretrained_checkpoint`` switch instead."""
    from lib.train import LiverSegTrainTask

    task = LiverSegTrainTask(str(BUNDLE), {})
    weights = tmp_path / "model.pt"
    if exists:
        weights.write_bytes(b"x")
    handlers = task.bundle_config.get("train#handlers", [])
    n_handlers = len(handlers)
    task._load_checkpoint(str(weights), pretrained, handlers)
    task._request = {}
    out = task._update_overrides({"train#trainer#max_epochs": 1})
    assert out["pretrained_checkpoint"] == (str(weights) if expected else "")
    assert len(handlers) == n_handlers  # no second loader inserted


def test_train_without_labels_is_400():
    from lib.train import LiverSegTrainTask

    class Empty:
        def datalist(self):
            return []

    with pytest.raises(BadRequest, match="no labelled image"):
        LiverSegTrainTask(str(BUNDLE), {})._fetch_datalist({}, Empty())


# ---------------------------------------------------------------------------------------------------------------
# liverseg serve
# ---------------------------------------------------------------------------------------------------------------


def _studies(tmp_path: Path, names: list[str]) -> Path:
    d = tmp_path / "Dataset009_X" / "imagesTs"
    for n in names:
        write_nifti(d / n, np.zeros((8, 8, 8), np.int16), np.eye(4))
    (d / "notes.txt").write_text("not an image")
    return d


def test_prepare_datastore_copies_once_and_keeps_labels(tmp_path):
    studies = _studies(tmp_path, ["a_0000.nii.gz", "b_0000.nii.gz"])
    dest = tmp_path / "work" / "datastore" / serve.datastore_name(studies)
    assert dest.name == "Dataset009_X_imagesTs"
    ds, added = serve.prepare_datastore(studies, dest)
    assert added == ["a", "b"] and sorted(p.name for p in ds.iterdir()) == ["a.nii.gz", "b.nii.gz"]
    # a label saved by the server, and an edited image, are left alone at the next start; new images are added
    (ds / "labels" / "final").mkdir(parents=True)
    (ds / "labels" / "final" / "a.nii.gz").write_bytes(b"label")
    (ds / "a.nii.gz").write_bytes(b"kept")
    write_nifti(studies / "c_0000.nii.gz", np.zeros((8, 8, 8), np.int16), np.eye(4))
    _, added = serve.prepare_datastore(studies, dest)
    assert added == ["c"]
    assert (ds / "a.nii.gz").read_bytes() == b"kept" and (ds / "labels" / "final" / "a.nii.gz").is_file()


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p.mkdir() or p])
def test_prepare_datastore_errors(tmp_path, make):
    with pytest.raises(LiverSegError, match="--studies"):
        serve.prepare_datastore(make(tmp_path / "s"), tmp_path / "ds")


def test_prepare_app_refreshes_code_keeps_runtime(tmp_path):
    dest = serve.prepare_app(serve.DEFAULT_APP, tmp_path)
    assert (dest / "main.py").is_file() and (dest / "lib" / "infer.py").is_file()
    (dest / "model" / "x").mkdir(parents=True)
    (dest / "lib" / "stale.py").write_text("")
    serve.prepare_app(serve.DEFAULT_APP, tmp_path)
    assert (dest / "model" / "x").is_dir() and not (dest / "lib" / "stale.py").exists()
    with pytest.raises(LiverSegError, match="main.py"):
        serve.prepare_app(tmp_path / "nothing", tmp_path / "w2")


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.register_cli(parser.add_subparsers(dest="command"))
    argv = ["serve", "--studies", str(_studies(tmp_path, ["a_0000.nii.gz"])), "--workdir", str(tmp_path / "w")]
    for k, v in kw.items():
        argv += [f"--{k}", *([v] if isinstance(v, str) else v)]
    return parser.parse_args(argv)


def test_dry_run_command_and_env(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MONAI_LABEL_TRACKING_ENABLED", raising=False)
    monkeypatch.setenv("MONAI_LABEL_AUTO_UPDATE_SCORING", "true")  # a user's own setting wins
    args = _args(tmp_path, conf=["variants", "unet"])
    cmd, env, url = serve.prepare(args)
    assert cmd[1:4] == ["-m", "monailabel.main", "start_server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8000"
    assert cmd[cmd.index("--app") + 1] == str((tmp_path / "w" / "app").resolve())
    assert str(tmp_path / "w" / "datastore") in cmd[cmd.index("--studies") + 1]
    conf = [cmd[i + 1 : i + 3] for i, c in enumerate(cmd) if c == "--conf"]
    assert ["variants", "unet"] in conf and ["bundle", str(BUNDLE.resolve())] in conf
    assert url == "http://127.0.0.1:8000/"
    assert env["MONAI_LABEL_TRACKING_ENABLED"] == "false" and env["BUNDLE_DOWNLOAD_SRC"] == "github"
    assert env["MONAI_LABEL_AUTO_UPDATE_SCORING"] == "true"
    args.dry_run = True
    assert serve._run(args) == 0 and "start_server" in capsys.readouterr().out


@pytest.mark.parametrize("kw, words", [({"port": "0"}, "--port"), ({"bundle": "/nonexistent"}, "--bundle")])
def test_prepare_errors(tmp_path, kw, words):
    with pytest.raises(LiverSegError, match=words):
        serve.prepare(_args(tmp_path, **kw))


def test_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(LiverSegError, match="cannot listen"):
            serve.check_port("127.0.0.1", s.getsockname()[1])


def test_cli_has_serve():
    from liverseg.cli import build_parser

    args = build_parser().parse_args(["serve", "--port", "8123"])
    assert args.port == 8123 and args.host == "127.0.0.1" and args.func is serve._run


def test_app_folder_has_no_runtime_files():
    """The tests and ``liverseg serve`` run the app from a copy: apps/liver never gets model/, logs/ or bin/."""
    app = serve.DEFAULT_APP
    assert not any((app / d).exists() for d in ("model", "logs", "bin")), "runtime folders inside apps/liver"


# ---------------------------------------------------------------------------------------------------------------
# DICOMweb: the query-forwarding proxy (OHIF), labels on the image grid (training, scoring)
# ---------------------------------------------------------------------------------------------------------------

DW = "http://127.0.0.1:8042/dicom-web"
DCMQI_DATA = Path(
    os.environ.get("LIVERSEG_DCMQI_DATA", Path(__file__).resolve().parents[1] / "data" / "dcmqi-ct3slice")
)


@pytest.mark.parametrize(
    "op, path, prefixes, expected",
    [
        ("qido", "studies", None, f"{DW}/studies"),
        ("wado", "studies/1.2/series/3.4/metadata", None, f"{DW}/studies/1.2/series/3.4/metadata"),
        ("wado", "studies/1/series/2/instances/3/frames/1,2", None, f"{DW}/studies/1/series/2/instances/3/frames/1,2"),
        ("qido", "studies", {"qido": "/rs/"}, f"{DW}/rs/studies"),
        ("qido", "studies/1/series/2/metadata", {"qido": "q", "wado": "w"}, f"{DW}/w/studies/1/series/2/metadata"),
        ("stow", "studies", {"stow": "stow"}, f"{DW}/stow/studies"),
        ("", "studies/1.2", {"qido": "q"}, f"{DW}/studies/1.2"),
        ("qido", "studies/a b?x=1#y", None, f"{DW}/studies/a%20b%3Fx=1%23y"),  # stays a path under the base URL
        ("qido", "studies/..%2f..%2ftools", None, f"{DW}/studies/..%252f..%252ftools"),  # decoded once already
    ],
)  # fmt: skip
def test_proxy_url(op, path, prefixes, expected):
    assert app_server.proxy_url(DW + "/", op, path, prefixes) == expected


@pytest.mark.parametrize(
    "path",
    ["..", "../instances", "studies/../../tools/execute-script", "studies/./x", "/etc/passwd", "a\\..\\b", "a\x00"],
)
def test_proxy_url_refuses_escaping_paths(path):
    with pytest.raises(BadRequest, match="invalid DICOMweb proxy path"):
        app_server.proxy_url(DW, "qido", path)


@pytest.mark.parametrize(
    "studies, op, error", [("/data/studies", "qido", NotFound), ("", "wado", NotFound), (DW, "x", BadRequest)]
)
def test_proxy_url_errors(studies, op, error):
    with pytest.raises(error):
        app_server.proxy_url(studies, op, "studies")


FRAME = bytes(range(256)) * 1000


class _Upstream(http.server.BaseHTTPRequestHandler):
    """A stand-in DICOMweb server recording what reaches it."""

    seen: list = []

    def _answer(self, status: int, body: bytes = b"", ctype: str = "application/dicom+json") -> None:
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 204:
            self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        self.seen.append(("GET", url.path))
        if url.path.endswith("/frames/1"):
            return self._answer(200, FRAME, "multipart/related; type=application/octet-stream")
        if url.path.endswith("/empty"):
            return self._answer(204)
        if url.path.endswith("/missing"):
            return self._answer(404, b'{"error": "no such study"}', "application/json")
        echo = {"path": url.path, "query": parse_qs(url.query), "accept": self.headers.get("Accept")}
        return self._answer(200, json.dumps(echo).encode())

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append(("POST", self.path))
        echo = {"path": self.path, "body": body.decode(), "content_type": self.headers.get("Content-Type")}
        return self._answer(200, json.dumps(echo).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy_client(monkeypatch):
    """monailabel's proxy routes with the app's installed in front of them, on a stand-in DICOMweb server."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from monailabel.config import settings
    from monailabel.endpoints import proxy as monailabel_proxy

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(settings, "MONAI_LABEL_STUDIES", f"http://127.0.0.1:{httpd.server_address[1]}/dicom-web")
    _Upstream.seen = []
    monkeypatch.setenv("LIVERSEG_HOST", "127.0.0.1")  # the access policy of a loopback server (lib/security.py)
    monkeypatch.setenv("LIVERSEG_PORT", "8000")
    app = FastAPI()
    app.include_router(monailabel_proxy.router)
    assert app_server.install_on(app, lambda: {}) and not app_server.install_on(app, lambda: {})
    try:
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            yield client
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_proxy_forwards_queries_headers_and_bodies(proxy_client):
    r = proxy_client.get(
        "/proxy/dicom/qido/studies?PatientID=nobody&includefield=00081030&includefield=00080020&limit=25&offset=50",
        headers={"Accept": "application/dicom+json"},
    )
    assert r.status_code == 200
    assert r.json() == {
        "path": "/dicom-web/studies",
        "query": {"PatientID": ["nobody"], "includefield": ["00081030", "00080020"], "limit": ["25"], "offset": ["50"]},
        "accept": "application/dicom+json",
    }
    r = proxy_client.get("/proxy/dicom/wado/studies/1/series/2/instances/3/frames/1")
    assert r.status_code == 200 and r.content == FRAME and r.headers["content-type"].startswith("multipart/related")
    assert proxy_client.get("/proxy/dicom/qido/studies/empty").status_code == 204
    r = proxy_client.get("/proxy/dicom/qido/studies/missing")
    assert r.status_code == 404 and r.json() == {"error": "no such study"}
    # STOW-RS (OHIF uploads through wadoRoot, as monailabel's proxy allows)
    ctype = "multipart/related; boundary=b"
    r = proxy_client.post("/proxy/dicom/wado/studies", content=b"--b\r\nDICM", headers={"Content-Type": ctype})
    assert r.json() == {"path": "/dicom-web/studies", "body": "--b\r\nDICM", "content_type": ctype}


@pytest.mark.parametrize(
    "path, status",
    [
        ("/proxy/dicom/qido/studies/%2E%2E/%2E%2E/tools", 400),  # monailabel's proxy: Orthanc's REST API /tools
        ("/proxy/dicom/wado/%2e%2e/instances", 400),  # monailabel's proxy: /instances (POST: upload, DELETE ...)
        ("/proxy/dicom/qido/studies/../../tools/x", 200),  # normalised by the client: /proxy/dicom/tools/x
    ],
)
def test_proxy_reaches_only_the_dicomweb_url(proxy_client, path, status):
    r = proxy_client.get(path)
    assert r.status_code == status
    assert all(p.startswith("/dicom-web/") for _, p in _Upstream.seen), _Upstream.seen
    if status == 400:
        assert not _Upstream.seen and "invalid DICOMweb proxy path" in r.json()["detail"]


def test_proxy_errors(proxy_client, monkeypatch):
    from monailabel.config import settings

    monkeypatch.setattr(settings, "MONAI_LABEL_STUDIES", f"http://127.0.0.1:{free_port()}/dicom-web")
    r = proxy_client.get("/proxy/dicom/qido/studies")
    assert r.status_code == 502 and "did not answer" in r.json()["detail"]
    monkeypatch.setattr(settings, "MONAI_LABEL_STUDIES", "/data/studies")
    r = proxy_client.get("/proxy/dicom/qido/studies")
    assert r.status_code == 404 and "local studies folder" in r.json()["detail"]


def _seg_template(names: list[str]) -> dict:
    code = {"CodeValue": "123037004", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Anatomical Structure"}
    attributes = [
        {"labelID": i + 1, "SegmentLabel": n, "SegmentAlgorithmType": "MANUAL",
         "SegmentedPropertyCategoryCodeSequence": code, "SegmentedPropertyTypeCodeSequence": code}
        for i, n in enumerate(names)
    ]  # fmt: skip
    return {
        "ContentCreatorName": "test", "SeriesDescription": "seg", "SeriesNumber": "300", "InstanceNumber": "1",
        "ContentLabel": "SEG", "ContentDescription": "test", "ClinicalTrialSeriesID": "1",
        "ClinicalTrialTimePointID": "1", "ClinicalTrialCoordinatingCenterName": "test", "BodyPartExamined": "",
        "segmentAttributes": [attributes],
    }  # fmt: skip


def write_seg(
    path: Path, label: np.ndarray, affine: np.ndarray, series: list[Path], names=("liver", "tumor"), shift_mm=(0, 0, 0)
) -> Path:
    """A DICOM SEG of ``label`` (on the grid ``affine``, RAS; moved by ``shift_mm``) referencing ``series``, with
    only the slices that hold segments (as dcmqi writes them)."""
    import pydicom
    import pydicom_seg
    import SimpleITK as sitk

    a = np.asarray(affine, float).copy()
    a[:3, 3] += np.asarray(shift_mm, float)
    lps = np.diag([-1.0, -1.0, 1.0]) @ a[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(label, np.uint16).transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps / spacing).ravel().tolist())
    img.SetOrigin((np.diag([-1.0, -1.0, 1.0]) @ a[:3, 3]).tolist())
    writer = pydicom_seg.MultiClassWriter(
        template=pydicom_seg.template.from_dcmqi_metainfo(_seg_template(list(names))),
        inplane_cropping=False,
        skip_empty_slices=True,
        skip_missing_segment=False,
    )
    writer.write(img, [pydicom.dcmread(f, stop_before_pixels=True) for f in series]).save_as(str(path))
    return path


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory):
    """An LPS phantom as a DICOM series, its NIfTI as monailabel converts it, and a SEG of its truth."""
    from monailabel.datastore.utils.convert import dicom_to_nifti

    from liverseg.dicom import write_dicom_series
    from liverseg.phantom import generate_phantom

    root = tmp_path_factory.mktemp("dicom-case")
    p = generate_phantom(501, shape=(32, 32, 16), orientation="LPS")
    files = write_dicom_series(root / "CT", p.image, p.affine, patient_id="UNIT-501")
    image = root / "image.nii.gz"
    os.replace(dicom_to_nifti(str(root / "CT")), image)
    seg = write_seg(root / "seg.dcm", p.label, p.affine, files)
    return p, files, image, seg


def _on_image_grid(label_file: Path, image_file: Path, truth) -> None:
    from .dicomweb import paint_on_grid

    label, image = nib.load(str(label_file)), nib.load(str(image_file))
    assert label.shape == image.shape and np.allclose(label.affine, image.affine, atol=1e-4)
    on_truth = paint_on_grid(np.asarray(label.dataobj), label.affine, truth.label.shape, truth.affine)
    np.testing.assert_array_equal(on_truth, truth.label)


def test_seg_to_label_is_on_the_image_grid(dicom_case, tmp_path):
    """A SEG holding only the slices with segments (monailabel's own conversion keeps only those) becomes a label
    on the image's grid, equal to the truth voxel for voxel in world space."""
    import SimpleITK as sitk
    from monailabel.datastore.utils.convert import dicom_to_nifti

    p, _, image, seg = dicom_case
    assert sitk.ReadImage(dicom_to_nifti(str(seg), is_seg=True)).GetSize()[2] < p.label.shape[2]  # monailabel's
    values = app_datastore.seg_to_label(str(seg), str(image), str(tmp_path / "label.nii.gz"))
    assert values == [0, 1, 2]
    _on_image_grid(tmp_path / "label.nii.gz", image, p)


def test_seg_not_on_the_grid_is_resampled(dicom_case, tmp_path):
    p, files, image, _ = dicom_case
    spacing = nib.affines.voxel_sizes(p.affine)
    shifted = write_seg(tmp_path / "shifted.dcm", p.label, p.affine, files, shift_mm=(0, 0, 0.3 * spacing[2]))
    app_datastore.seg_to_label(str(shifted), str(image), str(tmp_path / "label.nii.gz"))
    _on_image_grid(tmp_path / "label.nii.gz", image, p)  # 0.3 voxel off: nearest neighbour gives the truth back


@pytest.mark.skipif(
    not (DCMQI_DATA / "liver.dcm").is_file(), reason=f"dcmqi ct-3slice test data not found at {DCMQI_DATA}"
)
def test_seg_to_label_dcmqi_sample(tmp_path):
    """dcmqi's real SEG (segment "Liver", 1.25 mm slices 1 mm apart) on its 3-slice CT equals its NRRD label."""
    import nrrd
    from monailabel.datastore.utils.convert import dicom_to_nifti

    series = tmp_path / "CT"
    series.mkdir()
    for f in ("01.dcm", "02.dcm", "03.dcm"):
        (series / f).write_bytes((DCMQI_DATA / f).read_bytes())
    image = tmp_path / "image.nii.gz"
    os.replace(dicom_to_nifti(str(series)), image)
    assert app_datastore.seg_to_label(str(DCMQI_DATA / "liver.dcm"), str(image), str(tmp_path / "l.nii.gz")) == [0, 1]
    truth, _ = nrrd.read(str(DCMQI_DATA / "liver_seg.nrrd"))
    label = np.asarray(nib.load(str(tmp_path / "l.nii.gz")).dataobj)
    # both are in the DICOM (LPS) voxel order of the series: NIfTI i, j = columns, rows as in NRRD
    np.testing.assert_array_equal(label, truth)


@pytest.mark.parametrize(
    "names, expected",
    [
        (["liver", "tumor"], {1: 1, 2: 2}),
        (["Tumor", "Liver"], {1: 2, 2: 1}),
        (["tumor"], {1: 2}),
        ([" LIVER "], {1: 1}),
        (["Segment_1", "tumor"], {1: 1, 2: 2}),  # not all named: segment numbers
        (["liver", "tumor", "vessel"], {1: 1, 2: 2, 3: 3}),
        (["Background", "liver", "tumor"], {1: 0, 2: 1, 3: 2}),  # OHIF's, with the interactive model: nothing
    ],
)
def test_segment_values(names, expected):
    from types import SimpleNamespace

    segments = {i + 1: SimpleNamespace(SegmentLabel=n) for i, n in enumerate(names)}
    assert app_datastore.segment_values(segments) == expected


def test_bad_segs_are_refused(dicom_case, tmp_path):
    p, files, image, _ = dicom_case
    shifted_values = p.label + (p.label > 0)  # 0, 2, 3
    cases = [
        (files[0], "could not be read"),  # a CT slice, not a SEG
        (write_seg(tmp_path / "3.dcm", shifted_values, p.affine, files, names=("a", "b", "c")), r"values \[3\]"),
        (write_seg(tmp_path / "far.dcm", p.label, p.affine, files, shift_mm=(0, 0, 1000.0)), "does not overlap"),
    ]  # fmt: skip
    for seg, words in cases:
        with pytest.raises(BadRequest, match=words):
            app_datastore.seg_to_label(str(seg), str(image), str(tmp_path / "out.nii.gz"))
        assert not (tmp_path / "out.nii.gz").exists()


@pytest.mark.parametrize(
    "values, client, expected",
    [
        ([0, 1, 2], None, [{"name": "liver"}, {"name": "tumor"}]),
        ([0, 2], [{"name": "liver", "color": [1, 2, 3]}, {"name": "tumor", "description": "t"}],
         [{"name": "tumor", "description": "t"}]),
        ([1], [{"name": "Liver", "model_name": "m"}], [{"name": "liver", "model_name": "m"}]),
        ([0, 2], [{"name": "x", "model_name": "m", "segmentAttribute": {"labelID": 1}}],
         [{"name": "tumor", "model_name": "m"}]),
        ([0], [{"name": "liver"}], []),
    ],
)  # fmt: skip
def test_seg_label_info(values, client, expected):
    assert app_datastore.seg_label_info(values, client) == expected


def test_label_to_image_grid(dicom_case, tmp_path):
    """A label on another grid (RAS arrays for an LPS image) lands on the image grid in world space; bad ones raise."""
    from liverseg.imageio import write_nifti as write

    p, _, image, _ = dicom_case
    ras = nib.as_closest_canonical(nib.Nifti1Image(p.label.astype(np.uint8), p.affine))
    write(tmp_path / "ras.nii.gz", np.asarray(ras.dataobj), ras.affine)
    values = app_datastore.label_to_image_grid(str(tmp_path / "ras.nii.gz"), str(image), str(tmp_path / "o.nii.gz"))
    assert values == [0, 1, 2]
    _on_image_grid(tmp_path / "o.nii.gz", image, p)
    far = p.affine.copy()
    far[:3, 3] += 5000
    write(tmp_path / "far.nii.gz", p.label.astype(np.uint8), far)
    write(tmp_path / "five.nii.gz", (p.label > 0).astype(np.uint8) * 5, p.affine)
    for name, words in (("far.nii.gz", "does not overlap"), ("five.nii.gz", r"label values \[5\]")):
        with pytest.raises(BadRequest, match=words):
            app_datastore.label_to_image_grid(str(tmp_path / name), str(image), str(tmp_path / "x.nii.gz"))


def _series_json(uid: str, study: str, modality: str) -> dict:
    return {"0020000E": {"vr": "UI", "Value": [uid]}, "0020000D": {"vr": "UI", "Value": [study]},
            "00080060": {"vr": "CS", "Value": [modality]}}  # fmt: skip


class _StubDICOMweb:
    """The DICOMwebClient calls the datastore makes, answered from files (one CT series, optionally one SEG)."""

    def __init__(self, base_url: str, ct: list[Path], seg: Path | None):
        import pydicom

        self.base_url = base_url
        first = pydicom.dcmread(ct[0], stop_before_pixels=True)
        self.study, self.ct_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
        self.files = {self.ct_uid: ct}
        self.series = [_series_json(self.ct_uid, self.study, "CT")]
        if seg is not None:
            self.seg_uid = str(pydicom.dcmread(seg, stop_before_pixels=True).SeriesInstanceUID)
            self.files[self.seg_uid] = [seg]
            self.series.append(_series_json(self.seg_uid, self.study, "SEG"))
        self.stored: list = []

    def search_for_series(self, search_filters=None, **kwargs):
        f = search_filters or {}
        keep = {"Modality": "00080060", "SeriesInstanceUID": "0020000E"}
        return [s for s in self.series if all(s[keep[k]]["Value"] == [v] for k, v in f.items())]

    def retrieve_series(self, study, series, **kwargs):
        import pydicom

        return [pydicom.dcmread(f) for f in self.files[series]]

    def retrieve_series_metadata(self, study, series, **kwargs):
        return [{"00081115": {"vr": "SQ", "Value": [{"0020000E": {"vr": "UI", "Value": [self.ct_uid]}}]}}]

    def store_instances(self, datasets, **kwargs):
        self.stored.append(datasets)
        raise AssertionError("no upload expected in this test")


def _dicomweb_datastore(tmp_path: Path, client: _StubDICOMweb):
    return app_datastore.LiverDICOMwebDatastore(
        client=client, search_filter={"Modality": "CT"}, cache_path=str(tmp_path / "cache")
    )


def test_dicomweb_store_labels_on_the_image_grid(dicom_case, tmp_path, monkeypatch):
    """A fresh cache: scoring's lookup and training's data list both get the store's SEG as a label on the image grid
    (converted once), as the label downloads do."""
    p, files, _, seg = dicom_case
    client = _StubDICOMweb("http://stub-1/dicom-web", files, seg)
    ds = _dicomweb_datastore(tmp_path, client)
    converted = []
    real = app_datastore.seg_to_label
    monkeypatch.setattr(app_datastore, "seg_to_label", lambda *a: converted.append(a) or real(*a))
    assert ds.get_label_by_image_id(client.ct_uid, "final") == client.ct_uid  # not cached yet: found in the store
    label = ds.get_label_uri(client.ct_uid, "final")
    image = ds.get_image_uri(client.ct_uid)
    assert Path(label).is_relative_to(tmp_path / "cache") and label.endswith(".nii.gz")
    _on_image_grid(Path(label), Path(image), p)
    train = ds.datalist()
    assert train == [{"image": image, "label": label}] and len(converted) == 1
    assert ds.get_label_info(client.ct_uid, "final")["SeriesInstanceUID"] == client.seg_uid
    assert not client.stored


def test_dicomweb_save_label_checks(dicom_case, tmp_path):
    from liverseg.imageio import write_nifti as write

    p, files, _, _ = dicom_case
    client = _StubDICOMweb("http://stub-2/dicom-web", files, None)
    ds = _dicomweb_datastore(tmp_path, client)
    image = ds.get_image_uri(client.ct_uid)
    ras = nib.as_closest_canonical(nib.Nifti1Image(p.label.astype(np.uint8), p.affine))
    write(tmp_path / "ras.nii.gz", np.asarray(ras.dataobj), ras.affine)
    write(tmp_path / "bad.nii.gz", (p.label > 0).astype(np.uint8) * 3, p.affine)
    write(tmp_path / "small.nii.gz", p.label[:-1].astype(np.uint8), p.affine)
    write(tmp_path / "empty.nii.gz", np.zeros_like(p.label, np.uint8), p.affine)
    cases = [
        ((client.ct_uid, tmp_path / "bad.nii.gz", "final"), BadRequest, "valid values"),
        ((client.ct_uid, tmp_path / "small.nii.gz", "final"), BadRequest, "shape"),
        ((client.ct_uid, tmp_path / "empty.nii.gz", "final"), BadRequest, "empty"),
        (("../x", tmp_path / "ras.nii.gz", "final"), BadRequest, "invalid image id"),
        ((client.ct_uid, tmp_path / "ras.nii.gz", "a/b"), BadRequest, "invalid label tag"),
        (("1.2.3.999", tmp_path / "ras.nii.gz", "final"), NotFound, "not in the DICOMweb store"),
    ]
    for (image_id, label, tag), error, words in cases:
        with pytest.raises(error, match=words):
            ds.save_label(image_id, str(label), tag, {})
    assert not client.stored
    # a label of another tag on another grid (RAS arrays) is stored locally, on the image grid
    ds.save_label(client.ct_uid, str(tmp_path / "ras.nii.gz"), "original", {})
    _on_image_grid(Path(ds.get_label_uri(client.ct_uid, "original")), Path(image), p)
