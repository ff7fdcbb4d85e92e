from __future__ import annotations

import numpy as np
import pytest

from liverseg.volumetry import volumetry, voxel_volume_ml

RAS_2MM = np.diag([2.0, 2.0, 2.5, 1.0])  # 10 mm^3 voxels = 0.01 mL
LPS_2MM = np.diag([-2.0, -2.0, 2.5, 1.0])


def _two_tumor_label() -> np.ndarray:
    lab = np.zeros((20, 20, 10), np.uint8)
    lab[2:18, 2:18, 1:9] = 1  # 16*16*8 = 2048 voxels of liver (incl. tumors)
    lab[3:6, 3:6, 2:5] = 2  # 27 voxels
    lab[10:12, 10:12, 5:7] = 2  # 8 voxels
    return lab


@pytest.mark.parametrize(
    "affine, vox_ml",
    [
        (RAS_2MM, 0.01),
        (LPS_2MM, 0.01),
        (np.diag([1.0, 1.0, 1.0, 1.0]), 0.001),
        (np.array([[0, 0, 3.0, 5], [0, -1.0, 0, 2], [2.0, 0, 0, 1], [0, 0, 0, 1]]), 0.006),  # permuted axes
    ],
)
def test_voxel_volume(affine, vox_ml):
    assert voxel_volume_ml(affine) == pytest.approx(vox_ml)


@pytest.mark.parametrize("affine", [RAS_2MM, LPS_2MM])
def test_two_tumors(affine):
    v = volumetry(_two_tumor_label(), affine)
    assert v["liver_volume_ml"] == pytest.approx(2048 * 0.01)
    assert v["liver_parenchyma_volume_ml"] == pytest.approx((2048 - 35) * 0.01)
    assert v["num_tumors"] == 2
    assert [t["num_voxels"] for t in v["tumors"]] == [27, 8]
    assert [t["id"] for t in v["tumors"]] == [1, 2]
    assert v["tumors"][0]["volume_ml"] == pytest.approx(0.27)
    assert v["total_tumor_volume_ml"] == pytest.approx(0.35)
    assert v["tumor_burden_percent"] == pytest.approx(100 * 35 / 2048, rel=1e-4)
    # centroid of the 27-voxel tumor: voxel (4, 4, 3) in world mm
    expected = (affine @ np.array([4.0, 4.0, 3.0, 1.0]))[:3]
    np.testing.assert_allclose(v["tumors"][0]["centroid_mm"], expected, atol=0.01)


def test_orientation_does_not_change_volumes():
    lab = _two_tumor_label()
    flipped = lab[::-1, ::-1, :]
    a = volumetry(lab, RAS_2MM)
    b = volumetry(flipped, LPS_2MM)
    for key in ("liver_volume_ml", "num_tumors", "total_tumor_volume_ml", "tumor_burden_percent"):
        assert a[key] == pytest.approx(b[key])


def test_diagonal_touching_voxels_are_one_tumor():
    lab = np.ones((6, 6, 6), np.uint8)
    lab[1, 1, 1] = 2
    lab[2, 2, 2] = 2  # touches by a corner only: 26-connectivity joins them
    v = volumetry(lab, np.eye(4))
    assert v["num_tumors"] == 1 and v["tumors"][0]["num_voxels"] == 2


@pytest.mark.parametrize(
    "label, expected",
    [
        (np.zeros((4, 4, 4), np.uint8), dict(liver_volume_ml=0.0, num_tumors=0, tumor_burden_percent=None)),
        (np.ones((4, 4, 4), np.uint8), dict(liver_volume_ml=0.064, num_tumors=0, tumor_burden_percent=0.0)),
        (np.full((4, 4, 4), 2, np.uint8), dict(liver_volume_ml=0.064, num_tumors=1, tumor_burden_percent=100.0)),
        (np.ones((1, 4, 4, 4), np.float32), dict(liver_volume_ml=0.064, num_tumors=0)),  # channel-first float
    ],
)
def test_edge_cases(label, expected):
    v = volumetry(label, np.eye(4))
    for k, val in expected.items():
        assert v[k] == pytest.approx(val) if val is not None else v[k] is None


@pytest.mark.parametrize(
    "label, affine, message",
    [
        (np.zeros((4, 4), np.uint8), np.eye(4), "3D"),
        (np.zeros((2, 4, 4, 4), np.uint8), np.eye(4), "3D"),
        (np.full((4, 4, 4), 3, np.uint8), np.eye(4), "values"),
        (np.full((4, 4, 4), -1, np.int16), np.eye(4), "values"),
        (np.full((4, 4, 4), 0.5, np.float32), np.eye(4), "integer"),
        (np.full((4, 4, 4), np.nan, np.float32), np.eye(4), "integer"),
        (np.zeros((4, 4, 4), "U1"), np.eye(4), "dtype"),
        (np.zeros((4, 4, 4), np.uint8), np.eye(3), "4x4"),
        (np.zeros((4, 4, 4), np.uint8), np.diag([1.0, 0.0, 1.0, 1.0]), "singular"),
        (np.zeros((4, 4, 4), np.uint8), np.full((4, 4), np.inf), "finite"),
    ],
)
def test_bad_inputs(label, affine, message):
    with pytest.raises(ValueError, match=message):
        volumetry(label, affine)


def test_nifti_voxel_order_gives_the_same_report():
    """A label in NIfTI's voxel order (first index fastest, as the bundle's inference returns it) reports the same."""
    lab = _two_tumor_label()
    fortran = np.asfortranarray(lab)
    assert fortran.flags.f_contiguous and not fortran.flags.c_contiguous
    assert volumetry(fortran, LPS_2MM) == volumetry(lab, LPS_2MM)


@pytest.mark.parametrize("affine", [np.diag([0.8, 0.8, 2.0, 1.0]), np.diag([-0.8, -0.8, 2.0, 1.0])], ids=["RAS", "LPS"])
def test_lesion_diameters(affine):
    """Longest 3D diameter: centre-to-centre distance plus one voxel along it; equivalent-sphere diameter."""
    lab = np.ones((40, 40, 40), np.uint8)
    i, j, k = np.indices(lab.shape)
    lab[((i - 20) ** 2 + (j - 20) ** 2 + (k - 20) ** 2) <= 100] = 2  # 21 voxels across: 16.8 x 16.8 x 42 mm
    lab[5, 5:15, 5] = 2  # a line of 10 voxels along j: 8 mm
    lab[2, 2, 35] = 2  # one voxel: its longest extent, 2 mm
    tumors = volumetry(lab, affine)["tumors"]
    assert [t["diameter_mm"] for t in tumors] == pytest.approx([42.0, 8.0, 2.0])
    assert tumors[0]["equivalent_diameter_mm"] == pytest.approx(
        (6 * tumors[0]["num_voxels"] * 0.8 * 0.8 * 2.0 / np.pi) ** (1 / 3), abs=0.01
    )
