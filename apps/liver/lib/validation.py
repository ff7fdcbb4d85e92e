"""Checks of what clients send (ids, tags, uploaded images and labels), raising 4xx-mapped errors.

monailabel 0.8.5 answers most bad input with a 500 (or, for ids with ``../``, writes outside the datastore); the app
runs these checks first and raises :class:`BadRequest` / :class:`NotFound`, which the server maps to 400 / 404
(see :mod:`lib.server`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd")
MAX_VOXELS = 1024**3


class BadRequest(MONAILabelException):
    """Client error: answered with HTTP 400."""

    def __init__(self, msg: str):
        super().__init__(MONAILabelError.INVALID_INPUT, msg)


class NotFound(MONAILabelException):
    """Unknown image / label / model: answered with HTTP 404."""

    def __init__(self, msg: str):
        super().__init__(MONAILabelError.INVALID_INPUT, msg)


def check_id(value: str, what: str = "image id") -> str:
    """An id or tag must be a plain file-name stem: letters, digits, ``._-``, no path separators, no ``..``."""
    if not isinstance(value, str) or not ID_PATTERN.match(value) or ".." in value:
        raise BadRequest(
            f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' only (no path separators, no '..')"
        )
    return value


def _suffix(path: str) -> str:
    name = os.path.basename(path).lower()
    for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    return Path(name).suffix


def read_header(path: str, what: str = "image", check_data: bool = True) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and 4x4 affine (RAS) of a NIfTI or NRRD file, without reading the voxels; ``check_data`` also reads
    the last slice of a ``.nii.gz`` (a truncated gzip stream only shows there: the whole stream is decompressed,
    0.6 s for a 512 x 512 x 200 CT). Uploads are checked so; a file that is read in full next anyway need not be.

    Raises:
        BadRequest: unsupported format, unreadable or corrupt file, not a 3D volume (a trailing singleton
            dimension is accepted), more than ``MAX_VOXELS`` voxels.
    """
    suffix = _suffix(path)
    if suffix not in IMAGE_SUFFIXES:
        raise BadRequest(
            f"unsupported {what} format {suffix or '(no extension)'!r}: send NIfTI (.nii, .nii.gz) or NRRD (.nrrd)"
        )
    try:
        if suffix in (".nii", ".nii.gz"):
            import nibabel as nib

            img = nib.load(path)
            shape = tuple(int(s) for s in img.shape)
            affine = np.asarray(img.affine, dtype=float)
            if check_data and suffix == ".nii.gz":  # a truncated gzip stream only shows when the data is read
                np.asanyarray(img.dataobj[..., -1:] if len(shape) else img.dataobj)
        else:
            import nrrd

            hdr = nrrd.read_header(path)
            shape = tuple(int(s) for s in hdr["sizes"])
            dirs = np.asarray(hdr.get("space directions"), dtype=float)
            dirs = dirs[~np.isnan(dirs).any(axis=1)] if dirs.ndim == 2 else dirs
            affine = np.eye(4)
            if dirs.shape == (3, 3):
                affine[:3, :3] = dirs.T
                affine[:3, 3] = np.asarray(hdr.get("space origin", [0, 0, 0]), dtype=float)
                if str(hdr.get("space", "")).lower() in ("left-posterior-superior", "lps"):
                    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
            if len(shape) == 4 and shape[0] == 1:  # seg.nrrd with one segment layer
                shape = shape[1:]
    except BadRequest:
        raise
    except Exception as e:  # corrupt files raise many exception types
        raise BadRequest(f"the {what} is not a readable {suffix} file ({type(e).__name__}: {e})") from e
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise BadRequest(f"the {what} must be a 3D volume; got {len(shape)}D data of shape {shape}")
    if min(shape) < 1 or int(np.prod(shape)) > MAX_VOXELS:
        raise BadRequest(f"the {what} has an unsupported size {shape}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise BadRequest(f"the {what} has an invalid geometry (singular or non-finite affine)")
    return shape, affine


def check_label_file(label_path: str, image_path: str | None, valid_values: set[int]) -> None:
    """A label must be a 3D volume with the image's shape and only the app's label values.

    Raises:
        BadRequest: see :func:`read_header`; shape different from the image's; values outside ``valid_values``.
    """
    shape, _ = read_header(label_path, "label")
    if image_path:
        image_shape, _ = read_header(image_path, "image", check_data=False)  # the datastore's own image
        if tuple(shape) != tuple(image_shape):
            raise BadRequest(f"the label's shape {shape} differs from its image's shape {image_shape}")
    from monai.transforms import LoadImage

    try:
        arr = np.asarray(LoadImage(image_only=True)(label_path))
    except Exception as e:
        raise BadRequest(f"the label could not be read ({type(e).__name__}: {e})") from e
    values = {int(v) for v in np.unique(arr)} if arr.size else set()
    if np.any(arr != np.round(arr)):
        raise BadRequest("the label holds non-integer values")
    bad = sorted(values - valid_values)
    if bad:
        raise BadRequest(f"the label holds values {bad[:10]}; valid values are {sorted(valid_values)}")
