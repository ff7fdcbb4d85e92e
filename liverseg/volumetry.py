"""Liver and tumor volumetry from a label volume: volumes in millilitres, tumor count and tumor burden.

The label follows :data:`liverseg.LABELS` (0 background, 1 liver, 2 tumor); tumors are inside the liver, so the
liver volume reported here is the whole organ (liver parenchyma + tumors), the convention of liver volumetry and of
the tumor-burden ratio. Voxel volumes come from the affine (``|det|`` of its 3x3 part), so the result does not
depend on the array's orientation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from liverseg import LABELS

__all__ = ["volumetry", "voxel_volume_ml", "TUMOR_CONNECTIVITY"]

TUMOR_CONNECTIVITY = 3
"""Tumors are 26-connected components of the tumor label (voxels touching by a face, an edge or a corner)."""

_LIVER = LABELS["liver"]
_TUMOR = LABELS["tumor"]


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in millilitres (``|det(affine[:3, :3])|`` mm^3 / 1000).

    Raises:
        ValueError: the affine is not a finite 4x4 matrix or its 3x3 part is singular.
    """
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {a.shape}")
    det = abs(float(np.linalg.det(a[:3, :3])))
    if det <= 1e-12:
        raise ValueError("affine is singular (zero voxel volume)")
    return det / 1000.0


def _check_label(label: np.ndarray) -> np.ndarray:
    arr = np.asarray(label)
    if arr.ndim == 4 and arr.shape[0] == 1:  # channel-first [1, i, j, k]
        arr = arr[0]
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"label must be a 3D volume, got an array of shape {tuple(np.shape(label))}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError("label must hold integer values (0 background, 1 liver, 2 tumor)")
        arr = arr.astype(np.int16)
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"label must be an integer array, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > max(LABELS.values())):  # min/max: no full sort
        bad = [int(v) for v in np.unique(arr) if int(v) not in LABELS.values()]
        valid = sorted(LABELS.values())
        raise ValueError(f"label holds values {bad}; valid values are {valid} (background, liver, tumor)")
    return arr


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the True voxels of a 3D boolean array with at least one (``any`` along axes: 40 x faster
    than ``ndimage.find_objects`` on 50 M voxels). A mask in NIfTI's voxel order (first index fastest, as the
    bundle's inference gives it) is read through its reversed-axes view, in memory order."""
    if mask.strides[0] < mask.strides[-1]:
        return tuple(reversed(_bounding_box(mask.T)))
    first = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    lo, hi = int(first[0]), int(first[-1]) + 1
    rest = mask[lo:hi].any(axis=0)
    second, third = np.flatnonzero(rest.any(axis=1)), np.flatnonzero(rest.any(axis=0))
    return slice(lo, hi), slice(int(second[0]), int(second[-1]) + 1), slice(int(third[0]), int(third[-1]) + 1)


def _max_diameter_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    """Longest 3D diameter of one lesion (``mask``: its bounding box): the largest world distance between two
    voxel centres of its surface (found on their convex hull), plus the voxel's extent along that line."""
    from scipy.spatial import ConvexHull, QhullError

    surface = mask & ~ndimage.binary_erosion(mask)
    points = np.argwhere(surface).astype(float) @ affine[:3, :3].T
    if len(points) > 4:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:  # flat lesions (one slice thick): every surface voxel is a candidate
            pass
    if len(points) > 3000:  # degenerate and large: the bounding box's corners bound the diameter
        points = points[np.unique(np.concatenate([points.argmin(axis=0), points.argmax(axis=0)]))]
    if len(points) < 2:
        return float(np.abs(affine[:3, :3]).sum(axis=1).max()) if len(points) else 0.0
    diff = points[:, None, :] - points[None, :, :]
    dist = np.sqrt((diff**2).sum(axis=-1))
    i, j = np.unravel_index(int(np.argmax(dist)), dist.shape)
    direction = diff[i, j] / dist[i, j]
    voxel_extent = float(np.abs(np.linalg.solve(affine[:3, :3], direction)).max() ** -1)  # one voxel along it
    return float(dist[i, j]) + voxel_extent


