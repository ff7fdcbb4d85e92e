"""Score predicted liver / tumor segmentations against reference labels, per case and over a test set.

Conventions (all stated again in ``summary.json`` under ``"conventions"``):

- Labels follow :data:`liverseg.LABELS` (0 background, 1 liver, 2 tumor). **Liver** means label 1 OR 2, i.e. the
  whole organ including its tumors (the LiTS convention); **tumor** means label 2.
- **Dice** comes from :func:`monai.metrics.compute_dice`. Two empty masks have Dice 1 (nothing to find, nothing
  found); one empty mask against a non-empty one has Dice 0.
- **HD95** is :func:`monai.metrics.compute_hausdorff_distance` with ``percentile=95`` (the larger of the two directed
  95th-percentile surface distances) and **ASSD** is :func:`monai.metrics.compute_average_surface_distance` with
  ``symmetric=True``; both in millimetres with the voxel spacing of the reference. Both are NaN when a mask is
  empty on either side, and the case's ``notes`` say why.
- **Volumes** in mL; volume error = predicted - reference (mL, and % of the reference; the % is NaN when the
  reference is empty).
- **Lesions** are the 26-connected components (face, edge or corner neighbours) of the tumor label. Matching rule
  ``"overlap"``: a reference lesion is *detected* (TP) if at least one predicted tumor voxel lies inside it, else it
  is missed (FN); a predicted lesion that overlaps no reference lesion is a false positive (FP). Lesion size is the
  diameter of the sphere of the same volume, binned by ``lesion_size_bins_mm`` (default ``<10``, ``10-20``,
  ``>=20`` mm; each bin includes its lower edge). TP and FN are binned by the reference lesion's size, FP by the
  predicted lesion's size.
- **Detection scores**: precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2PR / (P + R). Zero denominators:
  no reference and no predicted lesion gives precision = recall = F1 = 1 (a correct "no tumor"); no predicted
  lesion but some reference lesion gives precision NaN (undefined), recall 0, F1 0; no reference lesion but some
  predicted lesion gives recall NaN (undefined), precision 0, F1 0. Over a test set, TP / FN / FP are pooled over
  cases before the scores are computed.
- **Failure**: a case whose liver Dice is below ``failure_dice`` (default 0.5).
- **Global Dice** (LiTS's "Dice global"): 2 * sum(|P and R|) / sum(|P| + |R|) over all evaluated cases, in voxels.

Command line::

    liverseg evaluate PRED_DIR REF_DIR --out DIR [--failure-dice 0.5] [--pred-suffix _0000_seg]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import logging
import math
import platform
import shlex
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from liverseg import LABELS, __version__
from liverseg.errors import InputError
from liverseg.imageio import NIFTI_SUFFIXES, atomic_path, read_nifti, spacing_of, write_json

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FAILURE_DICE",
    "DEFAULT_SIZE_BINS_MM",
    "LESION_MATCH_RULES",
    "GRID_ATOL_MM",
    "equivalent_diameter_mm",
    "size_bin_names",
    "detection_scores",
    "lesion_counts_by_size",
    "evaluate_case",
    "match_cases",
    "summarize",
    "summary_markdown",
    "evaluate_folder",
    "register_cli",
]

DEFAULT_FAILURE_DICE = 0.5
"""A case with liver Dice below this is counted as a failure."""
DEFAULT_SIZE_BINS_MM = (10.0, 20.0)
"""Edges (mm, equivalent-sphere diameter) of the lesion size bins: <10, 10-20, >=20."""
LESION_MATCH_RULES = ("overlap",)
"""Lesion matching rules; ``"overlap"``: detected if any predicted tumor voxel lies inside the reference lesion."""
GRID_ATOL_MM = 1e-3
"""Largest difference (mm, any entry of the affine's 3x4 part) tolerated between a prediction's and its reference's
grid."""
AUTO_PRED_SUFFIXES = ("", "_0000_seg", "_seg")
"""File-name suffixes (before ``.nii.gz``) tried when no ``pred_suffix`` is given: nnU-Net style ``{case}``, and
``{case}_0000_seg`` as the bundles' ``SaveImaged`` (``output_postfix="seg"``) writes them."""

_LIVER_VALUES = (LABELS["liver"], LABELS["tumor"])
_TUMOR_VALUE = LABELS["tumor"]
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)
_STRUCTURES = ("liver", "tumor")

