"""Volumetry as a DICOM Structured Report: a TID 1500 measurement report (Comprehensive 3D SR, highdicom) that
references the SEG's segments.

Content (one TID 1411 volumetric measurement group each):

- ``Liver``: the whole liver (SEG segment 1), finding type *Liver*: *Volume* in mL;
- ``Tumors``: all tumors (SEG segment 2), finding type *Neoplasm*, finding site *Liver*: *Volume* (total, mL),
  number of lesions and tumor burden (tumor / liver volume, %);
- ``Lesion N`` (largest first, as :func:`liverseg.volumetry.volumetry` numbers them): *Volume* (mL) and *Diameter*
  (longest 3D diameter, mm) of each 26-connected tumor component, referencing the tumor segment.

Volume and diameter are SNOMED CT concepts (118565006, 81827009), units UCUM; the number of lesions and the tumor
burden have no standard concept and use the private coding scheme ``99LIVERSEG``. The report is written by a device
observer (the model, its version) and is neither complete nor verified: research output, not for diagnosis.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from liverseg import LABELS
from liverseg.dicom.seg import LIVER_CODE, NEOPLASM_CODE, Algorithm
from liverseg.imageio import atomic_path

__all__ = ["build_volumetry_sr", "write_volumetry_sr", "NUMBER_OF_LESIONS", "TUMOR_BURDEN"]

logger = logging.getLogger(__name__)

VOLUME = Code("118565006", "SCT", "Volume")
DIAMETER = Code("81827009", "SCT", "Diameter")
NUMBER_OF_LESIONS = Code("LS-0001", "99LIVERSEG", "Number of lesions")
TUMOR_BURDEN = Code("LS-0002", "99LIVERSEG", "Tumor burden (tumor volume / liver volume)")
ML = Code("ml", "UCUM", "milliliter")
MM = Code("mm", "UCUM", "millimeter")
PERCENT = Code("%", "UCUM", "percent")
LESIONS = Code("{lesions}", "UCUM", "lesions")
CT_PROCEDURE = Code("25045-6", "LN", "CT unspecified body region")


def build_volumetry_sr(
    vol: dict[str, Any],
    seg: Dataset,
    source_headers: Sequence[Dataset],
    *,
    algorithm: Algorithm,
    series_number: int = 301,
) -> Dataset:
    """A Comprehensive 3D SR of the volumetry ``vol`` (:func:`liverseg.volumetry.volumetry`) of the SEG ``seg``
    (as :func:`liverseg.dicom.seg.build_seg` writes it: segment 1 liver, 2 tumor) made on ``source_headers``; the
    SR's evidence is the SEG, its segments' source the CT series."""
    import highdicom as hd

    segments = {int(s.SegmentNumber) for s in seg.SegmentSequence}
    if LABELS["liver"] not in segments:
        raise ValueError(f"the SEG has no liver segment ({LABELS['liver']}); segments: {sorted(segments)}")
    observer = hd.sr.ObserverContext(
        observer_type=Code("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=algorithm.name, manufacturer_name="liverseg", model_name=algorithm.name
        ),
    )
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version)
    liver_site = hd.sr.FindingSite(anatomic_location=LIVER_CODE)
    # the segments' source is referenced as the series (not image by image): the SR stays small and quick to build
    source_series = hd.sr.SourceSeriesForSegmentation(str(source_headers[0].SeriesInstanceUID))

    def group(tracking: str, segment: int, finding: Code, measurements: list, sites=None):
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=tracking),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID),
                sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=segment,
                source_series=source_series,
            ),
            finding_type=finding,
            algorithm_id=algorithm_id,
            finding_sites=sites,
            measurements=measurements,
        )

    groups = [group("Liver", LABELS["liver"], LIVER_CODE, [hd.sr.Measurement(VOLUME, vol["liver_volume_ml"], ML)])]
    if vol["num_tumors"] and LABELS["tumor"] in segments:
        tumor_measurements = [
            hd.sr.Measurement(VOLUME, vol["total_tumor_volume_ml"], ML),
            hd.sr.Measurement(NUMBER_OF_LESIONS, vol["num_tumors"], LESIONS),
        ]
        if vol.get("tumor_burden_percent") is not None:
            tumor_measurements.append(hd.sr.Measurement(TUMOR_BURDEN, vol["tumor_burden_percent"], PERCENT))
        groups.append(group("Tumors", LABELS["tumor"], NEOPLASM_CODE, tumor_measurements, [liver_site]))
        for t in vol["tumors"]:
            lesion = [hd.sr.Measurement(VOLUME, t["volume_ml"], ML)]
            if t.get("diameter_mm") is not None:
                lesion.append(hd.sr.Measurement(DIAMETER, t["diameter_mm"], MM))
            groups.append(group(f"Lesion {t['id']}", LABELS["tumor"], NEOPLASM_CODE, lesion, [liver_site]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CT_PROCEDURE,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[seg],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="liverseg",
        is_complete=False,
        is_final=False,
        is_verified=False,
        series_description="Liver volumetry (liverseg, not for diagnosis)",
    )


def write_volumetry_sr(
    vol: dict[str, Any],
    seg_path: Path,
    source_headers: Sequence[Dataset],
    out_path: Path,
    *,
    algorithm: Algorithm,
) -> Path:
    """Write :func:`build_volumetry_sr` of the SEG file ``seg_path`` to ``out_path`` (atomic); returns it."""
    seg = pydicom.dcmread(str(seg_path))
    sr = build_volumetry_sr(vol, seg, source_headers, algorithm=algorithm)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        sr.save_as(str(tmp))
    logger.info("DICOM SR written: %s (%d measurement groups)", out_path, 1 + len(vol.get("tumors", [])))
    return out_path
