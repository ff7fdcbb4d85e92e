# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""scripts.io.FastNiftiReader: the same image and metadata as MONAI's NibabelReader, for every NIfTI it reads
itself (slab boundaries, gzip members, dtypes, ISA-L or zlib) and for those it hands back to NibabelReader."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage

from tests.bundles.test_networks import BUNDLE_ROOT  # noqa: F401  (puts the bundle on sys.path)

# isort: split
import scripts.io as sio  # noqa: E402

LPS = np.diag([-0.8, -0.8, 2.5, 1.0])
LPS[:3, 3] = [120.0, 110.0, -60.0]


def write(path, array, affine=LPS, slope=None, endianness=None):
    img = nib.Nifti1Image(array, affine, header=nib.Nifti1Header(endianness=endianness) if endianness else None)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    nib.save(img, str(path))
    return str(path)


def load_both(path, dtype=None):
    stock = LoadImage(image_only=True, dtype=dtype)(path)
    fast = LoadImage(image_only=True, dtype=dtype, reader=sio.FastNiftiReader)(path)
    return stock, fast


def assert_same(stock, fast):
    assert fast.dtype == stock.dtype and fast.shape == stock.shape
    assert torch.equal(fast.as_tensor(), stock.as_tensor())
    assert fast.is_contiguous()
    assert set(fast.meta) == set(stock.meta)
    for key in ("affine", "original_affine", "spatial_shape", "pixdim"):
        np.testing.assert_array_equal(np.asarray(fast.meta[key]), np.asarray(stock.meta[key]))


def ct(shape, dtype=np.int16, seed=0):
    return np.random.default_rng(seed).integers(-1000, 1500, shape).astype(dtype)


@pytest.fixture(params=[True, False], ids=["isal", "zlib"])
def inflater(request, monkeypatch):
    if request.param and not sio.has_isal:
        pytest.skip("the isal package is not installed (setup.cfg installs it)")
    monkeypatch.setattr(sio, "has_isal", request.param)
    return request.param


@pytest.mark.parametrize("slab_bytes", [1, 3 * 37 * 29 * 2, 2**30])  # one slice per slab, 3 (last one partial), all
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_same_array_and_metadata_as_nibabel_reader(tmp_path, monkeypatch, inflater, slab_bytes, suffix):
    monkeypatch.setattr(sio, "SLAB_BYTES", slab_bytes)
    path = write(tmp_path / f"ct{suffix}", ct((37, 29, 11)))
    calls = []
    monkeypatch.setattr(sio, "read_nifti_c_order", lambda *a: calls.append(a) or READ(*a))
    assert_same(*load_both(path))
    assert len(calls) == 1  # read by the fast path, not handed back


READ = sio.read_nifti_c_order


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_dtypes(tmp_path, dtype):
    assert_same(*load_both(write(tmp_path / "x.nii.gz", ct((16, 12, 9), dtype))))


def test_multi_member_gzip(tmp_path):
    """A .nii.gz of two gzip members (concatenated streams) is one file to gzip readers: the same here."""
    single = write(tmp_path / "single.nii", ct((20, 18, 7)))
    raw = open(single, "rb").read()
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    stock = LoadImage(image_only=True, dtype=None)(single)
    fast = LoadImage(image_only=True, dtype=None, reader=sio.FastNiftiReader)(str(path))
    assert torch.equal(fast.as_tensor(), stock.as_tensor())


@pytest.mark.parametrize(
    "make",
    [
        lambda p: write(p / "scaled.nii.gz", ct((10, 9, 8)), slope=2.0),  # scl_slope: nibabel scales to float
        lambda p: write(p / "four_d.nii.gz", ct((10, 9, 8, 2))),
        lambda p: write(p / "big_endian.nii.gz", ct((10, 9, 8)), endianness=">"),
    ],
    ids=["scaled", "4d", "big-endian"],
)
def test_other_images_go_to_nibabel_reader(tmp_path, monkeypatch, make):
    path = make(tmp_path)
    monkeypatch.setattr(sio, "read_nifti_c_order", lambda *a: pytest.fail("the fast path took an image it must not"))
    assert_same(*load_both(path, dtype=np.float32))  # float32: torch takes no big-endian data as it is


def test_truncated_file_raises(tmp_path, inflater):
    path = write(tmp_path / "ct.nii.gz", ct((64, 64, 16)))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises((ValueError, EOFError, OSError), match="truncated|ended|end"):
        LoadImage(image_only=True, reader=sio.FastNiftiReader)(path)


def test_dicom_folder_falls_through_to_other_readers(tmp_path):
    """The bundle's LoadImaged names this reader; a DICOM series (a folder) is still read, by ITK."""
    import shutil
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "data" / "dcmqi-ct3slice"
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        shutil.copy(source / name, tmp_path / name)
    img = LoadImage(image_only=True, reader=sio.FastNiftiReader)(str(tmp_path))
    assert img.shape[-1] == 3


@pytest.mark.timeout(120)  # a regression hangs in worker.join()
def test_an_error_while_reordering_stops_the_inflating_thread(tmp_path, monkeypatch):
    """Ctrl-C or an error in the reading thread must not leave it waiting for the decompressing one forever."""
    import threading

    monkeypatch.setattr(sio, "SLAB_BYTES", 16 * 16 * 2)  # one slice per slab: the producer is ahead and waits
    path = write(tmp_path / "ct.nii.gz", ct((16, 16, 40)))

    class Boom(Exception):
        pass

    copies = []

    def failing_copy(self, src):
        copies.append(1)
        if len(copies) == 3:
            raise Boom
        return original(self, src)

    original = torch.Tensor.copy_
    monkeypatch.setattr(torch.Tensor, "copy_", failing_copy)
    with pytest.raises(Boom):
        sio.read_nifti_c_order(path, (16, 16, 40), np.int16, 352, True)
    assert not any(t.name == "nifti-inflate" for t in threading.enumerate())
