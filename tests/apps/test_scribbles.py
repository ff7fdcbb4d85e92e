"""The scribbles task (lib/scribbles.py): graph cut on the current prediction + scribbles fixes a missed liver part,
a missed tumor and a false positive, on a phantom; bad requests are 400s."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from lib import scribbles  # noqa: E402  (apps/liver on sys.path, see conftest)
from lib.validation import BadRequest  # noqa: E402

from liverseg.phantom import generate_phantom


def dice(a, b) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def phantom():
    p = generate_phantom(21, shape=(64, 64, 32), orientation="RAS")
    assert (p.label == 2).any()
    return p


def _ball(shape, centre, r):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= r * r


def test_missed_liver_part_is_restored(phantom):
    truth = phantom.label
    liver = np.argwhere(truth == 1)
    cut_at = int(np.percentile(liver[:, 0], 70))
    pred = truth.copy()
    pred[cut_at:] = 0  # the model missed the last 30 % of the liver along the first axis
    centre = liver[liver[:, 0] >= cut_at + 2].mean(axis=0).round().astype(int)
    scrib = np.zeros_like(truth)
    scrib[_ball(truth.shape, centre, 2) & (truth >= 1)] = 4  # a foreground scribble in the missed part
    scrib[_ball(truth.shape, [truth.shape[0] - 3, centre[1], centre[2]], 2) & (truth == 0)] = 3
    out = scribbles.refine_with_scribbles(phantom.image, scrib, "liver", pred)
    before, after = dice(pred >= 1, truth >= 1), dice(out >= 1, truth >= 1)
    assert after > before + 0.03, (before, after)
    assert (out[:cut_at] == pred[:cut_at]).mean() > 0.99  # what was right stays


def test_missed_tumor_is_added_and_false_positive_removed(phantom):
    truth = phantom.label
    pred = np.where(truth == 2, 1, truth)  # tumor seen as liver
    t = np.argwhere(truth == 2).mean(axis=0).round().astype(int)
    scrib = np.zeros_like(truth)
    scrib[_ball(truth.shape, t, 1) & (truth == 2)] = 4
    out = scribbles.refine_with_scribbles(phantom.image, scrib, "tumor", pred)
    assert dice(out == 2, truth == 2) > 0.5 and dice(pred == 2, truth == 2) == 0
    assert not ((out == 2) & (pred == 0)).any()  # the tumor stays inside the liver

    from scipy import ndimage

    fp = truth.copy()
    inner = ndimage.distance_transform_edt(truth == 1) * (ndimage.distance_transform_edt(truth != 2) > 12)
    centre = np.unravel_index(int(np.argmax(inner)), truth.shape)  # deep in the liver, far from the tumor
    blob = _ball(truth.shape, centre, 3) & (truth == 1)
    fp[blob] = 2  # a false tumor
    scrib = np.zeros_like(truth)
    scrib[_ball(truth.shape, centre, 1)] = 3
    out = scribbles.refine_with_scribbles(phantom.image, scrib, "tumor", fp)
    assert dice(out == 2, truth == 2) > dice(fp == 2, truth == 2)
    assert ((out == 2) & blob).sum() <= 0.2 * blob.sum()  # the false tumor is (mostly) gone
    assert out[tuple(centre)] == 1  # removed tumor becomes liver


def test_scribbles_without_prediction(phantom):
    truth = phantom.label
    c = np.argwhere(truth >= 1).mean(axis=0).round().astype(int)
    scrib = np.zeros_like(truth)
    scrib[_ball(truth.shape, c, 3) & (truth == 1)] = 4
    scrib[:3] = 3
    out = scribbles.refine_with_scribbles(phantom.image, scrib, "liver", None)
    assert dice(out >= 1, truth >= 1) > 0.5


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"target": "vessel"}, "valid: liver, tumor"),
        ({"scribbles": np.zeros((4, 4, 4))}, "image grid"),
        ({"scribbles": np.zeros((64, 64, 32))}, "no scribble"),
        ({"prediction": np.zeros((4, 4, 4))}, "prediction"),
    ],
)
def test_bad_scribbles(phantom, kwargs, words):
    scrib = np.zeros(phantom.label.shape)
    scrib[10, 10, 10] = 4
    args = {"image_hu": phantom.image, "scribbles": scrib, "target": "liver", "prediction": None, **kwargs}
    with pytest.raises(BadRequest, match=words):
        scribbles.refine_with_scribbles(**args)


def test_scribbles_task(phantom, tmp_path):
    truth = phantom.label
    nib.save(nib.Nifti1Image(phantom.image.astype(np.int16), phantom.affine), str(tmp_path / "ct.nii.gz"))
    pred = np.where(truth == 2, 1, truth).astype(np.uint8)
    nib.save(nib.Nifti1Image(pred, phantom.affine), str(tmp_path / "pred.nii.gz"))
    scrib = np.zeros(truth.shape, np.uint8)
    t = np.argwhere(truth == 2).mean(axis=0).round().astype(int)
    scrib[_ball(truth.shape, t, 1) & (truth == 2)] = 4
    nib.save(nib.Nifti1Image(scrib, phantom.affine), str(tmp_path / "scrib.nii.gz"))
    task = scribbles.LiverScribblesTask()
    assert task.is_valid() and task.info()["type"] == "scribbles" and task.fg_label == 4 and task.bg_label == 3
    result, params = task({"image": str(tmp_path / "ct.nii.gz"), "label": str(tmp_path / "scrib.nii.gz"),
                           "prediction": str(tmp_path / "pred.nii.gz"), "target": "tumor"})  # fmt: skip
    out = nib.load(result)
    assert np.allclose(out.affine, phantom.affine) and params["scribbles"]["changed"] > 0
    assert dice(np.asarray(out.dataobj) == 2, truth == 2) > 0.5
    with pytest.raises(BadRequest, match="scribbles volume"):
        task({"image": str(tmp_path / "ct.nii.gz")})
