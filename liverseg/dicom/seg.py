"""DICOM Segmentation (SEG) objects of liver / tumor labels, written with highdicom.

Segments are coded as dcmqi and 3D Slicer code them (SNOMED CT):

- segment 1 ``liver``: category *Anatomical Structure* (SCT 123037004), type *Liver* (SCT 10200004): the whole
  organ, tumors included (the volume :func:`liverseg.volumetry.volumetry` reports);
- segment 2 ``tumor``: category *Morphologically Altered Structure* (SCT 49755003), type *Neoplasm*
  (SCT 108369006), anatomic region *Liver*; it overlaps segment 1 (readers that paint segments in number order,
  ``liverseg convert dicom-seg`` and the app's datastore, get the label back: tumor over liver).

Model output is ``AUTOMATIC`` with the model's name and version as algorithm identification; a label a person
drew is ``MANUAL``, and one a person corrected from the model's output ``SEMIAUTOMATIC`` (still naming the model).
The SEG references the source series (its instances, frame by frame) and shares its frame of reference, so OHIF,
3D Slicer and dcmqi place it on the CT.

Example::

    image, affine, meta = read_dicom_series(ct_dir)
    write_seg(label, meta["headers"], out / "seg.dcm", algorithm=Algorithm("liver_ct_seg", "0.3.3"))
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code
from pydicom.valuerep import format_number_as_ds

from liverseg import LABELS, __version__
from liverseg.imageio import atomic_path

__all__ = [
    "Algorithm",
    "write_seg",
    "build_seg",
    "segment_descriptions",
    "code_segment",
    "ALGORITHM_TYPES",
    "LIVER_CODE",
    "NEOPLASM_CODE",
    "ANATOMICAL_STRUCTURE",
    "MORPHOLOGICALLY_ALTERED_STRUCTURE",
]

logger = logging.getLogger(__name__)

ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
LIVER_CODE = Code("10200004", "SCT", "Liver")
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("49755003", "SCT", "Morphologically Altered Structure")
NEOPLASM_CODE = Code("108369006", "SCT", "Neoplasm")
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")

# label value -> (segment label, category, type, anatomic region or None); the segment number is the label value and
# the segment label the app's label name (what the app's datastore and monailabel clients map segments back by)
_SEGMENTS = {
    LABELS["liver"]: ("liver", ANATOMICAL_STRUCTURE, LIVER_CODE, None),
    LABELS["tumor"]: ("tumor", MORPHOLOGICALLY_ALTERED_STRUCTURE, NEOPLASM_CODE, LIVER_CODE),
}


@dataclass(frozen=True)
class Algorithm:
    """The model that made (or started) a segmentation: name and version, as DICOM's algorithm identification."""

    name: str
    version: str
    source: str = "liverseg"


def segment_descriptions(algorithm_type: str, algorithm: Algorithm | None, values: Sequence[int] = (1, 2)) -> list:
    """highdicom ``SegmentDescription`` items for the label ``values`` (segment number = label value)."""
    import highdicom as hd

    algorithm_type = str(algorithm_type).upper()
    if algorithm_type not in ALGORITHM_TYPES:
        raise ValueError(f"unknown algorithm type {algorithm_type!r}; valid: {', '.join(ALGORITHM_TYPES)}")
    if algorithm_type != "MANUAL" and algorithm is None:
        raise ValueError(f"algorithm type {algorithm_type} needs the algorithm (model name and version)")
    identification = None
    if algorithm is not None and algorithm_type != "MANUAL":
        identification = hd.AlgorithmIdentificationSequence(
            name=algorithm.name, family=ARTIFICIAL_INTELLIGENCE, version=algorithm.version, source=algorithm.source
        )
    out = []
    for value in values:
        if value not in _SEGMENTS:
            raise ValueError(f"unknown label value {value}; valid: {sorted(_SEGMENTS)}")
        label, category, kind, region = _SEGMENTS[value]
        out.append(
            hd.seg.SegmentDescription(
                segment_number=int(value),
                segment_label=label,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=algorithm_type,
                algorithm_identification=identification,
                tracking_uid=hd.UID(),
                tracking_id=f"{label} 1",
                anatomic_regions=[region] if region is not None else None,
            )
        )
    return out


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def code_segment(item: Dataset, value: int) -> None:
    """Code a ``SegmentSequence`` item as the project codes label ``value`` (category, type, anatomic region; the
    segment's number, label and algorithm stay): for SEGs written by others, e.g. OHIF's, which codes every segment
    as "Tissue" (T-D0050, SRT)."""
    if value not in _SEGMENTS:
        raise ValueError(f"unknown label value {value}; valid: {sorted(_SEGMENTS)}")
    _, category, kind, region = _SEGMENTS[value]
    item.SegmentedPropertyCategoryCodeSequence = [_code_item(category)]
    item.SegmentedPropertyTypeCodeSequence = [_code_item(kind)]
    if region is not None:
        item.AnatomicRegionSequence = [_code_item(region)]
    elif "AnatomicRegionSequence" in item:
        del item.AnatomicRegionSequence


