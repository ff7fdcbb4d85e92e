"""Tests for the phantoms' domain randomization (liverseg.phantom_domain, ``domain_randomization=True``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from liverseg.dataset import read_dataset_json
from liverseg.imageio import spacing_of
from liverseg.phantom import TISSUES, generate_phantom, register_cli
from liverseg.phantom_domain import CONTRAST_PHASES, DOMAIN_RANGES, draw_domain, draw_tumor_look

SMALL = (48, 48, 24)
BASE_HU = {"liver": 105.0, "spleen": 115.0, "kidney": 160.0, "heart": 130.0, "aorta": 170.0, "ivc": 165.0,
           "portal_vein": 170.0, "hepatic_vein": 170.0, "gi_wall": 55.0, "gi_content": 20.0, "muscle": 50.0,
           "gallbladder": 10.0, "fat": -100.0, "air": -1000.0, "gi_gas": -1000.0}


def _within(value: float, lo_hi, slack: float = 1e-9) -> bool:
    return lo_hi[0] - slack <= value <= lo_hi[1] + slack


def test_categorical_tables_are_probabilities():
    for key, table in DOMAIN_RANGES.items():
        if isinstance(table, dict) and all(isinstance(v, float) for v in table.values()):
            assert abs(sum(table.values()) - 1.0) < 1e-9, key
    assert set(DOMAIN_RANGES["contrast_phase"]) == set(CONTRAST_PHASES)


def test_draws_stay_in_the_declared_ranges():
    R = DOMAIN_RANGES
    rng = np.random.default_rng(0)
    phases, kernels, coverages = set(), set(), set()
    for _ in range(300):
        d = draw_domain(rng, BASE_HU)
        phases.add(d.contrast_phase)
        kernels.add(d.kernel)
        coverages.add(d.partial_coverage)
        for key in ("hu_scale", "hu_offset", "noise_sigma_hu", "noise_grain_vox", "inplane_spacing_mm",
                    "slice_spacing_mm", "margin_top_mm", "margin_bottom_mm", "extra_fat_mm", "texture_hu"):
            assert _within(getattr(d, key), R[key]), key
        assert _within(d.kernel_blur_mm, R["kernel_blur_mm"][d.kernel])
        assert _within(d.body_scale, R["body_scale"][d.body_type])
        # the liver's HU is the phase's range, through the calibration
        lo, hi = CONTRAST_PHASES[d.contrast_phase]["liver"]
        lo, hi = sorted((lo * d.hu_scale + d.hu_offset, hi * d.hu_scale + d.hu_offset))
        assert _within(d.tissue_hu["liver"], (lo, hi), 1e-6)
        assert d.tissue_hu["air"] == -1000.0  # air is not calibrated
        assert d.num_tumors in R["num_tumors"]
    # 300 draws see every category
    assert phases == set(R["contrast_phase"])
    assert kernels == set(R["kernel"])
    assert coverages == set(R["partial_coverage"])


def test_tumor_looks():
    rng = np.random.default_rng(1)
    kinds = set()
    for _ in range(400):
        look = draw_tumor_look(rng, 100.0, lambda v: v)
        kinds.add(look["kind"])
        assert _within(look["diameter_mm"], DOMAIN_RANGES["tumor_diameter_mm"])
        if look["kind"] == "hypo":
            assert look["hu"] < 100.0
        if look["kind"] == "hyper":
            assert look["hu"] > 100.0
        if look["kind"] == "rim":
            assert look["rim_hu"] > 100.0 > look["hu"]
        if look["kind"] == "calcified":
            assert look["core_hu"] >= 250.0
    assert kinds == set(DOMAIN_RANGES["tumor_kind"])


def test_randomized_phantom_is_deterministic_and_recorded():
    a = generate_phantom(4, shape=SMALL, domain_randomization=True)
    b = generate_phantom(4, shape=SMALL, domain_randomization=True)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert a.info["domain"] == b.info["domain"]
    plain = generate_phantom(4, shape=SMALL)
    assert "domain" not in plain.info
    assert not np.array_equal(plain.image, a.image)


def test_contrast_phase_sets_the_liver_hu():
    """The drawn liver HU shows in the image (texture and noise average out over the liver)."""
    seen = {}
    for seed in range(40):
        ph = generate_phantom(seed, shape=(64, 64, 32), num_tumors=0, domain_randomization=True)
        d = ph.info["domain"]
        if d["contrast_phase"] in seen:
            continue
        # liver parenchyma away from vessels and the partial-volume edge
        core = ndimage.binary_erosion(ph.tissues == TISSUES["liver"], iterations=2)
        if core.sum() < 200:
            continue
        seen[d["contrast_phase"]] = (float(np.median(ph.image[core])), d["tissue_hu"]["liver"])
        if len(seen) == len(CONTRAST_PHASES):
            break
    assert len(seen) >= 3, seen
    for phase, (measured, drawn) in seen.items():
        assert abs(measured - drawn) < 15.0, (phase, measured, drawn)
    # non-contrast livers are darker than portal venous ones (when both were drawn)
    if "non_contrast" in seen and "portal_venous" in seen:
        assert seen["non_contrast"][0] < seen["portal_venous"][0]


def test_child_body_is_smaller_in_world_space():
    for seed in range(200):
        rng_probe = generate_phantom(seed, shape=(32, 32, 16), num_tumors=0, domain_randomization=True)
        if rng_probe.info["domain"]["body_type"] == "child":
            break
    else:
        pytest.fail("no child-size body in 200 seeds")
    d = rng_probe.info["domain"]
    vox = np.linalg.norm(rng_probe.affine[:3, :3], axis=0)
    assert np.allclose(vox, rng_probe.info["spacing"], rtol=1e-3)
    ml = float(np.count_nonzero(rng_probe.label)) * float(np.prod(vox)) / 1000.0
    assert abs(ml - rng_probe.info["liver_volume_ml"]) < 0.5 + 0.001 * ml
    assert d["body_scale"] < 0.8


def test_cli_writes_randomized_dataset(tmp_path: Path, capsys):
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["phantoms", "--out", str(tmp_path / "D"), "--num-train", "2", "--num-test", "0",
                              "--seed", "5", "--shape", "40", "40", "20", "--domain-randomization"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "kernel" in out and "stomach" in out
    meta = read_dataset_json(tmp_path / "D")
    assert meta["generator"]["domain_randomization"] is True
    for case in meta["phantoms"].values():
        assert case["domain"]["contrast_phase"] in CONTRAST_PHASES
    img = tmp_path / "D" / "imagesTr" / "phantom_000_0000.nii.gz"
    assert all(s > 0 for s in spacing_of(nib.load(img).affine))


def test_preview_shows_the_drawn_domain(tmp_path: Path):
    from liverseg.preview import domain_note, render_preview

    root = tmp_path / "D"
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["phantoms", "--out", str(root), "--num-train", "2", "--num-test", "0", "--seed", "8",
                              "--shape", "40", "40", "20", "--domain-randomization"])
    assert args.func(args) == 0
    meta = read_dataset_json(root)
    note = domain_note(root, "phantom_001")
    assert note is not None
    assert meta["phantoms"]["phantom_001"]["domain"]["contrast_phase"].replace("_", " ") in note
    assert domain_note(root, "no_such_case") is None
    out = render_preview(root / "imagesTr" / "phantom_001_0000.nii.gz", tmp_path / "p.png", note=note)
    assert out.stat().st_size > 10_000
