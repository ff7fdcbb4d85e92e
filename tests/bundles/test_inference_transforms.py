"""The bundle's fast inference postprocessing (scripts/transforms.py) gives the same labels as the MONAI chain it
replaces: ``Invertd`` + ``AsDiscreted(argmax=True)``, ``KeepLargestConnectedComponent``, and the same files as
``SaveImaged``'s ``NibabelWriter``.

The inversion is checked through the bundle's real preprocessing (inference.json) on RAS, LPS, LAS, axis-permuted
and oblique inputs, with class scores that put every class everywhere (also on the crop and grid borders), for
sources finer and coarser than the network grid.
"""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import BUNDLE

sys.path.insert(0, str(BUNDLE))

from monai.bundle import ConfigParser  # noqa: E402
from monai.data import MetaTensor  # noqa: E402
from monai.transforms import (  # noqa: E402
    AsDiscreted,
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    Invertd,
    KeepLargestConnectedComponent,
    LoadImaged,
    Orientationd,
    Spacingd,
    SpatialResample,
)

from scripts.transforms import (  # noqa: E402
    InvertArgmaxd,
    KeepLargestComponentInBox,
    KeepLargestComponentInBoxd,
    LabelNiftiWriter,
    ResampleArgmax,
)

CONFIG = BUNDLE / "configs" / "inference.json"


def smooth_scores(shape, channels: int, seed: int, bias: float = 0.0) -> torch.Tensor:
    """Class scores [C, *shape]: coarse random fields, trilinearly upsampled (blobs of every class everywhere)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, channels, *[max(2, s // 6) for s in shape], generator=g)
    fine = torch.nn.functional.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=False)[0]
    fine[0] += bias  # a larger background score leaves fewer, smaller foreground blobs
    return fine


def affine(spacing, origin) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


# ResampleArgmax against MONAI's SpatialResample (bilinear, border) + argmax -------------------------------------
RESAMPLE_CASES = [
    # (input shape, input spacing, input origin, output shape, output spacing, output origin, background bias)
    ((20, 18, 12), (2.0, 2.0, 2.5), (0, 0, 0), (51, 46, 30), (0.78, 0.78, 1.0), (0.3, -0.2, 0.1), 0.0),
    ((20, 18, 12), (2.0, 2.0, 2.5), (0, 0, 0), (15, 13, 9), (2.7, 2.9, 3.4), (1.0, 0.5, -0.5), 0.5),
    ((16, 16, 10), (2.0, 2.0, 2.5), (0, 0, 0), (40, 40, 26), (0.78, 0.78, 1.0), (-4.0, -3.0, -3.0), 1.0),  # beyond
    ((16, 16, 10), (2.0, 2.0, 2.5), (5, 5, 5), (40, 40, 26), (0.78, 0.78, 1.0), (5.0, 5.0, 5.0), 1.5),  # few blobs
]


@pytest.mark.parametrize("in_shape,in_sp,in_org,out_shape,out_sp,out_org,bias", RESAMPLE_CASES)
def test_resample_argmax_equals_resample_then_argmax(in_shape, in_sp, in_org, out_shape, out_sp, out_org, bias):
    src, dst = affine(in_sp, in_org), affine(out_sp, out_org)
    scores = MetaTensor(smooth_scores(in_shape, 3, seed=sum(in_shape), bias=bias), affine=torch.as_tensor(src))
    ref = SpatialResample(mode="bilinear", padding_mode="border", dtype=torch.float64)(
        scores, dst_affine=torch.as_tensor(dst), spatial_size=out_shape
    )
    expected = torch.as_tensor(ref).argmax(dim=0, keepdim=True)
    got = ResampleArgmax()(scores, dst_affine=dst, spatial_size=out_shape)
    assert got.shape == (1, *out_shape) and got.dtype == torch.uint8
    assert 0 < int((expected > 0).sum()) < expected.numel()
    assert torch.equal(got.long(), expected)


def test_resample_argmax_all_background_gives_zeros():
    scores = torch.zeros(3, 8, 8, 8)
    scores[0] = 1.0
    got = ResampleArgmax()(scores, dst_affine=np.eye(4), spatial_size=(5, 6, 7), src_affine=np.eye(4) * 2)
    assert got.shape == (1, 5, 6, 7) and int(got.sum()) == 0


RESAMPLE_BAD = [
    ({"dst_affine": np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])}, "axis-aligned"),
    ({"spatial_size": (4, 4)}, "spatial dims"),
]


@pytest.mark.parametrize("override,match", RESAMPLE_BAD)
def test_resample_argmax_rejects(override, match):
    kwargs = {"dst_affine": np.eye(4), "spatial_size": (4, 4, 4), **override}
    with pytest.raises(ValueError, match=match):
        ResampleArgmax()(MetaTensor(torch.rand(3, 4, 4, 4)), **kwargs)


def test_resample_argmax_needs_an_affine():
    with pytest.raises(ValueError, match="src_affine"):
        ResampleArgmax()(torch.rand(3, 4, 4, 4), dst_affine=np.eye(4), spatial_size=(4, 4, 4))


# InvertArgmaxd against Invertd + AsDiscreted, through the bundle's real preprocessing ------------------------------
def bundle_preprocessing(pixdim):
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.update({"bundle_root": str(BUNDLE), "pixdim": list(pixdim)})
    return parser.get_parsed_content("preprocessing")


def rotated(aff: np.ndarray, degrees: float) -> np.ndarray:
    """``aff`` turned about the world z axis (an oblique grid)."""
    t = np.radians(degrees)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return rot @ aff


INVERT_CASES = [
    # (orientation, pixdim of the network grid, rotation in degrees, background bias)
    ("RAS", (4.0, 4.0, 5.0), 0.0, 0.0),  # source (~6 mm) coarser than the network grid: upsampled scores
    ("LPS", (4.0, 4.0, 5.0), 0.0, 0.0),
    ("LAS", (9.0, 9.0, 8.0), 0.0, 0.0),  # source finer than the network grid
    ("SPL", (4.0, 4.0, 5.0), 0.0, 0.5),  # axes permuted
    ("LPS", (5.0, 5.0, 6.0), 20.0, 0.0),  # oblique
]


def spy_fast_path(monkeypatch) -> list[bool]:
    """Record, per Spacingd inverse, whether InvertArgmaxd took its fast path."""
    taken: list[bool] = []
    fast = InvertArgmaxd._fast_spacing_inverse

    def spy(self, t, img):
        out = fast(self, t, img)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(InvertArgmaxd, "_fast_spacing_inverse", spy)
    return taken


def spy_box_orientation(monkeypatch) -> list[bool]:
    """Record, per Orientationd inverse on the label, whether it moved only the label's box."""
    moved: list[bool] = []
    real = InvertArgmaxd._orientation_inverse

    def spy(t, label):
        out = real(t, label)
        moved.append(out is not None)
        return out

    monkeypatch.setattr(InvertArgmaxd, "_orientation_inverse", staticmethod(spy))
    return moved


