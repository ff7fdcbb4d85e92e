"""Preprocessing preview of one CT case: the pictures the report shows for intensity preprocessing.

:func:`render_preview` writes one PNG with four panels of the same axial slice:

(a) the CT slice in Hounsfield units (display range -1000..1000, with a colorbar);
(b) the histogram of the volume after windowing (MONAI ``ScaleIntensityRange`` to [0, 1], clipped);
(c) the windowed slice, with the liver and tumor contours when a label is given;
(d) the slice after histogram equalization (MONAI ``HistogramNormalize`` of the windowed volume).

The transforms are MONAI's, as in the bundles' preprocessing, so the pictures show what the networks see.
Slices are shown in radiological convention: the volume is reoriented to the closest canonical (RAS) orientation,
the patient's right is on the image's left and anterior is up.

Command line::

    liverseg preview Dataset001_Liver --case liver_003 --out preview.png
    liverseg preview --image ct.nii.gz --label seg.nii.gz --out preview.png --window-center 40 --window-width 400
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from liverseg import LABELS
from liverseg.dataset import CasePaths, case_paths, list_cases
from liverseg.errors import InputError
from liverseg.imageio import atomic_path, read_nifti

logger = logging.getLogger(__name__)

__all__ = ["PreviewData", "find_case", "axial_slice_to_show", "compute_preview", "render_preview", "register_cli"]

HU_DISPLAY_RANGE = (-1000.0, 1000.0)
"""Display range of panel (a)."""
FIGSIZE = (11.0, 9.5)
DPI = 100
"""The PNG is ``FIGSIZE * DPI`` pixels (1100 x 950)."""
CONTOUR_COLORS = {"liver": "#00d040", "tumor": "#ff3030"}


def find_case(root: str | Path, case_id: str) -> CasePaths:
    """Find ``case_id`` in ``imagesTr`` then ``imagesTs`` of the dataset at ``root`` (label ``None`` if absent)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "dataset folder not found")
    available: list[str] = []
    for split in ("Tr", "Ts"):
        try:
            cases = list_cases(root, split)
        except ValueError as e:  # a misnamed file in images{split}/
            raise InputError(root / f"images{split}", f"{e}; run `liverseg verify` on the dataset") from e
        for c in cases:
            if c.case_id == case_id:
                return c
        available += [c.case_id for c in cases]
    try:
        case_paths(root, case_id)
    except ValueError as e:
        raise InputError(root, str(e)) from e
    if not available:
        raise InputError(root, f"case {case_id!r} not found: no image in imagesTr/ or imagesTs/")
    shown = ", ".join(available[:8]) + (f", ... ({len(available)} cases)" if len(available) > 8 else "")
    raise InputError(root, f"case {case_id!r} not found in imagesTr/ or imagesTs/; available: {shown}")


def axial_slice_to_show(label_ras: np.ndarray | None, num_slices: int) -> int:
    """Index (in the canonical RAS volume) of the axial slice with the most liver voxels, else the middle one.

    Liver voxels are those labelled liver or tumor (the tumor is inside the liver).
    """
    if label_ras is not None:
        per_slice = np.count_nonzero(np.isin(label_ras, (LABELS["liver"], LABELS["tumor"])), axis=(0, 1))
        if per_slice.max() > 0:
            return int(np.argmax(per_slice))
    return num_slices // 2


def _to_display(slice_ras: np.ndarray) -> np.ndarray:
    """Axial RAS slice indexed [i (to the right), j (to anterior)] -> rows top = anterior, columns left = right."""
    return np.asarray(slice_ras).T[::-1, ::-1]


