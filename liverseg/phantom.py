"""Deterministic synthetic abdominal CT phantoms (portal venous phase) with liver and liver-tumor truth.

Each phantom is drawn from one integer seed. The anatomy is a set of implicit shapes defined in WORLD
coordinates (millimetres, RAS patient space: +x toward the patient's right, +y anterior, +z superior), with
per-seed variation in size, position and shape. It is then sampled on the voxel grid given by the affine, so
the same seed rendered with another orientation or spacing shows the same anatomy at the same world positions.

Contents, in HU (portal venous phase): air outside the body, subcutaneous and visceral fat, muscle wall,
paraspinal and psoas muscles, spine (vertebral bodies with cortical rim and discs, posterior elements, canal),
ribs, lung bases and heart above the diaphragm, aorta, IVC, kidneys with sinus fat, spleen, stomach with an
air-fluid level, colon and small bowel with gas, gallbladder, and a liver (right upper quadrant, dome under the
right hemidiaphragm, left lobe across the midline) with portal and hepatic vein trees and 0-5 tumors
(hypodense or hyperdense, 5-60 mm, irregular, fully inside the liver).

Partial volume: every shape has a signed distance field (approximate, in mm); a voxel's occupancy ramps
linearly from 0 to 1 across one voxel width around the surface and the HU are mixed by occupancy. The hard
masks (label, tissue map) are occupancy >= 0.5. Then correlated Gaussian noise is added; voxels outside the
reconstruction circle are -1024, as on most scanners.

The phantoms are not real anatomy: use them to exercise pipelines, geometry and tooling, never to report
clinical accuracy.

Example::

    from liverseg.phantom import generate_phantom
    ph = generate_phantom(3, shape=(96, 96, 48), orientation="LPS")
    ph.image.dtype, ph.label.max(), ph.info["liver_volume_ml"]
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from liverseg import LABELS
from liverseg.dataset import list_cases, write_case, write_dataset_json
from liverseg.phantom_domain import Domain, draw_domain, draw_tumor_look

__all__ = [
    "GENERATOR_VERSION",
    "TISSUES",
    "TISSUE_HU_RANGES",
    "Phantom",
    "generate_phantom",
    "write_phantom_dataset",
    "register_cli",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0.0"

TISSUES: dict[str, int] = {
    "air": 0,
    "lung": 1,
    "fat": 2,
    "muscle": 3,
    "bone_cancellous": 4,
    "bone_cortical": 5,
    "disc": 6,
    "csf": 7,
    "heart": 8,
    "aorta": 9,
    "ivc": 10,
    "kidney": 11,
    "spleen": 12,
    "gi_wall": 13,
    "gi_content": 14,
    "gi_gas": 15,
    "gallbladder": 16,
    "liver": 17,
    "portal_vein": 18,
    "hepatic_vein": 19,
    "tumor_hypo": 20,
    "tumor_hyper": 21,
}
"""Tissue classes of :attr:`Phantom.tissues` (uint8 codes). Fat covers subcutaneous, visceral and renal sinus fat;
``gi_*`` are stomach and bowel; ``portal_vein`` / ``hepatic_vein`` include their short extrahepatic parts."""

TISSUE_HU_RANGES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0),
    "lung": (-880.0, -820.0),
    "fat": (-115.0, -85.0),
    "muscle": (42.0, 58.0),
    "bone_cancellous": (250.0, 380.0),
    "bone_cortical": (750.0, 950.0),
    "disc": (80.0, 100.0),
    "csf": (8.0, 18.0),
    "heart": (120.0, 145.0),
    "aorta": (155.0, 195.0),
    "ivc": (150.0, 180.0),
    "kidney": (145.0, 175.0),
    "spleen": (108.0, 122.0),
    "gi_wall": (45.0, 70.0),
    "gi_content": (10.0, 35.0),
    "gi_gas": (-1000.0, -960.0),
    "gallbladder": (0.0, 18.0),
    "liver": (100.0, 110.0),
    "portal_vein": (160.0, 180.0),
    "hepatic_vein": (160.0, 180.0),
    "tumor_hypo": (30.0, 60.0),
    "tumor_hyper": (140.0, 170.0),
}
"""Noise-free HU drawn per phantom (uniformly) for each tissue class."""

DRAWN_ORIENTATIONS = ("RAS", "LPS", "LAS")
NOISE_SIGMA_RANGE = (8.0, 20.0)
INPLANE_SPACING_RANGE = (2.2, 3.0)
SLICE_SPACING_RANGE = (2.5, 5.0)
MIN_DIM = 8
MAX_VOXELS = 64_000_000
MAX_TUMORS = 20
_AXIS_LETTERS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


@dataclass
class Phantom:
    """One synthetic CT with its truth, on the grid ``affine`` defines.

    Attributes:
        image: int16 HU, indexed ``[i, j, k]``.
        label: uint8, :data:`liverseg.LABELS` (0 background, 1 liver incl. its vessels, 2 tumor).
        affine: 4x4 voxel-to-RAS (mm).
        tissues: uint8 tissue classes (:data:`TISSUES`), hard (occupancy >= 0.5) like ``label``.
        info: JSON-serialisable truth and provenance: seed, shape, spacing, orientation, liver_volume_ml,
            tumors (``center_ras_mm``, ``diameter_mm``, ``kind`` "hypo"/"hyper", ``hu``, ``num_voxels``),
            noise_sigma_hu, tissue_hu, generator version.
        tumor_ids: uint8, 0 outside tumors, ``n`` inside tumor ``info["tumors"][n - 1]``.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    tissues: np.ndarray
    info: dict[str, Any]
    tumor_ids: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------------------------
