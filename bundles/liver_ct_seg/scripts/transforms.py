"""Small transforms used by the bundle configs.

Besides :func:`full_resolution_head` (training postprocessing), these make the inference postprocessing fast on
large CTs without changing its result:

- :class:`InvertArgmaxd`: ``Invertd`` + ``AsDiscreted(argmax=True)`` for class scores. The resampling back to the
  source grid (the inverse of ``Spacingd``) is computed only inside the box where a foreground class can win, and
  reduced to the label at once; a 512 x 512 x 200 CT no longer needs 3 full-resolution score volumes.
- :class:`KeepLargestComponentInBox` / :class:`KeepLargestComponentInBoxd`: MONAI's
  ``KeepLargestConnectedComponent`` run on the bounding box of the labels it applies to (same result, a fraction of
  the voxels).
- :class:`FastSpacingd`: ``Spacingd`` whose bilinear resampling of an axis-aligned grid change is computed one axis
  at a time (two neighbours per axis) instead of by ``grid_sample`` over the whole volume in float64: the same
  values up to float rounding, 5 x faster on a 512 x 512 x 200 CT, and the same trace (``Invertd`` and
  :class:`InvertArgmaxd` invert it as a ``Spacingd``).
- :class:`LabelNiftiWriter`: ``SaveImaged``'s NIfTI writer for label maps, without the slow voxel-by-voxel
  reordering of the whole array (same file content).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelWriter
from monai.data.meta_obj import get_track_meta
from monai.data.utils import AFFINE_TOL, to_affine_nd
from monai.transforms import (
    InvertibleTransform,
    KeepLargestConnectedComponent,
    MapTransform,
    Orientationd,
    Spacingd,
    SpatialResample,
    TraceableTransform,
    Transform,
    allow_missing_keys_mode,
)
from monai.utils import (
    TraceKeys,
    convert_data_type,
    convert_to_tensor,
    ensure_tuple_rep,
    get_equivalent_dtype,
    look_up_option,
    optional_import,
)
from monai.utils.enums import GridSampleMode, GridSamplePadMode
from scipy import ndimage

igzip, has_isal = optional_import("isal.igzip")

__all__ = [
    "full_resolution_head",
    "SeparableSpatialResample",
    "FastSpacingd",
    "ResampleArgmax",
    "InvertArgmaxd",
    "KeepLargestComponentInBox",
    "KeepLargestComponentInBoxd",
    "LabelNiftiWriter",
]

logger = logging.getLogger(__name__)

_FEW_COMPONENTS = 64  # up to this many components are counted and removed box by box (KeepLargestComponentInBox)
_AXIS_TOL = 1e-6  # off-diagonal terms below this (relative to the scale) count as zero: an axis-aligned resampling


def full_resolution_head(pred: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Keep the full-resolution output of a deep-supervision prediction.

    In training mode a deep-supervision network returns, per item, ``[H, C, *spatial]`` (head 0 = full resolution);
    other networks return ``[C, *spatial]``, which is passed through unchanged.
    """
    if pred.ndim == spatial_dims + 2:
        return pred[0]
    if pred.ndim != spatial_dims + 1:
        raise ValueError(f"expected a prediction with {spatial_dims + 1} or {spatial_dims + 2} dims, got {pred.ndim}")
    return pred


def _foreground_box(mask: torch.Tensor) -> list[tuple[int, int]] | None:
    """Per axis the inclusive ``(first, last)`` index where ``mask`` (spatial only) is nonzero; None if empty.

    One pass over ``mask`` (the projection along the last axis), then only the box of the other axes is read.
    """
    if mask.ndim > 1 and mask.stride(0) < mask.stride(-1):  # first index fastest: pass over the memory in order
        box = _foreground_box(mask.permute(*range(mask.ndim - 1, -1, -1)))
        return None if box is None else box[::-1]
    if mask.ndim == 1:
        hit = torch.nonzero(mask).flatten()
        return None if hit.numel() == 0 else [(int(hit[0]), int(hit[-1]))]
    head = _foreground_box(mask.any(dim=-1))
    if head is None:
        return None
    inner = mask[tuple(slice(lo, hi + 1) for lo, hi in head)]
    for _ in range(mask.ndim - 1):  # one leading axis at a time: faster than all at once
        inner = inner.any(dim=0)
    last = _foreground_box(inner)
    return None if last is None else head + last


