"""Inference task of the liver app: the bundle's own pipeline, plus a volumetry report in the result JSON."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Dict, Tuple

import numpy as np
import torch
from lib.bundles import bundle_module
from lib.validation import BadRequest, read_header
from monai.data import MetaTensor
from monai.transforms import SaveImaged
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
