"""The OHIF configuration the app serves (lib/ohif.py): the route wins over monailabel's, the script loads in a
JavaScript engine, its save command stores through the active data source, and OHIF-style SEGs map by name."""

from __future__ import annotations

import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest
from lib import datastore as app_datastore  # noqa: E402  (apps/liver on sys.path, see conftest)
from lib import ohif  # noqa: E402

from .test_app_units import write_seg

NODE = shutil.which("node") or shutil.which("nodejs")

# Loads app-config.js as OHIF does (a script setting window.config), then drives the inline extension with stand-ins
# for OHIF's managers: the panel's context-less storeSegmentation call, and the MONAI Label mode's panels.
_DRIVER = r"""
const fs = require('fs');
const vm = require('vm');
const calls = [], notes = [], added = [];
let listener = null;
const window = { location: { pathname: process.argv[3] } };
// cornerstone's globals as OHIF sets them: segmentation 'seg-1' has three slices in InstanceNumber order, numbered
// feet to head (IOP -1,0,0,0,-1,0: the slice normal points to the head), as in the sample study
const labelmaps = { 'seg-1': { imageIds: ['l0', 'l1', 'l2'] } };
const headFirst = { r0: -10, r1: 0, r2: 10 };
window.cornerstoneTools = { segmentation: { state: {
  getSegmentation: id => labelmaps[id] && { representationData: { Labelmap: labelmaps[id] } } } } };
window.cornerstone = {
  cache: { getImage: id => ({ referencedImageId: 'r' + id.slice(1) }) },
  metaData: { get: (type, id) => type === 'instance' ? {
    ImagePositionPatient: ['0', '0', String(headFirst[id])],
    ImageOrientationPatient: [-1, 0, 0, 0, -1, 0] } : undefined },
};
vm.runInNewContext(fs.readFileSync(process.argv[2], 'utf8'), { window, console });
const [segExt, ext] = window.config.extensions;
const services = {
  uiNotificationService: { show: n => notes.push(n) },
  panelService: {
    panels: [{ id: '@ohif/extension-monai-label.panelModule.monailabel' }],
    getPanels() { return this.panels; },
    addPanel(position, id) { added.push([position, id]); this.panels.push({ id }); },
    subscribe(event, fn) { listener = [event, fn]; return { unsubscribe() { listener = null; } }; },
  },
};
const commandsManager = {
  runCommand: async (name, options, context) => {
    calls.push({ name, options, context, order: (labelmaps[options.segmentationId] || {}).imageIds });
    if (options.segmentationId === 'bad') throw new Error('STOW failed: 400');
    return { stored: true };
  },
};
const extensionManager = { getActiveDataSource: () => [{ name: 'the-active-source' }] };
(async () => {
  const module = ext.getCommandsModule({ servicesManager: { services }, commandsManager, extensionManager });
  const store = module.definitions.storeSegmentation.commandFn;
  await store({ segmentationId: 'seg-1' });
  await store({ segmentationId: 'bad' });
  await module.definitions.downloadSegmentation.commandFn({ segmentationId: 'seg-1' });
  ext.onModeEnter({ servicesManager: { services } });
  services.panelService.panels = [{ id: 'x' }];  // the layout resets the right panels: the listener adds it again
  if (listener) listener[1]({ position: 'right' });
  ext.onModeExit();
  console.log(JSON.stringify({
    config: window.config, segExt, id: ext.id, context: module.defaultContext,
    calls: calls.map(c => ({ name: c.name, segmentationId: c.options.segmentationId,
                             dataSource: c.options.dataSource && c.options.dataSource.name, context: c.context,
                             order: c.order })),
    orderAfter: labelmaps['seg-1'].imageIds,
    notes: notes.map(n => n.type), added, subscribed: listener !== null,
  }));
})().catch(e => { console.error(e); process.exit(1); });
"""


@pytest.fixture
def ohif_client():
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse
    from fastapi.testclient import TestClient

    app = FastAPI()

    @app.get("/ohif/{path:path}")  # what monailabel serves: its packaged OHIF files
    def packaged(path: str):
        return PlainTextResponse(f"packaged {path}")

    assert ohif.install_ohif_config(app, "") == 1
    return TestClient(app)


def test_route_serves_the_app_config_before_monailabels(ohif_client):
    r = ohif_client.get("/ohif/app-config.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/javascript")
    assert r.text == ohif.app_config_js("")
    assert "window.config = " in r.text and ohif.EXTENSION_ID in r.text
    assert ohif_client.get("/ohif/index.html").text == "packaged index.html"  # the rest stays monailabel's


