"""Core: case ids, atomic case writing, dataset.json, NIfTI reading and geometry helpers."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from liverseg import LABELS
from liverseg.dataset import case_paths, check_case_id, list_cases, read_dataset_json, write_case, write_dataset_json
from liverseg.errors import InputError
from liverseg.imageio import lps_to_ras, orientation_of, read_nifti, spacing_of, write_nifti

AFFINE = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 50.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("case_id", ["liver_001", "3Dircadb1.7", "a", "case-12", "lits_117"])
def test_valid_case_ids(case_id):
    assert check_case_id(case_id) == case_id


@pytest.mark.parametrize("case_id", ["", "../x", "a/b", "..", "a..b", "_x", "x_0000", "a b", "x" * 200, "/abs"])
def test_invalid_case_ids_raise(case_id):
    with pytest.raises(ValueError, match="invalid case id"):
        check_case_id(case_id)


def test_unknown_split_raises(tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        case_paths(tmp_path, "a", "Val")


def test_write_case_roundtrip_and_dataset_json(tmp_path):
    image = np.random.default_rng(0).normal(50, 20, (12, 10, 6)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[3:8, 3:7, 2:5] = 1
    label[5, 5, 3] = 2
    paths = write_case(tmp_path, "c1", image, AFFINE, label)
    write_case(tmp_path, "t1", image, AFFINE, None, split="Ts")
    img, aff = read_nifti(paths.image)
    lab, laff = read_nifti(paths.label)
    assert img.dtype == np.int16 and np.array_equal(img, np.rint(image).astype(np.int16))
    assert np.array_equal(lab, label)
    np.testing.assert_allclose(aff, AFFINE, atol=1e-5)
    np.testing.assert_allclose(laff, AFFINE, atol=1e-5)
    write_dataset_json(tmp_path, "Test", "d")
    meta = read_dataset_json(tmp_path)
    assert meta["labels"] == LABELS and meta["numTraining"] == 1 and meta["channel_names"] == {"0": "CT"}
    assert [c.case_id for c in list_cases(tmp_path, "Ts")] == ["t1"] and list_cases(tmp_path, "Ts")[0].label is None


@pytest.mark.parametrize(
    "label, message",
    [
        (np.full((12, 10, 6), 3, np.uint8), "unexpected label values"),
        (np.zeros((12, 10, 5), np.uint8), "differs from image shape"),
    ],
)
def test_bad_case_raises_and_leaves_nothing(tmp_path, label, message):
    with pytest.raises(ValueError, match=message):
        write_case(tmp_path, "bad", np.zeros((12, 10, 6)), AFFINE, label)
    assert not list(tmp_path.rglob("*.nii.gz"))


def test_failed_label_write_removes_the_image(tmp_path, monkeypatch):
    import liverseg.dataset as dataset

    calls = []

    def flaky(path, array, affine, dtype=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return write_nifti(path, array, affine, dtype)

    monkeypatch.setattr(dataset, "write_nifti", flaky)
    with pytest.raises(OSError):
        write_case(tmp_path, "c", np.zeros((4, 4, 4)), AFFINE, np.zeros((4, 4, 4), np.uint8))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_list_cases_skips_badly_named_files(tmp_path):
    write_case(tmp_path, "good", np.zeros((4, 4, 4)), AFFINE)
    (tmp_path / "imagesTr" / "x_0000_0000.nii.gz").write_bytes(b"junk")
    assert [c.case_id for c in list_cases(tmp_path)] == ["good"]


def test_read_nifti_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_nifti(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    with pytest.raises(InputError, match="bad.nii.gz"):
        read_nifti(bad)
    four_d = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), four_d)
    with pytest.raises(InputError, match="expected a 3D volume"):
        read_nifti(four_d)


def test_geometry_helpers():
    assert orientation_of(AFFINE) == "LPS"
    assert orientation_of(lps_to_ras(AFFINE)) == "RAS"
    assert spacing_of(AFFINE) == pytest.approx((0.8, 0.8, 2.5))
    # a DICOM (LPS) point maps to RAS by negating x and y
    np.testing.assert_allclose(lps_to_ras(AFFINE) @ [0, 0, 0, 1], [-100.0, -50.0, -30.0, 1.0])


def test_dataset_json_is_valid_json_after_rewrite(tmp_path):
    write_dataset_json(tmp_path, "A")
    write_dataset_json(tmp_path, "B", extra_key=1)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["name"] == "B" and meta["extra_key"] == 1
    assert not list(tmp_path.glob("*.part"))
