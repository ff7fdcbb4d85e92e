"""Scribbles refinement for the liver app (3D Slicer's MONAI Label scribbles tools): graph cut on the current
prediction + the user's scribbles, for the liver or the tumor.

A request (type ``scribbles``) carries the image, the scribbles as ``label`` (a volume on the image grid:
:attr:`LiverScribblesTask.bg_label` = background scribbles, :attr:`LiverScribblesTask.fg_label` = foreground
scribbles of the target, as monailabel numbers them: ``len(labels) + 1`` and ``len(labels) + 2``), the ``target``
(``liver`` or ``tumor``) and, optionally, the current ``prediction`` (a label map on the same grid, e.g. the model's
last result). The target's foreground probability mixes a spatial prior (the smoothed prediction, pulled towards each
scribble's label around it) and an intensity likelihood (histograms of scribbles + prediction); scribbled voxels are
fixed (the ISeg unary
term of Wang et al. 2018, https://arxiv.org/abs/1710.04043, monailabel's ``make_iseg_unary``), and a graph cut with an
intensity-contrast pairwise term (``numpymaxflow``, as MONAI Label's scribbles apps) decides the rest, inside the box
around the scribbles and the prediction. The result is the prediction with the target replaced: liver refinement keeps
the tumor inside the new liver; tumor refinement stays inside the current liver (plus foreground scribbles) and turns
removed tumor into liver.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Dict, Optional, Tuple

import numpy as np
from lib.validation import BadRequest
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

logger = logging.getLogger(__name__)

SCRIBBLES_NAME = "liver_scribbles"  # the task's name in the app
TARGETS = {"liver": 1, "tumor": 2}
MARGIN = 8  # voxels around the scribbles and the prediction's target that the graph cut may change


def _load(path: str, what: str) -> Tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        return np.asarray(img.dataobj), np.asarray(img.affine, dtype=float)
    except Exception as e:  # nibabel raises many types for bad files
        raise BadRequest(f"the {what} {path} could not be read ({type(e).__name__}: {e})") from e


def refine_with_scribbles(
    image_hu: np.ndarray,
    scribbles: np.ndarray,
    target: str,
    prediction: Optional[np.ndarray] = None,
    bg_label: int = 3,
    fg_label: int = 4,
    hu_window: Tuple[float, float] = (-100.0, 200.0),
    lamda: float = 1.0,
    sigma: float = 0.1,
    reach: float = 6.0,
) -> np.ndarray:
    """The label map (0 background, 1 liver, 2 tumor) after a graph cut of ``target`` with the scribbles.

    Args:
        image_hu: CT in HU, 3D.
        scribbles: same shape; ``bg_label`` / ``fg_label`` where the user scribbled, anything else = no scribble.
        target: ``liver`` (foreground = liver + tumor) or ``tumor``.
        prediction: the current label map (same shape); None = all background.
        hu_window: intensity window mapped to [0, 1] for the pairwise term.
        lamda, sigma: weight of the pairwise term and intensity scale of its contrast (numpymaxflow's).
        reach: voxels around a scribble where it pulls the probability towards its label (Gaussian scale).

    Raises:
        BadRequest: unknown target, shape mismatch, or no scribble at all.
    """
    import numpymaxflow
    from monailabel.scribbles.utils import make_iseg_unary

    if target not in TARGETS:
        raise BadRequest(f"unknown scribbles target {target!r}; valid: {', '.join(TARGETS)}")
    image_hu, scribbles = np.asarray(image_hu), np.asarray(scribbles)
    if image_hu.ndim != 3 or scribbles.shape != image_hu.shape:
        raise BadRequest(f"scribbles {scribbles.shape} must be a 3D volume on the image grid {image_hu.shape}")
    pred = np.zeros(image_hu.shape, np.int16) if prediction is None else np.asarray(prediction).astype(np.int16)
    if pred.shape != image_hu.shape:
        raise BadRequest(f"prediction {pred.shape} must be on the image grid {image_hu.shape}")
    fg_scrib, bg_scrib = scribbles == fg_label, scribbles == bg_label
    if not (fg_scrib.any() or bg_scrib.any()):
        raise BadRequest(f"no scribble in the label (foreground {fg_label}, background {bg_label})")
    value = TARGETS[target]
    current = pred >= value if target == "liver" else pred == value

    # the box the graph cut works in: scribbles and the current target, plus a margin
    where = np.argwhere(fg_scrib | bg_scrib | current)
    lo = np.maximum(where.min(axis=0) - MARGIN, 0)
    hi = np.minimum(where.max(axis=0) + MARGIN + 1, image_hu.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    lo_hu, hi_hu = hu_window
    image = np.clip((image_hu[box].astype(np.float32) - lo_hu) / (hi_hu - lo_hu), 0, 1)[None]
    scrib = np.where(fg_scrib[box], fg_label, np.where(bg_scrib[box], bg_label, 0))[None].astype(np.float32)
    fg = _foreground_probability(image[0], current[box], fg_scrib[box], bg_scrib[box], reach)
    prob = np.stack([1.0 - fg, fg]).astype(np.float32)
    unary = make_iseg_unary(prob, scrib, bg_label, fg_label).astype(np.float32)
    cut = np.asarray(numpymaxflow.maxflow(image.astype(np.float32), unary, float(lamda), float(sigma)))[0] > 0

    new = np.zeros(image_hu.shape, bool)
    new[box] = cut
    new |= current & ~_in_box(image_hu.shape, box)  # outside the box nothing changes
    out = pred.copy()
    if target == "liver":
        out[new & (out == 0)] = 1
        out[~new] = 0
    else:  # a tumor lies in the liver: it grows only inside the current liver (or where the user scribbled it)
        new &= (pred >= 1) | fg_scrib
        out[new] = 2
        out[~new & (pred == 2)] = 1
    return out


def _foreground_probability(
    image: np.ndarray, current: np.ndarray, fg_scrib: np.ndarray, bg_scrib: np.ndarray, reach: float
) -> np.ndarray:
    """Foreground probability in the box: half a spatial prior (the smoothed current target, pulled towards 1 near
    foreground scribbles and towards 0 near background ones), half an intensity likelihood (64-bin histograms of the
    foreground = scribbles + current target and of the background = scribbles + the rest of the box)."""
    from scipy import ndimage

    prior = ndimage.gaussian_filter(current.astype(np.float32), sigma=1.0)
    for scrib, towards in ((fg_scrib, 1.0), (bg_scrib, 0.0)):
        if scrib.any():
            d = ndimage.distance_transform_edt(~scrib)
            w = np.exp(-(d**2) / (2.0 * reach**2)).astype(np.float32)
            prior = (1 - w) * prior + w * towards
    fg_samples, bg_samples = fg_scrib | (current & ~bg_scrib), bg_scrib | (~current & ~fg_scrib)
    bins = np.clip((image * 63).astype(np.int64), 0, 63)
    likelihood = np.full(image.shape, 0.5, np.float32)
    if fg_samples.any() and bg_samples.any():
        hf = np.bincount(bins[fg_samples], minlength=64) / fg_samples.sum() + 1e-3
        hb = np.bincount(bins[bg_samples], minlength=64) / bg_samples.sum() + 1e-3
        likelihood = (hf / (hf + hb))[bins].astype(np.float32)
    return np.clip(0.5 * prior + 0.5 * likelihood, 0.02, 0.98)


def _in_box(shape, box) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[box] = True
    return m


class LiverScribblesTask(InferTask):
    """MONAI Label scribbles task (``type: scribbles``) for the liver and the tumor: see the module docstring.

    Request: ``image`` (path), ``label`` (scribbles file), ``target`` (``liver`` default, or ``tumor``),
    ``prediction`` (optional path of the current label map); config ``lamda``, ``sigma``.
    """

    def __init__(self, hu_window: Tuple[float, float] = (-100.0, 200.0), lamda: float = 1.0, sigma: float = 0.1):
        super().__init__(
            type=InferType.SCRIBBLES,
            labels=list(TARGETS),
            dimension=3,
            description="Refine the liver or the tumor: graph cut on the current prediction + scribbles",
            config={"lamda": lamda, "sigma": sigma, "target": list(TARGETS)},
        )
        self.hu_window = hu_window
        self.bg_label = len(TARGETS) + 1
        self.fg_label = len(TARGETS) + 2

    def is_valid(self) -> bool:
        try:
            import numpymaxflow  # noqa: F401
        except ImportError:
            logger.warning("scribbles task off: numpymaxflow is not installed")
            return False
        return True

    def __call__(self, request) -> Tuple[str, Dict[str, Any]]:
        image_path, scribbles_path = request.get("image"), request.get("label")
        if not isinstance(image_path, str) or not os.path.isfile(image_path):
            raise BadRequest("scribbles need an image file (a datastore image id or an upload)")
        if not isinstance(scribbles_path, str) or not os.path.isfile(scribbles_path):
            raise BadRequest("scribbles need the scribbles volume as 'label'")
        target = request.get("target") or "liver"
        target = target[0] if isinstance(target, list) and target else target
        image, affine = _load(image_path, "image")
        scribbles, _ = _load(scribbles_path, "scribbles")
        prediction = None
        if request.get("prediction"):
            prediction, _ = _load(str(request["prediction"]), "prediction")
            prediction = np.rint(prediction)
        out = refine_with_scribbles(
            image, np.rint(scribbles), str(target), prediction, self.bg_label, self.fg_label, self.hu_window,
            float(request.get("lamda", self._config["lamda"])), float(request.get("sigma", self._config["sigma"])),
        )  # fmt: skip
        import nibabel as nib

        fd, result = tempfile.mkstemp(suffix=".nii.gz", prefix="liverseg-scribbles-")
        os.close(fd)
        nib.save(nib.Nifti1Image(out.astype(np.uint8), affine), result)
        changed = int((out != (prediction if prediction is not None else 0)).sum())
        return result, {"label_names": {"liver": 1, "tumor": 2}, "scribbles": {"target": target, "changed": changed}}
