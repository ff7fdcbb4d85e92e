"""3D-IRCADb (``3Dircadb1.N`` folders of DICOM slices) to nnU-Net's raw layout.

Layout of one patient (as distributed by IRCAD; some archives differ as noted)::

    3Dircadb1.N/
        PATIENT_DICOM/image_0 .. image_{n-1}      CT, one DICOM per slice, no extension
                                                  (sometimes nested PATIENT_DICOM/PATIENT_DICOM, or PATIENT_DICOM.zip)
        MASKS_DICOM/<structure>/image_K           binary masks on the CT grid, foreground > 0 (or MASKS_DICOM.zip)
        LABELLED_DICOM/                           ignored (not the expert masks)

Structures: ``liver``, ``livertumor01..NN`` (``tumor`` in 3Dircadb1.7), ``liverkyst*`` / ``livercyst*``,
``portalvein``, ``bone`` ... Label convention (:data:`liverseg.LABELS`): 1 where ``liver``, 2 where the union of
the liver tumors (overriding liver; tumor voxels outside the liver mask are kept and reported); cysts stay liver.
Masks are matched to the CT by slice position and must lie on the CT grid.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from liverseg import LABELS
from liverseg.dataset import write_case, write_dataset_json
from liverseg.dicom import read_dicom_series, write_dicom_series
from liverseg.errors import InputError

__all__ = ["write_ircadb_patient", "read_ircadb_patient", "convert_ircadb", "find_patients", "register_cli"]

logger = logging.getLogger(__name__)

PATIENT_DIR = "PATIENT_DICOM"
MASKS_DIR = "MASKS_DICOM"
LIVER_NAMES = ("liver",)
TUMOR_PATTERN = re.compile(r"^(livertumou?rs?\d*|tumou?rs?\d*)$", re.IGNORECASE)


def is_tumor_structure(name: str) -> bool:
    """True for the liver-tumor mask folders: ``livertumor01``, ``livertumors``, ``tumor`` (3Dircadb1.7) ..."""
    return bool(TUMOR_PATTERN.match(name.replace("_", "").replace(" ", "")))


def write_ircadb_patient(
    out_dir: Path,
    image: np.ndarray,
    affine: np.ndarray,
    masks: dict[str, np.ndarray],
    patient_id: str,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a volume and its masks in the 3D-IRCADb layout (for phantoms and tests).

    Writes ``out_dir/PATIENT_DICOM/image_0..image_{n-1}`` (CT, no extension) and
    ``out_dir/MASKS_DICOM/<name>/image_K`` (uint8 masks, 0/255) on the same grid. The patient folder is
    assembled in a temporary sibling and renamed at the end, so a failure leaves nothing behind.

    Args:
        out_dir: the patient folder (e.g. ``.../3Dircadb1.1``); must not exist or be empty unless ``overwrite``.
        image: CT in HU, ``[i, j, k]``.
        affine: voxel-to-RAS affine.
        masks: structure name (e.g. ``"liver"``, ``"livertumor01"``) -> boolean / 0-1 array of ``image``'s shape.
        patient_id: DICOM ``PatientID`` (UIDs are derived from it).
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    image = np.asarray(image)
    for name, mask in masks.items():
        if np.shape(mask) != image.shape:
            raise ValueError(f"mask {name!r}: shape {np.shape(mask)} differs from image shape {image.shape}")
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"invalid mask name {name!r}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir}: exists and is not empty (pass overwrite=True to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=out_dir.parent))
    try:
        write_dicom_series(
            tmp / PATIENT_DIR, image, affine, patient_id=patient_id, series_description="CT", modality="CT"
        )
        for name, mask in masks.items():
            write_dicom_series(
                tmp / MASKS_DIR / name,
                np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8),
                affine,
                patient_id=patient_id,
                series_description=name,
                modality="CT",
                rescale=False,
            )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _safe_extract(zip_path: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for member in zf.infolist():
                target = (dest / member.filename).resolve()
                if not target.is_relative_to(dest.resolve()):
                    raise InputError(zip_path, f"archive member {member.filename!r} points outside the archive")
            zf.extractall(dest)
    except zipfile.BadZipFile as e:
        raise InputError(zip_path, f"not a readable zip archive ({e})") from e


def _descend(folder: Path, name: str) -> Path:
    """Follow nesting such as ``PATIENT_DICOM/PATIENT_DICOM`` (a sole sub-folder of the same name, no files)."""
    while True:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
        dirs = [p for p in entries if p.is_dir()]
        files = [p for p in entries if p.is_file()]
        if not files and len(dirs) == 1 and dirs[0].name.upper() == name.upper():
            folder = dirs[0]
        else:
            return folder


@contextlib.contextmanager
def _open_part(patient_dir: Path, name: str) -> Iterator[Path | None]:
    """Yield the folder ``name`` of a patient (unzipping ``name.zip`` to a temporary folder if needed)."""
    folder = patient_dir / name
    archive = patient_dir / f"{name}.zip"
    if folder.is_dir() and any(p for p in folder.iterdir() if not p.name.startswith(".")):
        yield _descend(folder, name)
    elif archive.is_file():
        with tempfile.TemporaryDirectory(prefix=f"liverseg-{name.lower()}-") as tmp:
            logger.debug("extracting %s", archive)
            _safe_extract(archive, Path(tmp))
            yield _descend(Path(tmp), name)
    else:
        yield None


def _mask_on_grid(
    mask_dir: Path, ct_shape: tuple[int, ...], ct_affine: np.ndarray, ct_uid: str | None
) -> np.ndarray:
    """Read a mask series and check it lies on the CT grid (slices matched by position); return ``mask > 0``."""
    mask, affine, meta = read_dicom_series(mask_dir)
    problems = []
    if mask.shape[:2] != ct_shape[:2]:
        problems.append(f"in-plane size {mask.shape[0]}x{mask.shape[1]} vs CT {ct_shape[0]}x{ct_shape[1]}")
    if mask.shape[2] != ct_shape[2]:
        problems.append(f"{mask.shape[2]} slices vs {ct_shape[2]} CT slices")
    spacing_m = np.linalg.norm(affine[:3, :3], axis=0)
    spacing_c = np.linalg.norm(ct_affine[:3, :3], axis=0)
    tol = 0.01 * float(spacing_c.min())
    dirs_m = affine[:3, :3] / spacing_m
    dirs_c = ct_affine[:3, :3] / spacing_c
    if np.max(np.abs(dirs_m[:, :2] - dirs_c[:, :2])) > 1e-3:
        problems.append("different orientation")
    if np.max(np.abs(spacing_m - spacing_c)) > tol:
        problems.append(f"spacing {np.round(spacing_m, 4).tolist()} mm vs CT {np.round(spacing_c, 4).tolist()} mm")
    offset = float(np.linalg.norm(affine[:3, 3] - ct_affine[:3, 3]))
    if offset > tol:
        problems.append(
            f"first slice at {np.round(affine[:3, 3], 3).tolist()} vs CT {np.round(ct_affine[:3, 3], 3).tolist()} "
            f"(RAS mm, {offset:.3g} mm apart)"
        )
    if problems:
        raise InputError(mask_dir, "mask is not on the CT grid: " + "; ".join(problems))
    if ct_uid and meta["series_uid"] == ct_uid:
        logger.debug("%s: mask shares the CT's SeriesInstanceUID", mask_dir)
    return mask > 0


def read_ircadb_patient(patient_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one 3D-IRCADb patient.

    Returns:
        ``(image, label, affine)``: CT in HU ``[i, j, k]``, label uint8 with values
        {0 background, 1 liver, 2 tumor}, and the voxel-to-RAS affine.

    Raises:
        InputError: naming the patient folder, a mask folder or a file: no CT, unreadable DICOM, no liver mask
            (the structures found are listed), a mask off the CT grid.
    """
    patient_dir = Path(patient_dir)
    if not patient_dir.is_dir():
        raise InputError(patient_dir, "patient folder not found")
    with _open_part(patient_dir, PATIENT_DIR) as ct_dir:
        if ct_dir is None:
            raise InputError(patient_dir, f"no {PATIENT_DIR} folder or {PATIENT_DIR}.zip (not a 3D-IRCADb patient)")
        image, affine, meta = read_dicom_series(ct_dir)
    with _open_part(patient_dir, MASKS_DIR) as masks_dir:
        if masks_dir is None:
            raise InputError(patient_dir, f"no {MASKS_DIR} folder or {MASKS_DIR}.zip: the liver mask is missing")
        structures = sorted(
            (p for p in masks_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))),
            key=lambda p: p.name.lower(),
        )
        names = [p.name for p in structures]
        liver_dirs = [p for p in structures if p.name.lower() in LIVER_NAMES]
        tumor_dirs = [p for p in structures if is_tumor_structure(p.name)]
        if not liver_dirs:
            raise InputError(
                patient_dir, f"no liver mask in {MASKS_DIR}; structures found: {', '.join(names) or 'none'}"
            )
        if len(liver_dirs) > 1:
            raise InputError(masks_dir, f"several liver masks: {', '.join(p.name for p in liver_dirs)}")
        liver = _mask_on_grid(liver_dirs[0], image.shape, affine, meta["series_uid"])
        tumor = np.zeros_like(liver)
        for d in tumor_dirs:
            tumor |= _mask_on_grid(d, image.shape, affine, meta["series_uid"])
    ignored = [n for n in names if n.lower() not in LIVER_NAMES and not is_tumor_structure(n)]
    logger.debug("%s: liver=%s tumors=%s ignored=%s", patient_dir.name, liver_dirs[0].name,
                 [d.name for d in tumor_dirs], ignored)
    label = np.zeros(image.shape, dtype=np.uint8)
    label[liver] = LABELS["liver"]
    label[tumor] = LABELS["tumor"]
    outside = int(np.count_nonzero(tumor & ~liver))
    if outside:
        logger.warning(
            "%s: %d tumor voxel(s) lie outside the liver mask (labelled tumor anyway)", patient_dir, outside
        )
    if not liver.any():
        logger.warning("%s: the liver mask is empty", liver_dirs[0])
    return image, label, affine


