"""OHIF in a browser against ``liverseg serve --pacs`` (what ``make serve-pacs`` runs): the annotator's round trip.

The server is started as ``make serve-pacs`` starts it (``python -m liverseg.serve --pacs``: its own Orthanc with the
sample DICOM study, the app on Orthanc's DICOMweb URL), on the small test bundle. A headless Chromium (playwright,
the system's chromium) then opens the study in OHIF's MONAI Label mode, runs auto-segmentation from the MONAI Label
panel, saves with "Export DICOM SEG" (the save path ``apps/liver/lib/ohif.py`` wires), and the test finds the new
SEG in Orthanc by QIDO-RS, checks its segments are coded liver / tumor (SNOMED CT, re-coded by the app's proxy from
OHIF's "Tissue"), and checks that the datastore's training list (what a training run reads) now has it as the study's
final label, equal to the model's output in world space. The same round trip on series in the usual orientation
(ImageOrientationPatient 1,0,0,0,1,0), numbered either way, must save the model's output in world space too. Last,
stopping the server stops Orthanc and the app: nothing is left running.

Screenshots of each step on the sample study (1-study, 2-auto-segmentation, 3-export-menu, 4-save-dialog, 5-saved)
go to ``$LIVERSEG_OHIF_SHOTS`` (default: the test's tmp dir); the README's walkthrough pictures
(``docs/pictures/ohif/``) were taken this way. Skips, naming what to install, without Orthanc, its DICOMweb
plugin, Chromium or playwright.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import time
from pathlib import Path
from urllib.parse import quote

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests
from monailabel.client import MONAILabelClient

from liverseg import LABELS, pacs
from liverseg.cli import main as cli_main
from liverseg.phantom import generate_phantom
from tests import procs
from tests.apps.conftest import PHANTOM_SHAPE, Server, free_port, interactive_source
from tests.apps.dicomweb import (
    CHROMIUM_FLAGS,
    centroid_mm,
    chromium_binary,
    dice,
    missing_browser,
    missing_orthanc,
    seg_to_labelmap,
    write_study,
)

pytestmark = pytest.mark.slow

SEG_NAME = "liver (corrected in OHIF)"
SCT = "SCT"
LIVER, NEOPLASM = "10200004", "108369006"  # SNOMED CT: Liver; Neoplasm (the tumor segment, anatomic region liver)
RESULT: dict = {}  # what the round trip saved and the model's output, for the world-space check
PAGE_TIMEOUT_MS = 120_000  # polled waits: a loaded machine takes longer, an idle one does not wait
RENDER_TIMEOUT_S = 120.0  # a viewport polled until it shows what is awaited
STANDARD_SEED = 501  # the phantom of the standard-orientation series (the apps tests' "case_lps" anatomy)
SEGMENT_LABELS = {"background": 0, "liver": LABELS["liver"], "tumor": LABELS["tumor"]}  # OHIF's segment names
CLICK_SEED = 502  # the phantom of the click test's study


def _ct_series_uid() -> str:
    first = sorted(p for p in pacs.SAMPLE_DICOM.iterdir() if p.is_file())[0]
    return str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)


def _processes_mentioning(text: str) -> list[int]:
    """Ids of this machine's processes whose command line mentions ``text`` (a path only our processes use)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def test_serve_pacs_without_orthanc_says_what_to_install(monkeypatch, capsys):
    """No Orthanc: one line naming the apt packages and `make serve` (NIfTI-folder mode); nothing started."""
    monkeypatch.setenv("LIVERSEG_ORTHANC", "/nonexistent/Orthanc")
    assert cli_main(["serve", "--pacs", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "apt-get install orthanc orthanc-dicomweb" in err and "make serve" in err and "NIfTI" in err


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = Path(os.environ.get("LIVERSEG_OHIF_SHOTS") or tmp_path_factory.mktemp("ohif-shots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def pacs_server(tmp_path_factory, test_bundle):
    """``liverseg serve --pacs`` on free ports, with the test bundle; stopped (whole process group) at the end."""
    for reason in (missing_orthanc(), missing_browser()):
        if reason:
            pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("serve-pacs")
    # the test bundle with interactive weights (widened from its automatic ones), so that OHIF offers point prompts
    bundle = interactive_source(test_bundle, workdir / "bundle")
    srv = Server(workdir / "unused-with-pacs", workdir, bundle)
    srv.pacs_port = free_port()
    srv.dicomweb = f"http://127.0.0.1:{srv.pacs_port}/dicom-web"
    srv.args = ["--pacs", "--pacs-port", str(srv.pacs_port)]
    srv.start()
    yield srv
    srv.stop()
    for pid in _processes_mentioning(str(workdir)):  # a leftover of a failed test: ours (its path is our tmp dir)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def browser(pacs_server):
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=chromium_binary(), headless=True, args=CHROMIUM_FLAGS)
    yield b
    b.close()
    pw.stop()


def _ohif_url(srv: Server) -> str:
    """The MONAI Label mode address that ``serve --pacs`` prints once the server answers."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"OHIF with MONAI Label: (\S+)", srv.log.read_text(errors="replace"))
        if found:
            return found.group(1)
        time.sleep(0.5)
    raise AssertionError(f"serve --pacs printed no OHIF address:\n{srv.log.read_text()[-3000:]}")


def _viewport(page) -> np.ndarray:
    """RGB pixels of the first (axial) viewport, floats in [0, 1]."""
    png = page.locator("[data-cy=viewport-pane]").first.screenshot()
    return mpimg.imread(io.BytesIO(png), format="png")[..., :3]


def _overlay_pixels(px: np.ndarray) -> int:
    """Pixels of the liver overlay (OHIF's reddish segment colour) on the grey CT."""
    return int(((px[..., 0] - px[..., 2]) > 0.15).sum())


def _wait_for_viewport(page, done, what: str, timeout_s: float = RENDER_TIMEOUT_S) -> np.ndarray:
    """The axial viewport's pixels once ``done(pixels)`` holds, polled (a loaded machine renders late); fails with
    ``what`` and the last reading after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        px = _viewport(page)
        if done(px):
            return px
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:.0f} s (std {px.std():.3f}, overlay {_overlay_pixels(px)})")
        page.wait_for_timeout(500)


def _click_until_requested(page, button, matches, tries: int = 6, wait_ms: int = 10_000):
    """Click ``button`` until the page sends a request that ``matches`` (a panel still loading its server's model list
    swallows the click), at most ``tries`` times ``wait_ms`` apart; the request."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(tries - 1):
        try:
            with page.expect_request(matches, timeout=wait_ms) as request:
                button.click()
            return request.value
        except PlaywrightTimeout:
            continue
    with page.expect_request(matches, timeout=wait_ms) as request:
        button.click()
    return request.value


def _segmentation_menu(page):
    """The "..." menu button of the segmentation (left of the segmentation selector in the Segmentation panel)."""
    selector = page.get_by_text("Segmentations", exact=True).last.bounding_box()
    return selector["x"] - 24, selector["y"] + selector["height"] / 2


def _auto_segment_and_save(
    srv: Server, browser, study_uid: str, ct_uid: str, shots: Path | None, click: dict | None = None
) -> None:
    """In OHIF's MONAI Label mode on ``study_uid``: auto-segmentation from the MONAI Label panel (the overlay appears),
    then Segmentation panel -> "..." -> Export & Download -> Export DICOM SEG -> name -> Save (STOW through the app's
    proxy, "saved" notification). Screenshots of the steps go to ``shots`` (none when None).

    ``click``: a dict to fill: between the two, one liver click of the interactive model (:func:`_liver_click`); the
    dict gets the request's parameters and the overlay's pixel counts."""

    def shot(name: str) -> None:
        if shots is not None:
            page.screenshot(path=str(shots / name))

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    # the MONAI Label panel's server (its default is port 8000 of the page's host); nothing leaves loopback
    context.add_cookies(
        [{"name": "MONAILABEL_SERVER_URL", "value": quote(srv.url + "/", safe="/"), "url": srv.url + "/"}]
    )
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(srv.url) else route.abort())
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        # 1. the study opens in OHIF's MONAI Label mode
        page.goto(f"{srv.url}/ohif/monai-label?StudyInstanceUIDs={study_uid}", wait_until="domcontentloaded")
        page.locator("canvas").first.wait_for()
        hide = page.get_by_text("Confirm and Hide")
        if hide.count():
            hide.first.click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('canvas')].some(c => c.width > 100 && c.height > 100)"
        )
        # frames arrive through the app's proxy, then render
        before = _wait_for_viewport(page, lambda px: px.std() > 0.05, "the viewport stayed blank: no CT rendered")
        assert _overlay_pixels(before) < 50, _overlay_pixels(before)
        shot("1-study.png")

        # 2. auto-segmentation from the MONAI Label panel: the liver overlay appears
        page.locator(".monaiLabelPanel button.actionButton").first.click()  # connect to the cookie's server
        run = page.locator("button[title='Run Segmentation']")
        run.wait_for()
        infer = _click_until_requested(page, run, lambda r: "/infer/liver_ct_seg" in r.url).response()
        assert infer is not None and infer.status == 200 and ct_uid in infer.url
        page.get_by_text("Running Segmentation - Successful").first.wait_for()
        after = _wait_for_viewport(page, lambda px: _overlay_pixels(px) > 300, "no liver overlay appeared")
        if click is not None:
            click["auto"] = after
        shot("2-auto-segmentation.png")
        if click is not None:
            _liver_click(page, before, click, shot)

        # 3. save: Segmentation panel -> "..." -> Export & Download -> Export DICOM SEG -> name -> Save
        page.locator("[data-cy=panelSegmentation-btn]").click()
        rows = page.locator("[data-cy=data-row]")
        rows.first.wait_for()
        # the interactive model's labels name background (3D Slicer's background points): OHIF makes it a segment
        assert [" ".join(t.split()) for t in rows.all_inner_texts()] == ["1 background", "2 liver", "3 tumor"]
        page.mouse.click(*_segmentation_menu(page))
        page.get_by_text("Export & Download").hover()
        export = page.get_by_text("Export DICOM SEG")
        export.wait_for()
        shot("3-export-menu.png")
        export.click()
        name = page.locator("input[type=text]:visible").last
        name.fill(SEG_NAME)
        shot("4-save-dialog.png")
        with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/studies")) as stow:
            page.get_by_role("button", name="Save").last.click()
        assert stow.value.status == 200 and "/proxy/dicom/" in stow.value.url
        page.get_by_text("Segmentation saved to the DICOMweb server").first.wait_for()
        shot("5-saved.png")
        assert not errors, errors
    finally:
        context.close()


def _seg_series(srv: Server, study_uid: str) -> dict:
    """The QIDO-RS record (DICOM JSON) of the one SEG series of ``study_uid`` in Orthanc."""
    found = requests.get(f"{srv.dicomweb}/studies/{study_uid}/series", params={"Modality": "SEG"},
                         headers={"Accept": "application/dicom+json"}, timeout=30).json()  # fmt: skip
    assert len(found) == 1, found
    return found[0]


def _overlay_mask(px: np.ndarray) -> np.ndarray:
    return (px[..., 0] - px[..., 2]) > 0.15


def _liver_click(page, plain: np.ndarray, click: dict, shot) -> None:
    """MONAI Label panel -> Point Prompts (the interactive model) -> label "liver" -> one click on the CT just beside
    the auto-segmentation's overlay (where OHIF's plugin shows a change: it updates only voxels that are background or
    of the clicked label) -> Run; the overlay must change. ``plain``: the viewport before any overlay; ``click`` gets
    the request's parameters and the overlay's pixel counts before and after."""
    page.get_by_text("Point Prompts", exact=True).click()
    page.locator("tr.clickable-row").filter(has=page.get_by_text("liver", exact=True)).first.click()
    overlay = _overlay_mask(click["auto"])
    rows = np.nonzero(overlay.any(axis=1))[0]
    row = int(rows[len(rows) // 2])  # the overlay's middle row: a click 4 px left of its leftmost pixel there
    col = int(np.nonzero(overlay[row])[0][0]) - 4
    assert col > 0 and plain[row, col].mean() > 0.1, ("no CT beside the overlay", row, col)
    box = page.locator("[data-cy=viewport-pane]").first.bounding_box()
    page.mouse.click(box["x"] + col + 0.5, box["y"] + row + 0.5)
    page.wait_for_timeout(500)  # the click's marker is drawn in the segment's colour: it belongs to "before"
    marked = _viewport(page)
    run = page.locator("button[title='Run PointPrompts']")
    request = _click_until_requested(page, run, lambda r: "/infer/liver_ct_seg_deepedit" in r.url)
    response = request.response()
    assert response is not None and response.status == 200, response and response.status
    click["params"] = json.loads(re.search(rb'name="params"\r\n\r\n(.*?)\r\n--', request.post_data_buffer, re.S)[1])
    page.get_by_text("Running Inference for Point Prompts - Successful").first.wait_for()
    n_marked = int(_overlay_mask(marked).sum())
    changed = _wait_for_viewport(page, lambda px: abs(int(_overlay_mask(px).sum()) - n_marked) > 20,
                                 "the click did not change the overlay")  # fmt: skip
    click["overlay_pixels"] = (n_marked, int(_overlay_mask(changed).sum()))
    shot("2b-liver-click.png")


def _stored_seg(srv: Server, study_uid: str) -> pydicom.Dataset:
    """The one SEG of ``study_uid`` in Orthanc (found by QIDO-RS), as the file Orthanc stores."""
    seg_uid = _seg_series(srv, study_uid)["0020000E"]["Value"][0]
    orthanc = srv.dicomweb.rsplit("/dicom-web", 1)[0]  # Orthanc's REST API: the stored file as it is
    series = [x for x in requests.get(f"{orthanc}/series?expand", timeout=30).json()
              if x["MainDicomTags"]["SeriesInstanceUID"] == seg_uid]  # fmt: skip
    stored = requests.get(f"{orthanc}/instances/{series[0]['Instances'][0]}/file", timeout=30)
    return pydicom.dcmread(io.BytesIO(stored.content))


def _model_output(srv: Server, ct_uid: str) -> tuple[np.ndarray, np.ndarray]:
    """The model's output for the series ``ct_uid`` (what the app's infer returns to 3D Slicer): voxels, affine."""
    result = MONAILabelClient(srv.url, tmpdir=str(srv.workdir / "client")).infer("liver_ct_seg", ct_uid, {})[0]
    img = nib.load(result)
    return np.asarray(img.dataobj), img.affine


def test_ohif_auto_segment_save_and_train_list(pacs_server, browser, shots):
    srv = pacs_server
    url = _ohif_url(srv)
    study_uid = pacs.study_uids(pacs.SAMPLE_DICOM)[0]
    ct_uid = _ct_series_uid()
    assert url == f"{srv.url}/ohif/monai-label?StudyInstanceUIDs={study_uid}"
    _auto_segment_and_save(srv, browser, study_uid, ct_uid, shots)

    # 4. the new SEG in Orthanc, found by QIDO-RS; its segments coded liver / tumor (SNOMED CT), on the CT series
    json_accept = {"Accept": "application/dicom+json"}
    found = _seg_series(srv, study_uid)
    seg_uid = found["0020000E"]["Value"][0]
    assert found["0008103E"]["Value"] == [SEG_NAME]
    meta = requests.get(f"{srv.dicomweb}/studies/{study_uid}/series/{seg_uid}/metadata", headers=json_accept,
                        timeout=30).json()  # fmt: skip
    assert len(meta) == 1
    seg = pydicom.Dataset.from_json(meta[0])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_uid
    segments = {str(s.SegmentLabel): s for s in seg.SegmentSequence}
    assert sorted(segments) == ["background", "liver", "tumor"]  # background: painted as nothing (lib.datastore)
    for label, code in (("liver", LIVER), ("tumor", NEOPLASM)):
        kind = segments[label].SegmentedPropertyTypeCodeSequence[0]
        assert (kind.CodingSchemeDesignator, kind.CodeValue) == (SCT, code), (label, kind)
    assert segments["tumor"].AnatomicRegionSequence[0].CodeValue == LIVER

    # 5. the datastore: training's data list (read afresh from the store, as POST /train does) has this SEG as the
    # study's final label, on the image grid, equal to the SEG's frames painted independently in world space; the
    # study counts as labelled
    train = requests.get(f"{srv.url}/datastore/", params={"output": "train"}, timeout=120).json()
    assert len(train) == 1 and ct_uid in train[0]["image"], train
    status = requests.get(f"{srv.url}/datastore/", timeout=60).json()
    assert status["total"] == 1 and status["completed"] == 1, status
    label_img, image = nib.load(train[0]["label"]), nib.load(train[0]["image"])
    assert label_img.shape == image.shape
    np.testing.assert_allclose(label_img.affine, image.affine, atol=1e-3)
    label = np.asarray(label_img.dataobj)
    painted = seg_to_labelmap(_stored_seg(srv, study_uid), image.shape, image.affine,
                              SEGMENT_LABELS)  # fmt: skip
    np.testing.assert_array_equal(label, painted)
    assert set(np.unique(label).tolist()) <= {0, LABELS["liver"], LABELS["tumor"]} and (label > 0).sum() > 1000
    model, model_affine = _model_output(srv, ct_uid)
    np.testing.assert_allclose(model_affine, image.affine, atol=1e-3)
    RESULT.update(label=label, model=model, affine=image.affine)


def test_saved_seg_is_the_models_output_in_world_space():
    """What OHIF saved after auto-segmentation (no edit) is the model's output, in world space (the sample series:
    ImageOrientationPatient -1,0,0,0,-1,0, InstanceNumber counting up the slice normal, i.e. feet to head)."""
    if not RESULT:
        pytest.skip("the OHIF round trip did not run")
    _assert_same_in_world_space(RESULT["label"], RESULT["model"], RESULT["affine"])


def _assert_same_in_world_space(label: np.ndarray, model: np.ndarray, affine: np.ndarray) -> None:
    offset = centroid_mm(label > 0, affine) - centroid_mm(model > 0, affine)
    assert dice(label > 0, model > 0) > 0.95, (dice(label > 0, model > 0), offset.tolist())
    assert np.abs(offset).max() < 2.0, offset.tolist()


@pytest.mark.parametrize("numbering", ["feet-to-head", "head-to-feet"])
def test_standard_orientation_series_saved_in_world_space(pacs_server, browser, tmp_path, numbering):
    """The round trip on a series in the usual orientation (ImageOrientationPatient 1,0,0,0,1,0), its InstanceNumber
    counting either way (scanners number head to feet for a head-first scan, feet to head for a feet-first one): the
    SEG OHIF saves is the model's output in world space. OHIF pairs the slices in InstanceNumber order, dcmjs in
    position order (dcmjs#193): before lib/ohif.py gave the export dcmjs's order, "feet-to-head" was saved reversed."""
    from liverseg.dicom import read_dicom_series

    srv = pacs_server
    phantom = generate_phantom(STANDARD_SEED, shape=PHANTOM_SHAPE, orientation="LPS")  # i -> L, j -> P: IOP 1,0,0,0,1,0
    files, first = write_study(tmp_path / "CT", phantom.image, phantom.affine, patient_name=f"Standard^{numbering}",
                               patient_id=f"STD-{numbering}", study_description="standard orientation")  # fmt: skip
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    if numbering == "head-to-feet":  # the writer numbers along k (feet to head here): count the other way
        for f in files:
            ds = pydicom.dcmread(f)
            ds.InstanceNumber = len(files) + 1 - int(ds.InstanceNumber)
            ds.save_as(f, write_like_original=False)
    headers = sorted((int(h.InstanceNumber), float(h.ImagePositionPatient[2]))
                     for h in (pydicom.dcmread(f, stop_before_pixels=True) for f in files))  # fmt: skip
    z = [position for _, position in headers]  # along the slice normal (LPS z: to the head)
    assert z == sorted(z, reverse=numbering == "head-to-feet")
    orthanc = srv.dicomweb.rsplit("/dicom-web", 1)[0]
    for f in files:
        r = requests.post(f"{orthanc}/instances", data=f.read_bytes(), headers={"Content-Type": "application/dicom"},
                          timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
    study_uid, ct_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)

    _auto_segment_and_save(srv, browser, study_uid, ct_uid, None)

    image, affine, _ = read_dicom_series(tmp_path / "CT")
    painted = seg_to_labelmap(_stored_seg(srv, study_uid), image.shape, affine, SEGMENT_LABELS)
    model, model_affine = _model_output(srv, ct_uid)
    np.testing.assert_allclose(model_affine, affine, atol=1e-3)
    assert (model > 0).sum() > 300
    _assert_same_in_world_space(painted, model, affine)


def test_ohif_click_changes_the_overlay_and_is_saved(pacs_server, browser, tmp_path):
    """OHIF's point prompts drive the interactive (DeepEdit) model: after auto-segmentation, a liver click beside the
    liver changes the overlay; the request carries the click; the served model's result with that click has more liver
    than without; the SEG saved afterwards is in Orthanc and is the study's training label (a study of its own)."""
    srv = pacs_server
    models = requests.get(f"{srv.url}/info/", timeout=60).json()["models"]
    assert models["liver_ct_seg_deepedit"]["type"] == "deepedit", models
    phantom = generate_phantom(CLICK_SEED, shape=PHANTOM_SHAPE, orientation="LPS")
    files, first = write_study(tmp_path / "CT", phantom.image, phantom.affine, patient_name="Click^Test",
                               patient_id="CLICK", study_description="liver click")  # fmt: skip
    orthanc = srv.dicomweb.rsplit("/dicom-web", 1)[0]
    for f in files:
        r = requests.post(f"{orthanc}/instances", data=f.read_bytes(), headers={"Content-Type": "application/dicom"},
                          timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
    study_uid, ct_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)

    click: dict = {}
    _auto_segment_and_save(srv, browser, study_uid, ct_uid, None, click=click)
    assert len(click["params"]["liver"]) == 1 and not click["params"].get("tumor"), click["params"]
    assert click["overlay_pixels"][1] > click["overlay_pixels"][0], click["overlay_pixels"]  # a liver click adds

    # the served model, with OHIF's click and without: the click adds liver
    client = MONAILabelClient(srv.url, tmpdir=str(tmp_path / "client"))
    clicks = {k: click["params"].get(k) or [] for k in ("liver", "tumor", "background")}
    with_click = np.asarray(nib.load(client.infer("liver_ct_seg_deepedit", ct_uid, clicks)[0]).dataobj)
    without = np.asarray(nib.load(client.infer("liver_ct_seg_deepedit", ct_uid, {})[0]).dataobj)
    assert (with_click > 0).sum() > (without > 0).sum(), ((with_click > 0).sum(), (without > 0).sum())

    # saved: the study's SEG in Orthanc is its training label
    _seg_series(srv, study_uid)
    train = requests.get(f"{srv.url}/datastore/", params={"output": "train"}, timeout=120).json()
    mine = [t for t in train if ct_uid in t["image"]]
    assert len(mine) == 1, train
    label = np.asarray(nib.load(mine[0]["label"]).dataobj)
    assert (label > 0).sum() > 1000


def test_stopping_serve_pacs_leaves_nothing_running(pacs_server):
    """SIGTERM to `liverseg serve --pacs` (what `make serve-pacs` runs) stops the app and Orthanc: no process left."""
    srv = pacs_server
    workdir = str(srv.workdir)
    assert _processes_mentioning(workdir + "/orthanc/orthanc.json"), "Orthanc is not running"
    assert srv.proc is not None and srv.proc.poll() is None
    srv.proc.send_signal(signal.SIGTERM)  # the liverseg process only, as `kill <pid>` would
    try:
        assert srv.proc.wait(timeout=90) == 0
    finally:
        procs.kill_group(srv.proc)
    deadline = time.monotonic() + 10
    while _processes_mentioning(workdir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(workdir) == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{srv.dicomweb}/studies", timeout=5)
