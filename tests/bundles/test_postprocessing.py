"""The bundle's result-changing post-processing (scripts/postprocessing.py) on tiny label maps with known answers."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

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
