"""The crop around a click (scripts/click_crop.py): crops and paste weights, the per-volume cache, and the inferer:
outside the crops the logits are the kept ones, a click the network ignores changes nothing, a click it follows
changes what a full re-inference changes near the click, and the cache is invalidated when the weights change."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from tests.conftest import BUNDLE

sys.path.insert(0, str(BUNDLE))

from monai.bundle import ConfigParser  # noqa: E402
from monai.data import MetaTensor  # noqa: E402
from monai.inferers import SlidingWindowInferer  # noqa: E402

from scripts.click_crop import (  # noqa: E402
    ClickCropCache,
    ClickCropInferer,
    changed_regions,
    crop_window,
    feather_weights,
    paste,
)
from scripts.clicks import guidance_from_points  # noqa: E402


def test_changed_regions_and_crop_windows():
    changed = np.zeros((40, 30, 20), bool)
    changed[5:8, 5:8, 5:8] = True
    changed[30:33, 20:23, 10:12] = True
    labels, boxes = changed_regions(changed, max_regions=2)
    assert labels.max() == 2 and len(boxes) == 2
    assert changed_regions(changed, max_regions=1) is None
    assert changed_regions(np.zeros((4, 4, 4), bool))[1] == []
    # centred on the region, shifted inside the volume, clipped to it
    assert crop_window(boxes[0], changed.shape, (16, 16, 8)) == (slice(0, 16), slice(0, 16), slice(2, 10))
    assert crop_window(boxes[1], changed.shape, (16, 16, 8)) == (slice(23, 39), slice(13, 29), slice(7, 15))
    assert crop_window(boxes[1], changed.shape, (64, 64, 8)) == (slice(0, 40), slice(0, 30), slice(7, 15))
    # a region larger than the crop: the crop grows to hold it plus the feather on both sides
    big = (slice(10, 30), slice(0, 5), slice(0, 2))
    assert crop_window(big, changed.shape, (8, 8, 8), feather=(2, 0, 0)) == (slice(8, 32), slice(0, 8), slice(0, 8))


def test_feather_weights_ramp_only_at_inner_faces():
    w = feather_weights((slice(0, 10), slice(5, 15)), (10, 30), (3, 3))
    assert w.shape == (10, 10) and w.dtype == np.float32
    np.testing.assert_allclose(w[:, 0], 0.25)  # inner face: 1 / (f + 1)
    np.testing.assert_allclose(w[:, -1], 0.25)
    np.testing.assert_allclose(w[0, 3:7], 1.0)  # the volume's border: nothing to blend with, no ramp
    np.testing.assert_allclose(w[5, :4], [0.25, 0.5, 0.75, 1.0])
    assert (feather_weights((slice(2, 6),), (10,), (0,)) == 1).all()  # 0: a hard paste


def test_paste_touches_only_the_window():
    full = torch.zeros(1, 3, 12, 12, 12)
    window = (slice(2, 10), slice(0, 8), slice(4, 12))
    paste(full, torch.ones(1, 3, 8, 8, 8), window, (2, 2, 2))
    outside = torch.ones_like(full, dtype=torch.bool)
    outside[(..., *window)] = False
    assert (full[outside] == 0).all() and full[(..., *window)].min() > 0
    assert full[0, 0, 5, 5, 6] == 1.0 and full[0, 0, 2, 5, 6] == pytest.approx(1 / 3)


def test_cache_is_a_bounded_lru_and_forgets_another_model():
    cache = ClickCropCache(max_volumes=2)
    g, l_ = torch.zeros(1), torch.ones(1)
    cache.use_model("m1")
    for k in "abc":
        cache.put(k, g, l_)
    assert len(cache) == 2 and cache.get("a") is None and cache.get("b") is not None
    cache.put("d", g, l_)  # "b" was used last: "c" goes
    assert cache.get("c") is None and cache.get("b") is not None
    cache.use_model("m1")
    assert len(cache) == 2
    cache.use_model("m2")
    assert len(cache) == 0
    with pytest.raises(ValueError):
        ClickCropCache(0)


class _LocalNet(torch.nn.Module):
    """A tiny 3D conv net: channel 0 the image, 1..3 guidance; ``follow`` scales how much it follows the clicks; a
    position-dependent term (zero padding) makes one window differ from the blend of several, as real networks do."""

    def __init__(self, follow: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(4, 3, 5, padding=2)
        self.smooth = torch.nn.Conv3d(3, 3, 5, padding=2)
        with torch.no_grad():
            self.conv.weight[:, 1:] = 0.0
            self.conv.weight[1, 1, 2, 2, 2] = follow  # a liver click raises the liver score around it
            self.smooth.weight.fill_(1.0 / 125)
            self.smooth.bias.zero_()

    def forward(self, x):
        return self.smooth(self.conv(x))


def _inputs(shape, clicks):
    torch.manual_seed(1)
    image = torch.rand(1, 1, *shape)
    guidance = torch.as_tensor(guidance_from_points(shape, clicks, radius=2.0))[None]
    return MetaTensor(torch.cat([image, guidance], dim=1))


@pytest.mark.parametrize("follow", [0.0, 30.0])
def test_inferer_crop_vs_full_reinference(follow):
    shape, roi = (48, 40, 24), (16, 16, 16)
    net = _LocalNet(follow).eval()
    full = SlidingWindowInferer(roi, 1, 0.25, "gaussian")
    crop = ClickCropInferer(roi, 1, 0.25, "gaussian", crop_size=roi, feather=(2, 2, 2))
    with torch.no_grad():
        x0 = _inputs(shape, [[], [], []])
        first = crop(x0, net)
        assert crop.last["mode"] == "full" and isinstance(first, MetaTensor)
        torch.testing.assert_close(first.as_tensor(), full(x0, net).as_tensor())  # no entry yet: the full inference
        x1 = _inputs(shape, [[[20, 20, 12]], [], []])
        out = crop(x1, net)
        ref = full(x1, net)
    assert crop.last["mode"] == "crop" and crop.last["windows"] == [[(12, 28), (12, 28), (4, 20)]]
    inside = torch.zeros(shape, dtype=torch.bool)
    inside[12:28, 12:28, 4:20] = True
    torch.testing.assert_close(out[..., ~inside], first[..., ~inside], rtol=0, atol=0)  # by construction
    if follow == 0:  # a click the network ignores changes nothing, although one window differs from the blend
        torch.testing.assert_close(out.as_tensor(), first.as_tensor())
    else:  # near the click: what the full re-inference does
        assert (ref - first)[0, 1, 20, 20, 12] > 1.0
        core = (slice(None), slice(None), slice(16, 25), slice(16, 25), slice(8, 17))
        torch.testing.assert_close(out[core].argmax(1), ref[core].argmax(1), rtol=0, atol=0)
        assert (out.argmax(1) != ref.argmax(1)).float().mean() < 0.01
    with torch.no_grad():
        again = crop(x1, net)  # the same clicks: the kept logits
    assert crop.last["mode"] == "same"
    torch.testing.assert_close(again.as_tensor(), out.as_tensor())
    with torch.no_grad():
        undone = crop(x0, net)  # the click removed: back to the first result near enough
    assert crop.last["mode"] == "crop"
    torch.testing.assert_close(undone.as_tensor(), first.as_tensor(), atol=1e-4, rtol=1e-4)


def test_inferer_falls_back_to_full_inference():
    shape, roi = (32, 32, 16), (16, 16, 16)
    net = _LocalNet(30.0).eval()
    full = SlidingWindowInferer(roi, 1, 0.25, "gaussian")
    crop = ClickCropInferer(roi, 1, 0.25, "gaussian", max_crops=1)
    many = _inputs(shape, [[[5, 5, 5], [25, 25, 10]], [], []])
    with torch.no_grad():
        crop(_inputs(shape, [[], [], []]), net)
        torch.testing.assert_close(crop(many, net), full(many, net))  # two new regions > max_crops
        assert crop.last["mode"] == "full"
        other = _inputs((32, 32, 17), [[], [], []])  # another volume: no entry
        crop(other, net)
        assert crop.last["mode"] == "full" and len(crop.cache) == 2
        net.conv.bias.add_(1.0)  # new weights: the cache is emptied, the whole volume again
        torch.testing.assert_close(crop(many, net), full(many, net))
        assert crop.last["mode"] == "full" and len(crop.cache) == 1
        off = ClickCropInferer(roi, 1, 0.25, "gaussian", crop=False)
        off(many, net)
        assert off.last["mode"] == "full" and len(off.cache) == 0


def test_deepedit_config_declares_the_crop():
    files = [str(BUNDLE / "configs" / f) for f in ("inference.json", "inference_deepedit.json")]
    parser = ConfigParser(ConfigParser.load_config_files(files))
    parser["bundle_root"] = str(BUNDLE)
    inferer = parser.get_parsed_content("inferer")
    assert type(inferer).__name__ == "ClickCropInferer" and inferer.crop is True
    assert list(inferer.crop_size) == parser["click_crop_size"]
    assert inferer.cache.max_volumes == parser["click_cache_volumes"] and list(inferer.feather) == [6, 6, 4]
    assert inferer.mode == "gaussian" and inferer.overlap == parser["sw_overlap"]
    parser["click_crop"] = False
    assert parser.get_parsed_content("inferer", lazy=False).crop is False
