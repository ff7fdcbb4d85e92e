"""The intensity augmentation declared in train.json (issue 14): off by default (the shipped weights' recipe), and
with it on the real config, shrunk, instantiates every transform and trains one tiny epoch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.bundles.test_bundle import CONFIGS, TRAIN_SHRINK, workflow

AUGMENTATION = {
    "RandGaussianNoised": "aug_prob_noise",
    "RandGaussianSmoothd": "aug_prob_smooth",
    "RandGaussianSharpend": "aug_prob_sharpen",
    "RandAdjustContrastd": "aug_prob_contrast",
    "RandScaleIntensityd": "aug_prob_scale_intensity",
    "RandShiftIntensityd": "aug_prob_shift_intensity",
    "RandSimulateLowResolutiond": "aug_prob_low_resolution",
    "RandBiasFieldd": "aug_prob_bias_field",
}


def _train_transform_names(wf) -> list[str]:
    return [type(t).__name__ for t in wf.parser.get_parsed_content("train#preprocessing").transforms]


def test_augmentation_is_off_by_default_and_named(phantom_dataset, tmp_path):
    """Default: the shipped recipe (no intensity transform); the probabilities are named config values."""
    cfg = json.loads((CONFIGS / "train.json").read_text())
    assert cfg["intensity_augmentation"] is False
    for name, prob_id in AUGMENTATION.items():
        assert 0.0 < cfg[prob_id] <= 1.0, prob_id
        (item,) = [t for t in cfg["random_transforms"] if t["_target_"] == name]
        assert item["prob"] == f"@{prob_id}" and item["keys"] == "image"
    wf = workflow("train", dataset_dir=str(phantom_dataset), output_dir=str(tmp_path), **TRAIN_SHRINK)
    wf.initialize()
    assert not set(AUGMENTATION) & set(_train_transform_names(wf))


def test_one_epoch_with_augmentation_on(phantom_dataset, tmp_path):
    """Every augmentation fires (probabilities 1) and a tiny epoch trains; validation stays deterministic."""
    probs = {p: 1.0 for p in AUGMENTATION.values()}
    wf = workflow(
        "train", dataset_dir=str(phantom_dataset), ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "log"),
        max_epochs=1, val_interval=1, intensity_augmentation=True, **probs, **TRAIN_SHRINK,
    )
    wf.initialize()
    names = _train_transform_names(wf)
    assert set(AUGMENTATION) <= set(names)
    assert not set(AUGMENTATION) & {type(t).__name__ for t in wf.parser.get_parsed_content(
        "validate#preprocessing").transforms}
    for t in wf.parser.get_parsed_content("train#preprocessing").transforms:
        if type(t).__name__ in AUGMENTATION:
            assert t.prob == 1.0
    # the augmented training patch differs from the same patch (same crop and affine draws) without augmentation
    from monai.transforms import Compose

    data = wf.parser.get_parsed_content("train#dataset").data[0]
    chain = wf.parser.get_parsed_content("train#preprocessing").transforms
    plain = Compose([t for t in chain if type(t).__name__ not in AUGMENTATION]).set_random_state(seed=0)
    augmented = Compose(chain).set_random_state(seed=0)
    a, b = np.asarray(plain(dict(data))[0]["image"]), np.asarray(augmented(dict(data))[0]["image"])
    assert a.shape == b.shape and np.isfinite(b).all()
    assert np.abs(a - b).mean() > 1e-3
    wf.run()
    wf.finalize()
    assert (tmp_path / "models" / "model.pt").is_file()
    resolved = json.loads((tmp_path / "log" / "config_resolved.json").read_text())
    assert resolved["intensity_augmentation"] is True


@pytest.mark.parametrize("prob_id", sorted(AUGMENTATION.values()))
def test_each_probability_reaches_its_transform(phantom_dataset, tmp_path, prob_id):
    wf = workflow(
        "train", dataset_dir=str(phantom_dataset), output_dir=str(tmp_path), intensity_augmentation=True,
        **{prob_id: 0.37}, **TRAIN_SHRINK,
    )
    wf.initialize()
    name = next(n for n, p in AUGMENTATION.items() if p == prob_id)
    (t,) = [t for t in wf.parser.get_parsed_content("train#preprocessing").transforms if type(t).__name__ == name]
    assert t.prob == pytest.approx(0.37)
