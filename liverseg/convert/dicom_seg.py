"""A CT series plus a DICOM Segmentation (SEG) object to one nnU-Net case.

The SEG is parsed with pydicom: every frame is placed on the CT grid by its own ``ImagePositionPatient``
(``PlanePositionSequence``), after checking that its orientation and pixel spacing match the CT; frames that do
not fall on a CT slice raise :class:`~liverseg.errors.InputError`. Segments are mapped to labels by name
(``SegmentLabel`` and the ``SegmentedPropertyTypeCodeSequence`` meaning: liver -> 1; tumor / lesion / neoplasm /
mass / cancer / metastasis -> 2) or by an explicit ``segment_map`` ``{segment_number: label}``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from liverseg import LABELS
from liverseg.dataset import read_dataset_json, write_case, write_dataset_json
from liverseg.dicom import read_dicom_series
from liverseg.errors import InputError

__all__ = ["convert_dicom_seg", "read_dicom_seg", "segment_label_from_name", "parse_segment_map", "register_cli"]

logger = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
TUMOR_WORDS = ("tumor", "tumour", "lesion", "neoplasm", "mass", "cancer", "carcinoma", "metasta", "hcc")
LIVER_WORDS = ("liver", "hepat")


def segment_label_from_name(*names: str) -> int | None:
    """Label for a segment from its names (tumor words win over liver words); ``None`` when unknown."""
    text = " ".join(n for n in names if n).lower()
    if any(w in text for w in TUMOR_WORDS):
        return LABELS["tumor"]
    if any(w in text for w in LIVER_WORDS):
        return LABELS["liver"]
    return None


def parse_segment_map(text: str) -> dict[int, int]:
    """Parse ``"1=liver,2=tumor"`` (or ``"1=1,2=2"``, ``"3=background"`` to drop a segment)."""
    out: dict[int, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"bad segment map entry {part!r}: expected NUMBER=LABEL, e.g. 1=liver")
        try:
            number = int(key.strip())
        except ValueError as e:
            raise ValueError(f"bad segment number {key.strip()!r} in {part!r}") from e
        value = value.strip().lower()
        if value in LABELS:
            label = LABELS[value]
        elif value.isdigit() and int(value) in LABELS.values():
            label = int(value)
        else:
            valid = f"{', '.join(LABELS)} or {sorted(LABELS.values())}"
            raise ValueError(f"bad label {value!r} in {part!r}; valid: {valid}")
        out[number] = label
    if not out:
        raise ValueError(f"empty segment map {text!r}")
    return out


def _item(fg: Dataset | None, seq: str) -> Dataset | None:
    if fg is None or seq not in fg or len(getattr(fg, seq)) == 0:
        return None
    return getattr(fg, seq)[0]


def _frame_attr(frame_fg: Dataset, shared_fg: Dataset | None, seq: str, keyword: str):
    for fg in (frame_fg, shared_fg):
        item = _item(fg, seq)
        if item is not None and keyword in item:
            return getattr(item, keyword)
    return None


def _describe(segment: Dataset) -> str:
    meaning = ""
    type_item = _item(segment, "SegmentedPropertyTypeCodeSequence")
    if type_item is not None:
        meaning = str(getattr(type_item, "CodeMeaning", "") or "")
    return f"#{int(segment.SegmentNumber)} {str(getattr(segment, 'SegmentLabel', '') or '')!r} (type: {meaning or '?'})"


def read_dicom_seg(
    seg_file: Path,
    ct_shape: tuple[int, int, int],
    ct_affine_lps: np.ndarray,
    *,
    frame_of_reference_uid: str = "",
) -> tuple[dict[int, np.ndarray], dict[int, Dataset]]:
    """Read a DICOM SEG onto a CT grid.

    Args:
        seg_file: the SEG file.
        ct_shape: CT array shape ``[i, j, k]``.
        ct_affine_lps: the CT voxel-to-LPS affine (``meta["affine_lps"]`` of :func:`read_dicom_series`).
        frame_of_reference_uid: the CT's ``FrameOfReferenceUID``; a different one in the SEG is an error.

    Returns:
        ``({segment_number: boolean mask on the CT grid}, {segment_number: segment dataset})``.
    """
    seg_file = Path(seg_file)
    if not seg_file.is_file():
        raise InputError(seg_file, "file not found")
    try:
        seg = pydicom.dcmread(str(seg_file))
    except Exception as e:
        raise InputError(seg_file, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
    if str(getattr(seg, "SOPClassUID", "")) != SEGMENTATION_STORAGE and str(getattr(seg, "Modality", "")) != "SEG":
        raise InputError(seg_file, f"not a DICOM SEG (SOP class {getattr(seg, 'SOPClassUID', '?')})")
    seg_type = str(getattr(seg, "SegmentationType", "")).upper()
    if seg_type not in ("BINARY", "FRACTIONAL"):
        raise InputError(seg_file, f"unsupported SegmentationType {seg_type!r}; expected BINARY or FRACTIONAL")
    for keyword in ("SegmentSequence", "PerFrameFunctionalGroupsSequence"):
        if keyword not in seg:
            raise InputError(seg_file, f"missing {keyword}")
    seg_for = str(getattr(seg, "FrameOfReferenceUID", "") or "")
    if frame_of_reference_uid and seg_for and seg_for != frame_of_reference_uid:
        raise InputError(
            seg_file, f"FrameOfReferenceUID {seg_for} differs from the CT's {frame_of_reference_uid}: "
            "the segmentation was made in another coordinate system"
        )
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    try:
        frames = seg.pixel_array
    except Exception as e:
        raise InputError(seg_file, f"cannot decode the pixel data ({type(e).__name__}: {e})") from e
    n_frames = int(getattr(seg, "NumberOfFrames", 1) or 1)
    if frames.size != n_frames * int(seg.Rows) * int(seg.Columns):
        raise InputError(seg_file, f"pixel data holds {frames.size} values, expected {n_frames} frames of "
                         f"{seg.Rows}x{seg.Columns}")
    frames = frames.reshape(n_frames, int(seg.Rows), int(seg.Columns))
    if seg_type == "FRACTIONAL":
        max_value = float(getattr(seg, "MaximumFractionalValue", 255) or 255)
        frames = frames.astype(np.float32) >= 0.5 * max_value
    else:
        frames = frames > 0
    per_frame = seg.PerFrameFunctionalGroupsSequence
    if len(per_frame) != n_frames:
        raise InputError(seg_file, f"{len(per_frame)} per-frame functional groups for {n_frames} frames")
    shared = _item(seg, "SharedFunctionalGroupsSequence")

    ct_dirs = ct_affine_lps[:3, :3] / np.linalg.norm(ct_affine_lps[:3, :3], axis=0)
    ct_col_spacing, ct_row_spacing = np.linalg.norm(ct_affine_lps[:3, :2], axis=0)
    inv = np.linalg.inv(ct_affine_lps)
    slice_len = float(np.linalg.norm(ct_affine_lps[:3, 2]))
    tol_voxels = 0.05  # a frame may be off the CT grid by at most 5 % of a voxel
    masks: dict[int, np.ndarray] = {}
    for f, fg in enumerate(per_frame):
        where = f"frame {f + 1}"
        number = _frame_attr(fg, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        if number is None or int(number) not in segments:
            raise InputError(seg_file, f"{where}: missing or unknown ReferencedSegmentNumber {number!r}")
        iop = _frame_attr(fg, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _frame_attr(fg, shared, "PixelMeasuresSequence", "PixelSpacing")
        position = _frame_attr(fg, shared, "PlanePositionSequence", "ImagePositionPatient")
        if iop is None or spacing is None or position is None:
            raise InputError(
                seg_file, f"{where}: missing ImageOrientationPatient, PixelSpacing or ImagePositionPatient "
                "in the functional groups: cannot place the frame"
            )
        iop = np.array([float(v) for v in iop])
        if np.max(np.abs(iop[:3] - ct_dirs[:, 0])) > 1e-3 or np.max(np.abs(iop[3:] - ct_dirs[:, 1])) > 1e-3:
            raise InputError(
                seg_file, f"{where}: orientation {np.round(iop, 5).tolist()} differs from the CT's "
                f"{np.round(np.concatenate([ct_dirs[:, 0], ct_dirs[:, 1]]), 5).tolist()}"
            )
        spacing = np.array([float(v) for v in spacing])
        if abs(spacing[0] - ct_row_spacing) > 1e-3 * ct_row_spacing or abs(spacing[1] - ct_col_spacing) > (
            1e-3 * ct_col_spacing
        ):
            raise InputError(
                seg_file, f"{where}: pixel spacing {spacing.tolist()} differs from the CT's "
                f"{[round(ct_row_spacing, 6), round(ct_col_spacing, 6)]}"
            )
        ijk = (inv @ np.append(np.array([float(v) for v in position]), 1.0))[:3]
        nearest = np.rint(ijk)
        if np.max(np.abs(ijk - nearest)) > tol_voxels:
            off_mm = np.round((ijk - nearest) * [ct_col_spacing, ct_row_spacing, slice_len], 3).tolist()
            raise InputError(
                seg_file, f"{where}: position {[float(v) for v in position]} (LPS mm) is not on the CT grid "
                f"(voxel {np.round(ijk, 3).tolist()}, off by {off_mm} mm along i, j, k)"
            )
        i0, j0, k = (int(v) for v in nearest)
        data = frames[f].T  # [column, row]
        i1, j1 = i0 + data.shape[0], j0 + data.shape[1]
        if not (0 <= k < ct_shape[2]) or i0 < 0 or j0 < 0 or i1 > ct_shape[0] or j1 > ct_shape[1]:
            raise InputError(
                seg_file, f"{where}: lies outside the CT volume (voxel {[i0, j0, k]}, frame "
                f"{data.shape[0]}x{data.shape[1]}, CT {list(ct_shape)})"
            )
        mask = masks.setdefault(int(number), np.zeros(ct_shape, dtype=bool))
        mask[i0:i1, j0:j1, k] |= data
    return masks, segments


def convert_dicom_seg(
    series_dir: Path,
    seg_file: Path,
    out_root: Path,
    *,
    case_id: str,
    segment_map: dict[int, int] | None = None,
    split: str = "Tr",
) -> str:
    """Convert a CT series and its DICOM SEG to one nnU-Net case in ``out_root``.

    Args:
        series_dir: folder (or file list) of the CT series, read with :func:`liverseg.dicom.read_dicom_series`.
        seg_file: the DICOM SEG (BINARY or FRACTIONAL) made on that CT.
        out_root: dataset folder; ``dataset.json`` is (re)written.
        case_id: the case id.
        segment_map: ``{segment_number: label}`` (labels from :data:`liverseg.LABELS`, 0 drops a segment);
            segments not in it are ignored. Default: map by segment name (liver -> 1, tumor words -> 2); an
            unrecognised segment raises :class:`InputError` listing the segments.
        split: ``"Tr"`` or ``"Ts"``.

    Returns:
        ``case_id``.
    """
    seg_file, out_root = Path(seg_file), Path(out_root)
    image, affine, meta = read_dicom_series(series_dir)
    masks, segments = read_dicom_seg(
        seg_file, image.shape, meta["affine_lps"], frame_of_reference_uid=meta["frame_of_reference_uid"]
    )
    seg_ds = pydicom.dcmread(str(seg_file), stop_before_pixels=True)
    referenced = [str(getattr(s, "SeriesInstanceUID", "")) for s in getattr(seg_ds, "ReferencedSeriesSequence", [])]
    if referenced and meta["series_uid"] not in referenced:
        logger.warning(
            "%s references series %s, not the CT series %s; frames are placed by position",
            seg_file, ", ".join(referenced), meta["series_uid"],
        )

    listing = "; ".join(_describe(segments[n]) for n in sorted(segments))
    mapping: dict[int, int] = {}
    if segment_map is not None:
        unknown = sorted(set(segment_map) - set(segments))
        if unknown:
            raise InputError(
                seg_file, f"segment number(s) {unknown} in the segment map not in the SEG; segments: {listing}"
            )
        bad = sorted({v for v in segment_map.values() if v not in LABELS.values()})
        if bad:
            raise ValueError(f"segment map labels {bad} invalid; valid: {LABELS}")
        mapping = dict(segment_map)
        for n in sorted(set(segments) - set(segment_map)):
            logger.warning("%s: segment %s not in the segment map: ignored", seg_file, _describe(segments[n]))
    else:
        unknown_segments = []
        for n, s in segments.items():
            type_item = _item(s, "SegmentedPropertyTypeCodeSequence")
            label = segment_label_from_name(
                str(getattr(s, "SegmentLabel", "") or ""),
                str(getattr(type_item, "CodeMeaning", "") or "") if type_item is not None else "",
            )
            if label is None:
                unknown_segments.append(n)
            else:
                mapping[n] = label
        if unknown_segments:
            raise InputError(
                seg_file, f"cannot tell liver from tumor for segment(s) {unknown_segments}; segments: {listing}. "
                "Give a segment map, e.g. --segment-map 1=liver,2=tumor"
            )

    label = np.zeros(image.shape, dtype=np.uint8)
    for n, value in sorted(mapping.items(), key=lambda item: item[1]):  # tumor (2) overwrites liver (1)
        if value and n in masks:
            label[masks[n]] = value
    for n in sorted(set(mapping) - set(masks)):
        logger.warning("%s: segment %s has no frames (empty)", seg_file, _describe(segments[n]))
    counts = {name: int(np.count_nonzero(label == v)) for name, v in LABELS.items() if v}
    logger.info("%s -> %s: %s voxels", seg_file, case_id, counts)

    write_case(out_root, case_id, image, affine, label, split=split)
    try:
        existing = read_dataset_json(out_root)
        name, description = existing.get("name", out_root.name), existing.get("description", "")
    except (OSError, ValueError):
        name, description = out_root.name, "CT with DICOM SEG labels, converted by liverseg"
    write_dataset_json(out_root, name, description)
    return case_id


def _run(args: argparse.Namespace) -> int:
    segment_map = parse_segment_map(args.segment_map) if args.segment_map else None
    convert_dicom_seg(
        Path(args.series_dir), Path(args.seg_file), Path(args.out), case_id=args.case_id, segment_map=segment_map,
        split=args.split,
    )
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``liverseg convert dicom-seg SERIES_DIR SEG_FILE OUT --case-id ID [--segment-map 1=liver,2=tumor]``."""
    p = subparsers.add_parser(
        "dicom-seg",
        help="a CT DICOM series + DICOM SEG -> one nnU-Net case",
        description="Convert a CT series and a DICOM SEG (BINARY or FRACTIONAL) to one nnU-Net case. Segments map "
        "to labels by name (liver -> 1, tumor/lesion/... -> 2) unless --segment-map is given.",
    )
    p.add_argument("series_dir", metavar="SERIES_DIR", help="folder of the CT series")
    p.add_argument("seg_file", metavar="SEG_FILE", help="the DICOM SEG file")
    p.add_argument("out", metavar="OUT", help="dataset folder to write into")
    p.add_argument("--case-id", required=True, help="case id of the written case")
    p.add_argument("--segment-map", default=None, help="segment number to label, e.g. 1=liver,2=tumor (0 drops)")
    p.add_argument("--split", choices=("Tr", "Ts"), default="Tr", help="imagesTr/labelsTr or imagesTs/labelsTs")
    p.set_defaults(func=_run)
