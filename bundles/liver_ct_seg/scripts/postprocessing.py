"""Post-processing of a liver / tumor label map that changes it (unlike the exact fast twins in ``transforms.py``).

Each is an array transform (label ``[1, *spatial]``, 0 background, 1 liver, 2 tumor, world geometry from the
MetaTensor's affine) plus a ``d`` twin that only maps it over keys, and works inside the bounding box of the
foreground. Sizes are in millimetres, so they mean the same on any scanner's grid:

- :class:`KeepLiverCore`: liver + tumor split between its cores (the parts deeper than ``radius_mm`` inside it);
  only what belongs to the largest core, within ``reach_mm`` of it, is kept: neighbours glued to the liver (heart,
  stomach, kidney) and what hangs on a bridge thinner than ``2 * radius_mm`` are cut off. Computed on a grid of
  about ``grid_mm`` voxels (near the network's resolution), then applied at full resolution.
- :class:`FillLiverHoles`: background voxels enclosed by liver + tumor become liver (3D holes).
- :class:`RemoveSmallLesions`: tumor components smaller than ``min_diameter_mm`` (equivalent-sphere diameter)
  become liver: below what a network at 2 mm voxels finds reliably, and most false positives are such specks.
- :class:`LesionsInLiver`: a tumor component whose outer surface touches liver on less than
  ``min_liver_contact`` of its voxels lies outside the liver (stomach, bowel, kidney): it becomes background.
- :class:`PeelLiverOutliers`: liver voxels whose (smoothed) HU lie far from this scan's own liver HU (median +-
  ``k_mad`` robust standard deviations, at least ``min_halfwidth_hu``) and that reach the mask's outside through
  such voxels become background: the stomach, muscle, heart or kidney that the network glued to the liver, peeled
  off by the scan's own contrast, whatever the scanner or phase. Needs the source image in HU on the label's grid.
- :class:`FlipAveragingInferer`: test-time augmentation, the mean of the network's outputs over flips of the input.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import MapTransform, Transform
from scipy import ndimage

# relative: the bundle's ``scripts`` is not always on sys.path when a served pipeline runs (the app's server)
from .transforms import _foreground_box

__all__ = [
    "KeepLiverCore",
    "KeepLiverCored",
    "FillLiverHoles",
    "FillLiverHolesd",
    "RemoveSmallLesions",
    "RemoveSmallLesionsd",
    "LesionsInLiver",
    "LesionsInLiverd",
    "PeelLiverOutliers",
    "PeelLiverOutliersd",
    "FlipAveragingInferer",
]

logger = logging.getLogger(__name__)

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def _spacing(img: torch.Tensor, ndim: int) -> np.ndarray:
    """Voxel size (mm) from the MetaTensor's affine; 1 mm per voxel for a plain tensor."""
    if isinstance(img, MetaTensor):
        aff = np.asarray(img.affine, dtype=np.float64)
        return np.linalg.norm(aff[:ndim, :ndim], axis=0)
    logger.warning("label without an affine (not a MetaTensor): sizes in mm taken as voxels of 1 mm")
    return np.ones(ndim)


def _axial_axis(img: torch.Tensor, ndim: int) -> int:
    """The array axis closest to the patient's superior-inferior direction (the last one without an affine)."""
    if isinstance(img, MetaTensor) and ndim == 3:
        aff = np.asarray(img.affine, dtype=np.float64)[:3, :3]
        return int(np.argmax(np.abs(aff[2]) / np.maximum(np.linalg.norm(aff, axis=0), 1e-12)))
    return ndim - 1


def _label_view(img: torch.Tensor) -> np.ndarray:
    """The spatial label as a numpy view of ``img`` (``[1, *spatial]``, on the CPU): edits change ``img``."""
    if img.ndim < 2 or img.shape[0] != 1:
        raise ValueError(f"expected a label map [1, *spatial], got shape {tuple(img.shape)}")
    plain = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
    if plain.device.type != "cpu":
        raise ValueError(f"expected a label on the CPU, got one on {plain.device}")
    return plain[0].numpy()