@pytest.mark.parametrize("orientation,pixdim,degrees,bias", INVERT_CASES)
def test_invert_argmax_equals_invertd_then_argmax(orientation, pixdim, degrees, bias, tmp_path, monkeypatch):
    from liverseg.phantom import generate_phantom

    taken = spy_fast_path(monkeypatch)
    moved = spy_box_orientation(monkeypatch)

    ph = generate_phantom(4, shape=(48, 48, 24), orientation=orientation)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ph.image, rotated(ph.affine, degrees)), path)
    pre = bundle_preprocessing(pixdim)
    data = pre({"image": str(path)})
    data["pred"] = MetaTensor(smooth_scores(data["image"].shape[1:], 3, seed=7, bias=bias))  # as the inferer gives

    expected = Compose(
        [Invertd("pred", pre, "image", nearest_interp=False), AsDiscreted("pred", argmax=True)]
    )(dict(data, pred=data["pred"].clone()))["pred"]
    got = InvertArgmaxd("pred", pre, "image")(dict(data))["pred"]

    src = nib.load(path)
    assert got.shape == (1, *src.shape) and got.dtype == torch.uint8
    assert torch.equal(got.as_tensor().long(), expected.as_tensor().long())
    np.testing.assert_allclose(got.affine.numpy(), expected.affine.numpy(), atol=1e-6)
    np.testing.assert_allclose(got.affine.numpy(), src.affine, atol=1e-4)
    assert got.applied_operations == []
    assert len(torch.unique(got)) == 3  # every class is present: the comparison is not trivial
    assert taken == [True]  # oblique and permuted inputs too: the label was resampled in the box, not the scores
    assert moved == [True]  # and flipped / permuted back as a box, not as a whole volume
    assert got[0].as_tensor().permute(2, 1, 0).is_contiguous()  # first index fastest, as the writer wants


