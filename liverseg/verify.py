"""Verify a dataset in nnU-Net's raw layout before training or evaluation.

:func:`verify_dataset` walks ``dataset.json``, ``imagesTr``/``labelsTr`` and, when present, ``imagesTs``/``labelsTs``
and returns *every* problem it finds as a human-readable line naming the file and what is wrong (an empty list
means the dataset is usable). :func:`verify_or_raise` raises :class:`liverseg.errors.DatasetProblems` instead.

Checked, per dataset: ``dataset.json`` exists, parses and has ``channel_names``, ``labels``, ``numTraining`` and
``file_ending``; ``labels`` equal :data:`liverseg.LABELS`; ``numTraining`` equals the number of training images;
every image has a label and every label an image; no case is in both the training and the test split.
Per case: files readable and 3D; label integer-valued with values from ``dataset.json``; image and label with the
same shape and affine; spacing positive, finite and at most ``max_spacing_mm``; affine finite and not singular;
intensities that look like Hounsfield units; at least one liver voxel; no tumor outside the liver's bounding box;
and, when ``check_orientation`` is given, the orientation.

Command line::

    liverseg verify Dataset001_Liver [--orientation RAS] [--max-spacing 8] [--json report.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liverseg import LABELS
from liverseg.dataset import CASE_ID_PATTERN, FILE_ENDING
from liverseg.errors import DatasetProblems, InputError
from liverseg.imageio import atomic_path, orientation_of, read_nifti, spacing_of

logger = logging.getLogger(__name__)

__all__ = ["CaseSummary", "VerifyReport", "inspect_dataset", "verify_dataset", "verify_or_raise", "register_cli"]

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
AFFINE_ATOL_MM = 1e-3
"""Largest difference (mm, any entry of the 3x4 part) tolerated between an image's and its label's affine."""
HU_AIR_BELOW = -500.0
"""A CT in Hounsfield units contains air (about -1000 HU); a minimum above this suggests normalized data."""
TUMOR_BBOX_MARGIN = 1
"""Voxels added on each side of the liver's bounding box before counting tumor voxels outside it."""
_AXIS_PAIRS = ({"L", "R"}, {"A", "P"}, {"S", "I"})
_IMAGE_NAME = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(FILE_ENDING) + r"$")


