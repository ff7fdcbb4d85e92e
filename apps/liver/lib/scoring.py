"""Scoring methods of the liver app: Dice against saved labels, and epistemic uncertainty by test-time flips.

Why test-time augmentation and not MC dropout: the bundle's networks are trained with ``dropout = 0`` by default,
so switching dropout on at inference (``set_mc_dropout``) either changes nothing or injects noise the weights were
never trained with. Flipping the preprocessed volume along each spatial axis (4 passes: identity + 3 flips) needs no
retraining, is deterministic, and costs 4 forward passes (seconds per small volume on a CPU). The score is the mean
predictive entropy (``-sum_c p_c log p_c`` of the pass-averaged softmax, divided by ``log C`` so it lies in [0, 1])
over the voxels that any pass labels liver or tumor (the whole volume when none does).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from typing import Any, Dict, Optional

import nibabel as nib
import numpy as np
import torch
from lib.infer import LiverSegInferTask, default_device
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.utils.others.generic import name_to_device

logger = logging.getLogger(__name__)

ENTROPY_KEY = "epistemic_entropy"
TS_KEY = "epistemic_ts"
FLIP_AXES = ((), (2,), (3,), (4,))


def model_timestamp(task: LiverSegInferTask) -> int:
    path = task.get_path()
    return int(os.stat(path).st_mtime) if path and os.path.exists(path) else 0


def tta_entropy(task: LiverSegInferTask, image_path: str, device: Optional[str] = None) -> float:
    """Normalised mean predictive entropy of ``task``'s network on ``image_path`` under test-time flips."""
    device = name_to_device(device or default_device())
    data: Dict[str, Any] = copy.deepcopy(task.config())
    data.update({"image": image_path, "device": device, "logging": "WARNING"})
    pre = task.pre_transforms(data)
    data = task.run_pre_transforms(data, pre)
    image = data[task.input_key]
    x = (image if torch.is_tensor(image) else torch.as_tensor(image))[None].to(torch.device(device))
    x = x.as_tensor() if hasattr(x, "as_tensor") else x
    network = task._get_network(device, data)
    inferer = task.inferer(data)
    probs = None
    with torch.no_grad():
        for axes in FLIP_AXES:
            xi = torch.flip(x, axes) if axes else x
            y = inferer(xi, network)
            y = torch.softmax(y.float(), dim=1)
            y = torch.flip(y, axes) if axes else y
            fg = y.argmax(1) > 0
            probs = (y, fg) if probs is None else (probs[0] + y, probs[1] | fg)
    p = probs[0] / len(FLIP_AXES)
    entropy = -(p * torch.log(p.clamp_min(1e-8))).sum(1) / math.log(p.shape[1])
    roi = probs[1]
    value = entropy[roi].mean() if bool(roi.any()) else entropy.mean()
    return float(value)


class EpistemicTTAScoring(ScoringMethod):
    """Epistemic uncertainty of the unlabelled images (test-time flips, see the module docstring).

    Stores ``epistemic_entropy`` (the score, higher = less certain) and ``epistemic_ts`` (the weights' modification
    time) in each image's info; images already scored with the current weights are skipped. Request options:
    ``max_samples`` (0 = all), ``device``, ``model`` (which served model; default: the task given here).
    """

    def __init__(self, infer_tasks: Dict[str, LiverSegInferTask], default_model: str):
        super().__init__("Epistemic uncertainty (test-time flip ensemble) of unlabelled images")
        self.infer_tasks = infer_tasks
        self.default_model = default_model

    def task(self, request) -> LiverSegInferTask:
        name = request.get("model") or self.default_model
        task = self.infer_tasks.get(name)
        if task is None:
            from lib.validation import NotFound

            raise NotFound(f"unknown model {name!r}; available: {', '.join(self.infer_tasks)}")
        return task

    def __call__(self, request, datastore: Datastore) -> Dict[str, Any]:
        task = self.task(request)
        model_ts = model_timestamp(task)
        start = time.time()
        max_samples = int(request.get("max_samples", 0) or 0)
        todo = [
            i for i in datastore.get_unlabeled_images() if datastore.get_image_info(i).get(TS_KEY) != model_ts
        ]
        todo = todo[:max_samples] if max_samples else todo
        scores = {}
        for image_id in todo:
            value = tta_entropy(task, datastore.get_image_uri(image_id), request.get("device"))
            datastore.update_image_info(image_id, {ENTROPY_KEY: value, TS_KEY: model_ts})
            scores[image_id] = value
            logger.info("EPISTEMIC(TTA): %s => %.5f", image_id, value)
        return {"executed": len(todo), "scores": scores, "latency": round(time.time() - start, 3)}


