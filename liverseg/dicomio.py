"""Reading and writing DICOM image series (one file per slice) with their geometry.

A series is returned in the package's convention (see :mod:`liverseg.imageio`): an array indexed ``[i, j, k]``
where ``i`` is the DICOM column, ``j`` the DICOM row and ``k`` the slice order along the slice normal
(``row direction x column direction``), with a 4x4 voxel-to-RAS affine. DICOM geometry is LPS; the affine is built
in LPS from ``ImageOrientationPatient``, ``ImagePositionPatient`` and ``PixelSpacing`` and converted with
:func:`liverseg.imageio.lps_to_ras`. The slice step is taken from the slice positions, not from ``SliceThickness``.

Example::

    image, affine, meta = read_dicom_series(Path("3Dircadb1.1/PATIENT_DICOM"))
    write_dicom_series(Path("out/CT"), image, affine, patient_id="P1")
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from liverseg.errors import InputError
from liverseg.imageio import lps_to_ras

__all__ = ["read_dicom_series", "write_dicom_series", "is_obviously_not_dicom", "NON_IMAGE_MODALITIES"]

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "SR", "PR", "KO", "RTPLAN", "RTDOSE", "REG", "RWV"})
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

# Geometry tolerances: direction cosines (unitless) and distances relative to the pixel / slice spacing.
_COSINE_TOL = 1e-4
_SPACING_RTOL = 1e-4
_MISSING_SLICE_FACTOR = 1.5
_UNEVEN_STEP_RTOL = 0.1


def is_obviously_not_dicom(path: Path) -> bool:
    """True for files that are certainly not DICOM (``DICOMDIR``, hidden files, text, images, archives ...)."""
    name = path.name
    if name.startswith(".") or name.upper() in _NOT_DICOM_NAMES or name.upper().startswith(("README", "LICENSE")):
        return True
    suffix = path.suffix.lower()
    return suffix in _NOT_DICOM_SUFFIXES


def _has_dicm_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_file(path: Path) -> Dataset:
    """Read one DICOM file (pixels included); raise :class:`InputError` naming it when it cannot be parsed."""
    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError:
        # Legacy files without the 128-byte preamble: accept them only if they parse into something DICOM-like.
        try:
            ds = pydicom.dcmread(str(path), force=True)
        except Exception as e:
            raise InputError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
        if "SOPClassUID" not in ds and "PixelData" not in ds:
            raise InputError(path, "not a DICOM file (no DICOM header and no pixel data could be parsed)")
    except Exception as e:  # pydicom raises many types for truncated / corrupt files
        raise InputError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
    return ds


def _collect_files(source: Path | Sequence[Path]) -> tuple[Path, list[Path]]:
    """Return (a path naming the input for error messages, candidate DICOM files sorted by name)."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.exists():
            raise InputError(folder, "folder not found")
        if folder.is_file():
            files = [folder]
        else:
            files = sorted(p for p in folder.iterdir() if p.is_file())
        where = folder
    else:
        files = [Path(p) for p in source]
        if not files:
            raise ValueError("read_dicom_series: empty list of files")
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise InputError(missing[0], f"file not found ({len(missing)} of {len(files)} listed files missing)")
        where = files[0].parent
    candidates = []
    for p in files:
        if is_obviously_not_dicom(p) and not _has_dicm_preamble(p):
            logger.debug("skipping %s: not a DICOM file", p)
            continue
        candidates.append(p)
    return where, candidates


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


def _pixels(ds: Dataset, path: Path) -> np.ndarray:
    """Stored pixel values of one single-frame slice as a ``[row, column]`` array."""
    if "PixelData" not in ds:
        raise InputError(path, "no pixel data")
    if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1:
        raise InputError(path, f"multi-frame image ({ds.NumberOfFrames} frames): only one slice per file is supported")
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise InputError(path, f"colour image (SamplesPerPixel={ds.SamplesPerPixel}): expected a greyscale CT slice")
    try:
        arr = ds.pixel_array
    except Exception as e:  # truncated pixel data, unsupported compression, ...
        raise InputError(path, f"cannot decode the pixel data ({type(e).__name__}: {e})") from e
    if arr.shape != (int(ds.Rows), int(ds.Columns)):
        raise InputError(path, f"pixel data shape {arr.shape} does not match Rows x Columns {ds.Rows} x {ds.Columns}")
    return arr


def _describe_series(uid: str, items: list[tuple[Path, Dataset]]) -> str:
    ds = items[0][1]
    desc = str(getattr(ds, "SeriesDescription", "") or "")
    modality = str(getattr(ds, "Modality", "") or "?")
    return f"{uid} ({modality}, {len(items)} file(s){', ' + repr(desc) if desc else ''})"


