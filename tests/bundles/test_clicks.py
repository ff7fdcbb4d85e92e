"""The interactive model's click code (scripts/clicks.py) and its configs (train_deepedit.json,
inference_deepedit.json): simulated clicks, guidance balls, clicks placed through world space (RAS and LPS), the
click-simulating training iteration, weights widened from the automatic model."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import BUNDLE

sys.path.insert(0, str(BUNDLE))

from monai.bundle import ConfigParser  # noqa: E402
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd  # noqa: E402

from scripts.clicks import (  # noqa: E402
    GUIDANCE_LABELS,
    AddClickGuidance,
    AddClickGuidanced,
    ClickInteraction,
    guidance_from_points,
    largest_error_click,
    load_automatic_weights,
)


def _cube(shape, lo, hi, value=1) -> np.ndarray:
    a = np.zeros(shape, np.int16)
    a[tuple(slice(a_, b_) for a_, b_ in zip(lo, hi, strict=True))] = value
    return a


@pytest.mark.parametrize(
    "pred, truth, expected",
    [
        # a missed cube (truth liver): a liver click at its centre
        (np.zeros((20, 20, 20)), _cube((20, 20, 20), (5, 5, 5), (12, 12, 12)), (1, (8, 8, 8))),
        # a false-positive cube: a background click
        (_cube((20, 20, 20), (2, 2, 2), (9, 9, 9), 2), np.zeros((20, 20, 20)), (0, (5, 5, 5))),
        # a missed tumor (3^3) and a larger missed liver part (5^3): the larger region wins
        (np.zeros((20, 20, 20)),
         _cube((20, 20, 20), (1, 1, 1), (4, 4, 4), 2) + _cube((20, 20, 20), (10, 10, 10), (15, 15, 15), 1),
         (1, (12, 12, 12))),
        # a tumor predicted as liver: a tumor click
        (_cube((20, 20, 20), (0, 0, 0), (20, 20, 20), 1), _cube((20, 20, 20), (0, 0, 0), (20, 20, 20), 1)
         + _cube((20, 20, 20), (4, 4, 4), (9, 9, 9), 1), (2, (6, 6, 6))),
        # nothing wrong: no click
        (_cube((8, 8, 8), (1, 1, 1), (5, 5, 5)), _cube((8, 8, 8), (1, 1, 1), (5, 5, 5)), None),
    ],
)  # fmt: skip
def test_largest_error_click(pred, truth, expected):
    assert largest_error_click(pred, truth) == expected


def test_click_centre_is_inside_a_non_convex_region():
    """An L-shaped miss: the click is the voxel farthest from the border, inside the region (its centroid is not)."""
    truth = np.zeros((30, 30, 5), np.int16)
    truth[2:28, 2:8, :] = 1
    truth[2:8, 2:28, :] = 1
    label, point = largest_error_click(np.zeros_like(truth), truth)
    assert label == 1 and truth[point] == 1


def test_largest_error_click_errors():
    with pytest.raises(ValueError, match="differs"):
        largest_error_click(np.zeros((3, 3)), np.zeros((3, 4)))


def test_guidance_balls():
    g = guidance_from_points((12, 12, 12), [[[6, 6, 6]], [], [[0, 0, 0], [50, 0, 0]]], radius=2.0)
    assert g.shape == (3, 12, 12, 12) and g.dtype == np.float32
    assert g[0, 6, 6, 6] == 1.0 and 0 < g[0, 8, 6, 6] < g[0, 7, 6, 6] < 1 and g[0, 9, 6, 6] == 0.0
    assert g[0, 7, 7, 7] > 0 and g[0, 8, 8, 6] == 0.0  # distance 2.83 > radius
    assert not g[1].any()
    assert g[2, 0, 0, 0] == 1.0 and np.count_nonzero(g[2]) == np.count_nonzero(g[0][6:, 6:, 6:])  # a clipped ball
    with pytest.raises(ValueError, match="coordinates"):
        guidance_from_points((4, 4, 4), [[[1, 1]]])
    with pytest.raises(ValueError, match="radius"):
        guidance_from_points((4, 4, 4), [[]], radius=0)


def test_add_click_guidance_array():
    image = torch.zeros(1, 10, 10, 10)
    out = AddClickGuidance()(image, {"tumor": [[3, 4, 5]]})
    assert out.shape == (1 + len(GUIDANCE_LABELS), 10, 10, 10)
    assert out[2, 3, 4, 5] == 1.0 and out[1].sum() == 0 and out[3].sum() == 0
    assert AddClickGuidance()(image).shape[0] == 4 and AddClickGuidance()(image)[1:].sum() == 0  # zero clicks
    with pytest.raises(ValueError, match="valid labels: liver, tumor, background"):
        AddClickGuidance()(image, {"vessel": [[1, 1, 1]]})


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_clicks_land_on_the_same_world_point_after_preprocessing(tmp_path, orientation):
    """A click given in the voxel indices of the file as loaded peaks, after reorientation and resampling, at the
    voxel of the same world point (also for an LPS file, whose axes the preprocessing flips)."""
    spacing = np.array([1.5, 1.5, 3.0])
    flip = np.diag([-1.0, -1.0, 1.0]) if orientation == "LPS" else np.eye(3)
    a = np.eye(4)
    a[:3, :3] = flip @ np.diag(spacing)
    a[:3, 3] = [10.0, -20.0, 5.0]
    nib.save(nib.Nifti1Image(np.zeros((40, 36, 20), np.int16), a), str(tmp_path / "ct.nii.gz"))
    click = [7, 30, 4]
    world = (a @ np.array([*click, 1.0]))[:3]
    pre = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(2.0, 2.0, 2.5)),
            AddClickGuidanced("image"),
        ]
    )
    out = pre({"image": str(tmp_path / "ct.nii.gz"), "liver": [click], "tumor": [], "background": []})
    img = out["image"]
    assert img.shape[0] == 4
    peak = np.unravel_index(int(torch.argmax(img[1])), img.shape[1:])
    peak_world = (np.asarray(img.affine) @ np.array([*peak, 1.0]))[:3]
    assert np.all(np.abs(peak_world - world) <= np.array([2.0, 2.0, 2.5]) / 2 + 1e-6)
    assert img.applied_operations  # the trace stays: the inversion of the prediction still works


class _Engine:
    """What ClickInteraction uses of a MONAI engine; the 'network' predicts a fixed map plus the clicks' labels."""

    def __init__(self, pred: torch.Tensor):
        self.state = SimpleNamespace(device=torch.device("cpu"), batch=None)
        self.pred = pred
        self.seen: list[torch.Tensor] = []
        self.network = torch.nn.Identity()
        self.network.train()

        def inferer(inputs, network):
            assert not network.training  # clicks are simulated in eval mode
            self.seen.append(inputs.clone())
            logits = torch.nn.functional.one_hot(self.pred.long(), 3).permute(0, 4, 1, 2, 3).float()
            for channel, value in enumerate(GUIDANCE_LABELS.values()):  # a click fixes its ball
                ball = inputs[:, 1 + channel] > 0.5
                logits[:, :, ...][ball.unsqueeze(1).expand_as(logits)] = 0.0
                logits[:, value][ball] = 10.0
            return logits

        self.inferer = inferer

    def _iteration(self, engine, batchdata):
        return {"image": batchdata["image"], "label": batchdata["label"]}