def test_app_config_prefix():
    config = ohif.base_config("/api")
    source = config["dataSources"][0]["configuration"]
    assert source["wadoRoot"] == "/api/proxy/dicom/wado" and source["qidoRoot"] == "/api/proxy/dicom/qido"
    assert config["defaultDataSourceName"] == config["dataSources"][0]["sourceName"]


@pytest.mark.skipif(NODE is None, reason="node (Node.js) is not installed: apt-get install -y nodejs")
@pytest.mark.parametrize("mode_path, panel_added", [("/ohif/monai-label", True), ("/ohif/segmentation", False)])
def test_app_config_loads_and_saves_through_the_active_source(ohif_client, tmp_path, mode_path, panel_added):
    script = tmp_path / "app-config.js"
    script.write_text(ohif_client.get("/ohif/app-config.js").text)
    driver = tmp_path / "driver.js"
    driver.write_text(_DRIVER)
    run = subprocess.run([NODE, str(driver), str(script), mode_path], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["config"]["dataSources"][0]["configuration"]["wadoRoot"] == "/proxy/dicom/wado"
    assert out["segExt"] == ohif.SEG_EXTENSION and out["id"] == ohif.EXTENSION_ID
    assert out["context"] != ohif.SEG_COMMANDS_CONTEXT  # its own context, registered after the dicom-seg one
    # the SEG export gets the slices head first, the order in which dcmjs pairs them with their images (dcmjs#193);
    # the segmentation's own order is back afterwards
    head_first = ["l2", "l1", "l0"]
    assert out["calls"] == [
        {"name": "storeSegmentation", "segmentationId": "seg-1", "dataSource": "the-active-source",
         "context": "SEGMENTATION", "order": head_first},
        {"name": "storeSegmentation", "segmentationId": "bad", "dataSource": "the-active-source",
         "context": "SEGMENTATION"},
        {"name": "downloadSegmentation", "segmentationId": "seg-1", "context": "SEGMENTATION", "order": head_first},
    ]
    assert out["orderAfter"] == ["l0", "l1", "l2"]
    assert out["notes"] == ["success", "error"]
    expected = [["right", ohif.SEGMENTATION_PANEL]] * 2 if panel_added else []
    assert out["added"] == expected  # added, and added again after the layout reset the right side
    assert out["subscribed"] is False  # unsubscribed on mode exit (or never subscribed)


def _ohif_style(path, names):
    """Re-code a SEG as OHIF writes it: every segment 'Tissue' (T-D0050, SRT), algorithm MANUAL."""
    ds = pydicom.dcmread(path)
    for item, name in zip(ds.SegmentSequence, names):
        item.SegmentLabel = name
        item.SegmentAlgorithmType = "MANUAL"
        for seq in ("SegmentedPropertyCategoryCodeSequence", "SegmentedPropertyTypeCodeSequence"):
            code = getattr(item, seq)[0]
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D0050", "SRT", "Tissue"
    ds.SeriesNumber = 99
    ds.save_as(str(path))
    return path


@pytest.fixture(scope="module")
def lps_series(tmp_path_factory):
    from monailabel.datastore.utils.convert import dicom_to_nifti

    from liverseg.dicom import write_dicom_series
    from liverseg.phantom import generate_phantom

    root = tmp_path_factory.mktemp("ohif-seg")
    p = generate_phantom(504, shape=(32, 32, 16), orientation="LPS")
    files = write_dicom_series(root / "CT", p.image, p.affine, patient_id="UNIT-504")
    image = root / "image.nii.gz"
    shutil.move(dicom_to_nifti(str(root / "CT")), image)
    return p, files, image


@pytest.mark.parametrize(
    "names, swap",
    [
        (["Tumor", "Liver"], True),  # OHIF lists segments in its own order: the names decide
        (["liver", "liver tumor"], False),
        (["Liver", "Lesion"], False),
    ],
)
def test_ohif_seg_maps_segments_by_name(lps_series, tmp_path, names, swap):
    p, files, image = lps_series
    label = p.label.astype(np.uint8)
    if swap:  # segment 1 holds the tumor, segment 2 the liver
        label = np.select([label == 2, label == 1], [1, 2], 0).astype(np.uint8)
    seg = _ohif_style(write_seg(tmp_path / "ohif.dcm", label, p.affine, files, names=("a", "b")), names)
    assert app_datastore.seg_to_label(str(seg), str(image), str(tmp_path / "l.nii.gz")) == [0, 1, 2]
    out = nib.load(str(tmp_path / "l.nii.gz"))
    from .dicomweb import paint_on_grid

    np.testing.assert_array_equal(paint_on_grid(np.asarray(out.dataobj), out.affine, p.label.shape, p.affine), p.label)


def _stow_body(parts: list[bytes], boundary: str = "liverseg-test-boundary") -> tuple[bytes, str]:
    """A STOW-RS request as OHIF sends it: ``multipart/related``, one ``application/dicom`` part per instance."""
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts
    ) + f"--{boundary}--\r\n".encode()  # fmt: skip
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _stow_instances(body: bytes, boundary: str = "liverseg-test-boundary") -> list:
    import io

    chunks = body.split(f"--{boundary}".encode())[1:-1]
    return [pydicom.dcmread(io.BytesIO(c.split(b"\r\n\r\n", 1)[1][:-2])) for c in chunks]


