"""``output=dicom_seg``: the request is checked before inference (4xx), and the SEG is highdicom's, with liver /
tumor codes and the model as algorithm, on the series' grid (real CT, LPS)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from lib import infer as app_infer  # noqa: E402  (apps/liver on sys.path, see conftest)
from lib.validation import BadRequest  # noqa: E402

from liverseg.convert.dicom_seg import convert_dicom_seg
from liverseg.dicom import read_dicom_series
from liverseg.imageio import read_nifti, write_nifti

REAL_CT = Path(__file__).resolve().parents[1] / "data" / "dcmqi-ct3slice"


class _NotDICOMweb:
    pass


@pytest.fixture
def dicomweb_datastore(monkeypatch):
    from monailabel.datastore.dicom import DICOMWebDatastore

    return DICOMWebDatastore.__new__(DICOMWebDatastore)  # only its type is checked


LABEL_INFO = '{"label_info": [{"name": "liver"}, {"name": "tumor"}]}'


@pytest.mark.parametrize(
    "kwargs, datastore, message",
    [
        ({"output": "dicom_seg", "image": "1.2.3", "params": LABEL_INFO}, "local", "needs a DICOMweb datastore"),
        ({"output": "dicom_seg", "image": "", "file": object(), "params": LABEL_INFO}, "dicomweb", "not an uploaded"),
        ({"output": "dicom_seg", "image": "1.2.3", "params": "{}"}, "dicomweb", "needs params.label_info"),
        ({"output": "dicom_seg", "image": "1.2.3", "params": '{"label_info": "liver"}'}, "dicomweb", "label_info"),
        ({"output": "dicom_seg", "image": "1.2.3", "params": "[1]"}, "dicomweb", "JSON object"),
    ],
    ids=["local datastore", "uploaded file", "no label_info", "label_info not a list", "params not an object"],
)
def test_dicom_seg_request_refused_before_inference(kwargs, datastore, message, dicomweb_datastore):
    store = _NotDICOMweb() if datastore == "local" else dicomweb_datastore
    with pytest.raises(BadRequest, match=message):
        app_infer.check_dicom_seg_request(kwargs, store)


@pytest.mark.parametrize("output", [None, "image", "json", "all"])
def test_other_outputs_not_checked(output):
    app_infer.check_dicom_seg_request({"output": output, "image": "", "params": "{}"}, _NotDICOMweb())


def test_valid_dicom_seg_request_passes(dicomweb_datastore):
    app_infer.check_dicom_seg_request({"output": "dicom_seg", "image": "1.2.3", "params": LABEL_INFO},
                                      dicomweb_datastore)


@pytest.mark.skipif(not (REAL_CT / "01.dcm").is_file(), reason=f"real CT not found at {REAL_CT}")
def test_dicom_seg_from_result_codes_and_grid(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        shutil.copy(REAL_CT / name, series / name)
    image, affine, _ = read_dicom_series(series)
    label = np.zeros(image.shape, np.uint8)
    label[100:300, 150:350, :] = 1
    label[180:220, 200:240, 1] = 2
    # the result as monailabel writes it: NIfTI; here with the axes reversed (LPS-like voxel order)
    flipped = label[::-1, ::-1, :]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [image.shape[0] - 1, image.shape[1] - 1]
    write_nifti(tmp_path / "result.nii.gz", flipped, affine @ flip)
    seg_file = app_infer.dicom_seg_from_result(str(series), str(tmp_path / "result.nii.gz"),
                                               [{"name": "liver", "model_name": "liver_ct_seg"}])
    try:
        seg = pydicom.dcmread(seg_file)
        segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
        assert segments[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # Liver, not Spleen
        assert segments[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # Neoplasm
        assert segments[2].AnatomicRegionSequence[0].CodeValue == "10200004"
        assert {s.SegmentAlgorithmType for s in segments.values()} == {"AUTOMATIC"}
        algo = segments[1].SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "liver_ct_seg" and algo.AlgorithmVersion not in ("", "unknown")
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(series / "01.dcm").SeriesInstanceUID
        convert_dicom_seg(series, Path(seg_file), tmp_path / "back", case_id="c")
        back, _ = read_nifti(tmp_path / "back" / "labelsTr" / "c.nii.gz")
        np.testing.assert_array_equal(back, label)
    finally:
        Path(seg_file).unlink()
    write_nifti(tmp_path / "empty.nii.gz", np.zeros_like(label), affine)
    with pytest.raises(BadRequest, match="empty"):
        app_infer.dicom_seg_from_result(str(series), str(tmp_path / "empty.nii.gz"), [{"name": "liver"}])
    write_nifti(tmp_path / "other.nii.gz", label[:, :, :2], affine)
    with pytest.raises(BadRequest, match="not on the series' grid"):
        app_infer.dicom_seg_from_result(str(series), str(tmp_path / "other.nii.gz"), [{"name": "liver"}])


def test_install_dicom_seg_writer(monkeypatch):
    import monailabel.datastore.dicom as datastore
    import monailabel.endpoints.infer as endpoint

    monkeypatch.setattr(endpoint, "nifti_to_dicom_seg", endpoint.nifti_to_dicom_seg)
    monkeypatch.setattr(datastore, "nifti_to_dicom_seg", datastore.nifti_to_dicom_seg)
    assert app_infer.install_dicom_seg_writer() is True
    assert endpoint.nifti_to_dicom_seg is app_infer.dicom_seg_from_result
    assert datastore.nifti_to_dicom_seg is app_infer.dicom_seg_from_saved_label
    assert app_infer.install_dicom_seg_writer() is False


@pytest.mark.skipif(not (REAL_CT / "01.dcm").is_file(), reason=f"real CT not found at {REAL_CT}")
@pytest.mark.parametrize(
    "label_info, algorithm_type", [([{"name": "liver", "model_name": "liver_ct_seg"}], "SEMIAUTOMATIC"),
                                   ([{"name": "liver"}], "MANUAL"), (None, "MANUAL")]
)
def test_saved_label_is_not_automatic(tmp_path, label_info, algorithm_type):
    series = tmp_path / "series"
    series.mkdir()
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        shutil.copy(REAL_CT / name, series / name)
    image, affine, _ = read_dicom_series(series)
    label = np.zeros(image.shape, np.uint8)
    label[100:200, 100:200, 1] = 1
    write_nifti(tmp_path / "label.nii.gz", label, affine)
    seg_file = app_infer.dicom_seg_from_saved_label(str(series), str(tmp_path / "label.nii.gz"), label_info)
    seg = pydicom.dcmread(seg_file)
    Path(seg_file).unlink()
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {algorithm_type}
    has_algorithm = ["SegmentationAlgorithmIdentificationSequence" in s for s in seg.SegmentSequence]
    assert has_algorithm == [algorithm_type == "SEMIAUTOMATIC"] * len(has_algorithm)
