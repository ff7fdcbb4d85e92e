"""The liver app on a DICOMweb store (Orthanc) and in OHIF, the way radiologists use it.

A real Orthanc (own configuration, loopback clients only, DICOMweb plugin) holds a phantom CT series; the server is
started with ``liverseg serve --studies http://127.0.0.1:<port>/dicom-web`` and driven through
``monailabel.client.MONAILabelClient``, plain HTTP, and the OHIF viewer that the monailabel wheel serves at ``/ohif/``
in a headless Chromium (playwright). Geometry is checked in world space against the phantom's truth.

Tests run in file order on one server: the label is saved last (it adds a SEG series to the study).
Without Orthanc or Chromium the tests that need them skip, naming the missing package and its install command.
Set ``LIVERSEG_OHIF_SCREENSHOT=<file.png>`` to keep the screenshot of the MONAI Label panel's segmentation.
"""

from __future__ import annotations

import argparse
import http.server
import io
import json
import os
import shutil
import sysconfig
import threading
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests
from monailabel.client import MONAILabelClient

from liverseg import LABELS, serve
from liverseg.errors import LiverSegError
from liverseg.imageio import write_nifti
from liverseg.phantom import generate_phantom
from tests.apps.conftest import PHANTOM_SHAPE, Server, free_port
from tests.apps.dicomweb import (
    CHROMIUM_FLAGS,
    Orthanc,
    centroid_mm,
    chromium_binary,
    dice,
    missing_browser,
    missing_orthanc,
    paint_on_grid,
    read_label,
    seg_to_labelmap,
    write_study,
)
from tests.conftest import resample_to

pytestmark = pytest.mark.slow

# As in test_server.py: the test model reaches a liver Dice of ~0.9 on held-out phantoms; a flipped or shifted mask
# scores far below 0.75. 10 mm is ~1.5 voxels at ~6 mm; a left-right flip moves the liver centroid by ~100 mm.
DICE_BAR = 0.75
CENTROID_TOL_MM = 10.0
SEED, ORIENTATION = 501, "LPS"  # held out from the test model's training seeds; LPS arrays give standard DICOM axes
PATIENT_NAME, PATIENT_ID = "Phantom^Liver", "LIVERSEG-501"
STUDY_DESCRIPTION = "Liver phantom CT (liverseg)"
SEG_LABEL_INFO = [{"name": "liver", "description": "liver incl. tumors"}, {"name": "tumor", "description": "tumor"}]
SEG_LABELS = {"liver": LABELS["liver"], "tumor": LABELS["tumor"]}


# ---------------------------------------------------------------------------------------------------------------
# liverseg serve with a DICOMweb URL (no Orthanc needed)
# ---------------------------------------------------------------------------------------------------------------