def _is_patient_dir(path: Path) -> bool:
    return path.is_dir() and ((path / PATIENT_DIR).is_dir() or (path / f"{PATIENT_DIR}.zip").is_file())


def _number_of(name: str) -> int | None:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else None


def find_patients(source: Path) -> list[tuple[str, Path]]:
    """``(case_id, patient folder)`` pairs: ``source`` itself or its ``3Dircadb1.N`` sub-folders, sorted by N."""
    source = Path(source)
    if not source.is_dir():
        raise InputError(source, "folder not found")
    if _is_patient_dir(source):
        dirs = [source]
    else:
        dirs = [p for p in source.iterdir() if _is_patient_dir(p)]
        if not dirs:
            raise InputError(
                source, f"no 3D-IRCADb patient folders found (expected {PATIENT_DIR} inside it or in its sub-folders)"
            )
        dirs.sort(key=lambda p: (_number_of(p.name) is None, _number_of(p.name) or 0, p.name))
    out: list[tuple[str, Path]] = []
    seen: dict[str, Path] = {}
    for index, d in enumerate(dirs, start=1):
        n = _number_of(d.name)
        case_id = f"ircadb_{(n if n is not None else index):03d}"
        if case_id in seen:
            raise InputError(source, f"folders {seen[case_id].name} and {d.name} both map to case id {case_id}")
        seen[case_id] = d
        out.append((case_id, d))
    return out


