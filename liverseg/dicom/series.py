"""Reading a DICOM image series (one slice per file, any common transfer syntax) with its geometry.

Decoding, rescaling and stacking are ITK's GDCM series reader (through SimpleITK): uncompressed, JPEG baseline /
lossless, JPEG-LS, JPEG 2000 and RLE series all read the same way. What stays here is what a maintained reader does
not do for us: picking the image series out of a folder that also holds SEG / SR objects or other series, and
checking the headers before the voxels are read, so that a series with duplicate, missing or unevenly spaced slices,
mixed orientations or sizes is refused with a message naming the file instead of being stacked into a wrong volume.
A tilted-gantry series (slices evenly spaced but sheared) is read with its true slice positions in the affine.

The result follows the package's convention (:mod:`liverseg.imageio`): an array indexed ``[i, j, k]`` with ``i``
the DICOM column, ``j`` the row and ``k`` the slice order along the slice normal (``row direction x column
direction``), and a 4x4 voxel-to-RAS affine.

Example::

    image, affine, meta = read_dicom_series(Path("3Dircadb1.1/PATIENT_DICOM"))
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from liverseg.errors import InputError
from liverseg.imageio import lps_to_ras

__all__ = [
    "read_dicom_series",
    "read_series_files",
    "find_series",
    "SeriesFiles",
    "is_obviously_not_dicom",
    "NON_IMAGE_MODALITIES",
]

logger = logging.getLogger(__name__)

NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "SR", "PR", "KO", "RTPLAN", "RTDOSE", "REG", "RWV", "DOC"})
"""Modalities of DICOM objects that are never part of an image series; such files in a folder are ignored."""

_NOT_DICOM_SUFFIXES = frozenset(
    {
        ".txt", ".md", ".rst", ".json", ".xml", ".html", ".htm", ".pdf", ".csv", ".tsv", ".log", ".ini", ".cfg",
        ".yaml", ".yml", ".py", ".sh", ".bat", ".exe", ".db", ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif",
        ".tiff", ".zip", ".gz", ".tgz", ".tar", ".7z", ".rar", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".raw",
        ".vtk", ".stl", ".obj", ".mrc", ".npy", ".npz", ".h5", ".pkl",
    }
)  # fmt: skip
_NOT_DICOM_NAMES = frozenset({"DICOMDIR", "README", "LICENSE", "LICENCE", "COPYING", "VERSION", "THUMBS.DB"})

# Header checks: direction cosines (unitless), pixel spacing (relative), slice steps (relative to the median step)
_COSINE_TOL = 1e-4
_SPACING_RTOL = 1e-4
_MISSING_SLICE_FACTOR = 1.5
_UNEVEN_STEP_RTOL = 0.1


def is_obviously_not_dicom(path: Path) -> bool:
    """True for files that are certainly not DICOM (``DICOMDIR``, hidden files, text, images, archives ...)."""
    name = path.name
    if name.startswith(".") or name.upper() in _NOT_DICOM_NAMES or name.upper().startswith(("README", "LICENSE")):
        return True
    return path.suffix.lower() in _NOT_DICOM_SUFFIXES


def _has_dicm_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_header(path: Path) -> Dataset:
    """The header of one DICOM file (large values such as the pixel data deferred); :class:`InputError` naming the
    file when it cannot be parsed."""
    try:
        return pydicom.dcmread(str(path), defer_size="4 KB")
    except InvalidDicomError:
        # legacy files without the 128-byte preamble: accepted only if they parse into something DICOM-like
        try:
            ds = pydicom.dcmread(str(path), defer_size="4 KB", force=True)
        except Exception as e:
            raise InputError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
        if "SOPClassUID" not in ds and "PixelData" not in ds:
            raise InputError(path, "not a DICOM file (no DICOM header and no pixel data could be parsed)")
        return ds
    except Exception as e:  # pydicom raises many types for truncated / corrupt files
        raise InputError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e


@dataclass
class SeriesFiles:
    """The files of one image series in a folder, with their headers (pixel data not read)."""

    series_uid: str
    items: list[tuple[Path, Dataset]] = field(default_factory=list)

    @property
    def first(self) -> Dataset:
        return self.items[0][1]

    def describe(self) -> str:
        ds = self.first
        desc = str(getattr(ds, "SeriesDescription", "") or "")
        modality = str(getattr(ds, "Modality", "") or "?")
        return f"{self.series_uid} ({modality}, {len(self.items)} file(s){', ' + repr(desc) if desc else ''})"


def _collect_files(source: Path | Sequence[Path], recursive: bool) -> tuple[Path, list[Path]]:
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.exists():
            raise InputError(folder, "folder not found")
        if folder.is_file():
            files = [folder]
        else:
            walk = folder.rglob("*") if recursive else folder.iterdir()
            files = sorted(p for p in walk if p.is_file())
        where = folder
    else:
        files = [Path(p) for p in source]
        if not files:
            raise ValueError("read_dicom_series: empty list of files")
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise InputError(missing[0], f"file not found ({len(missing)} of {len(files)} listed files missing)")
        where = files[0].parent
    candidates = [p for p in files if not is_obviously_not_dicom(p) or _has_dicm_preamble(p)]
    return where, candidates


def find_series(
    source: Path | Sequence[Path], *, recursive: bool = False
) -> tuple[Path, list[SeriesFiles], list[str]]:
    """The image series in a folder (or list of files): ``(where, series sorted by UID, ignored objects)``.

    Non-image objects (SEG, SR, RTSTRUCT, ...) are listed in ``ignored``; a file that looks like DICOM but cannot be
    parsed, or an image-modality file without pixel data, raises :class:`InputError` naming it.
    """
    where, candidates = _collect_files(source, recursive)
    if not candidates:
        raise InputError(where, "no DICOM files found")
    series: dict[str, SeriesFiles] = defaultdict(lambda: SeriesFiles(""))
    ignored: list[str] = []
    for path in candidates:
        ds = _read_header(path)
        modality = str(getattr(ds, "Modality", "") or "").upper()
        if modality in NON_IMAGE_MODALITIES:
            ignored.append(f"{path.name} ({modality})")
            continue
        if "PixelData" not in ds:
            raise InputError(path, "DICOM file without pixel data (not an image slice)")
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        series[uid].series_uid = uid
        series[uid].items.append((path, ds))
    if ignored:
        logger.info("%s: ignoring non-image DICOM objects: %s", where, ", ".join(ignored))
    if not series:
        raise InputError(where, "no DICOM image files found" + (f" (only {', '.join(ignored)})" if ignored else ""))
    return where, [series[u] for u in sorted(series)], ignored


def _floats(ds: Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    value = getattr(ds, keyword, None)
    if value is None:
        raise InputError(path, f"missing {keyword}: cannot place the slice in space")
    try:
        arr = np.array([float(v) for v in (value if isinstance(value, (list, tuple, Sequence)) else [value])])
    except (TypeError, ValueError) as e:
        raise InputError(path, f"invalid {keyword} {value!r}") from e
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InputError(path, f"invalid {keyword} {value!r}: expected {n} numbers")
    return arr


def _check_headers(where: Path, items: list[tuple[Path, Dataset]]) -> tuple[list[tuple[Path, Dataset]], np.ndarray]:
    """Check that the slices make one regular volume; return them sorted along the slice normal and the step
    between slices (LPS mm; sheared for a tilted gantry). Raises :class:`InputError` naming the file(s)."""
    first_path, first = items[0]
    iop0 = _floats(first, "ImageOrientationPatient", 6, first_path)
    spacing0 = _floats(first, "PixelSpacing", 2, first_path)
    if np.any(spacing0 <= 0):
        raise InputError(first_path, f"invalid PixelSpacing {list(spacing0)}")
    row_dir, col_dir = iop0[:3], iop0[3:]
    unit = abs(np.linalg.norm(row_dir) - 1) <= 1e-3 and abs(np.linalg.norm(col_dir) - 1) <= 1e-3
    if not unit or abs(row_dir @ col_dir) > 1e-3:
        raise InputError(first_path, f"ImageOrientationPatient {list(iop0)} is not two orthonormal directions")
    normal = np.cross(row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir))
    shape0 = (int(first.Rows), int(first.Columns))
    if int(getattr(first, "NumberOfFrames", 1) or 1) != 1:
        raise InputError(first_path, f"multi-frame image ({first.NumberOfFrames} frames): one slice per file expected")
    if int(getattr(first, "SamplesPerPixel", 1)) != 1:
        raise InputError(first_path, f"colour image (SamplesPerPixel={first.SamplesPerPixel}): expected greyscale CT")

    positions = []
    for path, ds in items:
        iop = _floats(ds, "ImageOrientationPatient", 6, path)
        if np.max(np.abs(iop - iop0)) > _COSINE_TOL:
            raise InputError(
                path, f"ImageOrientationPatient {list(iop)} differs from {list(iop0)} in {first_path.name} "
                "(mixed orientations in one series)"
            )
        spacing = _floats(ds, "PixelSpacing", 2, path)
        if np.max(np.abs(spacing - spacing0)) > _SPACING_RTOL * spacing0.max():
            raise InputError(path, f"PixelSpacing {list(spacing)} differs from {list(spacing0)} in {first_path.name}")
        if (int(ds.Rows), int(ds.Columns)) != shape0:
            raise InputError(
                path, f"size {ds.Rows}x{ds.Columns} (rows x columns) differs from {shape0[0]}x{shape0[1]} "
                f"in {first_path.name}"
            )
        positions.append(_floats(ds, "ImagePositionPatient", 3, path))
    pos = np.array(positions)
    order = np.argsort(pos @ normal, kind="stable")
    items, pos = [items[o] for o in order], pos[order]
    n = len(items)
    if n == 1:
        thickness = getattr(first, "SpacingBetweenSlices", None) or getattr(first, "SliceThickness", None)
        try:
            step_len = float(thickness) if thickness not in (None, "") else 0.0
        except (TypeError, ValueError):
            step_len = 0.0
        if step_len <= 0:
            raise InputError(first_path, "single-slice series without a positive SliceThickness: slice spacing unknown")
        return items, normal * step_len

    in_plane_tol = 0.01 * float(spacing0.min())
    steps = np.diff(pos @ normal)
    dup = np.flatnonzero(steps < in_plane_tol)
    if dup.size:
        a, b = items[dup[0]][0], items[dup[0] + 1][0]
        raise InputError(
            where, f"duplicate slice position {list(np.round(pos[dup[0]], 4))} in {a.name} and {b.name} "
            f"({dup.size} duplicate(s)); several acquisitions mixed in one series?"
        )
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > _MISSING_SLICE_FACTOR * median)
    if gaps.size:
        g = gaps[0]
        raise InputError(
            where, f"missing slice(s): gap of {steps[g]:.4g} mm between {items[g][0].name} and "
            f"{items[g + 1][0].name} (median slice step {median:.4g} mm; {gaps.size} gap(s))"
        )
    uneven = np.flatnonzero(np.abs(steps - median) > _UNEVEN_STEP_RTOL * median)
    if uneven.size:
        g = uneven[0]
        raise InputError(
            where, f"uneven slice spacing: step {steps[g]:.4g} mm between {items[g][0].name} and "
            f"{items[g + 1][0].name}, median {median:.4g} mm"
        )
    step = (pos[-1] - pos[0]) / (n - 1)
    off = np.linalg.norm(pos - (pos[0] + np.arange(n)[:, None] * step), axis=1)
    if off.max() > max(in_plane_tol, 0.05 * median):
        g = int(np.argmax(off))
        raise InputError(
            items[g][0], f"slice position {list(pos[g])} is {off[g]:.3g} mm off the line through the other slices "
            "(inconsistent ImagePositionPatient)"
        )
    return items, step


def _read_voxels(where: Path, files: list[Path]) -> Any:
    """The series as one SimpleITK image (ITK's GDCM reader: decodes every common transfer syntax, applies the
    rescale); a file that cannot be decoded raises :class:`InputError` naming it."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(f) for f in files])
    try:
        return reader.Execute()
    except RuntimeError as e:
        culprit: Path = where
        for f in files:  # find the file ITK stopped at
            try:
                sitk.ReadImage(str(f), imageIO="GDCMImageIO")
            except RuntimeError:
                culprit = f
                break
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise InputError(culprit, f"cannot decode the pixel data ({reason})") from e