# attributes highdicom copies from the source images that DICOM allows to be empty (type 2) but some series lack
_TYPE2_FROM_SOURCE = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
    "ReferringPhysicianName", "AccessionNumber",
)  # fmt: skip


_COPIED_DS = ("SliceThickness", "SpacingBetweenSlices", "PixelSpacing")  # decimal strings highdicom copies


def _values(value: object) -> list:
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def with_type2_attributes(headers: Sequence[Dataset]) -> list[Dataset]:
    """Shallow copies of ``headers`` with the type 2 patient / study attributes present (empty when missing), decimal
    strings longer than DICOM allows shortened, and a ``FrameOfReferenceUID`` where the series has none (3D-IRCADb's
    files, for one): derived from the series UID, the same for every slice, with a warning. The SEG / SR then
    validate; the source files are not changed."""
    out = []
    derived_for = ""
    for ds in headers:
        missing = [k for k in _TYPE2_FROM_SOURCE if k not in ds]
        no_for = not str(getattr(ds, "FrameOfReferenceUID", "") or "")
        long_ds = [k for k in _COPIED_DS if k in ds and any(len(str(v)) > 16 for v in _values(ds[k].value))]
        if missing or no_for or long_ds:
            ds = copy.copy(ds)
            for keyword in long_ds:  # invalid decimal strings (3D-IRCADb: 1.6000000238418579) copied into the SEG
                values = [format_number_as_ds(float(v)) for v in _values(ds[keyword].value)]
                setattr(ds, keyword, values if len(values) > 1 else values[0])
            for keyword in missing:
                setattr(ds, keyword, "")
            if no_for:
                from pydicom.uid import generate_uid

                series_uid = str(getattr(ds, "SeriesInstanceUID", ""))
                derived_for = generate_uid(entropy_srcs=[series_uid, "frame-of-reference"])
                ds.FrameOfReferenceUID = derived_for
        out.append(ds)
    if derived_for:
        logger.warning(
            "the source series %s has no FrameOfReferenceUID; the SEG / SR use %s, derived from the series UID "
            "(viewers that match frames of reference may not overlay them on the original files)",
            getattr(headers[0], "SeriesInstanceUID", "?"), derived_for,
        )  # fmt: skip
    return out


