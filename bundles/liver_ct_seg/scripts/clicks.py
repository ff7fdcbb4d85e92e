# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""Clicks for the interactive (DeepEdit-type) model: guidance channels, simulated clicks, click-driven training.

The interactive network is the bundle's network with ``1 + len(GUIDANCE_LABELS)`` input channels: the CT and one
guidance channel per label (``liver``, ``tumor``, ``background``). A click of label ``c`` at voxel ``p`` says "``p``
is ``c``"; it is drawn in channel ``c`` as a small ball (``exp(-d^2 / 2 sigma^2)``, ``sigma = radius / 2``, zero
beyond ``radius`` voxels of the network's grid). No click: all-zero guidance, and the model is an automatic one.

- :func:`largest_error_click`: the click a robot user (or the training loop) makes: at the centre (the voxel farthest
  from the region's border) of the largest connected region where the prediction differs from the truth, labelled
  with the truth there (DeepEdit, Diaz-Pinto et al. 2022, https://arxiv.org/abs/2203.12362; the centre rule of
  Sakinis et al. 2019, https://arxiv.org/abs/1903.08205).
- :class:`AddClickGuidance` / :class:`AddClickGuidanced`: guidance channels appended to the image from clicks given
  in voxel indices of the image *as loaded* (what MONAI Label's DeepEdit clients send, per label name); the
  ``d`` twin maps the clicks through the loaded and the preprocessed image's affines, so any reorientation,
  resampling or crop of the preprocessing is honoured (LPS as well as RAS images).
- :class:`ClickInteraction`: the ``iteration_update`` of a trainer or evaluator: predicts, clicks in the largest error
  region, repeats (0 to ``max_clicks`` times per sample), then runs the normal iteration on the image plus guidance.
- :func:`load_automatic_weights`: starts the interactive network from the automatic model's weights (guidance
  weights of the first convolution set to zero, so with zero clicks it is the automatic model).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from scipy import ndimage

__all__ = [
    "GUIDANCE_LABELS",
    "largest_error_click",
    "guidance_from_points",
    "AddClickGuidance",
    "AddClickGuidanced",
    "ClickInteraction",
    "load_automatic_weights",
    "promote",
    "grow_clicks",
    "SoftmaxWithClicksd",
]

logger = logging.getLogger(__name__)

GUIDANCE_LABELS: dict[str, int] = {"liver": 1, "tumor": 2, "background": 0}  # channel order = this order
DEFAULT_RADIUS = 2.0  # voxels of the network grid (2 x 2 x 2.5 mm): a ball of about 4-5 mm


def largest_error_click(
    pred: np.ndarray, truth: np.ndarray, labels: Sequence[int] = (0, 1, 2), spacing: Sequence[float] | None = None
) -> tuple[int, tuple[int, ...]] | None:
    """``(label, voxel)`` of the next simulated click, or ``None`` when ``pred`` equals ``truth`` everywhere.

    The errors are grouped by their true label (a missed tumor and a missed liver part are different regions even when
    they touch); the largest connected region (6-connectivity) wins, and the click goes to its centre: the voxel
    farthest from the region's border (Euclidean distance transform; ties: the first in C order). The click's label is
    the truth there, so a false positive gets a background (or liver) click and a miss a liver (or tumor) click.

    Args:
        pred: predicted label map (integer array, any number of dims).
        truth: true label map, same shape.
        labels: label values that can be clicked; errors whose truth is another value are ignored.
        spacing: voxel size per axis for the distance to the border (default: 1 per axis, voxel units); the largest
            region is the one with the most voxels either way.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"pred shape {pred.shape} differs from truth shape {truth.shape}")
    best: tuple[int, int, np.ndarray, tuple[slice, ...]] | None = None  # size, label, mask, box
    for value in labels:
        wrong = (pred != truth) & (truth == value)
        if not wrong.any():
            continue
        components, n = ndimage.label(wrong)
        sizes = np.bincount(components.ravel())[1:]
        k = int(np.argmax(sizes))
        if best is None or sizes[k] > best[0]:
            box = ndimage.find_objects(components == k + 1)[0]
            best = (int(sizes[k]), int(value), components[box] == k + 1, box)
    if best is None:
        return None
    _, value, mask, box = best
    distance = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[(slice(1, -1),) * mask.ndim]
    local = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return value, tuple(int(b.start + i) for b, i in zip(box, local, strict=True))


def guidance_from_points(
    shape: Sequence[int], points: Sequence[Sequence[Sequence[float]]], radius: float = DEFAULT_RADIUS
) -> np.ndarray:
    """Guidance channels ``[len(points), *shape]`` (float32): channel ``c`` holds a ball around each point of
    ``points[c]`` (voxel coordinates, may be fractional; points outside the grid are dropped)."""
    if radius <= 0:
        raise ValueError(f"radius must be > 0 voxels, got {radius!r}")
    shape = tuple(int(s) for s in shape)
    out = np.zeros((len(points), *shape), dtype=np.float32)
    sigma2 = (radius / 2.0) ** 2
    r = int(np.ceil(radius))
    for c, channel_points in enumerate(points):
        for p in channel_points:
            p = np.asarray(p, dtype=float)
            if p.shape != (len(shape),):
                raise ValueError(f"click {p.tolist()} has {p.size} coordinates; the image has {len(shape)} dims")
            centre = np.rint(p).astype(int)
            if np.any(centre < 0) or np.any(centre >= np.asarray(shape)):
                logger.warning("click %s lies outside the image %s: ignored", p.tolist(), shape)
                continue
            lo = np.maximum(centre - r, 0)
            hi = np.minimum(centre + r + 1, shape)
            grids = np.meshgrid(*[np.arange(a, b) - q for a, b, q in zip(lo, hi, p, strict=True)], indexing="ij")
            d2 = sum(g.astype(np.float64) ** 2 for g in grids)
            ball = np.where(d2 <= radius**2, np.exp(-d2 / (2 * sigma2)), 0.0).astype(np.float32)
            region = (c, *[slice(a, b) for a, b in zip(lo, hi, strict=True)])
            out[region] = np.maximum(out[region], ball)
    return out


def _append_channels(image: torch.Tensor | np.ndarray, guidance: np.ndarray) -> torch.Tensor | np.ndarray:
    """``image`` with ``guidance`` appended as channels; a MetaTensor keeps its meta data and transform trace."""
    if isinstance(image, torch.Tensor):
        g = torch.as_tensor(guidance, dtype=image.dtype, device=image.device)
        out = torch.cat([image.as_tensor() if isinstance(image, MetaTensor) else image, g], dim=0)
        if isinstance(image, MetaTensor):
            return MetaTensor(out, meta=image.meta, applied_operations=image.applied_operations)
        return out
    return np.concatenate([np.asarray(image), guidance.astype(np.asarray(image).dtype)], axis=0)


class AddClickGuidance(Transform):
    """Append the guidance channels of clicks given in the image's own voxel indices.

    Args:
        label_names: guidance label names in channel order (default :data:`GUIDANCE_LABELS`).
        radius: ball radius in voxels of this image.

    Example::

        AddClickGuidance()(image, {"liver": [[40, 50, 20]], "background": [[5, 5, 5]]})  # [1 + 3, H, W, D]
    """

    def __init__(self, label_names: Sequence[str] | None = None, radius: float = DEFAULT_RADIUS) -> None:
        self.label_names = list(label_names or GUIDANCE_LABELS)
        self.radius = float(radius)

    def __call__(self, image: Any, clicks: Mapping[str, Sequence[Sequence[float]]] | None = None) -> Any:
        clicks = clicks or {}
        unknown = sorted(set(clicks) - set(self.label_names))
        if unknown:
            raise ValueError(f"clicks for unknown labels {unknown}; valid labels: {', '.join(self.label_names)}")
        points = [list(clicks.get(name) or []) for name in self.label_names]
        guidance = guidance_from_points(image.shape[1:], points, self.radius)
        return _append_channels(image, guidance)


class AddClickGuidanced(MapTransform):
    """Dictionary twin of :class:`AddClickGuidance` for a preprocessed image whose clicks were given on the image as
    loaded: ``data[<label name>]`` holds that label's clicks (``[[i, j, k], ...]``, voxel indices of the loaded array,
    MONAI Label's DeepEdit request format); they are mapped through world space (the loaded image's
    ``original_affine`` / ``affine`` meta data, then the inverse of the preprocessed image's affine) before drawing.

    Args:
        keys: the image key(s).
        label_names: guidance label names in channel order (default :data:`GUIDANCE_LABELS`).
        radius: ball radius in voxels of the preprocessed image.
        allow_missing_keys: as MapTransform.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_names: Sequence[str] | None = None,
        radius: float = DEFAULT_RADIUS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.adder = AddClickGuidance(label_names, radius)

    @staticmethod
    def _loaded_affine(image: MetaTensor) -> np.ndarray:
        for key in ("original_affine", "affine"):
            a = image.meta.get(key)
            if a is not None:
                return np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a, dtype=float)
        raise ValueError("the image has no 'original_affine' or 'affine' meta data: clicks cannot be placed")

    def map_clicks(self, image: Any, clicks: Mapping[str, Any]) -> dict[str, list[list[float]]]:
        """Clicks on the loaded image -> voxel coordinates of the preprocessed ``image``."""
        out: dict[str, list[list[float]]] = {}
        if not any(len(v or []) for v in clicks.values()):
            return {k: [] for k in clicks}
        if not isinstance(image, MetaTensor):
            raise ValueError("clicks need a MetaTensor image (its affines place them)")
        loaded = self._loaded_affine(image)
        current = np.asarray(image.affine.cpu(), dtype=float)
        to_current = np.linalg.inv(current) @ loaded
        for name, pts in clicks.items():
            pts = np.asarray(pts or [], dtype=float).reshape(-1, 3)
            homog = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
            out[name] = (homog @ to_current.T)[:, :3].tolist()
        return out

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        clicks = {name: d.get(name) or [] for name in self.adder.label_names}
        for key in self.key_iterator(d):
            d[key] = self.adder(d[key], self.map_clicks(d[key], clicks))
        return d


class ClickInteraction:
    """``iteration_update`` of a MONAI trainer or evaluator that simulates an annotator.

    Per batch: zero to ``max_clicks`` click rounds (training: ``0`` with probability ``zero_click_prob``, else a number
    drawn uniformly in ``1..max_clicks``; evaluation: exactly ``max_clicks``). A round predicts with the current
    guidance (eval mode, no gradient) and adds, per sample, a click at :func:`largest_error_click`. Then the engine's
    own iteration runs on the image with the guidance channels (``batchdata["image"]`` becomes ``[B, 1 + G, ...]``).

    Args:
        max_clicks: most click rounds per batch.
        zero_click_prob: training only: probability of no click at all (the model must stay an automatic one).
        train: training (random number of rounds) or evaluation (fixed).
        label_names: guidance channels (default :data:`GUIDANCE_LABELS`: name -> label value).
        radius: ball radius in voxels.
        seed: seed of the round-count draws.
    """

    def __init__(
        self,
        max_clicks: int = 5,
        zero_click_prob: float = 0.2,
        train: bool = True,
        label_names: Mapping[str, int] | None = None,
        radius: float = DEFAULT_RADIUS,
        seed: int = 0,
    ) -> None:
        if max_clicks < 0:
            raise ValueError(f"max_clicks must be >= 0, got {max_clicks!r}")
        if not 0.0 <= zero_click_prob <= 1.0:
            raise ValueError(f"zero_click_prob must be in [0, 1], got {zero_click_prob!r}")
        self.max_clicks = int(max_clicks)
        self.zero_click_prob = float(zero_click_prob)
        self.train = bool(train)
        self.label_names = dict(label_names or GUIDANCE_LABELS)
        self.radius = float(radius)
        self.rng = np.random.default_rng(seed)

    def rounds(self) -> int:
        if not self.train:
            return self.max_clicks
        if self.max_clicks == 0 or self.rng.random() < self.zero_click_prob:
            return 0
        return int(self.rng.integers(1, self.max_clicks + 1))

    def guided(self, engine: Any, image: torch.Tensor, label: torch.Tensor, rounds: int) -> torch.Tensor:
        """``image`` ``[B, 1, ...]`` with guidance channels after ``rounds`` simulated clicks against ``label``."""
        names = list(self.label_names)
        values = [self.label_names[n] for n in names]
        points: list[list[list[list[int]]]] = [[[] for _ in names] for _ in range(image.shape[0])]
        truth = label[:, 0].detach().cpu().numpy().astype(np.int16)
        device = engine.state.device

        def with_guidance() -> torch.Tensor:
            g = [guidance_from_points(image.shape[2:], points[b], self.radius) for b in range(image.shape[0])]
            guidance = torch.as_tensor(np.stack(g), dtype=image.dtype)
            plain = image.as_tensor() if isinstance(image, MetaTensor) else image
            return torch.cat([plain.cpu(), guidance], dim=1)

        if rounds:
            was_training = engine.network.training
            engine.network.eval()
            try:
                for _ in range(rounds):
                    with torch.no_grad():
                        logits = engine.inferer(with_guidance().to(device), engine.network)
                    pred = torch.argmax(logits, dim=1).cpu().numpy()
                    for b in range(image.shape[0]):
                        click = largest_error_click(pred[b], truth[b], values)
                        if click is not None:
                            points[b][values.index(click[0])].append(list(click[1]))
            finally:
                engine.network.train(was_training)
        return with_guidance()

    def __call__(self, engine: Any, batchdata: dict[str, Any]) -> Any:
        if batchdata is None:
            raise ValueError("ClickInteraction needs the batch data of the iteration")
        image, label = batchdata["image"], batchdata["label"]
        batchdata = dict(batchdata)
        batchdata["image"] = self.guided(engine, image, label, self.rounds())  # a plain tensor: the batch's meta data
        # (per-item affines) stays with the label
        engine.state.batch = batchdata
        return engine._iteration(engine, batchdata)


def load_automatic_weights(
    network: torch.nn.Module, path: str, strict_shapes: bool = True, missing_ok: bool = False
) -> torch.nn.Module:
    """Load weights of the automatic model (``path``: a checkpoint of the same network with fewer input channels, or
    of this very network) into ``network``: a weight that differs only in its input-channel dimension (the first
    convolution) gets the automatic weights for the first channels and zeros for the guidance channels.

    Raises:
        ValueError: a weight with another shape difference (another network), with ``strict_shapes``.
        FileNotFoundError: no file ``path``, unless ``missing_ok`` (then the network keeps its initialization).
    """
    if not os.path.isfile(path):
        if not missing_ok:
            raise FileNotFoundError(f"no automatic model weights at {path}")
        logger.warning("no automatic model weights at %s: the interactive network starts from scratch", path)
        return network
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    own = network.state_dict()
    loaded, widened = {}, []
    for k, v in state.items():
        if k not in own:
            continue
        target = own[k]
        if v.shape == target.shape:
            loaded[k] = v
        elif v.dim() == target.dim() and v.dim() >= 2 and v.shape[0] == target.shape[0] and v.shape[2:] == \
                target.shape[2:] and v.shape[1] < target.shape[1]:  # fmt: skip
            w = torch.zeros_like(target)
            w[:, : v.shape[1]] = v
            loaded[k] = w
            widened.append(k)
        elif strict_shapes:
            raise ValueError(f"weight {k!r} has shape {tuple(v.shape)} in {path}, {tuple(target.shape)} here")
    missing = sorted(set(own) - set(loaded))
    if missing and strict_shapes:
        raise ValueError(f"{path} lacks weights {missing[:5]} of the network")
    network.load_state_dict({**own, **loaded})
    logger.info("interactive network initialised from %s (%s widened with zero guidance weights)", path, widened)
    return network


def promote(ckpt_dir: str, bundle_root: str, enabled: bool = False, name: str = "deepedit") -> str | None:
    """Copy ``<ckpt_dir>/model.pt`` to ``<bundle_root>/models/<name>/model.pt`` (atomically) when ``enabled``; the
    interactive model's counterpart of ``scripts.runs.promote``, which would replace the automatic model."""
    if not enabled:
        return None
    src = os.path.join(ckpt_dir, "model.pt")
    dst = os.path.join(bundle_root, "models", name, "model.pt")
    if not os.path.isfile(src):
        raise FileNotFoundError(f"promote: the run wrote no checkpoint {src}; nothing to promote")
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return dst
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), prefix="model.pt.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    logger.info("promoted %s to %s", src, dst)
    return dst


