"""3D-IRCADb converter: synthetic patients in the IRCADb layout (with the archive quirks) -> nnU-Net cases."""

from __future__ import annotations

import argparse
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from liverseg.convert.ircadb import convert_ircadb, read_ircadb_patient, register_cli, write_ircadb_patient
from liverseg.dataset import list_cases, read_dataset_json
from liverseg.dicom import write_dicom_series
from liverseg.errors import InputError
from liverseg.imageio import read_nifti
from tests.conftest import resample_to

SHAPE = (24, 20, 8)
AFFINES = {
    "RAS": np.array([[0.8, 0, 0, -9.0], [0, 0.7, 0, 12.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]]),
    "LPS": np.array([[-0.8, 0, 0, 9.0], [0, -0.7, 0, -12.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]]),
    "LAS": np.array([[-0.8, 0, 0, 9.0], [0, 0.7, 0, 12.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]]),
}


def make_case(shape=SHAPE):
    """Image (HU), masks (off-centre liver, two tumors, a cyst, bone) and the expected label."""
    i, j, k = np.indices(shape)
    liver = ((i - 9) / 7.0) ** 2 + ((j - 11) / 6.0) ** 2 + ((k - 3) / 3.0) ** 2 <= 1
    t1 = liver & (((i - 7) ** 2 + (j - 10) ** 2) <= 4) & (k >= 2) & (k <= 3)
    t2 = liver & (((i - 12) ** 2 + (j - 13) ** 2) <= 2) & (k == 4)
    cyst = liver & (((i - 11) ** 2 + (j - 8) ** 2) <= 2) & (k == 2)
    bone = (i >= 20) & (j <= 3)
    image = (-900 + 3 * i + 5 * j + 40 * k).astype(np.int16)
    image[liver] = 60
    image[t1 | t2] = 30
    image[cyst] = 5
    image[bone] = 700
    masks = {"liver": liver, "livertumor01": t1, "livertumor02": t2, "liverkyst01": cyst, "bone": bone}
    label = np.zeros(shape, np.uint8)
    label[liver] = 1
    label[t1 | t2] = 2
    return image, masks, label


def write_patient(root: Path, n: int, affine=AFFINES["RAS"], masks=None) -> Path:
    image, default_masks, _ = make_case()
    return write_ircadb_patient(root / f"3Dircadb1.{n}", image, affine, default_masks if masks is None else masks,
                                patient_id=f"P{n}")


def case_files(out: Path) -> dict[str, list[str]]:
    return {s: sorted(p.name for p in (out / s).iterdir()) for s in ("imagesTr", "labelsTr") if (out / s).exists()}


@pytest.mark.parametrize("orientation", list(AFFINES))
def test_convert_world_space(tmp_path, orientation):
    affine = AFFINES[orientation]
    image, _, label = make_case()
    write_patient(tmp_path / "src", 3, affine)
    assert sorted(p.name for p in (tmp_path / "src" / "3Dircadb1.3" / "MASKS_DICOM").iterdir()) == [
        "bone", "liver", "liverkyst01", "livertumor01", "livertumor02"]
    assert len(list((tmp_path / "src" / "3Dircadb1.3" / "PATIENT_DICOM").iterdir())) == SHAPE[2]
    mask_ds = pydicom.dcmread(str(tmp_path / "src" / "3Dircadb1.3" / "MASKS_DICOM" / "liver" / "image_3"))
    assert set(np.unique(mask_ds.pixel_array).tolist()) == {0, 255}

    assert convert_ircadb(tmp_path / "src", tmp_path / "out") == ["ircadb_003"]
    out_label, out_affine = read_nifti(tmp_path / "out" / "labelsTr" / "ircadb_003.nii.gz")
    out_image, image_affine = read_nifti(tmp_path / "out" / "imagesTr" / "ircadb_003_0000.nii.gz")
    np.testing.assert_allclose(image_affine, out_affine)
    assert out_label.dtype == np.uint8 and out_image.dtype == np.int16
    np.testing.assert_array_equal(resample_to(out_label, out_affine, affine, SHAPE), label)
    np.testing.assert_array_equal(resample_to(out_image, out_affine, affine, SHAPE), image)
    meta = read_dataset_json(tmp_path / "out")
    assert meta["name"] == "3Dircadb" and meta["numTraining"] == 1
    assert meta["labels"] == {"background": 0, "liver": 1, "tumor": 2}