def _load_canonical(image: Path, label: Path | None) -> tuple[np.ndarray, np.ndarray | None, Any, int, bool, bool]:
    """Image (and label) reoriented to the closest canonical orientation.

    Returns the arrays, the canonical image, the number of axial slices, and whether the file's axial axis runs
    from superior to inferior (then file slice ``k`` is canonical slice ``n - 1 - k``), and whether the image
    holds whole numbers.
    """
    data, affine = read_nifti(image)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(image, "affine is singular or not finite; cannot orient the slice")
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine))
    ornt = nib.io_orientation(affine)
    axial_file_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    flipped = bool(ornt[axial_file_axis, 1] < 0)
    lab_ras = None
    if label is not None:
        lab, lab_affine = read_nifti(label)
        if lab.shape != data.shape:
            raise InputError(label, f"label shape {tuple(lab.shape)} differs from image shape {tuple(data.shape)}")
        if not np.allclose(lab_affine, affine, atol=1e-3):
            diff = float(np.nanmax(np.abs(lab_affine - affine)))
            raise InputError(label, f"label affine differs from the image's ({image.name}) by up to {diff:.4g} mm")
        lab_img = nib.as_closest_canonical(nib.Nifti1Image(np.rint(lab).astype(np.int16), affine))
        lab_ras = np.asarray(lab_img.dataobj)
    return np.asarray(img.dataobj), lab_ras, img, int(img.shape[2]), flipped, data.dtype.kind in "iu"


@dataclass
class PreviewData:
    """The arrays drawn by :func:`render_preview`, already in display orientation (rows: anterior at the top;
    columns: the patient's right on the left)."""

    hu: np.ndarray
    windowed: np.ndarray
    equalized: np.ndarray
    label: np.ndarray | None
    windowed_volume: np.ndarray
    label_volume: np.ndarray | None
    slice_index: int
    """Axial slice shown, as indexed along the file's slice axis."""
    num_slices: int
    aspect: float
    """Displayed pixel height / width (in-plane spacing along anterior / along right)."""
    window: tuple[float, float]
    """HU mapped to 0 and 1 by ``ScaleIntensityRange``."""
    integer_valued: bool
    """Whether the volume holds whole HU values (then histogram bins are aligned on them)."""


def compute_preview(
    image: str | Path,
    *,
    label: str | Path | None = None,
    window_center: float = 0.0,
    window_width: float = 250.0,
    slice_index: int | None = None,
    num_bins: int = 256,
) -> PreviewData:
    """Load, reorient, window and equalize one volume; pick the slice. Arguments as in :func:`render_preview`."""
    from monai.transforms import HistogramNormalize, ScaleIntensityRange

    image = Path(image)
    label = None if label is None else Path(label)
    if not (np.isfinite(window_width) and window_width > 0):
        raise InputError(image, f"window width must be a positive number of HU, got {window_width}")
    if not np.isfinite(window_center):
        raise InputError(image, f"window center must be a finite number of HU, got {window_center}")
    if int(num_bins) != num_bins or num_bins < 2:
        raise InputError(image, f"num_bins must be an integer >= 2, got {num_bins}")

    vol, lab, canonical, n_slices, flipped, integer_valued = _load_canonical(image, label)
    if slice_index is None:
        k = axial_slice_to_show(lab, n_slices)
        file_k = n_slices - 1 - k if flipped else k
    else:
        if int(slice_index) != slice_index or not 0 <= slice_index < n_slices:
            raise InputError(
                image, f"slice {slice_index} out of range: the volume has {n_slices} axial slices (0..{n_slices - 1})"
            )
        file_k = int(slice_index)
        k = n_slices - 1 - file_k if flipped else file_k
    lo, hi = float(vol.min()), float(vol.max())
    if lo > -500:
        logger.warning(
            "%s: intensities [%.4g, %.4g] do not look like HU (no air); the window may not apply", image, lo, hi
        )

    a_min, a_max = window_center - window_width / 2, window_center + window_width / 2
    scale = ScaleIntensityRange(a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)
    windowed = np.asarray(scale(vol[None]))[0]
    equalized = np.asarray(HistogramNormalize(num_bins=int(num_bins), min=0, max=1)(windowed[None]))[0]
    zooms = canonical.header.get_zooms()[:3]
    return PreviewData(
        hu=_to_display(vol[:, :, k]),
        windowed=_to_display(windowed[:, :, k]),
        equalized=_to_display(equalized[:, :, k]),
        label=None if lab is None else _to_display(lab[:, :, k]),
        windowed_volume=windowed,
        label_volume=lab,
        slice_index=file_k,
        num_slices=n_slices,
        aspect=float(zooms[1] / zooms[0]),
        window=(a_min, a_max),
        integer_valued=integer_valued,
    )


