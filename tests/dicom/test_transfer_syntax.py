"""Compressed series (JPEG 2000, JPEG-LS, JPEG lossless, RLE), transcoded from real CTs, read like uncompressed ones;
the header checks that keep a wrong volume from being stacked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from liverseg.dicom import read_dicom_series, write_dicom_series
from liverseg.errors import InputError
from tests.dicom.transcode import SYNTAXES, transcode_folder

REPO = Path(__file__).resolve().parents[2]
REAL_CT = REPO / "tests" / "data" / "dcmqi-ct3slice"
CT_FILES = ["01.dcm", "02.dcm", "03.dcm"]
PHANTOM_CT = REPO / "sample-data" / "3Dircadb-phantom" / "3Dircadb1.1" / "PATIENT_DICOM"


@pytest.mark.skipif(not (REAL_CT / "01.dcm").is_file(), reason=f"real CT test data not found at {REAL_CT}")
@pytest.mark.parametrize("syntax", list(SYNTAXES))
def test_real_ct_compressed_equals_uncompressed(tmp_path, syntax):
    ref, ref_affine, _ = read_dicom_series(REAL_CT)
    folder = transcode_folder(REAL_CT, tmp_path / syntax, syntax, CT_FILES)
    assert pydicom.dcmread(str(folder / "01.dcm")).file_meta.TransferSyntaxUID == SYNTAXES[syntax][1]
    out, affine, meta = read_dicom_series(folder)
    assert meta["transfer_syntax"] == SYNTAXES[syntax][1]
    assert out.dtype == ref.dtype
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_allclose(affine, ref_affine)
    # pydicom (with the GDCM / pylibjpeg plugins) decodes them too: what highdicom and the app's DICOMweb path use
    ds = pydicom.dcmread(str(folder / "02.dcm"))
    np.testing.assert_array_equal(ds.pixel_array, pydicom.dcmread(str(REAL_CT / "02.dcm")).pixel_array)


@pytest.mark.skipif(not PHANTOM_CT.is_dir(), reason=f"sample DICOM folder not found at {PHANTOM_CT}")
@pytest.mark.parametrize("syntax", ["jpeg2000", "rle"])
def test_sample_series_compressed(tmp_path, syntax):
    names = [f"image_{k}" for k in range(6)]  # six consecutive slices
    ref, ref_affine, _ = read_dicom_series([PHANTOM_CT / n for n in names])
    out, affine, _ = read_dicom_series(transcode_folder(PHANTOM_CT, tmp_path / syntax, syntax, names))
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_allclose(affine, ref_affine)


def _pattern(shape=(20, 16, 6)) -> np.ndarray:
    i, j, k = np.indices(shape)
    return (-1000 + 7 * i + 31 * j + 211 * k).astype(np.int16)


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_gantry_tilt_keeps_true_positions(tmp_path, caplog, orientation):
    """Evenly spaced but sheared slices (tilted gantry): the affine places every slice where its header says."""
    sign = 1.0 if orientation == "RAS" else -1.0
    affine = np.array([[sign * 0.8, 0, 0, 3.0], [0, sign * 0.8, 0.6, -2.0], [0, 0, 2.5, 10.0], [0, 0, 0, 1]])
    write_dicom_series(tmp_path / "ct", _pattern(), affine, patient_id="T")
    out, out_affine, meta = read_dicom_series(tmp_path / "ct")
    np.testing.assert_array_equal(out, _pattern())
    np.testing.assert_allclose(out_affine, affine, atol=1e-4)
    assert "gantry tilt" in caplog.text
    for k, ds in enumerate(meta["headers"]):
        lps = np.array([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose((out_affine @ [0, 0, k, 1])[:3], lps * [-1, -1, 1], atol=1e-3)


def _shift_slice(folder: Path, name: str, mm: float) -> None:
    ds = pydicom.dcmread(str(folder / name))
    ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [
        float(ds.ImagePositionPatient[2]) + mm
    ]
    ds.save_as(str(folder / name))


def test_uneven_spacing_refused(tmp_path):
    write_dicom_series(tmp_path / "ct", _pattern(), np.diag([0.8, 0.8, 2.5, 1.0]), patient_id="U")
    _shift_slice(tmp_path / "ct", "image_3", 0.8)
    with pytest.raises(InputError, match="uneven slice spacing.*image_3"):
        read_dicom_series(tmp_path / "ct")


def test_multi_series_folder_lists_series(tmp_path):
    write_dicom_series(tmp_path / "a", _pattern(), np.diag([0.8, 0.8, 2.5, 1.0]), patient_id="M",
                       series_description="art")
    write_dicom_series(tmp_path / "b", _pattern() + 3, np.diag([0.8, 0.8, 2.5, 1.0]), patient_id="M",
                       series_description="ven")
    for f in (tmp_path / "b").iterdir():
        f.rename(tmp_path / "a" / f"b_{f.name}")
    with pytest.raises(InputError, match=r"2 series found.*'art'.*'ven'"):
        read_dicom_series(tmp_path / "a")


def test_undecodable_pixels_name_the_file(tmp_path):
    folder = transcode_folder(REAL_CT, tmp_path / "j2k", "jpeg2000", CT_FILES)
    data = bytearray((folder / "02.dcm").read_bytes())
    start = data.index(b"\xff\x4f\xff\x51")  # the JPEG 2000 code stream's SOC + SIZ markers
    data[start : start + 64] = b"\x00" * 64  # a broken code stream in an intact file
    (folder / "02.dcm").write_bytes(bytes(data))
    with pytest.raises(InputError, match="02.dcm: cannot decode the pixel data"):
        read_dicom_series(folder)