def test_click_interaction_clicks_in_the_largest_error_and_trains_on_the_guidance():
    truth = torch.zeros(1, 1, 16, 16, 16)
    truth[0, 0, 2:12, 2:12, 2:12] = 1
    truth[0, 0, 4:7, 4:7, 4:7] = 2
    engine = _Engine(torch.zeros(1, 16, 16, 16))
    out = ClickInteraction(max_clicks=2, train=False)(engine, {"image": torch.rand(1, 1, 16, 16, 16), "label": truth})
    assert out["image"].shape == (1, 4, 16, 16, 16) and engine.network.training  # train mode restored
    assert len(engine.seen) == 2  # two rounds, each after one more click
    assert engine.seen[0][:, 1:].sum() == 0  # the first prediction has no click
    liver, tumor = out["image"][0, 1], out["image"][0, 2]
    # the missed liver is the largest error in both rounds (the stub fixes only the clicked balls): two liver clicks
    assert int((liver == 1.0).sum()) == 2 and bool((truth[0, 0][liver == 1.0] == 1).all())
    assert tumor.sum() == 0
    assert out["image"][0, 3].sum() == 0  # no false positive: no background click


def test_click_interaction_rounds():
    assert ClickInteraction(max_clicks=3, train=False).rounds() == 3
    never = ClickInteraction(max_clicks=4, zero_click_prob=1.0)
    assert {never.rounds() for _ in range(20)} == {0}
    some = ClickInteraction(max_clicks=4, zero_click_prob=0.0, seed=1)
    assert {some.rounds() for _ in range(200)} == {1, 2, 3, 4}
    engine = _Engine(torch.zeros(1, 8, 8, 8))
    out = never(engine, {"image": torch.rand(1, 1, 8, 8, 8), "label": torch.ones(1, 1, 8, 8, 8)})
    assert out["image"].shape[1] == 4 and out["image"][:, 1:].sum() == 0 and not engine.seen  # zero clicks
    for bad in ({"max_clicks": -1}, {"zero_click_prob": 1.5}):
        with pytest.raises(ValueError):
            ClickInteraction(**bad)