def _serve_args(tmp_path: Path, studies: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.register_cli(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", "--studies", studies, "--workdir", str(tmp_path / "w")])


def test_serve_dicomweb_dry_run(tmp_path, monkeypatch):
    """The URL is passed on (trailing slash dropped), nothing is copied, the DICOMweb cache lives in the workdir
    and this environment's scripts (dcmqi's itkimage2segimage) come first on PATH, also when not activated."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("MONAI_LABEL_DICOMWEB_CACHE_PATH", raising=False)
    cmd, env, _ = serve.prepare(_serve_args(tmp_path, "http://127.0.0.1:8042/dicom-web/"))
    assert cmd[cmd.index("--studies") + 1] == "http://127.0.0.1:8042/dicom-web"
    assert not (tmp_path / "w" / "datastore").exists()
    assert env["MONAI_LABEL_DICOMWEB_CACHE_PATH"] == str((tmp_path / "w" / "dicomweb").resolve())
    assert env["PATH"].split(os.pathsep)[0] == sysconfig.get_path("scripts")
    assert shutil.which(serve.DCMQI_TOOL, path=env["PATH"])
    assert int(env["MONAI_LABEL_DICOMWEB_CACHE_EXPIRY"]) <= 60


@pytest.mark.parametrize("url", ["http://", "http:///dicom-web", "https://host/dicom-web?x=1", "http://h/dw#frag"])
def test_bad_dicomweb_urls(url):
    with pytest.raises(LiverSegError, match="not a DICOMweb base URL"):
        serve.check_dicomweb_url(url)


def test_dicomweb_needs_dcmqi(tmp_path, monkeypatch):
    monkeypatch.setattr(serve.shutil, "which", lambda *a, **k: None)
    with pytest.raises(LiverSegError, match="pip install dcmqi"):
        serve.prepare(_serve_args(tmp_path, "http://127.0.0.1:8042/dicom-web"))


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_dicomweb_server_checks():
    with pytest.raises(LiverSegError, match="cannot reach the DICOMweb server"):
        serve.check_dicomweb_server(f"http://127.0.0.1:{free_port()}/dicom-web", timeout=5)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(LiverSegError, match="HTTP 404, not a DICOMweb"):
            serve.check_dicomweb_server(f"http://127.0.0.1:{httpd.server_address[1]}/wrong", timeout=5)
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------------------------------------------------------
# Orthanc + MONAI Label server
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    reason = missing_orthanc()
    if reason:
        pytest.skip(reason)
    o = Orthanc(tmp_path_factory.mktemp("orthanc"), free_port()).start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def study(orthanc, tmp_path_factory):
    """The phantom CT as a DICOM series in Orthanc, with its truth."""
    p = generate_phantom(SEED, shape=PHANTOM_SHAPE, orientation=ORIENTATION)
    files, header = write_study(
        tmp_path_factory.mktemp("dicom") / "CT",
        p.image,
        p.affine,
        patient_name=PATIENT_NAME,
        patient_id=PATIENT_ID,
        study_description=STUDY_DESCRIPTION,
        series_description="phantom CT",
    )
    orthanc.upload(files)
    return SimpleNamespace(
        phantom=p, study_uid=str(header.StudyInstanceUID), series_uid=str(header.SeriesInstanceUID), n=len(files)
    )


@pytest.fixture(scope="module")
def dw_server(orthanc, study, tmp_path_factory, test_bundle):
    srv = Server(orthanc.dicomweb_url, tmp_path_factory.mktemp("serve-dicomweb"), test_bundle).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(dw_server):
    return MONAILabelClient(dw_server.url, tmpdir=str(dw_server.workdir / "client"))


def _check_world_space(mask: np.ndarray, affine: np.ndarray, truth) -> tuple[float, float]:
    """Dice and centroid offset (mm) of ``mask`` vs. the truth liver (incl. tumors), compared on the truth grid."""
    on_truth = resample_to(mask, affine, truth.affine, truth.label.shape)
    d = dice(on_truth > 0, truth.label > 0)
    offset = float(np.linalg.norm(centroid_mm(on_truth > 0, truth.affine) - centroid_mm(truth.label > 0, truth.affine)))
    assert d > DICE_BAR and offset < CENTROID_TOL_MM, (d, offset)
    return d, offset


def test_orthanc_holds_the_series(orthanc, study):
    series = {s["MainDicomTags"]["SeriesInstanceUID"]: s for s in orthanc.series()}
    assert len(series[study.series_uid]["Instances"]) == study.n == PHANTOM_SHAPE[2]


def test_datastore_lists_the_series(dw_server, client, study):
    assert requests.get(f"{dw_server.url}/datastore/").json()["total"] == 1
    assert client.info()["datastore"]["total"] == 1
    sample = client.next_sample("first", {})
    assert sample["id"] == study.series_uid
    assert sample["StudyInstanceUID"] == study.study_uid and sample["PatientID"] == PATIENT_ID
    # the series was fetched into the workdir's DICOMweb cache, not the user's home
    assert any((dw_server.workdir / "dicomweb").rglob(f"{study.series_uid}.nii.gz"))


def test_infer_on_dicomweb_series_in_world_space(client, study):
    label_file, params = client.infer("liver_ct_seg", study.series_uid, {})
    img = nib.load(label_file)
    mask = np.asarray(img.dataobj)
    assert mask.shape == study.phantom.label.shape and set(np.unique(mask)) <= {0, 1, 2}
    d, offset = _check_world_space(mask, img.affine, study.phantom)
    print(f"DICOMweb infer (NIfTI): liver Dice {d:.3f}, centroid offset {offset:.1f} mm")
    assert params["volumetry"]["liver_volume_ml"] == pytest.approx(study.phantom.info["liver_volume_ml"], rel=0.3)


def test_infer_returns_dicom_seg(dw_server, study):
    """``output=dicom_seg``: a DICOM SEG referencing the series, whose frames overlay the truth in patient space."""
    url = f"{dw_server.url}/infer/liver_ct_seg?image={study.series_uid}&output=dicom_seg"
    r = requests.post(url, data={"params": json.dumps({"label_info": SEG_LABEL_INFO})}, timeout=120)
    assert r.status_code == 200, r.text[:2000]
    seg = pydicom.dcmread(io.BytesIO(r.content))
    assert seg.Modality == "SEG" and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid
    assert seg.StudyInstanceUID == study.study_uid
    p = study.phantom
    d, offset = _check_world_space(seg_to_labelmap(seg, p.label.shape, p.affine, SEG_LABELS), p.affine, p)
    print(f"DICOMweb infer (DICOM SEG): liver Dice {d:.3f}, centroid offset {offset:.1f} mm")


def test_dicomweb_proxy_for_ohif(dw_server, study):
    """OHIF reads the store through the server's proxy (``/proxy/dicom/{qido,wado}``, app-config.js of the wheel)."""
    studies = requests.get(f"{dw_server.url}/proxy/dicom/qido/studies", timeout=30).json()
    found = [s for s in studies if s["0020000D"]["Value"] == [study.study_uid]]
    assert len(found) == 1 and found[0]["00100020"]["Value"] == [PATIENT_ID]
    meta = requests.get(
        f"{dw_server.url}/proxy/dicom/wado/studies/{study.study_uid}/series/{study.series_uid}/metadata", timeout=30
    ).json()
    assert len(meta) == study.n


def test_dicomweb_proxy_forwards_queries(dw_server, orthanc, study):
    """OHIF's search filters and ``includefield`` reach Orthanc through the proxy (monailabel 0.8.5's own proxy drops
    the query string; the app's, in lib/server.py, is routed before it)."""
    direct = requests.get(f"{orthanc.dicomweb_url}/studies?PatientID=nobody", timeout=30)
    assert direct.status_code == 204 or direct.json() == []  # what the proxy should pass on
    r = requests.get(f"{dw_server.url}/proxy/dicom/qido/studies?PatientID=nobody", timeout=30)
    assert r.status_code == 204 or r.json() == [], "the search filter was not forwarded"
    r = requests.get(f"{dw_server.url}/proxy/dicom/qido/studies?includefield=00081030", timeout=30)
    assert r.json()[0].get("00081030", {}).get("Value") == [STUDY_DESCRIPTION], "includefield was not forwarded"


# ---------------------------------------------------------------------------------------------------------------
# OHIF in a headless Chromium
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=chromium_binary(), headless=True, args=CHROMIUM_FLAGS)
    yield b
    b.close()
    pw.stop()


class _Page:
    """A fresh browser context on the server: requests leave loopback never (OHIF asks for Google fonts), failed
    proxy responses and uncaught page errors are recorded."""

    def __init__(self, browser, server: Server):
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        # the MONAI Label panel's server address (default: port 8000 of the page's host)
        self.context.add_cookies(
            [{"name": "MONAILABEL_SERVER_URL", "value": quote(server.url + "/", safe="/"), "url": server.url + "/"}]
        )
        self.context.route(
            "**/*", lambda route: route.continue_() if route.request.url.startswith(server.url) else route.abort()
        )
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.bad_proxy: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("response", self._on_response)

    def _on_response(self, r) -> None:
        if "/proxy/" in r.url and r.status >= 400:
            self.bad_proxy.append(f"{r.status} {r.url}")

    def viewport_pixels(self) -> np.ndarray:
        """RGB pixels of the first viewport (the axial view), as floats in [0, 1]."""
        png = self.page.locator(".viewport-wrapper, [data-viewport-uid], canvas").first.screenshot()
        return mpimg.imread(io.BytesIO(png), format="png")[..., :3]

    def dismiss_banner(self) -> None:
        button = self.page.get_by_text("Confirm and Hide")
        if button.count():
            button.first.click()

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser, dw_server):
    p = _Page(browser, dw_server)
    yield p
    p.close()


