"""Data lists for the bundle: nnU-Net raw layout (``imagesTr/{case}_0000.nii.gz`` + ``labelsTr/{case}.nii.gz``)."""

from __future__ import annotations

import logging
import os
import random
from glob import glob

logger = logging.getLogger(__name__)

IMAGE_SUFFIX = "_0000.nii.gz"


def list_images(dataset_dir: str, split: str = "Ts") -> list[str]:
    """The ``images{split}/*_0000.nii.gz`` files of ``dataset_dir``, sorted; ``ValueError`` when there is none."""
    if split not in ("Tr", "Ts"):
        raise ValueError(f"unknown split {split!r}; valid: 'Tr', 'Ts'")
    if not os.path.isdir(dataset_dir):
        raise ValueError(
            f"dataset_dir {dataset_dir!r} is not a folder: pass --dataset_dir with a dataset in nnU-Net raw layout "
            f"(images{split}/<case>{IMAGE_SUFFIX}; `liverseg convert` writes one)"
        )
    images = sorted(glob(os.path.join(dataset_dir, f"images{split}", f"*{IMAGE_SUFFIX}")))
    if not images:
        raise ValueError(f"no images found in {os.path.join(dataset_dir, 'images' + split)} (expected *{IMAGE_SUFFIX})")
    return images


def list_inputs(dataset_dir: str) -> list[str]:
    """The default inference inputs: every ``imagesTs/*.nii.gz`` of ``dataset_dir``, sorted; an empty list (and a
    warning) when there is none, so that a config with the placeholder ``dataset_dir`` still parses."""
    files = sorted(glob(os.path.join(dataset_dir, "imagesTs", "*.nii.gz")))
    if not files:
        logger.warning("no images in %s: pass --input_files or --dataset_dir", os.path.join(dataset_dir, "imagesTs"))
    return files


def require_inputs(input_files: list[str]) -> None:
    """``ValueError`` when inference was given nothing to segment (a run that would silently do nothing)."""
    if not input_files:
        raise ValueError(
            "no input images: pass --input_files \"['/path/ct.nii.gz']\" or --dataset_dir with an imagesTs folder"
        )


def load_datalist(dataset_dir: str, split: str = "Tr", require_labels: bool = True) -> list[dict[str, str]]:
    """List ``{"image", "label", "case_id"}`` items of ``images{split}`` / ``labels{split}`` in ``dataset_dir``.

    Raises ``ValueError`` when the folder holds no case, or, with ``require_labels``, when a label is missing.
    """
    images = list_images(dataset_dir, split)
    items, missing = [], []
    for img in images:
        case_id = os.path.basename(img)[: -len(IMAGE_SUFFIX)]
        label = os.path.join(dataset_dir, f"labels{split}", f"{case_id}.nii.gz")
        if os.path.exists(label):
            items.append({"image": img, "label": label, "case_id": case_id})
        elif require_labels:
            missing.append(label)
        else:
            items.append({"image": img, "case_id": case_id})
    if missing:
        raise ValueError(f"{len(missing)} label file(s) missing, e.g. {missing[0]}")
    return items


def split_datalist(
    datalist: list[dict], num_folds: int = 5, fold: int = 0, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Deterministic k-fold split by case: returns ``(train, validation)`` for ``fold``.

    With fewer cases than folds, the validation part still gets one case (and training keeps the rest).
    """
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds - 1}], got {fold}")
    if len(datalist) < 2:
        raise ValueError(f"need at least 2 cases to split into train and validation, got {len(datalist)}")
    order = list(range(len(datalist)))
    random.Random(seed).shuffle(order)
    val_idx = {i for k, i in enumerate(order) if k % num_folds == fold} or {order[fold % len(order)]}
    train = [d for i, d in enumerate(datalist) if i not in val_idx]
    val = [d for i, d in enumerate(datalist) if i in val_idx]
    return train, val
