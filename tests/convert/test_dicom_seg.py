"""DICOM SEG converter on real data (dcmqi's 3-slice CT + liver SEG + the same label as NRRD)."""

from __future__ import annotations

import argparse
import copy
import os
import shutil
from pathlib import Path

import nrrd
import numpy as np
import pydicom
import pytest
from pydicom.pixel_data_handlers.util import pack_bits

from liverseg.convert.dicom_seg import convert_dicom_seg, parse_segment_map, register_cli, segment_label_from_name
from liverseg.dataset import read_dataset_json
from liverseg.dicom import read_dicom_series
from liverseg.errors import InputError
from liverseg.imageio import lps_to_ras, read_nifti
from tests.conftest import resample_to

DATA = Path(
    os.environ.get("LIVERSEG_DCMQI_DATA", Path(__file__).resolve().parents[1] / "data" / "dcmqi-ct3slice")
)
SEG = DATA / "liver.dcm"
pytestmark = pytest.mark.skipif(
    not SEG.is_file(), reason=f"real DICOM SEG test data (dcmqi ct-3slice) not found at {DATA}; set LIVERSEG_DCMQI_DATA"
)
LIVER_VOXELS = 107098  # voxels of value 1 in liver_seg.nrrd


def read_nrrd_ras(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data, header = nrrd.read(str(path))
    assert header["space"] == "left-posterior-superior"
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(header["space directions"], dtype=float).T  # row d = direction of axis d
    affine[:3, 3] = header["space origin"]
    return data, lps_to_ras(affine)


@pytest.fixture
def ct_dir(tmp_path) -> Path:
    """The three CT slices alone (the converter must not need the SEG to be elsewhere, but keep inputs clean)."""
    d = tmp_path / "ct"
    d.mkdir()
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        shutil.copy(DATA / name, d / name)
    return d


def test_real_seg_matches_nrrd_in_world_space(tmp_path):
    assert convert_dicom_seg(DATA, SEG, tmp_path / "out", case_id="dcmqi_ct3") == "dcmqi_ct3"
    label, affine = read_nifti(tmp_path / "out" / "labelsTr" / "dcmqi_ct3.nii.gz")
    image, image_affine = read_nifti(tmp_path / "out" / "imagesTr" / "dcmqi_ct3_0000.nii.gz")
    np.testing.assert_allclose(affine, image_affine)
    ref, ref_affine = read_nrrd_ras(DATA / "liver_seg.nrrd")
    assert int((ref == 1).sum()) == LIVER_VOXELS
    on_ref = resample_to(label, affine, ref_affine, ref.shape)
    np.testing.assert_array_equal(on_ref, ref.astype(np.uint8))  # the same voxel set, voxel for voxel
    assert int((label == 1).sum()) == LIVER_VOXELS and int((label == 2).sum()) == 0
    ct, ct_affine, _ = read_dicom_series(DATA)
    np.testing.assert_array_equal(resample_to(image, image_affine, ct_affine, ct.shape), ct)
    assert read_dataset_json(tmp_path / "out")["numTraining"] == 1


def _reorder_frames(order):
    def edit(seg: pydicom.Dataset) -> None:
        frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)[order]
        seg.PerFrameFunctionalGroupsSequence = [seg.PerFrameFunctionalGroupsSequence[i] for i in order]
        seg.PixelData = pack_bits(frames)

    return edit


@pytest.mark.parametrize("order", [[2, 1, 0], [1, 2, 0]], ids=["reversed", "rolled"])
def test_frames_placed_by_position(tmp_path, ct_dir, order):
    """Frames are placed by their ImagePositionPatient, not by frame number (per-slice counts differ)."""
    seg = pydicom.dcmread(str(SEG))
    _reorder_frames(order)(seg)
    seg_file = _save(seg, tmp_path)
    convert_dicom_seg(ct_dir, seg_file, tmp_path / "out", case_id="c1")
    label, affine = read_nifti(tmp_path / "out" / "labelsTr" / "c1.nii.gz")
    ref, ref_affine = read_nrrd_ras(DATA / "liver_seg.nrrd")
    np.testing.assert_array_equal(resample_to(label, affine, ref_affine, ref.shape), ref.astype(np.uint8))


def _save(seg: pydicom.Dataset, tmp_path: Path) -> Path:
    out = tmp_path / "edited_seg.dcm"
    seg.save_as(str(out))
    return out


def _two_segments(seg: pydicom.Dataset) -> None:
    """Frame 2 (middle slice) becomes a second segment named 'Liver tumor'."""
    tumor = copy.deepcopy(seg.SegmentSequence[0])
    tumor.SegmentNumber = 2
    tumor.SegmentLabel = "Liver tumor"
    tumor.SegmentedPropertyTypeCodeSequence[0].CodeMeaning = "Neoplasm"
    seg.SegmentSequence.append(tumor)
    seg.PerFrameFunctionalGroupsSequence[1].SegmentIdentificationSequence[0].ReferencedSegmentNumber = 2


def _fractional(seg: pydicom.Dataset) -> None:
    frames = seg.pixel_array.astype(np.uint8) * 200
    frames[:, :4, :4] = 100  # below half of the maximum: background
    seg.SegmentationType = "FRACTIONAL"
    seg.SegmentationFractionalType = "PROBABILITY"
    seg.MaximumFractionalValue = 255
    seg.BitsAllocated = seg.BitsStored = 8
    seg.HighBit = 7
    seg.PixelData = frames.tobytes()