def test_ohif_study_list_shows_the_study(page, dw_server, study, tmp_path):
    page.page.goto(f"{dw_server.url}/ohif/", wait_until="domcontentloaded")
    page.page.get_by_text(PATIENT_ID).first.wait_for(timeout=60_000)
    body = page.page.inner_text("body")
    assert "Study List" in body and PATIENT_ID in body and "Phantom, Liver" in body
    page.page.screenshot(path=str(tmp_path / "ohif-study-list.png"))
    assert (tmp_path / "ohif-study-list.png").stat().st_size > 10_000
    assert not page.errors and not page.bad_proxy, (page.errors, page.bad_proxy)


def test_ohif_viewer_renders_the_series(page, dw_server, study, tmp_path):
    page.page.goto(f"{dw_server.url}/ohif/viewer?StudyInstanceUIDs={study.study_uid}", wait_until="domcontentloaded")
    page.page.locator("canvas").first.wait_for(timeout=60_000)
    page.page.get_by_text("phantom CT").first.wait_for(timeout=60_000)  # the series thumbnail / overlay
    page.dismiss_banner()
    page.page.wait_for_function(
        "() => [...document.querySelectorAll('canvas')].some(c => c.width > 100 && c.height > 100)", timeout=30_000
    )
    page.page.wait_for_timeout(2000)  # frames arrive through the proxy, then render
    pixels = page.viewport_pixels()
    page.page.screenshot(path=str(tmp_path / "ohif-viewer.png"))
    assert pixels.std() > 0.05, "the viewport is blank: the CT was not rendered"
    assert not page.errors and not page.bad_proxy, (page.errors, page.bad_proxy)