def read_dicom_series(
    source: Path | list[Path], *, series_uid: str | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read one DICOM image series (one slice per file).

    Args:
        source: a folder holding the series (other files that are obviously not DICOM, such as ``DICOMDIR``,
            hidden files or text files, are skipped; SEG / RTSTRUCT / SR objects are ignored), or a list of files.
        series_uid: the ``SeriesInstanceUID`` to read when the folder holds several series.

    Returns:
        ``(array, affine, meta)``: the rescaled values (``RescaleSlope`` / ``RescaleIntercept`` applied; int16
        when they are integers that fit, float32 otherwise) indexed ``[column, row, slice]`` with slices sorted
        along the slice normal; the voxel-to-RAS affine; and ``meta`` with ``series_uid``, ``study_uid``,
        ``frame_of_reference_uid``, ``patient_id``, ``modality``, ``series_description``, ``files`` (in slice
        order) and ``affine_lps`` (the voxel-to-LPS affine, as in the DICOM headers).

    Raises:
        InputError: naming the folder or file: no DICOM files, several series and no ``series_uid``, a file that
            looks like DICOM but cannot be parsed or has no decodable pixel data, inconsistent orientation /
            spacing / size, duplicate or missing slices, a single slice without ``SliceThickness``.
    """
    where, candidates = _collect_files(source)
    if not candidates:
        raise InputError(where, "no DICOM files found")

    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    ignored: list[str] = []
    for path in candidates:
        ds = _read_file(path)
        modality = str(getattr(ds, "Modality", "") or "").upper()
        if modality in NON_IMAGE_MODALITIES:
            ignored.append(f"{path.name} ({modality})")
            continue
        if "PixelData" not in ds:
            raise InputError(path, "DICOM file without pixel data (not an image slice)")
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        series[uid].append((path, ds))
    if ignored:
        logger.info("%s: ignoring non-image DICOM objects: %s", where, ", ".join(ignored))
    if not series:
        raise InputError(where, "no DICOM image files found" + (f" (only {', '.join(ignored)})" if ignored else ""))

    if series_uid is not None:
        if series_uid not in series:
            found = "; ".join(_describe_series(u, it) for u, it in sorted(series.items()))
            raise InputError(where, f"series {series_uid} not found; series present: {found}")
        items = series[series_uid]
    elif len(series) > 1:
        found = "; ".join(_describe_series(u, it) for u, it in sorted(series.items()))
        raise InputError(where, f"{len(series)} series found, choose one with series_uid: {found}")
    else:
        items = next(iter(series.values()))

    return _assemble(where, items)


def _assemble(where: Path, items: list[tuple[Path, Dataset]]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    first_path, first = items[0]
    iop0 = _floats(first, "ImageOrientationPatient", 6, first_path)
    spacing0 = _floats(first, "PixelSpacing", 2, first_path)
    if np.any(spacing0 <= 0):
        raise InputError(first_path, f"invalid PixelSpacing {list(spacing0)}")
    row_dir, col_dir = iop0[:3], iop0[3:]
    unit = abs(np.linalg.norm(row_dir) - 1) <= 1e-3 and abs(np.linalg.norm(col_dir) - 1) <= 1e-3
    if not unit or abs(row_dir @ col_dir) > 1e-3:
        raise InputError(first_path, f"ImageOrientationPatient {list(iop0)} is not two orthonormal directions")
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    shape0 = (int(first.Rows), int(first.Columns))

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
    positions_arr = np.array(positions)
    dist = positions_arr @ normal
    order = np.argsort(dist, kind="stable")
    items = [items[o] for o in order]
    positions_arr = positions_arr[order]
    dist = dist[order]

    in_plane_tol = 0.01 * float(spacing0.min())
    n = len(items)
    if n == 1:
        thickness = getattr(first, "SpacingBetweenSlices", None) or getattr(first, "SliceThickness", None)
        try:
            step_len = float(thickness) if thickness not in (None, "") else 0.0
        except (TypeError, ValueError):
            step_len = 0.0
        if step_len <= 0:
            raise InputError(
                first_path, "single-slice series without a positive SliceThickness: the slice spacing is unknown"
            )
        step = normal * step_len
    else:
        steps = np.diff(dist)
        dup = np.flatnonzero(steps < in_plane_tol)
        if dup.size:
            a, b = items[dup[0]][0], items[dup[0] + 1][0]
            raise InputError(
                where, f"duplicate slice position {list(np.round(positions_arr[dup[0]], 4))} in {a.name} and {b.name} "
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
        step = (positions_arr[-1] - positions_arr[0]) / (n - 1)
        # every slice origin must lie on the line origin + k * step (no in-plane jumps within the series)
        expected = positions_arr[0] + np.arange(n)[:, None] * step
        off = np.linalg.norm(positions_arr - expected, axis=1)
        if off.max() > max(in_plane_tol, 0.05 * median):
            g = int(np.argmax(off))
            raise InputError(
                items[g][0], f"slice position {list(positions_arr[g])} is {off[g]:.3g} mm off the line through the "
                "other slices (inconsistent ImagePositionPatient)"
            )
        if abs(abs(step @ normal) - np.linalg.norm(step)) > 1e-3 * np.linalg.norm(step):
            logger.warning("%s: slices are sheared (gantry tilt?); the affine keeps the true slice positions", where)

    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * spacing0[1]  # i = column index: moves along the row direction
    affine_lps[:3, 1] = col_dir * spacing0[0]  # j = row index: moves along the column direction
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = positions_arr[0]

    slopes, intercepts, slices = [], [], []
    for path, ds in items:
        slices.append(_pixels(ds, path).T)
        slopes.append(float(getattr(ds, "RescaleSlope", 1) or 1))
        intercepts.append(float(getattr(ds, "RescaleIntercept", 0) or 0))
    stored = np.stack(slices, axis=-1)
    slope_arr, icpt_arr = np.array(slopes), np.array(intercepts)
    integral = np.all(slope_arr == np.round(slope_arr)) and np.all(icpt_arr == np.round(icpt_arr))
    if np.all(slope_arr == 1) and np.all(icpt_arr == 0) and stored.dtype in (np.uint8, np.int8, np.int16):
        array: np.ndarray = stored.astype(np.int16) if stored.dtype != np.int16 else stored
    else:
        values = stored.astype(np.float64) * slope_arr + icpt_arr
        if integral and values.size and values.min() >= -32768 and values.max() <= 32767:
            array = values.astype(np.int16)
        else:
            array = values.astype(np.float32)

    meta = {
        "series_uid": str(getattr(first, "SeriesInstanceUID", "") or ""),
        "study_uid": str(getattr(first, "StudyInstanceUID", "") or ""),
        "frame_of_reference_uid": str(getattr(first, "FrameOfReferenceUID", "") or ""),
        "patient_id": str(getattr(first, "PatientID", "") or ""),
        "modality": str(getattr(first, "Modality", "") or ""),
        "series_description": str(getattr(first, "SeriesDescription", "") or ""),
        "files": [p for p, _ in items],
        "affine_lps": affine_lps,
    }
    return array, lps_to_ras(affine_lps), meta


def _ds(value: float) -> str:
    """A decimal string (DS) of at most 16 characters."""
    v = float(value)
    if v == 0:
        return "0"
    return format_number_as_ds(v)


def write_dicom_series(
    out_dir: Path,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    patient_id: str,
    series_description: str = "",
    modality: str = "CT",
    file_pattern: str = "image_{k}",
    rescale: bool = True,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write a volume as a DICOM series, one file per slice ``k`` (named ``file_pattern.format(k=k)``).

    The geometry (``ImagePositionPatient``, ``ImageOrientationPatient``, ``PixelSpacing``) is derived from the
    voxel-to-RAS ``affine`` for any orientation; the in-plane axes must be orthogonal. Reading the series back
    with :func:`read_dicom_series` gives the same voxels at the same world positions (the slice order is
    reversed when the affine's slice axis points against the slice normal, e.g. for LAS arrays).

    Args:
        out_dir: the series folder to create. It is written atomically (a temporary sibling folder renamed at
            the end); an existing non-empty folder is replaced only with ``overwrite=True``.
        array: 3D array ``[i, j, k]`` (i = column, j = row).
        affine: 4x4 voxel-to-RAS affine.
        patient_id: ``PatientID``; the UIDs are derived from it (and the description and modality) unless given.
        series_description: ``SeriesDescription``.
        modality: ``Modality`` (CT Image Storage for ``"CT"``, Secondary Capture otherwise).
        file_pattern: file name pattern with ``{k}``.
        rescale: True (CT): int16 stored values with ``RescaleIntercept`` (values rounded to integers);
            False (masks): integer values stored as uint8 (or uint16 when above 255) without rescale tags.
        study_uid, series_uid, frame_of_reference_uid: explicit UIDs.
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        The written files, in slice order.
    """
    out_dir = Path(out_dir)
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_dicom_series: expected a 3D array, got shape {array.shape}")
    if "{k}" not in file_pattern:
        raise ValueError(f"file_pattern {file_pattern!r} must contain '{{k}}'")
    aff_lps = lps_to_ras(np.asarray(affine, dtype=float))  # the same matrix converts RAS -> LPS
    if aff_lps.shape != (4, 4) or not np.all(np.isfinite(aff_lps)):
        raise ValueError("write_dicom_series: affine must be a finite 4x4 matrix")
    col_step, row_step, slice_step = aff_lps[:3, 0], aff_lps[:3, 1], aff_lps[:3, 2]
    di, dj = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    if di == 0 or dj == 0 or np.linalg.norm(slice_step) == 0:
        raise ValueError("write_dicom_series: affine has a zero-length axis")
    row_dir, col_dir = col_step / di, row_step / dj
    if abs(row_dir @ col_dir) > 1e-6:
        raise ValueError("write_dicom_series: the affine's first two axes are not orthogonal (sheared in-plane)")
    slice_len = float(np.linalg.norm(slice_step))

    if rescale:
        values = np.rint(np.asarray(array, dtype=np.float64))
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        intercept = -1024.0 if lo + 1024 >= -32768 and hi + 1024 <= 32767 else 0.0
        if lo - intercept < -32768 or hi - intercept > 32767:
            raise ValueError(f"write_dicom_series: values {lo}..{hi} do not fit int16 storage")
        stored = (values - intercept).astype(np.int16)
    else:
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            raise ValueError("write_dicom_series(rescale=False): values must be integers (a mask)")
        lo = float(array.min()) if array.size else 0.0
        hi = float(array.max()) if array.size else 0.0
        if lo < 0 or hi > 65535:
            raise ValueError(f"write_dicom_series(rescale=False): values {lo}..{hi} outside 0..65535")
        stored = array.astype(np.uint8 if hi <= 255 else np.uint16)
        intercept = 0.0

    study_uid = study_uid or generate_uid(entropy_srcs=[patient_id, "study"])
    series_uid = series_uid or generate_uid(entropy_srcs=[patient_id, series_description, modality, "series"])
    frame_of_reference_uid = frame_of_reference_uid or generate_uid(entropy_srcs=[study_uid, "frame-of-reference"])
    sop_class = CT_IMAGE_STORAGE if modality.upper() == "CT" else SECONDARY_CAPTURE_STORAGE
    bits = stored.dtype.itemsize * 8
    iop = [_ds(v) for v in (*row_dir, *col_dir)]
    normal = np.cross(row_dir, col_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir}: exists and is not empty (pass overwrite=True to replace it)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=out_dir.parent))
    names = []
    try:
        for k in range(stored.shape[2]):
            position = aff_lps[:3, :3] @ np.array([0.0, 0.0, k]) + aff_lps[:3, 3]
            sop_uid = generate_uid(entropy_srcs=[series_uid, str(k)])
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = Dataset()
            ds.file_meta = meta
            ds.preamble = b"\0" * 128
            ds.is_little_endian = True
            ds.is_implicit_VR = False
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = sop_uid
            ds.StudyDate = "20000101"
            ds.StudyTime = "000000"
            ds.Modality = modality
            ds.Manufacturer = "liverseg"
            ds.PatientName = patient_id
            ds.PatientID = patient_id
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyID = "1"
            ds.SeriesNumber = 1
            ds.InstanceNumber = k + 1
            ds.SeriesDescription = series_description
            ds.FrameOfReferenceUID = frame_of_reference_uid
            ds.PositionReferenceIndicator = ""
            ds.ImagePositionPatient = [_ds(v) for v in position]
            ds.ImageOrientationPatient = iop
            ds.SliceLocation = _ds(float(position @ normal))
            ds.SliceThickness = _ds(slice_len)
            ds.SpacingBetweenSlices = _ds(slice_len)
            ds.PixelSpacing = [_ds(dj), _ds(di)]  # row spacing (between rows, along j), column spacing (along i)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = int(stored.shape[1])
            ds.Columns = int(stored.shape[0])
            ds.BitsAllocated = bits
            ds.BitsStored = bits
            ds.HighBit = bits - 1
            ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
            if rescale:
                ds.RescaleIntercept = _ds(intercept)
                ds.RescaleSlope = "1"
                ds.RescaleType = "HU" if modality.upper() == "CT" else "US"
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            name = file_pattern.format(k=k)
            ds.save_as(str(tmp / name), write_like_original=False)
            names.append(name)
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, trash / out_dir.name)
            os.replace(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return [out_dir / n for n in names]