def _argmax(scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Argmax over the channels, ``[C, *spatial]`` -> ``[1, *spatial]`` (first index on ties, as ``torch.argmax``).

    ``torch.max(dim=0).indices`` gives the same indices as ``argmax(dim=0)`` several times faster on the CPU.
    """
    return torch.max(scores, dim=0, keepdim=True).indices.to(dtype)


def _argmax_over_background(diff: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Argmax of ``[0, *diff]`` over the channels (``diff``: foreground scores minus background), ``[1, *spatial]``.

    Ties go to the lower class, as with ``torch.argmax`` on the scores themselves.
    """
    label = torch.zeros((1, *diff.shape[1:]), dtype=dtype, device=diff.device)
    best = torch.zeros(diff.shape[1:], dtype=diff.dtype, device=diff.device)
    for c in range(diff.shape[0]):
        wins = diff[c] > best
        label[0].masked_fill_(wins, c + 1)
        torch.maximum(best, diff[c], out=best)
    return label


def _linear_taps(
    xform_row: tuple[float, float], in_size: int, out_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index ``j`` of one axis: the two input neighbours ``i0, i1`` of ``u = a * j + b`` clamped to the
    input (``grid_sample``'s ``border`` padding, voxel centres at integer indices) and the weight ``w`` of ``i1``."""
    scale, shift = xform_row
    u = np.clip(scale * np.arange(out_size, dtype=np.float64) + shift, 0.0, in_size - 1.0)
    i0 = np.floor(u).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, u - i0


def _lerp_along(x: torch.Tensor, dim: int, taps: tuple, dtype: torch.dtype) -> torch.Tensor:
    """Linear interpolation of ``x`` along ``dim`` at ``taps`` (from :func:`_linear_taps`), in ``dtype``."""
    i0, i1, w = taps
    shape = [1] * x.ndim
    shape[dim] = -1
    a = x.index_select(dim, torch.as_tensor(i0, device=x.device)).to(dtype)
    b = x.index_select(dim, torch.as_tensor(i1, device=x.device)).to(dtype)
    return a.lerp_(b, torch.as_tensor(w, dtype=dtype, device=x.device).view(shape))


def _taps_matrix(taps: tuple, in_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The ``[in_size, out_size]`` matrix of the taps (two weights per column)."""
    i0, i1, w = taps
    mat = np.zeros((in_size, len(i0)))
    cols = np.arange(len(i0))
    np.add.at(mat, (i0, cols), 1.0 - w)
    np.add.at(mat, (i1, cols), w)
    return torch.as_tensor(mat, dtype=dtype, device=device)


def separable_linear_resample(
    img: torch.Tensor, xform: np.ndarray, spatial_size: Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Linear resampling of ``img`` (``[C, *spatial]``) on an axis-aligned grid: output voxel ``j`` samples the
    input at ``u = diag(xform) * j + xform[:-1, -1]`` (voxel indices), clamped to the input's border voxels.

    The same values as ``grid_sample(mode="bilinear", padding_mode="border", align_corners=False)`` with that
    transform (the trilinear weights are the products of the per-axis ones), computed one axis at a time over
    slabs of the first output axis, so the intermediates stay in the cache: two neighbours per output voxel and
    axis, the last (contiguous) axis as a small matrix product. Axes that map one to one are not touched.
    Returns a ``dtype`` tensor ``[C, *spatial_size]``.
    """
    nd = img.ndim - 1
    in_size = [int(s) for s in img.shape[1:]]
    out_size = [int(s) for s in spatial_size]
    taps = []
    for a in range(nd):
        scale, shift = float(xform[a, a]), float(xform[a, -1])
        identity = in_size[a] == out_size[a] and abs(scale - 1.0) < AFFINE_TOL and abs(shift) < AFFINE_TOL
        taps.append(None if identity else _linear_taps((scale, shift), in_size[a], out_size[a]))
    last = nd - 1
    # the last axis by a matrix product when the matrix is small (the product reads every input column)
    last_matrix = None
    if taps[last] is not None and in_size[last] <= 256:
        last_matrix = _taps_matrix(taps[last], in_size[last], dtype, img.device)
    out = torch.empty((img.shape[0], *out_size), dtype=dtype, device=img.device)
    # slabs of the first output axis of about 4 MB each
    row_bytes = img.shape[0] * int(np.prod(out_size[1:], dtype=np.int64)) * torch.finfo(dtype).bits // 8
    step = max(1, min(out_size[0], (4 << 20) // max(row_bytes, 1))) if nd > 1 else out_size[0]
    for start in range(0, out_size[0], step):
        stop = min(start + step, out_size[0])
        if taps[0] is None:
            y = img[:, start:stop].to(dtype)
        else:
            y = _lerp_along(img, 1, tuple(t[start:stop] for t in taps[0]), dtype)
        for a in range(1, nd):
            if taps[a] is None:
                continue
            if a == last and last_matrix is not None:
                y = torch.matmul(y, last_matrix)
            else:
                y = _lerp_along(y, a + 1, taps[a], dtype)
        out[:, start:stop] = y
    return out


class SeparableSpatialResample(SpatialResample):
    """
    MONAI's ``SpatialResample`` that computes bilinear resampling with ``border`` padding (``align_corners``
    False) by :func:`separable_linear_resample` when the change of grid is axis-aligned (a scaling and a shift per
    axis, as in ``Spacing`` after ``Orientation``, also for oblique images since ``Spacing`` keeps the direction
    cosines), eagerly, on an image without pending operations: ``grid_sample`` over the whole volume, in float64 by
    default, becomes two neighbours per axis, one axis at a time (0.33 -> 0.06 s for a 512 x 512 x 200 CT). The
    values are those of ``grid_sample`` up to float rounding (``dtype``; MONAI's default float64 is kept unless a
    ``dtype`` is given); output, metadata and trace are MONAI's (the output is float32), so ``inverse`` and
    ``Invertd`` work unchanged. Every other case runs MONAI's code.
    """

    def __call__(  # type: ignore[override]
        self,
        img: torch.Tensor,
        dst_affine: torch.Tensor | None = None,
        spatial_size: Sequence[int] | torch.Tensor | int | None = None,
        mode: str | int | None = None,
        padding_mode: str | None = None,
        align_corners: bool | None = None,
        dtype: Any = None,
        lazy: bool | None = None,
    ) -> torch.Tensor:
        args = (img, dst_affine, spatial_size, mode, padding_mode, align_corners, dtype, lazy)
        mode_ = mode if mode is not None else self.mode
        padding_ = padding_mode if padding_mode is not None else self.padding_mode
        corners = align_corners if align_corners is not None else self.align_corners
        lazy_ = self.lazy if lazy is None else lazy
        dtype_pt = get_equivalent_dtype(dtype or self.dtype or img.dtype, torch.Tensor)
        if (
            lazy_
            or not isinstance(img, MetaTensor)
            or img.pending_operations
            or dst_affine is None
            or spatial_size is None
            or isinstance(spatial_size, int)
            or isinstance(mode_, int)
            or look_up_option(mode_, GridSampleMode) != GridSampleMode.BILINEAR
            or look_up_option(padding_, GridSamplePadMode) != GridSamplePadMode.BORDER
            or corners
            or not dtype_pt.is_floating_point
        ):
            return super().__call__(*args)
        nd = img.ndim - 1
        size = [int(s) for s in torch.as_tensor(spatial_size).flatten().tolist()]
        if not 1 <= nd <= 3 or len(size) != nd or min(size) < 1:
            return super().__call__(*args)
        # as monai.transforms.spatial.functional.spatial_resample (monai 1.6.1), with the resampling replaced
        original_spatial_shape = img.shape[1:]
        src_affine = to_affine_nd(nd, img.affine).to(torch.float64)
        dst = to_affine_nd(nd, torch.as_tensor(dst_affine, dtype=torch.float64)).to(src_affine)
        xform = ResampleArgmax.axis_aligned_xform(src_affine.cpu().numpy(), dst.cpu().numpy())
        in_size = [int(s) for s in original_spatial_shape]
        if xform is None or (np.allclose(xform, np.eye(nd + 1), atol=AFFINE_TOL) and size == in_size):
            return super().__call__(*args)  # oblique change of grid, or none at all: MONAI's code
        extra_info = {
            "dtype": str(dtype_pt)[6:],
            "mode": GridSampleMode.BILINEAR.value,
            "padding_mode": GridSamplePadMode.BORDER.value,
            "align_corners": corners if corners is not None else TraceKeys.NONE,
            "src_affine": src_affine,
        }
        meta_info = TraceableTransform.track_transform_meta(
            img,
            sp_size=torch.tensor(size),
            affine=torch.as_tensor(xform, dtype=torch.float64, device=img.device),
            extra_info=extra_info,
            orig_size=original_spatial_shape,
            transform_info=self.get_transform_info(),
            lazy=False,
        )
        data = separable_linear_resample(img.as_tensor(), xform, size, dtype_pt)
        out = convert_to_tensor(data, dtype=torch.float32, track_meta=get_track_meta(), wrap_sequence=True)
        return out.copy_meta_from(meta_info) if isinstance(out, MetaTensor) else out


class FastSpacingd(Spacingd):
    """
    ``Spacingd`` (same arguments, same output, metadata and trace) whose resampling is
    :class:`SeparableSpatialResample`: bilinear resampling of an axis-aligned grid change (the usual case) one axis
    at a time instead of ``grid_sample`` over the whole volume. ``Invertd`` and :class:`InvertArgmaxd` treat it as
    the ``Spacingd`` it is. Set ``dtype`` (e.g. ``torch.float32``) for the precision of the computation; the default
    is MONAI's (float64).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        old = self.spacing_transform.sp_resample
        self.spacing_transform.sp_resample = SeparableSpatialResample(
            mode=old.mode,
            padding_mode=old.padding_mode,
            align_corners=old.align_corners,
            dtype=old.dtype,
            lazy=old.lazy,
        )


class ResampleArgmax(Transform):
    """
    ``SpatialResample(mode="bilinear", padding_mode="border")`` of class scores followed by the argmax over the
    channels (``AsDiscrete(argmax=True)``), for an axis-aligned change of grid (scaling and shift per axis, as
    between a ``Spacingd`` grid and its source grid), computed only where the argmax can be a foreground class.

    A bilinear sample is a convex combination of its (up to 8) neighbours on the input grid, so where every neighbour
    has class 0 (background) as its largest score, so does the sample. The output is therefore computed only inside
    the box of output voxels that have at least one neighbour whose argmax is not 0, and it is 0 elsewhere: the same
    label as the full-grid resampling (up to float rounding of near-ties: this runs in the scores' dtype, MONAI's
    ``Spacingd`` resamples in float64 by default). Inside the box the interpolation is separable: one matrix product
    per axis (2 weights per row), exact for the trilinear weights and needing no sampling grid. Only the differences
    foreground score - background score are resampled (interpolation is linear), one channel less.

    Args:
        dtype: dtype of the label (uint8 holds up to 256 classes).

    Example::

        label = ResampleArgmax()(scores, dst_affine=source_affine, spatial_size=source_shape)  # [1, *source_shape]
    """

    def __init__(self, dtype: torch.dtype = torch.uint8) -> None:
        self.dtype = dtype

    @staticmethod
    def axis_aligned_xform(src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray | None:
        """The map output voxel -> input voxel, ``inv(src_affine) @ dst_affine``, if it is diagonal (else None)."""
        xform = np.linalg.solve(np.asarray(src_affine, dtype=np.float64), np.asarray(dst_affine, dtype=np.float64))
        lin = xform[:-1, :-1]
        off = lin - np.diag(np.diag(lin))
        if np.any(np.abs(np.diag(lin)) < _AXIS_TOL) or np.abs(off).max(initial=0.0) > _AXIS_TOL * np.abs(lin).max():
            return None
        return xform

    def __call__(  # type: ignore[override]
        self, img: torch.Tensor, dst_affine: Any, spatial_size: Sequence[int], src_affine: Any = None
    ) -> torch.Tensor:
        """
        Args:
            img: class scores ``[C, *spatial]`` (probabilities or logits; class 0 = background).
            dst_affine: affine of the output grid.
            spatial_size: shape of the output grid.
            src_affine: affine of ``img``; default ``img.affine`` (a MetaTensor).

        Returns:
            the label ``[1, *spatial_size]`` (a plain tensor of ``self.dtype``).

        Raises:
            ValueError: the change of grid is not axis-aligned, or the shapes do not match.
        """
        values, start = self.box_label(img, dst_affine, spatial_size, src_affine)
        out = torch.zeros((1, *[int(s) for s in spatial_size]), dtype=self.dtype, device=img.device)
        if values is not None:
            out[(slice(None), *(slice(a, a + n) for a, n in zip(start, values.shape[1:], strict=True)))] = values
        return out

    def box_label(
        self, img: torch.Tensor, dst_affine: Any, spatial_size: Sequence[int], src_affine: Any = None
    ) -> tuple[torch.Tensor | None, list[int]]:
        """As ``__call__``, but only the box of the output that can hold a foreground label: ``(values, start)``,
        ``values`` the label ``[1, *box]`` from output index ``start``; ``(None, [])`` if the label is all 0."""
        scores = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        if src_affine is None:
            if not isinstance(img, MetaTensor):
                raise ValueError("src_affine is needed when img is not a MetaTensor")
            src_affine = img.affine
        nd = scores.ndim - 1
        spatial_size = [int(s) for s in spatial_size]
        if len(spatial_size) != nd:
            raise ValueError(f"spatial_size {spatial_size} does not match the {nd} spatial dims of img")
        src = np.asarray(torch.as_tensor(src_affine, dtype=torch.float64).cpu(), dtype=np.float64)
        dst = np.asarray(torch.as_tensor(dst_affine, dtype=torch.float64).cpu(), dtype=np.float64)
        xform = self.axis_aligned_xform(src, dst)
        if xform is None:
            raise ValueError("ResampleArgmax needs an axis-aligned change of grid (scaling and shift per axis)")
        # score of each foreground class minus the background's: interpolation is linear, so the sample's argmax is
        # the first class with the largest positive difference (0 if none), one channel less to resample
        diff = scores[1:] - scores[:1]
        box_in = _foreground_box((diff > 0).any(dim=0))
        if box_in is None:
            return None, []
        # per axis: output indices whose bilinear neighbours (border-clamped) touch the input foreground box, and
        # the interpolation matrix (2 weights per row) from the input range they read
        box_out, box_src, weights = [], [], []
        for a in range(nd):
            i0, i1, w = _linear_taps((xform[a, a], xform[a, -1]), scores.shape[a + 1], spatial_size[a])
            lo, hi = box_in[a]
            sel = np.nonzero((i0 >= lo - 1) & (i0 <= hi))[0]
            if sel.size == 0:
                return None, []
            o0, o1 = int(sel[0]), int(sel[-1]) + 1
            i0, i1, w = i0[o0:o1], i1[o0:o1], w[o0:o1]
            start, stop = int(i0.min()), int(i1.max()) + 1
            box_out.append(slice(o0, o1))
            box_src.append(slice(start, stop))
            weights.append(_taps_matrix((i0 - start, i1 - start, w), stop - start, diff.dtype, diff.device))
        # separable interpolation: contract one input axis at a time with its matrix; each new axis goes last, so
        # after all of them the axes are back in order
        y = diff[(slice(None), *box_src)]
        for mat in weights:
            y = torch.tensordot(y, mat, dims=([1], [0]))
        return _argmax_over_background(y, self.dtype), [b.start for b in box_out]


class InvertArgmaxd(MapTransform):
    """
    ``Invertd(keys, transform, orig_keys, nearest_interp=False)`` followed by ``AsDiscreted(keys, argmax=True)``,
    for class scores: the same label in the source geometry, without resampling every class channel to the full
    source grid.

    The preprocessing is inverted as ``Invertd`` does it (the inverse of each invertible transform, newest first,
    from the trace of ``orig_keys``), except the inverse of ``Spacingd`` (bilinear): that step is done by
    :class:`ResampleArgmax`, which resamples the scores only where a foreground class can win and returns the label
    (``dtype``); the inverses after it (e.g. ``Orientationd``) then move the label, not the scores. Oblique images
    take the fast path too (``Spacingd`` keeps the direction cosines, so its grid change is axis-aligned). Where
    the fast step does not apply (no ``Spacingd``, another interpolation mode, ``Spacingd(diagonal=True)`` on an
    oblique image) the scores are inverted by MONAI and the argmax is taken at the end, as with ``Invertd`` +
    ``AsDiscreted``: the same label, only slower.

    Args:
        keys: keys of the class scores ``[C, *spatial]`` (network resolution), replaced by the label ``[1, *source]``.
        transform: the preprocessing (an invertible ``Compose``) applied to ``orig_keys``.
        orig_keys: keys of the preprocessed inputs whose trace and metadata are used; default ``keys``.
        dtype: dtype of the label.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: InvertibleTransform,
        orig_keys: KeysCollection | None = None,
        dtype: torch.dtype = torch.uint8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not isinstance(transform, InvertibleTransform):
            raise ValueError(f"transform must be invertible (e.g. a Compose), got {type(transform).__name__}")
        self.transform = transform
        self.orig_keys = ensure_tuple_rep(orig_keys, len(self.keys)) if orig_keys is not None else self.keys
        self.resample_argmax = ResampleArgmax(dtype=dtype)
        self.dtype = dtype

    def _invertible(self) -> list[InvertibleTransform]:
        flat = self.transform.flatten().transforms if hasattr(self.transform, "flatten") else [self.transform]
        return [t for t in flat if isinstance(t, InvertibleTransform)]

    def _fast_spacing_inverse(self, t: Spacingd, img: MetaTensor) -> _BoxLabel | None:
        """Label of ``img`` (scores) on the grid before ``t``, or None where the fast path does not apply."""
        sp_resample = t.spacing_transform.sp_resample
        op = img.applied_operations[-1] if img.applied_operations else None
        if op is None:
            return None
        try:
            sp_resample.check_transforms_match(op)
        except RuntimeError:  # the newest operation is not this Spacingd's resampling
            return None
        info = op[TraceKeys.EXTRA_INFO]
        if info.get("mode") != "bilinear" or info.get("padding_mode") != "border" or info.get("align_corners") is True:
            logger.debug("InvertArgmaxd: Spacingd resampled with %s; inverting the scores with MONAI", info)
            return None
        dst_affine = info["src_affine"]  # the grid before Spacingd
        src = torch.as_tensor(img.affine, dtype=torch.float64).cpu().numpy()
        if ResampleArgmax.axis_aligned_xform(src, torch.as_tensor(dst_affine).cpu().numpy()) is None:
            logger.debug("InvertArgmaxd: the Spacingd grid change is not axis-aligned; inverting the scores with MONAI")
            return None
        size = [int(v) for v in op[TraceKeys.ORIG_SIZE]]
        values, start = self.resample_argmax.box_label(img, dst_affine=dst_affine, spatial_size=size)
        sp_resample.pop_transform(img)
        return _BoxLabel(values, start, size, _with_meta(torch.zeros(0), img, dst_affine))

    @staticmethod
    def _orientation_inverse(t: Orientationd, label: _BoxLabel) -> _BoxLabel | None:
        """``t``'s inverse (axes flipped and permuted back) applied to the label's box only, or None (then MONAI's
        inverse runs on the whole label)."""
        ornt = t.ornt_transform
        carrier = label.carrier
        try:
            op = ornt.get_most_recent_transform(carrier, check=True, pop=False)
        except (RuntimeError, ValueError, IndexError):
            return None
        orig_affine = np.asarray(torch.as_tensor(op[TraceKeys.EXTRA_INFO]["original_affine"], dtype=torch.float64))
        cur_affine = np.asarray(carrier.affine, dtype=np.float64)
        nd = len(label.size)
        if orig_affine.shape != (nd + 1, nd + 1) or cur_affine.shape != (nd + 1, nd + 1):
            return None
        xform = np.linalg.solve(orig_affine, cur_affine)  # current voxel -> original voxel
        perm = np.rint(xform)
        if np.abs(xform - perm).max() > 1e-3 or sorted(np.abs(perm[:nd, :nd]).sum(0)) != [1.0] * nd:
            return None  # not a flip / permutation of the axes
        orig_size = [int(v) for v in op[TraceKeys.ORIG_SIZE]]
        src_axis = [int(np.flatnonzero(perm[b, :nd])[0]) for b in range(nd)]
        sign = [int(perm[b, src_axis[b]]) for b in range(nd)]
        shift = [int(perm[b, nd]) for b in range(nd)]
        if sorted(src_axis) != list(range(nd)) or any((label.size[src_axis[b]] != orig_size[b]) for b in range(nd)):
            return None
        ornt.pop_transform(carrier)
        out = _with_meta(torch.zeros(0), carrier, cur_affine @ np.linalg.inv(perm))
        if label.values is None:
            return _BoxLabel(None, [], orig_size, out)
        values = label.values.permute(0, *[1 + a for a in src_axis])
        flips = [1 + b for b in range(nd) if sign[b] < 0]
        if flips:
            values = values.flip(flips)
        start = []
        for b in range(nd):
            lo, n = label.start[src_axis[b]], label.values.shape[1 + src_axis[b]]
            start.append(lo + shift[b] if sign[b] > 0 else shift[b] - (lo + n - 1))
        return _BoxLabel(values, start, orig_size, out)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, orig_key in self.key_iterator(d, self.orig_keys):
            orig = d.get(orig_key)
            if not isinstance(orig, MetaTensor):
                raise ValueError(f"InvertArgmaxd needs the preprocessed {orig_key!r} as a MetaTensor (with its trace)")
            scores = d[key].detach() if isinstance(d[key], torch.Tensor) else torch.as_tensor(d[key])
            scores = MetaTensor(scores.as_tensor() if isinstance(scores, MetaTensor) else scores)
            scores.meta = deepcopy(orig.meta)
            scores.applied_operations = deepcopy(orig.applied_operations)
            item: dict[Hashable, Any] = {orig_key: scores}
            box: _BoxLabel | None = None  # the label, as its foreground box, once the scores are reduced to it
            is_label = False
            with allow_missing_keys_mode(self.transform):  # type: ignore[arg-type]
                for t in reversed(self._invertible()):
                    if box is not None and isinstance(t, Orientationd) and orig_key in t.keys:
                        moved = self._orientation_inverse(t, box)
                        if moved is not None:
                            box = moved
                            continue
                    if box is not None:  # another inverse: MONAI's, on the whole label
                        item[orig_key], box = box.materialize(self.dtype, scores.device), None
                    if not is_label and isinstance(t, Spacingd) and orig_key in t.keys:
                        box = self._fast_spacing_inverse(t, item[orig_key])
                        if box is not None:
                            is_label = True
                            continue
                    item = t.inverse(item)
            if box is not None:
                item[orig_key] = box.materialize(self.dtype, scores.device)
            out = item[orig_key]
            if not is_label:
                out = _argmax(out, self.dtype)
            d[key] = out
        return d


def _with_meta(data: torch.Tensor, like: MetaTensor, affine: Any) -> MetaTensor:
    """``data`` as a MetaTensor with the metadata and trace of ``like`` and the (float64) ``affine``."""
    out = MetaTensor(data, meta=like.meta, applied_operations=like.applied_operations)
    out.affine = torch.as_tensor(affine, dtype=torch.float64)
    return out


class _BoxLabel:
    """A label that is 0 outside a box, while :class:`InvertArgmaxd` moves it: ``values`` (``[1, *box]``, None if
    the label is all 0) from voxel ``start`` of a ``size`` grid; ``carrier`` holds the metadata, the trace and the
    grid's affine."""

    def __init__(self, values: torch.Tensor | None, start: list[int], size: list[int], carrier: MetaTensor) -> None:
        self.values, self.start, self.size, self.carrier = values, start, size, carrier

    def materialize(self, dtype: torch.dtype, device: torch.device) -> MetaTensor:
        """The whole label as a MetaTensor ``[1, *size]``, its voxels in NIfTI's order (first index fastest, as the
        writer stores them: no reordering copy when it is saved)."""
        nd = len(self.size)
        full = torch.zeros(self.size[::-1], dtype=dtype, device=device).permute(*range(nd - 1, -1, -1)).unsqueeze(0)
        if self.values is not None:
            full[(slice(None), *(slice(a, a + n) for a, n in zip(self.start, self.values.shape[1:], strict=True)))] = (
                self.values
            )
        return _with_meta(full, self.carrier, self.carrier.affine)


class KeepLargestComponentInBox(Transform):
    """
    MONAI's ``KeepLargestConnectedComponent`` for a label map (not one-hot), run on the bounding box of the nonzero
    voxels only (the whole image if 0 is an applied label): the same result (no component of an applied label
    reaches outside that box), a fraction of the work when the labels fill a small part of a large image. Like
    MONAI's transform, it updates the label in place.

    Args:
        applied_labels: labels whose union (``independent=False``) or each of which (``independent=True``) keeps
            its largest component(s).
        independent: as in ``KeepLargestConnectedComponent``.
        connectivity: as in ``KeepLargestConnectedComponent`` (None = full connectivity).
        num_components: as in ``KeepLargestConnectedComponent``.
    """

    def __init__(
        self,
        applied_labels: Sequence[int] | int,
        independent: bool = True,
        connectivity: int | None = None,
        num_components: int = 1,
    ) -> None:
        labels = [int(v) for v in np.atleast_1d(applied_labels)]
        if not labels:
            raise ValueError("applied_labels must name at least one label")
        self.applied_labels = labels
        self.independent = bool(independent)
        self.connectivity = connectivity
        self.num_components = int(num_components)
        self.klcc = KeepLargestConnectedComponent(
            applied_labels=labels,
            is_onehot=False,
            independent=independent,
            connectivity=connectivity,
            num_components=num_components,
        )

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """``img``: label ``[1, *spatial]``. Returns ``img``, updated in place (as MONAI's transform does)."""
        if img.ndim < 2 or img.shape[0] != 1:
            raise ValueError(f"expected a label map [1, *spatial], got shape {tuple(img.shape)}")
        plain = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        if 0 in self.applied_labels:  # background takes part: its components can span the whole image
            box = [(0, s - 1) for s in plain.shape[1:]]
        else:  # the box of all nonzero voxels holds every applied label (one pass over the image)
            box = _foreground_box(plain[0])
        if box is None:
            return img
        region = (slice(None), *(slice(lo, hi + 1) for lo, hi in box))
        if plain.device.type != "cpu":  # MONAI's transform (cuCIM on the GPU when installed)
            plain[region] = torch.as_tensor(self.klcc(plain[region]))
            return img
        crop = plain[region][0].numpy()  # a view: updated in place
        # a label in NIfTI's voxel order (as InvertArgmaxd gives it) is labelled through its reversed-axes view,
        # which is in C order: components do not depend on the axis order, only their numbering does, which
        # matters only where sizes tie at the cut (then it is redone in MONAI's C order)
        reversed_axes = crop.ndim > 1 and crop.strides[0] < crop.strides[-1]
        work = crop.T if reversed_axes else crop
        if not self._keep_largest_all(work, ties_in_order=not reversed_axes):
            c_order = np.ascontiguousarray(crop)
            self._keep_largest_all(c_order, ties_in_order=True)
            crop[...] = c_order
        return img

    def _keep_largest_all(self, crop: np.ndarray, ties_in_order: bool) -> bool:
        """Keep the largest component(s) of the applied labels in ``crop`` (in place). False (and ``crop``
        unchanged) where ``ties_in_order`` is False and sizes tie at the cut."""
        if self.independent:
            for label in self.applied_labels:
                if not self._keep_largest(crop, crop == label, ties_in_order):
                    return False
            return True
        labels = set(self.applied_labels)
        if 0 not in labels and crop.dtype.kind in "iu" and labels >= set(range(1, int(crop.max()) + 1)):
            foreground = crop != 0  # every nonzero label is applied (the usual 1 and 2): no lookup
        else:
            foreground = np.isin(crop, self.applied_labels)
        return self._keep_largest(crop, foreground, ties_in_order)

    def _keep_largest(self, crop: np.ndarray, foreground: np.ndarray, ties_in_order: bool = True) -> bool:
        """Set the voxels of ``foreground`` outside its ``num_components`` largest components to 0 in ``crop``.

        MONAI's ``get_largest_connected_component_mask`` on the CPU, with scipy's labelling (16-bit labels when
        they suffice) instead of scikit-image's 64-bit ones: the same components, numbered in the same (raster)
        order and ranked the same way (ties included). With few components (the usual liver and a few specks)
        they are counted and removed inside their own bounding boxes instead of by passes over the whole box
        (0.13 -> 0.07 s for a liver in a 512 x 512 x 200 CT). Returns False, changing nothing, where sizes tie
        at the cut and ``ties_in_order`` is False (``crop`` is not in C order: the numbering differs from MONAI's).
        """
        structure = ndimage.generate_binary_structure(crop.ndim, self.connectivity or crop.ndim)
        try:
            features, count = ndimage.label(foreground, structure, output=np.uint16)
        except RuntimeError:  # more than 65535 components
            features, count = ndimage.label(foreground, structure, output=np.int32)
        k = self.num_components
        if count <= k:
            return True
        boxes = ndimage.find_objects(features) if count <= _FEW_COMPONENTS else None
        if boxes is not None:
            sizes = np.zeros(count + 1, dtype=np.int64)
            for i, box in enumerate(boxes, start=1):
                sizes[i] = np.count_nonzero(features[box] == i)
        else:
            sizes = np.bincount(features.ravel(), minlength=count + 1)
            sizes[0] = 0
        order = np.argsort(sizes)[::-1]  # as MONAI ranks them
        if not ties_in_order and sizes[order[k - 1]] == sizes[order[k]]:
            return False
        keep = np.zeros(count + 1, dtype=bool)
        keep[order[:k]] = True
        if boxes is None:
            crop[foreground & ~keep[features]] = 0
            return True
        for i, box in enumerate(boxes, start=1):
            if not keep[i]:
                crop[box][features[box] == i] = 0
        return True


class KeepLargestComponentInBoxd(MapTransform):
    """Dictionary wrapper of :class:`KeepLargestComponentInBox` (same arguments, plus ``keys``)."""

    def __init__(
        self,
        keys: KeysCollection,
        applied_labels: Sequence[int] | int,
        independent: bool = True,
        connectivity: int | None = None,
        num_components: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = KeepLargestComponentInBox(applied_labels, independent, connectivity, num_components)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class LabelNiftiWriter(NibabelWriter):
    """
    ``NibabelWriter`` (the ``SaveImaged`` writer for ``.nii`` / ``.nii.gz``) that hands nibabel the array in NIfTI's
    own voxel order (Fortran: first index fastest), so the file is written in contiguous blocks instead of being
    gathered voxel by voxel from MONAI's C-ordered array. The reordering copies only the bounding box of the
    nonzero voxels (a label map is mostly background); the rest of the Fortran-ordered array is zeros from the
    start. A label already in that order (as :class:`InvertArgmaxd` gives it) is written without any copy.
    Without resampling (``resample=False``) the array is not converted to float32 and back first (MONAI's
    writer does so even then). The file content is the same as ``NibabelWriter``'s.
    Use: ``SaveImaged(..., writer=LabelNiftiWriter)`` (or ``"writer": "scripts.transforms.LabelNiftiWriter"``).
    """

    @classmethod
    def resample_if_needed(  # type: ignore[override]
        cls, data_array: Any, affine: Any = None, target_affine: Any = None, output_spatial_shape: Any = None, **kwargs
    ) -> tuple[Any, Any]:
        if target_affine is None and output_spatial_shape is None:  # nothing to resample
            return data_array, (np.eye(4) if affine is None else affine)
        return super().resample_if_needed(data_array, affine, target_affine, output_spatial_shape, **kwargs)

    @classmethod
    def create_backend_obj(
        cls, data_array: Any, affine: Any = None, dtype: Any = None, **kwargs: Any
    ) -> nib.nifti1.Nifti1Image:
        if isinstance(data_array, torch.Tensor):  # MONAI's conversion would make a C-ordered copy
            plain = data_array.as_tensor() if isinstance(data_array, MetaTensor) else data_array
            arr = plain.detach().cpu().numpy()
        else:
            arr = np.asarray(convert_data_type(data_array, np.ndarray)[0])
        if dtype is not None:  # SaveImage sets it: output_dtype, else the dtype of the data it was given
            arr = arr.astype(get_equivalent_dtype(dtype, np.ndarray), copy=False)
        if arr.ndim >= 2 and not arr.flags.f_contiguous:
            fortran = np.zeros(arr.shape, dtype=arr.dtype, order="F")
            try:
                box = _foreground_box(torch.from_numpy(arr))
            except TypeError:  # a dtype torch does not take: copy everything
                box = [(0, s - 1) for s in arr.shape]
            if box is not None:
                region = tuple(slice(lo, hi + 1) for lo, hi in box)
                fortran[region] = arr[region]
            arr = fortran
        aff = np.eye(4) if affine is None else np.asarray(convert_data_type(affine, np.ndarray)[0])
        return nib.nifti1.Nifti1Image(
            arr,
            to_affine_nd(r=3, affine=aff),
            header=kwargs.pop("header", None),
            extra=kwargs.pop("extra", None),
            file_map=kwargs.pop("file_map", None),
        )

    def write(self, filename: Any, verbose: bool = False, **obj_kwargs: Any) -> None:
        """``NibabelWriter.write``, but a ``.gz`` file is compressed by ISA-L (level 1) when the ``isal`` package is
        installed: 0.01 s instead of zlib's 0.09 s for a 512 x 512 x 200 label map, and a smaller file."""
        if not (has_isal and str(filename).endswith(".gz")):
            return super().write(filename, verbose=verbose, **obj_kwargs)
        if verbose:
            logger.info(f"writing: {filename}")
        # as NibabelWriter.write (monai 1.6.1), with nib.save's gzip stream replaced
        self.data_obj = self.create_backend_obj(
            self.data_obj, affine=self.affine, dtype=self.output_dtype, **obj_kwargs
        )
        if self.affine is None:
            self.affine = np.eye(4)
        affine = to_affine_nd(r=3, affine=convert_data_type(self.affine, np.ndarray)[0])
        self.data_obj.set_sform(affine, code=1)
        self.data_obj.set_qform(affine, code=1)
        with igzip.open(filename, "wb", compresslevel=1) as f:
            self.data_obj.to_file_map({"image": nib.FileHolder(fileobj=f)})
