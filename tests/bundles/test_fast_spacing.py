"""``FastSpacingd`` (scripts/transforms.py) against MONAI's ``Spacingd``: the same voxels (up to float rounding), the
same affine, shape and trace, the same inverse, and MONAI's own code wherever the separable path does not apply."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from tests.conftest import BUNDLE

sys.path.insert(0, str(BUNDLE))

from monai.data import MetaTensor  # noqa: E402
from monai.transforms import Compose, Invertd, Orientationd, Spacingd  # noqa: E402

import scripts.transforms as bundle_transforms  # noqa: E402
from scripts.transforms import FastSpacingd, separable_linear_resample  # noqa: E402


def image(shape, diag, origin=(10.5, -3.2, 7.0), channels=1, seed=0, rotate_deg=0.0, dtype=np.int16):
    rng = np.random.default_rng(seed)
    nd = len(shape)
    aff = np.eye(nd + 1)
    aff[:nd, :nd] = np.diag(diag)
    aff[:nd, -1] = origin[:nd]
    if rotate_deg:
        t = np.radians(rotate_deg)
        rot = np.eye(nd + 1)
        rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        aff = rot @ aff
    data = rng.integers(-1000, 1000, size=(channels, *shape)).astype(dtype)
    return MetaTensor(torch.as_tensor(data), affine=torch.as_tensor(aff))


def no_grid_sample(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("grid_sample called: the separable path was not taken")

    monkeypatch.setattr(torch.nn.functional, "grid_sample", fail)


def assert_same_as_monai(img, ref_t, fast_t, atol):
    ref = ref_t({"image": img.clone()})["image"]
    got = fast_t({"image": img.clone()})["image"]
    assert got.shape == ref.shape and got.dtype == ref.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=0, atol=atol)
    np.testing.assert_allclose(got.affine.numpy(), ref.affine.numpy(), atol=1e-12)
    (op_ref,), (op_got,) = ref.applied_operations, got.applied_operations
    assert op_got.keys() == op_ref.keys()
    for key in ("orig_size", "lazy", "tracing"):
        assert op_got[key] == op_ref[key], key
    assert op_got["extra_info"].keys() == op_ref["extra_info"].keys()
    for key in ("dtype", "mode", "padding_mode", "align_corners"):
        assert op_got["extra_info"][key] == op_ref["extra_info"][key], key
    assert torch.equal(op_got["extra_info"]["src_affine"], op_ref["extra_info"]["src_affine"])
    return ref, got


CASES = [
    # shape, voxel size, target pixdim, channels
    ((64, 50, 30), (0.78, 0.78, 1.0), (2.0, 2.0, 2.5), 1),  # CT to the network grid (downsampling)
    ((20, 21, 17), (2.5, 2.0, 3.0), (1.0, 1.3, 0.9), 1),  # upsampling on every axis
    ((33, 20, 9), (1.0, 1.0, 1.0), (1.0, 1.0, 2.0), 2),  # two channels, identical axes left alone
    ((40, 30), (0.7, 0.9), (1.5, 1.1), 1),  # 2D
]


@pytest.mark.parametrize("shape,voxel,pixdim,channels", CASES)
def test_fast_spacing_equals_monai_spacing(shape, voxel, pixdim, channels, monkeypatch):
    img = image(shape, voxel, channels=channels)
    ref_t = Spacingd("image", pixdim=pixdim)
    fast_t = FastSpacingd("image", pixdim=pixdim)
    ref = ref_t({"image": img.clone()})["image"]  # before grid_sample is taken away
    no_grid_sample(monkeypatch)
    got = fast_t({"image": img.clone()})["image"]
    # both compute in float64 (MONAI's default): float rounding of the result only
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=0, atol=1e-9 * 1000)
    assert got.shape == ref.shape and torch.allclose(got.affine, ref.affine)


def test_fast_spacing_trace_and_inverse_are_monai_ones():
    img = image((48, 40, 22), (-0.8, -0.8, 1.2))  # LPS-like (negative axes): Orientationd flips, then resampling
    pre_ref = Compose([Orientationd("image", "RAS"), Spacingd("image", pixdim=(2.0, 1.5, 2.5))])
    pre_fast = Compose([Orientationd("image", "RAS"), FastSpacingd("image", pixdim=(2.0, 1.5, 2.5))])
    ref = pre_ref({"image": img.clone()})["image"]
    got = pre_fast({"image": img.clone()})["image"]
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=0, atol=1e-6)
    assert [op["class"] for op in got.applied_operations] == ["Orientation", "SeparableSpatialResample"]
    # the inverse goes back to the source grid as MONAI's does (Invertd through the Compose)
    back_ref = Invertd("image", pre_ref, "image")({"image": ref})["image"]
    back_got = Invertd("image", pre_fast, "image")({"image": got})["image"]
    assert back_got.shape == img.shape
    np.testing.assert_allclose(back_got.numpy(), back_ref.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(back_got.affine.numpy(), img.affine.numpy(), atol=1e-6)
    assert back_got.applied_operations == []


def test_fast_spacing_float32_is_closer_to_float64_than_monai_float32():
    """With ``dtype=float32`` the weights are still computed in float64 (no grid coordinates in float32)."""
    img = image((96, 96, 40), (0.78, 0.78, 1.0))
    ref64 = Spacingd("image", pixdim=(2.0, 2.0, 2.5))({"image": img.clone()})["image"]
    monai32 = Spacingd("image", pixdim=(2.0, 2.0, 2.5), dtype=torch.float32)({"image": img.clone()})["image"]
    fast32 = FastSpacingd("image", pixdim=(2.0, 2.0, 2.5), dtype=torch.float32)({"image": img.clone()})["image"]
    err_fast = (fast32 - ref64).abs().max().item()
    err_monai = (monai32 - ref64).abs().max().item()
    assert err_fast < 1e-3 and err_fast <= err_monai
    assert fast32.applied_operations[0]["extra_info"]["dtype"] == "float32"


@pytest.mark.parametrize(
    "kwargs,img_kwargs",
    [
        ({"mode": "nearest"}, {}),  # another interpolation mode
        ({"padding_mode": "zeros"}, {}),  # another padding
        ({"align_corners": True}, {}),
        ({}, {"rotate_deg": 20.0}),  # oblique grid with diagonal=False: axis-aligned, fast (checked below)
        ({"diagonal": True}, {"rotate_deg": 20.0}),  # oblique to a diagonal grid: not axis-aligned
    ],
)
def test_fast_spacing_falls_back_to_monai_elsewhere(kwargs, img_kwargs, monkeypatch):
    img = image((30, 26, 12), (1.1, 0.9, 2.0), **img_kwargs)
    calls = []
    real = bundle_transforms.separable_linear_resample

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(bundle_transforms, "separable_linear_resample", spy)
    ref, got = assert_same_as_monai(
        img,
        Spacingd("image", pixdim=(1.7, 1.3, 2.6), **kwargs),
        FastSpacingd("image", pixdim=(1.7, 1.3, 2.6), **kwargs),
        atol=1e-6,
    )
    separable = not kwargs  # plain bilinear / border on an axis-aligned change of grid
    assert bool(calls) == separable
    if not separable:  # MONAI's own code: bit for bit
        assert torch.equal(got.as_tensor(), ref.as_tensor())


def test_fast_spacing_label_nearest_with_image_bilinear():
    """train.json resamples image (bilinear: fast) and label (nearest: MONAI) in one FastSpacingd."""
    img = image((40, 36, 16), (0.8, 0.8, 1.5))
    lab = MetaTensor(torch.as_tensor((np.arange(40 * 36 * 16).reshape(1, 40, 36, 16) % 3).astype(np.uint8)),
                     affine=img.affine.clone())
    kw = dict(keys=["image", "label"], pixdim=(2.0, 2.0, 2.5), mode=["bilinear", "nearest"])
    ref = Spacingd(**kw)({"image": img.clone(), "label": lab.clone()})
    got = FastSpacingd(**kw)({"image": img.clone(), "label": lab.clone()})
    np.testing.assert_allclose(got["image"].numpy(), ref["image"].numpy(), rtol=0, atol=1e-6)
    assert torch.equal(got["label"].as_tensor(), ref["label"].as_tensor())


def test_separable_linear_resample_flips_and_border():
    """A negative scale (flip) and samples outside the input (clamped to the border voxels)."""
    x = torch.arange(10, dtype=torch.float64).view(1, 10)
    xform = np.array([[-0.5, 9.5], [0.0, 1.0]])  # u = 9.5 - j / 2: 9.5 (clamped to 9), 9, 8.5, ...
    out = separable_linear_resample(x, xform, [22], torch.float64)
    expected = np.clip(9.5 - 0.5 * np.arange(22), 0, 9)
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-12)
