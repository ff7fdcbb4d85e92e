"""MONAI Label app serving the ``liver_ct_seg`` bundle (liver + liver tumor CT segmentation).

Tasks are composed explicitly (see :meth:`LiverApp.init_infers` etc.); app options (``--conf KEY VALUE``):

- ``bundle``: source bundle folder (default: ``$LIVERSEG_BUNDLE``, else ``<repo>/bundles/liver_ct_seg`` found from
  this file). It is only read: the served runtime copies live under ``<app_dir>/model/`` (see ``lib/bundles.py``).
- ``variants``: extra network variants to serve besides the default, comma-separated names of
  ``configs/variants/*.json`` (``"unet,aunet,dalunet"``, ``"unet+2d"``, or ``"all"``); default none. Variant
  ``v`` is served as model ``liver_ct_seg_v`` with weights from ``<bundle>/models/v/model.pt``; a variant without
  weights gets a train task only (infer appears after training and a restart).
- ``preload``: ``true`` to load the networks at start-up.
- ``deepedit``: the interactive model ``liver_ct_seg_deepedit`` (click to correct, ``lib/deepedit.py``): ``auto``
  (default: served, for inference and training, when ``<bundle>/models/deepedit/model.pt`` or its runtime copy
  exists), ``true`` (also without weights: a train task that starts from the automatic model) or ``false``.
- ``scribbles``: ``false`` to leave out the scribbles task ``liver_scribbles`` (``lib/scribbles.py``; default on).

See README.md for the API and the monailabel 0.8.5 / monai 1.6.1 issues handled here.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

import torch
from lib import server
from lib.activelearning import EpistemicStrategy
from lib.bundles import BUNDLE_NAME, ServedBundle, parse_variants, prepare_bundle
from lib.datastore import LiverDatastore, LiverDICOMwebDatastore
from lib.deepedit import LiverDeepEditInferTask, LiverDeepEditTrainTask, interactive_bundle
from lib.infer import LiverSegInferTask, check_dicom_seg_request, default_device, install_dicom_seg_writer
from lib.scoring import DiceScoring, EpistemicTTAScoring
from lib.scribbles import SCRIBBLES_NAME, LiverScribblesTask
from lib.train import LiverSegTrainTask
from lib.validation import BadRequest, NotFound, check_id, check_train_params, read_header, safe_extract
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
from monailabel.utils.sessions import Sessions

logger = logging.getLogger(__name__)

LABELS = {"liver": 1, "tumor": 2}


def _is_upload(path: str) -> bool:
    """A file monailabel wrote for this request (uploads land in the temporary folder)."""
    real = os.path.realpath(path)
    return os.path.isfile(real) and real.startswith(os.path.realpath(tempfile.gettempdir()) + os.sep)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class SafeSessions(Sessions):
    """monailabel's session store with checked session ids and an archive extraction that stays in its folder.

    ``PUT /session/?uncompress=true`` is off unless ``LIVERSEG_ALLOW_ARCHIVES=1`` (see ``lib/security.py``); when on,
    the archive is unpacked with :func:`lib.validation.safe_extract` (no links, absolute or ``..`` paths, size
    caps) instead of ``shutil.unpack_archive``, which follows ``../`` members out of the folder.
    """

    def add_session(self, data_file: str, expiry: int = 0, uncompress: bool = False, session_id=None):
        if session_id is not None:
            check_id(session_id, "session id")
        if uncompress and not os.path.isdir(data_file):
            folder = tempfile.mkdtemp(prefix="liverseg-session-")
            try:
                if safe_extract(data_file, folder) == 0:
                    raise BadRequest("the archive holds no file")
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            return super().add_session(folder, expiry, False, session_id)
        return super().add_session(data_file, expiry, False, session_id)

    def get_session(self, session_id: str, update_ts: bool = True, fetch_cache: bool = True):
        check_id(session_id, "session id")
        return super().get_session(session_id, update_ts, fetch_cache)

    def remove_session(self, session_id: str):
        check_id(session_id, "session id")
        return super().remove_session(session_id)


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
        self.interactive = interactive_bundle(conf.get("deepedit"), self.bundle_source, self.model_root, self.served)
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
        server.install(
            self._names,
            checks={
                ("POST", "/train/{model}"): lambda kw: self.check_train_request(kw.get("model"), kw.get("params")),
                ("POST", "/train/"): lambda kw: self.check_train_request(None, kw.get("params")),
                ("GET", "/session/{session_id}"): self._check_session_download,
                ("POST", "/infer/{model}"): lambda kw: check_dicom_seg_request(kw, self.datastore()),
            },
        )
        install_dicom_seg_writer()  # output=dicom_seg: highdicom, liver / tumor codes (lib/infer.py)

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
        # interactive tasks after the choice of the default model (scoring and active learning use that one)
        if self.interactive is not None and self.interactive.weights.is_file():  # click to correct (lib/deepedit.py)
            task = LiverDeepEditInferTask(str(self.interactive.path), self.conf)
            if task.is_valid():
                infers[self.interactive.name] = task
        scribbles = LiverScribblesTask()  # graph cut on the current prediction + scribbles (lib/scribbles.py)
        if str(self.conf.get("scribbles", "true")).lower() != "false" and scribbles.is_valid():
            infers[SCRIBBLES_NAME] = scribbles
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        trainers: Dict[str, TrainTask] = {
            name: LiverSegTrainTask(str(b.path), self.conf, variant=b.variant) for name, b in self.served.items()
        }
        if self.interactive is not None:
            trainers[self.interactive.name] = LiverDeepEditTrainTask(str(self.interactive.path), self.conf)
        return trainers

    def init_strategies(self) -> Dict[str, Strategy]:
        strategies: Dict[str, Strategy] = {"random": Random(), "first": First()}
        if self.default_model in self._infers:  # an automatic model with weights
            strategies["epistemic"] = EpistemicStrategy(EpistemicTTAScoring(self._infers, self.default_model))
        return strategies

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        if self.default_model not in self._infers:
            return {}
        return {
            "dice": DiceScoring(self._infers, self.default_model),
            "epistemic": EpistemicTTAScoring(self._infers, self.default_model),
        }

    def _load_sessions(self, load=False):
        if not load:
            return None
        return SafeSessions(settings.MONAI_LABEL_SESSION_PATH, settings.MONAI_LABEL_SESSION_EXPIRY)

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
        try:
            if isinstance(image, str) and _is_upload(image):
                read_header(image, "uploaded image")  # a bomb, truncated or non-finite upload stops here
            return super().infer(request, datastore)
        except BaseException:
            # monailabel removes uploaded files only after a successful answer
            for key in ("image", "label"):
                if isinstance(request.get(key), str) and _is_upload(request[key]):
                    _remove_quietly(request[key])
            raise

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

    def _check_session_download(self, kwargs: Dict[str, Any]) -> None:
        """``GET /session/<id>?image=true`` sends the session's image file; a session made of several files holds a
        folder, which monailabel tried to send as a file (500)."""
        if not kwargs.get("image") or self._sessions is None:
            return
        info = self._sessions.get_session(kwargs.get("session_id", ""), update_ts=False)
        if info is not None and not os.path.isfile(info.image):
            raise BadRequest("this session holds a folder of files, not one image file: it cannot be downloaded")

    def check_train_request(self, model: str | None, params: Any) -> None:
        """Refuse, before a training process starts, what would fail in it: unknown trainer, parameters outside
        :data:`lib.validation.TRAIN_PARAMS`, or no final label in the datastore."""
        if params is not None and not isinstance(params, dict):
            raise BadRequest(f"training parameters must be a JSON object, not {type(params).__name__}")
        if model is None:  # POST /train/: {model: params} for each trainer
            for name, p in (params or {}).items():
                self.check_train_request(name, p)
            return
        if model not in self._trainers:
            raise NotFound(f"unknown trainer {model!r}; available: {', '.join(self._trainers)}")
        check_train_params(params)
        if not any(d for d in self.datastore().datalist()):
            raise BadRequest("no labelled image in the datastore: save at least one final label before training")

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