PER_CASE_COLUMNS = (
    "case",
    "status",
    "error",
    "pred_file",
    "ref_file",
    "spacing_mm",
    *(
        f"{s}_{m}"
        for s in _STRUCTURES
        for m in (
            "dice",
            "hd95_mm",
            "assd_mm",
            "ref_ml",
            "pred_ml",
            "vol_err_ml",
            "vol_err_pct",
            "ref_voxels",
            "pred_voxels",
            "intersection_voxels",
        )
    ),
    "lesions_ref",
    "lesions_pred",
    "lesion_tp",
    "lesion_fn",
    "lesion_fp",
    "lesion_precision",
    "lesion_recall",
    "lesion_f1",
    "failure",
    "notes",
)
PER_LESION_COLUMNS = (
    "case",
    "source",
    "lesion_id",
    "status",
    "num_voxels",
    "volume_ml",
    "diameter_mm",
    "size_bin",
    "overlap_fraction",
    "centroid_ijk",
)
SUMMARY_METRICS = (
    "liver_dice",
    "liver_hd95_mm",
    "liver_assd_mm",
    "liver_vol_err_ml",
    "liver_vol_err_pct",
    "tumor_dice",
    "tumor_hd95_mm",
    "tumor_assd_mm",
    "tumor_vol_err_ml",
    "tumor_vol_err_pct",
    "lesion_precision",
    "lesion_recall",
    "lesion_f1",
    "lesion_fp",
)
NAN = float("nan")


# ----------------------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------------------


def _check_label(arr: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 3:
        raise ValueError(f"{name} must be a 3D label volume, got an array of shape {tuple(a.shape)}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError(f"{name} must hold integer label values (0 background, 1 liver, 2 tumor)")
        a = a.astype(np.int16)
    elif a.dtype.kind not in "iub":
        raise ValueError(f"{name} must be an integer label array, got dtype {a.dtype}")
    bad = [int(v) for v in np.unique(a) if int(v) not in LABELS.values()]
    if bad:
        raise ValueError(f"{name} holds label values {bad}; valid values are {sorted(LABELS.values())} ({LABELS})")
    return a


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as e:
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing!r}") from e
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be three positive finite numbers (mm), got {spacing!r}")
    return sp  # type: ignore[return-value]


def _check_bins(bins: Sequence[float]) -> tuple[float, ...]:
    try:
        edges = tuple(float(b) for b in bins)
    except (TypeError, ValueError) as e:
        raise ValueError(f"lesion_size_bins_mm must be increasing positive numbers, got {bins!r}") from e
    if not all(math.isfinite(b) and b > 0 for b in edges) or any(b >= c for b, c in zip(edges, edges[1:])):
        raise ValueError(f"lesion_size_bins_mm must be strictly increasing positive numbers, got {bins!r}")
    return edges


def _check_failure_dice(value: float) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"failure_dice must be in [0, 1], got {value!r}")
    return v


# ----------------------------------------------------------------------------------------------------------------
# per-case metrics
# ----------------------------------------------------------------------------------------------------------------


def equivalent_diameter_mm(num_voxels: int, spacing: Sequence[float]) -> float:
    """Diameter (mm) of the sphere whose volume equals ``num_voxels`` voxels of size ``spacing``."""
    volume_mm3 = float(num_voxels) * float(np.prod(spacing))
    return float((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0))


def size_bin_names(bins: Sequence[float] = DEFAULT_SIZE_BINS_MM) -> list[str]:
    """Names of the size bins for ``bins`` edges, e.g. ``["<10mm", "10-20mm", ">=20mm"]``."""
    edges = _check_bins(bins)
    if not edges:
        return ["all"]
    names = [f"<{edges[0]:g}mm"]
    names += [f"{a:g}-{b:g}mm" for a, b in zip(edges, edges[1:])]
    names.append(f">={edges[-1]:g}mm")
    return names


def _size_bin(diameter: float, edges: tuple[float, ...], names: list[str]) -> str:
    return names[int(np.searchsorted(edges, diameter, side="right"))]