def test_load_automatic_weights_widens_the_first_convolution(tmp_path):
    from scripts.networks import AttentionUNetDS

    kw = {"spatial_dims": 3, "out_channels": 3, "channels": [4, 8, 16], "strides": [2, 2]}
    auto = AttentionUNetDS(in_channels=1, **kw).eval()
    torch.save(auto.state_dict(), tmp_path / "model.pt")
    inter = load_automatic_weights(AttentionUNetDS(in_channels=4, **kw), str(tmp_path / "model.pt")).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():  # zero guidance: exactly the automatic model
        torch.testing.assert_close(inter(torch.cat([x, torch.zeros(1, 3, 16, 16, 16)], 1)), auto(x))
    torch.save({"model": inter.state_dict()}, tmp_path / "inter.pt")  # an interactive checkpoint loads as it is
    load_automatic_weights(AttentionUNetDS(in_channels=4, **kw), str(tmp_path / "inter.pt"))
    with pytest.raises(ValueError, match="shape"):
        load_automatic_weights(AttentionUNetDS(in_channels=4, **{**kw, "channels": [8, 8, 16]}),
                               str(tmp_path / "model.pt"))  # fmt: skip
    with pytest.raises(FileNotFoundError):
        load_automatic_weights(inter, str(tmp_path / "none.pt"))
    assert load_automatic_weights(inter, str(tmp_path / "none.pt"), missing_ok=True) is inter


@pytest.mark.parametrize("base, override", [("inference.json", "inference_deepedit.json"),
                                            ("train.json", "train_deepedit.json")])  # fmt: skip
def test_deepedit_configs_override_the_automatic_ones(base, override):
    """Overrides, not copies: the same preprocessing declarations, the network with 1 + 3 input channels."""
    auto = ConfigParser.load_config_file(str(BUNDLE / "configs" / base))
    merged = ConfigParser(ConfigParser.load_config_files([str(BUNDLE / "configs" / f) for f in (base, override)]))
    merged["bundle_root"] = str(BUNDLE)
    assert merged.get_parsed_content("in_channels") == 1 + len(GUIDANCE_LABELS)
    if base == "train.json":
        assert merged["deterministic_transforms"] == auto["deterministic_transforms"]
        assert merged["random_transforms"] == auto["random_transforms"]
        assert merged["train"]["trainer"]["iteration_update"]["_target_"] == "scripts.clicks.ClickInteraction"
        assert "scripts.runs.promote" not in " ".join(merged["run"])  # would replace the automatic weights
    else:
        n = len(auto["preprocessing"]["transforms"])
        assert merged["preprocessing"]["transforms"][:n] == auto["preprocessing"]["transforms"]
        assert merged["preprocessing"]["transforms"][n]["_target_"] == "scripts.clicks.AddClickGuidanced"


def test_deepedit_inference_runs_with_and_without_clicks(tmp_path):
    """The real inference config (small network, random weights) on a tiny LPS phantom: the label comes back on the
    source grid, with zero clicks and with clicks."""
    from liverseg.phantom import generate_phantom

    p = generate_phantom(7, shape=(48, 48, 24), orientation="LPS")
    nib.save(nib.Nifti1Image(p.image.astype(np.int16), p.affine), str(tmp_path / "ct.nii.gz"))
    files = [str(BUNDLE / "configs" / f) for f in ("inference.json", "inference_deepedit.json")]
    parser = ConfigParser(ConfigParser.load_config_files(files))
    parser.update({"bundle_root": str(BUNDLE), "channels": [4, 8, 16, 32, 64], "roi_size": [32, 32, 32],
                   "pixdim": [4.0, 4.0, 4.0], "device": "$torch.device('cpu')"})  # fmt: skip
    parser.parse()
    pre = parser.get_parsed_content("preprocessing")
    net = parser.get_parsed_content("network").eval()
    inferer = parser.get_parsed_content("inferer")
    centre = [int(v) for v in np.argwhere(p.label == 1).mean(axis=0)]
    for clicks in ({}, {"liver": [centre], "background": [[1, 1, 1]]}):
        data = pre({"image": str(tmp_path / "ct.nii.gz"), **clicks})
        assert data["image"].shape[0] == 4 and (data["image"][1:].sum() > 0) == bool(clicks)
        with torch.no_grad():
            data["pred"] = inferer(data["image"][None], net)[0]
        post = parser.get_parsed_content("postprocessing").transforms[:-1]  # without SaveImaged
        for t in post:
            data = t(data)
        assert tuple(data["pred"].shape[-3:]) == p.image.shape