@dataclass
class CaseSummary:
    """What was seen in one case (``None`` where it could not be read)."""

    split: str
    case_id: str
    shape: tuple[int, ...] | None = None
    spacing_mm: tuple[float, ...] | None = None
    orientation: str | None = None
    hu_range: tuple[float, float] | None = None
    liver_ml: float | None = None
    tumor_ml: float | None = None
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One-line human-readable summary."""
        parts = [f"{self.split} {self.case_id}:"]
        if self.shape is not None:
            parts.append(f"shape {self.shape}")
        if self.spacing_mm is not None:
            parts.append("spacing (" + ", ".join(f"{s:.3g}" for s in self.spacing_mm) + ") mm")
        if self.orientation is not None:
            parts.append(self.orientation)
        if self.hu_range is not None:
            parts.append(f"intensities [{self.hu_range[0]:.0f}, {self.hu_range[1]:.0f}]")
        if self.liver_ml is not None:
            parts.append(f"liver {self.liver_ml:.1f} mL, tumor {self.tumor_ml or 0.0:.1f} mL")
        if self.problems:
            parts.append(f"{len(self.problems)} problem(s)")
        return " ".join(parts)


@dataclass
class VerifyReport:
    """Result of :func:`inspect_dataset`: every problem plus a summary of each case."""

    root: Path
    problems: list[str]
    cases: list[CaseSummary]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "ok": self.ok,
            "cases_checked": len(self.cases),
            "num_problems": len(self.problems),
            "problems": list(self.problems),
            "cases": [asdict(c) for c in self.cases],
        }


def _check_orientation_code(code: str) -> str:
    code = code.upper()
    if len(code) != 3 or any(len(pair & set(code)) != 1 for pair in _AXIS_PAIRS):
        raise ValueError(
            f"invalid orientation {code!r}: use three letters, one of L/R, one of A/P and one of S/I (e.g. RAS, LPS)"
        )
    return code


def _fmt_values(values: Any, digits: int = 4) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in values) + ")"


def _fmt_affine(affine: np.ndarray) -> str:
    return "[" + "; ".join(" ".join(f"{v:.4g}" for v in row) for row in np.asarray(affine)[:3]) + "]"


def _check_dataset_json(root: Path, num_training: int) -> tuple[list[str], set[int]]:
    """Problems in ``dataset.json`` and the label values to accept in label files."""
    allowed = set(LABELS.values())
    path = root / "dataset.json"
    if not path.is_file():
        return [f"dataset.json: missing (expected at {path})"], allowed
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return [f"dataset.json: not readable JSON ({type(e).__name__}: {e})"], allowed
    if not isinstance(meta, dict):
        return [f"dataset.json: expected a JSON object, got {type(meta).__name__}"], allowed
    problems = []
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        problems.append(f"dataset.json: missing key(s) {', '.join(missing)} (required: {', '.join(REQUIRED_KEYS)})")
    labels = meta.get("labels")
    if "labels" in meta:
        if not isinstance(labels, dict):
            problems.append(f"dataset.json: 'labels' must be an object name -> value, got {labels!r}")
        elif labels != LABELS:
            diffs = []
            for name in sorted(set(LABELS) | set(labels), key=lambda n: (LABELS.get(n, 99), n)):
                if name not in labels:
                    diffs.append(f"'{name}' missing (expected {LABELS[name]})")
                elif name not in LABELS:
                    diffs.append(f"unexpected label '{name}': {labels[name]!r}")
                elif labels[name] != LABELS[name]:
                    diffs.append(f"'{name}' is {labels[name]!r}, expected {LABELS[name]}")
            problems.append(f"dataset.json: labels differ from {LABELS}: {'; '.join(diffs)}")
            values = [v for v in labels.values() if isinstance(v, int) and not isinstance(v, bool)]
            if len(values) == len(labels):
                allowed = set(values)
    if "numTraining" in meta and meta["numTraining"] != num_training:
        problems.append(
            f"dataset.json: numTraining is {meta['numTraining']!r} but imagesTr holds {num_training} image(s)"
        )
    if "file_ending" in meta and meta["file_ending"] != FILE_ENDING:
        problems.append(f"dataset.json: file_ending is {meta['file_ending']!r}, expected {FILE_ENDING!r}")
    channels = meta.get("channel_names")
    if "channel_names" in meta:
        if not isinstance(channels, dict) or list(channels) != ["0"]:
            problems.append(f"dataset.json: channel_names should be {{'0': 'CT'}} (one CT channel), got {channels!r}")
        elif str(channels["0"]).upper() != "CT":
            problems.append(
                f"dataset.json: channel 0 is named {channels['0']!r}; name it 'CT' so nnU-Net uses CT normalization"
            )
    return problems, allowed


def _scan_split(root: Path, split: str) -> tuple[list[str], dict[str, Path], dict[str, Path]]:
    """List images and labels of one split; problems for misnamed or stray files."""
    problems: list[str] = []
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    img_dir, lab_dir = root / f"images{split}", root / f"labels{split}"
    for d, is_image in ((img_dir, True), (lab_dir, False)):
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            rel = f"{d.name}/{p.name}"
            if p.name.startswith("."):
                if ".part" in p.name:
                    problems.append(f"{rel}: leftover partial file from an interrupted write; delete it")
                continue
            if not p.is_file():
                problems.append(f"{rel}: unexpected non-file entry")
                continue
            if not p.name.endswith(FILE_ENDING):
                problems.append(f"{rel}: unexpected file (not a {FILE_ENDING} file)")
                continue
            if is_image:
                m = _IMAGE_NAME.match(p.name)
                if m is None:
                    problems.append(f"{rel}: image not named {{case}}_0000{FILE_ENDING}")
                    continue
                if m["channel"] != "0000":
                    problems.append(f"{rel}: extra channel {m['channel']} (the dataset has one CT channel, 0000)")
                    continue
                case_id = m["case"]
            else:
                case_id = p.name[: -len(FILE_ENDING)]
            if not CASE_ID_PATTERN.match(case_id) or ".." in case_id:
                problems.append(f"{rel}: case id {case_id!r} is not a safe name (letters, digits, '_', '-', '.')")
                continue
            (images if is_image else labels)[case_id] = p
    return problems, images, labels


def _check_case(
    root: Path,
    summary: CaseSummary,
    image_path: Path,
    label_path: Path | None,
    allowed: set[int],
    max_spacing_mm: float,
    check_orientation: str | None,
) -> None:
    """Check one case; append problems to ``summary.problems`` and fill the summary."""
    problems = summary.problems

    def rel(p: Path) -> str:
        return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)

    image = affine = None
    try:
        image, affine = read_nifti(image_path)
    except InputError as e:
        problems.append(f"{rel(image_path)}: {e.reason}")
    geometry_ok = False
    if image is not None and affine is not None:
        img_rel = rel(image_path)
        summary.shape = tuple(int(s) for s in image.shape)
        if not np.all(np.isfinite(affine)):
            problems.append(f"{img_rel}: affine contains NaN or infinite values: {_fmt_affine(affine)}")
        elif abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            problems.append(f"{img_rel}: affine is singular (a zero or repeated axis): {_fmt_affine(affine)}")
        else:
            geometry_ok = True
            spacing = spacing_of(affine)
            summary.spacing_mm = spacing
            summary.orientation = orientation_of(affine)
            if not all(math.isfinite(s) and s > 0 for s in spacing) or max(spacing) > max_spacing_mm:
                problems.append(
                    f"{img_rel}: spacing {_fmt_values(spacing)} mm is outside (0, {max_spacing_mm:g}] mm "
                    "(--max-spacing to allow thicker slices)"
                )
            if check_orientation is not None and summary.orientation != check_orientation:
                problems.append(f"{img_rel}: orientation {summary.orientation}, expected {check_orientation}")
        if image.dtype.kind not in "iuf":
            problems.append(f"{img_rel}: unsupported voxel type {image.dtype}")
        else:
            finite = np.isfinite(image) if image.dtype.kind == "f" else None
            if finite is not None and not finite.all():
                problems.append(f"{img_rel}: {int(finite.size - finite.sum())} voxel(s) are NaN or infinite")
                vals = image[finite]
            else:
                vals = image
            if vals.size:
                lo, hi = float(vals.min()), float(vals.max())
                summary.hu_range = (lo, hi)
                if lo > HU_AIR_BELOW:
                    problems.append(
                        f"{img_rel}: intensities [{lo:.4g}, {hi:.4g}] do not look like Hounsfield units (no air "
                        f"below {HU_AIR_BELOW:g} HU): the data may be already normalized, windowed or cropped"
                    )

    if label_path is None:
        return
    try:
        label, label_affine = read_nifti(label_path)
    except InputError as e:
        problems.append(f"{rel(label_path)}: {e.reason}")
        return
    lab_rel = rel(label_path)
    if image is not None and label.shape != image.shape:
        problems.append(f"{lab_rel}: shape {tuple(label.shape)} differs from image shape {tuple(image.shape)}")
    if affine is not None:
        if not np.all(np.isfinite(label_affine)):
            problems.append(f"{lab_rel}: affine contains NaN or infinite values")
        elif geometry_ok:
            diff = float(np.max(np.abs(label_affine[:3] - affine[:3])))
            if diff > AFFINE_ATOL_MM:
                problems.append(
                    f"{lab_rel}: affine differs from the image's by up to {diff:.4g} mm "
                    f"(tolerance {AFFINE_ATOL_MM:g} mm); label spacing {_fmt_values(spacing_of(label_affine))}, "
                    f"origin {_fmt_values(label_affine[:3, 3])} vs image {_fmt_values(affine[:3, 3])}"
                )
    # label values: integer-valued and from dataset.json
    if label.dtype.kind == "f":
        finite = np.isfinite(label)
        non_integer = ~finite | (label != np.round(np.where(finite, label, 0)))
        n_bad = int(non_integer.sum())
        if n_bad:
            examples = np.unique(label[non_integer])[:5]
            problems.append(
                f"{lab_rel}: {n_bad} voxel(s) have non-integer values, e.g. {_fmt_values(examples)}: "
                "labels must be integers (resampled with linear interpolation instead of nearest neighbour?)"
            )
            label = np.where(non_integer, 0, label)
        label = label.astype(np.int64)
    elif label.dtype.kind not in "iub":
        problems.append(f"{lab_rel}: unsupported voxel type {label.dtype}")
        return
    if label.size and label.min() >= 0 and label.max() < 65536:
        counts = np.bincount(label.ravel())
        values = {int(v): int(c) for v, c in enumerate(counts) if c}
    else:
        uniq, cnt = np.unique(label, return_counts=True)
        values = {int(v): int(c) for v, c in zip(uniq, cnt)}
    unexpected = {v: c for v, c in values.items() if v not in allowed}
    if unexpected:
        listing = ", ".join(f"{v} ({c} voxels)" for v, c in sorted(unexpected.items()))
        problems.append(f"{lab_rel}: unexpected label value(s) {listing}; valid: {sorted(allowed)}")
    liver_v, tumor_v = LABELS["liver"], LABELS["tumor"]
    voxel_ml = float(np.prod(spacing_of(affine))) / 1000.0 if geometry_ok and affine is not None else None
    n_liver, n_tumor = values.get(liver_v, 0), values.get(tumor_v, 0)
    if voxel_ml is not None:
        summary.liver_ml = (n_liver + n_tumor) * voxel_ml
        summary.tumor_ml = n_tumor * voxel_ml
    if n_liver == 0:
        problems.append(f"{lab_rel}: no liver voxel (value {liver_v}); values present: {sorted(values)}")
    elif n_tumor:
        liver = label == liver_v
        box = []
        for axis in range(3):
            present = np.flatnonzero(np.any(liver, axis=tuple(a for a in range(3) if a != axis)))
            box.append(slice(max(int(present[0]) - TUMOR_BBOX_MARGIN, 0), int(present[-1]) + 1 + TUMOR_BBOX_MARGIN))
        outside = n_tumor - int(np.count_nonzero(label[tuple(box)] == tumor_v))
        if outside:
            box_txt = ", ".join(f"{s.start}:{s.stop}" for s in box)
            problems.append(
                f"{lab_rel}: {outside} of {n_tumor} tumor voxel(s) lie outside the liver's bounding box "
                f"[{box_txt}] (label values swapped, or a tumor of another organ?)"
            )


def inspect_dataset(
    root: str | Path, *, max_spacing_mm: float = 8.0, check_orientation: str | None = None
) -> VerifyReport:
    """Check a dataset in nnU-Net raw layout; return every problem and a per-case summary.

    Args:
        root: the dataset folder (``DatasetNNN_Name``).
        max_spacing_mm: largest voxel spacing accepted along any axis.
        check_orientation: if given (e.g. ``"RAS"``), report every case in another orientation.

    Raises:
        InputError: ``root`` is not a folder.
        ValueError: invalid ``max_spacing_mm`` or ``check_orientation``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "dataset folder not found")
    if not (max_spacing_mm > 0 and math.isfinite(max_spacing_mm)):
        raise ValueError(f"max_spacing_mm must be a positive number, got {max_spacing_mm!r}")
    if check_orientation is not None:
        check_orientation = _check_orientation_code(check_orientation)

    problems: list[str] = []
    scanned = {split: _scan_split(root, split) for split in ("Tr", "Ts")}
    json_problems, allowed = _check_dataset_json(root, len(scanned["Tr"][1]))
    problems += json_problems
    if not (root / "imagesTr").is_dir():
        problems.append("imagesTr/: folder missing")
    elif not scanned["Tr"][1]:
        problems.append(f"imagesTr/: no training image ({{case}}_0000{FILE_ENDING})")
    if (root / "imagesTr").is_dir() and not (root / "labelsTr").is_dir():
        problems.append("labelsTr/: folder missing (every training image needs a label)")

    todo: list[tuple[str, str, Path, Path | None]] = []
    for split in ("Tr", "Ts"):
        scan_problems, images, labels = scanned[split]
        problems += scan_problems
        labels_dir_exists = (root / f"labels{split}").is_dir()
        for case_id, img in images.items():
            lab = labels.get(case_id)
            if lab is None and labels_dir_exists:
                problems.append(
                    f"images{split}/{img.name}: no label labels{split}/{case_id}{FILE_ENDING} (orphan image)"
                )
            todo.append((split, case_id, img, lab))
        for case_id in sorted(set(labels) - set(images)):
            problems.append(
                f"labels{split}/{case_id}{FILE_ENDING}: no image images{split}/{case_id}_0000{FILE_ENDING} "
                "(orphan label)"
            )
        if (root / f"labels{split}").is_dir() and not (root / f"images{split}").is_dir():
            problems.append(f"images{split}/: folder missing but labels{split}/ exists")
    for case_id in sorted(set(scanned["Tr"][1]) & set(scanned["Ts"][1])):
        problems.append(f"case {case_id}: in both imagesTr and imagesTs (test data leaking into training)")

    cases = []
    for n, (split, case_id, img, lab) in enumerate(todo, start=1):
        summary = CaseSummary(split, case_id)
        try:
            _check_case(root, summary, img, lab, allowed, max_spacing_mm, check_orientation)
        except MemoryError:
            summary.problems.append(f"{img.relative_to(root)}: too large to check in memory")
        problems += summary.problems
        cases.append(summary)
        logger.info("[%d/%d] %s", n, len(todo), summary.line())
    logger.info("%s: %d case(s) checked, %d problem(s)", root, len(cases), len(problems))
    return VerifyReport(root, problems, cases)


