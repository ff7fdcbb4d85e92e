"""Convert LiTS or MSD Task03_Liver NIfTI data to nnU-Net's raw layout.

Two source layouts are recognised automatically:

* **LiTS** (the challenge release): ``volume-N.nii`` / ``segmentation-N.nii`` (``.nii`` or ``.nii.gz``) anywhere
  below the source folder, e.g. split over ``Training Batch 1`` and ``Training Batch 2``; unlabelled test volumes
  ``test-volume-N.nii`` go to ``imagesTs``.
* **MSD Task03_Liver** (the Medical Segmentation Decathlon re-release of LiTS): ``imagesTr/liver_N.nii.gz``,
  ``labelsTr/liver_N.nii.gz``, ``imagesTs/liver_N.nii.gz`` and ``dataset.json``. The source may also be the folder
  holding ``Task03_Liver``. macOS ``._*`` resource-fork files (present in the real MSD tarball) are ignored.

Training cases become ``liver_{N:03d}`` in both layouts (MSD's numbering is LiTS's). LiTS test volumes are
numbered from 0 like the training volumes, so they become ``liver_test_{N:03d}`` to keep case ids unique across
splits; MSD test images keep ``liver_{N:03d}`` (their numbers do not overlap the training ones).

Every training pair is checked before anything is written: equal shapes, equal affines (within
:data:`AFFINE_ATOL` mm; below it the image's affine is used for both), label values in ``{0, 1, 2}``, no label
without image and no training image without label. Example::

    liverseg convert lits "/data/LiTS" Dataset003_Liver --keep-going
    liverseg convert lits /data/Task03_Liver Dataset003_Liver
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liverseg import LABELS, __version__
from liverseg.dataset import write_case, write_dataset_json
from liverseg.errors import DatasetProblems, InputError, LiverSegError
from liverseg.imageio import read_nifti

logger = logging.getLogger(__name__)

AFFINE_ATOL = 1e-3
"""Largest element-wise difference (mm) between image and label affines treated as float noise.

Float32 header storage of a ~500 mm origin is exact to ~3e-5 mm, so 1e-3 mm absorbs rounding while a real
misalignment (a fraction of a voxel, >= 0.1 mm) is reported.
"""

LAYOUT_LITS = "LiTS"
LAYOUT_MSD = "MSD Task03_Liver"
MSD_TASK_FOLDER = "Task03_Liver"

_NIFTI = r"\.nii(?:\.gz)?"
_LITS_FILE = re.compile(rf"^(?P<kind>volume|segmentation|test-volume)-(?P<num>\d+){_NIFTI}$")
_MSD_FILE = re.compile(rf"^liver_(?P<num>\d+){_NIFTI}$")


@dataclass
class SourceCase:
    """One case found in the source: where its files are and where it goes."""

    case_id: str
    split: str
    image: Path | None = None
    label: Path | None = None
    problem: str | None = None


def _visible(path: Path) -> bool:
    """False for macOS resource forks (``._x``) and other hidden files."""
    return not path.name.startswith(".")


def _set_file(case: SourceCase, attr: str, path: Path) -> None:
    """Record ``path`` as the case's image / label; a second file for the same slot is a problem."""
    previous = getattr(case, attr)
    if previous is not None:
        case.problem = f"two files for {case.case_id} ({attr}): {previous} and {path}; keep only one"
    else:
        setattr(case, attr, path)


def _msd_root(source: Path) -> Path | None:
    for candidate in (source, source / MSD_TASK_FOLDER):
        if (candidate / "imagesTr").is_dir() or (candidate / "labelsTr").is_dir():
            return candidate
    return None


def _scan_msd(root: Path) -> list[SourceCase]:
    cases: dict[tuple[str, str], SourceCase] = {}
    for folder, split, attr in (("imagesTr", "Tr", "image"), ("labelsTr", "Tr", "label"), ("imagesTs", "Ts", "image")):
        directory = root / folder
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if not _visible(path) or not path.is_file():
                continue
            m = _MSD_FILE.match(path.name)
            if m is None:
                logger.warning("ignoring %s: not named liver_N.nii.gz", path)
                continue
            case_id = f"liver_{int(m['num']):03d}"
            case = cases.setdefault((split, case_id), SourceCase(case_id, split))
            _set_file(case, attr, path)
    return list(cases.values())


