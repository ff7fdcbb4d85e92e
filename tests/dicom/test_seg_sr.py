"""DICOM SEG and SR written with highdicom on a real CT: codes, algorithm, references, round trip into `convert
dicom-seg`, validation by highdicom and (when installed) dciodvfy from Debian's dicom3tools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from liverseg.convert.dicom_seg import convert_dicom_seg
from liverseg.dicom import read_dicom_series
from liverseg.dicom.seg import Algorithm, build_seg, write_seg
from liverseg.dicom.sr import write_volumetry_sr
from liverseg.imageio import read_nifti
from liverseg.volumetry import volumetry

REAL_CT = Path(__file__).resolve().parents[1] / "data" / "dcmqi-ct3slice"
pytestmark = pytest.mark.skipif(not (REAL_CT / "01.dcm").is_file(), reason=f"real CT not found at {REAL_CT}")
MODEL = Algorithm("liver_ct_seg", "9.9.9")


@pytest.fixture
def ct(tmp_path):
    folder = tmp_path / "ct"
    folder.mkdir()
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        shutil.copy(REAL_CT / name, folder / name)
    image, affine, meta = read_dicom_series(folder)
    label = np.zeros(image.shape, np.uint8)
    label[100:300, 150:350, :] = 1
    label[180:220, 200:240, 1] = 2  # one tumor on the middle slice
    label[250:260, 300:310, 0:2] = 2  # another across two slices
    return folder, label, affine, meta


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_seg_codes_algorithm_and_round_trip(tmp_path, ct):
    folder, label, affine, meta = ct
    path = write_seg(label, meta["headers"], tmp_path / "seg.dcm", algorithm=MODEL)
    seg = hd.seg.segread(str(path))
    liver, tumor = seg.SegmentSequence
    assert (liver.SegmentLabel, liver.SegmentedPropertyTypeCodeSequence[0].CodeValue) == ("liver", "10200004")
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    assert (tumor.SegmentLabel, tumor.SegmentedPropertyTypeCodeSequence[0].CodeValue) == ("tumor", "108369006")
    assert tumor.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert tumor.AnatomicRegionSequence[0].CodeValue == "10200004"
    for s in (liver, tumor):
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        algo = s.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("liver_ct_seg", "9.9.9")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == meta["series_uid"]
    assert seg.FrameOfReferenceUID == meta["frame_of_reference_uid"]
    # segment 1 is the whole liver (tumors included), as volumetry counts it
    liver_voxels = sum(int(f.sum()) for f in seg.get_pixels_by_source_instance(
        [str(h.SOPInstanceUID) for h in meta["headers"]], segment_numbers=[1]))
    assert liver_voxels == int((label > 0).sum())
    convert_dicom_seg(folder, path, tmp_path / "back", case_id="c")
    back, back_affine = read_nifti(tmp_path / "back" / "labelsTr" / "c.nii.gz")
    np.testing.assert_array_equal(back, label)
    np.testing.assert_allclose(back_affine, affine, atol=1e-5)
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(path) == []


@pytest.mark.parametrize("algorithm_type, algorithm", [("SEMIAUTOMATIC", MODEL), ("MANUAL", None)])
def test_person_made_labels(ct, algorithm_type, algorithm):
    _, label, _, meta = ct
    seg = build_seg(label, meta["headers"], algorithm=algorithm, algorithm_type=algorithm_type,
                    content_creator="Doe^Jane")
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {algorithm_type}
    assert str(seg.ContentCreatorName) == "Doe^Jane"


@pytest.mark.parametrize(
    "edit, kwargs, message",
    [
        (lambda lab: lab * 0, {}, "empty"),
        (lambda lab: lab + 3 * (lab == 2), {}, r"values \[5\]"),
        (lambda lab: lab[:, :, :2], {}, "does not match the series"),
        (lambda lab: lab, {"algorithm": None}, "needs the algorithm"),
        (lambda lab: lab, {"algorithm_type": "ROBOT"}, "unknown algorithm type 'ROBOT'; valid: AUTOMATIC"),
    ],
    ids=["empty", "bad values", "wrong shape", "automatic without model", "bad algorithm type"],
)
def test_bad_seg_arguments(ct, edit, kwargs, message):
    _, label, _, meta = ct
    args = {"algorithm": MODEL} | kwargs
    with pytest.raises(ValueError, match=message):
        build_seg(edit(label), meta["headers"], **args)


def test_volumetry_sr_references_the_seg(tmp_path, ct):
    _, label, affine, meta = ct
    seg_path = write_seg(label, meta["headers"], tmp_path / "seg.dcm", algorithm=MODEL)
    vol = volumetry(label, affine)
    assert vol["num_tumors"] == 2
    sr_path = write_volumetry_sr(vol, seg_path, meta["headers"], tmp_path / "sr.dcm", algorithm=MODEL)
    sr = hd.sr.srread(str(sr_path))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    seg = pydicom.dcmread(str(seg_path))
    groups = hd.sr.utils.find_content_items(sr, name=pydicom.sr.codedict.codes.DCM.MeasurementGroup, recursive=True)
    assert len(groups) == 2 + vol["num_tumors"]  # liver, all tumors, one per lesion
    values = {}
    for g in groups:
        tracking = next(i.TextValue for i in g.ContentSequence if i.ValueType == "TEXT")
        ref = next(i for i in g.ContentSequence if i.ValueType == "IMAGE")
        assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
        for item in (i for i in g.ContentSequence if i.ValueType == "NUM"):
            values[(tracking, item.ConceptNameCodeSequence[0].CodeMeaning)] = float(
                item.MeasuredValueSequence[0].NumericValue)
    assert values[("Liver", "Volume")] == pytest.approx(vol["liver_volume_ml"], rel=1e-6)
    assert values[("Tumors", "Volume")] == pytest.approx(vol["total_tumor_volume_ml"], rel=1e-6)
    assert values[("Tumors", "Number of lesions")] == 2
    assert values[("Lesion 1", "Diameter")] == pytest.approx(vol["tumors"][0]["diameter_mm"])
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(sr_path) == []