def _ball(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    grid = np.indices((2 * r + 1,) * 3) - r
    return (grid**2).sum(0) <= radius * radius


def _claimed_region(
    region: np.ndarray, same: np.ndarray, seed: Sequence[int], d2: np.ndarray, r: float, open_radius: float
) -> np.ndarray:
    """The part of ``region`` (the connected same-class, same-intensity voxels around ``seed`` within the ball
    ``d2 <= r^2``) that a click at ``seed`` claims, by shape: the thick parts of ``same`` (those voxels in the whole
    box, not only the ball) are what survives a morphological opening with a ball of ``open_radius`` voxels (the box's
    border counts as inside, the image goes on beyond it); then

    - ``seed`` in a thick part that stays inside the ball (a blob: a missed tumor, a false-positive lobe): that part and
      what hangs on it, except within ``open_radius + 1`` voxels of any other thick part;
    - ``seed`` in a thin part (a rim, a bridge, a small blob): the thin part's connected piece around ``seed``;
    - ``seed`` in a thick part that reaches the ball's border (the bulk of an organ): a ball of ``open_radius``.

    ``open_radius`` 0: all of ``region``.
    """
    if open_radius <= 0:
        return region
    seed = tuple(int(v) for v in seed)
    ball = _ball(open_radius)
    opened = ndimage.binary_dilation(ndimage.binary_erosion(same, structure=ball, border_value=1), structure=ball)
    opened &= same
    near = region & (d2 <= open_radius * open_radius)
    if opened[seed]:
        parts, _ = ndimage.label(opened)
        own = parts == parts[seed]
        if (own & (d2 > (r - 1.5) ** 2)).any():  # the bulk: only the click's neighbourhood
            logger.debug("click %s in the bulk: %d of %d voxels", seed, int(near.sum()), int(region.sum()))
            return near
        keep = region & ~ndimage.binary_dilation(opened & ~own, structure=_ball(open_radius + 1))
    else:
        keep = region & ~opened
    parts, _ = ndimage.label(keep)
    claimed = parts == parts[seed] if parts[seed] else near
    kind = "thick" if opened[seed] else "thin"
    logger.debug("click %s in a %s part: %d of %d voxels", seed, kind, int(claimed.sum()), int(region.sum()))
    return claimed


def grow_clicks(
    prob: np.ndarray,
    intensity: np.ndarray,
    guidance: np.ndarray,
    values: Sequence[int],
    radius: Sequence[float] = (15.0, 15.0, 15.0),
    tolerance: float = 0.08,
    open_radius: float = 3.0,
) -> np.ndarray:
    """Class probabilities ``prob`` ``[C, ...]`` with each click's region set to the click's class (a "smart click").

    A click (a local maximum above 0.5 of guidance channel ``g``, label ``values[g]``) on a voxel whose current class
    is another one claims connected voxels of that same current class whose intensity is within ``tolerance`` of the
    click's (mean over its 3 x 3 x 3 neighbourhood), within ``radius[g]`` voxels of it: a missed tumor or liver part,
    or a false positive, is taken as a whole instead of only where the network learned to follow the click. Which of
    those voxels goes by the region's shape (:func:`_claimed_region`, ``open_radius`` voxels): a blob or a thin part
    around the click is taken whole, but a click in the bulk of an organ (a false positive that reaches into the true
    liver with the liver's own intensity) takes only its neighbourhood, so that one click never removes true liver
    over a whole ball. Works on the network grid, before the argmax and the inversion to the source grid.
    """
    prob = np.array(prob, dtype=np.float32, copy=True)
    current = np.argmax(prob, axis=0)
    shape = np.asarray(current.shape)
    smooth = None
    if open_radius > 0 and (guidance > 0.5).any():
        smooth = ndimage.gaussian_filter(np.asarray(intensity, dtype=np.float32), sigma=1.0)
    for g, value in enumerate(values):
        chan = guidance[g]
        if not (chan > 0.5).any():
            continue
        peaks = np.argwhere((chan > 0.5) & (chan >= ndimage.maximum_filter(chan, size=3)))
        r = float(radius[g] if len(radius) > g else radius[-1])
        for seed in peaks:
            seed_t = tuple(int(v) for v in seed)
            if current[seed_t] == value:
                continue
            lo, hi = np.maximum(seed - int(r) - 1, 0), np.minimum(seed + int(r) + 2, shape)
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            around = tuple(slice(max(int(s) - 1, 0), int(s) + 2) for s in seed)
            level = float(intensity[around].mean())
            grid = np.indices(tuple(hi - lo)).astype(np.float32)
            d2 = sum((grid[i] - (seed[i] - lo[i])) ** 2 for i in range(len(seed)))
            same = (current[box] == current[seed_t]) & (np.abs(intensity[box] - level) <= tolerance)
            components, _ = ndimage.label(same & (d2 <= r * r))
            if open_radius > 0:  # the shape is judged on the smoothed CT: noise would make any region look thin
                same = (current[box] == current[seed_t]) & (np.abs(smooth[box] - level) <= tolerance)
            label_at_seed = components[tuple(seed - lo)]
            if label_at_seed == 0:
                continue
            region = _claimed_region(components == label_at_seed, same, seed - lo, d2, r, open_radius)
            sub = prob[(slice(None), *box)]
            sub[:, region] = 0.0
            sub[value][region] = 1.0
            current[box][region] = value
    return prob


class SoftmaxWithClicksd(MapTransform):
    """Softmax of ``keys`` (class scores ``[C, ...]``), then :func:`grow_clicks` with the clicks drawn in the guidance
    channels of ``image_key`` (channel 0 = the windowed CT). Replaces the first postprocessing step (``Activationsd``)
    of the interactive inference: no click, no change.

    Args:
        keys: the prediction key.
        image_key: the network input (CT + guidance channels, as :class:`AddClickGuidanced` made it).
        label_values: label value of each guidance channel, in channel order (default :data:`GUIDANCE_LABELS`).
        radius: region radius in voxels per guidance channel (liver, tumor, background).
        tolerance: intensity tolerance on the windowed [0, 1] CT.
        open_radius: shape scale of a claimed region in voxels (:func:`grow_clicks`; 0: the whole region).
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        label_values: Sequence[int] | None = None,
        radius: Sequence[float] = (15.0, 15.0, 15.0),
        tolerance: float = 0.08,
        open_radius: float = 3.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if open_radius < 0:
            raise ValueError(f"open_radius must be >= 0 voxels, got {open_radius!r}")
        self.open_radius = float(open_radius)
        self.image_key = image_key
        self.values = list(label_values if label_values is not None else GUIDANCE_LABELS.values())
        self.radius = list(radius)
        self.tolerance = float(tolerance)

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        image = d[self.image_key]
        image_np = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
        guidance = image_np[1 : 1 + len(self.values)]
        for key in self.key_iterator(d):
            pred = d[key]
            prob = torch.softmax(torch.as_tensor(pred).float(), dim=0)
            if guidance.size and (guidance > 0.5).any():
                grown = grow_clicks(
                    prob.cpu().numpy(),
                    image_np[0],
                    guidance,
                    self.values,
                    self.radius,
                    self.tolerance,
                    self.open_radius,
                )
                prob = torch.as_tensor(grown, device=prob.device)
            if isinstance(pred, MetaTensor):
                prob = MetaTensor(prob, meta=pred.meta, applied_operations=pred.applied_operations)
            d[key] = prob
        return d
