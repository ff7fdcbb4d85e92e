"""Helpers for the DICOMweb / OHIF tests: an Orthanc process with its own configuration, a phantom CT as a DICOM
series, DICOM SEG frames mapped onto a reference grid in world space, and a headless Chromium driven by playwright.

System requirements (the tests skip, naming the missing piece, without them):

- Orthanc and its DICOMweb plugin: ``apt-get install -y orthanc orthanc-dicomweb`` (Debian 12: Orthanc 1.10.1,
  plugin 1.7);
- Chromium and the playwright client: ``apt-get install -y chromium`` and ``pip install playwright`` (never
  ``playwright install``: the tests drive the system Chromium).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
import requests

from liverseg import pacs
from liverseg.pacs import ORTHANC_INSTALL, dicomweb_plugin, missing_orthanc, orthanc_binary  # noqa: F401 (re-exported)

CHROMIUM_INSTALL = "apt-get install -y chromium"
PLAYWRIGHT_INSTALL = "pip install playwright (do not run `playwright install`: the system chromium is used)"
# flags that work for a headless Chromium in a container (see ../shared/ENVIRONMENT.md)
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium_binary() -> str | None:
    env = os.environ.get("LIVERSEG_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing_browser() -> str | None:
    """Why the OHIF tests cannot run (Chromium or playwright missing, and how to install it), or None."""
    if not chromium_binary():
        return f"Chromium is not installed (no 'chromium' on PATH): {CHROMIUM_INSTALL}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"the playwright Python package is not installed: {PLAYWRIGHT_INSTALL}"
    return None


class Orthanc(pacs.Orthanc):
    """``liverseg.pacs.Orthanc`` (own configuration and storage under ``root``, HTTP on ``port`` only, DICOM protocol
    off, remote access refused, DICOMweb at ``/dicom-web``) with the tests' queries of its REST API.

    Orthanc 1.10 has no bind-address option: it listens on all interfaces but answers loopback clients only.
    """

    def __init__(self, root: Path, port: int):
        super().__init__(root, port, name="liverseg-test")

    def series(self) -> list[dict]:
        """All series with their main DICOM tags and instance ids (``GET /series?expand``)."""
        r = requests.get(f"{self.url}/series?expand", timeout=10)
        r.raise_for_status()
        return r.json()

    def instance_file(self, instance_id: str) -> pydicom.Dataset:
        r = requests.get(f"{self.url}/instances/{instance_id}/file", timeout=10)
        r.raise_for_status()
        return pydicom.dcmread(io.BytesIO(r.content))


def write_study(
    out_dir: Path,
    image: np.ndarray,
    affine: np.ndarray,
    *,
    patient_name: str,
    patient_id: str,
    study_description: str,
    series_description: str = "CT",
) -> tuple[list[Path], pydicom.Dataset]:
    """Write ``image`` as a CT series (:func:`liverseg.dicom.write_dicom_series`) with a patient name and a study
    description (what OHIF's study list shows); returns the files and the first slice's header."""
    from liverseg.dicom import write_dicom_series

    files = write_dicom_series(out_dir, image, affine, patient_id=patient_id, series_description=series_description)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PatientName = patient_name
        ds.StudyDescription = study_description
        ds.AccessionNumber = "LS0001"
        ds.save_as(f, write_like_original=False)
    return files, pydicom.dcmread(files[0], stop_before_pixels=True)


def seg_to_labelmap(
    seg: pydicom.Dataset, ref_shape: Sequence[int], ref_affine: np.ndarray, labels: dict[str, int]
) -> np.ndarray:
    """Paint the frames of a DICOM SEG onto a reference grid (``ref_affine``: voxel -> RAS mm) in world space.

    Every foreground pixel of every frame is placed at its patient (LPS) position from the frame's
    ``ImagePositionPatient``, the shared ``ImageOrientationPatient`` and ``PixelSpacing``, converted to RAS and to
    reference voxel indices. Segments are named by ``SegmentLabel`` and painted with ``labels[name]`` (the larger
    value wins where segments overlap).

    Raises:
        ValueError: a frame does not lie on the reference grid, falls outside it, or names an unknown segment.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]  # direction of increasing column index, of increasing row index
    between_rows, between_cols = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    frames = np.asarray(seg.pixel_array).reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    inv = np.linalg.inv(np.asarray(ref_affine, dtype=float))
    out = np.zeros(tuple(ref_shape), dtype=np.uint8)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        name = names[int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
        if name not in labels:
            raise ValueError(f"SEG segment {name!r} is not one of {sorted(labels)}")
        ipp = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        r, c = np.nonzero(frame)
        lps = ipp + np.outer(c * between_cols, row_dir) + np.outer(r * between_rows, col_dir)
        ras = lps * np.array([-1.0, -1.0, 1.0])
        ijk = ras @ inv[:3, :3].T + inv[:3, 3]
        idx = np.rint(ijk)
        if idx.size and np.max(np.abs(ijk - idx)) > 1e-2:
            raise ValueError(f"SEG frame at {ipp.tolist()} does not lie on the reference grid")
        idx = idx.astype(int)
        if idx.size and (idx.min() < 0 or np.any(idx.max(axis=0) >= np.asarray(ref_shape))):
            raise ValueError(f"SEG frame at {ipp.tolist()} falls outside the reference grid {tuple(ref_shape)}")
        ii = tuple(idx.T)
        out[ii] = np.maximum(out[ii], labels[name])
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def centroid_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Centroid of a mask in RAS mm."""
    return (affine @ np.append(np.argwhere(mask).mean(axis=0), 1.0))[:3]


def paint_on_grid(
    mask: np.ndarray, affine: np.ndarray, ref_shape: Sequence[int], ref_affine: np.ndarray
) -> np.ndarray:
    """Values of ``mask`` placed on a reference grid through world space (the grids must share voxel centres, not
    their extent: a label covering only some slices is padded with 0).

    Raises:
        ValueError: the voxel centres do not coincide, or a non-zero voxel falls outside the reference grid.
    """
    idx = np.argwhere(mask != 0)
    vox = np.asarray(ref_affine, dtype=float)
    t = np.linalg.inv(vox) @ np.asarray(affine, dtype=float)  # mask voxel -> reference voxel
    ijk = idx @ t[:3, :3].T + t[:3, 3]
    rounded = np.rint(ijk)
    if idx.size and np.max(np.abs(ijk - rounded)) > 1e-2:
        raise ValueError("the two grids do not share voxel centres")
    rounded = rounded.astype(int)
    if idx.size and (rounded.min() < 0 or np.any(rounded.max(axis=0) >= np.asarray(ref_shape))):
        raise ValueError(f"non-zero voxels fall outside the reference grid {tuple(ref_shape)}")
    out = np.zeros(tuple(ref_shape), dtype=np.asarray(mask).dtype)
    out[tuple(rounded.T)] = np.asarray(mask)[tuple(idx.T)]
    return out


def read_label(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI or NRRD label as ``(array, voxel -> RAS affine)`` (monailabel's DICOMweb datastore writes NRRD)."""
    path = Path(path)
    if path.name.endswith(".nrrd"):
        import nrrd

        data, hdr = nrrd.read(str(path))
        affine = np.eye(4)
        affine[:3, :3] = np.asarray(hdr["space directions"], dtype=float).T
        affine[:3, 3] = np.asarray(hdr["space origin"], dtype=float)
        space = str(hdr.get("space", "")).lower()
        if space in ("left-posterior-superior", "lps"):
            affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
        elif space not in ("right-anterior-superior", "ras"):
            raise ValueError(f"{path}: NRRD space {space!r} not handled")
        return np.asarray(data), affine
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj), np.asarray(img.affine, dtype=float)