def test_stow_of_an_ohif_seg_is_recoded_by_segment_name(lps_series, tmp_path):
    """OHIF's SEG (every segment "Tissue", segments in its own order) reaches the store coded as the project codes
    liver and tumor (SNOMED CT), with its pixels, numbers, names and the other parts of the request unchanged."""
    from liverseg.dicom.seg import LIVER_CODE, NEOPLASM_CODE

    p, files, _ = lps_series
    label = np.select([p.label == 2, p.label == 1], [1, 2], 0).astype(np.uint8)  # segment 1 = tumor
    seg = _ohif_style(write_seg(tmp_path / "ohif.dcm", label, p.affine, files, names=("a", "b")), ["Tumor", "Liver"])
    ct = files[0].read_bytes()
    body, ctype = _stow_body([ct, seg.read_bytes()])
    out = ohif.recode_stow(body, ctype)
    assert out is not None
    ct_out, seg_out = _stow_instances(out)
    assert ct_out.SOPInstanceUID == pydicom.dcmread(files[0]).SOPInstanceUID and out.count(ct) == 1  # untouched
    original = pydicom.dcmread(seg)
    assert seg_out.PixelData == original.PixelData and seg_out.SOPInstanceUID == original.SOPInstanceUID
    items = {int(s.SegmentNumber): s for s in seg_out.SegmentSequence}
    assert [items[1].SegmentLabel, items[2].SegmentLabel] == ["Tumor", "Liver"]
    for number, code in ((1, NEOPLASM_CODE), (2, LIVER_CODE)):
        kind = items[number].SegmentedPropertyTypeCodeSequence[0]
        assert (kind.CodeValue, kind.CodingSchemeDesignator) == (code.value, code.scheme_designator)
    assert items[1].AnatomicRegionSequence[0].CodeValue == LIVER_CODE.value
    assert "AnatomicRegionSequence" not in items[2]
    assert ohif.recode_stow(out, ctype) is None  # already coded: forwarded as it is


def test_stow_of_an_ohif_seg_with_a_background_segment_is_recoded(lps_series, tmp_path):
    """With the interactive model served, OHIF's segments are background, liver, tumor: liver and tumor get their codes,
    the background segment keeps its own, and the datastore paints it as nothing."""
    from liverseg.dicom.seg import LIVER_CODE

    p, files, _ = lps_series
    seg = _ohif_style(write_seg(tmp_path / "ohif.dcm", p.label.astype(np.uint8), p.affine, files, names=("a", "b")),
                      ["Background", "Liver"])  # fmt: skip
    body, ctype = _stow_body([seg.read_bytes()])
    out = ohif.recode_stow(body, ctype)
    assert out is not None
    items = {int(s.SegmentNumber): s for s in _stow_instances(out)[0].SegmentSequence}
    assert items[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == LIVER_CODE.value
    original = {int(s.SegmentNumber): s for s in pydicom.dcmread(seg).SegmentSequence}
    assert items[1].SegmentedPropertyTypeCodeSequence[0].to_json_dict() == \
        original[1].SegmentedPropertyTypeCodeSequence[0].to_json_dict()  # fmt: skip


def test_stow_bodies_left_as_they_are(lps_series, tmp_path):
    p, files, _ = lps_series
    other = _ohif_style(write_seg(tmp_path / "o.dcm", p.label.astype(np.uint8), p.affine, files), ["Liver", "Spleen"])
    body, ctype = _stow_body([other.read_bytes()])
    assert ohif.recode_stow(body, ctype) is None  # a segment the app does not know: its codes are kept
    body, ctype = _stow_body([files[0].read_bytes()])
    assert ohif.recode_stow(body, ctype) is None  # no SEG
    assert ohif.recode_stow(b"not multipart", "application/dicom") is None
    assert ohif.recode_stow(body[:-20], ctype) is None  # truncated framing