def verify_dataset(
    root: str | Path, *, max_spacing_mm: float = 8.0, check_orientation: str | None = None
) -> list[str]:
    """Every problem found in the dataset at ``root`` (empty list: usable). See :func:`inspect_dataset`."""
    return inspect_dataset(root, max_spacing_mm=max_spacing_mm, check_orientation=check_orientation).problems


def verify_or_raise(root: str | Path, **kwargs: Any) -> VerifyReport:
    """Like :func:`inspect_dataset`, but raise :class:`DatasetProblems` listing every problem if there is one."""
    report = inspect_dataset(root, **kwargs)
    if report.problems:
        raise DatasetProblems(root, report.problems)
    return report


def _run_cli(args: argparse.Namespace) -> int:
    try:
        report = inspect_dataset(args.root, max_spacing_mm=args.max_spacing, check_orientation=args.orientation)
    except ValueError as e:
        raise InputError(args.root, str(e)) from e
    if args.json is not None:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    for p in report.problems:
        print(p)
    if report.ok:
        print(f"OK: {len(report.cases)} cases checked")
        return 0
    print(f"{len(report.problems)} problem(s) in {len(report.cases)} cases checked")
    return 1


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``liverseg verify``."""
    p = sub.add_parser(
        "verify",
        help="check a dataset in nnU-Net raw layout and list every problem",
        description="Check dataset.json, file pairing, geometry, intensities and label values of a dataset in "
        "nnU-Net raw layout (imagesTr/labelsTr, optional imagesTs/labelsTs). Prints every problem; exit code 0 if "
        "there is none, 1 otherwise.",
    )
    p.add_argument("root", type=Path, help="dataset folder, e.g. Dataset001_Liver")
    p.add_argument("--orientation", default=None, help="report cases not in this orientation (e.g. RAS, LPS)")
    p.add_argument(
        "--max-spacing", type=float, default=8.0, help="largest accepted voxel spacing in mm (default: 8)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the full report (problems, cases) here")
    p.set_defaults(func=_run_cli)
