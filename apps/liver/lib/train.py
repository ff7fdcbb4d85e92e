"""Training task of the liver app: the bundle's ``train.json`` on the datastore's final labels."""

from __future__ import annotations

import logging
import os
import random
from typing import Any, Dict

from lib import atomic
from lib.model_store import bundle_network, install_weights, last_good_weights
from lib.validation import BadRequest
from monailabel.config import settings
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask

logger = logging.getLogger(__name__)


class LiverSegTrainTask(BundleTrainTask):
    """:class:`BundleTrainTask` on a runtime bundle copy, fixed for monailabel 0.8.5 + monai 1.6.1 and small data.

    - The bundle's ``CheckpointSaver`` writes the run's best-validation weights to a staging folder,
      ``<runtime bundle>/models/staging/model.pt`` (``ckpt_dir``); when the run ends they are checked against the
      network and installed atomically as ``<runtime bundle>/models/model.pt``, the file the infer task serves, the
      previous weights kept as ``model.pt.prev`` (:func:`lib.model_store.install_weights`). A kill during training
      or during the installation leaves the served weights old or new, never partial. ``BasicInferTask`` reloads a
      network when the file changes, so the next inference uses the new weights without a restart. The first
      validation of a run always saves, so a run replaces the previous weights even if its validation Dice is lower
      (validate on held-out data before relying on it).
    - Fine-tuning starts from the served weights, or from ``model.pt.prev`` when ``model.pt`` does not load.
    - Tracking off unless the request asks for MLflow with an ``sqlite:`` tracking URI (monai 1.6.1 rejects the
      file store monailabel configures by default).
    - Validation split: at least one validation case and one training case (with a single labelled image it is used
      for both, with a warning); the split is deterministic. ``val_interval`` is capped at ``max_epochs`` so every
      run validates, hence saves.
    - ``num_workers`` defaults to 0 (a server subprocess; request ``num_workers`` to change it).
    - No labelled image: a clear 400 error instead of a crash in the bundle.
    """

    def __init__(self, path: str, conf: Dict[str, str], variant: str = "", **kwargs: Any):
        super().__init__(path, conf, enable_tracking=False, **kwargs)
        self.variant = variant

    def info(self) -> Dict[str, Any]:
        i = super().info()
        i["variant"] = self.variant or "default"
        return i

    def config(self) -> Dict[str, Any]:
        c = super().config()
        c.update({"max_epochs": 10, "val_split": 0.2, "multi_gpu": False, "tracking": ["None", "mlflow"]})
        c["num_workers"] = 0
        return c

    def _fetch_datalist(self, request, datastore: Datastore):
        ds = [{"image": d["image"], "label": d["label"]} for d in datastore.datalist() if d]
        if not ds:
            raise BadRequest("no labelled image in the datastore: save at least one final label before training")
        return sorted(ds, key=lambda d: d["image"])

    def _partition_datalist(self, datalist, request, shuffle=False):
        val_split = float(request.get("val_split", 0.2))
        if len(datalist) == 1:
            logger.warning("Only one labelled image: it is used for training and for validation")
            return list(datalist), list(datalist)
        if val_split < 0:
            return list(datalist), None
        order = list(range(len(datalist)))
        random.Random(0).shuffle(order)
        n_val = min(max(1, round(len(datalist) * val_split)), len(datalist) - 1)
        val_idx = set(order[:n_val])
        train = [d for i, d in enumerate(datalist) if i not in val_idx]
        val = [d for i, d in enumerate(datalist) if i in val_idx]
        logger.info("Training on %d labelled images, validating on %d", len(train), len(val))
        return train, val

    def _load_checkpoint(self, model_pytorch, pretrained, train_handlers):
        """Start from the served weights when ``pretrained`` (default) and they exist.

        The bundle has its own switch (``pretrained_checkpoint`` feeding a disabled ``CheckpointLoader`` in
        ``train#handlers``); monailabel only inserts its loader when the handlers hold none, so with this bundle it
        would silently train from scratch. The switch is set in :meth:`_update_overrides` instead.
        """
        use = bool(pretrained) and bool(model_pytorch) and os.path.exists(model_pytorch)
        if use and last_good_weights(model_pytorch) and not _loads(model_pytorch):
            logger.warning("%s does not load: fine-tuning from the last good weights", model_pytorch)
            model_pytorch = last_good_weights(model_pytorch)
        self._pretrained_path = model_pytorch if use else ""
        if use and self.bundle_config.get("pretrained_checkpoint") is None:
            super()._load_checkpoint(model_pytorch, pretrained, train_handlers)

    def __call__(self, request, datastore: Datastore):
        request = dict(request)
        tracking = request.get("tracking")
        tracking = tracking[0] if isinstance(tracking, list) and tracking else tracking
        uri = request.get("tracking_uri") or settings.MONAI_LABEL_TRACKING_URI or ""
        if tracking and str(tracking).lower() == "mlflow" and not str(uri).startswith("sqlite:"):
            logger.warning("MLflow tracking needs an sqlite: tracking_uri with monai 1.6.1; tracking disabled")
            tracking = "None"
        request["tracking"] = tracking or "None"
        request.setdefault("multi_gpu", False)
        if not request.get("run_id"):  # the train config advertises run_id "" (clients send it back)
            request["run_id"] = "run"
        self._request = request
        staged = os.path.join(self.staging_dir, os.path.basename(self.served_weights))
        if os.path.exists(staged):  # left by a run that was killed: not this run's weights
            os.unlink(staged)
        out = super().__call__(request, datastore)
        if os.path.isfile(staged):
            self.publish(staged)
        return out

    @property
    def served_weights(self) -> str:
        return os.path.join(self.bundle_path, "models", "model.pt")

    @property
    def staging_dir(self) -> str:
        return os.path.join(self.bundle_path, "models", "staging")

    def publish(self, staged: str) -> Dict[str, Any]:
        """Install the run's weights ``staged`` as the served ones (checked, atomic, previous kept); the staged file
        is removed. Weights that fail the check raise (the run fails, the served weights stay)."""
        try:
            info = install_weights(staged, self.served_weights, bundle_network(self.bundle_path))
        except Exception:
            logger.error("the trained weights %s were not installed; the served weights are unchanged", staged)
            raise
        finally:
            if os.path.exists(staged):
                os.unlink(staged)
            atomic.remove_stale_temps(self.staging_dir)
        logger.info("trained weights installed as %s (previous: %s)", self.served_weights, info["previous"])
        return info

    def _update_overrides(self, overrides):
        request = getattr(self, "_request", {})
        max_epochs = int(overrides.get(self.const.key_train_trainer_max_epochs(), 1))
        val_interval = int(request.get("val_interval", self.bundle_config.get("val_interval", 1)))
        overrides["val_interval"] = max(1, min(val_interval, max_epochs))
        overrides["num_workers"] = int(request.get("num_workers", 0))
        overrides["ckpt_dir"] = self.staging_dir
        overrides["output_dir"] = os.path.join(self.bundle_path, "eval")
        if self.bundle_config.get("pretrained_checkpoint") is not None:
            overrides["pretrained_checkpoint"] = getattr(self, "_pretrained_path", "")
        if "cache_rate" in request:
            overrides["cache_rate"] = float(request["cache_rate"])
        for key in ("learning_rate", "early_stop_patience"):
            if key in request:
                overrides[key] = request[key]
        return overrides


def _loads(path: str) -> bool:
    """Whether ``path`` reads with ``torch.load(weights_only=True)`` (a truncated file does not)."""
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception:
        return False