def detection_scores(tp: int, fn: int, fp: int) -> tuple[float, float, float]:
    """Lesion-detection ``(precision, recall, f1)`` with the zero-denominator conventions of the module docstring."""
    if tp + fn == 0 and fp == 0:
        return 1.0, 1.0, 1.0
    precision = tp / (tp + fp) if tp + fp > 0 else NAN
    recall = tp / (tp + fn) if tp + fn > 0 else NAN
    f1 = 2.0 * precision * recall / (precision + recall) if tp > 0 else 0.0
    return float(precision), float(recall), float(f1)


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop two masks to the bounding box of their union plus one voxel (surface distances are unchanged)."""
    coords = np.argwhere(a | b)
    lo = np.maximum(coords.min(axis=0) - 1, 0)
    hi = np.minimum(coords.max(axis=0) + 2, a.shape)
    sl = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi))
    return a[sl], b[sl]


def _overlap_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float], name: str, notes: list[str]
) -> dict[str, Any]:
    """Dice, HD95, ASSD, volumes and volume errors of one binary structure."""
    import torch
    from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

    voxel_ml = float(np.prod(spacing)) / 1000.0
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    n_inter = int(np.logical_and(pred, ref).sum())
    out: dict[str, Any] = {
        f"{name}_ref_voxels": n_ref,
        f"{name}_pred_voxels": n_pred,
        f"{name}_intersection_voxels": n_inter,
        f"{name}_ref_ml": n_ref * voxel_ml,
        f"{name}_pred_ml": n_pred * voxel_ml,
        f"{name}_vol_err_ml": (n_pred - n_ref) * voxel_ml,
        f"{name}_vol_err_pct": 100.0 * (n_pred - n_ref) / n_ref if n_ref else NAN,
    }
    if n_ref == 0:
        notes.append(f"{name} volume error % undefined: reference has no {name} voxel")
    if n_pred == 0 and n_ref == 0:
        out.update({f"{name}_dice": 1.0, f"{name}_hd95_mm": NAN, f"{name}_assd_mm": NAN})
        notes.append(f"{name} HD95/ASSD undefined: no {name} in reference nor prediction (Dice 1 by convention)")
        return out
    if n_pred == 0 or n_ref == 0:
        empty = "prediction" if n_pred == 0 else "reference"
        out.update({f"{name}_dice": 0.0, f"{name}_hd95_mm": NAN, f"{name}_assd_mm": NAN})
        notes.append(f"{name} HD95/ASSD undefined: {empty} has no {name} voxel")
        return out
    p, r = _crop_to_union(pred, ref)
    yp = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32))[None, None]
    yr = torch.from_numpy(np.ascontiguousarray(r, dtype=np.float32))[None, None]
    dice = compute_dice(yp, yr, include_background=True)
    with warnings.catch_warnings():  # monai 1.6 warns about its own internal use of a deprecated argument
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        hd95 = compute_hausdorff_distance(yp, yr, include_background=True, percentile=95, spacing=list(spacing))
        assd = compute_average_surface_distance(
            yp, yr, include_background=True, symmetric=True, spacing=list(spacing)
        )
    out.update(
        {
            f"{name}_dice": float(dice.reshape(-1)[0]),
            f"{name}_hd95_mm": float(hd95.reshape(-1)[0]),
            f"{name}_assd_mm": float(assd.reshape(-1)[0]),
        }
    )
    return out


def _lesion_detection(
    pred_t: np.ndarray,
    ref_t: np.ndarray,
    spacing: tuple[float, float, float],
    edges: tuple[float, ...],
    rule: str,
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """TP / FN per reference lesion and FP predicted lesions; one row per reference lesion and per FP lesion."""
    names = size_bin_names(edges)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    ref_lab, n_ref = ndimage.label(ref_t, structure=_STRUCTURE_26)
    pred_lab, n_pred = ndimage.label(pred_t, structure=_STRUCTURE_26)
    ref_sizes = np.bincount(ref_lab.ravel(), minlength=n_ref + 1)
    pred_sizes = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)
    # voxels of each reference lesion covered by predicted tumor, and of each predicted lesion covered by reference
    ref_hit = np.bincount(ref_lab[pred_t], minlength=n_ref + 1)
    pred_hit = np.bincount(pred_lab[ref_t], minlength=n_pred + 1)
    ref_centroids = ndimage.center_of_mass(ref_t, ref_lab, range(1, n_ref + 1)) if n_ref else []
    pred_centroids = ndimage.center_of_mass(pred_t, pred_lab, range(1, n_pred + 1)) if n_pred else []

    rows: list[dict[str, Any]] = []
    counts = {"lesions_ref": n_ref, "lesions_pred": n_pred, "lesion_tp": 0, "lesion_fn": 0, "lesion_fp": 0}
    for idx in range(1, n_ref + 1):
        if rule == "overlap":
            detected = ref_hit[idx] > 0
        else:  # pragma: no cover - rule validated by evaluate_case
            raise ValueError(f"unknown lesion_match {rule!r}; available: {', '.join(LESION_MATCH_RULES)}")
        counts["lesion_tp" if detected else "lesion_fn"] += 1
        d = equivalent_diameter_mm(int(ref_sizes[idx]), spacing)
        rows.append(
            {
                "source": "reference",
                "lesion_id": idx,
                "status": "TP" if detected else "FN",
                "num_voxels": int(ref_sizes[idx]),
                "volume_ml": int(ref_sizes[idx]) * voxel_ml,
                "diameter_mm": d,
                "size_bin": _size_bin(d, edges, names),
                "overlap_fraction": float(ref_hit[idx]) / float(ref_sizes[idx]),
                "centroid_ijk": tuple(round(float(c), 2) for c in ref_centroids[idx - 1]),
            }
        )
    for idx in range(1, n_pred + 1):
        if pred_hit[idx] > 0:
            continue
        counts["lesion_fp"] += 1
        d = equivalent_diameter_mm(int(pred_sizes[idx]), spacing)
        rows.append(
            {
                "source": "prediction",
                "lesion_id": idx,
                "status": "FP",
                "num_voxels": int(pred_sizes[idx]),
                "volume_ml": int(pred_sizes[idx]) * voxel_ml,
                "diameter_mm": d,
                "size_bin": _size_bin(d, edges, names),
                "overlap_fraction": 0.0,
                "centroid_ijk": tuple(round(float(c), 2) for c in pred_centroids[idx - 1]),
            }
        )
    return counts, rows


def lesion_counts_by_size(
    lesions: Sequence[dict[str, Any]], lesion_size_bins_mm: Sequence[float] = DEFAULT_SIZE_BINS_MM
) -> dict[str, dict[str, int]]:
    """TP / FN / FP of one case's lesion rows (:func:`evaluate_case`'s ``lesions``) per size bin: TP and FN by the
    reference lesion's size, FP by the predicted lesion's size, e.g. ``{"<10mm": {"tp": 0, "fn": 2, "fp": 1}, ...}``."""
    out = {name: {"tp": 0, "fn": 0, "fp": 0} for name in size_bin_names(lesion_size_bins_mm)}
    for les in lesions:
        out[les["size_bin"]][les["status"].lower()] += 1
    return out


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    lesion_size_bins_mm: Sequence[float] = DEFAULT_SIZE_BINS_MM,
    lesion_match: str = "overlap",
    failure_dice: float = DEFAULT_FAILURE_DICE,
) -> dict[str, Any]:
    """Score one predicted label volume against its reference (conventions: see the module docstring).

    Args:
        pred: predicted label ``[i, j, k]`` with values 0 background, 1 liver, 2 tumor.
        ref: reference label, same shape and grid as ``pred``.
        spacing: voxel size (mm) along i, j, k.
        lesion_size_bins_mm: increasing edges of the lesion size bins (equivalent-sphere diameter, mm).
        lesion_match: lesion matching rule; ``"overlap"`` (the only one so far): a reference lesion is detected if
            any predicted tumor voxel lies inside it.
        failure_dice: a case with liver Dice below this is a failure.

    Returns:
        a dict with, for ``liver`` (labels 1+2) and ``tumor`` (label 2): ``{s}_dice``, ``{s}_hd95_mm``,
        ``{s}_assd_mm``, ``{s}_ref_ml``, ``{s}_pred_ml``, ``{s}_vol_err_ml``, ``{s}_vol_err_pct``, ``{s}_ref_voxels``,
        ``{s}_pred_voxels``, ``{s}_intersection_voxels``; lesion detection ``lesions_ref``, ``lesions_pred``,
        ``lesion_tp``, ``lesion_fn``, ``lesion_fp``, ``lesion_precision``, ``lesion_recall``, ``lesion_f1``;
        ``lesion_by_size`` (:func:`lesion_counts_by_size`); ``failure`` (bool); ``spacing_mm``; ``notes`` (why a
        value is NaN); ``lesions`` (one dict per reference
        lesion, TP or FN, and per FP predicted lesion: ``source``, ``lesion_id``, ``status``, ``num_voxels``,
        ``volume_ml``, ``diameter_mm``, ``size_bin``, ``overlap_fraction``, ``centroid_ijk``).

    Raises:
        ValueError: arrays not 3D, of different shapes or with values other than 0, 1, 2; bad spacing, bins,
            matching rule or threshold.
    """
    pred_a = _check_label(pred, "prediction")
    ref_a = _check_label(ref, "reference")
    if pred_a.shape != ref_a.shape:
        raise ValueError(f"prediction shape {pred_a.shape} differs from reference shape {ref_a.shape}")
    sp = _check_spacing(spacing)
    edges = _check_bins(lesion_size_bins_mm)
    if lesion_match not in LESION_MATCH_RULES:
        raise ValueError(f"unknown lesion_match {lesion_match!r}; available: {', '.join(LESION_MATCH_RULES)}")
    threshold = _check_failure_dice(failure_dice)

    notes: list[str] = []
    result: dict[str, Any] = {"spacing_mm": sp}
    result.update(_overlap_metrics(np.isin(pred_a, _LIVER_VALUES), np.isin(ref_a, _LIVER_VALUES), sp, "liver", notes))
    pred_t, ref_t = pred_a == _TUMOR_VALUE, ref_a == _TUMOR_VALUE
    result.update(_overlap_metrics(pred_t, ref_t, sp, "tumor", notes))
    counts, lesions = _lesion_detection(pred_t, ref_t, sp, edges, lesion_match)
    result.update(counts)
    p, r, f1 = detection_scores(counts["lesion_tp"], counts["lesion_fn"], counts["lesion_fp"])
    result.update({"lesion_precision": p, "lesion_recall": r, "lesion_f1": f1})
    result["lesion_by_size"] = lesion_counts_by_size(lesions, edges)
    if math.isnan(p):
        notes.append("lesion precision undefined: no predicted lesion")
    if math.isnan(r):
        notes.append("lesion recall undefined: no reference lesion")
    result["failure"] = bool(result["liver_dice"] < threshold)
    result["notes"] = notes
    result["lesions"] = lesions
    return result


# ----------------------------------------------------------------------------------------------------------------
# summary over cases
# ----------------------------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, Any]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(float(x))], dtype=float)
    if v.size == 0:
        return {"mean": NAN, "sd": NAN, "median": NAN, "n": 0}
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else NAN,
        "median": float(np.median(v)),
        "n": int(v.size),
    }


def _detection_block(tp: int, fn: int, fp: int) -> dict[str, Any]:
    p, r, f1 = detection_scores(tp, fn, fp)
    return {"tp": tp, "fn": fn, "fp": fp, "precision": p, "recall": r, "f1": f1}


def summarize(
    cases: Sequence[dict[str, Any]],
    *,
    lesion_size_bins_mm: Sequence[float] = DEFAULT_SIZE_BINS_MM,
    failure_dice: float = DEFAULT_FAILURE_DICE,
) -> dict[str, Any]:
    """Summary of :func:`evaluate_case` results (each may carry a ``"case"`` id).

    Returns mean, SD (n-1) and median over cases of each metric in :data:`SUMMARY_METRICS` (NaN values left out;
    ``n`` says how many counted), global Dice of liver and tumor, pooled lesion detection overall and per size bin,
    false positives per case and the failure rate.
    """
    names = size_bin_names(lesion_size_bins_mm)
    n = len(cases)
    metrics = {m: _stats([c[m] for c in cases]) for m in SUMMARY_METRICS}
    global_dice = {}
    for s in _STRUCTURES:
        inter = sum(c[f"{s}_intersection_voxels"] for c in cases)
        total = sum(c[f"{s}_ref_voxels"] + c[f"{s}_pred_voxels"] for c in cases)
        global_dice[s] = 2.0 * inter / total if total else (1.0 if n else NAN)
    tp = sum(c["lesion_tp"] for c in cases)
    fn = sum(c["lesion_fn"] for c in cases)
    fp = sum(c["lesion_fp"] for c in cases)
    by_size: dict[str, dict[str, Any]] = {}
    for b in names:
        rows = [les for c in cases for les in c["lesions"] if les["size_bin"] == b]
        block = _detection_block(*(sum(r["status"] == st for r in rows) for st in ("TP", "FN", "FP")))
        block["num_reference_lesions"] = block["tp"] + block["fn"]
        by_size[b] = block
    failures = [c.get("case", str(i)) for i, c in enumerate(cases) if c["failure"]]
    overall = _detection_block(tp, fn, fp)
    overall["num_reference_lesions"] = tp + fn
    return {
        "num_cases": n,
        "metrics": metrics,
        "global_dice": global_dice,
        "lesion_detection": {"overall": overall, "by_size": by_size},
        "fp_per_case": fp / n if n else NAN,
        "failure": {
            "threshold_liver_dice": float(failure_dice),
            "count": len(failures),
            "rate": len(failures) / n if n else NAN,
            "cases": failures,
        },
    }


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


_METRIC_LABELS = {
    "liver_dice": "Liver Dice",
    "liver_hd95_mm": "Liver HD95 (mm)",
    "liver_assd_mm": "Liver ASSD (mm)",
    "liver_vol_err_ml": "Liver volume error (mL)",
    "liver_vol_err_pct": "Liver volume error (%)",
    "tumor_dice": "Tumor Dice",
    "tumor_hd95_mm": "Tumor HD95 (mm)",
    "tumor_assd_mm": "Tumor ASSD (mm)",
    "tumor_vol_err_ml": "Tumor volume error (mL)",
    "tumor_vol_err_pct": "Tumor volume error (%)",
    "lesion_precision": "Lesion precision (per case)",
    "lesion_recall": "Lesion recall (per case)",
    "lesion_f1": "Lesion F1 (per case)",
    "lesion_fp": "False-positive lesions per case",
}


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown: a metric table, global Dice, lesion detection by size, failures, problems."""
    lines = [f"## Evaluation: {summary['num_cases']} case(s)", ""]
    lines += ["| Metric | Mean ± SD | Median | n |", "|---|---|---|---|"]
    for m, st in summary["metrics"].items():
        label = _METRIC_LABELS.get(m, m)
        lines.append(f"| {label} | {_fmt(st['mean'])} ± {_fmt(st['sd'])} | {_fmt(st['median'])} | {st['n']} |")
    gd = summary["global_dice"]
    lines += ["", f"Global Dice: liver {_fmt(gd['liver'])}, tumor {_fmt(gd['tumor'])}", ""]
    lines += [
        "| Lesions | Reference | TP | FN | FP | Precision | Recall | F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    det = summary["lesion_detection"]
    for name, b in [("all", det["overall"]), *det["by_size"].items()]:
        lines.append(
            f"| {name} | {b['num_reference_lesions']} | {b['tp']} | {b['fn']} | {b['fp']} | {_fmt(b['precision'])} | "
            f"{_fmt(b['recall'])} | {_fmt(b['f1'])} |"
        )
    f = summary["failure"]
    lines += [
        "",
        f"False-positive lesions per case: {_fmt(summary['fp_per_case'], 2)}",
        f"Failures (liver Dice < {f['threshold_liver_dice']:g}): {f['count']} of {summary['num_cases']}"
        + (f" ({', '.join(f['cases'])})" if f["cases"] else ""),
    ]
    for key, title in (
        ("errors", "Cases not evaluated"),
        ("missing_predictions", "References without a prediction"),
        ("unmatched_predictions", "Predictions without a reference"),
    ):
        items = summary.get(key) or []
        if items:
            lines += ["", f"{title} ({len(items)}):"]
            for it in items:
                lines.append(f"- {it['case']}: {it['error']}" if isinstance(it, dict) else f"- {it}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# folders
# ----------------------------------------------------------------------------------------------------------------


def _nifti_files(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and not p.name.startswith(".") and str(p.name).endswith(NIFTI_SUFFIXES))


def _stem(path: Path) -> str:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def _reference_folder(ref_dir: Path) -> Path:
    if not ref_dir.is_dir():
        raise InputError(ref_dir, "reference folder not found")
    if not _nifti_files(ref_dir, recursive=False) and (ref_dir / "labelsTs").is_dir():
        logger.info("%s holds no NIfTI file; using its labelsTs folder", ref_dir)
        return ref_dir / "labelsTs"
    return ref_dir


def match_cases(
    pred_dir: Path, ref_dir: Path, pred_suffix: str = ""
) -> tuple[dict[str, tuple[Path, Path]], list[str], list[str], dict[str, list[Path]]]:
    """Pair prediction files with reference labels by case id.

    References are ``REF_DIR/{case}.nii.gz`` (or ``REF_DIR/labelsTs/{case}.nii.gz`` when ``REF_DIR`` holds no
    NIfTI file). Predictions are searched in ``pred_dir`` and its sub-folders; with ``pred_suffix`` a file must be
    named ``{case}{pred_suffix}.nii.gz``, without it ``{case}``, ``{case}_0000_seg`` and ``{case}_seg`` are tried.

    Returns:
        ``(matched, missing_predictions, unmatched_predictions, ambiguous)``: ``matched`` maps case id to
        ``(pred_path, ref_path)``; ``missing_predictions`` lists reference cases without a prediction;
        ``unmatched_predictions`` lists prediction files (relative to ``pred_dir``) without a reference;
        ``ambiguous`` maps a case id to the several prediction files that claim it.

    Raises:
        InputError: a folder does not exist.
    """
    pred_dir, ref_dir = Path(pred_dir), _reference_folder(Path(ref_dir))
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction folder not found")
    refs = {_stem(p): p for p in _nifti_files(ref_dir, recursive=False)}
    suffixes = (pred_suffix,) if pred_suffix else AUTO_PRED_SUFFIXES
    claims: dict[str, list[Path]] = {}
    unmatched: list[str] = []
    for p in _nifti_files(pred_dir, recursive=True):
        stem = _stem(p)
        candidates = (stem[: len(stem) - len(s)] for s in suffixes if stem.endswith(s))
        case = next((c for c in candidates if c in refs), None)
        if case is None:
            unmatched.append(str(p.relative_to(pred_dir)))
        else:
            claims.setdefault(case, []).append(p)
    matched = {c: (ps[0], refs[c]) for c, ps in sorted(claims.items()) if len(ps) == 1}
    ambiguous = {c: ps for c, ps in sorted(claims.items()) if len(ps) > 1}
    missing = sorted(c for c in refs if c not in claims)
    return matched, missing, unmatched, ambiguous


def _grid_problem(
    pred_path: Path, ref_path: Path, pred_shape: tuple, ref_shape: tuple, pa: np.ndarray, ra: np.ndarray
) -> str | None:
    if pred_shape != ref_shape:
        return f"prediction has shape {pred_shape} but reference {ref_path} has shape {ref_shape}"
    diff = float(np.max(np.abs(pa[:3, :] - ra[:3, :])))
    if diff > GRID_ATOL_MM:
        return (
            f"prediction and reference {ref_path} are on different grids (affines differ by up to "
            f"{diff:.4g} mm; tolerance {GRID_ATOL_MM:g} mm); resample the prediction onto the reference grid first"
        )
    return None


def _csv_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (tuple, list)):
        if all(isinstance(x, (int, float)) for x in v):
            return " ".join(_fmt_num(x) for x in v)
        return "; ".join(map(str, v))
    return v


def _fmt_num(x: float) -> str:
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: _csv_value(r.get(k)) for k in columns})


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"liverseg": __version__, "python": platform.python_version()}
    for pkg in ("monai", "torch", "numpy", "scipy", "nibabel"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def evaluate_folder(
    pred_dir: Path,
    ref_dir: Path,
    *,
    out_dir: Path,
    pred_suffix: str = "",
    failure_dice: float = DEFAULT_FAILURE_DICE,
    lesion_size_bins_mm: Sequence[float] = DEFAULT_SIZE_BINS_MM,
    lesion_match: str = "overlap",
    command: str | None = None,
    case_results: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate every prediction in ``pred_dir`` against the reference label of the same case in ``ref_dir``.

    Files are paired by :func:`match_cases`. A prediction must be on its reference's grid (same shape, affines equal
    within :data:`GRID_ATOL_MM` mm); otherwise, or when a file is unreadable or holds invalid labels, the case is
    reported under ``errors`` naming the files (nothing is resampled). Spacing comes from the reference's affine.

    Writes, atomically, into ``out_dir``: ``metrics_per_case.csv`` (one row per matched case, errors included
    with ``status=error``), ``metrics_per_lesion.csv`` (reference lesions TP/FN and FP predicted lesions),
    ``summary.json`` (see :func:`summarize`, plus ``errors``, ``missing_predictions``, ``unmatched_predictions``
    and ``conventions``), ``summary.md`` and ``provenance.json``.

    ``case_results``, when given, is extended with the :func:`evaluate_case` result of each evaluated case (plus
    its ``"case"`` id), for callers that need more than the summary.

    Returns:
        the summary dict as written to ``summary.json`` (NaN as ``float('nan')``).

    Raises:
        InputError: a folder is missing, or no prediction matches a reference case.
        ValueError: bad ``failure_dice``, ``lesion_size_bins_mm`` or ``lesion_match``.
    """
    threshold = _check_failure_dice(failure_dice)
    edges = _check_bins(lesion_size_bins_mm)
    if lesion_match not in LESION_MATCH_RULES:
        raise ValueError(f"unknown lesion_match {lesion_match!r}; available: {', '.join(LESION_MATCH_RULES)}")
    pred_dir, ref_dir, out_dir = Path(pred_dir), Path(ref_dir), Path(out_dir)
    matched, missing, unmatched, ambiguous = match_cases(pred_dir, ref_dir, pred_suffix)
    if not matched and not ambiguous:
        raise InputError(
            pred_dir,
            f"no prediction matches a reference case in {_reference_folder(ref_dir)} (predictions are matched as "
            f"{{case}}{pred_suffix or '[' + '|'.join(s for s in AUTO_PRED_SUFFIXES if s) + ']'}.nii.gz; "
            f"{len(unmatched)} prediction file(s) found, {len(missing)} reference case(s))",
        )
    started = datetime.datetime.now(datetime.timezone.utc)
    case_rows: list[dict[str, Any]] = []
    ok_cases: list[dict[str, Any]] = []
    lesion_rows: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for case, paths in ambiguous.items():
        msg = "several predictions for this case: " + ", ".join(str(p) for p in paths)
        errors.append({"case": case, "error": msg})
        case_rows.append({"case": case, "status": "error", "error": msg})
    for case, (pred_path, ref_path) in matched.items():
        row: dict[str, Any] = {"case": case, "pred_file": str(pred_path), "ref_file": str(ref_path)}
        try:
            ref, ref_aff = read_nifti(ref_path)
            pred, pred_aff = read_nifti(pred_path)
            problem = _grid_problem(pred_path, ref_path, pred.shape, ref.shape, pred_aff, ref_aff)
            if problem:
                raise InputError(pred_path, problem)
            for arr, path, what in ((pred, pred_path, "prediction"), (ref, ref_path, "reference")):
                try:
                    _check_label(arr, what)
                except ValueError as e:
                    raise InputError(path, str(e)) from e
            res = evaluate_case(
                pred,
                ref,
                spacing_of(ref_aff),
                lesion_size_bins_mm=edges,
                lesion_match=lesion_match,
                failure_dice=threshold,
            )
        except InputError as e:
            logger.warning("case %s not evaluated: %s", case, e)
            errors.append({"case": case, "error": str(e)})
            row.update({"status": "error", "error": str(e)})
            case_rows.append(row)
            continue
        res["case"] = case
        row.update({"status": "ok", "error": ""}, **{k: v for k, v in res.items() if k != "lesions"})
        case_rows.append(row)
        ok_cases.append(res)
        lesion_rows += [{"case": case, **les} for les in res["lesions"]]
        logger.info("%s: liver Dice %.4f, tumor Dice %.4f", case, res["liver_dice"], res["tumor_dice"])
    for case in missing:
        logger.warning("reference case %s has no prediction in %s", case, pred_dir)
    for name in unmatched:
        logger.warning("prediction %s matches no reference case", pred_dir / name)

    if case_results is not None:
        case_results.extend(ok_cases)
    summary = summarize(ok_cases, lesion_size_bins_mm=edges, failure_dice=threshold)
    summary.update(
        {
            "num_cases_matched": len(matched) + len(ambiguous),
            "errors": errors,
            "missing_predictions": missing,
            "unmatched_predictions": unmatched,
            "conventions": {
                "liver": "labels 1 and 2 (liver including tumors, LiTS convention); tumor: label 2",
                "dice_empty": "Dice of two empty masks = 1; one empty mask = 0",
                "surface_distances": "HD95 = MONAI compute_hausdorff_distance(percentile=95), ASSD = MONAI "
                "compute_average_surface_distance(symmetric=True), mm; NaN when a mask is empty",
                "lesions": "26-connected components of label 2; a reference lesion is detected if any predicted tumor "
                f"voxel overlaps it (lesion_match={lesion_match!r}); FP = predicted lesion overlapping no reference "
                "lesion",
                "lesion_size": f"equivalent-sphere diameter, bins {size_bin_names(edges)} (lower edge inclusive); "
                "TP/FN binned by reference size, FP by predicted size",
                "detection_zero_division": "no lesion on either side: P=R=F1=1; no predicted lesion: P undefined; "
                "no reference lesion: R undefined; F1=0 when TP=0 otherwise; pooled over cases for the totals",
                "global_dice": "2*sum(intersections)/sum(|pred|+|ref|) over cases, voxel counts",
                "failure": f"liver Dice < {threshold:g}",
                "sd": "sample standard deviation (n-1); NaN values left out, n counts the rest",
            },
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "metrics_per_case.csv", PER_CASE_COLUMNS, case_rows)
    _write_csv(out_dir / "metrics_per_lesion.csv", PER_LESION_COLUMNS, lesion_rows)
    write_json(out_dir / "summary.json", summary)
    with atomic_path(out_dir / "summary.md") as tmp:
        tmp.write_text(summary_markdown(summary))
    provenance = {
        "command": command
        or (
            f"evaluate_folder({str(pred_dir)!r}, {str(ref_dir)!r}, out_dir={str(out_dir)!r}, "
            f"pred_suffix={pred_suffix!r}, failure_dice={threshold!r}, lesion_size_bins_mm={list(edges)!r}, "
            f"lesion_match={lesion_match!r})"
        ),
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "parameters": {
            "pred_suffix": pred_suffix,
            "failure_dice": threshold,
            "lesion_size_bins_mm": list(edges),
            "lesion_match": lesion_match,
            "grid_atol_mm": GRID_ATOL_MM,
        },
        "inputs": {
            "pred_dir": str(pred_dir.resolve()),
            "ref_dir": str(ref_dir.resolve()),
            "cases": {
                c: {"prediction": str(p.resolve()), "reference": str(r.resolve())} for c, (p, r) in matched.items()
            },
        },
    }
    write_json(out_dir / "provenance.json", provenance)
    logger.info("wrote evaluation of %d case(s) to %s", len(ok_cases), out_dir)
    return summary


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------


def _run_cli(args: argparse.Namespace) -> int:
    try:
        bins = tuple(float(b) for b in args.size_bins.split(",")) if args.size_bins else ()
    except ValueError as e:
        raise InputError(args.out, f"--size-bins must be comma-separated numbers, got {args.size_bins!r}") from e
    try:
        summary = evaluate_folder(
            args.pred_dir,
            args.ref_dir,
            out_dir=args.out,
            pred_suffix=args.pred_suffix,
            failure_dice=args.failure_dice,
            lesion_size_bins_mm=bins,
            command=shlex.join(
                ["liverseg", "evaluate", str(args.pred_dir), str(args.ref_dir), "--out", str(args.out)]
                + ["--failure-dice", f"{args.failure_dice:g}", "--pred-suffix", args.pred_suffix]
                + ["--size-bins", args.size_bins]
            ),
        )
    except ValueError as e:
        raise InputError(args.out, str(e)) from e
    print(summary_markdown(summary), end="")
    print(f"\nWrote metrics_per_case.csv, metrics_per_lesion.csv, summary.json/.md, provenance.json to {args.out}")
    trouble = summary["errors"] or summary["missing_predictions"] or summary["unmatched_predictions"]
    return 1 if trouble else 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``liverseg evaluate``."""
    p = sub.add_parser(
        "evaluate",
        help="score predicted segmentations against reference labels",
        description="Pair predictions with reference labels by case id ({case}.nii.gz or {case}_0000_seg.nii.gz), "
        "compute liver (labels 1+2) and tumor (label 2) Dice, HD95, ASSD, volume errors and lesion detection per case "
        "and over the set, write metrics_per_case.csv, metrics_per_lesion.csv, summary.json, summary.md and "
        "provenance.json, and print the summary. Exit code 0 if every case was evaluated, 1 if a case could not be "
        "evaluated or a file found no partner, 2 on bad input.",
    )
    p.add_argument("pred_dir", type=Path, help="folder of predicted label volumes (searched recursively)")
    p.add_argument("ref_dir", type=Path, help="folder of reference labels, e.g. Dataset001_Liver/labelsTs")
    p.add_argument("--out", type=Path, required=True, help="output folder for the metrics")
    p.add_argument(
        "--failure-dice",
        type=float,
        default=DEFAULT_FAILURE_DICE,
        help="liver Dice below this is a failure (default: 0.5)",
    )
    p.add_argument(
        "--pred-suffix",
        default="",
        help="prediction file name suffix before .nii.gz (default: try none, _0000_seg and _seg)",
    )
    p.add_argument(
        "--size-bins",
        default=",".join(f"{b:g}" for b in DEFAULT_SIZE_BINS_MM),
        help="lesion size bin edges in mm, comma-separated (default: 10,20)",
    )
    p.set_defaults(func=_run_cli)
