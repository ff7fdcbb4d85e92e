"""Datastores of the liver app: a validated local folder, and a DICOMweb store whose labels lie on their image's grid.

- :class:`LiverDatastore` (``--studies <folder>``): monailabel's :class:`LocalDatastore` with id, upload and label
  checks.
- :class:`LiverDICOMwebDatastore` (``--studies http://<host>/dicom-web``): monailabel's DICOMweb datastore, fixed so
  that training, Dice scoring and label downloads see every ``final`` label on its image's grid. monailabel 0.8.5
  converts a DICOM SEG read from the store into a volume covering only the slices that hold segments (e.g. 64x64x27
  for a 64x64x32 series), and the bundle's training transforms do not resample labels to their image: the label was
  shifted by several slices. Here each SEG is painted onto its image's voxel grid in world (patient) space, frame by
  frame from its own position (nearest neighbour), and checked like a local label.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import tempfile
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
from filelock import FileLock
from lib import atomic
from lib.validation import BadRequest, NotFound, check_id, check_label_file, read_header
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

logger = logging.getLogger(__name__)

LABEL_VALUES = {0, 1, 2}
SEGMENT_VALUES = {"liver": 1, "tumor": 2}  # DICOM SEG segment label (case-insensitive) -> label value
# other names a person types for the same labels (OHIF codes every segment as "Tissue": only the name tells)
SEGMENT_SYNONYMS = {"liver tumor": 2, "liver tumour": 2, "tumour": 2, "lesion": 2, "liver lesion": 2}
# a segment named "background" is no structure: OHIF makes one (empty, or holding the viewer's background clicks) when
# the served models include the interactive one, whose labels name background for 3D Slicer's background points
BACKGROUND_NAMES = {"background": 0}
ON_GRID_TOLERANCE = 0.05  # voxels: a SEG frame pixel this close to an image voxel centre lies on the image grid
FINAL = DefaultLabelTag.FINAL.value


class _CheckedIds:
    """Id checks and 404s shared by the app's datastores (mixed in before the monailabel datastore class)."""

    def remove_image(self, image_id: str) -> None:
        check_id(image_id, "image id")
        if not self._has_image(image_id):
            raise NotFound(f"image {image_id!r} is not in the datastore")
        super().remove_image(image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        check_id(label_id, "label id")
        check_id(label_tag, "label tag")
        if not self.get_label_uri(label_id, label_tag):
            raise NotFound(f"no label {label_id!r} with tag {label_tag!r}")
        super().remove_label(label_id, label_tag)

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        check_id(image_id, "image id")
        if not self._has_image(image_id):
            raise NotFound(f"image {image_id!r} is not in the datastore")
        super().update_image_info(image_id, info)

    def _has_image(self, image_id: str) -> bool:
        return bool(self.get_image_uri(image_id))

    def get_dataset_archive(self, limit_cases: Optional[int]) -> str:
        if limit_cases is not None and limit_cases < 1:
            raise BadRequest(f"limit_cases={limit_cases}: must be at least 1")
        if not any(d for d in self.datalist()):
            raise NotFound("no labelled image in the datastore: nothing to put in a dataset archive")
        return super().get_dataset_archive(limit_cases)

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        check_id(label_id, "label id")
        check_id(label_tag, "label tag")
        if not self.get_label_uri(label_id, label_tag):
            raise NotFound(f"no label {label_id!r} with tag {label_tag!r}")
        super().update_label_info(label_id, label_tag, info)

    # -- durable writes (lib.atomic): temp file in the same folder, fsync, rename --------------------------------
    # monailabel 0.8.5 copies labels and images with shutil.copy and writes datastore_v2.json in place: a kill or a
    # full disk during a save left a truncated label or an empty index (which then stopped the server's start).

    def _update_datastore_file(self, lock: bool = True) -> None:
        """Write ``datastore_v2.json`` atomically (``lock=False``: the caller holds the datastore lock)."""

        def write() -> None:
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic.write_text(self._datastore_config_path, text, what="the datastore index")
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()

    def _init_from_datastore_file(self, throw_exception: bool = False) -> None:
        """Read ``datastore_v2.json``; an empty or broken one is set aside (``datastore_v2.json.broken``) with a
        warning and the index is rebuilt from the images and labels on disk (label and image info is lost)."""
        try:
            super()._init_from_datastore_file(throw_exception=True)
        except ValueError as e:  # pydantic's ValidationError (empty, truncated, not the schema), UnicodeDecodeError
            self._set_broken_index_aside(e)

    def _set_broken_index_aside(self, error: Exception) -> None:
        path = self._datastore_config_path
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            return
        self._config_ts = mtime  # not parsed again while it is unchanged
        self._index_rebuilt = True
        kept = ""
        if not getattr(self, "_read_only", False):
            with FileLock(self._lock_file):
                if os.path.exists(path) and os.stat(path).st_mtime == mtime:  # not rewritten meanwhile
                    kept = f"{path}.broken"
                    atomic.rename(path, kept)
        logger.warning(
            "the datastore index %s is empty or broken (%s: %s); it is rebuilt from the images and labels on disk%s",
            path, type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "",
            f" (the broken file is kept as {kept})" if kept else " (read-only datastore: in memory only)",
        )  # fmt: skip

    def _on_moved_event(self, event: Any) -> None:
        """Watcher (auto reload): a file renamed into place, as every write is now. The index: reloaded unless this
        process wrote it (monailabel's rule for modifications); an image or label: the datastore is refreshed."""
        dest = os.fsdecode(getattr(event, "dest_path", "") or "")
        if dest == self._datastore_config_path:
            if self._ignore_event_config:
                self._ignore_event_config = False
                return
            self._init_from_datastore_file()
        elif dest and not atomic.is_temp(os.path.basename(dest)):
            self._on_any_event(event)

    def _remove_stale_temps(self) -> int:
        """Temporary files of saves killed before their rename (under the datastore lock: no save is running)."""
        folders = [self._datastore_path, self._datastore.image_path()]
        labels = self._datastore.label_path(None)
        if os.path.isdir(labels):
            folders += [os.path.join(labels, t) for t in os.listdir(labels) if os.path.isdir(os.path.join(labels, t))]
        with FileLock(self._lock_file):
            return sum(atomic.remove_stale_temps(f) for f in dict.fromkeys(folders))

    def _store_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        """:meth:`LocalDatastore.add_image` with an atomic copy: on any failure the datastore is as before."""
        id_from_name, ext = self._to_id(os.path.basename(image_filename))
        image_id = image_id or id_from_name
        check_id(image_id, "image id")
        name = self._filename(image_id, ext)
        dest = os.path.join(self._datastore.image_path(), name)
        logger.info("Adding image %s => %s", image_id, dest)
        with FileLock(self._lock_file):
            atomic.copy_file(image_filename, dest, what=f"the image {image_id!r}")
            info = dict(image_info or {}, ts=int(time.time()), name=name)
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        return image_id

    def _store_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        """:meth:`LocalDatastore.save_label` with an atomic copy: a kill or a full disk leaves the previous label
        (or none) complete; the index is updated after the label file is in place."""
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise NotFound(f"image {image_id!r} is not in the datastore")
        _, ext = self._to_id(os.path.basename(label_filename))
        folder = self._datastore.label_path(label_tag)
        name = self._filename(image_id, ext)
        logger.info("Saving label %s (tag %s) => %s", image_id, label_tag, os.path.join(folder, name))
        with FileLock(self._lock_file):
            os.makedirs(folder, exist_ok=True)
            atomic.copy_file(label_filename, os.path.join(folder, name), what=f"the {label_tag} label of {image_id!r}")
            info = dict(label_info or {}, ts=int(time.time()), name=name)
            obj.labels[label_tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)
        return image_id


class LiverDatastore(_CheckedIds, LocalDatastore):
    """:class:`LocalDatastore` that refuses, with a 4xx, what would escape the folder or poison training:

    - image ids and label tags that are not plain names (``../x``, ``a/b``): they would be joined to the datastore
      path as they are;
    - uploaded images that are not readable 3D NIfTI / NRRD volumes;
    - labels whose shape differs from their image's, or with values other than 0, 1, 2;
    - labels or removals for images that do not exist (404).

    Every write is atomic and durable (:mod:`lib.atomic`): labels, images and the index ``datastore_v2.json`` go to
    a temporary file in the same folder, are fsync-ed and renamed; a full disk answers 507 with the old file intact;
    an empty or broken index is rebuilt from the files on disk at start, with a warning.
    """

    def __init__(self, datastore_path: str, *args: Any, read_only: bool = False, **kwargs: Any):
        self._read_only = read_only
        self._index_rebuilt = False
        super().__init__(datastore_path, *args, read_only=read_only, **kwargs)
        self._remove_stale_temps()
        if getattr(self, "_handler", None) is not None:  # auto reload: files now arrive by rename, not by writes
            self._handler.on_moved = self._on_moved_event
        if self._index_rebuilt and read_only:  # monailabel reconciles only writable datastores
            self._add_non_existing_images()
            labels = self._datastore.label_path(None)
            for tag in sorted(t for t in os.listdir(labels) if os.path.isdir(os.path.join(labels, t))):
                self._add_non_existing_labels(tag)

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        with _removed_on_error(image_filename):
            if image_id:
                check_id(image_id, "image id")
            read_header(image_filename, "image")
            return self._store_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        with _removed_on_error(label_filename):
            check_id(image_id, "image id")
            check_id(label_tag, "label tag")
            image_uri = self.get_image_uri(image_id)
            if not image_uri:
                raise NotFound(f"image {image_id!r} is not in the datastore")
            check_label_file(label_filename, image_uri, LABEL_VALUES)
            return self._store_label(image_id, label_filename, label_tag, label_info)


@contextlib.contextmanager
def _removed_on_error(upload: str) -> Iterator[None]:
    """Remove an uploaded temporary file when storing it fails: monailabel removes it only after a successful answer
    (a refused upload stayed in the temporary folder for good)."""
    try:
        yield
    except BaseException:
        real = os.path.realpath(upload)
        if real.startswith(os.path.realpath(tempfile.gettempdir()) + os.sep) and os.path.isfile(real):
            try:
                os.remove(real)
            except OSError:
                pass
        raise


# -------------------------------------------------------------------------------------------------------------------
# labels on the image grid
# -------------------------------------------------------------------------------------------------------------------


def _grid(image_path: str) -> Tuple[Tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    """``(size, origin, spacing, direction)`` of a 3D image file in ITK's LPS physical space, voxels not read."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image_path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise BadRequest(f"the image {image_path} could not be read ({e})") from e
    size = tuple(int(s) for s in reader.GetSize())
    while len(size) > 3 and size[-1] == 1:
        size = size[:-1]
    if len(size) != 3:
        raise BadRequest(f"the image {image_path} is not a 3D volume (size {reader.GetSize()})")
    dim = reader.GetDimension()
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(dim, dim)[:3, :3]
    return size, np.asarray(reader.GetOrigin()[:3], float), np.asarray(reader.GetSpacing()[:3], float), direction


def _image_on_grid(values_xyz: np.ndarray, grid) -> Any:
    """A SimpleITK uint8 image of ``values_xyz`` (indexed ``[i, j, k]``) with the geometry ``grid``."""
    import SimpleITK as sitk

    _, origin, spacing, direction = grid
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(values_xyz, np.uint8).transpose(2, 1, 0)))
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetSpacing(tuple(float(v) for v in spacing))
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    return img


def _resample_to_grid(img: Any, grid) -> Any:
    """Nearest-neighbour resampling of a SimpleITK label image onto ``grid`` in world space (outside: 0)."""
    import SimpleITK as sitk

    size, origin, spacing, direction = grid
    return sitk.Resample(
        img,
        [int(s) for s in size],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        [float(v) for v in origin],
        [float(v) for v in spacing],
        [float(v) for v in direction.ravel()],
        0,
        sitk.sitkUInt8,
    )


def _check_values(values: Iterable[float], what: str) -> None:
    values = np.asarray(list(values), dtype=float)
    if np.any(values != np.round(values)):
        raise BadRequest(f"{what} holds non-integer values")
    bad = sorted(set(int(v) for v in values) - LABEL_VALUES)
    if bad:
        raise BadRequest(f"{what} holds label values {bad[:10]}; valid values are {sorted(LABEL_VALUES)}")


def label_to_image_grid(label_path: str, image_path: str, out_path: str) -> List[int]:
    """Write the label ``label_path`` resampled onto the voxel grid of ``image_path`` (world space, nearest
    neighbour, uint8 NIfTI ``out_path``); returns the label values present.

    A label already on the image's grid is copied voxel for voxel (the file then carries the image's header exactly).

    Raises:
        BadRequest: unreadable files, values outside 0, 1, 2, or a label whose foreground lies outside the image.
    """
    import SimpleITK as sitk

    grid = _grid(image_path)
    try:
        img = sitk.ReadImage(str(label_path))
    except RuntimeError as e:
        raise BadRequest(f"the label could not be read ({e})") from e
    if img.GetNumberOfComponentsPerPixel() == 1 and img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = sitk.Extract(img, list(img.GetSize()[:3]) + [0], [0, 0, 0, 0])
    if img.GetNumberOfComponentsPerPixel() != 1 or img.GetDimension() != 3:
        raise BadRequest(f"the label must be a 3D single-channel volume (size {img.GetSize()})")
    source = sitk.GetArrayViewFromImage(img)
    _check_values(np.unique(source), "the label")
    out = _resample_to_grid(img, grid)
    values = np.unique(sitk.GetArrayViewFromImage(out)).astype(int).tolist()
    if np.any(source != 0) and values == [0]:
        raise BadRequest("the label does not overlap its image in world space (check the label's geometry)")
    sitk.WriteImage(out, str(out_path), True)
    return values


def segment_values(segments: Dict[int, Any]) -> Dict[int, int]:
    """Label value of each segment number of a DICOM SEG (``segments``: number -> SegmentSequence item).

    When every segment is named after an app label (``SegmentLabel`` ``liver`` or ``tumor``, any case, or a synonym
    in :data:`SEGMENT_SYNONYMS` such as ``liver tumor``; ``background``: value 0, painted as nothing), the names decide
    (segment codes are not trusted: OHIF codes every segment as "Tissue"); otherwise the segment numbers are the
    values (monailabel's convention), checked by the caller.
    """
    known = {**BACKGROUND_NAMES, **SEGMENT_SYNONYMS, **SEGMENT_VALUES}
    names = {int(n): " ".join(str(getattr(s, "SegmentLabel", "")).lower().split()) for n, s in segments.items()}
    if names and all(name in known for name in names.values()):
        return {n: known[name] for n, name in names.items()}
    if names:
        unknown = sorted({name for name in names.values() if name not in known})
        logger.warning("DICOM SEG segments %s are not named liver / tumor: segment numbers used as values", unknown)
    return {n: n for n in names}


def _frame_items(ds: Any) -> List[Tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """``(segment number, position, iop, pixel spacing)`` of each frame (per-frame or shared functional groups)."""
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None

    def group(item, name):
        if name in item:
            return item[name].value[0]
        if shared is not None and name in shared:
            return shared[name].value[0]
        raise ValueError(f"{name} missing")

    out = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        number = int(group(item, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        ipp = np.asarray([float(v) for v in group(item, "PlanePositionSequence").ImagePositionPatient])
        iop = np.asarray([float(v) for v in group(item, "PlaneOrientationSequence").ImageOrientationPatient])
        spacing = np.asarray([float(v) for v in group(item, "PixelMeasuresSequence").PixelSpacing])
        out.append((number, ipp, iop, spacing))
    return out


def _paint_frames(ds: Any, masks: np.ndarray, values: Dict[int, int], grid) -> Optional[Tuple[np.ndarray, int]]:
    """Place each frame's foreground pixels on the image grid from the frame's own position; ``None`` when a frame
    does not lie on the grid (then the caller resamples). Returns ``(label [i, j, k], pixels outside the image)``."""
    size, origin, spacing, direction = grid
    to_index = np.linalg.inv(direction @ np.diag(spacing))  # LPS mm -> voxel index
    out = np.zeros(size, dtype=np.uint8)
    outside = 0
    for mask, (number, ipp, iop, pixel_spacing) in zip(masks, _frame_items(ds)):
        if number not in values:
            raise ValueError(f"a frame references segment {number}, which the SEG does not declare")
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            continue
        # DICOM: the first IOP vector is the direction of increasing column index, PixelSpacing is (rows, columns)
        base = to_index @ (ipp - origin)
        step_col = to_index @ (iop[:3] * pixel_spacing[1])
        step_row = to_index @ (iop[3:] * pixel_spacing[0])
        for v in (base, step_col, step_row):
            if np.max(np.abs(v - np.rint(v))) > ON_GRID_TOLERANCE:
                return None
        ijk = np.rint(base)[None] + np.outer(cols, np.rint(step_col)) + np.outer(rows, np.rint(step_row))
        ijk = ijk.astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.asarray(size)), axis=1)
        outside += int((~inside).sum())
        idx = tuple(ijk[inside].T)
        out[idx] = np.maximum(out[idx], values[number])
    return out, outside


def seg_to_label(seg_path: str, image_path: str, out_path: str) -> List[int]:
    """Write the DICOM SEG ``seg_path`` as a label on the voxel grid of ``image_path`` (uint8 NIfTI ``out_path``,
    the image's geometry); returns the label values present.

    Segments become values by name (:func:`segment_values`; overlapping segments: the larger value wins). Frames on
    the image grid (the usual case: a SEG made on the series it references) are placed voxel for voxel from their own
    ``ImagePositionPatient``, so missing or empty slices and the SEG's declared slice spacing do not matter; a SEG on
    another grid is resampled onto the image grid (nearest neighbour, world space).

    Raises:
        BadRequest: not a readable DICOM SEG, values outside 0, 1, 2, or no segment voxel inside the image.
    """
    import pydicom

    what = f"the DICOM SEG {seg_path}"
    try:
        ds = pydicom.dcmread(str(seg_path))
        if str(ds.get("Modality", "")) != "SEG":
            raise ValueError(f"modality {ds.get('Modality')!r}, not SEG")
        segments = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
        values = segment_values(segments)
        _check_values(values.values(), what)
        frames = np.asarray(ds.pixel_array).reshape(int(ds.get("NumberOfFrames", 1)), int(ds.Rows), int(ds.Columns))
        if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
            masks = frames >= 0.5 * float(ds.get("MaximumFractionalValue", 255))
        else:
            masks = frames > 0
        grid = _grid(image_path)
        painted = _paint_frames(ds, masks, values, grid)
    except BadRequest:
        raise
    except Exception as e:  # pydicom and malformed SEGs raise many exception types
        raise BadRequest(f"{what} could not be read ({type(e).__name__}: {e})") from e
    if painted is None:
        logger.warning("%s: frames not on the image grid of %s; resampling (nearest neighbour)", what, image_path)
        label = _resample_seg(ds, values, grid)
        outside = 0
    else:
        label, outside = painted
    present = np.unique(label).astype(int).tolist()
    if bool(masks.any()) and present == [0]:
        raise BadRequest(f"{what} does not overlap its image {image_path} in world space")
    if outside:
        logger.warning("%s: %d segment pixels fall outside the image grid and are dropped", what, outside)
    import SimpleITK as sitk

    sitk.WriteImage(_image_on_grid(label, grid), str(out_path), True)
    return present


def _resample_seg(ds: Any, values: Dict[int, int], grid) -> np.ndarray:
    """A SEG that is not on the image grid: pydicom-seg's volume (declared spacing), resampled onto ``grid``."""
    import pydicom_seg
    import SimpleITK as sitk

    result = pydicom_seg.SegmentReader().read(ds)
    label = np.zeros(result.size[::-1], dtype=np.uint8)
    for number in result.available_segments:
        mask = np.asarray(result.segment_data(number)) >= 0.5
        label[mask] = np.maximum(label[mask], values[int(number)])
    img = sitk.GetImageFromArray(label)
    img.SetOrigin(result.origin)
    img.SetSpacing(result.spacing)
    img.SetDirection(result.direction.ravel())
    return sitk.GetArrayFromImage(_resample_to_grid(img, grid)).transpose(2, 1, 0)


def seg_label_info(values: Iterable[int], client_info: Optional[List[Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """The ``label_info`` monailabel turns into DICOM SEG segments: one entry per non-zero value present, in value
    order, named after the value (``liver``, ``tumor``).

    monailabel names the ``i``-th value present after the ``i``-th ``label_info`` entry, so a label holding only a
    tumor would be stored as a segment named "liver"; the client's entries (colour, description) are kept by name.
    """
    names = {v: n for n, v in SEGMENT_VALUES.items()}
    by_name = {
        str(i.get("name", "")).strip().lower(): i for i in (client_info or []) if isinstance(i, dict) and i.get("name")
    }
    model_name = next((i["model_name"] for i in client_info or [] if isinstance(i, dict) and i.get("model_name")), None)
    out = []
    for v in sorted(int(v) for v in set(values) - {0}):
        entry = dict(by_name.get(names[v], {}))
        entry["name"] = names[v]
        if isinstance(entry.get("segmentAttribute"), dict):
            entry["segmentAttribute"] = {**entry["segmentAttribute"], "labelID": v, "SegmentLabel": names[v]}
        out.append(entry)
    if out and model_name:
        out[0]["model_name"] = model_name
    return out


# -------------------------------------------------------------------------------------------------------------------
# several SEGs of one image: the newest wins
# -------------------------------------------------------------------------------------------------------------------


def _dicom_date(value: Any) -> str:
    """A DICOM DA (``YYYYMMDD``; the old ``YYYY.MM.DD`` too) as 8 digits, or ``""`` when absent or malformed."""
    digits = "".join(ch for ch in str(value or "").strip() if ch.isdigit())
    return digits if len(digits) == 8 else ""


def _dicom_time(value: Any) -> str:
    """A DICOM TM (``HH``, ``HHMM``, ``HHMMSS``, ``HHMMSS.FFFFFF``; the old ``HH:MM:SS`` too) as ``HHMMSSFFFFFF``
    (missing parts are zero), or ``""`` when absent or malformed."""
    text = str(value or "").strip().replace(":", "")
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        return ""
    return whole.ljust(6, "0") + fraction[:6].ljust(6, "0")


def seg_recency(ds: Any) -> Tuple[str, str]:
    """Sort key of a DICOM SEG (a pydicom dataset, or its DICOMweb metadata read with ``Dataset.from_json``): larger
    is newer. ``SeriesDate`` + ``SeriesTime`` first, then ``InstanceCreationDate`` + ``InstanceCreationTime``; a
    missing date sorts before every date (a time without its date is ignored). Times are compared as written (no
    ``TimezoneOffsetFromUTC``: OHIF writes the browser's local clock without one)."""

    def stamp(date_tag: str, time_tag: str) -> str:
        date = _dicom_date(ds.get(date_tag, ""))
        return date + (_dicom_time(ds.get(time_tag, "")) or "0" * 12) if date else ""

    return stamp("SeriesDate", "SeriesTime"), stamp("InstanceCreationDate", "InstanceCreationTime")


def newest_segs(segs: Iterable[Tuple[str, str, Any]]) -> Dict[str, str]:
    """``{image series UID: SEG series UID}`` keeping, for every image, its newest SEG.

    ``segs``: ``(image series UID, SEG series UID, SEG dataset or metadata)``, one or more per SEG series (one per
    instance); a series is as new as its newest instance. Newest by :func:`seg_recency`; equal stamps: the larger SEG
    series UID, so that the choice does not depend on the order in which the store lists its series. This is the only
    place where the app chooses between SEGs: training's data list, scoring, "labeled" counts and label downloads all
    go through it.
    """
    series_key: Dict[Tuple[str, str], Tuple[str, str]] = {}
    for image_id, seg_id, ds in segs:
        key = seg_recency(ds)
        series_key[(image_id, seg_id)] = max(key, series_key.get((image_id, seg_id), key))
    best: Dict[str, Tuple[Tuple[str, str], str]] = {}
    for (image_id, seg_id), key in series_key.items():
        if image_id not in best or (key, seg_id) > (best[image_id][0], best[image_id][1]):
            best[image_id] = (key, seg_id)
    chosen = {image_id: seg_id for image_id, (_, seg_id) in best.items()}
    for image_id, seg_id in sorted(chosen.items()):
        others = sorted(s for (i, s) in series_key if i == image_id and s != seg_id)
        if others:
            logger.info("image %s has %d SEGs: the newest, %s, is its label (%s)", image_id, len(others) + 1, seg_id,
                        ", ".join(others))  # fmt: skip
    return chosen


# -------------------------------------------------------------------------------------------------------------------
# DICOMweb
# -------------------------------------------------------------------------------------------------------------------

ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)  # WADO-RS: the instances as stored (compressed or not)


def download_series_any_syntax(client: Any, series_uid: str, out_dir: str) -> List[str]:
    """Download every instance of the series ``series_uid`` into ``out_dir`` in its stored transfer syntax (WADO-RS
    with ``transfer-syntax=*``), all or nothing: the files go to a temporary sibling folder renamed at the end.

    Raises:
        NotFound: no such series in the store.
    """
    from pydicom.dataset import Dataset

    found = [
        s for s in client.search_for_series(search_filters={"SeriesInstanceUID": series_uid})
        if s.get("0020000E", {}).get("Value") == [series_uid]
    ]  # fmt: skip
    if not found:
        raise NotFound(f"series {series_uid!r} is not in the DICOMweb store")
    study_uid = str(Dataset.from_json(found[0]).StudyInstanceUID)
    start = time.time()
    instances = client.retrieve_series(study_uid, series_uid, media_types=ANY_TRANSFER_SYNTAX)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".part", dir=parent)
    try:
        names = []
        for instance in instances:
            name = f"{check_id(str(instance.SOPInstanceUID), 'SOP instance UID')}.dcm"
            instance.save_as(os.path.join(tmp, name), write_like_original=False)
            names.append(name)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # an empty folder left by an earlier failure (only an empty one is ever replaced)
        os.replace(tmp, out_dir)
    finally:
        if os.path.isdir(tmp):
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    syntaxes = sorted({str(i.file_meta.TransferSyntaxUID) for i in instances if hasattr(i, "file_meta")})
    logger.info("series %s: %d instances downloaded (transfer syntax %s) in %.1f s", series_uid, len(names),
                ", ".join(syntaxes) or "?", time.time() - start)
    return [os.path.join(out_dir, n) for n in names]


class LiverDICOMwebDatastore(_CheckedIds, DICOMWebDatastore):
    """monailabel's DICOMweb datastore (series in the store, ``final`` labels stored back as DICOM SEG, a local cache
    under ``MONAI_LABEL_DICOMWEB_CACHE_PATH``) whose labels are on their image's grid and checked:

    - a SEG read from the store (training's data list, Dice scoring, label downloads) is painted onto its image's
      voxel grid (:func:`seg_to_label`) and cached as ``labels/final/<image series UID>.nii.gz`` with the image's
      header; the cached file is reused while the store's SEG for the image is the same series;
    - a saved label must have its image's shape and values 0, 1, 2 (as :class:`LiverDatastore`); it is stored on the
      image grid (NIfTI), an empty ``final`` label is refused (nothing to store as a SEG), and its SEG segments are
      named after the values present (``liver``, ``tumor``);
    - ``get_label_by_image_id(image, "final")`` also finds labels that are in the store but not yet in the local
      cache, so scoring sees them on a fresh server.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._remote_labels: Tuple[float, Dict[str, str]] = (0.0, {})

    @classmethod
    def from_settings(cls, url: str) -> LiverDICOMwebDatastore:
        """The datastore for the DICOMweb base ``url``, configured like monailabel's (``MONAI_LABEL_DICOMWEB_*``,
        ``MONAI_LABEL_{QIDO,WADO,STOW}_PREFIX``, basic auth or Google Cloud credentials)."""
        from monailabel.config import settings
        from monailabel.datastore.dicom import DICOMwebClientX

        url = url.strip().rstrip("/")
        if "googleapis.com" in url:
            from dicomweb_client import DICOMwebClient
            from dicomweb_client.ext.gcp.session_utils import create_session_from_gcp_credentials

            client = DICOMwebClient(url=url, session=create_session_from_gcp_credentials())
        else:
            session = None
            if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
                from dicomweb_client.session_utils import create_session_from_user_pass

                session = create_session_from_user_pass(
                    settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
                )
            client = DICOMwebClientX(
                url=url,
                session=session,
                qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
            )
        cache_path = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
        return cls(
            client=client,
            search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
            cache_path=cache_path or None,
            fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
            convert_to_nifti=settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI,
        )

    def _has_image(self, image_id: str) -> bool:
        return image_id in self._datastore.objects or image_id in self.list_images()

    # -- images read from the store (DICOM parts: issue 17) ------------------------------------------------------
    def get_image_uri(self, image_id: str) -> str:
        """The local copy of the store's series ``image_id``: its DICOM folder, or (``convert_to_nifti``, the
        default) a NIfTI of it. monailabel asked the store for Explicit VR Little Endian, which a store holding
        JPEG 2000 / JPEG-LS / JPEG lossless / RLE series must transcode (Orthanc cannot for JPEG 2000: a 500); here
        the instances come in their stored transfer syntax (``*``) and are decoded and checked locally by
        :func:`liverseg.dicom.read_dicom_series` (missing / duplicate slices and the like answer 400)."""
        check_id(image_id, "image id")
        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        if not os.path.isdir(image_dir) or not os.listdir(image_dir):
            if self._fetch_by_frame:
                from monailabel.datastore.utils.dicom import dicom_web_download_series

                dicom_web_download_series(None, image_id, image_dir, self._client, self._fetch_by_frame)
            else:
                download_series_any_syntax(self._client, image_id, image_dir)
        if not self._convert_to_nifti:
            return image_dir
        image_nii_gz = os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.nii.gz"))
        if not os.path.exists(image_nii_gz):
            from liverseg.dicom import read_dicom_series
            from liverseg.errors import InputError
            from liverseg.imageio import write_nifti

            try:
                array, affine, _ = read_dicom_series(image_dir)
            except InputError as e:
                raise BadRequest(f"series {image_id}: {e.reason}") from e
            with tempfile.TemporaryDirectory() as tmp:
                converted = write_nifti(os.path.join(tmp, f"{image_id}.nii.gz"), array, affine)
                LocalDatastore.add_image(self, image_id, str(converted), self._dicom_info(image_id))
        return image_nii_gz

    # -- labels read from the store ------------------------------------------------------------------------------
    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """The local label file. With ``image_id`` and the ``final`` tag, ``label_id`` is the store's SEG series for
        that image (monailabel's call from ``datalist``): it is fetched and put on the image grid if the cache does
        not hold it yet. Otherwise ``label_id`` is the image id, as for a local datastore."""
        if not self._convert_to_nifti:  # labels stay DICOM folders: monailabel's behaviour
            return super().get_label_uri(label_id, label_tag, image_id)
        if label_tag != FINAL or not image_id:
            return LocalDatastore.get_label_uri(self, label_id, label_tag)
        check_id(label_id, "SEG series id")
        check_id(image_id, "image id")
        cached = LocalDatastore.get_label_uri(self, image_id, FINAL)
        info = self.get_label_info(image_id, FINAL)
        if cached.endswith(".nii.gz") and os.path.isfile(cached) and info.get("SeriesInstanceUID") == label_id:
            return cached
        image_uri = self.get_image_uri(image_id)
        seg_dir = os.path.realpath(os.path.join(self._datastore.label_path(FINAL), label_id))
        if not os.path.isdir(seg_dir) or not os.listdir(seg_dir):
            from monailabel.datastore.utils.dicom import dicom_web_download_series

            dicom_web_download_series(None, label_id, seg_dir, self._client, self._fetch_by_frame)
        seg_files = sorted(f for f in os.listdir(seg_dir) if not f.startswith("."))
        if len(seg_files) != 1:
            raise BadRequest(f"SEG series {label_id} holds {len(seg_files)} instances; one DICOM SEG is expected")
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "label.nii.gz")
            values = seg_to_label(os.path.join(seg_dir, seg_files[0]), image_uri, out)
            LocalDatastore.save_label(self, image_id, out, FINAL, self._dicom_info(label_id))
        logger.info("SEG %s of image %s put on the image grid (values %s)", label_id, image_id, values)
        return LocalDatastore.get_label_uri(self, image_id, FINAL)

    def _store_labels(self, refresh: bool = False) -> Dict[str, str]:
        """``{image series: SEG series}``: for every listed image that the store's SEGs reference, its newest SEG
        (:func:`newest_segs`). Cached like the image list (``MONAI_LABEL_DICOMWEB_CACHE_EXPIRY``) unless
        ``refresh`` (then the image list is read afresh too); a label saved through this server clears the cache."""
        from monailabel.config import settings
        from pydicom.dataset import Dataset

        ts, mapping = self._remote_labels
        if not refresh and time.time() - ts < float(settings.MONAI_LABEL_DICOMWEB_CACHE_EXPIRY):
            return mapping
        if refresh:  # the image list too: a series stored since it was cached has its SEG read as well
            clear = getattr(DICOMWebDatastore.list_images, "cache_clear", None)
            if clear is not None:
                clear()
        images = set(self.list_images())
        found = []
        for item in self._client.search_for_series(search_filters={"Modality": "SEG"}):
            seg = Dataset.from_json(item)
            seg_id = str(seg.SeriesInstanceUID)
            for meta_json in self._client.retrieve_series_metadata(str(seg.StudyInstanceUID), seg_id):
                meta = Dataset.from_json(meta_json)
                refs = meta.get("ReferencedSeriesSequence")
                if not refs:
                    logger.warning("SEG %s ignored: it has no ReferencedSeriesSequence", seg_id)
                elif str(refs[0].SeriesInstanceUID) not in images:
                    logger.debug("SEG %s ignored: its image is not listed (search filter)", seg_id)
                else:
                    found.append((str(refs[0].SeriesInstanceUID), seg_id, meta))
        mapping = newest_segs(found)
        self._remote_labels = (time.time(), mapping)
        return mapping

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        """With the ``final`` tag: the image's newest SEG in the store (put on the image grid in the local cache when
        the cache holds another), else a local label, else ``""``."""
        if tag != FINAL or not self._convert_to_nifti:
            return super().get_label_by_image_id(image_id, tag)
        seg_id = self._store_labels().get(image_id)
        if not seg_id:
            return super().get_label_by_image_id(image_id, tag)
        self.get_label_uri(seg_id, FINAL, image_id)
        return image_id

    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        """Images with a ``final`` label: one entry per image however many SEGs reference it (monailabel counted
        every SEG: "Annotated 200 %" after two saves). Other tags: the local cache's labels."""
        if label_tag not in (None, FINAL) or not self._convert_to_nifti:
            return LocalDatastore.get_labeled_images(self, label_tag, labels)
        return sorted(self._store_labels())

    def get_unlabeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        labeled = set(self.get_labeled_images(label_tag, labels))
        return [i for i in self.list_images() if i not in labeled]

    def _download_labeled_data(self) -> None:
        """Before a data list (training): the store's SEGs read afresh, each image's newest SEG in the local cache
        on the image grid, and local ``final`` labels whose image has no SEG in the store any more dropped."""
        if not self._convert_to_nifti:
            return super()._download_labeled_data()
        chosen = self._store_labels(refresh=True)
        gone = sorted(set(LocalDatastore.get_labeled_images(self, FINAL)) - set(chosen))
        for image_id in gone:
            logger.info("final label of %s: no SEG in the store any more; removed from the local cache", image_id)
            LocalDatastore.remove_label(self, image_id, FINAL)
        if gone:
            self.refresh()
        for image_id, seg_id in sorted(chosen.items()):
            self.get_image_uri(image_id)
            self.get_label_uri(seg_id, FINAL, image_id)

    # -- labels saved by clients ---------------------------------------------------------------------------------
    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any], label_id: str = ""
    ) -> str:
        check_id(image_id, "image id")
        check_id(label_tag, "label tag")
        if not self._has_image(image_id):
            raise NotFound(f"image {image_id!r} is not in the DICOMweb store")
        image_uri = self.get_image_uri(image_id)
        label_info = dict(label_info or {})
        with tempfile.TemporaryDirectory() as tmp:
            source = label_filename
            if "".join(pathlib.Path(label_filename).suffixes) == ".bin":  # raw voxels in the image's order (OHIF)
                from monailabel.datastore.utils.convert import binary_to_image

                source = binary_to_image(image_uri, label_filename)
            try:
                check_label_file(source, image_uri, LABEL_VALUES)
                on_grid = os.path.join(tmp, "label.nii.gz")
                values = label_to_image_grid(source, image_uri, on_grid)
            finally:
                if source != label_filename and os.path.exists(source):
                    os.unlink(source)
            if label_tag == FINAL:
                if not set(values) - {0}:
                    raise BadRequest("the final label is empty (background only): there is nothing to store as SEG")
                label_info["label_info"] = seg_label_info(values, label_info.get("label_info"))
            try:
                return super().save_label(image_id, on_grid, label_tag, label_info)
            finally:
                if label_tag == FINAL:
                    self._remote_labels = (0.0, {})  # the new SEG is the newest: read the store again next time