def _histogram_edges(data: PreviewData, window_width: float, num_bins: int) -> np.ndarray:
    """Bin edges in [0, 1] for panel (b). For whole-HU volumes each bin holds the same number of HU values
    (edges half-way between them), so the quantization does not show as empty bins."""
    if not data.integer_valued:
        return np.linspace(0.0, 1.0, num_bins + 1)
    a_min, a_max = data.window
    step = max(1, int(np.ceil(window_width / num_bins)))
    hu_edges = np.arange(np.floor(a_min) - 0.5, np.ceil(a_max) + 0.5 + step, step)
    return (hu_edges - a_min) / window_width


def render_preview(
    image: str | Path,
    out_png: str | Path,
    *,
    label: str | Path | None = None,
    window_center: float = 0.0,
    window_width: float = 250.0,
    slice_index: int | None = None,
    num_bins: int = 256,
    note: str | None = None,
) -> Path:
    """Write the four-panel preprocessing preview of one CT volume to ``out_png``.

    Args:
        image: CT volume in HU (NIfTI).
        out_png: the PNG to write (atomically; parent folders are created).
        label: optional label (liver 1, tumor 2) on the image's grid: picks the slice and draws contours.
        window_center: center of the HU window (``ScaleIntensityRange`` maps ``center -/+ width/2`` to 0..1).
        window_width: width of the HU window, > 0.
        slice_index: axial slice to show, as indexed along the file's slice axis; default: the slice with the
            most liver voxels when ``label`` is given, else the middle slice.
        num_bins: histogram bins, for panel (b) and for ``HistogramNormalize``.
        note: an extra line under the title (the CLI shows a randomized phantom's drawn domain there).

    Returns:
        ``out_png``.

    Raises:
        InputError: unreadable or mismatched files, a slice out of range, a window width <= 0.
    """
    from matplotlib.figure import Figure

    image, out_png = Path(image), Path(out_png)
    data = compute_preview(
        image,
        label=label,
        window_center=window_center,
        window_width=window_width,
        slice_index=slice_index,
        num_bins=num_bins,
    )
    a_min, a_max = data.window
    window_txt = f"W {window_width:g} / C {window_center:g} HU"

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    (ax_hu, ax_hist), (ax_win, ax_eq) = fig.subplots(2, 2)
    im = ax_hu.imshow(data.hu, cmap="gray", vmin=HU_DISPLAY_RANGE[0], vmax=HU_DISPLAY_RANGE[1], aspect=data.aspect)
    fig.colorbar(im, ax=ax_hu, label="HU", shrink=0.85)
    ax_hu.set_title(f"(a) CT in HU\ndisplayed {HU_DISPLAY_RANGE[0]:g}..{HU_DISPLAY_RANGE[1]:g} HU")

    bins = _histogram_edges(data, window_width, int(num_bins))
    ax_hist.hist(data.windowed_volume.ravel(), bins=bins, color="0.35", label="whole volume")
    if data.label_volume is not None and np.any(data.label_volume > 0):
        liver_values = data.windowed_volume[data.label_volume > 0].ravel()
        ax_hist.hist(liver_values, bins=bins, color=CONTOUR_COLORS["liver"], alpha=0.8, label="liver + tumor")
    ax_hist.legend(loc="upper center")
    ax_hist.set_yscale("log")
    ax_hist.set_xlim(-0.02, 1.02)
    ax_hist.set_xlabel(f"windowed intensity (0 = {a_min:g} HU, 1 = {a_max:g} HU)")
    ax_hist.set_ylabel("voxels (log scale)")
    ax_hist.set_title(f"(b) histogram after ScaleIntensityRange\nwindow {window_txt}")

    ax_win.imshow(data.windowed, cmap="gray", vmin=0, vmax=1, aspect=data.aspect)
    ax_win.set_title(f"(c) windowed\n{window_txt}")
    if data.label is not None:
        for name, mask in (("liver", data.label > 0), ("tumor", data.label == LABELS["tumor"])):
            if mask.any():
                ax_win.contour(mask.astype(float), levels=[0.5], colors=CONTOUR_COLORS[name], linewidths=1.2)
                ax_win.plot([], [], color=CONTOUR_COLORS[name], label=name)
        if ax_win.get_legend_handles_labels()[0]:
            ax_win.legend(loc="lower right", fontsize="small", framealpha=0.6)
    ax_eq.imshow(data.equalized, cmap="gray", vmin=0, vmax=1, aspect=data.aspect)
    ax_eq.set_title(f"(d) after HistogramNormalize\nof the windowed volume, {int(num_bins)} bins")

    for ax in (ax_hu, ax_win, ax_eq):
        ax.set_xticks([])
        ax.set_yticks([])
        marker = {"color": "yellow", "fontsize": 12, "fontweight": "bold", "transform": ax.transAxes}
        ax.text(0.02, 0.5, "R", ha="left", va="center", **marker)
        ax.text(0.98, 0.5, "L", ha="right", va="center", **marker)
        ax.text(0.5, 0.98, "A", ha="center", va="top", **marker)
        ax.text(0.5, 0.02, "P", ha="center", va="bottom", **marker)
    if slice_index is not None:
        how = "chosen"
    else:
        how = "most liver" if label is not None else "middle"
    fig.suptitle(
        f"{image.name}: axial slice {data.slice_index} (file index 0..{data.num_slices - 1}; {how}), "
        "radiological view: patient's right on the left" + (f"\n{note}" if note else ""),
        fontsize=12,
    )
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    logger.info("%s: wrote preview of slice %d (%s) to %s", image, data.slice_index, window_txt, out_png)
    return out_png


