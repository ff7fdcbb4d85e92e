"""Domain randomization of the synthetic phantoms: the ways real scans differ from the default phantom.

The default phantom (:mod:`liverseg.phantom`) is one scanner's portal venous phase with a textbook body. Real
scans vary in contrast phase, calibration, noise and reconstruction kernel, slice thickness, coverage, body
habitus, liver shape and lesion appearance, and a model trained on one look learns shortcuts (for example "105 HU
is liver") that break on the first real scan whose liver is 140 HU or whose stomach is full. Every such variation
is declared as a range in :data:`DOMAIN_RANGES` below (the one place to read or change them); :func:`draw_domain`
draws one :class:`Domain` from a random generator, and the generator applies it when a phantom is made with
``domain_randomization=True`` (``liverseg phantoms --domain-randomization``). The draws come from their own random
stream, so the default phantoms (and the sample data) are unchanged, and a randomized phantom keeps the seed's
body: only the listed properties change.

``liverseg preview`` shows a randomized case like any other; the drawn values are in the case's entry of
``dataset.json`` (``phantoms.<case>.domain``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["CONTRAST_PHASES", "DOMAIN_RANGES", "Domain", "draw_domain"]

CONTRAST_PHASES: dict[str, dict[str, tuple[float, float]]] = {
    # HU of the enhancing tissues per phase (typical adult values; the rest of TISSUE_HU_RANGES does not enhance)
    "non_contrast": {
        "liver": (48, 70), "spleen": (40, 55), "kidney": (28, 40), "heart": (35, 50), "aorta": (35, 50),
        "ivc": (35, 50), "portal_vein": (35, 50), "hepatic_vein": (30, 48), "gi_wall": (35, 50),
    },
    "arterial": {
        "liver": (65, 95), "spleen": (90, 160), "kidney": (150, 260), "heart": (150, 300), "aorta": (250, 420),
        "ivc": (60, 130), "portal_vein": (110, 190), "hepatic_vein": (60, 110), "gi_wall": (60, 110),
    },
    "portal_venous": {
        "liver": (90, 140), "spleen": (100, 140), "kidney": (140, 210), "heart": (115, 175), "aorta": (130, 210),
        "ivc": (110, 180), "portal_vein": (145, 210), "hepatic_vein": (130, 200), "gi_wall": (55, 90),
    },
    "delayed": {
        "liver": (75, 105), "spleen": (75, 105), "kidney": (110, 170), "heart": (85, 130), "aorta": (90, 135),
        "ivc": (90, 130), "portal_vein": (90, 125), "hepatic_vein": (90, 125), "gi_wall": (50, 75),
    },
}
"""Noise-free HU ranges of the enhancing tissues by contrast phase."""

DOMAIN_RANGES: dict[str, Any] = {
    # acquisition
    "contrast_phase": {"non_contrast": 0.15, "arterial": 0.15, "portal_venous": 0.55, "delayed": 0.15},
    "hu_scale": (0.93, 1.07),  # calibration: HU -> scale * HU + offset for every tissue but air
    "hu_offset": (-12.0, 12.0),
    "noise_sigma_hu": (4.0, 35.0),
    "kernel": {"smooth": 0.4, "standard": 0.3, "sharp": 0.3},
    "kernel_blur_mm": {"smooth": (0.8, 1.6), "standard": (0.0, 0.6), "sharp": (0.0, 0.4)},
    "kernel_sharpen_amount": {"smooth": (0.0, 0.0), "standard": (0.0, 0.3), "sharp": (0.4, 1.2)},
    "noise_grain_vox": (0.4, 1.2),  # correlation length of the noise in-plane (voxels): fine to coarse grain
    "inplane_spacing_mm": (1.2, 3.0),
    "slice_spacing_mm": (1.0, 5.0),
    # coverage: how far the scan reaches above the diaphragm and below the liver (mm); or a partial scan
    "margin_top_mm": (12.0, 140.0),
    "margin_bottom_mm": (10.0, 160.0),
    "partial_coverage": {"full": 0.8, "starts_mid_liver": 0.1, "ends_mid_liver": 0.1},
    # body
    "extra_fat_mm": (-3.0, 40.0),  # subcutaneous fat added to (or taken from) the default body
    "body_scale": {"adult": (1.0, 1.0), "small": (0.82, 0.95), "child": (0.65, 0.8)},
    "body_type": {"adult": 0.8, "small": 0.12, "child": 0.08},
    # parenchyma: smooth texture field (HU amplitude, correlation length in mm)
    "texture_hu": (0.0, 12.0),
    "texture_mm": (3.0, 10.0),
    # liver shape
    "right_lobe_scale": (0.85, 1.2),
    "left_lobe_scale": (0.55, 1.6),  # a large left lobe reaches the spleen
    "riedel_lobe": 0.15,  # probability of a long inferior tip of the right lobe
    "riedel_scale": (1.4, 2.0),
    "cirrhosis": 0.12,  # probability: small liver with a nodular surface
    "cirrhosis_volume": (0.55, 0.8),
    "nodularity_mm": (1.5, 3.5),
    "resection": 0.08,  # probability: a planar cut removes a part of one lobe
    "liver_volume_scale": (0.8, 1.25),
    # neighbours with liver-like HU
    "stomach_content": {"water": 0.45, "food": 0.4, "oral_contrast": 0.15},
    "stomach_content_hu": {"water": (0.0, 20.0), "food": (25.0, 75.0), "oral_contrast": (180.0, 450.0)},
    "stomach_gas": 0.6,  # probability of an air-fluid level
    "muscle_hu": (35.0, 70.0),
    "gallbladder_hu": (-5.0, 30.0),
    # lesions
    "num_tumors": {0: 0.15, 1: 0.25, 2: 0.15, 3: 0.12, 4: 0.1, 6: 0.1, 10: 0.08, 15: 0.05},
    "tumor_diameter_mm": (3.0, 120.0),  # drawn log-uniformly
    "tumor_kind": {"hypo": 0.45, "hyper": 0.15, "rim": 0.15, "cystic": 0.15, "calcified": 0.1},
    "tumor_contrast_hu": {"hypo": (-75.0, -15.0), "hyper": (15.0, 70.0), "rim": (-60.0, -20.0)},
    "rim_hu": (15.0, 60.0),  # rim above the liver
    "rim_mm": (2.0, 5.0),
    "cyst_hu": (0.0, 20.0),
    "calcification_hu": (250.0, 700.0),
    "subcapsular": 0.25,  # probability a lesion may reach the liver surface
    "confluent": 0.15,  # probability a lesion may overlap the previous one
}
"""Every randomized property of a phantom and its range: (lo, hi) uniform, {choice: probability} categorical,
a bare number a probability."""


@dataclass
class Domain:
    """One draw of :data:`DOMAIN_RANGES` (JSON-serializable with :meth:`to_json`)."""

    contrast_phase: str
    tissue_hu: dict[str, float]
    hu_scale: float
    hu_offset: float
    noise_sigma_hu: float
    kernel: str
    kernel_blur_mm: float
    kernel_sharpen_amount: float
    noise_grain_vox: float
    inplane_spacing_mm: float
    slice_spacing_mm: float
    margin_top_mm: float
    margin_bottom_mm: float
    partial_coverage: str
    extra_fat_mm: float
    body_type: str
    body_scale: float
    texture_hu: float
    texture_mm: float
    liver_shape: dict[str, Any]
    stomach_content: str
    stomach_gas: bool
    num_tumors: int
    seeds: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["tissue_hu"] = {k: round(v, 1) for k, v in self.tissue_hu.items()}
        for k, v in out.items():
            if isinstance(v, float):
                out[k] = round(v, 3)
        return out


def _choice(rng: np.random.Generator, table: dict) -> Any:
    keys = list(table)
    p = np.asarray([table[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def draw_domain(rng: np.random.Generator, base_hu: dict[str, float]) -> Domain:
    """Draw one domain. ``base_hu`` are the default phantom's tissue HU for this seed (non-enhancing tissues keep
    them, before calibration)."""
    R = DOMAIN_RANGES
    phase = _choice(rng, R["contrast_phase"])
    hu = dict(base_hu)
    for name, rng_hu in CONTRAST_PHASES[phase].items():
        hu[name] = _u(rng, rng_hu)
    hu["muscle"] = _u(rng, R["muscle_hu"])
    hu["gallbladder"] = _u(rng, R["gallbladder_hu"])
    content = _choice(rng, R["stomach_content"])
    hu["gi_content_stomach"] = _u(rng, R["stomach_content_hu"][content])
    stomach_gas = bool(rng.random() < R["stomach_gas"])
    scale, offset = _u(rng, R["hu_scale"]), _u(rng, R["hu_offset"])
    for name in hu:
        if hu[name] > -990:  # air and bowel gas stay -1000
            hu[name] = hu[name] * scale + offset
    kernel = _choice(rng, R["kernel"])
    body_type = _choice(rng, R["body_type"])
    shape: dict[str, Any] = {
        "right_lobe_scale": _u(rng, R["right_lobe_scale"]),
        "left_lobe_scale": _u(rng, R["left_lobe_scale"]),
        "riedel_scale": _u(rng, R["riedel_scale"]) if rng.random() < R["riedel_lobe"] else 1.0,
        "volume_scale": _u(rng, R["liver_volume_scale"]),
        "nodularity_mm": 0.0,
        "resection": None,
    }
    if rng.random() < R["cirrhosis"]:
        shape["volume_scale"] = _u(rng, R["cirrhosis_volume"])
        shape["nodularity_mm"] = _u(rng, R["nodularity_mm"])
        shape["nodule_phases"] = [float(v) for v in rng.uniform(0, 2 * math.pi, size=6)]
        shape["nodule_dirs"] = [list(map(float, d / np.linalg.norm(d))) for d in rng.normal(size=(6, 3))]
    if rng.random() < R["resection"]:
        # a plane through the liver: which lobe, the direction of its normal, how deep (fraction of the lobe)
        shape["resection"] = {"lobe": "right" if rng.random() < 0.6 else "left",
                              "normal": list(map(float, rng.normal(size=3))), "depth": float(rng.uniform(0.3, 0.6))}
    n_tumors = int(_choice(rng, R["num_tumors"]))
    partial = _choice(rng, R["partial_coverage"])
    return Domain(
        contrast_phase=phase,
        tissue_hu=hu,
        hu_scale=scale,
        hu_offset=offset,
        noise_sigma_hu=_u(rng, R["noise_sigma_hu"]),
        kernel=kernel,
        kernel_blur_mm=_u(rng, R["kernel_blur_mm"][kernel]),
        kernel_sharpen_amount=_u(rng, R["kernel_sharpen_amount"][kernel]),
        noise_grain_vox=_u(rng, R["noise_grain_vox"]),
        inplane_spacing_mm=_u(rng, R["inplane_spacing_mm"]),
        slice_spacing_mm=_u(rng, R["slice_spacing_mm"]),
        margin_top_mm=_u(rng, R["margin_top_mm"]),
        margin_bottom_mm=_u(rng, R["margin_bottom_mm"]),
        partial_coverage=partial,
        extra_fat_mm=_u(rng, R["extra_fat_mm"]),
        body_type=body_type,
        body_scale=_u(rng, R["body_scale"][body_type]),
        texture_hu=_u(rng, R["texture_hu"]),
        texture_mm=_u(rng, R["texture_mm"]),
        liver_shape=shape,
        stomach_content=content,
        stomach_gas=stomach_gas,
        num_tumors=n_tumors,
        seeds={"tumors": int(rng.integers(2**31)), "texture": int(rng.integers(2**31))},
    )


def draw_tumor_look(rng: np.random.Generator, liver_hu: float, calibrate) -> dict[str, Any]:
    """Kind, diameter and HU of one randomized lesion; ``calibrate`` maps a raw HU through the domain's
    scale / offset."""
    R = DOMAIN_RANGES
    kind = _choice(rng, R["tumor_kind"])
    lo, hi = R["tumor_diameter_mm"]
    diameter = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    look: dict[str, Any] = {"kind": kind, "diameter_mm": diameter}
    if kind in ("hypo", "hyper", "rim"):
        look["hu"] = max(calibrate(5.0), liver_hu + _u(rng, R["tumor_contrast_hu"][kind]))
    elif kind == "cystic":
        look["hu"] = calibrate(_u(rng, R["cyst_hu"]))
    else:  # calcified: a hypodense mass with a dense core
        look["hu"] = max(calibrate(5.0), liver_hu + _u(rng, R["tumor_contrast_hu"]["hypo"]))
        look["core_hu"] = calibrate(_u(rng, R["calcification_hu"]))
    if kind == "rim":
        look["rim_hu"] = liver_hu + _u(rng, R["rim_hu"])
        look["rim_mm"] = _u(rng, R["rim_mm"])
    look["subcapsular"] = bool(rng.random() < R["subcapsular"])
    look["confluent"] = bool(rng.random() < R["confluent"])
    return look