def _as_array(image: Any) -> np.ndarray:
    """``[i, j, k]`` voxels; int16 when the rescaled values are integers that fit, else float32 (or the stored
    unsigned type for masks without rescale)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    if arr.dtype in (np.uint8, np.uint16, np.int16):
        return arr
    if arr.dtype.kind in "iu" or np.array_equal(arr, np.round(arr)):
        if arr.size == 0 or (arr.min() >= -32768 and arr.max() <= 32767):
            return arr.astype(np.int16)
        return arr.astype(np.int32) if arr.dtype.kind in "iu" else arr.astype(np.float32)
    return arr.astype(np.float32)


def read_dicom_series(
    source: Path | list[Path], *, series_uid: str | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read one DICOM image series (one slice per file, any common transfer syntax).

    Args:
        source: a folder holding the series (files that are obviously not DICOM, such as ``DICOMDIR``, hidden or
            text files, are skipped; SEG / SR / RTSTRUCT objects are ignored), or a list of files.
        series_uid: the ``SeriesInstanceUID`` to read when the folder holds several series.

    Returns:
        ``(array, affine, meta)``: the rescaled values indexed ``[column, row, slice]`` (int16 when they are
        integers that fit, float32 otherwise; unsigned masks keep their type) with slices sorted along the slice
        normal; the voxel-to-RAS affine; and ``meta`` with ``series_uid``, ``study_uid``, ``frame_of_reference_uid``,
        ``patient_id``, ``modality``, ``series_description``, ``transfer_syntax``, ``files`` and ``headers``
        (pydicom datasets, pixel data not loaded) in slice order, and ``affine_lps`` (voxel-to-LPS).

    Raises:
        InputError: naming the folder or file: no DICOM files, several series and no ``series_uid``, a file that
            looks like DICOM but cannot be parsed or decoded, inconsistent orientation / spacing / size, duplicate
            or missing slices, uneven spacing, a single slice without ``SliceThickness``.
    """
    where, found, _ = find_series(source)
    by_uid = {s.series_uid: s for s in found}
    if series_uid is not None:
        if series_uid not in by_uid:
            listing = "; ".join(s.describe() for s in found)
            raise InputError(where, f"series {series_uid} not found; series present: {listing}")
        chosen = by_uid[series_uid]
    elif len(found) > 1:
        listing = "; ".join(s.describe() for s in found)
        raise InputError(where, f"{len(found)} series found, choose one with series_uid: {listing}")
    else:
        chosen = found[0]
    return read_series_files(where, chosen)