def _scan_lits(source: Path) -> list[SourceCase]:
    cases: dict[tuple[str, str], SourceCase] = {}
    for path in sorted(source.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(source).parts):
            continue
        m = _LITS_FILE.match(path.name)
        if m is None:
            continue
        num = int(m["num"])
        if m["kind"] == "test-volume":
            key, attr = ("Ts", f"liver_test_{num:03d}"), "image"
        else:
            key, attr = ("Tr", f"liver_{num:03d}"), "image" if m["kind"] == "volume" else "label"
        case = cases.setdefault(key, SourceCase(key[1], key[0]))
        _set_file(case, attr, path)
    return list(cases.values())


def find_cases(source: str | Path) -> tuple[str, list[SourceCase]]:
    """Detect the layout of ``source`` and list its cases (training first, then test; by case number).

    Returns ``(layout, cases)`` with ``layout`` one of :data:`LAYOUT_LITS`, :data:`LAYOUT_MSD`.
    Raises :class:`InputError` if ``source`` is not a folder or holds neither layout.
    """
    source = Path(source)
    if not source.is_dir():
        raise InputError(source, "not a folder (expected a LiTS or MSD Task03_Liver dataset folder)")
    msd = _msd_root(source)
    if msd is not None:
        layout, cases = LAYOUT_MSD, _scan_msd(msd)
    else:
        layout, cases = LAYOUT_LITS, _scan_lits(source)
    if not cases:
        raise InputError(
            source,
            "no LiTS or MSD Task03_Liver data found: expected volume-N.nii[.gz] / segmentation-N.nii[.gz] files "
            "(any sub-folder) or imagesTr/liver_N.nii.gz and labelsTr/liver_N.nii.gz",
        )
    cases.sort(key=lambda c: (c.split != "Tr", c.case_id.startswith("liver_test_"), int(c.case_id.rsplit("_", 1)[1])))
    return layout, cases


def check_label_values(label: np.ndarray, path: Path) -> np.ndarray:
    """Return ``label`` as uint8 if all its values are in :data:`liverseg.LABELS`; else :class:`InputError`."""
    valid = sorted(LABELS.values())
    bad = np.ones(label.shape, dtype=bool)
    for v in valid:
        bad &= label != v
    if bad.any():
        unexpected = np.unique(label[bad])
        shown = ", ".join(f"{v:g}" for v in unexpected[:10].tolist())
        more = f" (and {unexpected.size - 10} more)" if unexpected.size > 10 else ""
        raise InputError(
            path, f"unexpected label values {shown}{more} in {int(bad.sum())} voxels; valid: {valid} {LABELS}"
        )
    return label.astype(np.uint8)


