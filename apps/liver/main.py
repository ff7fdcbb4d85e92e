"""MONAI Label app serving the ``liver_ct_seg`` bundle (liver + liver tumor CT segmentation).

Tasks are composed explicitly (see :meth:`LiverApp.init_infers` etc.); app options (``--conf KEY VALUE``):

- ``bundle``: source bundle folder (default: ``$LIVERSEG_BUNDLE``, else ``<repo>/bundles/liver_ct_seg`` found from
  this file). It is only read: the served runtime copies live under ``<app_dir>/model/`` (see ``lib/bundles.py``).
- ``variants``: extra network variants to serve besides the default, comma-separated names of
  ``configs/variants/*.json`` (``"unet,aunet,dalunet"``, ``"unet+2d"``, or ``"all"``); default none. Variant
  ``v`` is served as model ``liver_ct_seg_v`` with weights from ``<bundle>/models/v/model.pt``; a variant without
  weights gets a train task only (infer appears after training and a restart).
- ``preload``: ``true`` to load the networks at start-up.

See README.md for the API and the monailabel 0.8.5 / monai 1.6.1 issues handled here.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

import torch
from lib import server
from lib.activelearning import EpistemicStrategy
from lib.bundles import BUNDLE_NAME, ServedBundle, parse_variants, prepare_bundle
from lib.datastore import LiverDatastore, LiverDICOMwebDatastore
from lib.infer import LiverSegInferTask, default_device
from lib.scoring import DiceScoring, EpistemicTTAScoring
from lib.train import LiverSegTrainTask
from lib.validation import BadRequest, NotFound, check_id
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.batch_infer import BatchInferTask
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

logger = logging.getLogger(__name__)

LABELS = {"liver": 1, "tumor": 2}


def default_bundle_source() -> Path:
    env = os.environ.get("LIVERSEG_BUNDLE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "bundles" / BUNDLE_NAME


class CPUFriendlyBatchInfer(BatchInferTask):
    """Batch inference that defaults to one worker on the CPU when no GPU is present (monailabel assumes GPUs)."""

    def __call__(self, request, datastore: Datastore, infer: Callable):
        request = dict(request)
        if not torch.cuda.is_available():
            request["multi_gpu"] = False
            request["device"] = "cpu"
        return super().__call__(request, datastore, infer)


class LiverApp(MONAILabelApp):
    """Liver / liver-tumor segmentation app: infer, train, active learning and scoring on one bundle."""

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]):
        conf = conf or {}
        self.bundle_source = Path(conf.get("bundle") or default_bundle_source()).resolve()
        if not (self.bundle_source / "configs" / "inference.json").is_file():
            raise ValueError(
                f"bundle not found: {self.bundle_source} has no configs/inference.json "
                "(pass --conf bundle <path to bundles/liver_ct_seg>)"
            )
        self.variants = [""] + parse_variants(conf.get("variants"), self.bundle_source)
        self.model_root = Path(app_dir) / "model"
        self.served: Dict[str, ServedBundle] = {}
        for v in self.variants:
            b = prepare_bundle(self.bundle_source, self.model_root, v)
            self.served[b.name] = b
        self.default_model = BUNDLE_NAME
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="Liver CT segmentation (liverseg)",
            description="Liver and liver-tumor segmentation in CT with the liver_ct_seg bundle; volumetry in results",
            version="1.0",
            labels=list(LABELS),  # a list: the 0.8.5 OHIF panel calls all_labels.push()
        )
        server.install(self._names)

    # ---------------------------------------------------------------------------------------------------------
    # composition
    # ---------------------------------------------------------------------------------------------------------
    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):
                return super().init_datastore()
            # DICOMweb: labels from the store are put on their image's grid and checked (see lib/datastore.py)
            self.studies = self.studies.strip().rstrip("/")
            self._download_dcmqi_tools()  # no-op when dcmqi's itkimage2segimage is installed (liverseg serve checks)
            return LiverDICOMwebDatastore.from_settings(self.studies)
        return LiverDatastore(
            self.studies,
            extensions=("*.nii.gz", "*.nii", "*.nrrd"),
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name, b in self.served.items():
            if not b.weights.is_file():
                logger.warning("Model %r has no weights (%s): not served for inference", name, b.weights)
                continue
            task = LiverSegInferTask(str(b.path), self.conf, variant=b.variant)
            if task.is_valid():
                infers[name] = task
        if self.default_model not in infers and infers:
            self.default_model = next(iter(infers))
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        return {name: LiverSegTrainTask(str(b.path), self.conf, variant=b.variant) for name, b in self.served.items()}

    def init_strategies(self) -> Dict[str, Strategy]:
        strategies: Dict[str, Strategy] = {"random": Random(), "first": First()}
        if self._infers:
            strategies["epistemic"] = EpistemicStrategy(EpistemicTTAScoring(self._infers, self.default_model))
        return strategies

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        if not self._infers:
            return {}
        return {
            "dice": DiceScoring(self._infers, self.default_model),
            "epistemic": EpistemicTTAScoring(self._infers, self.default_model),
        }

    def init_batch_infer(self) -> Callable:
        return CPUFriendlyBatchInfer()

    def _names(self) -> Dict[str, list]:
        return {
            "infer": list(self._infers),
            "train": list(self._trainers),
            "activelearning": list(self._strategies),
            "scoring": list(self._scoring_methods),
        }

    # ---------------------------------------------------------------------------------------------------------
    # request validation (4xx instead of monailabel's 500s; see lib/server.py)
    # ---------------------------------------------------------------------------------------------------------
    def infer(self, request, datastore=None):
        model = request.get("model")
        if model not in self._infers:
            raise NotFound(f"unknown model {model!r}; available: {', '.join(self._infers) or '(none: no weights)'}")
        image = request.get("image")
        if isinstance(image, str):
            if os.path.exists(image):
                # monailabel passes uploads as temporary files and sessions as files in the session store; other
                # server paths are not for clients to read
                allowed = [tempfile.gettempdir()] + ([self._sessions.store_path] if self._sessions else [])
                real = os.path.realpath(image)
                if not any(real.startswith(os.path.realpath(a) + os.sep) for a in allowed):
                    raise BadRequest("image must be a datastore image id or an uploaded file, not a server path")
            else:
                check_id(image, "image id")
                ds = datastore if datastore else self.datastore()
                if not ds.get_image_uri(image):
                    raise NotFound(f"image {image!r} is not in the datastore")
        request = copy.deepcopy(request)
        request.setdefault("device", default_device())
        return super().infer(request, datastore)

    def next_sample(self, request):
        strategy = request.get("strategy") or "random"
        if strategy not in self._strategies:
            raise NotFound(f"unknown strategy {strategy!r}; available: {', '.join(self._strategies)}")
        return super().next_sample(request)

    def scoring(self, request, datastore=None):
        method = request.get("method")
        if method not in self._scoring_methods:
            raise NotFound(f"unknown scoring method {method!r}; available: {', '.join(self._scoring_methods)}")
        return super().scoring(request, datastore)

    def train(self, request):
        model = request.get("model")
        if model not in self._trainers:
            raise NotFound(f"unknown trainer {model!r}; available: {', '.join(self._trainers)}")
        request = dict(request)
        request.setdefault("device", default_device())
        return super().train(request)

    def info(self, request: Any = None):
        meta = super().info()
        meta["bundle"] = {
            "source": str(self.bundle_source),
            "runtime": {k: str(v.path) for k, v in self.served.items()},
            "variants": [v or "default" for v in self.variants],
        }
        return meta