def _box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` plus ``margin`` voxels (clipped), or None when it is empty."""
    boxes = ndimage.find_objects(mask.astype(np.uint8, copy=False))
    if not boxes or boxes[0] is None:
        return None
    return tuple(
        slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(boxes[0], mask.shape, strict=True)
    )


def _nonzero_box(lab: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Bounding box of the nonzero voxels of ``lab`` plus ``margin`` voxels, or None when all are 0: one pass over
    the label (``transforms._foreground_box``), in whichever memory order it is stored."""
    box = _foreground_box(torch.from_numpy(lab))
    if box is None:
        return None
    return tuple(
        slice(max(lo - margin, 0), min(hi + 1 + margin, n)) for (lo, hi), n in zip(box, lab.shape, strict=True)
    )


def _block_reduce_any(mask: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """``mask`` on a grid coarser by integer ``factors`` (a coarse voxel is set when half its voxels are)."""
    pad = [(0, (-n) % f) for n, f in zip(mask.shape, factors, strict=True)]
    m = np.pad(mask, pad) if any(p[1] for p in pad) else mask
    shape = []
    for n, f in zip(m.shape, factors, strict=True):
        shape += [n // f, f]
    blocks = m.reshape(shape).astype(np.uint16)
    total = blocks.sum(axis=tuple(range(1, 2 * m.ndim, 2)))
    return total * 2 >= int(np.prod(factors))


class KeepLiverCore(Transform):
    """Cut off what the network glued to the liver: the organ (liver + tumor) is split between its cores, and only
    the part that belongs to the largest core is kept; the rest becomes background.

    A core is a 26-connected component of the organ voxels deeper than ``radius_mm`` (Euclidean, in mm) inside it:
    a bridge thinner than ``2 * radius_mm`` holds none. Each organ voxel belongs to its nearest core voxel. Kept:
    the voxels that belong to the largest core and lie within ``reach_mm`` of it. So a neighbour organ thick enough
    to hold its own core (heart, stomach, kidney, spleen) is cut off at the watershed between the cores, and what
    hangs on a thin bridge farther than ``reach_mm`` from the liver's core is cut off too, while the liver's own
    corners and edges (within ``reach_mm``; a cube's corner lies ``sqrt(3) * radius_mm`` from its core) stay.
    The distances are computed on a grid of about ``grid_mm`` voxels (integer subsampling of the label's grid),
    so it costs about the same on any scanner's grid; cuts are exact to that grid, the rest of the outline is
    untouched.

    Args:
        radius_mm: the core depth; 0 = off.
        reach_mm: how far from the main core organ voxels are kept; default ``2 * radius_mm``.
        applied_labels: the labels forming the organ.
        grid_mm: the coarse grid's target voxel size.
    """

    def __init__(
        self,
        radius_mm: float,
        reach_mm: float | None = None,
        applied_labels: Sequence[int] = (1, 2),
        grid_mm: float = 3.0,
    ) -> None:
        if not (math.isfinite(float(radius_mm)) and float(radius_mm) >= 0):
            raise ValueError(f"radius_mm must be a finite number >= 0, got {radius_mm!r}")
        if not (math.isfinite(float(grid_mm)) and float(grid_mm) > 0):
            raise ValueError(f"grid_mm must be a positive number, got {grid_mm!r}")
        self.radius_mm = float(radius_mm)
        self.reach_mm = 2.0 * self.radius_mm if reach_mm is None else float(reach_mm)
        if not (math.isfinite(self.reach_mm) and self.reach_mm >= self.radius_mm):
            raise ValueError(f"reach_mm must be a number >= radius_mm ({radius_mm!r}), got {reach_mm!r}")
        self.grid_mm = float(grid_mm)
        self.applied_labels = [int(v) for v in applied_labels]
        if not self.applied_labels or 0 in self.applied_labels:
            raise ValueError(f"applied_labels must be nonzero labels, got {applied_labels!r}")

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.radius_mm == 0:
            return img
        lab = _label_view(img)
        spacing = _spacing(img, lab.ndim)
        margin = [int(math.ceil(self.reach_mm / s)) + 1 for s in spacing]
        nonzero = _nonzero_box(lab)  # every applied label lies in the box of the nonzero voxels
        if nonzero is None:
            return img
        box = tuple(
            slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(nonzero, margin, lab.shape, strict=True)
        )
        crop = lab[box]
        full = np.isin(crop, self.applied_labels)
        factors = [max(1, int(round(self.grid_mm / s))) for s in spacing]
        coarse = _block_reduce_any(full, factors) if max(factors) > 1 else full
        step = spacing * np.asarray(factors)
        core = ndimage.distance_transform_edt(coarse, sampling=step) > self.radius_mm
        comps, n = ndimage.label(core, structure=_STRUCTURE_26[(slice(None),) * lab.ndim])
        if n == 0:  # thinner than 2 * radius everywhere: nothing to anchor on, keep the label
            return img
        reach = self.reach_mm + 0.5 * float(step.max())  # plus the coarse grid's rounding
        if n == 1:  # one core: only the reach counts
            keep = ndimage.distance_transform_edt(comps == 0, sampling=step) <= reach
        else:
            # each voxel goes with its nearest core voxel: what lies nearer another core (a neighbour organ thick
            # enough to hold its own core) goes, and so does what lies farther than the reach from the main core
            sizes = np.bincount(comps.ravel())
            sizes[0] = 0
            dist, nearest = ndimage.distance_transform_edt(comps == 0, sampling=step, return_indices=True)
            keep = (comps[tuple(nearest)] == int(np.argmax(sizes))) & (dist <= reach)
        for axis, f in enumerate(factors):
            if f > 1:
                keep = np.repeat(keep, f, axis=axis)
        keep = keep[tuple(slice(0, n) for n in full.shape)]
        crop[full & ~keep] = 0
        return img


class FillLiverHoles(Transform):
    """Background voxels fully enclosed by liver + tumor become liver (``binary_fill_holes`` of the organ, 3D).

    Args:
        liver_label: the value filled in.
        applied_labels: the labels forming the organ.
    """

    def __init__(self, liver_label: int = 1, applied_labels: Sequence[int] = (1, 2)) -> None:
        self.liver_label = int(liver_label)
        self.applied_labels = [int(v) for v in applied_labels]
        if not self.applied_labels or 0 in self.applied_labels:
            raise ValueError(f"applied_labels must be nonzero labels, got {applied_labels!r}")

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        lab = _label_view(img)
        box = _nonzero_box(lab, margin=1)
        if box is None:
            return img
        crop = lab[box]
        organ = np.isin(crop, self.applied_labels)
        holes = ndimage.binary_fill_holes(organ) & (crop == 0)
        crop[holes] = self.liver_label
        return img


class RemoveSmallLesions(Transform):
    """Tumor components with an equivalent-sphere diameter under ``min_diameter_mm`` become ``fill_label``.

    Args:
        min_diameter_mm: smallest lesion kept (diameter of the sphere of the same volume, mm); 0 keeps all.
        tumor_label: the lesion label.
        fill_label: what a removed lesion becomes (liver by default: it lies in the liver).
    """

    def __init__(self, min_diameter_mm: float, tumor_label: int = 2, fill_label: int = 1) -> None:
        if not (math.isfinite(float(min_diameter_mm)) and float(min_diameter_mm) >= 0):
            raise ValueError(f"min_diameter_mm must be a finite number >= 0, got {min_diameter_mm!r}")
        self.min_diameter_mm = float(min_diameter_mm)
        self.tumor_label = int(tumor_label)
        self.fill_label = int(fill_label)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.min_diameter_mm == 0:
            return img
        lab = _label_view(img)
        nonzero = _nonzero_box(lab)
        if nonzero is None:
            return img
        tumor = lab[nonzero] == self.tumor_label
        box = _box(tumor, margin=0)
        if box is None:
            return img
        box = tuple(slice(n.start + b.start, n.start + b.stop) for n, b in zip(nonzero, box, strict=True))
        tumor = lab[box] == self.tumor_label
        voxel_mm3 = float(np.prod(_spacing(img, lab.ndim)))
        min_voxels = (math.pi / 6.0) * self.min_diameter_mm**3 / voxel_mm3
        comps, n = ndimage.label(tumor, structure=_STRUCTURE_26[(slice(None),) * lab.ndim])
        if n == 0:
            return img
        sizes = np.bincount(comps.ravel(), minlength=n + 1)
        small = sizes < min_voxels
        small[0] = False
        if small.any():
            lab[box][small[comps]] = self.fill_label
        return img


class LesionsInLiver(Transform):
    """A tumor component lying outside the liver becomes background.

    The outer surface of each tumor component (its 26-neighbours not in it) is counted: the fraction that is liver
    (``liver_label``) must reach ``min_liver_contact``, else the component is not a liver lesion (a liver lesion is
    surrounded by liver, a subcapsular one still on a good part of its surface; a false positive in the stomach,
    bowel or kidney that touches the liver mask only along a seam is not).

    Args:
        min_liver_contact: the smallest liver fraction of a lesion's surface; 0 keeps every lesion.
        tumor_label: the lesion label.
        liver_label: the liver label.
    """

    def __init__(self, min_liver_contact: float, tumor_label: int = 2, liver_label: int = 1) -> None:
        if not 0.0 <= float(min_liver_contact) <= 1.0:
            raise ValueError(f"min_liver_contact must be in [0, 1], got {min_liver_contact!r}")
        self.min_liver_contact = float(min_liver_contact)
        self.tumor_label = int(tumor_label)
        self.liver_label = int(liver_label)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.min_liver_contact == 0:
            return img
        lab = _label_view(img)
        box = _nonzero_box(lab, margin=1)
        if box is None:
            return img
        crop = lab[box]
        tumor = crop == self.tumor_label
        if not tumor.any():
            return img
        structure = _STRUCTURE_26[(slice(None),) * lab.ndim]
        comps, n = ndimage.label(tumor, structure=structure)
        for i, sl in enumerate(ndimage.find_objects(comps), start=1):
            # the component's box plus one voxel: its whole outer surface
            grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, m)) for s, m in zip(sl, comps.shape, strict=True))
            comp = comps[grown] == i
            shell = ndimage.binary_dilation(comp, structure=structure) & ~comp
            total = int(shell.sum())
            liver = int(np.count_nonzero(crop[grown][shell] == self.liver_label))
            if total and liver / total < self.min_liver_contact:
                crop[grown][comp] = 0
        return img


class PeelLiverOutliers(Transform):
    """Peel off liver voxels whose HU is an outlier for this scan's liver and that touch the outside through
    outliers (see the module docstring).

    The scan's liver HU: median and median absolute deviation (x 1.4826, a robust standard deviation) of the
    smoothed HU over the liver-labelled voxels deeper than ``core_mm`` inside liver + tumor. A liver voxel is an
    outlier when its smoothed HU is more than ``max(k_mad * sd, min_halfwidth_hu)`` from the median. Outliers
    connected to the background through outliers become background; outliers enclosed by the organ (vessels,
    a lesion the network called liver) stay, also those enclosed in an axial plane only (a vessel that enters at
    the hilum). Only thick outlier regions are peeled (what survives an opening of ``thin_voxels`` voxels, plus one
    voxel of its border): a glued-on organ is centimetres thick, while partial volume (the liver's own rim, noise
    specks) is a voxel effect, a voxel or two thick at any voxel size. A peel that would cut the liver in pieces (a
    vessel band across a lobe) is undone where it touches a kept piece of at least ``min_piece_fraction`` of the
    largest. Tumor voxels are never changed.

    Args:
        k_mad: half-width of the accepted HU band in robust standard deviations; 0 turns the step off.
        min_halfwidth_hu: the band's smallest half-width (HU), so a very uniform liver keeps its partial-volume rim.
        smooth_mm: Gaussian smoothing (sigma, mm) of the HU before the test, against noise.
        core_mm: depth (mm) inside the organ of the voxels that define the liver's HU.
        liver_label: the liver label.
        min_core_voxels: fewer core voxels than this: no reliable statistics, nothing changed.
        tumor_margin_mm: liver voxels this close to a tumor voxel are never peeled (the smoothing mixes the lesion's
            HU into them; without the margin a subcapsular lesion would lose its liver contact).
        thin_voxels: outlier layers up to about twice this many voxels thick are not peeled; 0 = no thickness test.
        min_piece_fraction: kept pieces of the organ at least this fraction of the largest one are liver that the
            peel cut off: the peel touching them is undone; 0 = no such guard.
    """

    def __init__(
        self,
        k_mad: float = 3.0,
        min_halfwidth_hu: float = 20.0,
        smooth_mm: float = 1.5,
        core_mm: float = 3.0,
        liver_label: int = 1,
        min_core_voxels: int = 500,
        tumor_margin_mm: float = 5.0,
        thin_voxels: int = 1,
        min_piece_fraction: float = 0.05,
    ) -> None:
        for name, v in (
            ("k_mad", k_mad),
            ("min_halfwidth_hu", min_halfwidth_hu),
            ("smooth_mm", smooth_mm),
            ("core_mm", core_mm),
            ("tumor_margin_mm", tumor_margin_mm),
            ("thin_voxels", thin_voxels),
            ("min_piece_fraction", min_piece_fraction),
        ):
            if not (math.isfinite(float(v)) and float(v) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        self.k_mad, self.min_halfwidth_hu = float(k_mad), float(min_halfwidth_hu)
        self.smooth_mm, self.core_mm = float(smooth_mm), float(core_mm)
        self.liver_label, self.min_core_voxels = int(liver_label), int(min_core_voxels)
        self.tumor_margin_mm = float(tumor_margin_mm)
        self.thin_voxels, self.min_piece_fraction = int(thin_voxels), float(min_piece_fraction)

    def __call__(self, img: torch.Tensor, hu: torch.Tensor) -> torch.Tensor:
        if self.k_mad == 0:
            return img
        lab = _label_view(img)
        hu_arr = (hu.as_tensor() if isinstance(hu, MetaTensor) else torch.as_tensor(hu)).detach().cpu()
        if hu_arr.ndim == lab.ndim + 1:
            hu_arr = hu_arr[0]
        if tuple(hu_arr.shape) != lab.shape:
            logger.warning(
                "PeelLiverOutliers: image %s and label %s grids differ; skipped", tuple(hu_arr.shape), lab.shape
            )
            return img
        box = _nonzero_box(lab, margin=2)
        if box is None:
            return img
        crop = lab[box]
        organ = crop > 0
        sp = _spacing(img, lab.ndim)
        values = hu_arr.numpy()[box].astype(np.float32)
        if self.smooth_mm > 0:
            values = ndimage.gaussian_filter(values, sigma=[self.smooth_mm / s for s in sp])
        # the liver's HU from its core, on every second voxel (a statistic; 8x less erosion work)
        sub = (slice(None, None, 2),) * lab.ndim
        iterations = max(1, int(round(self.core_mm / (2.0 * float(min(sp)))))) if self.core_mm > 0 else 0
        core = ndimage.binary_erosion(organ[sub], iterations=iterations) if iterations else organ[sub]
        core &= crop[sub] == self.liver_label
        ref = values[sub][core]
        if ref.size * 2**lab.ndim < self.min_core_voxels:
            return img
        ref = ref[:: max(1, ref.size // 200_000)]  # a robust statistic needs no more voxels than this
        med = float(np.median(ref))
        sd = 1.4826 * float(np.median(np.abs(ref - med)))
        half = max(self.k_mad * sd, self.min_halfwidth_hu)
        outlier = (crop == self.liver_label) & (np.abs(values - med) > half)
        tumor = organ & (crop != self.liver_label)
        if self.tumor_margin_mm > 0 and tumor.any():
            # the liver around a lesion (its HU smoothed toward the lesion's, or a rim) is not a neighbour
            # (distances on every second voxel, the margin widened by that grid's half diagonal)
            tb = _box(tumor, margin=int(math.ceil(self.tumor_margin_mm / float(min(sp)))) + 2)
            t2 = tumor[tb]
            t2 = ndimage.maximum_filter(t2, size=2, origin=0)[sub]
            reach_mm = self.tumor_margin_mm + float(np.linalg.norm(sp))
            near = ndimage.distance_transform_edt(~t2, sampling=2.0 * sp) <= reach_mm
            for ax in range(lab.ndim):
                near = np.repeat(near, 2, axis=ax)
            outlier[tb] &= ~near[tuple(slice(0, n) for n in outlier[tb].shape)]
        if not outlier.any():
            return img
        outside = ~organ
        if self.thin_voxels > 0:
            # thin outliers (the partial-volume rim, noise) go; a glued-on organ keeps its shape, border voxel included
            cross = ndimage.generate_binary_structure(lab.ndim, 1)
            thick = ndimage.binary_opening(outlier, structure=cross, iterations=self.thin_voxels)
            outlier &= ndimage.binary_dilation(thick, structure=cross)
            if not outlier.any():
                return img
        comps, n = ndimage.label(outlier | outside)
        reaches = np.zeros(n + 1, bool)
        reaches[comps[outside]] = True
        reaches[0] = False
        peel = outlier & reaches[comps]
        # vessels entering the liver (portal vein at the hilum) are outliers that reach the outside too: what the
        # remaining organ encloses in an axial plane is put back
        axial = _axial_axis(img, lab.ndim)
        # (background components connected within axial planes only; those not on the box's side faces are holes)
        in_plane = ndimage.generate_binary_structure(lab.ndim, 1)
        in_plane[tuple(slice(None) if ax != axial else [0, 2] for ax in range(lab.ndim))] = False
        background, n = ndimage.label(~(organ & ~peel), structure=in_plane)
        open_side = np.zeros(n + 1, bool)
        for ax in range(lab.ndim):
            if ax != axial:
                open_side[background.take(0, axis=ax)] = True
                open_side[background.take(-1, axis=ax)] = True
        peel &= open_side[background]
        if self.min_piece_fraction > 0 and peel.any():
            peel = self._keep_the_organ_whole(organ, peel)
        crop[peel] = 0
        logger.debug("PeelLiverOutliers: liver %.0f HU +- %.0f: %d voxels peeled off", med, half, int(peel.sum()))
        return img

    def _keep_the_organ_whole(self, organ: np.ndarray, peel: np.ndarray) -> np.ndarray:
        """``peel`` without its connected parts that touch a kept piece of the organ (other than the largest) of at
        least ``min_piece_fraction`` of the largest piece: liver that the peel would cut off (and the largest-
        component step would then drop)."""
        pieces, n = ndimage.label(organ & ~peel)
        if n < 2:
            return peel
        sizes = np.bincount(pieces.ravel())[1:]
        big = np.flatnonzero(sizes >= self.min_piece_fraction * sizes.max()) + 1
        big = big[big != int(np.argmax(sizes)) + 1]
        if big.size == 0:
            return peel
        is_big = np.zeros(n + 1, bool)
        is_big[big] = True
        parts, m = ndimage.label(peel)
        undo = np.zeros(m + 1, bool)
        undo[parts[ndimage.binary_dilation(is_big[pieces]) & peel]] = True
        undo[0] = False
        return peel & ~undo[parts]


class PeelLiverOutliersd(MapTransform):
    """Dictionary wrapper of :class:`PeelLiverOutliers`: ``keys`` are labels, ``image_key`` the source image in HU
    on their grid (e.g. a copy of the loaded image made before any spatial preprocessing); every other keyword
    argument (``k_mad``, ``tumor_margin_mm``, ``min_piece_fraction``, ...) goes to :class:`PeelLiverOutliers`."""

    def __init__(self, keys: KeysCollection, image_key: str, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.transform = PeelLiverOutliers(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.image_key not in d:
            if self.transform.k_mad and not self.allow_missing_keys:
                raise KeyError(f"PeelLiverOutliersd: no image {self.image_key!r} in the data")
            return d
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], d[self.image_key])
        return d


class _KeyMapped(MapTransform):
    """A ``d`` twin: applies ``self.transform`` to each key."""

    transform: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class KeepLiverCored(_KeyMapped):
    """Dictionary wrapper of :class:`KeepLiverCore` (same arguments, plus ``keys``)."""

    def __init__(
        self,
        keys: KeysCollection,
        radius_mm: float,
        reach_mm: float | None = None,
        applied_labels: Sequence[int] = (1, 2),
        grid_mm: float = 3.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = KeepLiverCore(radius_mm, reach_mm, applied_labels, grid_mm)


class FillLiverHolesd(_KeyMapped):
    """Dictionary wrapper of :class:`FillLiverHoles` (same arguments, plus ``keys``)."""

    def __init__(
        self,
        keys: KeysCollection,
        liver_label: int = 1,
        applied_labels: Sequence[int] = (1, 2),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = FillLiverHoles(liver_label, applied_labels)


class RemoveSmallLesionsd(_KeyMapped):
    """Dictionary wrapper of :class:`RemoveSmallLesions` (same arguments, plus ``keys``)."""

    def __init__(
        self,
        keys: KeysCollection,
        min_diameter_mm: float,
        tumor_label: int = 2,
        fill_label: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = RemoveSmallLesions(min_diameter_mm, tumor_label, fill_label)


class LesionsInLiverd(_KeyMapped):
    """Dictionary wrapper of :class:`LesionsInLiver` (same arguments, plus ``keys``)."""

    def __init__(
        self,
        keys: KeysCollection,
        min_liver_contact: float,
        tumor_label: int = 2,
        liver_label: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = LesionsInLiver(min_liver_contact, tumor_label, liver_label)


class FlipAveragingInferer(Inferer):
    """Test-time flips: the mean of ``inferer(flip(x))`` flipped back, over the identity and each flip in ``flips``.

    Args:
        inferer: the inferer to wrap (e.g. ``SlidingWindowInferer``).
        flips: spatial axes to flip, one list per extra pass (``[[0]]``: the input and its mirror along the first
            spatial axis; axes count from 0 after batch and channel); empty: the inferer alone.
    """

    def __init__(self, inferer: Inferer, flips: Sequence[Sequence[int]] = ((0,),)) -> None:
        super().__init__()
        self.inferer = inferer
        self.flips = [tuple(int(a) for a in f) for f in flips]
        if any(not f for f in self.flips):
            raise ValueError(f"each flip must name at least one spatial axis, got {flips!r}")

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        out = self.inferer(inputs, network, *args, **kwargs)
        if not self.flips:
            return out
        nd = inputs.ndim - 2
        for f in self.flips:
            if any(a < 0 or a >= nd for a in f):
                raise ValueError(f"flip axes {f} outside the {nd} spatial axes")
            dims = [a + 2 for a in f]
            flipped = self.inferer(torch.flip(inputs, dims), network, *args, **kwargs)
            out = out + torch.flip(flipped, dims)
        return out / (1 + len(self.flips))