def build_seg(
    label: np.ndarray,
    source_headers: Sequence[Dataset],
    *,
    algorithm: Algorithm | None,
    algorithm_type: str = "AUTOMATIC",
    series_description: str = "Liver segmentation",
    series_number: int = 300,
    content_creator: str | None = None,
) -> Dataset:
    """A highdicom ``Segmentation`` (BINARY) of ``label`` on the source series.

    Args:
        label: ``[i, j, k]`` label volume on the source grid (values 0, 1 liver, 2 tumor): ``i`` the column, ``j``
            the row, ``k`` the slice in the order of ``source_headers`` (as :func:`read_dicom_series` gives them).
        source_headers: the source series' datasets in slice order (``meta["headers"]``; pixel data not needed).
        algorithm: the model; required for ``AUTOMATIC`` and ``SEMIAUTOMATIC``.
        algorithm_type: ``AUTOMATIC`` (model output), ``SEMIAUTOMATIC`` (corrected by a person) or ``MANUAL``.
        series_description, series_number: of the new SEG series.
        content_creator: the person who made or corrected the label (DICOM person name, ``Family^Given``).

    Raises:
        ValueError: the label's shape does not match the series, or it holds values other than 0, 1, 2.
    """
    import highdicom as hd

    label = np.asarray(label)
    if label.ndim != 3 or not source_headers:
        raise ValueError(f"expected a 3D label and its source series, got shape {label.shape}, "
                         f"{len(source_headers)} source image(s)")
    rows, cols = int(source_headers[0].Rows), int(source_headers[0].Columns)
    if label.shape != (cols, rows, len(source_headers)):
        raise ValueError(f"label shape {label.shape} does not match the series (columns, rows, slices) = "
                         f"{(cols, rows, len(source_headers))}")
    if label.dtype.kind not in "iub":
        raise ValueError(f"label must be an integer array, got dtype {label.dtype}")
    valid = (0, *sorted(_SEGMENTS))
    if label.size and (int(label.min()) < 0 or int(label.max()) > max(valid)):  # no full sort of a large volume
        bad = [int(v) for v in np.unique(label[(label < 0) | (label > max(valid))])]
        raise ValueError(f"label holds values {bad}; valid: {', '.join(str(v) for v in valid)}")
    counts = np.bincount(label.astype(np.uint8, copy=False).ravel(), minlength=max(valid) + 1)
    if not counts[1:].any():
        raise ValueError("the label is empty (background only): nothing to store as a SEG")
    present = sorted({LABELS["liver"]} | {v for v in _SEGMENTS if counts[v]})
    # only the slices holding a segment become frames (and source images): highdicom's time grows with the slices
    keep = np.flatnonzero(label.any(axis=(0, 1)))
    sub = label[:, :, keep]
    # segment 1 is the whole liver (tumors included, as volumetry counts it), segment 2 the tumors: overlapping
    # binary segments [slice, row, column, segment]; readers that paint segments in order end with the same label
    frames = np.stack([sub > 0 if v == LABELS["liver"] else sub == v for v in present], axis=-1)
    frames = np.ascontiguousarray(frames.transpose(2, 1, 0, 3)).astype(np.uint8)
    source_headers = [source_headers[int(k)] for k in keep]
    algorithm_type = str(algorithm_type).upper()
    version = algorithm.version if algorithm is not None else __version__
    return hd.seg.Segmentation(
        source_images=with_type2_attributes(source_headers),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(algorithm_type, algorithm, present),
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="liverseg",
        manufacturer_model_name=algorithm.name if algorithm is not None else "liverseg",
        software_versions=f"liverseg {__version__}; model {version}",
        device_serial_number="none",
        series_description=series_description[:64],
        content_label="LIVERSEG" if algorithm_type == "AUTOMATIC" else "LIVERSEG_EDIT",
        content_description=f"{algorithm_type.lower()} liver and tumor segmentation"[:64],
        content_creator_name=content_creator,
    )


def write_seg(
    label: np.ndarray,
    source_headers: Sequence[Dataset],
    out_path: Path,
    **kwargs,
) -> Path:
    """Write :func:`build_seg`'s SEG to ``out_path`` atomically (temporary file in the same folder, fsync,
    rename); returns ``out_path``."""
    seg = build_seg(label, source_headers, **kwargs)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        seg.save_as(str(tmp))
    logger.info("DICOM SEG written: %s (%d frames)", out_path, int(getattr(seg, "NumberOfFrames", 0)))
    return out_path
