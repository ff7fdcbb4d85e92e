# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""A click re-infers a crop around the click, not the whole volume (issue 15: <= 2 s per click on a CPU).

:class:`ClickCropInferer` is the interactive model's sliding-window inferer with a memory: per volume (the content
of the preprocessed CT channel, plus an optional caller key such as the image id) it keeps the guidance channels and
the full-volume logits of the last call (:class:`ClickCropCache`, a bounded LRU; emptied when the network's weights
change). The next call on the same volume compares its guidance with the kept one:

- the same guidance (the same clicks): the kept logits, no network call;
- new or removed clicks: each connected region of changed guidance voxels gets one crop of ``crop_size`` voxels of
  the network grid (the config's ``click_crop_size``: 64 x 64 x 48, a third of the voxels of one 96 x 96 x 64 window,
  128 x 128 x 120 mm; one network call) centred on it (:func:`changed_regions`,
  :func:`crop_window`). The network runs on the crop twice in one batch, with the kept guidance and with the new
  one, and the difference of the two (the change the click makes, seen from a window centred on it) is added to the
  kept logits, fully inside the crop and with a linear ramp over ``feather`` voxels at its faces inside the volume
  (:func:`paste`). Outside the crops the logits are the kept ones by construction; inside, where the click changes
  nothing, they stay the kept ones too (the network's dependence on the window's position, which makes one window's
  prediction differ from the blend of the full grid's windows, cancels in the difference);
- no entry, another network, more than ``max_crops`` changed regions, or ``crop=False``: the plain full-volume
  inference (with no click: the automatic result, as before).

Everything after the network (softmax with the "smart click" of ``scripts/clicks.py``, the inversion to the source
grid, the largest component and the other postprocessing rules) still runs on the whole (pasted) volume: the same
rules as for a full inference.

What the crop leaves out: in a full sliding-window inference a click changes every window that contains it, up to one
ROI size away from it (with the 96 x 96 x 64 ROI and a 169 x 110 x 81 grid, most clicks lie in 8 of its 12 windows);
here it changes ``crop_size / 2`` around it (64 mm in-plane, 60 mm across slices), as one patch centred on the
click sees it. The benchmark
``benchmarks/robot_user.py --compare-full`` measures the difference from a full re-inference.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer, sliding_window_inference
from monai.utils import convert_to_dst_type
from scipy import ndimage

__all__ = [
    "ClickCropCache",
    "ClickCropInferer",
    "changed_regions",
    "crop_window",
    "feather_weights",
    "paste",
    "tensor_digest",
]

logger = logging.getLogger(__name__)

Window = tuple[slice, ...]


def _per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    values = [int(value)] * ndim if np.isscalar(value) else [int(v) for v in value]  # type: ignore[union-attr]
    if len(values) != ndim or min(values) < 0:
        raise ValueError(f"{name} must be {ndim} non-negative integers, got {value!r}")
    return tuple(values)


def changed_regions(changed: np.ndarray, max_regions: int = 4) -> tuple[np.ndarray, list[Window]] | None:
    """``(labels, boxes)``: the connected regions (26-connectivity) of a mask of changed guidance voxels, numbered
    from 1, and their bounding boxes; ``None`` when there are more than ``max_regions`` (re-infer the whole volume
    instead)."""
    changed = np.asarray(changed, dtype=bool)
    labels, n = ndimage.label(changed, structure=np.ones((3,) * changed.ndim, dtype=bool))
    if n > max_regions:
        return None
    return labels, list(ndimage.find_objects(labels))


def crop_window(box: Window, shape: Sequence[int], size: Sequence[int], feather: Sequence[int] = (0, 0, 0)) -> Window:
    """The crop re-inferred for a region with bounding ``box``: ``size`` voxels per axis (more where the box plus
    ``feather`` on both sides does not fit in it; at most the volume), centred on the box and shifted to lie inside the
    volume of ``shape``."""
    ndim = len(shape)
    window = []
    for s, b, z, f in zip(shape, box, _per_axis(size, ndim, "crop size"), _per_axis(feather, ndim, "feather"),
                          strict=True):  # fmt: skip
        extent = min(max(z, b.stop - b.start + 2 * f), s)
        start = min(max((b.start + b.stop) // 2 - extent // 2, 0), s - extent)
        window.append(slice(start, start + extent))
    return tuple(window)


def feather_weights(window: Window, shape: Sequence[int], feather: Sequence[int]) -> np.ndarray:
    """Paste weights of a crop (float32, the crop's shape): 1 inside, a linear ramp ``1 / (f + 1) .. f / (f + 1)``
    over the ``f`` voxels at each face that lies inside the volume (a face on the volume's border keeps 1: there is
    nothing to blend with beyond it)."""
    ramps = []
    for w, s, f in zip(window, shape, _per_axis(feather, len(shape), "feather"), strict=True):
        n = w.stop - w.start
        ramp = np.ones(n, dtype=np.float32)
        if f > 0:
            i = np.arange(n, dtype=np.float32)
            if w.start > 0:
                ramp = np.minimum(ramp, (i + 1) / (f + 1))
            if w.stop < s:
                ramp = np.minimum(ramp, (n - i) / (f + 1))
        ramps.append(ramp)
    out = ramps[0]
    for r in ramps[1:]:
        out = np.multiply.outer(out, r)
    return out.astype(np.float32)


def paste(full: torch.Tensor, delta: torch.Tensor, window: Window, feather: Sequence[int]) -> torch.Tensor:
    """``full`` (``[..., *spatial]``) plus ``delta`` (``[..., *window's shape]``) in ``window``, weighted by
    :func:`feather_weights`, in place; voxels outside ``window`` are not touched."""
    shape = full.shape[-len(window) :]
    w = torch.as_tensor(feather_weights(window, shape, feather), dtype=full.dtype, device=full.device)
    full[(..., *window)] += w * delta.to(full.dtype)
    return full


def tensor_digest(*tensors: torch.Tensor) -> str:
    """A digest of the tensors' shapes and values (blake2b, 16 bytes): 10 ms for a 512 x 512 x 200 CT's network
    grid."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        a = t.detach().cpu().contiguous()
        h.update(str((tuple(a.shape), str(a.dtype))).encode())
        h.update(a.numpy().tobytes() if a.dtype != torch.bfloat16 else a.float().numpy().tobytes())
    return h.hexdigest()


def network_digest(network: torch.nn.Module) -> str:
    """A digest of the network's weights (parameters and buffers): what invalidates the cache when they change."""
    h = hashlib.blake2b(digest_size=16)
    for k, v in network.state_dict().items():
        h.update(k.encode())
        h.update(tensor_digest(v).encode())
    return h.hexdigest()


class ClickCropCache:
    """The last guidance and full-volume logits per volume (a least-recently-used dict of at most ``max_volumes``
    entries; about 2 x 18 MB each for a 512 x 512 x 200 CT on the 2 x 2 x 2.5 mm grid), for one model: a call with
    another ``model`` key (:meth:`use_model`) empties it. Thread-safe."""

    def __init__(self, max_volumes: int = 4) -> None:
        if max_volumes < 1:
            raise ValueError(f"max_volumes must be >= 1, got {max_volumes!r}")
        self.max_volumes = int(max_volumes)
        self.model: Hashable | None = None
        self._entries: OrderedDict[Hashable, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def use_model(self, model: Hashable) -> None:
        """Entries are of ``model`` from now on: those of another model are dropped."""
        with self._lock:
            if model != self.model:
                if self._entries:
                    logger.info("click crop cache: the model changed, %d volume(s) dropped", len(self._entries))
                self._entries.clear()
                self.model = model

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(self, key: Hashable) -> tuple[torch.Tensor, torch.Tensor] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: Hashable, guidance: torch.Tensor, logits: torch.Tensor) -> None:
        with self._lock:
            self._entries[key] = (guidance, logits)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_volumes:
                self._entries.popitem(last=False)


class ClickCropInferer(SlidingWindowInferer):
    """:class:`monai.inferers.SlidingWindowInferer` that re-infers only crops around changed clicks (module
    docstring). Input ``[1, 1 + G, *spatial]``: channel 0 the CT, then the ``G`` guidance channels.

    Args:
        roi_size, sw_batch_size, overlap, mode, **kwargs: as :class:`SlidingWindowInferer` (used for the full volume
            and for each crop).
        crop: re-infer crops around changed clicks (False: always the whole volume, no cache).
        crop_size: crop size in voxels of the network grid, also its sliding window's size (default ``roi_size``).
        feather: paste ramp width in voxels per axis (0: a hard paste).
        max_crops: more changed regions than this in one call: the whole volume.
        cache_volumes: volumes kept (:class:`ClickCropCache`).

    Attributes:
        cache: the :class:`ClickCropCache`; a server that builds a new inferer per request hands each one the same.
        cache_key: an extra key of the volume (a server's image id; the content of the CT channel is always part).
        model_key: the weights' identity (a server's model version); ``None``: a digest of the network's weights.
        last: what the last call did: ``{"mode": "full" | "crop" | "same", "windows": [...]}``.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: Sequence[float] | float = 0.25,
        mode: str = "constant",
        crop: bool = True,
        crop_size: Sequence[int] | None = None,
        feather: Sequence[int] | int = 8,
        max_crops: int = 4,
        cache_volumes: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(roi_size, sw_batch_size, overlap, mode, **kwargs)
        self.crop = bool(crop)
        self.crop_size = crop_size if crop_size is not None else roi_size
        self.feather = feather
        self.max_crops = int(max_crops)
        self.cache = ClickCropCache(cache_volumes)
        self.cache_key: Hashable | None = None
        self.model_key: Hashable | None = None
        self.last: dict[str, Any] = {}

    def _infer_crop(self, crop: torch.Tensor, network: Any) -> torch.Tensor:
        """The sliding-window inference of a crop with windows of ``crop_size``: a crop of ``crop_size`` is one network
        call, not one window of ``roi_size`` padded around it (a smaller crop is padded, as the whole volume is)."""
        return sliding_window_inference(
            crop, self.crop_size, self.sw_batch_size, network, self.overlap, self.mode, self.sigma_scale,
            self.padding_mode, self.cval, self.sw_device, self.device,
        )  # fmt: skip

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.crop or inputs.dim() < 3 or inputs.shape[0] != 1 or inputs.shape[1] < 2 or args or kwargs:
            self.last = {"mode": "full", "windows": []}
            return super().__call__(inputs, network, *args, **kwargs)
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        spatial = tuple(x.shape[2:])
        model = self.model_key if self.model_key is not None else network_digest(network)
        self.cache.use_model(model)
        key = (self.cache_key, tensor_digest(x[:, :1]))
        guidance = x[0, 1:]
        entry = self.cache.get(key)
        regions = None
        if entry is not None and entry[0].shape == guidance.shape:
            regions = changed_regions((entry[0] != guidance).any(dim=0).cpu().numpy(), self.max_crops)
        windows: list[Window] = []
        if regions is None:
            logits = super().__call__(x, network)
        else:
            logits = entry[1].clone()
            current = entry[0].clone()  # the kept guidance, with the regions done so far set to the new one
            feather = _per_axis(self.feather, len(spatial), "feather")
            labels, boxes = regions
            for k, box in enumerate(boxes, start=1):
                window = crop_window(box, spatial, self.crop_size, feather)
                region = torch.as_tensor(labels[window] == k, device=x.device)
                before = current[(slice(None), *window)].clone()
                after = torch.where(region, guidance[(slice(None), *window)], before)
                crop = x[(slice(None), slice(None), *window)]
                both = torch.cat([torch.cat([crop[:, :1], g[None]], dim=1) for g in (before, after)])
                out = self._infer_crop(both, network)
                paste(logits, out[1:] - out[:1], window, feather)
                current[(slice(None), *window)] = after
                windows.append(window)
        mode = "full" if regions is None else "crop" if windows else "same"
        self.last = {"mode": mode, "windows": [[(w.start, w.stop) for w in win] for win in windows]}
        self.cache.put(key, guidance.detach().clone(), logits.detach().clone())
        if isinstance(inputs, MetaTensor):  # as sliding_window_inference returns it: the input's meta data
            return convert_to_dst_type(logits, inputs, device=logits.device)[0]
        return logits
