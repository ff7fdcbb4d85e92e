"""nnU-Net raw dataset layout: ``DatasetNNN_Name/{imagesTr,labelsTr,imagesTs,labelsTs}`` plus ``dataset.json``.

Images are ``{case}_0000.nii.gz`` (channel 0 = CT), labels ``{case}.nii.gz`` with values from
:data:`liverseg.LABELS`. ``labelsTs`` is our addition (nnU-Net ignores it): held-out truth for evaluation.
Cases are written atomically: a failed conversion leaves neither a partial image nor an orphan label.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liverseg import LABELS
from liverseg.imageio import write_nifti

logger = logging.getLogger(__name__)

CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
FILE_ENDING = ".nii.gz"
SPLITS = ("Tr", "Ts")


def check_case_id(case_id: str) -> str:
    """Return ``case_id`` if it is a safe file-name stem; raise ``ValueError`` otherwise."""
    if not CASE_ID_PATTERN.match(case_id) or ".." in case_id or case_id.endswith("_0000"):
        raise ValueError(
            f"invalid case id {case_id!r}: use letters, digits, '_', '-', '.', start with a letter or digit, "
            "no '..', not ending in '_0000'"
        )
    return case_id


@dataclass(frozen=True)
class CasePaths:
    case_id: str
    image: Path
    label: Path | None
    split: str


def case_paths(root: str | Path, case_id: str, split: str = "Tr") -> CasePaths:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    root = Path(root)
    check_case_id(case_id)
    return CasePaths(
        case_id,
        root / f"images{split}" / f"{case_id}_0000{FILE_ENDING}",
        root / f"labels{split}" / f"{case_id}{FILE_ENDING}",
        split,
    )


def list_cases(root: str | Path, split: str = "Tr") -> list[CasePaths]:
    """Cases present in ``images{split}`` (sorted); ``label`` is ``None`` when the label file is missing."""
    root = Path(root)
    out = []
    for img in sorted((root / f"images{split}").glob(f"*_0000{FILE_ENDING}")):
        case_id = img.name[: -len(f"_0000{FILE_ENDING}")]
        try:
            paths = case_paths(root, case_id, split)
        except ValueError as e:  # a stray file with an unusable name: `liverseg verify` reports it
            logger.warning("skipping %s: %s", img, e)
            continue
        label = paths.label if paths.label and paths.label.exists() else None
        out.append(CasePaths(case_id, paths.image, label, split))
    return out


def write_case(
    root: str | Path,
    case_id: str,
    image: np.ndarray,
    affine: np.ndarray,
    label: np.ndarray | None = None,
    split: str = "Tr",
) -> CasePaths:
    """Write one case (image as int16 HU, label as uint8) atomically; on failure nothing of it remains."""
    paths = case_paths(root, case_id, split)
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"case {case_id}: image must be 3D, got shape {image.shape}")
    if label is not None:
        label = np.asarray(label)
        if label.shape != image.shape:
            raise ValueError(f"case {case_id}: label shape {label.shape} differs from image shape {image.shape}")
        bad = sorted(set(np.unique(label).tolist()) - set(LABELS.values()))
        if bad:
            raise ValueError(f"case {case_id}: unexpected label values {bad}; valid: {LABELS}")
    hu = np.clip(np.rint(image), -32768, 32767).astype(np.int16) if image.dtype.kind == "f" else image.astype(np.int16)
    written: list[Path] = []
    try:
        write_nifti(paths.image, hu, affine)
        written.append(paths.image)
        if label is not None and paths.label is not None:
            write_nifti(paths.label, label, affine, dtype=np.uint8)
            written.append(paths.label)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return paths if label is not None else CasePaths(case_id, paths.image, None, split)


def write_dataset_json(root: str | Path, name: str, description: str = "", **extra: Any) -> Path:
    """(Re)write ``dataset.json`` from the files present, nnU-Net v2 style."""
    root = Path(root)
    meta: dict[str, Any] = {
        "name": name,
        "description": description,
        "channel_names": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": len(list_cases(root, "Tr")),
        "file_ending": FILE_ENDING,
    }
    meta.update(extra)
    path = root / "dataset.json"
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_dataset_json(root: str | Path) -> dict[str, Any]:
    return json.loads((Path(root) / "dataset.json").read_text())