def test_grow_clicks_claims_the_clicked_region_only():
    from scripts.clicks import SoftmaxWithClicksd, grow_clicks

    shape = (30, 30, 20)
    intensity = np.full(shape, 0.2, np.float32)
    intensity[5:15, 5:15, 5:15] = 0.7  # a "missed liver part": predicted background, liver-like intensity
    intensity[15:25, 5:15, 5:15] = 0.4  # touching, another intensity: must stay background
    prob = np.zeros((3, *shape), np.float32)
    prob[0] = 0.9
    prob[1] = 0.1
    guidance = guidance_from_points(shape, [[[10, 10, 10]], [], []])
    out = grow_clicks(prob, intensity, guidance, [1, 2, 0], radius=(15, 15, 5))
    claimed = np.argmax(out, 0) == 1
    assert claimed[5:15, 5:15, 5:15].all() and claimed.sum() == 1000
    np.testing.assert_array_equal(grow_clicks(prob, intensity, np.zeros((3, *shape)), [1, 2, 0]), prob)
    small = grow_clicks(prob, intensity, guidance, [1, 2, 0], radius=(2, 2, 2))
    assert 1 < (np.argmax(small, 0) == 1).sum() <= 33  # within the radius only
    # a click on a voxel that already has the click's class changes nothing
    prob_liver = prob[[1, 0, 2]]
    np.testing.assert_array_equal(grow_clicks(prob_liver, intensity, guidance, [1, 2, 0]), prob_liver)

    image = torch.as_tensor(np.concatenate([intensity[None], guidance]))
    logits = torch.as_tensor(np.log(prob))
    d = SoftmaxWithClicksd("pred")({"pred": logits, "image": image})
    assert (torch.argmax(d["pred"], 0).numpy() == 1).sum() == 1000
    plain = SoftmaxWithClicksd("pred")({"pred": logits, "image": image[:1]})["pred"]
    torch.testing.assert_close(plain, torch.softmax(logits, 0))


def test_a_click_takes_a_lobe_whole_but_only_its_neighbourhood_in_the_bulk():
    """A background click on a false-positive lobe (liver intensity, hanging on the liver by a thin bridge) removes the
    lobe and the bridge, not the liver behind; a background click in the liver's bulk removes only a small ball; a
    thin false-positive plate is taken whole."""
    from scripts.clicks import grow_clicks

    shape = (60, 40, 30)
    intensity = np.full(shape, 0.6, np.float32)  # everything has the liver's intensity: only the shape can tell
    liver = np.zeros(shape, bool)
    liver[:34, :, :] = True  # the bulk, far wider than a click's reach
    liver[40:50, 15:25, 10:20] = True  # a 10-voxel lobe ...
    liver[34:40, 19:21, 14:16] = True  # ... on a 2 x 2 voxel bridge
    liver[34:44, 0:8, 5:7] = True  # a 2-voxel plate sticking out of the bulk's face
    prob = np.where(liver[None], np.array([0.1, 0.9, 0.0])[:, None, None, None], np.array([0.9, 0.1, 0.0])[:, None,
                    None, None]).astype(np.float32)  # fmt: skip

    def background_click(point):
        guidance = guidance_from_points(shape, [[], [], [point]])
        return np.argmax(grow_clicks(prob, intensity, guidance, [1, 2, 0], radius=(15, 15, 15)), 0) == 1

    after = background_click([45, 20, 15])  # the lobe's centre
    assert not after[40:50, 15:25, 10:20].any() and not after[39:40, 19:21, 14:16].any()  # the bridge: its end
    assert after[:34].all()  # the bulk keeps every voxel
    after = background_click([20, 20, 15])  # the bulk's centre
    removed = liver & ~after
    assert 0 < removed.sum() <= 123 and removed[20, 20, 15]  # a ball of radius 3 voxels at most
    after = background_click([40, 4, 6])  # the plate
    assert not after[36:44, 0:8, 5:7].any() and after[:34].all() and after[40:50, 15:25, 10:20].all()
    # open_radius 0: the former rule, the whole connected region within the ball
    guidance = guidance_from_points(shape, [[], [], [[45, 20, 15]]])
    whole = np.argmax(grow_clicks(prob, intensity, guidance, [1, 2, 0], (15, 15, 15), open_radius=0), 0) == 1
    assert (liver & ~whole)[:34].sum() > 500  # the bulk's cap within the click's reach went with the lobe
