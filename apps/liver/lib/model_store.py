"""Served model weights: checked before they are served, replaced atomically, the last good ones kept.

monailabel 0.8.5 writes ``PUT /model/{model}`` uploads over the served ``model.pt`` in place (``shutil.copy``), and
the bundle's ``CheckpointSaver`` writes ``model.pt`` in place during training: a kill during either left a 0-byte or
truncated ``model.pt`` and every inference then answered 500, and any file was accepted as weights. Here:

- :func:`install_weights` writes the new weights to a temporary file next to the served one (:mod:`lib.atomic`),
  loads them with ``torch.load(weights_only=True)`` into a copy of the served network (``strict``, every tensor
  finite), keeps the served file as ``model.pt.prev`` when it loads (a hard link, no copy), then renames the new file
  over ``model.pt`` and fsyncs the folder. A kill at any point leaves ``model.pt`` old or new and complete; weights
  that fail the check answer 400 and change nothing; a full disk answers 507 and changes nothing.
- :func:`last_good_weights`: ``model.pt.prev``, which inference falls back to when ``model.pt`` cannot be loaded
  (see :class:`lib.infer.LiverSegInferTask`).
- :func:`install_model_routes` puts checked ``PUT`` / ``DELETE /model/{model}`` routes in front of monailabel's.
- Training (:class:`lib.train.LiverSegTrainTask`) saves its checkpoints in a staging folder and installs the final
  best one with :func:`install_weights`.

Every installation of one target holds a file lock (``.model.pt.lock`` next to it), so the server and a training
process never interleave.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import IO, Any, Dict, Iterator, Mapping, Optional, Union

import torch
from fastapi import UploadFile  # module level: FastAPI resolves the routes' string annotations in these globals
from filelock import FileLock
from lib import atomic
from lib.validation import BadRequest, NotFound
from monailabel.endpoints.user.auth import User

logger = logging.getLogger(__name__)

PREVIOUS_SUFFIX = ".prev"
DELETED_SUFFIX = ".deleted"
STATE_KEY = "model"  # the bundle's CheckpointSaver saves {"model": state_dict}; a bare state dict is accepted too
# an upload larger than this is refused (413); the shipped default model is 6 MB (LIVERSEG_MAX_MODEL_BYTES changes it)
MAX_MODEL_BYTES = int(os.environ.get("LIVERSEG_MAX_MODEL_BYTES") or 2 << 30)
CHUNK = 1 << 20

Source = Union[str, "os.PathLike[str]", IO[bytes]]


class TooLarge(BadRequest):
    """An uploaded weights file over :data:`MAX_MODEL_BYTES`."""


def previous_path(target: Union[str, "os.PathLike[str]"]) -> str:
    """Where the last good weights of ``target`` are kept: ``<target>.prev``."""
    return os.fspath(target) + PREVIOUS_SUFFIX


def _lock(target: str) -> FileLock:
    folder, name = os.path.split(target)
    return FileLock(os.path.join(folder, f".{name}.lock"))


def load_checked(path: Union[str, "os.PathLike[str]"], network: torch.nn.Module, state_key: str = STATE_KEY) -> dict:
    """The state dict in ``path`` after checking that it is weights for ``network``: readable with
    ``torch.load(weights_only=True)`` (no code runs), a ``{state_key: state_dict}`` checkpoint or a bare state dict
    of tensors, every value finite, and loadable into a copy of ``network`` with ``strict=True``.

    Raises:
        BadRequest: what is wrong (unreadable or truncated file, not a state dict, non-finite values, missing,
            unexpected or mis-shaped parameters).
    """
    try:
        ckpt = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, not a torch file: many exception types
        raise BadRequest(
            f"the weights file could not be read with torch.load(weights_only=True) ({type(e).__name__}: "
            f"{str(e)[:300]})"
        ) from e
    state = ckpt.get(state_key, ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise BadRequest(
            f"the weights file holds a {type(ckpt).__name__}, not a state dict (expected {{'{state_key}': "
            "state_dict}} as the bundle's CheckpointSaver writes, or a bare state dict)"
        )
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise BadRequest(f"the state dict holds entries that are not tensors: {not_tensors[:5]}")
    not_finite = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if not_finite:
        raise BadRequest(f"the weights hold non-finite values (NaN or inf) in {not_finite[:5]}")
    try:
        copy.deepcopy(network).cpu().load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BadRequest(f"the weights do not fit the served network: {str(e)[:600]}") from e
    return dict(state)


def is_loadable(path: Union[str, "os.PathLike[str]"], network: torch.nn.Module, state_key: str = STATE_KEY) -> bool:
    """Whether ``path`` exists and passes :func:`load_checked`."""
    if not os.path.isfile(path):
        return False
    try:
        load_checked(path, network, state_key)
        return True
    except BadRequest:
        return False


def last_good_weights(target: Union[str, "os.PathLike[str]"]) -> Optional[str]:
    """``<target>.prev`` when it exists (it is only ever written with weights that passed the check), else None."""
    prev = previous_path(target)
    return prev if os.path.isfile(prev) else None


def _copy_source(source: Source, out: IO[bytes], max_bytes: int) -> int:
    if isinstance(source, (str, os.PathLike)):
        size = os.path.getsize(source)
        if size > max_bytes:
            raise TooLarge(f"the weights file has {size} bytes; at most {max_bytes} are accepted")
        with open(source, "rb") as f:
            atomic._copy_data(f, out)
        return size
    total = 0
    while True:
        chunk = source.read(CHUNK)
        if not chunk:
            return total
        total += len(chunk)
        if total > max_bytes:
            raise TooLarge(f"the weights file is larger than {max_bytes} bytes (LIVERSEG_MAX_MODEL_BYTES)")
        out.write(chunk)


def install_weights(
    source: Source,
    target: Union[str, "os.PathLike[str]"],
    network: torch.nn.Module,
    state_key: str = STATE_KEY,
    max_bytes: int = MAX_MODEL_BYTES,
) -> Dict[str, Any]:
    """Make ``source`` (a file or a binary stream) the weights served from ``target``, atomically, after checking
    them (:func:`load_checked`); the served weights, when they load, are kept as ``<target>.prev`` first.

    Returns:
        ``{"checksum": sha256, "modified_time": int, "size": int, "previous": path or None}``.

    Raises:
        BadRequest: the new weights fail the check (``target`` unchanged); TooLarge (a BadRequest) over
            ``max_bytes``.
        InsufficientStorage: the disk is full (``target`` unchanged).
    """
    target = os.fspath(target)
    folder, name = os.path.split(target)
    os.makedirs(folder, exist_ok=True)
    kept: Dict[str, Optional[str]] = {"previous": last_good_weights(target)}

    def check_then_keep_previous(tmp: str) -> None:
        load_checked(tmp, network, state_key)
        if os.path.isfile(target):
            if is_loadable(target, network, state_key):
                atomic.replace_with_link(target, previous_path(target))
                kept["previous"] = previous_path(target)
            else:
                logger.warning("the served weights %s do not load: not kept as the last good ones", target)

    with _lock(target):
        atomic.remove_stale_temps(folder, name)
        atomic.remove_stale_temps(folder, name + PREVIOUS_SUFFIX)
        with atomic.atomic_write(target, "wb", what=f"the model weights {target}", check=check_then_keep_previous) as f:
            size = _copy_source(source, f, max_bytes)
        st = os.stat(target)
    logger.info("model weights installed: %s (%d bytes; last good weights: %s)", target, size, kept["previous"])
    return {
        "checksum": _sha256(target),
        "modified_time": int(st.st_mtime),
        "size": size,
        "previous": kept["previous"],
    }


def delete_weights(target: Union[str, "os.PathLike[str]"]) -> str:
    """Stop serving ``target``: renamed (atomically) to ``<target>.<YYYYmmdd_HHMMSS>.deleted``, as monailabel does;
    returns the new name. ``<target>.prev`` stays (inference does not fall back to it while ``target`` is missing).

    Raises:
        NotFound: no weights at ``target``.
    """
    target = os.fspath(target)
    with _lock(target):
        if not os.path.isfile(target):
            raise NotFound(f"no weights file for this model ({os.path.basename(target)} does not exist)")
        deleted = f"{target}.{time.strftime('%Y%m%d_%H%M%S')}{DELETED_SUFFIX}"
        atomic.rename(target, deleted)
    logger.info("model weights %s removed (kept as %s)", target, deleted)
    return deleted


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return f"SHA256:{h.hexdigest()}"


@contextmanager
def _on_sys_path(path: str) -> Iterator[None]:
    sys.path.insert(0, path)
    try:
        yield
    finally:
        if path in sys.path:
            sys.path.remove(path)


def bundle_network(bundle_path: Union[str, "os.PathLike[str]"], config: str = "inference.json") -> torch.nn.Module:
    """The (untrained) ``network_def`` of a bundle, built from its config with its ``scripts`` package importable."""
    from monai.bundle import ConfigParser
    from monailabel.utils.others.class_utils import unload_module

    bundle_path = os.fspath(bundle_path)
    parser = ConfigParser()
    parser.read_config(os.path.join(bundle_path, "configs", config))
    parser["bundle_root"] = bundle_path
    with _on_sys_path(bundle_path):
        unload_module("scripts")
        return parser.get_parsed_content("network_def", instantiate=True)


# -------------------------------------------------------------------------------------------------------------------
# the routes
# -------------------------------------------------------------------------------------------------------------------


def _served_task(model: str) -> Any:
    from monailabel.interfaces.utils.app import app_instance

    instance = app_instance()
    infers = getattr(instance, "_infers", {}) or {}
    task = infers.get(model)
    if task is None:
        raise NotFound(f"unknown model {model!r}; available: {', '.join(sorted(infers)) or '(none)'}")
    if getattr(task, "network", None) is None:
        raise BadRequest(f"model {model!r} is served as TorchScript: its weights cannot be checked, so not replaced")
    return task


def weights_path(task: Any) -> str:
    """The file an infer task serves its weights from (its configured path, not a fallback)."""
    from monailabel.tasks.infer.basic_infer import BasicInferTask

    path = getattr(task, "weights_path", None) or BasicInferTask.get_path(task, False)
    if not path:
        raise BadRequest("this model has no weights file configured")
    return os.fspath(path)


def update_model(model: str, source: Source) -> Dict[str, Any]:
    """``PUT /model/{model}``: :func:`install_weights` for a served model."""
    task = _served_task(model)
    return install_weights(source, weights_path(task), task.network, getattr(task, "model_state_dict", STATE_KEY))


def delete_model(model: str) -> Dict[str, Any]:
    """``DELETE /model/{model}``: :func:`delete_weights` for a served model."""
    return {"deleted": os.path.basename(delete_weights(weights_path(_served_task(model))))}


def install_model_routes(fastapi_app: Any, api_prefix: str = "", role: Optional[str] = None) -> int:
    """Put checked, atomic ``PUT`` and ``DELETE /model/{model}`` routes in front of monailabel's (which write in
    place and accept anything); returns how many routes were added. ``role``: the monailabel role required
    (default: the admin role, ``MONAI_LABEL_AUTH_ROLE_ADMIN``)."""
    from fastapi import APIRouter, Depends, File
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import RBAC
    from starlette.concurrency import run_in_threadpool

    role = role or settings.MONAI_LABEL_AUTH_ROLE_ADMIN
    router = APIRouter(prefix="/model", tags=["Model"])

    async def put_model(model: str, file: UploadFile = File(...), user: User = Depends(RBAC(role))):
        return await run_in_threadpool(update_model, model, file.file)

    async def remove_model(model: str, user: User = Depends(RBAC(role))):
        return await run_in_threadpool(delete_model, model)

    put_model.__doc__ = "Upload model weights: checked (torch.load weights_only, strict) and swapped in atomically."
    remove_model.__doc__ = "Stop serving a model's weights (renamed to <file>.<time>.deleted)."
    router.add_api_route("/{model}", put_model, methods=["PUT"], summary="Upload/Update Model File (checked, atomic)")
    router.add_api_route("/{model}", remove_model, methods=["DELETE"], summary="Delete Model File")
    routes = fastapi_app.router.routes
    before = len(routes)
    fastapi_app.include_router(router, prefix=api_prefix)
    added = routes[before:]
    del routes[before:]
    routes[0:0] = added
    return len(added)
