"""Inference task of the liver app: the bundle's own pipeline, plus a volumetry report in the result JSON."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from lib.bundles import bundle_module
from lib.model_store import last_good_weights
from lib.validation import BadRequest, read_header
from monai.data import MetaTensor
from monai.transforms import SaveImaged
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.utils.others.generic import file_ext

from liverseg.volumetry import volumetry

logger = logging.getLogger(__name__)

STASH_KEY = "liverseg_stashed_keys"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class LiverSegInferTask(BundleInferTask):
    """:class:`BundleInferTask` on a runtime copy of the ``liver_ct_seg`` bundle (one network variant).

    - The bundle's postprocessing (softmax, ``InvertArgmaxd``: MONAI's inversion back to the source geometry fused
      with the argmax, largest component) runs as it is; its ``SaveImaged`` is dropped (monailabel writes the
      result). ``Restored`` (added by monailabel) then only sets the output affine to the input's
      ``original_affine``: after the inversion the
      prediction already has the input's shape and voxel order, so nothing is flipped or resampled twice.
    - monai 1.6.1's ``Spacingd`` calls ``.update()`` on every data key starting with ``image_``; monailabel adds
      the string ``image_path``. String-valued ``image_*`` / ``label_*`` keys are therefore set aside before the
      pre-transforms and put back before the writer (which needs ``image_path`` for the output format).
    - The input is checked first (readable 3D NIfTI / NRRD, or a DICOM folder): bad uploads get a 400.
    - A NIfTI result is written by the bundle's own ``LabelNiftiWriter`` (what its ``SaveImaged`` uses; nibabel,
      ISA-L gzip, only the labels' bounding box reordered): 0.1-0.2 s instead of 0.6-1.2 s through ITK for a
      512 x 512 x 200 mask. Other formats (``.nrrd``) go through monailabel's writer.
    - The result JSON gets ``volumetry`` (:func:`liverseg.volumetry.volumetry` on the final mask and its affine,
      i.e. in the source geometry).
    - Device: ``cuda`` when available, else ``cpu`` (request ``"device"`` overrides).
    - Weights that do not load (a ``model.pt`` truncated by a crash outside the app's atomic writes, see
      :mod:`lib.model_store`): the last good weights ``model.pt.prev`` are served instead, with an error in the log,
      until ``model.pt`` changes; without them the error stands (500). A missing ``model.pt`` (deleted) is not
      replaced by them.
    """

    def __init__(self, path: str, conf: Dict[str, str], variant: str = "", **kwargs: Any):
        super().__init__(path, conf, post_filter=[SaveImaged], **kwargs)
        self.variant = variant
        self.label_writer = None
        if self.valid:
            self.label_writer = bundle_module(path, "transforms").LabelNiftiWriter
            # glibc keeps freed memory for the next request (the bundle's scripts/runtime.py, as its inference.json
            # does): no page faults for every new activation of the network, about a quarter of its CPU time
            bundle_module(path, "runtime").keep_freed_memory()
            others = [d for d in self._config.get("device", []) if d != default_device()]
            self._config["device"] = [default_device()] + others
            self.description = f"{self.description} [variant: {variant or 'default'}]"

    def info(self) -> Dict[str, Any]:
        i = super().info()
        i["variant"] = self.variant or "default"
        return i

    @property
    def weights_path(self) -> Optional[str]:
        """The weights file this task serves (``models/model.pt``), whether or not it loads."""
        return BasicInferTask.get_path(self, validate=False)

    def get_path(self, validate=True):
        path = super().get_path(validate)
        return self._fallback_for(path) or path

    def _fallback_for(self, path: Optional[str]) -> Optional[str]:
        """The last good weights while ``path`` is the same file that failed to load; else None."""
        broken = getattr(self, "_broken_weights", None)
        if not broken or not path:
            return None
        return broken[1] if _file_key(path) == broken[0] else None

    def _get_network(self, device, data):
        path = BasicInferTask.get_path(self)
        prev = self._fallback_for(path)
        if prev:  # model.pt is still the file that failed: straight to the last good weights
            return super()._get_network(device, self._with_weights(data, prev))
        try:
            return super()._get_network(device, data)
        except Exception as e:
            prev = last_good_weights(path) if path else None
            if not prev:
                raise
            self._broken_weights = (_file_key(path), prev)
            logger.error(
                "the served weights %s could not be loaded (%s: %s); serving the last good weights %s until it changes",
                path, type(e).__name__, str(e)[:300], prev,
            )  # fmt: skip
            return super()._get_network(device, self._with_weights(data, prev))

    def _with_weights(self, data: Optional[Dict[str, Any]], weights: str) -> Optional[Dict[str, Any]]:
        """``data`` with its ``model_filename`` (which monailabel prefers to the task's path: ``model.pt``, from the
        task's config) pointing at ``weights``, a file in the same folder."""
        if not data or not self._config.get("model_filename"):
            return data
        return {**data, "model_filename": os.path.basename(weights)}

    def __call__(self, request, callbacks=None) -> Tuple[Any, Dict]:
        image = request.get("image")
        if isinstance(image, str):
            if not os.path.exists(image):
                raise BadRequest(f"image {image!r} not found")
            if not os.path.isdir(image):  # a folder is a DICOM series, read by the bundle's loader
                # shape and geometry only: the loader reads the data next, and a corrupt stream fails there (400)
                read_header(image, "image", check_data=False)
        request = dict(request)
        if not request.get("device"):
            request["device"] = default_device()
        return super().__call__(request, callbacks)

    def run_pre_transforms(self, data: Dict[str, Any], transforms):
        stash = {
            k: data.pop(k)
            for k in list(data.keys())
            if isinstance(k, str) and k.startswith(("image_", "label_")) and isinstance(data[k], str)
        }
        data[STASH_KEY] = stash
        try:
            return super().run_pre_transforms(data, transforms)
        except Exception as e:
            raise BadRequest(f"the image could not be loaded or preprocessed ({type(e).__name__}: {e})") from e

    def writer(self, data: Dict[str, Any], extension=None, dtype=None) -> Tuple[Any, Any]:
        stash = data.pop(STASH_KEY, None) or {}
        for k, v in stash.items():
            data.setdefault(k, v)
        if not data.get("result_extension") and not data.get("image_path", "").endswith((".nii.gz", ".nii", ".nrrd")):
            data["result_extension"] = ".nii.gz"  # DICOM folder input
        if dtype is None and not data.get("result_dtype"):
            dtype = np.uint8
        ext = extension or data.get("result_extension") or file_ext(data.get("image_path", ""))
        if ext in (".nii", ".nii.gz") and self.label_writer is not None:
            result_file, result_json = self.write_nifti(data, ext, dtype or data["result_dtype"])
        else:
            result_file, result_json = super().writer(data, extension=extension, dtype=dtype)
        result_json = dict(result_json or {})
        try:
            result_json["volumetry"] = self.volumetry(data)
        except Exception as e:  # the mask is still useful without the report
            logger.warning("volumetry failed: %s", e)
            result_json["volumetry"] = {"error": str(e)}
        result_json["variant"] = self.variant or "default"
        return result_file, result_json

    def write_nifti(self, data: Dict[str, Any], ext: str, dtype: Any) -> Tuple[str, Dict[str, Any]]:
        """The mask (after ``Restored``: source shape, ``<key>_meta_dict["affine"]`` = the source's affine) as a
        NIfTI temp file, by the bundle's writer; returns ``(file, result json)`` as monailabel's writer does."""
        pred = data[self.output_label_key]
        affine = self.result_affine(data)
        writer = self.label_writer(output_dtype=dtype)
        writer.set_data_array(pred, channel_dim=0 if pred.ndim == 4 else None)
        writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
        fd, output_file = tempfile.mkstemp(suffix=ext)
        os.close(fd)
        writer.write(output_file)
        return output_file, dict(data.get(self.output_json_key) or {})

    def result_affine(self, data: Dict[str, Any]) -> Any:
        """The mask's affine: ``<key>_meta_dict["affine"]`` (the source's, set by ``Restored``), else the mask's own
        (a MetaTensor), else None."""
        pred = data[self.output_label_key]
        affine = (data.get(f"{self.output_label_key}_meta_dict") or {}).get("affine")
        if affine is None and isinstance(pred, MetaTensor):
            affine = pred.affine
        return affine

    def volumetry(self, data: Dict[str, Any]) -> Dict[str, Any]:
        pred = data[self.output_label_key]
        arr = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        affine = self.result_affine(data)
        if affine is None:
            raise ValueError("no affine for the prediction")
        affine = affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else np.asarray(affine)
        if arr.dtype.kind not in "iub":  # a float prediction: whole numbers expected; integer masks go as they are
            arr = np.rint(arr).astype(np.int16)
        return volumetry(arr, affine)


def _file_key(path: str) -> Optional[Tuple[int, int, int]]:
    """What identifies one version of a file: inode, size, modification time (ns); None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


# -------------------------------------------------------------------------------------------------------------------
# output=dicom_seg (issue 17): checked before inference, written with highdicom
# -------------------------------------------------------------------------------------------------------------------


def _output_name(output: Any) -> str:
    return str(getattr(output, "value", output) or "")


def check_dicom_seg_request(kwargs: Dict[str, Any], datastore: Any) -> None:
    """``POST /infer/<model>?output=dicom_seg``: refuse (4xx) before any inference what monailabel would refuse only
    after it (404 for missing parameters, 500 for a datastore that is not DICOMweb or an uploaded file).

    Raises:
        BadRequest: not a DICOMweb datastore, no ``image`` series id, or ``params.label_info`` missing / not a list
            of objects (monailabel's endpoint needs it; the segments' names and codes are the app's own).
    """
    if _output_name(kwargs.get("output")) != "dicom_seg":
        return
    from lib.validation import check_params_json
    from monailabel.datastore.dicom import DICOMWebDatastore

    if not isinstance(datastore, DICOMWebDatastore):
        raise BadRequest(
            "output=dicom_seg needs a DICOMweb datastore (start the server with --studies http://<host>/dicom-web); "
            "valid outputs here: image, json, all"
        )
    if kwargs.get("file") is not None or not kwargs.get("image"):
        raise BadRequest("output=dicom_seg needs image=<series instance UID of the store> (not an uploaded file)")
    params = check_params_json(kwargs.get("params") or "")
    info = params.get("label_info")
    if not isinstance(info, list) or not info or not all(isinstance(i, dict) for i in info):
        raise BadRequest(
            "output=dicom_seg needs params.label_info: a non-empty list of objects, e.g. "
            '{"label_info": [{"name": "liver"}, {"name": "tumor"}], "model_name": "liver_ct_seg"}; '
            f"got {info!r}"[:400]
        )


def _model_of(label_info: Any) -> Tuple[str, str]:
    """(model name, bundle version) for the SEG's algorithm identification: the request's ``model_name`` (default the
    app's default model) and the version in that served bundle's metadata."""
    import json

    from monailabel.config import settings

    from liverseg.segment import REPO_BUNDLE

    name = next((str(i["model_name"]) for i in label_info or [] if isinstance(i, dict) and i.get("model_name")), "")
    name = name or REPO_BUNDLE.name
    version = "unknown"
    for root in (os.path.join(settings.MONAI_LABEL_APP_DIR or "", "model", name), str(REPO_BUNDLE)):
        meta = os.path.join(root, "configs", "metadata.json")
        if os.path.isfile(meta):
            with open(meta) as f:
                version = str(json.load(f).get("version", "unknown"))
            break
    return name, version


def label_on_series(label_path: str, affine: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """The label file's voxels in the series' voxel order (``[column, row, slice]``, :func:`read_dicom_series`):
    the same grid up to axis order and flips, checked in world space."""
    import nibabel as nib
    import nibabel.orientations as nio

    img = nib.load(label_path)
    data = np.asarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    transform = nio.ornt_transform(nio.io_orientation(img.affine), nio.io_orientation(affine))
    out = nio.apply_orientation(data, transform)
    out_affine = img.affine @ nio.inv_ornt_aff(transform, data.shape)
    if out.shape != tuple(shape) or not np.allclose(out_affine, affine, atol=1e-3):
        raise BadRequest(f"the result (shape {data.shape}) is not on the series' grid (shape {tuple(shape)})")
    return np.rint(out).astype(np.uint8)


def dicom_seg_from_result(
    series_dir: str, label: str, label_info: Any, file_ext: str = "*", use_itk: bool = True
) -> str:
    """What monailabel's endpoint calls as ``nifti_to_dicom_seg``: a highdicom SEG (:mod:`liverseg.dicom.seg`:
    liver / tumor SNOMED CT codes, AUTOMATIC, the model's name and version) of the result ``label`` on the series
    ``series_dir``; returns the SEG file (a temporary file the endpoint sends and deletes)."""
    return _write_dicom_seg(series_dir, label, label_info, "AUTOMATIC")


def dicom_seg_from_saved_label(
    series_dir: str, label: str, label_info: Any, file_ext: str = "*", use_itk: bool = True
) -> str:
    """What monailabel's DICOMweb datastore calls as ``nifti_to_dicom_seg`` when a ``final`` label is saved: a
    highdicom SEG of a label a person made: SEMIAUTOMATIC (naming the model) when the client says it started from a
    model (``model_name`` in its ``label_info``), MANUAL otherwise; never AUTOMATIC."""
    from_model = any(isinstance(i, dict) and i.get("model_name") for i in label_info or [])
    return _write_dicom_seg(series_dir, label, label_info, "SEMIAUTOMATIC" if from_model else "MANUAL")


def _write_dicom_seg(series_dir: str, label: str, label_info: Any, algorithm_type: str) -> str:
    from liverseg.dicom import read_dicom_series
    from liverseg.dicom.seg import Algorithm, write_seg
    from liverseg.errors import InputError

    try:
        array, affine, meta = read_dicom_series(series_dir)
    except InputError as e:
        raise BadRequest(f"the series could not be read for the DICOM SEG: {e}") from e
    mask = label_on_series(label, affine, array.shape)
    name, version = _model_of(label_info)
    fd, out = tempfile.mkstemp(suffix=".dcm")
    os.close(fd)
    try:
        return str(
            write_seg(
                mask, meta["headers"], out, algorithm=Algorithm(name, version), algorithm_type=algorithm_type,
                series_description=f"{name} liver segmentation (not for diagnosis)" if algorithm_type == "AUTOMATIC"
                else f"liver segmentation, {algorithm_type.lower()}",
            )
        )
    except ValueError as e:  # an empty result: nothing to store
        os.unlink(out)
        raise BadRequest(f"no DICOM SEG: {e}") from e


def install_dicom_seg_writer() -> bool:
    """Make monailabel write its DICOM SEGs with highdicom instead of dcmqi's ``nifti_to_dicom_seg`` (which coded
    every segment as Spleen, with "AIName" / "Reader1" and AUTOMATIC for everything): the ``/infer`` endpoint's
    ``output=dicom_seg`` with :func:`dicom_seg_from_result`, the DICOMweb datastore's saved ``final`` labels with
    :func:`dicom_seg_from_saved_label`. True when installed now, False when it already was."""
    import monailabel.datastore.dicom as datastore
    import monailabel.endpoints.infer as endpoint

    if endpoint.nifti_to_dicom_seg is dicom_seg_from_result:
        return False
    endpoint.nifti_to_dicom_seg = dicom_seg_from_result
    datastore.nifti_to_dicom_seg = dicom_seg_from_saved_label
    return True
