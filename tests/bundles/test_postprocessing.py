"""The bundle's result-changing post-processing (scripts/postprocessing.py) on tiny label maps with known answers."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from tests.conftest import BUNDLE

sys.path.insert(0, str(BUNDLE))

from scripts.postprocessing import (  # noqa: E402
    FillLiverHoles,
    FillLiverHolesd,
    FlipAveragingInferer,
    KeepLiverCore,
    KeepLiverCored,
    LesionsInLiver,
    LesionsInLiverd,
    PeelLiverOutliers,
    PeelLiverOutliersd,
    RemoveSmallLesions,
    RemoveSmallLesionsd,
)


def _label(arr: np.ndarray, spacing=(1.0, 1.0, 1.0), lps: bool = False) -> MetaTensor:
    aff = np.diag([*(-s if lps and i < 2 else s for i, s in enumerate(spacing)), 1.0])
    return MetaTensor(torch.as_tensor(arr[None].copy()), affine=torch.as_tensor(aff))


def _liver_with(*boxes: tuple[slice, ...], shape=(30, 30, 20)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[3:27, 3:27, 3:17] = 1
    for b in boxes:
        lab[b] = 2
    return lab


SMALL = (slice(6, 8), slice(6, 8), slice(6, 8))  # 8 voxels
LARGE = (slice(12, 20), slice(12, 20), slice(8, 14))  # 384 voxels


@pytest.mark.parametrize("lps", [False, True])
@pytest.mark.parametrize(
    "spacing,min_d,small_kept,large_kept",
    [
        ((1.0, 1.0, 1.0), 3.0, False, True),  # 8 mm^3 -> 2.5 mm: removed; 384 mm^3 -> 9.0 mm: kept
        ((1.0, 1.0, 1.0), 10.0, False, False),
        ((2.0, 2.0, 2.0), 3.0, True, True),  # the same voxels at 2 mm: 64 mm^3 -> 5.0 mm: kept
        ((1.0, 1.0, 1.0), 0.0, True, True),  # off
    ],
)
def test_remove_small_lesions_by_diameter_in_mm(spacing, min_d, small_kept, large_kept, lps):
    img = _label(_liver_with(SMALL, LARGE), spacing, lps)
    out = RemoveSmallLesions(min_d)(img)
    assert out is img  # in place, metadata kept
    lab = out[0].numpy()
    assert (lab[SMALL] == 2).all() == small_kept and (lab[SMALL] == 1).all() != small_kept
    assert (lab[LARGE] == 2).all() == large_kept
    assert set(np.unique(lab)) <= {0, 1, 2} and (lab > 0).sum() == 24 * 24 * 14  # the organ is unchanged


def test_lesions_in_liver_removes_the_one_outside():
    lab = _liver_with(LARGE)
    outside = (slice(0, 3), slice(10, 14), slice(8, 12))  # touches the liver along one face only
    lab[outside] = 2
    out = LesionsInLiver(0.5)(_label(lab))[0].numpy()
    assert (out[outside] == 0).all()  # outside the liver: background
    assert (out[LARGE] == 2).all()  # surrounded by liver: kept
    subcapsular = _liver_with((slice(3, 8), slice(10, 16), slice(8, 12)))  # at the liver's edge: half its surface
    kept = LesionsInLiver(0.3)(_label(subcapsular))[0].numpy()
    assert (kept == 2).sum() == 5 * 6 * 4
    assert (LesionsInLiver(0.0)(_label(lab))[0].numpy()[outside] == 2).all()  # off


@pytest.mark.parametrize("lps", [False, True])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 0.5, 1.0)])
def test_keep_liver_core_cuts_what_hangs_on_a_thin_bridge(spacing, lps):
    """A 24 mm organ with a tumor, a 2 mm bridge to a 10 mm blob (a neighbour the network took for liver): radius
    4 mm cuts the bridge and the blob and keeps the organ; the same in mm on a finer grid and stored LPS."""
    f = [int(round(1.0 / s)) for s in spacing]  # voxels per mm
    shape = (60 * f[0], 40 * f[1], 30 * f[2])
    lab = np.zeros(shape, np.uint8)

    def mm(a, b, axis):
        return slice(a * f[axis], b * f[axis])

    organ = (mm(4, 28, 0), mm(4, 28, 1), mm(3, 27, 2))
    lab[organ] = 1
    lab[mm(10, 16, 0), mm(10, 16, 1), mm(10, 16, 2)] = 2
    bridge = (mm(28, 40, 0), mm(14, 16, 1), mm(14, 16, 2))
    blob = (mm(40, 50, 0), mm(10, 20, 1), mm(10, 20, 2))
    lab[bridge] = 1
    lab[blob] = 1
    out = KeepLiverCore(4.0)(_label(lab, spacing, lps))[0].numpy()
    assert (out[blob] == 0).all()
    assert (out[organ] == lab[organ]).all()  # the organ and its tumor untouched
    assert (out[bridge] == 0).mean() > 0.5  # the bridge goes, but for the stub within reach of the core
    assert (KeepLiverCore(0.0)(_label(lab, spacing, lps))[0].numpy() == lab).all()  # off
    thin = np.zeros(shape, np.uint8)
    thin[bridge] = 1  # thinner than twice the radius everywhere: no core, nothing removed
    assert (KeepLiverCore(4.0)(_label(thin, spacing, lps))[0].numpy() == thin).all()


def test_fill_liver_holes_fills_enclosed_background_only():
    lab = _liver_with(LARGE)
    lab[8:10, 8:10, 8:10] = 0  # a hole inside the liver
    lab[3:6, 3:6, 3:6] = 0  # a notch open to the outside
    out = FillLiverHoles()(_label(lab))[0].numpy()
    assert (out[8:10, 8:10, 8:10] == 1).all()
    assert (out[3:6, 3:6, 3:6] == 0).all()
    assert (out[LARGE] == 2).all()


def test_dict_twins_map_over_keys():
    lab = _liver_with(SMALL, LARGE)
    d = {"pred": _label(lab), "other": 5}
    d = RemoveSmallLesionsd("pred", min_diameter_mm=3.0)(d)
    d = LesionsInLiverd("pred", min_liver_contact=0.5)(d)
    d = FillLiverHolesd("pred")(d)
    d = KeepLiverCored("pred", radius_mm=2.0)(d)
    out = d["pred"][0].numpy()
    assert (out[SMALL] == 1).all() and (out[LARGE] == 2).all() and d["other"] == 5


@pytest.mark.parametrize(
    "make,bad",
    [
        (RemoveSmallLesions, -1.0),
        (RemoveSmallLesions, float("nan")),
        (LesionsInLiver, 1.5),
        (KeepLiverCore, -2.0),
        (lambda v: KeepLiverCore(5.0, grid_mm=v), 0.0),
        (lambda v: KeepLiverCore(5.0, reach_mm=v), 4.0),
        (lambda v: FillLiverHoles(applied_labels=v), [0, 1]),
    ],
)
def test_bad_arguments_raise(make, bad):
    with pytest.raises(ValueError):
        make(bad)


def test_non_label_shape_raises():
    with pytest.raises(ValueError, match="label map"):
        RemoveSmallLesions(3.0)(torch.zeros(2, 4, 4, 4))


def test_flip_averaging_inferer():
    """A position-dependent 'network' (x -> x * ramp): the flip average is the mean of the ramp and its mirror."""
    ramp = torch.arange(4, dtype=torch.float32).view(1, 1, 4, 1, 1)

    def net(x):
        return x * ramp

    x = torch.ones(1, 1, 4, 2, 2)
    base = FlipAveragingInferer(lambda inputs, network: network(inputs), flips=[])
    assert torch.equal(base(x, net), net(x))
    tta = FlipAveragingInferer(lambda inputs, network: network(inputs), flips=[[0]])
    expected = (ramp + ramp.flip(2)) / 2
    assert torch.allclose(tta(x, net), expected.expand(1, 1, 4, 2, 2))
    with pytest.raises(ValueError, match="outside"):
        FlipAveragingInferer(lambda i, n: n(i), flips=[[3]])(x, net)
    with pytest.raises(ValueError):
        FlipAveragingInferer(lambda i, n: n(i), flips=[[]])


# ---------------------------------------------------------------------------------------------------------------
# PeelLiverOutliers: the scan's own liver HU decides what is glued-on neighbour
# ---------------------------------------------------------------------------------------------------------------


def _peel_scene(liver_hu: float = 110.0, neighbour_hu: float = 20.0, seed: int = 0):
    """A liver block (label 1) with a glued-on 'stomach' slab on its side (also labelled 1, other HU), a vessel
    inside the liver (other HU, enclosed), and a hypodense tumor (label 2) touching the surface."""
    rng = np.random.default_rng(seed)
    shape = (40, 40, 24)
    hu = rng.normal(-100.0, 10.0, shape).astype(np.float32)  # fat around
    lab = np.zeros(shape, np.uint8)
    lab[6:30, 6:34, 4:20] = 1
    hu[6:30, 6:34, 4:20] = liver_hu
    lab[30:36, 6:34, 4:20] = 1  # neighbour the network glued to the liver
    hu[30:36, 6:34, 4:20] = neighbour_hu
    hu[14:18, 14:18, 4:20] = liver_hu + 60.0  # vessel through the liver (enclosed along x/y, open at z ends)
    hu[16:20, 18:22, 10:14] = liver_hu - 60.0  # missed lesion deep inside the liver, labelled liver
    lab[6:10, 26:32, 8:14] = 2  # subcapsular tumor
    hu[6:10, 26:32, 8:14] = 40.0
    hu += rng.normal(0.0, 8.0, shape).astype(np.float32)
    return lab, hu


@pytest.mark.parametrize("liver_hu,neighbour_hu", [(110.0, 20.0), (55.0, 150.0), (140.0, 60.0)])
def test_peel_removes_the_glued_neighbour_whatever_the_contrast(liver_hu, neighbour_hu):
    lab, hu = _peel_scene(liver_hu, neighbour_hu)
    img = _label(lab, spacing=(1.5, 1.5, 2.0))
    out = PeelLiverOutliers(k_mad=3.0, min_halfwidth_hu=20.0, smooth_mm=1.0, core_mm=2.0)(img, torch.as_tensor(hu))
    assert out is img
    res = out[0].numpy()
    assert (res[31:36, 6:34, 4:20] == 0).mean() > 0.95  # the neighbour is peeled off
    # liver, the enclosed lesion and the vessel (reaching the outside only at the block's ends) stay; a few voxels
    # beside the subcapsular tumor may go (smoothed toward its HU, next to the surface)
    assert (res[8:28, 8:32, 6:18] > 0).mean() > 0.998
    assert (res[14:18, 14:18, 4:20] > 0).all() and (res[16:20, 18:22, 10:14] > 0).all()
    assert (res == 2).sum() == (lab == 2).sum()  # tumor untouched


def test_peel_keeps_a_liver_without_neighbours_and_can_be_off():
    lab, hu = _peel_scene()
    lab[30:36] = 0
    img = _label(lab.copy(), spacing=(1.5, 1.5, 2.0))
    res = PeelLiverOutliers(smooth_mm=1.0, core_mm=2.0)(img, torch.as_tensor(hu))[0].numpy()
    # at most the partial-volume rim and a few voxels beside the subcapsular tumor go
    assert (res[7:29, 7:33, 5:19] > 0).mean() > 0.998
    assert (res[14:18, 14:18, 4:20] > 0).all()
    lab2, _ = _peel_scene()
    img2 = _label(lab2.copy())
    assert np.array_equal(PeelLiverOutliers(k_mad=0)(img2, torch.as_tensor(hu))[0].numpy(), lab2)


def test_peel_skips_mismatched_grids_and_small_livers(caplog):
    lab, hu = _peel_scene()
    img = _label(lab.copy())
    out = PeelLiverOutliers()(img, torch.as_tensor(hu[:-1]))
    assert np.array_equal(out[0].numpy(), lab)
    assert "grids differ" in caplog.text
    tiny = np.zeros((20, 20, 20), np.uint8)
    tiny[5:8, 5:8, 5:8] = 1
    img = _label(tiny.copy())
    assert np.array_equal(PeelLiverOutliers()(img, torch.zeros(20, 20, 20))[0].numpy(), tiny)


def test_peel_dict_wrapper_needs_the_image():
    lab, hu = _peel_scene()
    t = PeelLiverOutliersd(keys="pred", image_key="hu_source", smooth_mm=1.0, core_mm=2.0)
    d = t({"pred": _label(lab.copy(), spacing=(1.5, 1.5, 2.0)), "hu_source": torch.as_tensor(hu)[None]})
    assert (d["pred"][0].numpy()[31:36] == 0).mean() > 0.95
    with pytest.raises(KeyError, match="hu_source"):
        t({"pred": _label(lab.copy())})
    with pytest.raises(ValueError, match="k_mad"):
        PeelLiverOutliers(k_mad=-1)
    # every setting of the array transform is one of the wrapper's (the bundle's config can set them)
    t = PeelLiverOutliersd(keys="pred", image_key="hu_source", tumor_margin_mm=7.5, min_piece_fraction=0.2)
    assert (t.transform.tumor_margin_mm, t.transform.min_piece_fraction) == (7.5, 0.2)
    with pytest.raises(ValueError, match="min_piece_fraction"):
        PeelLiverOutliersd(keys="pred", image_key="hu_source", min_piece_fraction=-0.1)


def test_peel_keeps_the_liver_around_a_subcapsular_lesion():
    """The liver beside a lesion at the surface is not peeled (else the lesion loses its liver contact and
    LesionsInLiver would drop it)."""
    lab, hu = _peel_scene()
    lab[30:36] = 0
    img = _label(lab.copy(), spacing=(1.5, 1.5, 2.0))
    # no thickness test here, so that only the margin protects the lesion's neighbourhood
    kw = dict(smooth_mm=1.0, core_mm=2.0, thin_voxels=0)
    res = PeelLiverOutliers(tumor_margin_mm=3.0, **kw)(img, torch.as_tensor(hu))[0].numpy()
    assert (res[6:11, 25:33, 7:15] > 0).all()  # all within 3 mm of the lesion
    res0 = PeelLiverOutliers(tumor_margin_mm=0.0, **kw)(
        _label(lab.copy(), spacing=(1.5, 1.5, 2.0)), torch.as_tensor(hu)
    )[0].numpy()
    assert (res0[6:11, 25:33, 7:15] == 0).any()  # without the margin it would have gone


def test_peel_leaves_the_partial_volume_rim_and_keeps_the_organ_whole():
    """Coarse voxels: the liver's rim, a voxel of partial volume, stays (thickness test); a band of outliers across
    the liver (a vessel from the surface through a lobe) is not peeled when that would cut a lobe off."""
    rng = np.random.default_rng(1)
    shape = (40, 40, 24)
    lab = np.zeros(shape, np.uint8)
    lab[6:34, 6:34, 4:20] = 1
    hu = np.full(shape, -100.0, np.float32)
    hu[6:34, 6:34, 4:20] = 110.0
    hu = ndimage.gaussian_filter(hu, 0.8)  # partial volume at the surface
    hu[6:34, 19:22, 4:20] = 200.0  # a bright band splitting the block in two lobes, open to the outside
    hu += rng.normal(0.0, 5.0, shape).astype(np.float32)
    res = PeelLiverOutliers(smooth_mm=1.0, core_mm=2.0)(
        _label(lab.copy(), spacing=(2.5, 2.5, 3.0)), torch.as_tensor(hu)
    )
    res = res[0].numpy()
    assert np.array_equal(res, lab)  # rim and band stay: nothing peeled
    # without the guards both go: the rim (thin) and the band (it splits the organ)
    bare = PeelLiverOutliers(smooth_mm=1.0, core_mm=2.0, thin_voxels=0, min_piece_fraction=0.0)
    res0 = bare(_label(lab.copy(), spacing=(2.5, 2.5, 3.0)), torch.as_tensor(hu))[0].numpy()
    assert (res0[6:34, 19:22, 4:20] == 0).mean() > 0.5 and (res0[6, 8:18, 6:18] == 0).mean() > 0.5
