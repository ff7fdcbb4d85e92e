"""The DICOMweb datastore fetches series in their stored transfer syntax (``*``) and decodes them itself: JPEG 2000,
JPEG-LS, JPEG lossless and RLE series (transcoded from a real CT) give the same image as the uncompressed series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from lib import datastore as app_datastore  # noqa: E402  (apps/liver on sys.path, see conftest)
from lib.validation import BadRequest, NotFound  # noqa: E402

from liverseg.dicom import read_dicom_series
from tests.dicom.transcode import SYNTAXES, transcode_folder

REAL_CT = Path(__file__).resolve().parents[1] / "data" / "dcmqi-ct3slice"
CT_FILES = ["01.dcm", "02.dcm", "03.dcm"]
pytestmark = pytest.mark.skipif(not (REAL_CT / "01.dcm").is_file(), reason=f"real CT not found at {REAL_CT}")


class _CompressedStore:
    """A DICOMweb store holding one compressed series; like Orthanc with JPEG 2000, it cannot transcode: asked for
    the default (Explicit VR Little Endian) it fails, asked for ``*`` it sends the files as stored."""

    base_url = "http://stub-compressed/dicom-web"

    def __init__(self, files: list[Path]):
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        self.study, self.series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
        self.files = files
        self.asked: list = []

    def search_for_series(self, search_filters=None, **kwargs):
        entry = {"0020000E": {"vr": "UI", "Value": [self.series_uid]}, "0020000D": {"vr": "UI", "Value": [self.study]},
                 "00080060": {"vr": "CS", "Value": ["CT"]}}  # fmt: skip
        wanted = (search_filters or {}).get("SeriesInstanceUID")
        return [entry] if wanted in (None, self.series_uid) else []

    def retrieve_series(self, study, series, media_types=None, **kwargs):
        self.asked.append(media_types)
        if not media_types or not any(len(m) > 1 and m[1] == "*" for m in media_types):
            raise RuntimeError("500 Server Error: cannot transcode JPEG 2000 to 1.2.840.10008.1.2.1")
        return [pydicom.dcmread(f) for f in self.files]

    def retrieve_series_metadata(self, study, series, **kwargs):
        return []


def _store(tmp_path: Path, syntax: str) -> tuple[app_datastore.LiverDICOMwebDatastore, _CompressedStore]:
    folder = transcode_folder(REAL_CT, tmp_path / syntax, syntax, CT_FILES)
    client = _CompressedStore(sorted(folder.iterdir()))
    ds = app_datastore.LiverDICOMwebDatastore(
        client=client, search_filter={"Modality": "CT"}, cache_path=str(tmp_path / "cache")
    )
    return ds, client


@pytest.mark.parametrize("syntax", list(SYNTAXES))
def test_compressed_series_read_as_uncompressed(tmp_path, syntax):
    ds, client = _store(tmp_path, syntax)
    image = ds.get_image_uri(client.series_uid)
    assert client.asked == [app_datastore.ANY_TRANSFER_SYNTAX]
    cached = sorted((tmp_path / "cache").rglob("*.dcm"))
    assert len(cached) == 3 and str(pydicom.dcmread(cached[0]).file_meta.TransferSyntaxUID) == SYNTAXES[syntax][1]
    ref, ref_affine, _ = read_dicom_series(REAL_CT)
    nii = nib.load(image)
    np.testing.assert_array_equal(np.asarray(nii.dataobj), ref)
    np.testing.assert_allclose(nii.affine, ref_affine, atol=1e-4)
    assert ds.get_image_uri(client.series_uid) == image and len(client.asked) == 1  # cached


def test_unknown_series_and_broken_series(tmp_path):
    ds, client = _store(tmp_path, "rle")
    with pytest.raises(NotFound, match="not in the DICOMweb store"):
        app_datastore.download_series_any_syntax(client, "1.2.3.4", str(tmp_path / "x"))
    client.files = client.files[:1] + client.files[2:]  # the middle slice is missing from the store
    client.files.append(client.files[0])  # and one slice is there twice
    dup = pydicom.dcmread(client.files[0])
    dup.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["dup"])
    dup.save_as(str(tmp_path / "dup.dcm"))
    client.files[-1] = tmp_path / "dup.dcm"
    with pytest.raises(BadRequest, match=f"series {client.series_uid}: duplicate slice position"):
        ds.get_image_uri(client.series_uid)


@pytest.fixture(scope="module")
def orthanc_store(tmp_path_factory):
    from .conftest import free_port
    from .dicomweb import Orthanc, missing_orthanc

    reason = missing_orthanc()
    if reason:
        pytest.skip(reason)
    server = Orthanc(tmp_path_factory.mktemp("orthanc-ts"), free_port()).start()
    yield server
    server.stop()


@pytest.mark.parametrize("syntax", list(SYNTAXES))
def test_compressed_series_from_orthanc(tmp_path, orthanc_store, syntax):
    """A real Orthanc holding each compressed series: the datastore's ``*`` download reads as the uncompressed CT
    (Orthanc 1.10 answers 500 to the default request for the JPEG 2000 one: it cannot transcode it)."""
    from dicomweb_client.api import DICOMwebClient

    folder = transcode_folder(REAL_CT, tmp_path / syntax, syntax, CT_FILES)
    series_uid = pydicom.uid.generate_uid(entropy_srcs=[syntax, "series"])
    for f in sorted(folder.iterdir()):  # one series per transfer syntax in the store
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
            entropy_srcs=[syntax, f.name]
        )
        ds.save_as(f)
    orthanc_store.upload(sorted(folder.iterdir()))
    client = DICOMwebClient(url=orthanc_store.dicomweb_url)
    files = app_datastore.download_series_any_syntax(client, series_uid, str(tmp_path / "cache" / series_uid))
    assert {str(pydicom.dcmread(f).file_meta.TransferSyntaxUID) for f in files} == {SYNTAXES[syntax][1]}
    ref, ref_affine, _ = read_dicom_series(REAL_CT)
    out, affine, _ = read_dicom_series(tmp_path / "cache" / series_uid)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_allclose(affine, ref_affine, atol=1e-5)