# implicit-shape primitives (approximate signed distances in mm, negative inside; numpy broadcasting throughout)
# ---------------------------------------------------------------------------------------------------------------


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from Euler angles (radians) about x, then y, then z."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class _Ellipsoid:
    center: np.ndarray
    axes: np.ndarray
    rot: np.ndarray | None = None

    def local(self, x, y, z):
        px, py, pz = x - self.center[0], y - self.center[1], z - self.center[2]
        if self.rot is None:
            return px, py, pz
        r = self.rot  # local = R^T p
        return (
            r[0, 0] * px + r[1, 0] * py + r[2, 0] * pz,
            r[0, 1] * px + r[1, 1] * py + r[2, 1] * pz,
            r[0, 2] * px + r[1, 2] * py + r[2, 2] * pz,
        )

    def sdf(self, x, y, z):
        lx, ly, lz = self.local(x, y, z)
        a, b, c = self.axes
        qx, qy, qz = lx / a, ly / b, lz / c
        q = np.sqrt(qx * qx + qy * qy + qz * qz)
        g = np.sqrt((qx / a) ** 2 + (qy / b) ** 2 + (qz / c) ** 2)
        # first-order distance (q - 1) / |grad q|; exact along the axes, finite at the centre
        return (q - 1.0) * (q + 1e-9) / (g + 1e-9 / float(min(a, b, c)))

    def bbox(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        r = float(np.max(self.axes)) + margin
        return self.center - r, self.center + r


@dataclass
class _Capsule:
    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float

    def sdf(self, x, y, z):
        d = self.p1 - self.p0
        dd = float(d @ d) or 1e-9
        px, py, pz = x - self.p0[0], y - self.p0[1], z - self.p0[2]
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / dd, 0.0, 1.0)
        ex, ey, ez = px - t * d[0], py - t * d[1], pz - t * d[2]
        return np.sqrt(ex * ex + ey * ey + ez * ez) - (self.r0 + t * (self.r1 - self.r0))

    def bbox(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        r = max(self.r0, self.r1) + margin
        return np.minimum(self.p0, self.p1) - r, np.maximum(self.p0, self.p1) + r


def _smin(a, b, k: float):
    """Smooth union (polynomial smooth minimum) of two distance fields, blend width ``k`` mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smax(a, b, k: float):
    return -_smin(-a, -b, k)


def _occupancy(f, width: float):
    """Partial-volume occupancy of a voxel whose centre is at signed distance ``f`` (mm) from a surface."""
    return np.clip(0.5 - f / width, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# anatomy (drawn from the seed, world coordinates)
# ---------------------------------------------------------------------------------------------------------------


class _Anatomy:
    """All shapes of one phantom, in world mm. Construction draws every random number it needs from ``rng``."""

    def __init__(self, rng: np.random.Generator, domain: Domain | None = None) -> None:
        u = rng.uniform
        # domain randomization (phantom_domain): subcutaneous fat added outside the unchanged muscle wall, liver
        # shape changes; none of it draws from ``rng``, so the default body of a seed stays what it was
        self.fat_extra = domain.extra_fat_mm if domain is not None else 0.0
        self.shape_mods = domain.liver_shape if domain is not None else None
        # --- torso: elliptic outline with low-order irregularity, constant along z
        self.xc, self.yc = float(np.clip(rng.normal(0, 6), -15, 15)), float(np.clip(rng.normal(0, 6), -15, 15))
        self.a = u(148, 178)
        self.b_ant = u(105, 128)
        self.b_post = self.b_ant * u(0.82, 0.92)
        self.fourier = [(k, rng.normal(0, 0.018), u(0, 2 * math.pi)) for k in (2, 3, 4, 5)]
        self.t_sc = u(10, 32)
        self.t_sc_fourier = [(k, rng.normal(0, 0.15), u(0, 2 * math.pi)) for k in (1, 2, 3)]
        self.t_m = u(8, 14)

        # --- diaphragm: right dome higher than the left
        self.xdR, self.ydR = self.xc + u(55, 75), self.yc + u(-15, 5)
        self.xdL, self.ydL = self.xc - u(55, 75), self.yc + u(-20, 0)
        self.zR = u(60.0, 100.0)
        self.zL = self.zR - u(8, 25)
        self.kR, self.kL = u(0.0055, 0.0075), u(0.0055, 0.0075)

        # --- spine: vertebral bodies, discs, canal, posterior elements
        y_back = self.yc + self._radius(-math.pi / 2) * -1.0
        t_back = self._tsc(-math.pi / 2)
        self.xs = self.xc + rng.normal(0, 2)
        self.y_tip = y_back + t_back + u(5, 9)
        self.y_canal = self.y_tip + u(32, 38)
        self.y_vb = self.y_canal + u(27, 31)
        self.vb_axes = (u(20, 25), u(15, 18))
        self.vert_period, self.disc_h = u(30, 35), u(6, 9)
        self.vert_phase = u(0, self.vert_period)
        # --- vessels along z
        self.aorta_r = u(10, 13)
        self.aorta_xy = (self.xs - u(6, 14), self.y_vb + self.vb_axes[1] + self.aorta_r + u(2, 5))
        self.ivc_axes = (u(11, 15), u(8, 11))
        self.ivc_xy = (self.xs + u(20, 28), self.y_vb + self.vb_axes[1] + u(14, 22))
        # --- paraspinal muscles (both sides), psoas cones
        self.paraspinal = [(self.xs + s * u(30, 40), self.y_tip + u(16, 22), u(24, 32), u(20, 26)) for s in (1, -1)]
        # --- ribs: (z at the back, how far anterior they reach)
        self.rib_top = self.zR + u(20, 40)
        self.rib_gap = u(24, 30)
        self.rib_slope = u(95, 130)

        # --- kidneys (right lower than left), rotated: upper pole medial, hilum antero-medial
        self.kidneys = []
        zk_right = self.zR - u(140, 160)
        for side, zk in ((1.0, zk_right), (-1.0, zk_right + u(10, 25))):
            c = np.array([self.xs + side * u(60, 72), self.y_vb - u(0, 10), zk])
            axes = np.array([u(24, 29), u(20, 25), u(48, 58)])
            rot = _rotation(0.0, side * math.radians(u(10, 20)), -side * math.radians(u(20, 35)))
            sinus = _Ellipsoid(c + rot @ np.array([-side * 0.55 * axes[0], 0.0, 0.0]), axes * [0.45, 0.4, 0.5], rot)
            self.kidneys.append((_Ellipsoid(c, axes, rot), sinus))
        self.psoas_top = zk_right + u(10, 30)

        # --- spleen under the left dome, posterolateral; medial concavity
        sc = np.array([self.xdL - u(20, 35), self.ydL - u(25, 40), self.zL - u(45, 60)])
        srot = _rotation(0, 0, math.radians(u(25, 45)))
        self.spleen = _Ellipsoid(sc, np.array([u(20, 26), u(48, 60), u(42, 55)]), srot)
        self.spleen_cut = _Ellipsoid(sc + srot @ np.array([u(28, 34), 0, 0]), np.array([22.0, 40.0, 40.0]), srot)

        # --- stomach: fundus under the left dome + body anterior-inferior, gas anterior (patient supine)
        self.stomach = [
            _Ellipsoid(np.array([self.xdL + u(15, 30), self.ydL + u(5, 20), self.zL - u(35, 45)]),
                       np.array([u(35, 45), u(32, 42), u(35, 45)])),
            _Ellipsoid(np.array([self.xc - u(25, 40), self.yc + u(35, 50), self.zL - u(80, 95)]),
                       np.array([u(32, 42), u(25, 32), u(40, 50)]), _rotation(0, math.radians(u(-25, -10)), 0)),
        ]
        self.stomach_gas_y = self.stomach[0].center[1] + u(12, 30)

        # --- liver: smooth union of blobs around the right dome apex, scaled to a drawn target volume
        self.liver_anchor = np.array([self.xdR, self.ydR, self.zR])
        self.liver_blobs_rel = [  # (centre offset, axes)
            (np.array([u(0, 10), u(-20, -5), -u(60, 72)]), np.array([u(57, 67), u(67, 80), u(62, 72)])),  # right lobe
            (np.array([u(20, 32), u(-5, 15), -u(100, 115)]), np.array([u(28, 38), u(38, 50), u(26, 34)])),  # tip
            (np.array([-u(65, 80), u(35, 50), -u(45, 60)]), np.array([u(50, 62), u(28, 36), u(30, 38)])),  # left
            (np.array([-u(105, 125), u(25, 40), -u(40, 55)]), np.array([u(28, 40), u(16, 24), u(18, 26)])),  # tip L
            (np.array([-u(45, 55), u(-35, -25), -u(55, 70)]), np.array([u(18, 24), u(20, 26), u(28, 36)])),  # caudate
        ]
        body = np.array([self.a / 163.0, self.b_ant / 116.0, 1.0])  # liver proportional to the body
        self.liver_blobs_rel = [(off * body, ax * 1.15 * body) for off, ax in self.liver_blobs_rel]
        self.liver_blend = u(15, 25)
        self.liver_target_ml = float(np.clip(u(1250, 1800) * body[0] * body[1], 1150, 2000))
        if self.shape_mods is not None:
            self._modify_liver_shape()
        # right lobe tilted: its inferior end lateral, so the inferior border slopes up medially
        self.liver_rots = [_rotation(math.radians(u(-8, 8)), -math.radians(u(15, 30)), math.radians(u(-10, 10)))]
        self.liver_rots += [_rotation(0, 0, math.radians(u(-15, 15))) for _ in self.liver_blobs_rel[1:]]
        self.liver_scale = 1.0
        # gallbladder in its fossa on the inferior surface, fundus anterior-inferior
        gb_c = self.liver_anchor + np.array([-u(30, 45), u(35, 50), -u(105, 120)])
        self.gallbladder = _Ellipsoid(gb_c, np.array([u(12, 17), u(14, 20), u(30, 40)]),
                                      _rotation(math.radians(u(25, 45)), 0, 0))

        # --- heart on the central tendon, anterior-left
        zd_mid = float(self.diaphragm(np.float64(self.xc - 15), np.float64(self.yc + 25)))
        self.heart = _Ellipsoid(np.array([self.xc - u(10, 25), self.yc + u(20, 35), zd_mid + u(40, 50)]),
                                np.array([u(55, 65), u(42, 52), u(42, 50)]), _rotation(0, 0, math.radians(u(20, 40))))

        self._fit_liver_volume()

        # --- bowel: colon (ascending, transverse) and small-bowel loops, some gas anteriorly
        lz = self.liver_zmin
        self.bowel: list[tuple[_Capsule, bool]] = []
        c_asc0 = np.array([self.xc + u(65, 85), self.yc + u(15, 35), lz - 60])
        c_hep = np.array([self.xc + u(55, 75), self.yc + u(35, 50), lz + u(15, 30)])
        c_tr = np.array([self.xc - u(20, 40), self.yc + u(50, 65), lz + u(20, 40)])
        c_spl = np.array([self.xdL - u(5, 20), self.yc + u(0, 20), self.zL - u(95, 110)])
        r_col = u(16, 22)
        for p0, p1 in ((c_asc0, c_hep), (c_hep, c_tr), (c_tr, c_spl)):
            self.bowel.append((_Capsule(p0, p1, r_col, r_col), True))
        for _ in range(int(rng.integers(3, 6))):
            p = np.array([self.xc + u(-80, 40), self.yc + u(-5, 55), lz - u(0, 40)])
            r = u(9, 13)
            for _seg in range(3):
                ang = u(0, 2 * math.pi)
                q = p + np.array([math.cos(ang) * u(25, 45), math.sin(ang) * u(15, 30), u(-15, 15)])
                self.bowel.append((_Capsule(p, q, r, r), bool(rng.random() < 0.25)))
                p = q

        # --- hepatic vessel trees (grown inside the liver)
        self.portal: list[_Capsule] = []
        self.hepatic: list[_Capsule] = []
        self._grow_vessels(rng)

    def _modify_liver_shape(self) -> None:
        """Lobe sizes, Riedel's lobe and target volume of a randomized domain (blob order as in ``__init__``)."""
        m = self.shape_mods
        scales = [m["right_lobe_scale"], m["right_lobe_scale"], m["left_lobe_scale"], m["left_lobe_scale"], 1.0]
        out = []
        for n, ((off, ax), k) in enumerate(zip(self.liver_blobs_rel, scales)):
            off, ax = off.copy(), ax * k
            if n in (2, 3):  # the left lobe grows toward the patient's left (the spleen)
                off[0] *= 0.5 + 0.5 * k
            if n == 1 and m["riedel_scale"] > 1.0:  # Riedel's lobe: the right lobe's tip reaches far down
                ax[2] *= m["riedel_scale"]
                off[2] *= 0.5 + 0.5 * m["riedel_scale"]
            out.append((off, ax))
        self.liver_blobs_rel = out
        self.liver_target_ml = float(np.clip(self.liver_target_ml * m["volume_scale"], 550, 2600))

    # ----- torso -------------------------------------------------------------------------------------------
    def _radius(self, theta):
        s = np.sin(theta)
        b = np.where(s >= 0, self.b_ant, self.b_post)
        r = 1.0 / np.sqrt((np.cos(theta) / self.a) ** 2 + (s / b) ** 2)
        mod = 1.0
        for k, c, ph in self.fourier:
            mod = mod + c * np.cos(k * theta + ph)
        if self.fat_extra:
            return r * mod + self.fat_extra
        return r * mod

    def _tsc(self, theta):
        t = self.t_sc * (0.7 + 0.3 * (1 + np.sin(theta)))
        mod = 1.0
        for k, c, ph in self.t_sc_fourier:
            mod = mod + c * np.cos(k * theta + ph)
        if self.fat_extra:
            return t * np.clip(mod, 0.5, 1.5) + self.fat_extra
        return t * np.clip(mod, 0.5, 1.5)

    def torso(self, x, y):
        """Distances (mm, radial approximation) to the skin, the muscle wall's outer and inner surfaces."""
        dx, dy = x - self.xc, y - self.yc
        theta = np.arctan2(dy, dx)
        rho = np.sqrt(dx * dx + dy * dy)
        r = self._radius(theta)
        r_musc = r - self._tsc(theta)
        return rho - r, rho - r_musc, rho - (r_musc - self.t_m)

    def cavity(self, x, y):
        return self.torso(x, y)[2]

    def diaphragm(self, x, y):
        """Height (z, mm) of the diaphragm's upper surface above (x, y)."""
        dyR = y - self.ydR
        dyL = y - self.ydL
        zr = self.zR - self.kR * ((x - self.xdR) ** 2 + (np.where(dyR < 0, 1.4, 1.0) * dyR) ** 2)
        zl = self.zL - self.kL * ((x - self.xdL) ** 2 + (np.where(dyL < 0, 1.4, 1.0) * dyL) ** 2)
        return _smax(zr, zl, 20.0)

    # ----- liver -------------------------------------------------------------------------------------------
    def liver_blobs(self):
        s = self.liver_scale
        return [_Ellipsoid(self.liver_anchor + s * off, s * ax, rot)
                for (off, ax), rot in zip(self.liver_blobs_rel, self.liver_rots)]

    def liver_sdf(self, x, y, z):
        blobs = self.liver_blobs()
        f = blobs[0].sdf(x, y, z)
        for b in blobs[1:]:
            f = _smin(f, b.sdf(x, y, z), self.liver_blend)
        f = np.maximum(f, z - (self.diaphragm(x, y) - 5.0))  # under the diaphragm
        f = np.maximum(f, self.cavity(x, y) + 1.0)  # inside the abdominal wall
        f = np.maximum(f, -(self.kidneys[0][0].sdf(x, y, z) - 3.0))  # renal impression
        f = np.maximum(f, -(self._ivc_sdf(x, y) - 1.5))  # IVC groove
        f = np.maximum(f, -(self.gallbladder.sdf(x, y, z) - 1.5))  # gallbladder fossa
        f = np.maximum(f, -(self._aorta_sdf(x, y) - 4.0))
        f = np.maximum(f, -(self._vb_sdf(x, y) - 6.0))
        # nothing behind the front of the vertebral bodies near the midline
        qa, qb = self.vb_axes[0] + 10.0, self.vb_axes[1] + 45.0
        behind = (np.sqrt(((x - self.xs) / qa) ** 2 + ((y - (self.y_vb - 40.0)) / qb) ** 2) - 1.0) * qa
        f = np.maximum(f, -behind)
        px, py, pa, pb = self.paraspinal[0]
        f = np.maximum(f, -(np.sqrt(((x - px) / pa) ** 2 + ((y - py) / pb) ** 2) - 1.0) * min(pa, pb) + 2.0)
        if self.shape_mods is not None:
            f = self._shape_mods_sdf(f, x, y, z)
        return f

    def _shape_mods_sdf(self, f, x, y, z):
        """Nodular surface (cirrhosis) and a resection plane of a randomized domain."""
        m = self.shape_mods
        if m.get("nodularity_mm"):
            bumps = 0.0
            for d, ph in zip(m["nodule_dirs"], m["nodule_phases"]):
                bumps = bumps + np.cos((d[0] * x + d[1] * y + d[2] * z) * (2 * math.pi / 14.0) + ph)
            f = f + m["nodularity_mm"] * bumps / math.sqrt(len(m["nodule_dirs"]))
        cut = m.get("resection")
        if cut:
            n = np.asarray(cut["normal"], dtype=float)
            n[0] = abs(n[0]) + 1.0 if cut["lobe"] == "right" else -abs(n[0]) - 1.0  # lateral: +x is the right
            n = n / np.linalg.norm(n)
            s = self.liver_scale
            off, ax = self.liver_blobs_rel[0 if cut["lobe"] == "right" else 2]
            c = self.liver_anchor + s * off
            # remove the lobe's lateral part: the plane lies ``depth`` (fraction of the lobe) in from its far end
            reach = float(np.abs(n) @ (s * ax))
            d0 = float(n @ c) + reach * (1.0 - 2.0 * cut["depth"])
            f = np.maximum(f, (n[0] * x + n[1] * y + n[2] * z) - d0)
        return f

    def _fit_liver_volume(self) -> None:
        """Scale the liver blobs (about the dome) so the carved liver has the drawn target volume."""
        step = 4.0
        for _ in range(3):
            lo, hi = self._liver_bbox()
            gx, gy, gz = (np.arange(lo[i] + step / 2, hi[i], step) for i in range(3))
            f = self.liver_sdf(gx[:, None, None], gy[None, :, None], gz[None, None, :])
            vol = float(np.count_nonzero(f <= 0)) * step**3 / 1000.0
            if vol <= 0:
                raise RuntimeError("phantom liver is empty (generator bug)")
            ratio = self.liver_target_ml / vol
            if abs(ratio - 1) < 0.01:
                break
            self.liver_scale = float(np.clip(self.liver_scale * ratio ** (1 / 3), 0.8, 1.25))
        inside = np.argwhere(f <= 0)
        self.liver_zmin = float(gz[inside[:, 2].min()] - step / 2)
        self.liver_zmax = float(gz[inside[:, 2].max()] + step / 2)
        self.liver_coarse = (gx, gy, gz, f)

    def _liver_bbox(self, margin: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
        los, his = zip(*(b.bbox(margin) for b in self.liver_blobs()))
        lo, hi = np.min(los, axis=0), np.max(his, axis=0)
        hi[2] = min(hi[2], self.zR)
        return lo, hi

    def liver_bbox(self) -> tuple[np.ndarray, np.ndarray]:
        return self._liver_bbox(margin=5.0)

    # ----- vessels ------------------------------------------------------------------------------------------
    def _aorta_sdf(self, x, y):
        return np.sqrt((x - self.aorta_xy[0]) ** 2 + (y - self.aorta_xy[1]) ** 2) - self.aorta_r

    def _ivc_sdf(self, x, y):
        a, b = self.ivc_axes
        q = np.sqrt(((x - self.ivc_xy[0]) / a) ** 2 + ((y - self.ivc_xy[1]) / b) ** 2)
        return (q - 1.0) * min(a, b)

    def _vb_sdf(self, x, y):
        a, b = self.vb_axes
        q = np.sqrt(((x - self.xs) / a) ** 2 + ((y - self.y_vb) / b) ** 2)
        return (q - 1.0) * min(a, b)

    def _liver_point_sdf(self, p: np.ndarray) -> float:
        return float(self.liver_sdf(np.float64(p[0]), np.float64(p[1]), np.float64(p[2])))

    def _grow(self, rng, out: list, start, direction, radius, length, depth) -> None:
        direction = direction / np.linalg.norm(direction)
        for _ in range(4):
            end = start + direction * length
            if self._liver_point_sdf(end) < -(radius + 3.0):
                break
            length *= 0.7
        else:
            return
        out.append(_Capsule(start, end, radius, radius * 0.85))
        if depth == 0 or radius < 1.8:
            return
        for sign in (1.0, -1.0):
            perp = np.cross(direction, rng.normal(size=3))
            perp /= np.linalg.norm(perp) + 1e-9
            ang = math.radians(rng.uniform(20, 50))
            d = math.cos(ang) * direction + sign * math.sin(ang) * perp
            self._grow(rng, out, end, d, radius * rng.uniform(0.68, 0.8), length * rng.uniform(0.65, 0.9), depth - 1)

    def _grow_vessels(self, rng: np.random.Generator) -> None:
        gx, gy, gz, f = self.liver_coarse
        pts = np.argwhere(f < -10.0)
        world = np.stack([gx[pts[:, 0]], gy[pts[:, 1]], gz[pts[:, 2]]], axis=1)
        s = self.liver_scale
        porta_target = self.liver_anchor + s * np.array([-40.0, 5.0, -100.0])
        hilum = world[np.argmin(np.linalg.norm(world - porta_target, axis=1))]
        confluence = np.array([self.xs + rng.uniform(0, 10), self.y_vb + 45.0, hilum[2] - rng.uniform(30, 40)])
        r_pv = rng.uniform(7.0, 9.0)
        self.portal.append(_Capsule(confluence, hilum, r_pv, r_pv))
        right_c = self.liver_anchor + s * self.liver_blobs_rel[0][0]
        left_c = self.liver_anchor + s * self.liver_blobs_rel[2][0]
        for target, frac in ((right_c, 0.45), (left_c, 0.5)):
            d = target - hilum
            self._grow(rng, self.portal, hilum, d, r_pv * 0.75, frac * float(np.linalg.norm(d)), 4)
        # hepatic veins: from the IVC just under the diaphragm, fanning anterior-inferior into the liver
        zi = float(self.diaphragm(np.float64(self.ivc_xy[0]), np.float64(self.ivc_xy[1]))) - 12.0
        root = np.array([self.ivc_xy[0], self.ivc_xy[1], zi])
        for target in (right_c + [25, 0, 10], right_c + [-25, 45, 0], left_c + [0, 0, 15]):
            d = target - root
            self._grow(rng, self.hepatic, root, d, rng.uniform(5.5, 7.5), 0.6 * float(np.linalg.norm(d)), 3)

    # ----- tumors ----------------------------------------------------------------------------------------------
    def place_tumors(self, rng: np.random.Generator, count: int,
                     looks: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Draw ``count`` tumors (kind, size, shape) and place each fully inside the liver, not overlapping.

        ``looks`` (domain randomization, one per tumor) give kind, diameter and HU instead of the default draw,
        and may let a lesion reach the liver surface (``subcapsular``) or overlap the previous one (``confluent``).
        """
        gx, gy, gz, f = self.liver_coarse
        out: list[dict[str, Any]] = []
        for n_t in range(count):
            r = rng.random()
            diameter = rng.uniform(5, 10) if r < 0.35 else rng.uniform(10, 40) if r < 0.75 else rng.uniform(40, 60)
            kind = "hypo" if rng.random() < 0.65 else "hyper"
            lo, hi = TISSUE_HU_RANGES[f"tumor_{kind}"]
            hu = rng.uniform(lo, hi)
            look = looks[n_t] if looks is not None else None
            if look is not None:
                diameter, kind, hu = look["diameter_mm"], look["kind"], look["hu"]
            axes_f = rng.uniform(0.85, 1.15, size=3)
            angles = rng.uniform(0, 2 * math.pi, size=3)
            bumps = [(rng.normal(size=3), rng.uniform(2.0, 4.0), rng.uniform(0, 2 * math.pi), rng.uniform(0.04, 0.09))
                     for _b in range(3)]
            pick = rng.random()
            center = None
            min_diameter = 5.0 if look is None else min(3.0, diameter)
            while center is None and diameter >= min_diameter:
                radius = diameter / 2 * float(axes_f.max()) * 1.25
                ok = f < -(radius + 4.0) if not (look and look["subcapsular"]) else f < -0.4 * radius
                for n_o, t in enumerate(out):
                    c = np.asarray(t["center_ras_mm"])
                    dist = np.sqrt((gx[:, None, None] - c[0]) ** 2 + (gy[None, :, None] - c[1]) ** 2
                                   + (gz[None, None, :] - c[2]) ** 2)
                    if look and look["confluent"] and n_o == len(out) - 1:
                        ok &= (dist < (radius + t["diameter_mm"] / 2) * 0.9) & (dist > 0.3 * radius)
                    else:
                        ok &= dist > radius + t["diameter_mm"] / 2 * 1.3 + 4.0
                idx = np.argwhere(ok)
                if len(idx):
                    i, j, k = idx[min(int(pick * len(idx)), len(idx) - 1)]
                    center = [float(gx[i]), float(gy[j]), float(gz[k])]
                else:
                    diameter *= 0.8
            if center is None:
                logger.debug("no room for another tumor; placed %d", len(out))
                break
            t_out = {
                "center_ras_mm": [round(v, 2) for v in center],
                "diameter_mm": round(float(diameter), 2),
                "kind": kind,
                "hu": round(float(hu), 1),
                "_axes": (diameter / 2) * axes_f,
                "_rot": _rotation(*angles),
                "_bumps": bumps,
            }
            if look is not None:
                t_out.update({k: round(float(look[k]), 1) for k in ("rim_hu", "rim_mm", "core_hu") if k in look})
            out.append(t_out)
        return out


def _tumor_sdf(t: dict[str, Any]) -> tuple[Callable, tuple[np.ndarray, np.ndarray]]:
    ell = _Ellipsoid(np.asarray(t["center_ras_mm"], dtype=float), np.asarray(t["_axes"]), t["_rot"])
    r = float(np.mean(t["_axes"]))

    def sdf(x, y, z):
        lx, ly, lz = ell.local(x, y, z)
        n = np.sqrt(lx * lx + ly * ly + lz * lz) + 1e-6
        bump = 0.0
        for v, freq, ph, amp in t["_bumps"]:
            v = v / np.linalg.norm(v)
            bump = bump + amp * np.cos(freq * (lx * v[0] + ly * v[1] + lz * v[2]) / n + ph)
        return ell.sdf(x, y, z) - r * bump

    return sdf, ell.bbox(margin=0.2 * r + 2.0)


# ---------------------------------------------------------------------------------------------------------------
# grid + rendering
# ---------------------------------------------------------------------------------------------------------------


def _parse_orientation(orientation: str) -> list[tuple[int, float]]:
    if not isinstance(orientation, str) or len(orientation) != 3:
        raise ValueError(f"unknown orientation {orientation!r}: give three axis letters such as 'RAS', 'LPS', 'LAS'")
    axes = []
    for letter in orientation.upper():
        if letter not in _AXIS_LETTERS:
            raise ValueError(f"unknown orientation {orientation!r}: letters must be from R/L, A/P, S/I")
        axes.append(_AXIS_LETTERS[letter])
    if sorted(w for w, _ in axes) != [0, 1, 2]:
        raise ValueError(f"unknown orientation {orientation!r}: needs one of R/L, one of A/P and one of S/I")
    return axes


def _check_triple(name: str, value, kind: type) -> tuple:
    try:
        vals = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of three numbers, got {value!r}") from None
    if len(vals) != 3:
        raise ValueError(f"{name} must have three values (i, j, k), got {value!r}")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must hold numbers, got {value!r}")
        if kind is int and int(v) != v:
            raise ValueError(f"{name} must hold integers, got {value!r}")
    return tuple(kind(v) for v in vals)


class _Grid:
    """Canonical world-ordered grid (axes x, y, z ascending) restricted to sub-boxes on demand."""

    def __init__(self, lo: np.ndarray, n: tuple[int, int, int], s: tuple[float, float, float]) -> None:
        self.lo, self.n, self.s = lo, n, s
        self.coords = [lo[w] + (np.arange(n[w]) + 0.5) * s[w] for w in range(3)]
        self.width = float(np.prod(s) ** (1 / 3))

    def sub(self, lo, hi):
        sl = []
        for w in range(3):
            c = self.coords[w]
            a, b = np.searchsorted(c, lo[w]), np.searchsorted(c, hi[w], side="right")
            if b <= a:
                return None
            sl.append(slice(int(a), int(b)))
        x = self.coords[0][sl[0]][:, None, None]
        y = self.coords[1][sl[1]][None, :, None]
        z = self.coords[2][sl[2]][None, None, :]
        return tuple(sl), x, y, z


class _Canvas:
    def __init__(self, grid: _Grid) -> None:
        self.grid = grid
        self.hu = np.full(grid.n, -1000.0, dtype=np.float32)
        self.tissue = np.zeros(grid.n, dtype=np.uint8)

    def paint_full(self, occ: np.ndarray, hu: float, code: int) -> None:
        occ = np.broadcast_to(occ, self.grid.n)
        self.hu += (hu - self.hu) * occ
        self.tissue[occ >= 0.5] = code

    def paint(self, bbox, sdf: Callable, hu: float, code: int, clip: Callable | None = None):
        sub = self.grid.sub(*bbox)
        if sub is None:
            return None
        sl, x, y, z = sub
        occ = _occupancy(sdf(x, y, z), self.grid.width)
        if clip is not None:
            occ = np.minimum(occ, clip(sl, x, y, z))
        occ = np.broadcast_to(occ, self.hu[sl].shape)
        h = self.hu[sl]
        h += (hu - h) * occ
        self.tissue[sl][occ >= 0.5] = code
        return sl, occ


def _draw_hu(rng: np.random.Generator) -> dict[str, float]:
    return {name: float(rng.uniform(lo, hi)) if hi > lo else lo for name, (lo, hi) in TISSUE_HU_RANGES.items()}


@dataclass
class _Plan:
    seed: int
    anatomy: _Anatomy
    tumors: list[dict[str, Any]]
    hu: dict[str, float]
    noise_sigma: float
    noise_seed: np.random.Generator
    orientation: str
    axes: list[tuple[int, float]]
    lo: np.ndarray
    n: tuple[int, int, int]  # canonical (x, y, z)
    s: tuple[float, float, float]
    domain: Domain | None = None


DOMAIN_MAX_VOXELS = 24_000_000
"""Randomized phantoms with more voxels get coarser slices (then coarser in-plane spacing) to stay under this."""


def _plan(seed: int, shape, spacing, orientation, num_tumors, domain_randomization: bool = False) -> _Plan:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if shape is not None:
        shape = _check_triple("shape", shape, int)
        if min(shape) < MIN_DIM:
            raise ValueError(f"shape {shape}: every dimension must be >= {MIN_DIM}")
    if spacing is not None:
        spacing = _check_triple("spacing", spacing, float)
        if not all(math.isfinite(v) and v > 0 for v in spacing):
            raise ValueError(f"spacing {spacing}: values must be positive finite millimetres")
    if orientation is not None:
        _parse_orientation(orientation)
    if num_tumors is not None and (
        isinstance(num_tumors, bool)
        or not isinstance(num_tumors, (int, np.integer))
        or not 0 <= num_tumors <= MAX_TUMORS
    ):
        raise ValueError(f"num_tumors must be an integer in 0..{MAX_TUMORS}, got {num_tumors!r}")

    root_rng = np.random.default_rng(int(seed))
    grid_rng, anat_rng, tumor_rng, hu_rng, noise_rng = root_rng.spawn(5)
    # grid defaults are always drawn (same stream whatever the options) so options never change the anatomy
    d_inplane = float(grid_rng.uniform(*INPLANE_SPACING_RANGE))
    d_slice = float(grid_rng.uniform(*SLICE_SPACING_RANGE))
    d_orient = DRAWN_ORIENTATIONS[int(grid_rng.integers(len(DRAWN_ORIENTATIONS)))]
    fov_xy = float(grid_rng.uniform(340, 400))
    margin_top, margin_bottom = float(grid_rng.uniform(12, 25)), float(grid_rng.uniform(10, 20))
    d_tumors = int(tumor_rng.choice(6, p=[0.15, 0.25, 0.25, 0.15, 0.1, 0.1]))

    hu = _draw_hu(hu_rng)
    noise_sigma = float(hu_rng.uniform(*NOISE_SIGMA_RANGE))
    domain = None
    if domain_randomization:  # a sixth stream: the five above, and so the body, stay those of the seed
        domain = draw_domain(root_rng.spawn(1)[0], hu)
        hu, noise_sigma = domain.tissue_hu, domain.noise_sigma_hu
        d_inplane, d_slice = domain.inplane_spacing_mm, domain.slice_spacing_mm
        margin_top, margin_bottom = domain.margin_top_mm, domain.margin_bottom_mm
        d_tumors = domain.num_tumors

    anatomy = _Anatomy(anat_rng, domain)
    looks = None
    if domain is not None:
        look_rng = np.random.default_rng(domain.seeds["tumors"])
        scale, offset = domain.hu_scale, domain.hu_offset
        n_looks = d_tumors if num_tumors is None else int(num_tumors)
        looks = [draw_tumor_look(look_rng, hu["liver"], lambda v: v * scale + offset) for _ in range(n_looks)]
    tumors = anatomy.place_tumors(tumor_rng, d_tumors if num_tumors is None else int(num_tumors), looks)

    orientation = (orientation or d_orient).upper()
    axes = _parse_orientation(orientation)
    # world field of view: square in-plane around the scanner centre (wide enough for the body), z covering the liver
    theta = np.linspace(-math.pi, math.pi, 721)
    body_r = float(np.max(anatomy._radius(theta))) + max(abs(anatomy.xc), abs(anatomy.yc))
    fov_xy = max(fov_xy, 2 * body_r + 12.0)
    z_lo, z_hi = anatomy.liver_zmin - margin_bottom, anatomy.zR + margin_top
    if domain is not None and domain.partial_coverage != "full":
        mid = (anatomy.liver_zmin + anatomy.zR) / 2
        if domain.partial_coverage == "starts_mid_liver":
            z_hi = mid
        else:
            z_lo = mid
    center = np.array([0.0, 0.0, (z_lo + z_hi) / 2])
    fov = np.array([fov_xy, fov_xy, z_hi - z_lo])

    # per array axis -> per world axis
    shape_w = [0, 0, 0]
    spacing_w = [0.0, 0.0, 0.0]
    for i, (w, _sign) in enumerate(axes):
        if shape is not None:
            shape_w[w] = shape[i]
        if spacing is not None:
            spacing_w[w] = spacing[i]
    if spacing is None:
        if shape is None:
            spacing_w = [d_inplane, d_inplane, d_slice]
        else:
            spacing_w = [float(fov[w] / shape_w[w]) for w in range(3)]
    if shape is None:
        shape_w = [max(MIN_DIM, int(math.ceil(fov[w] / spacing_w[w] - 1e-6))) for w in range(3)]
        if domain is not None and spacing is None:
            while int(np.prod(shape_w)) > DOMAIN_MAX_VOXELS:
                w = 2 if spacing_w[2] < 5.0 else 0
                for v in ((2,) if w == 2 else (0, 1)):
                    spacing_w[v] *= 1.15
                shape_w = [max(MIN_DIM, int(math.ceil(fov[w] / spacing_w[w] - 1e-6))) for w in range(3)]
    n_vox = int(np.prod(shape_w))
    if n_vox > MAX_VOXELS:
        raise ValueError(
            f"phantom grid {tuple(shape_w)} has {n_vox} voxels, more than {MAX_VOXELS}: use a coarser spacing"
        )
    extent = np.array(shape_w) * np.array(spacing_w)
    lo = center - extent / 2
    return _Plan(int(seed), anatomy, tumors, hu, noise_sigma, noise_rng, orientation, axes, lo,
                 tuple(shape_w), tuple(spacing_w), domain)  # type: ignore[arg-type]


def _render(plan: _Plan) -> Phantom:
    A, hu, T = plan.anatomy, plan.hu, TISSUES
    grid = _Grid(plan.lo, plan.n, plan.s)
    cv = _Canvas(grid)
    w = grid.width
    x = grid.coords[0][:, None, None]
    y = grid.coords[1][None, :, None]
    z = grid.coords[2][None, None, :]
    x2, y2 = x[..., 0], y[..., 0]

    # torso layers (2D, constant along z) and the thorax above the diaphragm
    f_skin, f_musc, f_cav = (f[..., None] for f in A.torso(x2, y2))
    zd = A.diaphragm(x2, y2)[..., None]
    cv.paint_full(_occupancy(f_skin, w), hu["fat"], T["fat"])
    cv.paint_full(_occupancy(f_musc, w), hu["muscle"], T["muscle"])
    cv.paint_full(_occupancy(f_cav, w), hu["fat"], T["fat"])
    cv.paint_full(_occupancy(np.maximum(f_cav, zd - z), w), hu["muscle"], T["muscle"])  # diaphragm
    cv.paint_full(_occupancy(np.maximum(f_cav + 1.0, zd + 4.0 - z), w), hu["lung"], T["lung"])
    cav_clip = lambda sl, xs, ys, zs: _occupancy(A.cavity(xs, ys) + 1.0, w)  # noqa: E731
    below_clip = lambda sl, xs, ys, zs: _occupancy(zs - (A.diaphragm(xs, ys) - 5.0), w)  # noqa: E731
    above_clip = lambda sl, xs, ys, zs: _occupancy((A.diaphragm(xs, ys) + 4.0) - zs, w)  # noqa: E731

    def both(*clips):
        return lambda sl, xs, ys, zs: np.minimum.reduce([np.broadcast_to(c(sl, xs, ys, zs), np.broadcast_shapes(
            xs.shape, ys.shape, zs.shape)) for c in clips])

    zlo, zhi = grid.coords[2][0] - 10, grid.coords[2][-1] + 10
    cv.paint(A.heart.bbox(5), A.heart.sdf, hu["heart"], T["heart"], both(cav_clip, above_clip))

    # ribs: ribbons in the muscle wall, descending anteriorly; cortical shell around a cancellous core
    def rib_sdf(k):
        def f(xs, ys, zs):
            dx, dy = xs - A.xc, ys - A.yc
            theta = np.arctan2(dy, dx)
            rho = np.sqrt(dx * dx + dy * dy)
            phi = np.arccos(np.clip(-dy / (rho + 1e-6), -1, 1))  # 0 at the back, pi at the front
            r_rib = A._radius(theta) - A._tsc(theta) - A.t_m * 0.5
            z_rib = A.rib_top - k * A.rib_gap - A.rib_slope * phi / math.pi
            reach = 2.3 - 0.22 * k
            d_phi = np.maximum(0.35 - phi, phi - reach) * rho
            return np.maximum(np.maximum(np.abs(rho - r_rib) - 3.5, np.abs(zs - z_rib) - 4.5), d_phi)
        return f

    for k in range(9):
        if 2.3 - 0.22 * k < 0.7:
            break
        z_top = A.rib_top - k * A.rib_gap
        box = (np.array([-1e4, -1e4, z_top - A.rib_slope - 8]), np.array([1e4, 1e4, z_top + 8]))
        f = rib_sdf(k)
        cv.paint(box, f, hu["bone_cortical"], T["bone_cortical"])
        cv.paint(box, lambda a, b, c, f=f: f(a, b, c) + 2.0, hu["bone_cancellous"], T["bone_cancellous"])

    # paraspinal muscles; psoas cones below the kidneys' upper poles
    for px, py, pa, pb in A.paraspinal:
        f = lambda xs, ys, zs, px=px, py=py, pa=pa, pb=pb: (  # noqa: E731
            (np.sqrt(((xs - px) / pa) ** 2 + ((ys - py) / pb) ** 2) - 1.0) * min(pa, pb) + 0 * zs
        )
        cv.paint((np.array([px - pa - 5, py - pb - 5, zlo]), np.array([px + pa + 5, py + pb + 5, zhi])), f,
                 hu["muscle"], T["muscle"], below_clip)
    for side in (1.0, -1.0):
        pxs, pys = A.xs + side * (A.vb_axes[0] + 12), A.y_vb + 2
        f = lambda xs, ys, zs, pxs=pxs, pys=pys: (  # noqa: E731
            np.sqrt((xs - pxs) ** 2 + ((ys - pys) * 1.2) ** 2) - np.clip((A.psoas_top - zs) * 0.35, 0, 24)
        )
        cv.paint((np.array([pxs - 30, pys - 30, zlo]), np.array([pxs + 30, pys + 30, A.psoas_top])), f,
                 hu["muscle"], T["muscle"])

    # GI tract: stomach (wall, fluid, gas above the level), colon and small bowel (gas in some)
    st = A.stomach

    def stomach_sdf(xs, ys, zs):
        return np.maximum(_smin(st[0].sdf(xs, ys, zs), st[1].sdf(xs, ys, zs), 20.0), zs - (A.diaphragm(xs, ys) - 5.0))

    st_box = (np.minimum(st[0].bbox(5)[0], st[1].bbox(5)[0]), np.maximum(st[0].bbox(5)[1], st[1].bbox(5)[1]))
    cv.paint(st_box, stomach_sdf, hu["gi_wall"], T["gi_wall"], cav_clip)
    cv.paint(st_box, lambda a, b, c: stomach_sdf(a, b, c) + 4.0, hu.get("gi_content_stomach", hu["gi_content"]),
             T["gi_content"], cav_clip)
    if plan.domain is None or plan.domain.stomach_gas:
        cv.paint(st_box, lambda a, b, c: np.maximum(stomach_sdf(a, b, c) + 4.0, A.stomach_gas_y - b),
                 hu["gi_gas"], T["gi_gas"], cav_clip)
    for cap, gas in A.bowel:
        box = cap.bbox(4)
        cv.paint(box, cap.sdf, hu["gi_wall"], T["gi_wall"], cav_clip)
        cv.paint(box, lambda a, b, c, cap=cap: cap.sdf(a, b, c) + 3.0, hu["gi_content"], T["gi_content"], cav_clip)
        if gas:
            g = _Capsule(cap.p0 + [0, cap.r0 * 0.45, 0], cap.p1 + [0, cap.r1 * 0.45, 0], cap.r0 * 0.5, cap.r1 * 0.5)
            cv.paint(box, lambda a, b, c, g=g, cap=cap: np.maximum(g.sdf(a, b, c), cap.sdf(a, b, c) + 3.0),
                     hu["gi_gas"], T["gi_gas"], cav_clip)

    # kidneys (+ sinus fat), spleen, gallbladder
    for kid, sinus in A.kidneys:
        cv.paint(kid.bbox(4), kid.sdf, hu["kidney"], T["kidney"], cav_clip)
        cv.paint(sinus.bbox(4), lambda a, b, c, k=kid, s=sinus: np.maximum(s.sdf(a, b, c), k.sdf(a, b, c) + 3.0),
                 hu["fat"], T["fat"])
    cv.paint(A.spleen.bbox(4), lambda a, b, c: np.maximum(A.spleen.sdf(a, b, c), -A.spleen_cut.sdf(a, b, c)),
             hu["spleen"], T["spleen"], both(cav_clip, below_clip))
    cv.paint(A.gallbladder.bbox(4), A.gallbladder.sdf, hu["gallbladder"], T["gallbladder"], cav_clip)

    # spine: vertebral bodies (cortical rim, cancellous core, discs), posterior elements, canal
    sx, yv, vb_ap = A.xs, A.y_vb, A.vb_axes[1]

    def vb(xs, ys, zs):
        return A._vb_sdf(xs, ys) + 0 * zs

    def posterior(xs, ys, zs):
        ring = np.abs(np.sqrt((xs - sx) ** 2 + (ys - A.y_canal) ** 2) - 14.0) - 5.0
        ring = np.maximum(ring, ys - (A.y_canal + 12.0))
        spinous = np.maximum(np.abs(xs - sx) - 4.0, np.maximum(ys - A.y_canal, A.y_tip - ys))
        transverse = np.maximum(np.abs(xs - sx) - 38.0, np.abs(ys - (A.y_canal + 6.0)) - 5.0)
        ph = np.mod(zs - A.vert_phase - A.vert_period / 2, A.vert_period)
        transverse = np.maximum(transverse, np.abs(ph - A.vert_period / 2) - 6.0)
        return np.minimum(np.minimum(ring, spinous) + 0 * zs, transverse)

    spine_box = (np.array([sx - 45, A.y_tip - 5, zlo]), np.array([sx + 45, yv + vb_ap + 5, zhi]))
    cv.paint(spine_box, lambda a, b, c: np.minimum(vb(a, b, c), posterior(a, b, c)), hu["bone_cortical"],
             T["bone_cortical"])
    cv.paint(spine_box, lambda a, b, c: np.minimum(vb(a, b, c), posterior(a, b, c)) + 2.5, hu["bone_cancellous"],
             T["bone_cancellous"])

    def disc(xs, ys, zs):
        ph = np.mod(zs - A.vert_phase, A.vert_period)
        return np.maximum(vb(xs, ys, zs) + 0.5, np.abs(ph - A.disc_h / 2) - A.disc_h / 2)

    cv.paint(spine_box, disc, hu["disc"], T["disc"])
    cv.paint(
        spine_box, lambda a, b, c: np.sqrt((a - sx) ** 2 + (b - A.y_canal) ** 2) - 9.0 + 0 * c, hu["csf"], T["csf"]
    )

    # great vessels
    ax_, ay_ = A.aorta_xy
    cv.paint((np.array([ax_ - 20, ay_ - 20, zlo]), np.array([ax_ + 20, ay_ + 20, zhi])),
             lambda a, b, c: A._aorta_sdf(a, b) + 0 * c, hu["aorta"], T["aorta"])
    ix, iy = A.ivc_xy
    cv.paint((np.array([ix - 20, iy - 20, zlo]), np.array([ix + 20, iy + 20, zhi])),
             lambda a, b, c: A._ivc_sdf(a, b) + 0 * c, hu["ivc"], T["ivc"])

    # liver
    liver_occ = np.zeros(grid.n, dtype=np.float32)
    res = cv.paint(A.liver_bbox(), A.liver_sdf, hu["liver"], T["liver"])
    if res is not None:
        liver_occ[res[0]] = res[1]
    for caps, name in ((A.portal, "portal_vein"), (A.hepatic, "hepatic_vein")):
        for cap in caps:
            cv.paint(cap.bbox(3), cap.sdf, hu[name], T[name])

    # tumors (clipped to the liver)
    tumor_ids = np.zeros(grid.n, dtype=np.uint8)
    tumor_occ = np.zeros(grid.n, dtype=np.float32)
    liver_clip = lambda sl, xs, ys, zs: liver_occ[sl]  # noqa: E731
    for n, t in enumerate(plan.tumors, start=1):
        sdf, box = _tumor_sdf(t)
        code = T["tumor_hyper"] if t["kind"] == "hyper" else T["tumor_hypo"]
        res = cv.paint(box, sdf, t.get("rim_hu", t["hu"]), code, liver_clip)
        count = 0
        if res is not None:
            sl, occ = res
            hard = occ >= 0.5
            tumor_ids[sl][hard] = n
            np.maximum(tumor_occ[sl], occ, out=tumor_occ[sl])
            count = int(np.count_nonzero(tumor_ids[sl] == n))
            if "rim_hu" in t:  # rim-enhancing: the core inside the rim at the tumor's own HU
                cv.paint(box, lambda a, b, c, sdf=sdf, w=t["rim_mm"]: sdf(a, b, c) + w, t["hu"], code, liver_clip)
            if "core_hu" in t:  # calcified: a dense core
                cv.paint(box, lambda a, b, c, sdf=sdf, w=t["diameter_mm"] * 0.3: sdf(a, b, c) + w, t["core_hu"],
                         code, liver_clip)
        t["num_voxels"] = count

    label = np.zeros(grid.n, dtype=np.uint8)
    label[liver_occ >= 0.5] = LABELS["liver"]
    label[tumor_occ >= 0.5] = LABELS["tumor"]

    dom = plan.domain
    if dom is not None:
        _texture_and_blur(cv, grid, dom)

    # correlated noise, reconstruction circle
    noise = plan.noise_seed.standard_normal(grid.n, dtype=np.float32)
    sig = (0.7, 0.7, 0.4) if dom is None else (dom.noise_grain_vox, dom.noise_grain_vox, 0.4)
    noise = ndimage.gaussian_filter(noise, sig, mode="wrap")
    gain = 1.0
    for sd in sig:
        delta = np.zeros(33)
        delta[16] = 1
        gain *= float(np.sqrt(np.sum(ndimage.gaussian_filter1d(delta, sd) ** 2)))
    img = cv.hu + noise * (plan.noise_sigma / gain)
    if dom is not None and dom.kernel_sharpen_amount > 0:  # sharp kernel: edges and noise enhanced
        img = img + dom.kernel_sharpen_amount * (img - ndimage.gaussian_filter(img, (1.0, 1.0, 0.0)))
    fov_r = min(grid.n[0] * grid.s[0], grid.n[1] * grid.s[1]) / 2
    cx, cy = plan.lo[0] + grid.n[0] * grid.s[0] / 2, plan.lo[1] + grid.n[1] * grid.s[1] / 2
    outside = ((x2 - cx) ** 2 + (y2 - cy) ** 2) > fov_r**2
    img[np.broadcast_to(outside[..., None], grid.n)] = -1024
    image = np.clip(np.rint(img), -1024, 3071).astype(np.int16)

    # canonical (x, y, z ascending) -> requested orientation
    order = [w for w, _ in plan.axes]
    flips = [i for i, (_, sign) in enumerate(plan.axes) if sign < 0]

    def orient(a: np.ndarray) -> np.ndarray:
        a = np.transpose(a, order)
        return np.ascontiguousarray(np.flip(a, axis=flips) if flips else a)

    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for i, (wax, sign) in enumerate(plan.axes):
        n_w, s_w = plan.n[wax], plan.s[wax]
        affine[wax, i] = sign * s_w
        affine[wax, 3] = plan.lo[wax] + (0.5 * s_w if sign > 0 else (n_w - 0.5) * s_w)

    voxel_ml = float(np.prod(plan.s)) / 1000.0
    spacing_out = [float(plan.s[w]) for w in order]
    if dom is not None and dom.body_scale != 1.0:  # a smaller body (child): the same voxels, smaller in world mm
        affine[:3, :] *= dom.body_scale
        voxel_ml *= dom.body_scale**3
        spacing_out = [v * dom.body_scale for v in spacing_out]
    tumors_info = [{k: v for k, v in t.items() if not k.startswith("_")} for t in plan.tumors]
    info = {
        "seed": plan.seed,
        "generator": {"name": "liverseg.phantom", "version": GENERATOR_VERSION},
        "shape": [int(plan.n[w]) for w in order],
        "spacing": [round(v, 4) for v in spacing_out],
        "orientation": plan.orientation,
        "liver_volume_ml": round(float(np.count_nonzero(label)) * voxel_ml, 1),
        "tumor_volume_ml": round(float(np.count_nonzero(label == LABELS["tumor"])) * voxel_ml, 2),
        "tumors": tumors_info,
        "noise_sigma_hu": round(plan.noise_sigma, 2),
        "tissue_hu": {k: round(v, 1) for k, v in hu.items() if not k.startswith("tumor_")},
    }
    if dom is not None:
        info["domain"] = dom.to_json()
    return Phantom(orient(image), orient(label), affine, orient(cv.tissue), info, orient(tumor_ids))


_TEXTURED = ("liver", "spleen", "kidney", "muscle", "heart", "gi_wall", "tumor_hypo", "tumor_hyper")


def _texture_and_blur(cv: _Canvas, grid: _Grid, dom: Domain) -> None:
    """Parenchymal texture (a smooth random field on soft tissue) and the blur of a smooth reconstruction kernel,
    both before the noise."""
    if dom.texture_hu > 0:
        rng = np.random.default_rng(dom.seeds["texture"])
        field_ = rng.standard_normal(grid.n, dtype=np.float32)
        field_ = ndimage.gaussian_filter(field_, [dom.texture_mm / s for s in grid.s], mode="wrap")
        field_ *= dom.texture_hu / max(float(field_.std()), 1e-6)
        soft = np.isin(cv.tissue, [TISSUES[t] for t in _TEXTURED])
        cv.hu[soft] += field_[soft]
    if dom.kernel_blur_mm > 0:
        cv.hu[...] = ndimage.gaussian_filter(cv.hu, [dom.kernel_blur_mm / s for s in grid.s])


def generate_phantom(
    seed: int,
    *,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    orientation: str | None = None,
    num_tumors: int | None = None,
    domain_randomization: bool = False,
) -> Phantom:
    """Generate one synthetic abdominal CT (portal venous phase) with liver and tumor truth.

    Deterministic: the same arguments give identical arrays and affine. Options left as ``None`` are drawn from
    the seed (spacing: in-plane 2.2-3.0 mm, slices 2.5-5 mm; orientation: RAS, LPS or LAS; 0-5 tumors). The
    anatomy depends on the seed only, so one seed rendered with other options shows the same body at the
    same world (RAS) positions; with ``num_tumors`` the first tumors are those of the default draw.

    Args:
        seed: non-negative integer.
        shape: array shape ``(i, j, k)`` (each >= 8). Without ``spacing`` the spacing is chosen so the field of
            view still covers the abdomen at the liver level (small shapes give coarse voxels).
        spacing: voxel size (mm) along ``i, j, k``. With ``shape`` too, the field of view is shape x spacing,
            centred on the default one.
        orientation: axis codes of the array, e.g. ``"RAS"`` or ``"LPS"`` (nibabel's convention, any
            permutation of one letter from each of R/L, A/P, S/I).
        num_tumors: number of liver tumors, 0-20 (fewer are placed if the liver has no room left).
        domain_randomization: also draw contrast phase, calibration, noise and kernel, slice thickness, coverage,
            body habitus, liver shape, stomach content and lesion appearance from the ranges of
            :data:`liverseg.phantom_domain.DOMAIN_RANGES` (recorded in ``info["domain"]``). Without ``spacing``
            the drawn spacing replaces the default one (grids over 24 M voxels are coarsened).

    Returns:
        a :class:`Phantom`.

    Raises:
        ValueError: bad seed, shape (fewer than 3 values, a dimension < 8), spacing (not positive), orientation,
            number of tumors, or a grid of more than ``MAX_VOXELS`` voxels.
    """
    return _render(_plan(seed, shape, spacing, orientation, num_tumors, domain_randomization))


# ---------------------------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------------------------

_REQUIREMENTS: dict[str, Callable[[_Plan], bool]] = {
    "lps_case": lambda p: p.orientation == "LPS",
    "small_tumor": lambda p: any(t["diameter_mm"] < 10 for t in p.tumors),
    "hypo_tumor": lambda p: any(t["kind"] == "hypo" for t in p.tumors),
    "hyper_tumor": lambda p: any(t["kind"] == "hyper" for t in p.tumors),
    "tumor_free_case": lambda p: not p.tumors,
}


def _case_seed(seed: int, index: int, attempt: int) -> int:
    return int(np.random.SeedSequence([int(seed), index, attempt]).generate_state(1)[0] & 0x7FFFFFFF)


def _choose_seeds(seed: int, n_cases: int, shape, spacing, domain_randomization: bool = False) -> list[_Plan]:
    """Per-case seeds derived from ``seed``; some cases re-drawn (deterministically) until the set covers every
    requirement in ``_REQUIREMENTS``."""
    plans = [_plan(_case_seed(seed, i, 0), shape, spacing, None, None, domain_randomization) for i in range(n_cases)]
    locked: set[int] = set()
    for _round in range(len(_REQUIREMENTS)):
        unmet = [name for name, req in _REQUIREMENTS.items() if not any(req(p) for p in plans)]
        if not unmet:
            break
        free = [i for i in range(n_cases) if i not in locked]
        if not free:
            break
        # re-draw the last free case: the candidate meeting most unmet requirements, keeping those already met
        idx = free[-1]
        others = [p for i, p in enumerate(plans) if i != idx]
        met_by_others = {n for n, r in _REQUIREMENTS.items() if any(r(p) for p in others)}
        best, best_score = None, -1
        for attempt in range(1, 200):
            cand = _plan(_case_seed(seed, idx, attempt), shape, spacing, None, None, domain_randomization)
            covered = met_by_others | {n for n, r in _REQUIREMENTS.items() if r(cand)}
            score = sum(n in covered for n in _REQUIREMENTS)
            if score > best_score:
                best, best_score = cand, score
            if score == len(_REQUIREMENTS):
                break
        plans[idx] = best  # type: ignore[assignment]
        locked.add(idx)
    unmet = [name for name, req in _REQUIREMENTS.items() if not any(req(p) for p in plans)]
    if unmet:
        raise RuntimeError(f"could not cover {unmet} with {n_cases} cases (generator bug)")
    return plans


def _ircadb_masks(ph: Phantom) -> dict[str, np.ndarray]:
    t = ph.tissues
    masks = {"liver": ph.label > 0}
    for n in range(1, len(ph.info["tumors"]) + 1):
        m = ph.tumor_ids == n
        if m.any():
            masks[f"livertumor{n:02d}"] = m
    masks.update({
        "portalvein": t == TISSUES["portal_vein"],
        "venoussystem": (t == TISSUES["hepatic_vein"]) | (t == TISSUES["ivc"]),
    })
    return masks


def write_phantom_dataset(
    out_root: str | Path,
    *,
    num_train: int,
    num_test: int,
    seed: int,
    ircadb_out: str | Path | None = None,
    ircadb_cases: int = 1,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    progress: Callable[[str, str, Phantom, float], None] | None = None,
    domain_randomization: bool = False,
) -> dict[str, Any]:
    """Write a phantom dataset in nnU-Net's raw layout (``imagesTr/labelsTr``, ``imagesTs/labelsTs``, dataset.json).

    Case ids are ``phantom_000`` ... (training first). Per-case seeds are derived from ``seed``; the set is
    guaranteed to hold an LPS case, a tumor under 10 mm, hypo- and hyperdense tumors and a tumor-free case
    (some cases are re-drawn deterministically to achieve it), which needs at least two cases.
    ``dataset.json`` records the generator, every case's seed and its truth (:attr:`Phantom.info`).

    Args:
        out_root: dataset folder (e.g. ``.../Dataset001_LiverPhantom``); other cases already there are an error.
        num_train, num_test: number of training / test cases.
        seed: dataset seed.
        ircadb_out: if given, also write ``ircadb_cases`` test cases (those with tumors first, in order) as
            3D-IRCADb-style DICOM patient folders ``ircadb_out/3Dircadb1.N`` (replaced if present), with masks
            ``liver``, ``livertumorNN``, ``portalvein`` and ``venoussystem`` (hepatic veins + IVC).
        shape, spacing: passed to :func:`generate_phantom` (default: drawn per case).
        progress: called as ``progress(case_id, split, phantom, seconds)`` after each case.
        domain_randomization: randomize each case's look (see :func:`generate_phantom`); off for the sample data.

    Returns:
        ``{"root", "dataset_json", "cases": {case_id: {"split", "seed", "image", "label", "info"}}, "ircadb": [...]}``.
    """
    out_root = Path(out_root)
    for name, v, lo in (("num_train", num_train, 1), ("num_test", num_test, 0), ("ircadb_cases", ircadb_cases, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if num_train + num_test < 2:
        raise ValueError("a phantom dataset needs at least 2 cases (num_train + num_test) to cover tumor-free and "
                         "tumor cases")
    if ircadb_out is not None and ircadb_cases > num_test:
        raise ValueError(f"ircadb_cases={ircadb_cases} but only {num_test} test cases are generated")
    n_cases = num_train + num_test
    ids = [f"phantom_{i:03d}" for i in range(n_cases)]
    if out_root.exists() and not out_root.is_dir():
        raise ValueError(f"{out_root}: exists and is not a folder")
    stale = sorted({c.case_id for split in ("Tr", "Ts") for c in list_cases(out_root, split)} - set(ids))
    if stale:
        raise ValueError(f"{out_root}: holds other cases ({', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''});"
                         " use an empty folder")

    plans = _choose_seeds(seed, n_cases, shape, spacing, domain_randomization)
    cases: dict[str, Any] = {}
    phantoms_info: dict[str, Any] = {}
    ircadb_written: list[str] = []
    # IRCADb-style copies: the first test cases with tumors (then tumor-free ones)
    test_ids = [(not plans[i].tumors, i) for i in range(num_train, n_cases)]
    ircadb_ids = {ids[i]: n for n, (_, i) in enumerate(sorted(test_ids)[:ircadb_cases], start=1)} if ircadb_out else {}
    for i, (case_id, plan) in enumerate(zip(ids, plans)):
        split = "Tr" if i < num_train else "Ts"
        t0 = time.perf_counter()
        ph = _render(plan)
        paths = write_case(out_root, case_id, ph.image, ph.affine, ph.label, split=split)
        phantoms_info[case_id] = ph.info
        cases[case_id] = {"split": split, "seed": plan.seed, "image": str(paths.image), "label": str(paths.label),
                          "info": ph.info}
        if case_id in ircadb_ids:
            from liverseg.convert.ircadb import write_ircadb_patient

            patient = Path(ircadb_out) / f"3Dircadb1.{ircadb_ids[case_id]}"
            write_ircadb_patient(patient, ph.image, ph.affine, _ircadb_masks(ph), case_id, overwrite=True)
            ircadb_written.append(str(patient))
            cases[case_id]["ircadb"] = str(patient)
        elapsed = time.perf_counter() - t0
        logger.debug(
            "%s (%s): %s liver %.0f mL, %d tumors, %.1f s", case_id, split, "x".join(map(str, ph.image.shape)),
            ph.info["liver_volume_ml"], len(ph.info["tumors"]), elapsed,
        )
        if progress is not None:
            progress(case_id, split, ph, elapsed)

    json_path = write_dataset_json(
        out_root,
        "LiverPhantom",
        "Synthetic abdominal CT phantoms (portal venous phase) with liver and liver-tumor labels, generated by "
        "liverseg.phantom. Not real anatomy: for testing pipelines, never for reporting clinical accuracy.",
        numTest=num_test,
        generator={
            "name": "liverseg.phantom",
            "version": GENERATOR_VERSION,
            "seed": int(seed),
            "shape": list(shape) if shape is not None else None,
            "spacing": list(spacing) if spacing is not None else None,
            "seeds": {cid: p.seed for cid, p in zip(ids, plans)},
            **({"domain_randomization": True} if domain_randomization else {}),
        },
        tissues=dict(TISSUES),
        phantoms=phantoms_info,
        **({"ircadb": {Path(p).name: c for c, p in ((c, v["ircadb"]) for c, v in cases.items() if "ircadb" in v)}}
           if ircadb_written else {}),
    )
    return {"root": str(out_root), "dataset_json": str(json_path), "cases": cases, "ircadb": ircadb_written}


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()

    def show(case_id: str, split: str, ph: Phantom, seconds: float) -> None:
        info = ph.info
        kinds = ",".join(f"{t['kind']}{t['diameter_mm']:.0f}mm" for t in info["tumors"]) or "none"
        dom = info.get("domain")
        look = (f" [{dom['contrast_phase']}, {dom['kernel']} kernel, noise {dom['noise_sigma_hu']:.0f} HU, "
                f"{dom['body_type']}, {dom['partial_coverage']}, stomach {dom['stomach_content']}]") if dom else ""
        print(f"{case_id} {split} {'x'.join(map(str, ph.image.shape))} "
              f"{'x'.join(f'{s:.2f}' for s in info['spacing'])} mm {info['orientation']} "
              f"liver {info['liver_volume_ml']:.0f} mL tumors {kinds}{look} ({seconds:.1f} s)", flush=True)

    try:
        res = write_phantom_dataset(
            args.out, num_train=args.num_train, num_test=args.num_test, seed=args.seed, ircadb_out=args.ircadb_out,
            ircadb_cases=args.ircadb_cases, shape=tuple(args.shape) if args.shape else None,
            spacing=tuple(args.spacing) if args.spacing else None, progress=show,
            domain_randomization=args.domain_randomization)
    except ValueError as e:
        print(f"error: {e}", flush=True)
        return 2
    extra = f", IRCADb-style: {', '.join(res['ircadb'])}" if res["ircadb"] else ""
    print(f"wrote {len(res['cases'])} cases ({args.num_train} train, {args.num_test} test) to {res['root']} "
          f"in {time.perf_counter() - t0:.1f} s{extra}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "phantoms", help="generate synthetic CT phantoms with liver / tumor labels (nnU-Net layout)",
        description="Generate a deterministic synthetic abdominal CT dataset with liver and tumor labels.")
    p.add_argument("--out", required=True, type=Path, help="dataset folder, e.g. Dataset001_LiverPhantom")
    p.add_argument("--num-train", type=int, default=12, help="training cases (default 12)")
    p.add_argument("--num-test", type=int, default=4, help="test cases (default 4)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--ircadb-out", type=Path, default=None,
                   help="also write test cases as 3D-IRCADb-style DICOM patient folders here")
    p.add_argument("--ircadb-cases", type=int, default=1, help="number of test cases for --ircadb-out (default 1)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("I", "J", "K"), help="array shape (default: from spacing)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("SI", "SJ", "SK"), help="voxel size in mm")
    p.add_argument("--domain-randomization", action="store_true",
                   help="randomize contrast phase, calibration, noise/kernel, slices, coverage, body, liver shape, "
                        "neighbours and lesions per case (ranges: liverseg/phantom_domain.py DOMAIN_RANGES)")
    p.set_defaults(func=_run)