def test_invert_argmax_without_spacing_falls_back_to_monai(tmp_path, monkeypatch):
    """No Spacingd in the preprocessing: the scores are inverted by MONAI and the argmax is taken at the end."""
    from liverseg.phantom import generate_phantom

    taken = spy_fast_path(monkeypatch)

    ph = generate_phantom(2, shape=(40, 40, 20), orientation="LPS")
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ph.image, ph.affine), path)
    pre = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            CropForegroundd("image", source_key="image", select_fn=lambda x: x > -500, allow_smaller=True),
        ]
    )
    data = pre({"image": str(path)})
    data["pred"] = MetaTensor(smooth_scores(data["image"].shape[1:], 3, seed=3))
    expected = Compose([Invertd("pred", pre, "image"), AsDiscreted("pred", argmax=True)])(
        dict(data, pred=data["pred"].clone())
    )["pred"]
    got = InvertArgmaxd("pred", pre, "image")(dict(data))["pred"]
    assert taken == []
    assert torch.equal(got.as_tensor().long(), expected.as_tensor().long())
    np.testing.assert_allclose(got.affine.numpy(), ph.affine, atol=1e-4)


def test_invert_argmax_nearest_spacing_falls_back_to_monai(tmp_path, monkeypatch):
    """Spacingd with nearest interpolation: the fast (bilinear) step does not apply; MONAI inverts the scores."""
    from liverseg.phantom import generate_phantom

    taken = spy_fast_path(monkeypatch)
    ph = generate_phantom(3, shape=(40, 40, 20), orientation="LAS")
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ph.image, ph.affine), path)
    pre = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(5.0, 5.0, 6.0), mode="nearest"),
        ]
    )
    data = pre({"image": str(path)})
    data["pred"] = MetaTensor(smooth_scores(data["image"].shape[1:], 3, seed=5))
    expected = Compose([Invertd("pred", pre, "image", nearest_interp=False), AsDiscreted("pred", argmax=True)])(
        dict(data, pred=data["pred"].clone())
    )["pred"]
    got = InvertArgmaxd("pred", pre, "image")(dict(data))["pred"]
    assert taken == [False]
    assert torch.equal(got.as_tensor().long(), expected.as_tensor().long())
    np.testing.assert_allclose(got.affine.numpy(), ph.affine, atol=1e-4)


def test_invert_argmax_rejects_bad_setup():
    with pytest.raises(ValueError, match="invertible"):
        InvertArgmaxd("pred", transform=lambda d: d)  # type: ignore[arg-type]
    pre = Compose([EnsureChannelFirstd("image")])
    with pytest.raises(ValueError, match="MetaTensor"):
        InvertArgmaxd("pred", pre, "image")({"pred": torch.rand(3, 4, 4, 4), "image": np.zeros((1, 4, 4, 4))})


def test_inference_config_uses_the_fast_postprocessing():
    """inference.json inverts with InvertArgmaxd over its own preprocessing, peels HU outliers off the liver on the
    source grid, then keeps the largest liver, then the real-CT postprocessing (scripts/postprocessing.py, model card
    "Real CT"), then writes."""
    post = json.loads(CONFIG.read_text())["postprocessing"]["transforms"]
    targets = [t["_target_"] for t in post]
    assert targets == [
        "Activationsd", "scripts.transforms.InvertArgmaxd", "scripts.postprocessing.PeelLiverOutliersd",
        "DeleteItemsd", "scripts.transforms.KeepLargestComponentInBoxd",
        "scripts.postprocessing.KeepLiverCored", "scripts.postprocessing.LesionsInLiverd",
        "scripts.postprocessing.RemoveSmallLesionsd", "scripts.postprocessing.FillLiverHolesd", "SaveImaged",
    ]  # fmt: skip
    assert post[1]["transform"] == "@preprocessing" and post[1]["orig_keys"] == "image"
    assert post[2]["image_key"] == "hu_source" and post[3]["keys"] == "hu_source"
    assert post[4]["applied_labels"] == [1, 2] and post[4]["independent"] is False
    assert post[-1]["writer"] == "scripts.transforms.LabelNiftiWriter"


