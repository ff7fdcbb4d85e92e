"""Writing a volume as a DICOM series (one file per slice): the synthetic 3D-IRCADb-style sample data and test
fixtures. Reading goes through :func:`liverseg.dicom.series.read_dicom_series`.

Example::

    write_dicom_series(Path("out/CT"), image, affine, patient_id="P1")
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from liverseg.imageio import lps_to_ras

__all__ = ["write_dicom_series", "CT_IMAGE_STORAGE", "SECONDARY_CAPTURE_STORAGE"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


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
    with :func:`liverseg.dicom.read_dicom_series` gives the same voxels at the same world positions (the slice order is
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
