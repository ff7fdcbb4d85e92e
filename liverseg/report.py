"""A one-page report of a segmentation (PNG and PDF, matplotlib): axial and coronal overlays, volumes, the lesion
list, the model and a "not for diagnostic use" line.

The image is shown in radiological convention (patient's right on the left of the picture, anterior at the top
of axial slices, superior at the top of coronal ones) after reorienting the voxel axes to the closest RAS order;
the axial slice passes through the largest tumor's centroid (the liver's centre when there is none), the coronal
slice through the same point. Abdominal display window W400 / C40.

Example::

    render_report(ct, affine, label, volumetry(label, affine), out / "report.png", out / "report.pdf",
                  title="patient 1", source="ct.nii.gz", model={"name": "liver_ct_seg", "version": "0.4.0"})
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np

from liverseg.imageio import atomic_path

__all__ = ["render_report", "DISCLAIMER", "WINDOW_HU"]

DISCLAIMER = "Research software: NOT FOR DIAGNOSTIC USE. Automatic segmentation, not reviewed by a physician."
WINDOW_HU = (-160.0, 240.0)  # abdomen W400 / C40
_MAX_LESIONS_LISTED = 12


def _to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``array`` with its axes permuted / flipped to the closest RAS order, and the voxel sizes along them."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(affine)
    out = nio.apply_orientation(array, ornt)
    spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    return out, spacing[ornt[:, 0].astype(int)]


def _focus(label_ras: np.ndarray) -> tuple[int, int, int]:
    """Voxel (RAS order) the slices pass through: the largest tumor's centre of mass, else the liver's, else the
    volume's centre."""
    from scipy import ndimage

    tumor = label_ras == 2
    if tumor.any():
        components, num = ndimage.label(tumor, structure=np.ones((3, 3, 3), dtype=bool))
        sizes = np.bincount(components.ravel())[1:]
        center = ndimage.center_of_mass(components == int(np.argmax(sizes)) + 1)
    elif label_ras.any():
        center = ndimage.center_of_mass(label_ras > 0)
    else:
        center = np.array(label_ras.shape) / 2
    return tuple(int(round(c)) for c in center)  # type: ignore[return-value]


def _overlay(ax: Any, ct: np.ndarray, label: np.ndarray, aspect: float, title: str) -> None:
    """Show a 2D slice ``[x, y]`` (x to the patient's right... displayed flipped: radiological), overlays drawn as
    filled translucent colours plus contours."""
    from matplotlib.colors import ListedColormap

    ct_img = np.flipud(ct[::-1, :].T)  # rows: y from top (anterior / superior) down; columns: patient's right first
    lab_img = np.flipud(label[::-1, :].T)
    ax.imshow(ct_img, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], aspect=aspect, interpolation="bilinear")
    colours = ListedColormap([(0, 0, 0, 0), (0.1, 0.8, 0.2, 0.35), (1.0, 0.15, 0.1, 0.55)])
    ax.imshow(lab_img, cmap=colours, vmin=0, vmax=2, aspect=aspect, interpolation="nearest")
    for value, colour in ((1, "#1fcc33"), (2, "#ff2619")):
        if np.any(lab_img >= value):
            ax.contour(lab_img >= value, levels=[0.5], colors=[colour], linewidths=0.8)
    ax.set_title(title, fontsize=9)
    ax.text(0.01, 0.5, "R", color="yellow", transform=ax.transAxes, fontsize=8, va="center")
    ax.text(0.97, 0.5, "L", color="yellow", transform=ax.transAxes, fontsize=8, va="center")
    ax.set_xticks([])
    ax.set_yticks([])