def convert_ircadb(
    source: Path,
    out_root: Path,
    *,
    dataset_name: str = "3Dircadb",
    split: str = "Tr",
    keep_going: bool = False,
) -> list[str]:
    """Convert 3D-IRCADb patients to nnU-Net's raw layout under ``out_root``.

    Args:
        source: one patient folder (holding ``PATIENT_DICOM``) or a folder of ``3Dircadb1.N`` patient folders.
        out_root: the dataset folder (``imagesTr``/``labelsTr``/``dataset.json`` are written there).
        dataset_name: ``name`` in ``dataset.json``.
        split: ``"Tr"`` or ``"Ts"``.
        keep_going: convert the other patients when one fails, then raise listing every failure.

    Returns:
        The case ids written (``ircadb_{N:03d}``).

    Raises:
        InputError: on the first bad patient (cases finished before it stay intact, the failed one leaves no
            files); with ``keep_going``, after all patients, listing every failure.
    """
    source, out_root = Path(source), Path(out_root)
    patients = find_patients(source)
    done: list[str] = []
    failures: list[str] = []
    try:
        for n, (case_id, folder) in enumerate(patients, start=1):
            logger.info("[%d/%d] %s -> %s", n, len(patients), folder, case_id)
            try:
                image, label, affine = read_ircadb_patient(folder)
                write_case(out_root, case_id, image, affine, label, split=split)
            except InputError as e:
                if not keep_going:
                    raise
                logger.error("[%d/%d] %s failed: %s", n, len(patients), folder, e)
                failures.append(str(e))
                continue
            done.append(case_id)
    finally:
        if done:
            write_dataset_json(
                out_root, dataset_name, description="3D-IRCADb (IRCAD), converted by liverseg", source=str(source)
            )
    if failures:
        lines = "\n".join(f"  - {f}" for f in failures)
        raise InputError(source, f"{len(failures)} of {len(patients)} patient(s) failed:\n{lines}")
    logger.info("converted %d patient(s) into %s", len(done), out_root)
    return done


def _run(args: argparse.Namespace) -> int:
    convert_ircadb(Path(args.source), Path(args.out), dataset_name=args.dataset_name, keep_going=args.keep_going)
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``liverseg convert ircadb SOURCE OUT [--dataset-name N] [--keep-going]``."""
    p = subparsers.add_parser(
        "ircadb",
        help="3D-IRCADb patient folder(s) -> nnU-Net raw layout",
        description="Convert 3D-IRCADb (3Dircadb1.N/PATIENT_DICOM + MASKS_DICOM) to nnU-Net's raw layout: "
        "label 1 = liver mask, 2 = union of liver tumors; cysts stay liver.",
    )
    p.add_argument("source", metavar="SOURCE", help="a 3Dircadb1.N folder or a folder of them")
    p.add_argument("out", metavar="OUT", help="dataset folder to write (e.g. Dataset002_3Dircadb)")
    p.add_argument("--dataset-name", default="3Dircadb", help="name in dataset.json (default: %(default)s)")
    p.add_argument("--keep-going", action="store_true", help="convert the other patients when one fails")
    p.set_defaults(func=_run)