def dice_scores(pred: np.ndarray, truth: np.ndarray) -> Dict[str, Optional[float]]:
    """Dice of the whole liver (labels 1+2) and of the tumor (label 2); ``None`` when both are empty."""
    out: Dict[str, Optional[float]] = {}
    for name, fn in (("liver", lambda a: a > 0), ("tumor", lambda a: a == 2)):
        a, b = fn(pred), fn(truth)
        denom = int(a.sum()) + int(b.sum())
        out[name] = None if denom == 0 else round(2.0 * int(np.logical_and(a, b).sum()) / denom, 5)
    return out


class DiceScoring(ScoringMethod):
    """Dice (liver incl. tumor, and tumor) of predictions against the saved final labels.

    The prediction is, per image with a final label, the label saved with tag ``y_pred`` when the request names one
    that exists (e.g. ``"original"``: what the model proposed before the user corrected it), else a fresh
    inference with the current weights of ``model`` (default model by default). Stores ``dice`` (liver),
    ``dice_tumor`` in each image's info; returns per-image scores and their means.
    """

    def __init__(self, infer_tasks: Dict[str, LiverSegInferTask], default_model: str):
        super().__init__("Dice of the model (or of a saved label tag) against the final labels")
        self.infer_tasks = infer_tasks
        self.default_model = default_model

    def __call__(self, request, datastore: Datastore) -> Dict[str, Any]:
        task = EpistemicTTAScoring.task(self, request)  # same model lookup
        tag_y = request.get("y", DefaultLabelTag.FINAL.value)
        tag_pred = request.get("y_pred")
        per_image: Dict[str, Any] = {}
        for image_id in datastore.list_images():
            y_id = datastore.get_label_by_image_id(image_id, tag_y)
            if not y_id:
                continue
            truth = np.asarray(nib.load(datastore.get_label_uri(y_id, tag_y)).dataobj)
            pred_id = datastore.get_label_by_image_id(image_id, tag_pred) if tag_pred else ""
            if pred_id:
                pred = np.asarray(nib.load(datastore.get_label_uri(pred_id, tag_pred)).dataobj)
            else:
                _, data = task({"image": datastore.get_image_uri(image_id), "skip_writer": True, "logging": "WARNING",
                                "device": request.get("device")})
                p = data[task.output_label_key]
                pred = p.detach().cpu().numpy() if torch.is_tensor(p) else np.asarray(p)
            pred, truth = np.squeeze(np.rint(pred)), np.squeeze(np.rint(truth))
            if pred.shape != truth.shape:
                logger.warning("DICE: %s: prediction %s, label %s: shapes differ", image_id, pred.shape, truth.shape)
                continue
            d = dice_scores(pred, truth)
            per_image[image_id] = d
            datastore.update_image_info(image_id, {"dice": d["liver"], "dice_tumor": d["tumor"]})
            logger.info("DICE: %s => %s", image_id, d)
        means = {
            k: (float(np.mean(v)) if v else None)
            for k, v in (
                (k, [d[k] for d in per_image.values() if d[k] is not None]) for k in ("liver", "tumor")
            )
        }
        return {"images": per_image, "mean": means, "source": tag_pred or "model"}
