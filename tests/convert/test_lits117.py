"""Tests of liverseg.convert.lits117 on the real LiTS case 117 from the PyPI wheel, plus synthetic bad MRC files."""

from __future__ import annotations

import argparse
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from liverseg.convert import lits117
from liverseg.convert.lits117 import (
    NOMINAL_SPACING,
    WheelDownloadError,
    convert_lits117,
    fetch_lits117_wheel,
    read_lits117,
    read_mrc,
)
from liverseg.dataset import read_dataset_json, write_case, write_dataset_json
from liverseg.errors import InputError
from liverseg.imageio import orientation_of, read_nifti, spacing_of

WHEEL_DIR = Path(__file__).resolve().parents[2] / ".cache" / "wheels"
MEMBER = "liver_ct_segmentation_package/data/{}"

# Voxel counts per label value, counted (np.bincount) from the wheel's lab_117.mrc.
LABEL_COUNTS = {0: 1_481_801, 1: 485_268, 2: 130_083}


@pytest.fixture(scope="module")
def wheel() -> Path:
    try:
        return fetch_lits117_wheel(WHEEL_DIR)
    except WheelDownloadError as e:
        pytest.skip(f"cannot download the LiTS-117 wheel: {e}")


@pytest.fixture(scope="module")
def case(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    return read_lits117(wheel)


@pytest.fixture(scope="module")
def converted(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lits117")
    assert convert_lits117(wheel, out) == "lits_117"
    return out


def raw_member(wheel: Path, name: str) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(MEMBER.format(name))


def test_reader_matches_independent_raw_read(wheel: Path, case: tuple[np.ndarray, np.ndarray]) -> None:
    image, label = case
    assert image.shape == label.shape == (128, 128, 128)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    # independent of the reader: header fields and data read straight from the bytes
    for name, mode, dtype, got in (("img_117.mrc", 2, "<f4", image), ("lab_117.mrc", 6, "<u2", label)):
        raw = raw_member(wheel, name)
        nx, ny, nz, m = struct.unpack("<4i", raw[:16])
        (nsymbt,) = struct.unpack("<i", raw[92:96])
        assert (nx, ny, nz, m, nsymbt) == (128, 128, 128, mode, 0)
        data = np.frombuffer(raw, dtype=dtype, offset=1024).reshape(nz, ny, nx)
        np.testing.assert_array_equal(got, data)
        if name == "lab_117.mrc":
            assert dict(enumerate(np.bincount(data.ravel()).tolist())) == LABEL_COUNTS
    assert dict(zip(*(v.tolist() for v in np.unique(label, return_counts=True)))) == LABEL_COUNTS


def test_hu_and_label_geometry_plausible(case: tuple[np.ndarray, np.ndarray]) -> None:
    image, label = case
    assert -1100 <= image.min() < -900 and 1000 < image.max() < 3100  # air ... cortical bone / contrast
    liver_median = float(np.median(image[label == 1]))
    tumor_median = float(np.median(image[label == 2]))
    assert 50 <= liver_median <= 200  # observed 118.6 HU (portal venous phase)
    assert tumor_median < liver_median  # observed 69.1 HU: hypodense lesions
    liver = np.argwhere(label == 1)
    lo, hi = liver.min(axis=0), liver.max(axis=0)
    tumor = np.argwhere(label == 2)
    assert np.all(tumor >= lo) and np.all(tumor <= hi)


def world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ ijk + affine[:3, 3]


def test_converted_geometry_in_world_space(converted: Path, case: tuple[np.ndarray, np.ndarray]) -> None:
    image, affine = read_nifti(converted / "imagesTr" / "lits_117_0000.nii.gz")
    label, label_affine = read_nifti(converted / "labelsTr" / "lits_117.nii.gz")
    np.testing.assert_array_equal(label, case[1])
    np.testing.assert_array_equal(image, np.rint(case[0]).astype(np.int16))
    np.testing.assert_allclose(spacing_of(affine), NOMINAL_SPACING, rtol=1e-6)
    np.testing.assert_allclose(label_affine, affine)
    assert orientation_of(affine) == "LPS"
    centre = world(affine, np.array([63.5, 63.5, 63.5]))
    np.testing.assert_allclose(centre, 0, atol=1e-3)
    liver = world(affine, np.argwhere(label == 1).mean(axis=0))
    spine = world(affine, np.argwhere(image > 400).mean(axis=0))  # bone: vertebrae and ribs
    # RAS+: +x = patient's right, +y = anterior, +z = superior
    assert liver[0] > centre[0] + 10  # the liver lies on the patient's right ...
    assert liver[0] > spine[0] + 20  # ... of the spine
    assert spine[1] < liver[1] - 20  # the spine is posterior to the liver
    assert liver[2] > centre[2]  # the liver's bulk is superior; it tapers to the right lobe's inferior tip
    meta = read_dataset_json(converted)
    assert meta["numTraining"] == 1 and meta["lits117"]["lits_117"]["spacing_mm"] == list(NOMINAL_SPACING)


@pytest.mark.parametrize("layout", ["mrc_files", "data_dir", "extracted_wheel"])
def test_folder_sources(wheel: Path, case: tuple[np.ndarray, np.ndarray], tmp_path: Path, layout: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for name in ("img_117.mrc", "lab_117.mrc"):
            target = {
                "mrc_files": tmp_path / name,
                "data_dir": tmp_path / "data" / name,
                "extracted_wheel": tmp_path / MEMBER.format(name),
            }[layout]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(MEMBER.format(name)))
    image, label = read_lits117(tmp_path)
    np.testing.assert_array_equal(image, case[0])
    np.testing.assert_array_equal(label, case[1])


def test_numpy_fallback_matches_mrcfile(wheel: Path, case: tuple[np.ndarray, np.ndarray], monkeypatch) -> None:
    pytest.importorskip("mrcfile", reason="mrcfile not installed: only the numpy decoder exists to compare")
    monkeypatch.setitem(sys.modules, "mrcfile.mrcinterpreter", None)  # makes the import fail
    image, label = read_lits117(wheel)
    np.testing.assert_array_equal(image, case[0])
    np.testing.assert_array_equal(label, case[1])


def test_test_split_keeps_existing_cases_and_dataset_fields(wheel: Path, tmp_path: Path) -> None:
    out = tmp_path / "Dataset010_Mixed"
    write_case(out, "other_001", np.zeros((4, 4, 4)), np.eye(4), np.zeros((4, 4, 4), np.uint8))
    write_dataset_json(out, "Dataset010_Mixed", "mine", reference="someone")
    convert_lits117(wheel, out, split="Ts", case_id="liver_117", spacing=(1.0, 2.0, 3.0))
    assert (out / "imagesTs" / "liver_117_0000.nii.gz").is_file() and (out / "labelsTs" / "liver_117.nii.gz").is_file()
    meta = read_dataset_json(out)
    assert (meta["name"], meta["description"], meta["reference"], meta["numTraining"]) == (
        "Dataset010_Mixed", "mine", "someone", 1,
    )  # fmt: skip
    _, affine = read_nifti(out / "imagesTs" / "liver_117_0000.nii.gz")
    np.testing.assert_allclose(spacing_of(affine), (1.0, 2.0, 3.0), rtol=1e-6)


def test_cli_spacing_override(wheel: Path, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    lits117.register_cli(parser.add_subparsers())
    args = parser.parse_args(["lits117", str(tmp_path / "o"), "--source", str(wheel), "--spacing", "1.6", "1.6", "2"])
    assert args.func(args) == 0
    _, affine = read_nifti(tmp_path / "o" / "imagesTr" / "lits_117_0000.nii.gz")
    np.testing.assert_allclose(spacing_of(affine), (1.6, 1.6, 2.0), rtol=1e-6)


def test_fetch_uses_cached_wheel_without_pip(wheel: Path, monkeypatch) -> None:
    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(lits117.subprocess, "run", no_pip)
    assert fetch_lits117_wheel(wheel.parent) == wheel


# ---- synthetic MRC files: good ones decode in the right order, bad ones raise InputError naming the file ----


def mrc_bytes(
    data: np.ndarray, mode: int = 2, nsymbt: int = 0, dims: tuple[int, int, int] | None = None, stamp: bytes = b"MAP "
) -> bytes:
    """A minimal little-endian MRC2014 file of ``data`` (C order, first axis slowest = NZ)."""
    nz, ny, nx = dims[::-1] if dims else data.shape
    header = bytearray(1024)
    struct.pack_into("<4i", header, 0, nx, ny, nz, mode)
    struct.pack_into("<3i", header, 64, 1, 2, 3)
    struct.pack_into("<i", header, 92, nsymbt)
    header[208:212] = stamp
    header[212:214] = b"\x44\x44"
    struct.pack_into("<i", header, 108, 20140)
    return bytes(header) + b"\x00" * nsymbt + data.tobytes()


def test_read_mrc_small_file_order(tmp_path: Path) -> None:
    data = np.arange(60, dtype="<f4").reshape(3, 4, 5)
    path = tmp_path / "x.mrc"
    path.write_bytes(mrc_bytes(data, nsymbt=16))
    np.testing.assert_array_equal(read_mrc(path), data)


GOOD_LABEL = np.zeros((3, 4, 5), "<u2")
GOOD_IMAGE = np.zeros((3, 4, 5), "<f4")
BAD_MRC = {
    "text_file": b"just some text, not an MRC volume" * 40,
    "short": b"MAP " * 10,
    "truncated": mrc_bytes(GOOD_IMAGE)[:-7],
    "too_long": mrc_bytes(GOOD_IMAGE) + b"\x00" * 4,
    "wrong_dims": mrc_bytes(GOOD_IMAGE, dims=(5, 4, 4)),
    "zero_dim": mrc_bytes(GOOD_IMAGE, dims=(5, 0, 3)),
    "bad_mode": mrc_bytes(GOOD_IMAGE, mode=99),
    "no_map_stamp": mrc_bytes(GOOD_IMAGE, stamp=b"\x00\x00\x00\x00"),
    "negative_nsymbt": mrc_bytes(GOOD_IMAGE, nsymbt=0)[:92] + struct.pack("<i", -8) + mrc_bytes(GOOD_IMAGE)[96:],
}


@pytest.mark.parametrize("name", sorted(BAD_MRC))
def test_bad_mrc_raises(tmp_path: Path, name: str) -> None:
    (tmp_path / "img_117.mrc").write_bytes(BAD_MRC[name])
    (tmp_path / "lab_117.mrc").write_bytes(mrc_bytes(GOOD_LABEL, mode=6))
    with pytest.raises(InputError, match="img_117.mrc"):
        read_lits117(tmp_path)


@pytest.mark.parametrize(
    "label, message",
    [
        (np.full((3, 4, 5), 3, "<u2"), "unexpected label values"),
        (np.zeros((3, 4, 6), "<u2"), "differs from image"),
    ],
)
def test_bad_label_raises(tmp_path: Path, label: np.ndarray, message: str) -> None:
    (tmp_path / "img_117.mrc").write_bytes(mrc_bytes(GOOD_IMAGE))
    (tmp_path / "lab_117.mrc").write_bytes(mrc_bytes(label, mode=6))
    with pytest.raises(InputError, match=message) as err:
        read_lits117(tmp_path)
    assert "lab_117.mrc" in str(err.value)


@pytest.mark.parametrize("setup", ["empty_dir", "only_image", "not_zip", "zip_without_members", "missing"])
def test_bad_sources_raise(tmp_path: Path, setup: str) -> None:
    src = tmp_path / "src"
    if setup == "empty_dir":
        src.mkdir()
    elif setup == "only_image":
        src.mkdir()
        (src / "img_117.mrc").write_bytes(mrc_bytes(GOOD_IMAGE))
    elif setup == "not_zip":
        src = tmp_path / "x.whl"
        src.write_bytes(b"PK not really")
    elif setup == "zip_without_members":
        src = tmp_path / "x.whl"
        with zipfile.ZipFile(src, "w") as zf:
            zf.writestr("other/file.txt", "x")
    with pytest.raises(InputError) as err:
        read_lits117(src)
    assert str(src) in str(err.value)


def test_corrupt_cached_wheel_is_rejected(tmp_path: Path) -> None:
    (tmp_path / lits117.WHEEL_FILENAME).write_bytes(b"not the wheel")
    with pytest.raises(InputError, match="SHA-256"):
        fetch_lits117_wheel(tmp_path)


@pytest.mark.parametrize("spacing", [(0, 1, 1), (1, 1), (1, -1, 1), (1, float("nan"), 1)])
def test_bad_spacing_raises(tmp_path: Path, spacing) -> None:
    with pytest.raises(ValueError, match="spacing"):
        convert_lits117(tmp_path, tmp_path / "out", spacing=spacing)
