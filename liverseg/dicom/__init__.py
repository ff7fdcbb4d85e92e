"""DICOM in and out through maintained libraries.

- :mod:`liverseg.dicom.series`: image series of any common transfer syntax (ITK's GDCM reader), checked first;
- :mod:`liverseg.dicom.write`: volumes written as DICOM series (sample data, tests);
- :mod:`liverseg.dicom.seg`: DICOM Segmentation objects written with highdicom (liver / tumor codes, algorithm);
- :mod:`liverseg.dicom.sr`: volumetry as a DICOM Structured Report (TID 1500, highdicom).

Only :mod:`liverseg.dicom.series` and :mod:`liverseg.dicom.write` are imported here; highdicom is imported by the
modules that need it.
"""

from __future__ import annotations

from liverseg.dicom.series import NON_IMAGE_MODALITIES, find_series, is_obviously_not_dicom, read_dicom_series
from liverseg.dicom.write import write_dicom_series

__all__ = ["read_dicom_series", "write_dicom_series", "find_series", "is_obviously_not_dicom", "NON_IMAGE_MODALITIES"]