def read_series_files(where: Path, chosen: SeriesFiles) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """:func:`read_dicom_series` of one series :func:`find_series` found in ``where`` (headers not read again)."""
    items, step = _check_headers(where, chosen.items)
    files = [p for p, _ in items]
    image = _read_voxels(where, files)
    array = _as_array(image)
    if array.shape != (int(items[0][1].Columns), int(items[0][1].Rows), len(items)):
        raise InputError(where, f"the reader returned a volume of shape {array.shape} for {len(items)} slices")

    affine_lps = np.eye(4)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    affine_lps[:3, :2] = direction[:, :2] * spacing[:2]
    affine_lps[:3, 2] = step  # the true step from the slice positions (sheared when the gantry was tilted)
    affine_lps[:3, 3] = image.GetOrigin()
    first_ipp = _floats(items[0][1], "ImagePositionPatient", 3, items[0][0])
    if np.max(np.abs(affine_lps[:3, 3] - first_ipp)) > 1e-3 * max(1.0, float(spacing[:2].min())):
        raise InputError(items[0][0], f"the reader placed the first slice at {list(image.GetOrigin())}, not at its "
                         f"ImagePositionPatient {list(first_ipp)}")
    normal = np.cross(direction[:, 0], direction[:, 1])
    if len(items) > 1 and abs(abs(step @ normal) - np.linalg.norm(step)) > 1e-3 * np.linalg.norm(step):
        tilt = float(np.degrees(np.arccos(min(1.0, abs(step @ normal) / np.linalg.norm(step)))))
        logger.warning("%s: slices sheared by %.2f degrees (gantry tilt); the affine keeps the true slice positions",
                       where, tilt)

    first = items[0][1]
    meta = {
        "series_uid": chosen.series_uid,
        "study_uid": str(getattr(first, "StudyInstanceUID", "") or ""),
        "frame_of_reference_uid": str(getattr(first, "FrameOfReferenceUID", "") or ""),
        "patient_id": str(getattr(first, "PatientID", "") or ""),
        "modality": str(getattr(first, "Modality", "") or ""),
        "series_description": str(getattr(first, "SeriesDescription", "") or ""),
        "transfer_syntax": str(getattr(getattr(first, "file_meta", None), "TransferSyntaxUID", "") or ""),
        "files": files,
        "headers": [ds for _, ds in items],
        "affine_lps": affine_lps,
    }
    return array, lps_to_ras(affine_lps), meta