def test_patients_sorted_numerically(tmp_path):
    for n in (10, 2, 1):
        write_patient(tmp_path / "src", n)
    (tmp_path / "src" / "notes").mkdir()  # not a patient: ignored
    assert convert_ircadb(tmp_path / "src", tmp_path / "out") == ["ircadb_001", "ircadb_002", "ircadb_010"]
    assert [c.case_id for c in list_cases(tmp_path / "out")] == ["ircadb_001", "ircadb_002", "ircadb_010"]
    # a single patient folder is accepted as well
    assert convert_ircadb(tmp_path / "src" / "3Dircadb1.2", tmp_path / "one") == ["ircadb_002"]


def _nested(p: Path) -> None:
    inner = p / "PATIENT_DICOM" / "PATIENT_DICOM"
    shutil.move(str(p / "PATIENT_DICOM"), str(p / "tmp"))
    inner.parent.mkdir()
    shutil.move(str(p / "tmp"), str(inner))


def _zip(p: Path, name: str, nested: bool) -> None:
    with zipfile.ZipFile(p / f"{name}.zip", "w") as zf:
        for f in sorted((p / name).rglob("*")):
            if f.is_file():
                rel = f.relative_to(p) if nested else f.relative_to(p / name)
                zf.write(f, str(rel))
    shutil.rmtree(p / name)


def _zipped(p: Path) -> None:
    _zip(p, "PATIENT_DICOM", nested=True)
    _zip(p, "MASKS_DICOM", nested=False)


def _tumor_name(p: Path) -> None:
    (p / "MASKS_DICOM" / "livertumor01").rename(p / "MASKS_DICOM" / "tumor")
    shutil.rmtree(p / "MASKS_DICOM" / "livertumor02")


def _labelled_and_renamed_files(p: Path) -> None:
    (p / "LABELLED_DICOM").mkdir()
    (p / "LABELLED_DICOM" / "image_0").write_bytes(b"ignored")
    # masks are matched by slice position, not by file name
    d = p / "MASKS_DICOM" / "liver"
    files = sorted(d.iterdir())
    for f in files:
        f.rename(d / f"tmp_{f.name}")
    for n, f in enumerate(sorted(d.iterdir(), reverse=True)):
        f.rename(d / f"image_{n}")


QUIRKS = [
    ("nested PATIENT_DICOM", _nested, "both"),
    ("zipped", _zipped, "both"),
    ("tumor folder (3Dircadb1.7)", _tumor_name, "t1"),
    ("LABELLED_DICOM, shuffled file names", _labelled_and_renamed_files, "both"),
]


@pytest.mark.parametrize("name, quirk, tumors", QUIRKS, ids=[q[0] for q in QUIRKS])
@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_layout_quirks(tmp_path, name, quirk, tumors, orientation):
    affine = AFFINES[orientation]
    image, masks, label = make_case()
    patient = write_patient(tmp_path, 7, affine)
    quirk(patient)
    if tumors == "t1":
        label[(label == 2) & masks["livertumor02"]] = 1
    out_image, out_label, out_affine = read_ircadb_patient(patient)
    np.testing.assert_array_equal(resample_to(out_label, out_affine, affine, SHAPE), label)
    np.testing.assert_array_equal(resample_to(out_image, out_affine, affine, SHAPE), image)
    assert (out_label == 1).sum() == (masks["liver"] & ~masks["livertumor01"] & ~masks["livertumor02"]).sum() + (
        masks["livertumor02"].sum() if tumors == "t1" else 0)


def test_cyst_stays_liver_and_tumor_outside_liver_warns(tmp_path, caplog):
    image, masks, _ = make_case()
    masks["livertumor03"] = np.zeros(SHAPE, bool)
    masks["livertumor03"][0:2, 0:2, 0] = True  # outside the liver
    patient = write_ircadb_patient(tmp_path / "3Dircadb1.1", image, AFFINES["RAS"], masks, patient_id="P1")
    with caplog.at_level(logging.WARNING, logger="liverseg.convert.ircadb"):
        _, label, _ = read_ircadb_patient(patient)
    assert np.all(label[masks["liverkyst01"]] == 1)
    assert np.all(label[masks["livertumor03"]] == 2)
    assert "4 tumor voxel(s) lie outside the liver mask" in caplog.text
    assert np.all(label[masks["bone"] & ~masks["liver"]] == 0)


def _corrupt_slice(p: Path) -> Path:
    (p / "PATIENT_DICOM" / "image_3").write_bytes(b"\x00garbage" * 100)
    return p / "PATIENT_DICOM" / "image_3"


