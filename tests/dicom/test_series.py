"""DICOM series reading / writing: round trips in world space and the inputs that must be refused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from liverseg.dicom import read_dicom_series, write_dicom_series
from liverseg.errors import InputError
from liverseg.imageio import orientation_of
from tests.conftest import resample_to

REAL_CT = Path(
    os.environ.get("LIVERSEG_DCMQI_DATA", Path(__file__).resolve().parents[1] / "data" / "dcmqi-ct3slice")
)
SHAPE = (24, 20, 8)


def _affine(linear, origin) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.asarray(linear, dtype=float)
    a[:3, 3] = origin
    return a


def _rotation_z(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


AFFINES = {
    "RAS": _affine(np.diag([0.7, 0.9, 2.5]), [-10.0, 20.0, 30.0]),
    "LPS": _affine(np.diag([-0.7, -0.9, 2.5]), [12.5, -3.0, -40.0]),
    "LAS": _affine(np.diag([-0.8, 1.1, 3.0]), [5.0, -7.0, 11.0]),
    "RAI": _affine(np.diag([0.75, 0.75, -1.5]), [0.0, 0.0, 100.0]),
    "coronal": _affine([[0.8, 0, 0], [0, 0, 2.0], [0, -0.6, 0]], [1.0, 2.0, 3.0]),
    "oblique": _affine(_rotation_z(30) @ np.diag([0.7, 0.9, 2.5]), [-1.0, 4.0, 9.0]),
}


def pattern(shape=SHAPE) -> np.ndarray:
    """Non-symmetric HU-like pattern: any flip or transposition changes it."""
    i, j, k = np.indices(shape)
    return (-1000 + 7 * i + 31 * j + 211 * k + (i * j) % 5).astype(np.int16)


@pytest.mark.parametrize("name", list(AFFINES))
def test_round_trip_world_space(tmp_path, name):
    affine = AFFINES[name]
    array = pattern()
    files = write_dicom_series(tmp_path / "ct", array, affine, patient_id="P1")
    assert [f.name for f in files] == [f"image_{k}" for k in range(SHAPE[2])]
    out, out_affine, meta = read_dicom_series(tmp_path / "ct")
    assert out.shape == array.shape
    assert meta["modality"] == "CT" and meta["patient_id"] == "P1"
    np.testing.assert_array_equal(resample_to(out, out_affine, affine, SHAPE), array)
    if np.linalg.det(affine[:3, :3]) > 0:  # slice axis along the DICOM normal: identical voxel for voxel
        np.testing.assert_allclose(out_affine, affine, atol=1e-6)
        np.testing.assert_array_equal(out, array)
        assert [f.name for f in meta["files"]] == [f.name for f in files]
    else:  # slices come back sorted along the normal: k reversed, same world positions
        assert orientation_of(out_affine)[:2] == orientation_of(affine)[:2]
        np.testing.assert_array_equal(out, array[:, :, ::-1])


@pytest.mark.skipif(not (REAL_CT / "01.dcm").is_file(), reason=f"real CT test data not found at {REAL_CT}")
def test_real_ct_series():
    image, affine, meta = read_dicom_series(REAL_CT)  # the SEG (liver.dcm) and text files in the folder are skipped
    assert image.shape == (512, 512, 3)
    assert (int(image.min()), int(image.max())) == (-3024, 1381)
    assert [f.name for f in meta["files"]] == ["03.dcm", "02.dcm", "01.dcm"]  # along the normal (+z LPS = superior)
    assert orientation_of(affine) == "LPS"
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.810547, 0.810547, 1.0], atol=1e-6)
    np.testing.assert_allclose(affine[:3, 3], [235.199997, 226.800003, -128.690002], atol=1e-5)
    for name in ("01.dcm", "02.dcm", "03.dcm"):  # each slice sits where its own ImagePositionPatient says
        ds = pydicom.dcmread(str(REAL_CT / name))
        lps = np.array([float(v) for v in ds.ImagePositionPatient])
        ijk = np.linalg.inv(affine) @ np.append(lps * [-1, -1, 1], 1)
        np.testing.assert_allclose(ijk[:2], [0, 0], atol=1e-4)
        k = int(round(ijk[2]))
        np.testing.assert_array_equal(image[:, :, k], ds.pixel_array.T.astype(np.int32) - 1024)


@pytest.mark.parametrize(
    "array, rescale, dtype",
    [
        (np.where(pattern() > 0, 255, 0).astype(np.uint8), False, np.uint8),
        ((pattern() + 1000).astype(np.uint16) * 3, False, np.uint16),
        (pattern().astype(np.float32) + 0.2, True, np.int16),
        (np.full(SHAPE, 3000, dtype=np.int16), True, np.int16),
    ],
)
def test_stored_types(tmp_path, array, rescale, dtype):
    write_dicom_series(tmp_path / "s", array, AFFINES["RAS"], patient_id="P", rescale=rescale)
    ds = pydicom.dcmread(str(tmp_path / "s" / "image_0"))
    assert ds.pixel_array.dtype == dtype
    assert ("RescaleIntercept" in ds) == rescale
    out, _, _ = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(out, np.rint(array))


def test_rescale_slope_applied(tmp_path):
    write_dicom_series(tmp_path / "s", pattern(), AFFINES["RAS"], patient_id="P")
    for f in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(str(f))
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-10.25"
        ds.save_as(str(f))
    out, _, _ = read_dicom_series(tmp_path / "s")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (pattern().astype(np.float64) + 1024) * 0.5 - 10.25)


def test_deterministic_uids_and_overwrite(tmp_path):
    write_dicom_series(tmp_path / "a", pattern(), AFFINES["RAS"], patient_id="P7", series_description="x")
    write_dicom_series(tmp_path / "b", pattern(), AFFINES["RAS"], patient_id="P7", series_description="x")
    ua = [pydicom.dcmread(str(tmp_path / "a" / f"image_{k}")).SOPInstanceUID for k in range(SHAPE[2])]
    ub = [pydicom.dcmread(str(tmp_path / "b" / f"image_{k}")).SOPInstanceUID for k in range(SHAPE[2])]
    assert ua == ub and len(set(ua)) == SHAPE[2]
    with pytest.raises(FileExistsError):
        write_dicom_series(tmp_path / "a", pattern(), AFFINES["RAS"], patient_id="P7")
    write_dicom_series(tmp_path / "a", pattern()[:, :, :3], AFFINES["RAS"], patient_id="P7", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["image_0", "image_1", "image_2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary folders left


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    original = pydicom.dataset.Dataset.save_as

    def failing_save_as(self, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 4:
            raise OSError("disk full")
        return original(self, filename, *args, **kwargs)

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", failing_save_as)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_series(tmp_path / "ct", pattern(), AFFINES["RAS"], patient_id="P")
    assert list(tmp_path.iterdir()) == []


def test_skips_obvious_non_dicom_files(tmp_path):
    write_dicom_series(tmp_path / "ct", pattern(), AFFINES["LPS"], patient_id="P")
    (tmp_path / "ct" / "DICOMDIR").write_bytes(b"\0" * 300)
    (tmp_path / "ct" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "ct" / "notes.txt").write_text("scanner notes")
    out, _, meta = read_dicom_series(tmp_path / "ct")
    assert out.shape == SHAPE and len(meta["files"]) == SHAPE[2]


def test_file_list_and_series_uid(tmp_path):
    write_dicom_series(tmp_path / "a", pattern(), AFFINES["RAS"], patient_id="P", series_description="a")
    write_dicom_series(tmp_path / "b", pattern() + 5, AFFINES["RAS"], patient_id="P", series_description="b")
    for f in (tmp_path / "b").iterdir():
        shutil.copy(f, tmp_path / "a" / f"b_{f.name}")
    uid_b = pydicom.dcmread(str(tmp_path / "b" / "image_0")).SeriesInstanceUID
    out, _, meta = read_dicom_series(tmp_path / "a", series_uid=uid_b)
    np.testing.assert_array_equal(out, pattern() + 5)
    assert meta["series_uid"] == uid_b
    out, _, _ = read_dicom_series(sorted((tmp_path / "b").iterdir()))
    np.testing.assert_array_equal(out, pattern() + 5)


def _edit(path: Path, **values) -> None:
    ds = pydicom.dcmread(str(path))
    for k, v in values.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(str(path))


def _garbage(d: Path) -> Path:
    (d / "image_3").write_bytes(bytes(range(256)) * 8)
    return d / "image_3"


def _truncate(d: Path) -> Path:
    data = (d / "image_2").read_bytes()
    (d / "image_2").write_bytes(data[: len(data) - 300])
    return d / "image_2"


def _no_pixels(d: Path) -> Path:
    _edit(d / "image_5", PixelData=None)
    return d / "image_5"


def _second_series(d: Path) -> Path:
    _edit(d / "image_4", SeriesInstanceUID=pydicom.uid.generate_uid(entropy_srcs=["other"]))
    return d


def _missing_slice(d: Path) -> Path:
    (d / "image_4").unlink()
    return d


def _duplicate(d: Path) -> Path:
    shutil.copy(d / "image_4", d / "image_4_copy")
    _edit(d / "image_4_copy", SOPInstanceUID=pydicom.uid.generate_uid(entropy_srcs=["dup"]))
    return d


def _orientation(d: Path) -> Path:
    _edit(d / "image_6", ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    return d / "image_6"


def _spacing(d: Path) -> Path:
    _edit(d / "image_1", PixelSpacing=[0.5, 0.5])
    return d / "image_1"


def _size(d: Path) -> Path:
    ds = pydicom.dcmread(str(d / "image_2"))
    ds.Rows = ds.Rows - 2
    ds.PixelData = ds.PixelData[: ds.Rows * ds.Columns * 2]
    ds.save_as(str(d / "image_2"))
    return d / "image_2"


def _empty(d: Path) -> Path:
    for f in d.iterdir():
        f.unlink()
    (d / "README.txt").write_text("nothing here")
    return d


def _single_no_thickness(d: Path) -> Path:
    for f in d.iterdir():
        if f.name != "image_0":
            f.unlink()
    _edit(d / "image_0", SliceThickness=None, SpacingBetweenSlices=None)
    return d / "image_0"


BAD_SERIES = [
    ("garbage bytes", _garbage, "not a DICOM file|not a readable DICOM"),
    ("truncated", _truncate, "pixel data|not a readable DICOM"),
    ("no pixel data", _no_pixels, "without pixel data"),
    ("two series", _second_series, "2 series found"),
    ("missing slice", _missing_slice, "missing slice"),
    ("duplicate position", _duplicate, "duplicate slice position"),
    ("orientation", _orientation, "ImageOrientationPatient"),
    ("pixel spacing", _spacing, "PixelSpacing"),
    ("rows/columns", _size, "size"),
    ("no dicom", _empty, "no DICOM files"),
    ("single slice without thickness", _single_no_thickness, "single-slice"),
]


@pytest.mark.parametrize("name, damage, message", BAD_SERIES, ids=[b[0] for b in BAD_SERIES])
def test_bad_series_raise(tmp_path, name, damage, message):
    write_dicom_series(tmp_path / "ct", pattern(), AFFINES["RAS"], patient_id="P")
    culprit = damage(tmp_path / "ct")
    with pytest.raises(InputError, match=message) as info:
        read_dicom_series(tmp_path / "ct")
    assert str(culprit) in str(info.value)


def test_single_slice_uses_thickness(tmp_path):
    write_dicom_series(tmp_path / "ct", pattern()[:, :, :1], AFFINES["RAS"], patient_id="P")
    _edit(tmp_path / "ct" / "image_0", SliceThickness="4.0", SpacingBetweenSlices=None)
    out, affine, _ = read_dicom_series(tmp_path / "ct")
    assert out.shape == (SHAPE[0], SHAPE[1], 1)
    np.testing.assert_allclose(affine[:3, 2], [0, 0, 4.0])


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"array": np.zeros((4, 4))}, "3D"),
        ({"array": np.full(SHAPE, 0.5), "rescale": False}, "integers"),
        ({"array": np.full(SHAPE, -3, dtype=np.int16), "rescale": False}, "outside"),
        ({"affine": np.zeros((4, 4))}, "zero-length"),
        ({"affine": _affine([[1, 1, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0])}, "orthogonal"),
        ({"file_pattern": "slice"}, "k"),
    ],
)
def test_write_bad_arguments(tmp_path, kwargs, error):
    args = {"array": pattern(), "affine": AFFINES["RAS"], "patient_id": "P"} | kwargs
    with pytest.raises(ValueError, match=error):
        write_dicom_series(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()
