"""Reading and writing volumes with their geometry.

Convention used throughout the package: a volume is a numpy array indexed ``[i, j, k]`` (k = slice) and a
4x4 ``affine`` maps voxel indices to world millimetres in RAS (nibabel's convention). DICOM geometry is LPS;
:func:`lps_to_ras` converts an LPS affine.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np

from liverseg.errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Convert a voxel-to-LPS affine into a voxel-to-RAS affine (the same matrix works both ways)."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=float)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (mm) along i, j, k: the norms of the affine's columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]


def orientation_of(affine: np.ndarray) -> str:
    """Axis codes of the affine, e.g. ``"RAS"`` or ``"LPS"`` (nibabel's convention: where each axis points)."""
    return "".join(nib.aff2axcodes(np.asarray(affine)))


def is_nifti(path: str | Path) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume; return ``(array, affine)``. Raises :class:`InputError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises several types for corrupt / truncated files
        raise InputError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D volume, got an array of shape {tuple(data.shape)}")
    return data, np.asarray(img.affine, dtype=float)


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success it is flushed to disk (fsync) and renamed onto ``final``,
    on error removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name.split('.')[0]}.", suffix=f".part{suffix}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN / inf floats as None, numpy scalars as Python numbers, paths as strings, keys as strings."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """Write :func:`json_safe` of ``obj`` as JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n")
    return Path(path)


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray, dtype: type | None = None) -> Path:
    """Write ``array`` with ``affine`` as NIfTI, atomically (a failure leaves no partial file)."""
    path = Path(path)
    arr = np.asarray(array if dtype is None else np.asarray(array).astype(dtype, copy=False))
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=float))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