@pytest.mark.parametrize(
    "edit, segment_map, expected",
    [
        (None, None, {1: LIVER_VOXELS, 2: 0}),
        (None, {1: 2}, {1: 0, 2: LIVER_VOXELS}),
        (_two_segments, None, {1: LIVER_VOXELS - 35645, 2: 35645}),
        (_two_segments, {1: 1, 2: 0}, {1: LIVER_VOXELS - 35645, 2: 0}),
        (_fractional, None, {1: LIVER_VOXELS, 2: 0}),
    ],
)
def test_segments_to_labels(tmp_path, ct_dir, edit, segment_map, expected):
    seg_file = SEG
    if edit is not None:
        seg = pydicom.dcmread(str(SEG))
        edit(seg)
        seg_file = _save(seg, tmp_path)
    convert_dicom_seg(ct_dir, seg_file, tmp_path / "out", case_id="c1", segment_map=segment_map)
    label, affine = read_nifti(tmp_path / "out" / "labelsTr" / "c1.nii.gz")
    assert {v: int((label == v).sum()) for v in (1, 2)} == expected
    if edit is _two_segments and segment_map is None:
        # the tumor frame (SEG frame 2, z = -127.69 mm) must land on CT file 02.dcm's slice
        _, _, meta = read_dicom_series(ct_dir)
        k = [f.name for f in meta["files"]].index("02.dcm")
        assert np.all(label[:, :, k] != 1) and (label[:, :, k] == 2).sum() == 35645


def _shift_frame_z(seg):
    pos = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    pos.ImagePositionPatient = [pos.ImagePositionPatient[0], pos.ImagePositionPatient[1],
                                float(pos.ImagePositionPatient[2]) + 0.4]


def _shift_frame_out(seg):
    pos = seg.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0]
    pos.ImagePositionPatient = [pos.ImagePositionPatient[0], pos.ImagePositionPatient[1],
                                float(pos.ImagePositionPatient[2]) + 5.0]


def _shift_frame_x(seg):
    pos = seg.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0]
    pos.ImagePositionPatient = [float(pos.ImagePositionPatient[0]) + 0.3, pos.ImagePositionPatient[1],
                                pos.ImagePositionPatient[2]]


def _orientation(seg):
    seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient = [0, 1, 0, 1, 0, 0]


def _spacing(seg):
    seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [0.7, 0.7]


def _frame_of_reference(seg):
    seg.FrameOfReferenceUID = pydicom.uid.generate_uid(entropy_srcs=["elsewhere"])


def _unknown_segment(seg):
    seg.SegmentSequence[0].SegmentLabel = "Blob"
    seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning = "Tissue"


def _not_a_seg(seg):
    seg.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    seg.Modality = "CT"


BAD_SEGS = [
    ("frame off the slice grid", _shift_frame_z, None, "frame 1: position .* not on the CT grid"),
    ("frame outside the volume", _shift_frame_out, None, "frame 3: lies outside the CT volume"),
    ("frame shifted in-plane", _shift_frame_x, None, "frame 2: position .* not on the CT grid"),
    ("orientation", _orientation, None, "orientation .* differs from the CT"),
    ("pixel spacing", _spacing, None, "pixel spacing .* differs from the CT"),
    ("frame of reference", _frame_of_reference, None, "FrameOfReferenceUID"),
    ("unknown segment", _unknown_segment, None, r"segment\(s\) \[1\].*#1 'Blob' \(type: Tissue\)"),
    ("segment map names a missing segment", None, {1: 1, 5: 2}, r"\[5\]"),
    ("not a SEG", _not_a_seg, None, "not a DICOM SEG"),
]


@pytest.mark.parametrize("name, edit, segment_map, message", BAD_SEGS, ids=[b[0] for b in BAD_SEGS])
def test_bad_seg_raises(tmp_path, ct_dir, name, edit, segment_map, message):
    seg_file = SEG
    if edit is not None:
        seg = pydicom.dcmread(str(SEG))
        edit(seg)
        seg_file = _save(seg, tmp_path)
    with pytest.raises(InputError, match=message) as info:
        convert_dicom_seg(ct_dir, seg_file, tmp_path / "out", case_id="c1", segment_map=segment_map)
    assert str(seg_file) in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize(
    "text, expected",
    [("1=liver,2=tumor", {1: 1, 2: 2}), ("3=2, 1=1", {3: 2, 1: 1}), ("4=background", {4: 0})],
)
def test_parse_segment_map(text, expected):
    assert parse_segment_map(text) == expected


@pytest.mark.parametrize("text", ["", "1", "x=liver", "1=kidney", "1=7"])
def test_parse_segment_map_bad(text):
    with pytest.raises(ValueError):
        parse_segment_map(text)


@pytest.mark.parametrize(
    "names, expected",
    [(("Liver", "Liver"), 1), (("Liver tumor", ""), 2), (("Segment_1", "Neoplasm"), 2), (("HCC lesion",), 2),
     (("Spleen", "Spleen"), None), (("", ""), None)],
)
def test_segment_label_from_name(names, expected):
    assert segment_label_from_name(*names) == expected


def test_cli(tmp_path, ct_dir):
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(
        ["dicom-seg", str(ct_dir), str(SEG), str(tmp_path / "out"), "--case-id", "cli1", "--segment-map", "1=tumor"]
    )
    assert args.func(args) == 0
    label, _ = read_nifti(tmp_path / "out" / "labelsTr" / "cli1.nii.gz")
    assert int((label == 2).sum()) == LIVER_VOXELS