def volumetry(label: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """Liver volume, tumor count, per-tumor volumes and tumor burden of a label volume.

    Args:
        label: integer array ``[i, j, k]`` (a leading or trailing singleton channel is accepted) with values
            0 background, 1 liver, 2 tumor.
        affine: 4x4 voxel-to-world (mm) matrix of ``label``.

    Returns:
        a JSON-serialisable dict:

        - ``liver_volume_ml``: whole liver, parenchyma + tumors (labels 1 and 2);
        - ``liver_parenchyma_volume_ml``: label 1 only;
        - ``num_tumors``: number of 26-connected components of label 2;
        - ``tumors``: one entry per tumor, largest first: ``id`` (1-based, in that order), ``volume_ml``,
          ``num_voxels``, ``centroid_mm`` (world coordinates of the tumor's centroid), ``diameter_mm`` (the
          largest distance between two of its voxel centres, plus one voxel size along that line: the longest
          3D diameter) and ``equivalent_diameter_mm`` (of the sphere of the same volume);
        - ``total_tumor_volume_ml``;
        - ``tumor_burden_percent``: total tumor volume / liver volume x 100 (``None`` when there is no liver);
        - ``voxel_volume_ml``, ``spacing_mm`` (voxel size along i, j, k).

    Raises:
        ValueError: ``label`` is not 3D, not integer-valued, holds values other than 0, 1, 2, or ``affine``
            is not a finite non-singular 4x4 matrix.
    """
    arr = _check_label(label)
    a = np.asarray(affine, dtype=float)
    vox_ml = voxel_volume_ml(a)

    # counts by comparisons over the (possibly full-resolution, 50 M-voxel) volume (bincount would widen it to
    # 64-bit integers first); the connected components and centroids only inside the tumors' bounding box
    tumor_mask = arr == _TUMOR
    n_liver_only, n_tumor = int(np.count_nonzero(arr == _LIVER)), int(np.count_nonzero(tumor_mask))
    liver_ml = (n_liver_only + n_tumor) * vox_ml

    tumors: list[dict[str, Any]] = []
    if n_tumor:
        box = _bounding_box(tumor_mask)
        sub = tumor_mask[box]
        offset = np.array([sl.start for sl in box], dtype=float)
        components, num = ndimage.label(sub, structure=np.ones((3, 3, 3), dtype=bool))
        sizes = np.bincount(components.ravel(), minlength=num + 1)[1:]
        centroids = ndimage.center_of_mass(sub, components, index=np.arange(1, num + 1))
        boxes = ndimage.find_objects(components)
        for n, (size, centroid) in enumerate(zip(sizes, centroids), 1):
            world = a @ np.append(np.asarray(centroid, dtype=float) + offset, 1.0)
            tumors.append(
                {
                    "volume_ml": round(float(size) * vox_ml, 4),
                    "num_voxels": int(size),
                    "centroid_mm": [round(float(v), 2) for v in world[:3]],
                    "diameter_mm": round(_max_diameter_mm(components[boxes[n - 1]] == n, a), 2),
                    "equivalent_diameter_mm": round(float((6.0 * size * vox_ml * 1000.0 / np.pi) ** (1 / 3)), 2),
                }
            )
        tumors.sort(key=lambda t: -t["num_voxels"])
        for i, t in enumerate(tumors, 1):
            t["id"] = i

    total_tumor_ml = n_tumor * vox_ml
    return {
        "liver_volume_ml": round(liver_ml, 3),
        "liver_parenchyma_volume_ml": round(n_liver_only * vox_ml, 3),
        "num_tumors": len(tumors),
        "tumors": [{"id": t["id"], **{k: v for k, v in t.items() if k != "id"}} for t in tumors],
        "total_tumor_volume_ml": round(total_tumor_ml, 4),
        "tumor_burden_percent": round(100.0 * total_tumor_ml / liver_ml, 4) if liver_ml > 0 else None,
        "voxel_volume_ml": vox_ml,
        "spacing_mm": [round(float(v), 4) for v in np.linalg.norm(a[:3, :3], axis=0)],
    }