def render_report(
    image: np.ndarray,
    affine: np.ndarray,
    label: np.ndarray,
    vol: dict[str, Any],
    out_png: Path,
    out_pdf: Path | None = None,
    *,
    title: str,
    source: str = "",
    model: dict[str, str] | None = None,
) -> tuple[Path, Path | None]:
    """Render the report of one study (A4 portrait) to ``out_png`` (150 dpi) and ``out_pdf``, atomically.

    Args:
        image: CT in HU, ``[i, j, k]``; ``affine`` its voxel-to-RAS matrix; ``label`` the mask on the same grid.
        vol: :func:`liverseg.volumetry.volumetry` of ``label``.
        title: study name; ``source``: the input path; ``model``: ``name``, ``version``, ``variant``.

    Returns:
        ``(png, pdf)``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if np.shape(image) != np.shape(label):
        raise ValueError(f"image shape {np.shape(image)} and label shape {np.shape(label)} differ")
    ct, spacing = _to_ras(np.asarray(image, dtype=np.float32), affine)
    lab, _ = _to_ras(np.asarray(label, dtype=np.uint8), affine)
    x, y, z = _focus(lab)

    fig = Figure(figsize=(8.27, 11.69))
    fig.text(0.5, 0.975, f"Liver and liver-tumor segmentation: {title}", ha="center", va="top", fontsize=14,
             weight="bold")
    fig.text(0.5, 0.952, DISCLAIMER, ha="center", va="top", fontsize=9, color="#b00000", weight="bold")
    m = model or {}
    fig.text(0.06, 0.93, f"Source: {source}"[:110], fontsize=7.5, va="top")
    fig.text(0.06, 0.915, f"Model: {m.get('name', '?')} {m.get('version', '')} (variant {m.get('variant', '?')}); "
             f"report made {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}", fontsize=7.5, va="top")

    ax1 = fig.add_axes((0.04, 0.52, 0.44, 0.38))
    _overlay(ax1, ct[:, :, z], lab[:, :, z], aspect=spacing[1] / spacing[0], title=f"axial, slice {z}")
    ax2 = fig.add_axes((0.52, 0.52, 0.44, 0.38))
    _overlay(ax2, ct[:, y, :], lab[:, y, :], aspect=spacing[2] / spacing[0], title=f"coronal, slice {y}")
    fig.text(0.06, 0.505, "green: liver   red: tumor   window W400 / C40 HU   radiological view (R on the left)",
             fontsize=7.5, va="top")

    burden = vol.get("tumor_burden_percent")
    lines = [
        ("Liver volume (parenchyma + tumors)", f"{vol['liver_volume_ml']:.1f} mL"),
        ("Liver parenchyma", f"{vol['liver_parenchyma_volume_ml']:.1f} mL"),
        ("Tumors (26-connected components)", f"{vol['num_tumors']}"),
        ("Total tumor volume", f"{vol['total_tumor_volume_ml']:.2f} mL"),
        ("Tumor burden (tumor / liver volume)", "-" if burden is None else f"{burden:.2f} %"),
        ("Voxel size", " x ".join(f"{s:.2f}" for s in vol.get("spacing_mm", [])) + " mm"),
    ]
    top = 0.47
    fig.text(0.06, top, "Volumetry", fontsize=11, weight="bold", va="top")
    for n, (k, v) in enumerate(lines):
        fig.text(0.08, top - 0.025 * (n + 1), k, fontsize=9, va="top")
        fig.text(0.55, top - 0.025 * (n + 1), v, fontsize=9, va="top", ha="right", family="monospace")

    top = top - 0.025 * (len(lines) + 2)
    fig.text(0.06, top, "Lesions (largest first)", fontsize=11, weight="bold", va="top")
    header = f"{'#':>3}  {'volume mL':>10}  {'diameter mm':>11}  {'eq. diam. mm':>12}  centroid (RAS mm)"
    fig.text(0.08, top - 0.025, header, fontsize=8, va="top", family="monospace")
    tumors = vol.get("tumors", [])
    for n, t in enumerate(tumors[:_MAX_LESIONS_LISTED]):
        centroid = ", ".join(f"{c:.0f}" for c in t["centroid_mm"])
        row = (f"{t['id']:>3}  {t['volume_ml']:>10.2f}  {t.get('diameter_mm', float('nan')):>11.1f}  "
               f"{t.get('equivalent_diameter_mm', float('nan')):>12.1f}  ({centroid})")
        fig.text(0.08, top - 0.025 - 0.018 * (n + 1), row, fontsize=8, va="top", family="monospace")
    if not tumors:
        fig.text(0.08, top - 0.045, "no tumor found", fontsize=8, va="top")
    elif len(tumors) > _MAX_LESIONS_LISTED:
        fig.text(0.08, top - 0.025 - 0.018 * (_MAX_LESIONS_LISTED + 1),
                 f"... and {len(tumors) - _MAX_LESIONS_LISTED} more (volumetry.csv)", fontsize=8, va="top")
    fig.text(0.5, 0.02, DISCLAIMER, ha="center", fontsize=7.5, color="#b00000")

    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    if out_pdf is not None:
        out_pdf = Path(out_pdf)
        with atomic_path(out_pdf) as tmp:
            fig.savefig(tmp, format="pdf")
    return out_png, out_pdf