def _truncated_slice(p: Path) -> Path:
    f = p / "PATIENT_DICOM" / "image_5"
    f.write_bytes(f.read_bytes()[:-200])
    return f


def _no_liver(p: Path) -> Path:
    shutil.rmtree(p / "MASKS_DICOM" / "liver")
    return p


def _mask_fewer_slices(p: Path) -> Path:
    (p / "MASKS_DICOM" / "liver" / "image_7").unlink()
    return p / "MASKS_DICOM" / "liver"


def _mask_shifted(p: Path) -> Path:
    _, masks, _ = make_case()
    shifted = AFFINES["RAS"].copy()
    shifted[2, 3] += 1.25  # half a slice
    write_dicom_series(p / "MASKS_DICOM" / "livertumor01", masks["livertumor01"].astype(np.uint8) * 255, shifted,
                       patient_id="P2", rescale=False, overwrite=True)
    return p / "MASKS_DICOM" / "livertumor01"


def _two_series(p: Path) -> Path:
    shutil.copy(p / "MASKS_DICOM" / "bone" / "image_2", p / "PATIENT_DICOM" / "image_2b")
    return p / "PATIENT_DICOM"


def _no_ct(p: Path) -> Path:
    for f in (p / "PATIENT_DICOM").iterdir():
        f.unlink()
    (p / "PATIENT_DICOM" / "readme.txt").write_text("empty")
    return p / "PATIENT_DICOM"


BAD_PATIENTS = [
    ("corrupt slice", _corrupt_slice, "DICOM"),
    ("truncated slice", _truncated_slice, "pixel data|DICOM"),
    ("missing liver mask", _no_liver, "no liver mask.*bone, liverkyst01, livertumor01, livertumor02"),
    ("mask with fewer slices", _mask_fewer_slices, "not on the CT grid: 7 slices vs 8"),
    ("mask shifted", _mask_shifted, "not on the CT grid: first slice"),
    ("two series in PATIENT_DICOM", _two_series, "2 series found"),
    ("no CT files", _no_ct, "no DICOM files"),
]


@pytest.mark.parametrize("name, damage, message", BAD_PATIENTS, ids=[b[0] for b in BAD_PATIENTS])
def test_bad_patient_leaves_earlier_cases(tmp_path, name, damage, message):
    for n in (1, 2, 3):
        write_patient(tmp_path / "src", n)
    culprit = damage(tmp_path / "src" / "3Dircadb1.2")
    with pytest.raises(InputError, match=message) as info:
        convert_ircadb(tmp_path / "src", tmp_path / "out")
    assert str(culprit) in str(info.value)
    assert case_files(tmp_path / "out") == {"imagesTr": ["ircadb_001_0000.nii.gz"], "labelsTr": ["ircadb_001.nii.gz"]}
    assert read_dataset_json(tmp_path / "out")["numTraining"] == 1

    with pytest.raises(InputError, match=r"1 of 3 patient\(s\) failed") as info:
        convert_ircadb(tmp_path / "src", tmp_path / "out2", keep_going=True)
    assert str(culprit) in str(info.value)
    assert case_files(tmp_path / "out2") == {
        "imagesTr": ["ircadb_001_0000.nii.gz", "ircadb_003_0000.nii.gz"],
        "labelsTr": ["ircadb_001.nii.gz", "ircadb_003.nii.gz"],
    }


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: root.mkdir(), "no 3D-IRCADb patient folders"),
        (lambda root: None, "folder not found"),
    ],
)
def test_bad_source(tmp_path, setup, message):
    setup(tmp_path / "src")
    with pytest.raises(InputError, match=message):
        convert_ircadb(tmp_path / "src", tmp_path / "out")


def test_write_patient_refuses_non_empty_folder(tmp_path):
    patient = write_patient(tmp_path, 1)
    with pytest.raises(FileExistsError):
        write_patient(tmp_path, 1)
    image, masks, _ = make_case()
    write_ircadb_patient(patient, image, AFFINES["LPS"], {"liver": masks["liver"]}, "P1", overwrite=True)
    assert sorted(p.name for p in (patient / "MASKS_DICOM").iterdir()) == ["liver"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3Dircadb1.1"]


def test_cli(tmp_path):
    write_patient(tmp_path / "src", 4)
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["ircadb", str(tmp_path / "src"), str(tmp_path / "out"), "--dataset-name", "IRC"])
    assert args.func(args) == 0
    assert read_dataset_json(tmp_path / "out")["name"] == "IRC"
    assert [c.case_id for c in list_cases(tmp_path / "out")] == ["ircadb_004"]