# KeepLargestComponentInBox against MONAI's KeepLargestConnectedComponent --------------------------------------------
def blob_label(seed: int) -> torch.Tensor:
    """A [1, 40, 36, 30] label with several components of labels 1 and 2 in a corner region, 0 elsewhere."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((40, 36, 30), np.uint8)
    for _ in range(12):
        c = rng.integers([8, 6, 5], [30, 24, 22])
        r = rng.integers(1, 4, 3)
        lab[c[0] - r[0] : c[0] + r[0], c[1] - r[1] : c[1] + r[1], c[2] - r[2] : c[2] + r[2]] = rng.integers(1, 3)
    return torch.as_tensor(lab)[None]


KLCC_CASES = [
    # (applied labels, independent, connectivity, num_components)
    ([1, 2], False, None, 1),
    ([1, 2], True, None, 1),
    ([1], True, 1, 1),
    ([2], False, None, 2),
    ([0, 1], False, None, 1),  # background takes part: the whole image is searched
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("labels,independent,connectivity,num", KLCC_CASES)
def test_keep_largest_in_box_equals_monai(labels, independent, connectivity, num, seed):
    lab = blob_label(seed)
    expected = KeepLargestConnectedComponent(
        applied_labels=labels, is_onehot=False, independent=independent, connectivity=connectivity,
        num_components=num,
    )(lab.clone())
    got = KeepLargestComponentInBox(labels, independent, connectivity, num)(MetaTensor(lab.clone()))
    assert isinstance(got, MetaTensor) and got.dtype == lab.dtype
    assert torch.equal(got.as_tensor(), torch.as_tensor(expected))
    assert not torch.equal(got.as_tensor(), lab) or labels == [0, 1]  # something was removed


@pytest.mark.parametrize("density", [0.05, 0.3])  # hundreds of specks (ties in size) / a few larger components
@pytest.mark.parametrize("labels,independent,num", [([1, 2], False, 1), ([1, 2], True, 2), ([0, 1], False, 1),
                                                    ([1], False, 3)])
@pytest.mark.parametrize("nifti_order", [False, True])  # C order, or first index fastest (InvertArgmaxd's output)
def test_keep_largest_in_box_equals_monai_on_many_components(labels, independent, num, density, nifti_order):
    """Random labels: up to hundreds of components (more than are counted box by box), many of equal size."""
    rng = np.random.default_rng(int(density * 10) + num)
    lab = ((rng.random((30, 26, 22)) < density) * rng.integers(1, 3, size=(30, 26, 22))).astype(np.uint8)
    lab = torch.as_tensor(lab)[None]
    if labels == [0, 1]:
        lab[lab == 2] = 1  # only labels 0 and 1: the applied labels cover every value
    expected = KeepLargestConnectedComponent(
        applied_labels=labels, is_onehot=False, independent=independent, num_components=num
    )(lab.clone())
    arg = lab.clone()
    if nifti_order:
        arg = arg[0].permute(2, 1, 0).contiguous().permute(2, 1, 0)[None]
    got = KeepLargestComponentInBox(labels, independent, None, num)(arg)
    assert torch.equal(got, torch.as_tensor(expected))


def test_keep_largest_in_box_dict_and_empty():
    d = KeepLargestComponentInBoxd("pred", applied_labels=[1, 2], independent=False)({"pred": blob_label(0)})
    assert torch.equal(d["pred"], torch.as_tensor(
        KeepLargestConnectedComponent(applied_labels=[1, 2], independent=False)(blob_label(0))
    ))
    empty = torch.zeros(1, 5, 5, 5, dtype=torch.uint8)
    assert torch.equal(KeepLargestComponentInBox([1])(empty.clone()), empty)


@pytest.mark.parametrize("labels,shape", [([], (1, 4, 4, 4)), ([1], (2, 4, 4, 4)), ([1], (4,))])
def test_keep_largest_in_box_rejects(labels, shape):
    with pytest.raises(ValueError):
        KeepLargestComponentInBox(labels)(torch.zeros(shape, dtype=torch.uint8))


# LabelNiftiWriter against NibabelWriter: the same file content -------------------------------------------------------
def _sparse_label() -> torch.Tensor:
    lab = torch.zeros(1, 30, 26, 20, dtype=torch.uint8)
    lab[0, 5:17, 8:20, 3:9] = 1
    lab[0, 9:12, 10:13, 4:6] = 2
    return lab


WRITER_CASES = [
    # (data [1, *spatial], output dtype, orientation of the affine)
    (_sparse_label(), np.uint8, "LPS"),
    (torch.zeros(1, 12, 10, 8, dtype=torch.uint8), np.uint8, "RAS"),  # empty
    (torch.rand(1, 12, 10, 8), np.float32, "LAS"),  # dense, float
    (_sparse_label().float(), np.int16, "RAS"),  # dtype conversion on the way
    (_sparse_label(), None, "LPS"),  # no output dtype: the data's own (uint8), as with MONAI's writer
]


@pytest.mark.parametrize("isal", [True, False], ids=["isal", "zlib"])
@pytest.mark.parametrize("data,dtype,orientation", WRITER_CASES)
def test_label_writer_writes_what_nibabel_writer_writes(data, dtype, orientation, isal, tmp_path, monkeypatch):
    import gzip

    from monai.transforms import SaveImaged

    import scripts.transforms

    if isal and not scripts.transforms.has_isal:
        pytest.skip("the isal package is not installed (setup.cfg installs it)")
    monkeypatch.setattr(scripts.transforms, "has_isal", isal)

    aff = nib.orientations.inv_ornt_aff(
        nib.orientations.axcodes2ornt(orientation), data.shape[1:]
    ) @ np.diag([1.5, 1.5, 2.5, 1.0])
    files = {}
    for name, writer in (("monai", "NibabelWriter"), ("ours", "scripts.transforms.LabelNiftiWriter")):
        img = MetaTensor(data.clone(), affine=torch.as_tensor(aff))
        img.meta["filename_or_obj"] = "case.nii.gz"
        SaveImaged("pred", output_dir=str(tmp_path / name), output_postfix="seg", output_dtype=dtype,
                   resample=False, separate_folder=False, writer=writer)({"pred": img})
        files[name] = nib.load(tmp_path / name / "case_seg.nii.gz")
    a, b = files["monai"], files["ours"]
    # the same bytes once decompressed (the gzip streams differ: another compressor with ISA-L)
    raw = {name: gzip.decompress((tmp_path / name / "case_seg.nii.gz").read_bytes()) for name in files}
    assert raw["ours"] == raw["monai"]
    assert b.header.binaryblock == a.header.binaryblock
    np.testing.assert_array_equal(np.asarray(b.dataobj), np.asarray(a.dataobj))
    assert b.get_data_dtype() == np.dtype(dtype or np.uint8)


def test_label_writer_resamples_like_monai_when_asked(tmp_path):
    """With resample=True the writer is MONAI's: the data go back to the original affine."""
    from monai.transforms import SaveImaged

    files = {}
    for name, writer in (("monai", "NibabelWriter"), ("ours", LabelNiftiWriter)):
        img = MetaTensor(_sparse_label(), affine=torch.as_tensor(np.diag([2.0, 2.0, 3.0, 1.0])))
        img.meta.update({"filename_or_obj": "case.nii.gz", "original_affine": np.diag([-1.0, 1.0, 1.5, 1.0]),
                         "spatial_shape": (60, 52, 40)})
        SaveImaged("pred", output_dir=str(tmp_path / name), output_postfix="seg", output_dtype=np.uint8,
                   resample=True, mode="nearest", separate_folder=False, writer=writer)({"pred": img})
        files[name] = nib.load(tmp_path / name / "case_seg.nii.gz")
    assert files["ours"].shape == files["monai"].shape == (60, 52, 40)
    np.testing.assert_allclose(files["ours"].affine, files["monai"].affine)
    np.testing.assert_array_equal(np.asarray(files["ours"].dataobj), np.asarray(files["monai"].dataobj))


