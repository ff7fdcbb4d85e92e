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
        crop = lab[box]
        holes = ndimage.binary_fill_holes(organ[box]) & (crop == 0)
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
