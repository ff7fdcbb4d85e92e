"""The app's interactive model (lib/deepedit.py): runtime bundle from the deepedit overrides, MONAI Label's
``deepedit`` type with label selection, clicks placed in world space, zero clicks = the automatic result."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from lib import bundles  # noqa: E402  (apps/liver on sys.path, see conftest)
from lib import deepedit  # noqa: E402
from lib.validation import BadRequest  # noqa: E402

from liverseg.imageio import write_nifti
from tests.apps.conftest import interactive_source


@pytest.mark.parametrize("option, with_weights, served", [
    ("auto", False, False), ("auto", True, True), ("true", False, True), ("false", True, False),
])  # fmt: skip
def test_interactive_bundle_option(tmp_path, option, with_weights, served):
    from tests.apps.conftest import make_test_bundle

    source = make_test_bundle(tmp_path / "src" / "liver_ct_seg")
    if with_weights:
        (source / "models" / "deepedit").mkdir(parents=True)
        (source / "models" / "deepedit" / "model.pt").write_bytes(b"weights")
    auto = {"liver_ct_seg": bundles.prepare_bundle(source, tmp_path / "model")}
    b = deepedit.interactive_bundle(option, source, tmp_path / "model", auto)
    assert (b is not None) == served
    if b is not None:
        assert b.name == "liver_ct_seg_deepedit" and b.weights.is_file() == with_weights
        from monai.bundle import ConfigParser

        train = ConfigParser.load_config_file(str(b.path / "configs" / "train.json"))
        assert train["automatic_checkpoint"] == str(auto["liver_ct_seg"].weights)
        assert train["ckpt_dir"] == "$@bundle_root + '/models'"
    with pytest.raises(ValueError, match="valid: auto, true, false"):
        deepedit.interactive_bundle("yes", source, tmp_path / "model", auto)


@pytest.mark.parametrize(
    "request_in, words",
    [
        ({"liver": "12,3,4"}, "must be a list"),
        ({"tumor": [[1, 2]]}, "3 finite numbers"),
        ({"background": [[1, 2, float("nan")]]}, "3 finite numbers"),
        ({"liver": [[1, 2, True]]}, "3 finite numbers"),
        ({"liver": [[1, 2, 3]] * (deepedit.MAX_CLICKS_PER_LABEL + 1)}, "at most"),
    ],
)
def test_check_clicks_refuses_bad_points(request_in, words):
    with pytest.raises(BadRequest, match=words):
        deepedit.check_clicks(request_in)
    deepedit.check_clicks({"liver": [[1, 2.5, 3]], "tumor": [], "background": None, "other": "ignored"})


@pytest.mark.slow
def test_deepedit_task_zero_clicks_is_automatic_and_clicks_reach_the_network(test_bundle, phantoms, tmp_path):
    from lib.infer import LiverSegInferTask

    source = interactive_source(test_bundle, tmp_path)
    auto_bundle = bundles.prepare_bundle(source, tmp_path / "model")
    interactive = deepedit.interactive_bundle("auto", source, tmp_path / "model", {"liver_ct_seg": auto_bundle})
    task = deepedit.LiverDeepEditInferTask(str(interactive.path), {})
    # the interactive model has no HU peel (it would undo foreground clicks): compare with the automatic one without it
    assert deepedit.merged_deepedit_config(source, "inference.json")["peel_k_mad"] == 0
    auto_config = auto_bundle.path / "configs" / "inference.json"
    auto_config.write_text(json.dumps(dict(json.loads(auto_config.read_text()), peel_k_mad=0), indent=4))
    assert task.is_valid() and task.type == "deepedit"
    assert set(task.labels) == {"background", "liver", "tumor"}  # the viewers' label selection

    p = phantoms["case_lps"]
    image = str(write_nifti(tmp_path / "img.nii.gz", p.image, p.affine))
    auto_out, _ = LiverSegInferTask(str(auto_bundle.path), {})({"image": image, "device": "cpu"})
    out, params = task({"image": image, "device": "cpu", "liver": [], "tumor": [], "background": []})
    a, b = nib.load(auto_out), nib.load(out)
    assert b.shape == p.image.shape and np.allclose(b.affine, a.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(b.dataobj), np.asarray(a.dataobj))  # zero guidance weights, no click
    assert "volumetry" in params
    for f in (auto_out, out):
        os.remove(f)

    # a click in the voxel indices of the image as loaded lands at the same world point in the network's input
    click = [int(v) for v in np.argwhere(p.label == 2).mean(axis=0)]
    data = {"image": image, "device": "cpu", "tumor": [click]}
    data = task.run_pre_transforms(data, task.pre_transforms(data))
    x = data["image"]
    assert x.shape[0] == 4 and x[1].sum() == 0 and x[3].sum() == 0
    peak = np.unravel_index(int(torch.argmax(x[2])), x.shape[1:])
    world = (p.affine @ np.array([*click, 1.0]))[:3]
    spacing = np.asarray(nib.affines.voxel_sizes(np.asarray(x.affine)))
    assert np.all(np.abs((np.asarray(x.affine) @ np.array([*peak, 1.0]))[:3] - world) <= spacing / 2 + 1e-4)

    # the click re-infers a crop: the task keeps one cache across requests (monailabel builds a new inferer for each),
    # per image and weights version; new weights empty it
    cache = task._click_cache
    assert len(cache) == 1 and os.path.samefile(cache.model[0], interactive.weights)
    made, build = [], task.inferer
    task.inferer = lambda data=None: made.append(build(data)) or made[-1]
    out, _ = task({"image": image, "device": "cpu", "tumor": [click]})
    assert nib.load(out).shape == p.image.shape and made[-1].cache is cache and len(cache) == 1
    assert made[-1].last["mode"] == "crop"
    os.remove(out)
    before = cache.model
    st = os.stat(interactive.weights)
    os.utime(interactive.weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    os.remove(task({"image": image, "device": "cpu", "tumor": [click]})[0])
    assert cache.model != before and len(cache) == 1 and made[-1].last["mode"] == "full"

    with pytest.raises(BadRequest, match="3 finite numbers"):
        task({"image": image, "device": "cpu", "liver": [[1, 2]]})
