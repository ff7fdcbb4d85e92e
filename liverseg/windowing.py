"""Which CT window keeps liver and tumors apart? Measured on labelled data, before any training.

For each window (centre/width in HU, mapped to [0, 1] and clipped, as ``ScaleIntensityRange`` does in the bundles)
and each label, the fraction of voxels clipped at the top and at the bottom of the window, and the overlap of the
windowed liver and tumor intensity histograms (0 = perfectly separable, 1 = identical). A window that clips
much of the liver or of the tumors throws away the contrast the network needs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from liverseg import LABELS
from liverseg.dataset import list_cases
from liverseg.errors import InputError
from liverseg.imageio import read_nifti

logger = logging.getLogger(__name__)

DEFAULT_WINDOWS_FILE = Path(__file__).resolve().parents[1] / "configs" / "windows.json"


def load_windows(path: str | Path = DEFAULT_WINDOWS_FILE) -> dict[str, tuple[float, float]]:
    """``{name: (hu_min, hu_max)}`` from a JSON file of ``{name: {"center": C, "width": W}}``."""
    raw = json.loads(Path(path).read_text())
    out = {}
    for name, w in raw.items():
        if name.startswith("_"):
            continue
        if w["width"] <= 0:
            raise ValueError(f"window {name!r}: width must be > 0, got {w['width']}")
        out[name] = (w["center"] - w["width"] / 2.0, w["center"] + w["width"] / 2.0)
    return out


def _overlap(a: np.ndarray, b: np.ndarray, bins: int = 64) -> float:
    """Histogram overlap (sum of bin-wise minima of the two normalized histograms) on [0, 1]."""
    if a.size == 0 or b.size == 0:
        return float("nan")
    ha, _ = np.histogram(a, bins=bins, range=(0.0, 1.0))
    hb, _ = np.histogram(b, bins=bins, range=(0.0, 1.0))
    return float(np.minimum(ha / ha.sum(), hb / hb.sum()).sum())


def window_stats(
    root: str | Path, windows: dict[str, tuple[float, float]] | None = None, split: str = "Tr"
) -> dict[str, Any]:
    """Clipping fractions per label and liver/tumor histogram overlap for each window, over a labelled dataset."""
    windows = windows or load_windows()
    cases = [c for c in list_cases(root, split) if c.label is not None]
    if not cases:
        raise InputError(root, f"no labelled cases in images{split}/labels{split}")
    values: dict[str, list[np.ndarray]] = {"liver": [], "tumor": []}
    for n, case in enumerate(cases, 1):
        image, _ = read_nifti(case.image)
        label, _ = read_nifti(case.label)  # type: ignore[arg-type]
        for name in values:
            values[name].append(np.asarray(image[label == LABELS[name]], dtype=np.float32))
        logger.info("[%d/%d] %s", n, len(cases), case.case_id)
    hu = {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in values.items()}
    result: dict[str, Any] = {
        "dataset": str(root),
        "cases": len(cases),
        "hu_median": {k: float(np.median(v)) if v.size else None for k, v in hu.items()},
    }
    per_window = {}
    for name, (lo, hi) in windows.items():
        entry: dict[str, Any] = {"hu_min": lo, "hu_max": hi}
        scaled = {}
        for k, v in hu.items():
            entry[f"{k}_clipped_high"] = float(np.mean(v >= hi)) if v.size else None
            entry[f"{k}_clipped_low"] = float(np.mean(v <= lo)) if v.size else None
            scaled[k] = np.clip((v - lo) / (hi - lo), 0.0, 1.0)
        entry["liver_tumor_overlap"] = _overlap(scaled["liver"], scaled["tumor"])
        per_window[name] = entry
    result["windows"] = per_window
    return result


def format_table(stats: dict[str, Any]) -> str:
    head = "| window | HU range | liver clipped (high/low) | tumor clipped (high/low) | liver-tumor overlap |"
    lines = [head, "|---|---|---|---|---|"]
    for name, w in stats["windows"].items():

        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.1f}%"

        lines.append(
            f"| {name} | [{w['hu_min']:g}, {w['hu_max']:g}] | {pct(w['liver_clipped_high'])} / "
            f"{pct(w['liver_clipped_low'])} | {pct(w['tumor_clipped_high'])} / {pct(w['tumor_clipped_low'])} | "
            f"{w['liver_tumor_overlap']:.3f} |"
        )
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    windows = load_windows(args.windows) if args.windows else None
    stats = window_stats(args.root, windows, split=args.split)
    print(f"{stats['cases']} cases; median HU liver {stats['hu_median']['liver']}, tumor {stats['hu_median']['tumor']}")
    print(format_table(stats))
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2) + "\n")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "window-stats", help="compare CT windows on a labelled dataset: clipping per label, liver/tumor overlap"
    )
    p.add_argument("root", type=Path, help="dataset in nnU-Net raw layout")
    p.add_argument("--windows", type=Path, help=f"JSON of windows (default {DEFAULT_WINDOWS_FILE.name})")
    p.add_argument("--split", default="Tr", choices=("Tr", "Ts"))
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    p.set_defaults(func=_run)