def test_label_writer_keeps_fortran_input_and_defaults():
    arr = np.asfortranarray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    img = LabelNiftiWriter.create_backend_obj(arr, dtype=np.int16)
    np.testing.assert_array_equal(np.asarray(img.dataobj), arr)
    np.testing.assert_allclose(img.affine, np.eye(4))


@pytest.mark.parametrize("shape", [(7, 5, 6), (9, 4), (3, 4, 5, 6)])
def test_foreground_box_in_any_voxel_order(shape):
    from scripts.transforms import _foreground_box

    rng = np.random.default_rng(len(shape))
    mask = torch.zeros(shape, dtype=torch.bool)
    lo = [int(rng.integers(0, s // 2)) for s in shape]
    hi = [int(rng.integers(s // 2, s)) for s in shape]
    mask[tuple(slice(a, b + 1) for a, b in zip(lo, hi))] = torch.rand(*[b - a + 1 for a, b in zip(lo, hi)]) >= 0
    expected = list(zip(lo, hi))
    reversed_order = mask.permute(*range(len(shape) - 1, -1, -1)).contiguous().permute(*range(len(shape) - 1, -1, -1))
    assert not reversed_order.is_contiguous()
    assert _foreground_box(mask) == expected
    assert _foreground_box(reversed_order) == expected
    assert _foreground_box(torch.zeros(shape, dtype=torch.bool)) is None
