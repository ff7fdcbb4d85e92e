"""The interactive (DeepEdit-type) model of the liver app: click to correct, served as MONAI Label's ``deepedit`` type.

The model is the bundle's own network with one guidance channel per label (``liver``, ``tumor``, ``background``),
declared as overrides of the automatic configs (``configs/inference_deepedit.json``, ``configs/train_deepedit.json``,
code in the bundle's ``scripts/clicks.py``). The app serves it from a runtime bundle
``<app_dir>/model/liver_ct_seg_deepedit/`` (as :mod:`lib.bundles` does for the automatic model):

- ``configs/inference.json`` and ``configs/train.json``: the automatic configs merged with the deepedit overrides
  (MONAI's own config merging, ``+key`` appends); the other configs and ``scripts/`` copied;
- ``models/model.pt``: the weights, copied from ``<source>/models/deepedit/model.pt`` when newer; training through the
  API writes this runtime copy (and, without any, starts from the automatic model's weights).

Because the type is ``deepedit``, OHIF's and 3D Slicer's MONAI Label panels offer label selection and foreground /
background points; a request carries the clicks per label name (``{"liver": [[i, j, k], ...], "tumor": [...],
"background": [...]}``, voxel indices of the image as loaded), and no click gives the automatic result.

A click re-infers only a crop around it (the bundle's ``ClickCropInferer``, ``click_crop`` of
``configs/inference_deepedit.json``): the task keeps one :class:`ClickCropCache` (last guidance and full-volume logits
per image id and CT content, an LRU of ``click_cache_volumes`` volumes) across requests, for the served weights file's
version and device; new weights (training, a replaced ``model.pt``) empty it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Sequence

from lib.bundles import BUNDLE_NAME, ServedBundle, _copy_if_changed, _write_if_changed
from lib.infer import STASH_KEY, LiverSegInferTask, _file_key
from lib.train import LiverSegTrainTask
from lib.validation import BadRequest
from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferType

logger = logging.getLogger(__name__)

DEEPEDIT_NAME = f"{BUNDLE_NAME}_deepedit"
OVERRIDES = {"inference.json": "inference_deepedit.json", "train.json": "train_deepedit.json"}
GUIDANCE_LABELS = ("liver", "tumor", "background")
MAX_CLICKS_PER_LABEL = 200


def deepedit_source_weights(source: Path) -> Path:
    return Path(source) / "models" / "deepedit" / "model.pt"


def merged_deepedit_config(source: Path, config_name: str) -> Dict[str, Any]:
    """``configs/<config_name>`` merged with its deepedit override (``OVERRIDES``), as ``monai.bundle`` merges a list
    of config files."""
    configs = Path(source) / "configs"
    return ConfigParser.load_config_files([str(configs / config_name), str(configs / OVERRIDES[config_name])])


def prepare_deepedit_bundle(
    source: str | Path, dest_root: str | Path, automatic_weights: str | Path | None = None
) -> ServedBundle | None:
    """Create or refresh the runtime bundle of the interactive model (see the module docstring); ``None`` when the
    source bundle has no deepedit configs.

    ``automatic_weights``: the automatic model's weights the interactive training starts from when there are no
    interactive weights yet (default: the source bundle's ``models/model.pt``).
    """
    source = Path(source).resolve()
    if not all((source / "configs" / f).is_file() for f in OVERRIDES.values()):
        logger.info("bundle %s has no deepedit configs: no interactive model", source)
        return None
    dest = Path(dest_root) / DEEPEDIT_NAME
    (dest / "configs").mkdir(parents=True, exist_ok=True)
    (dest / "models").mkdir(parents=True, exist_ok=True)
    for cfg in sorted((source / "configs").iterdir()):
        if not cfg.is_file() or cfg.name in OVERRIDES.values():
            continue
        if cfg.name in OVERRIDES:
            content = merged_deepedit_config(source, cfg.name)
            content["ckpt_dir"] = "$@bundle_root + '/models'"  # the runtime bundle keeps its weights as model.pt
            if cfg.name == "train.json":
                content["automatic_checkpoint"] = str(automatic_weights or source / "models" / "model.pt")
            _write_if_changed(dest / "configs" / cfg.name, json.dumps(content, indent=2))
        else:
            _copy_if_changed(cfg, dest / "configs" / cfg.name)
    for src in sorted((source / "scripts").rglob("*")):
        if src.is_file() and "__pycache__" not in src.parts and src.suffix != ".pyc":
            _copy_if_changed(src, dest / "scripts" / src.relative_to(source / "scripts"))
    weights_src, weights_dst = deepedit_source_weights(source), dest / "models" / "model.pt"
    if weights_src.is_file():
        if not weights_dst.exists() or weights_src.stat().st_mtime > weights_dst.stat().st_mtime:
            logger.info("Copying interactive weights %s -> %s", weights_src, weights_dst)
            _copy_if_changed(weights_src, weights_dst)
    elif not weights_dst.exists():
        logger.warning(
            "No weights for the interactive model: %s does not exist (train %s through the API, or run "
            "configs/train_deepedit.json)", weights_src, DEEPEDIT_NAME,
        )  # fmt: skip
    return ServedBundle(name=DEEPEDIT_NAME, variant="deepedit", path=dest, source_weights=weights_src)


def check_clicks(request: Dict[str, Any], labels: Sequence[str] = GUIDANCE_LABELS) -> None:
    """Refuse (400) clicks that are not lists of 3 finite numbers per label.

    Raises:
        BadRequest: naming the label and the bad value.
    """
    import math

    for name in labels:
        points = request.get(name)
        if points is None:
            continue
        if not isinstance(points, (list, tuple)):
            raise BadRequest(f"clicks for {name!r} must be a list of [i, j, k] points, got {type(points).__name__}")
        if len(points) > MAX_CLICKS_PER_LABEL:
            raise BadRequest(f"{len(points)} clicks for {name!r}; at most {MAX_CLICKS_PER_LABEL}")
        for p in points:
            ok = isinstance(p, (list, tuple)) and len(p) == 3
            ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)
            if not ok:
                raise BadRequest(f"click {p!r} for {name!r} is not a point [i, j, k] of 3 finite numbers")


def interactive_bundle(
    option: str | None, source: Path, model_root: Path, served: Dict[str, ServedBundle]
) -> ServedBundle | None:
    """The app's ``deepedit`` option (``auto`` / ``true`` / ``false``, see ``main.py``) -> the runtime bundle of the
    interactive model, or ``None`` when it is not served.

    Raises:
        ValueError: an unknown option value.
    """
    value = (option or "auto").strip().lower()
    if value not in ("auto", "true", "false"):
        raise ValueError(f"deepedit option {option!r}; valid: auto, true, false")
    if value == "false":
        return None
    automatic = served.get(BUNDLE_NAME)
    bundle = prepare_deepedit_bundle(source, model_root, automatic.weights if automatic else None)
    if bundle is not None and value == "auto" and not bundle.weights.is_file():
        logger.info("interactive model not served: no weights (--conf deepedit true serves its train task)")
        return None
    return bundle


class LiverDeepEditInferTask(LiverSegInferTask):
    """:class:`lib.infer.LiverSegInferTask` of the interactive runtime bundle, typed ``deepedit`` (labels
    ``background``, ``liver``, ``tumor`` for the viewers' label selection; clicks per label name in the request)."""

    def __init__(self, path: str, conf: Dict[str, str], **kwargs: Any):
        super().__init__(path, conf, variant="deepedit", type=InferType.DEEPEDIT, **kwargs)
        if self.valid:
            self.description = "Interactive liver / tumor segmentation: click to correct (no click: automatic)"

    def is_valid(self) -> bool:
        return bool(self.valid)

    def inferer(self, data=None):
        """The bundle's inferer (monailabel builds a new one per request, from freshly imported ``scripts``), handed
        the task's click-crop cache, the image id and the served weights' version (``ClickCropInferer``)."""
        inferer = super().inferer(data)
        if getattr(inferer, "cache", None) is None or not hasattr(inferer, "cache_key"):
            return inferer
        cache = getattr(self, "_click_cache", None)
        if cache is None:
            cache = self._click_cache = inferer.cache
        inferer.cache = cache
        data = data or {}
        stash = data.get(STASH_KEY) or {}
        inferer.cache_key = str(stash.get("image_path") or data.get("image_path") or "")
        path = self.get_path(validate=False)
        inferer.model_key = (str(path), _file_key(path) if path else None, str(data.get("device") or ""))
        return inferer

    def __call__(self, request, callbacks=None):
        check_clicks(request)
        return super().__call__(request, callbacks)


class LiverDeepEditTrainTask(LiverSegTrainTask):
    """:class:`lib.train.LiverSegTrainTask` of the interactive runtime bundle (``train.json`` = the automatic training
    with simulated clicks): retrains from the saved final labels like the automatic model."""

    def __init__(self, path: str, conf: Dict[str, str], **kwargs: Any):
        super().__init__(path, conf, variant="deepedit", **kwargs)
        self.description = "Train the interactive model (simulated clicks) on the final labels"

    def _update_overrides(self, overrides):
        overrides = super()._update_overrides(overrides)
        if not os.path.isfile(self.bundle_config.get("automatic_checkpoint", "") or ""):
            overrides["init_from_automatic"] = False
        return overrides
