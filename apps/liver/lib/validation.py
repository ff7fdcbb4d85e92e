"""Checks of what clients send (ids, tags, uploaded images and labels), raising 4xx-mapped errors.

monailabel 0.8.5 answers most bad input with a 500 (or, for ids with ``../``, writes outside the datastore); the app
runs these checks first and raises :class:`BadRequest` / :class:`NotFound`, which the server maps to 400 / 404
(see :mod:`lib.server`).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd")
# a 512 x 512 x 3072 CT; more is refused before anything is allocated (LIVERSEG_MAX_VOXELS changes it)
MAX_VOXELS = int(os.environ.get("LIVERSEG_MAX_VOXELS") or 512 * 512 * 3072)
MAX_PARAMS_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
STREAM_CHUNK = 4 << 20


class BadRequest(MONAILabelException):
    """Client error: answered with HTTP 400."""

    def __init__(self, msg: str):
        super().__init__(MONAILabelError.INVALID_INPUT, msg)


class NotFound(MONAILabelException):
    """Unknown image / label / model: answered with HTTP 404."""

    def __init__(self, msg: str):
        super().__init__(MONAILabelError.INVALID_INPUT, msg)


class InsufficientStorage(MONAILabelException):
    """A save failed for lack of space (disk full, quota, file-size limit); the previous file is kept: HTTP 507.
    Raised by :mod:`lib.atomic`."""

    def __init__(self, msg: str):
        super().__init__(MONAILabelError.SERVER_ERROR, msg)


def check_id(value: str, what: str = "image id") -> str:
    """An id or tag must be a plain file-name stem: letters, digits, ``._-``, no path separators, no ``..``."""
    if not isinstance(value, str) or not ID_PATTERN.match(value) or ".." in value:
        raise BadRequest(
            f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' only (no path separators, no '..')"
        )
    return value


def _suffix(path: str) -> str:
    name = os.path.basename(path).lower()
    for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    return Path(name).suffix


def read_header(path: str, what: str = "image", check_data: bool = True) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and 4x4 affine (RAS) of a NIfTI or NRRD file; ``check_data`` also streams a NIfTI's voxels through
    :func:`check_nifti_data` (size as the header declares, finite values) without holding them in memory (0.6 s for a
    512 x 512 x 200 ``.nii.gz``). Uploads are checked so; a file that is read in full next anyway need not be.

    Raises:
        BadRequest: unsupported format, unreadable or corrupt file, not a 3D volume (a trailing singleton
            dimension is accepted), more than ``MAX_VOXELS`` voxels.
    """
    suffix = _suffix(path)
    if suffix not in IMAGE_SUFFIXES:
        raise BadRequest(
            f"unsupported {what} format {suffix or '(no extension)'!r}: send NIfTI (.nii, .nii.gz) or NRRD (.nrrd)"
        )
    try:
        if suffix in (".nii", ".nii.gz"):
            import nibabel as nib

            img = nib.load(path)
            shape = tuple(int(s) for s in img.shape)
            affine = np.asarray(img.affine, dtype=float)
            if int(np.prod(shape)) > MAX_VOXELS:
                raise BadRequest(f"the {what} has {int(np.prod(shape))} voxels; at most {MAX_VOXELS} are accepted")
            if check_data:
                check_nifti_data(path, img, what)
        else:
            import nrrd

            hdr = nrrd.read_header(path)
            shape = tuple(int(s) for s in hdr["sizes"])
            dirs = np.asarray(hdr.get("space directions"), dtype=float)
            dirs = dirs[~np.isnan(dirs).any(axis=1)] if dirs.ndim == 2 else dirs
            affine = np.eye(4)
            if dirs.shape == (3, 3):
                affine[:3, :3] = dirs.T
                affine[:3, 3] = np.asarray(hdr.get("space origin", [0, 0, 0]), dtype=float)
                if str(hdr.get("space", "")).lower() in ("left-posterior-superior", "lps"):
                    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
            if len(shape) == 4 and shape[0] == 1:  # seg.nrrd with one segment layer
                shape = shape[1:]
    except BadRequest:
        raise
    except MemoryError as e:
        raise BadRequest(f"the {what} is too large to check") from e
    except Exception as e:  # corrupt files raise many exception types
        raise BadRequest(f"the {what} is not a readable {suffix} file ({type(e).__name__}: {e})") from e
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise BadRequest(f"the {what} must be a 3D volume; got {len(shape)}D data of shape {shape}")
    if min(shape) < 1 or int(np.prod(shape)) > MAX_VOXELS:
        raise BadRequest(f"the {what} has an unsupported size {shape}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise BadRequest(f"the {what} has an invalid geometry (singular or non-finite affine)")
    return shape, affine


def check_label_file(label_path: str, image_path: str | None, valid_values: set[int]) -> None:
    """A label must be a 3D volume with the image's shape and only the app's label values.

    Raises:
        BadRequest: see :func:`read_header`; shape different from the image's; values outside ``valid_values``.
    """
    shape, _ = read_header(label_path, "label")
    if image_path:
        image_shape, _ = read_header(image_path, "image", check_data=False)  # the datastore's own image
        if tuple(shape) != tuple(image_shape):
            raise BadRequest(f"the label's shape {shape} differs from its image's shape {image_shape}")
    from monai.transforms import LoadImage

    try:
        arr = np.asarray(LoadImage(image_only=True)(label_path))
    except Exception as e:
        raise BadRequest(f"the label could not be read ({type(e).__name__}: {e})") from e
    if not np.all(np.isfinite(arr)):
        raise BadRequest("the label holds NaN or infinite values")
    if np.any(arr != np.round(arr)):
        raise BadRequest("the label holds non-integer values")
    values = {int(v) for v in np.unique(arr)} if arr.size else set()
    bad = sorted(values - valid_values)
    if bad:
        raise BadRequest(f"the label holds values {bad[:10]}; valid values are {sorted(valid_values)}")


def _nifti_stream(path: str):
    """The bytes of a NIfTI file, decompressed when gzipped (all gzip members), in chunks of ``STREAM_CHUNK``."""
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            f.seek(0)
            while True:
                chunk = f.read(STREAM_CHUNK)
                if not chunk:
                    return
                yield chunk
        f.seek(0)
        d = zlib.decompressobj(wbits=31)
        while True:
            raw = f.read(STREAM_CHUNK // 4)
            if not raw:
                break
            while raw:
                yield d.decompress(raw, STREAM_CHUNK)
                raw = d.unconsumed_tail
                if d.eof:  # another gzip member may follow
                    rest = d.unused_data
                    d = zlib.decompressobj(wbits=31)
                    raw = rest + raw if rest else raw
        if not d.eof and (d.unconsumed_tail or d.unused_data or d.decompress(b"", 0)):
            raise BadRequest("the compressed stream is truncated")


def check_nifti_data(path: str, img: Any, what: str = "image") -> None:
    """Stream the voxels of ``path`` (loaded by nibabel as ``img``, its header only) and refuse the file unless it
    holds exactly the data its header declares, all finite.

    A gzip bomb (a small file that inflates beyond its declared size) is stopped as soon as the stream passes the
    declared size; a truncated file or stream fails at its end; NaN or infinite voxels fail at the first chunk
    holding one. Memory use is a few chunks, whatever the file claims.

    Raises:
        BadRequest: with the reason.
    """
    dtype = np.dtype(img.get_data_dtype())
    offset = int(img.dataobj.offset)  # the loaded header's vox_offset reads 0
    expected = offset + int(np.prod(img.shape)) * dtype.itemsize
    slack = 1 << 20  # some writers pad the end
    check_finite = dtype.kind in "fc"
    total, carry = 0, b""
    try:
        for chunk in _nifti_stream(path):
            start = total
            total += len(chunk)
            if total > expected + slack:
                raise BadRequest(
                    f"the {what} decompresses to more than the {expected} bytes its header declares (refused)"
                )
            lo, hi = max(offset - start, 0), min(expected - start, len(chunk))
            if check_finite and hi > lo:
                data = carry + chunk[lo:hi]
                n = len(data) // dtype.itemsize * dtype.itemsize
                if n and not np.all(np.isfinite(np.frombuffer(data, dtype=dtype, count=n // dtype.itemsize))):
                    raise BadRequest(f"the {what} holds NaN or infinite voxel values")
                carry = data[n:]
    except (zlib.error, EOFError, gzip.BadGzipFile) as e:
        raise BadRequest(f"the {what} is not a valid gzip stream ({e})") from e
    if total < expected:
        raise BadRequest(f"the {what} is truncated: {total} bytes of data where its header declares {expected}")


def json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in a JSON text (strings skipped), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def check_params_json(text: str, what: str = "params") -> Dict[str, Any]:
    """A ``params`` form field: at most 1 MiB of JSON, nested at most ``MAX_JSON_DEPTH`` deep, holding an object.

    Raises:
        BadRequest: with the reason.
    """
    if text is None or text == "":
        return {}
    if len(text) > MAX_PARAMS_BYTES:
        raise BadRequest(f"{what} is larger than {MAX_PARAMS_BYTES} bytes")
    if json_depth(text) > MAX_JSON_DEPTH:
        raise BadRequest(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise BadRequest(f"{what} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


# what a client may set in a training request, with its type and range (None: any value of the type)
TRAIN_PARAMS: Dict[str, tuple] = {
    "model": (str, None),
    "client_id": (str, None),  # monailabel's client adds it to every request
    "max_epochs": (int, (1, 10000)),
    "val_split": (float, (-1.0, 0.9)),
    "val_interval": (int, (1, 10000)),
    "early_stop_patience": (int, (1, 10000)),
    "learning_rate": (float, (1e-8, 10.0)),
    "cache_rate": (float, (0.0, 1.0)),
    "num_workers": (int, (0, 64)),
    "train_batch_size": (int, (1, 256)),
    "val_batch_size": (int, (1, 256)),
    "pretrained": (bool, None),
    "multi_gpu": (bool, None),
    "force_multi_gpu": (bool, None),
    "device": ("device", None),
    "gpus": (str, None),
    "tracking": ("tracking", None),
    "tracking_uri": (str, None),
    "tracking_experiment_name": ("name", None),
    "tracking_run_name": ("name", None),
    "run_id": ("name", None),
    "model_filename": ("weights", None),
    "name": ("name", None),
    "dataset": (str, None),
    "dataloader": (str, None),
}
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d{1,2})?|mps)$")
WEIGHTS_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.(pt|pth|ts)$")


def _check_train_value(key: str, value: Any) -> None:
    kind, bounds = TRAIN_PARAMS[key]
    if value is None and kind in (str, "name", "tracking"):  # monailabel reads None as not given
        return
    if kind in ("name", "weights", "device", "tracking"):
        values = value if kind in ("weights", "tracking", "device") and isinstance(value, list) else [value]
        for v in values:
            ok = isinstance(v, str) and (
                (kind == "name" and (v == "" or ID_PATTERN.match(v)) and ".." not in v)
                or (kind == "weights" and WEIGHTS_PATTERN.match(v) and ".." not in v)
                or (kind == "device" and DEVICE_PATTERN.match(v))
                or (kind == "tracking" and v.lower() in ("none", "mlflow"))
            )
            if not ok:
                hint = {
                    "name": "letters, digits, '.', '_' or '-'",
                    "weights": "a file name such as model.pt (no path)",
                    "device": "cpu, cuda or cuda:N",
                    "tracking": "None or mlflow",
                }[kind]
                raise BadRequest(f"invalid training parameter {key}={value!r}: expected {hint}")
        return
    if kind is bool:
        if not isinstance(value, bool):
            raise BadRequest(f"invalid training parameter {key}={value!r}: expected true or false")
        return
    if kind is str:
        if not isinstance(value, str) or len(value) > 1000:
            raise BadRequest(f"invalid training parameter {key}={value!r}: expected a string")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise BadRequest(f"invalid training parameter {key}={value!r}: expected {kind.__name__}")
    lo, hi = bounds
    if not (lo <= value <= hi):
        raise BadRequest(f"invalid training parameter {key}={value!r}: expected {lo} <= {key} <= {hi}")


def check_train_params(params: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Training request parameters checked against :data:`TRAIN_PARAMS` (unknown keys, types, ranges, file names).

    Raises:
        BadRequest: naming the parameter and what is valid.
    """
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequest(f"training parameters must be a JSON object, not {type(params).__name__}")
    for key, value in params.items():
        if key not in TRAIN_PARAMS:
            raise BadRequest(f"unknown training parameter {key!r}; valid: {', '.join(sorted(TRAIN_PARAMS))}")
        _check_train_value(key, value)
    return params


def _member_error(name: str, dest: str) -> Optional[str]:
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or "\x00" in name:
        return "absolute path"
    parts = name.replace("\\", "/").split("/")
    if any(p == ".." for p in parts):
        return "'..' in the path"
    target = os.path.realpath(os.path.join(dest, *[p for p in parts if p not in ("", ".")]))
    if not target.startswith(os.path.realpath(dest) + os.sep):
        return "outside the destination"
    return None


def safe_extract(archive: str, dest: str, max_members: int = 10000, max_bytes: int = 8 << 30) -> int:
    """Extract a zip or tar archive into ``dest`` (which must exist), refusing the whole archive - before anything is
    written - when a member is a link, a device or other special file, has an absolute path or ``..``, or when it has
    more than ``max_members`` members or unpacks to more than ``max_bytes``. Returns the number of files written.

    Raises:
        BadRequest: with the offending member and why.
    """
    files = 0
    total = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            infos = z.infolist()
            if len(infos) > max_members:
                raise BadRequest(f"the archive has {len(infos)} members; at most {max_members} are accepted")
            for info in infos:
                why = _member_error(info.filename, dest)
                mode = (info.external_attr >> 16) & 0o170000
                if not why and mode not in (0, 0o100000, 0o040000):
                    why = "a link or special file"
                if why:
                    raise BadRequest(f"archive member {info.filename!r} refused: {why}")
                total += info.file_size
            if total > max_bytes:
                raise BadRequest(f"the archive unpacks to {total} bytes; at most {max_bytes} are accepted")
            for info in infos:
                target = os.path.join(dest, info.filename)
                if info.is_dir():
                    os.makedirs(target, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                written = 0
                with z.open(info) as src, open(target, "wb") as out:
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > info.file_size:  # the declared size was a lie
                            raise BadRequest(f"archive member {info.filename!r} is larger than it declares")
                        out.write(chunk)
                files += 1
        return files
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as e:
        raise BadRequest(f"not a zip or tar archive ({e})") from e
    with tar:
        members = []
        for member in tar:
            members.append(member)
            if len(members) > max_members:
                raise BadRequest(f"the archive has more than {max_members} members")
            why = _member_error(member.name, dest)
            if not why and not (member.isfile() or member.isdir()):
                why = "a link or special file"
            if why:
                raise BadRequest(f"archive member {member.name!r} refused: {why}")
            total += member.size if member.isfile() else 0
            if total > max_bytes:
                raise BadRequest(f"the archive unpacks to more than {max_bytes} bytes")
        for member in members:
            target = os.path.join(dest, member.name)
            if member.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            src = tar.extractfile(member)
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            files += 1
    return files