def test_ohif_monai_label_panel_runs_auto_segmentation(page, dw_server, study, tmp_path):
    """OHIF's MONAI Label mode: connect the panel to our server, run Auto-Segmentation, see the liver overlay."""
    labels = requests.get(f"{dw_server.url}/info/").json()["labels"]
    assert isinstance(labels, list), f"/info/ labels {labels!r}: the OHIF panel fails on a dict"
    page.page.goto(
        f"{dw_server.url}/ohif/monai-label?StudyInstanceUIDs={study.study_uid}", wait_until="domcontentloaded"
    )
    page.page.locator("canvas").first.wait_for(timeout=60_000)
    page.dismiss_banner()
    page.page.locator(".monaiLabelPanel button.actionButton").first.click()  # connect (the cookie's URL)
    run = page.page.locator("button[title='Run Segmentation']")
    run.wait_for(timeout=20_000)
    page.page.wait_for_timeout(2000)
    before = page.viewport_pixels()
    with page.page.expect_response(lambda r: "/infer/liver_ct_seg" in r.url, timeout=120_000) as info:
        run.click()
    assert info.value.status == 200 and study.series_uid in info.value.url
    page.page.wait_for_timeout(3000)
    after = page.viewport_pixels()

    def reddish(px: np.ndarray) -> int:  # the liver overlay (rgb 221, 130, 101) on a grey CT
        return int(((px[..., 0] - px[..., 2]) > 0.15).sum())

    assert reddish(before) < 50 and reddish(after) > 500, (reddish(before), reddish(after))
    shot = tmp_path / "ohif-monai-label.png"
    page.page.screenshot(path=str(shot))
    if os.environ.get("LIVERSEG_OHIF_SCREENSHOT"):
        shutil.copy2(shot, os.environ["LIVERSEG_OHIF_SCREENSHOT"])
    assert not page.errors and not page.bad_proxy, (page.errors, page.bad_proxy)


# ---------------------------------------------------------------------------------------------------------------
# labels: stored in Orthanc as DICOM SEG, and read back by a fresh server
# ---------------------------------------------------------------------------------------------------------------


def test_save_label_stores_a_seg_in_orthanc(client, orthanc, study, tmp_path):
    p = study.phantom
    f = write_nifti(tmp_path / "label.nii.gz", p.label.astype(np.uint8), p.affine)
    res = client.save_label(study.series_uid, str(f), tag="final", params={"label_info": SEG_LABEL_INFO})
    assert res["image"] == study.series_uid
    segs = [s for s in orthanc.series() if s["MainDicomTags"].get("Modality") == "SEG"]
    assert len(segs) == 1 and len(segs[0]["Instances"]) == 1
    seg = orthanc.instance_file(segs[0]["Instances"][0])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid
    assert {s.SegmentLabel for s in seg.SegmentSequence} == {"liver", "tumor"}
    np.testing.assert_array_equal(seg_to_labelmap(seg, p.label.shape, p.affine, SEG_LABELS), p.label)


@pytest.fixture(scope="module")
def fresh_server(orthanc, study, dw_server, tmp_path_factory, test_bundle):
    """A second server on the same Orthanc with an empty DICOMweb cache (the first one is stopped)."""
    dw_server.stop()
    srv = Server(orthanc.dicomweb_url, tmp_path_factory.mktemp("serve-fresh"), test_bundle).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def train_items(fresh_server):
    """The datastore's training list (``GET /datastore/?output=train``): what ``POST /train`` reads."""
    return requests.get(f"{fresh_server.url}/datastore/?output=train", timeout=120).json()


def test_label_survives_in_orthanc_for_a_fresh_server(fresh_server, train_items, study):
    """A fresh server finds the saved label in Orthanc; training's data list has it, equal to the truth in world
    space."""
    status = requests.get(f"{fresh_server.url}/datastore/").json()
    assert status["total"] == 1 and status["completed"] == 1
    assert len(train_items) == 1 and study.series_uid in train_items[0]["image"]
    label_path = Path(train_items[0]["label"]).resolve()
    assert label_path.is_relative_to((fresh_server.workdir / "dicomweb").resolve())  # fetched from Orthanc
    label, affine = read_label(label_path)
    p = study.phantom
    np.testing.assert_array_equal(paint_on_grid(label, affine, p.label.shape, p.affine), p.label)


def test_training_label_is_on_the_image_grid(train_items):
    """Training reads the SEG as a label on its image's grid (monailabel 0.8.5 converts it to a volume covering only
    the slices with segments, 64x64x27 here, which training shifted by ~14 mm; lib/datastore.py fixes it)."""
    image = nib.load(train_items[0]["image"])
    label, affine = read_label(Path(train_items[0]["label"]))
    assert label.shape == image.shape, (label.shape, image.shape)
    np.testing.assert_allclose(affine, image.affine, atol=1e-3)