def domain_note(root: str | Path, case_id: str) -> str | None:
    """Two lines describing a domain-randomized phantom's draw (from ``dataset.json``), or None."""
    try:
        meta = json.loads((Path(root) / "dataset.json").read_text())
        d = meta["phantoms"][case_id]["domain"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    shape = d["liver_shape"]
    liver = ("cirrhotic" if shape.get("nodularity_mm") else "resected" if shape.get("resection")
             else "Riedel's lobe" if shape.get("riedel_scale", 1.0) > 1.0 else "usual shape")
    return (f"domain: {d['contrast_phase'].replace('_', ' ')}, liver {d['tissue_hu']['liver']:.0f} HU, "
            f"{d['kernel']} kernel, noise {d['noise_sigma_hu']:.0f} HU;\n{d['body_type']} body, "
            f"coverage {d['partial_coverage'].replace('_', ' ')}, stomach {d['stomach_content'].replace('_', ' ')}, "
            f"liver {liver}")


def _run_cli(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if (args.root is None) == (args.image is None):
        parser.error("give either ROOT with --case, or --image (with an optional --label)")
    if args.root is not None:
        if args.case is None:
            parser.error("ROOT needs --case ID")
        if args.label is not None:
            parser.error("--label goes with --image; with ROOT the case's own label is used")
        case = find_case(args.root, args.case)
        image, label = case.image, case.label
        note = domain_note(args.root, args.case)
    else:
        if args.case is not None:
            parser.error("--case needs ROOT")
        image, label = args.image, args.label
        note = None
    out = render_preview(
        image,
        args.out,
        label=label,
        window_center=args.window_center,
        window_width=args.window_width,
        slice_index=args.slice,
        note=note,
    )
    print(out)
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``liverseg preview``."""
    p = sub.add_parser(
        "preview",
        help="picture of one case's intensity preprocessing (HU, window, histogram equalization)",
        description="Write a PNG with four panels of one axial slice: the CT in HU, the histogram after windowing "
        "(MONAI ScaleIntensityRange), the windowed slice with label contours, and the slice after MONAI "
        "HistogramNormalize. Give a dataset ROOT and --case, or an --image (and optional --label).",
    )
    p.add_argument("root", nargs="?", type=Path, default=None, help="dataset folder in nnU-Net raw layout")
    p.add_argument("--case", default=None, help="case id in ROOT's imagesTr/ or imagesTs/")
    p.add_argument("--image", type=Path, default=None, help="CT volume (NIfTI, HU) instead of ROOT --case")
    p.add_argument("--label", type=Path, default=None, help="label volume for --image (liver 1, tumor 2)")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--window-center", type=float, default=0.0, help="HU window center (default: 0)")
    p.add_argument("--window-width", type=float, default=250.0, help="HU window width (default: 250)")
    p.add_argument("--slice", type=int, default=None, help="axial slice index (default: most liver, else middle)")
    p.set_defaults(func=lambda args: _run_cli(args, p))