def load_pair(
    image_path: Path, label_path: Path, affine_atol: float = AFFINE_ATOL
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and cross-check one training pair; return ``(image, label uint8, affine)`` (the image's affine)."""
    image, affine = read_nifti(image_path)
    label, label_affine = read_nifti(label_path)
    if label.shape != image.shape:
        raise InputError(
            label_path, f"shape {tuple(label.shape)} differs from image {image_path} shape {tuple(image.shape)}"
        )
    diff = float(np.max(np.abs(label_affine - affine)))
    if diff > affine_atol:
        raise InputError(
            label_path,
            f"affine differs from image {image_path} by up to {diff:.4g} mm (tolerance {affine_atol:g} mm); "
            f"image affine:\n{np.array2string(affine, precision=4)}\nlabel affine:\n"
            f"{np.array2string(label_affine, precision=4)}",
        )
    if diff > 0:
        logger.debug(
            "%s: affine differs from the image's by %.3g mm (float noise); using the image's",
            label_path,
            diff,
        )
    return image, check_label_values(np.asarray(label), label_path), affine


def _convert_one(case: SourceCase, out_root: Path, affine_atol: float) -> None:
    if case.problem is not None:
        raise InputError(case.image or case.label or out_root, case.problem)
    if case.image is None:  # a case is created from at least one file, so the label is there
        raise InputError(case.label or out_root, f"label without image: no volume for case {case.case_id}")
    if case.split == "Tr":
        if case.label is None:
            raise InputError(case.image, f"training image without segmentation (case {case.case_id})")
        image, label, affine = load_pair(case.image, case.label, affine_atol)
        write_case(out_root, case.case_id, image, affine, label, split="Tr")
    else:
        image, affine = read_nifti(case.image)
        write_case(out_root, case.case_id, image, affine, None, split="Ts")


def _source_metadata(source: Path, layout: str) -> dict[str, Any]:
    """Provenance and, for MSD, the reference / licence fields of the source ``dataset.json``."""
    extra: dict[str, Any] = {}
    if layout == LAYOUT_MSD:
        meta_path = (_msd_root(source) or source) / "dataset.json"
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                extra.update({k: meta[k] for k in ("reference", "licence", "release") if k in meta})
            except (OSError, ValueError) as e:
                logger.warning("%s: unreadable (%s); not copying its reference / licence", meta_path, e)
    extra["provenance"] = {
        "converter": "liverseg convert lits",
        "liverseg_version": __version__,
        "source": str(source.resolve()),
        "source_layout": layout,
    }
    return extra


def convert_lits(
    source: Path,
    out_root: Path,
    *,
    dataset_name: str = "LiTS",
    keep_going: bool = False,
    affine_atol: float = AFFINE_ATOL,
) -> list[str]:
    """Convert a LiTS or MSD Task03_Liver folder to nnU-Net's raw layout under ``out_root``.

    Args:
        source: the dataset folder (layout detected automatically, see the module docstring).
        out_root: output dataset folder (``imagesTr``, ``labelsTr``, ``imagesTs``, ``dataset.json``).
        dataset_name: ``name`` written to ``dataset.json``.
        keep_going: convert every good case, then raise :class:`DatasetProblems` listing all failures
            (``dataset.json`` is written for the converted cases). Without it the first failure is raised
            and ``dataset.json`` is not written.
        affine_atol: tolerance (mm) for image / label affine differences.

    Returns:
        The case ids written, training cases first.
    """
    source, out_root = Path(source), Path(out_root)
    layout, cases = find_cases(source)
    logger.info("%s: %s layout, %d case(s)", source, layout, len(cases))
    done: list[str] = []
    failures: list[str] = []
    for n, case in enumerate(cases, start=1):
        files = ", ".join(p.name for p in (case.image, case.label) if p is not None)
        logger.info("[%d/%d] %s (%s) <- %s", n, len(cases), case.case_id, case.split, files)
        try:
            _convert_one(case, out_root, affine_atol)
        except (LiverSegError, ValueError) as e:
            if not keep_going:
                raise
            logger.error("[%d/%d] %s failed: %s", n, len(cases), case.case_id, e)
            failures.append(f"{case.case_id}: {e}")
        else:
            done.append(case.case_id)
    description = f"{layout} converted by liverseg {__version__}"
    write_dataset_json(out_root, dataset_name, description, **_source_metadata(source, layout))
    logger.info("%s: %d case(s) written, %d failed", out_root, len(done), len(failures))
    if failures:
        raise DatasetProblems(source, failures)
    return done


def _run(args: argparse.Namespace) -> int:
    convert_lits(args.source, args.out, dataset_name=args.dataset_name, keep_going=args.keep_going)
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``liverseg convert lits SOURCE OUT [--dataset-name N] [--keep-going]``."""
    parser = subparsers.add_parser(
        "lits",
        help="LiTS challenge data or MSD Task03_Liver (same cases) -> nnU-Net raw layout",
        description=(
            "Convert LiTS (volume-N / segmentation-N .nii[.gz], any sub-folders; test-volume-N -> imagesTs) "
            "or MSD Task03_Liver (imagesTr / labelsTr / imagesTs liver_N.nii.gz) to nnU-Net's raw layout. "
            "The layout is detected automatically."
        ),
    )
    parser.add_argument("source", type=Path, help="LiTS folder or MSD Task03_Liver folder")
    parser.add_argument("out", type=Path, help="output dataset folder, e.g. Dataset003_Liver")
    parser.add_argument("--dataset-name", default="LiTS", help="name written to dataset.json (default: LiTS)")
    parser.add_argument(
        "--keep-going", action="store_true", help="convert all good cases, then report every failed one"
    )
    parser.set_defaults(func=_run)
