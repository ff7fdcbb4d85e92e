"""Several DICOM SEGs of one image in a DICOMweb store: the newest (series date/time, then instance creation) is the
image's label everywhere (training's data list, scoring's lookup, the "labeled" count), with real pydicom SEGs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pydicom
import pytest
from lib import datastore as app_datastore  # noqa: E402  (apps/liver on sys.path, see conftest)

from .test_app_units import _series_json, write_seg


def _stamp(**tags: str) -> SimpleNamespace:
    """A dataset stand-in with the given date/time tags (``.get`` as pydicom's)."""
    ns = SimpleNamespace(**tags)
    ns.get = lambda name, default="": tags.get(name, default)
    return ns


@pytest.mark.parametrize(
    "older, newer",
    [
        ({"SeriesDate": "20260101", "SeriesTime": "235959"}, {"SeriesDate": "20260102", "SeriesTime": "000001"}),
        ({"SeriesDate": "20260102", "SeriesTime": "0930"}, {"SeriesDate": "20260102", "SeriesTime": "093000.5"}),
        ({"SeriesDate": "20260102", "SeriesTime": "09"}, {"SeriesDate": "20260102", "SeriesTime": "10"}),
        ({"SeriesDate": "2026.01.02", "SeriesTime": "09:30:00"}, {"SeriesDate": "20260102", "SeriesTime": "093001"}),
        # equal series stamps: instance creation decides
        ({"SeriesDate": "20260102", "SeriesTime": "1000", "InstanceCreationDate": "20260102",
          "InstanceCreationTime": "100001"},
         {"SeriesDate": "20260102", "SeriesTime": "1000", "InstanceCreationDate": "20260102",
          "InstanceCreationTime": "100002"}),
        # no series date at all: older than any dated SEG, whatever its instance creation says
        ({"InstanceCreationDate": "20300101"}, {"SeriesDate": "19990101"}),
        ({}, {"InstanceCreationDate": "20000101"}),
        ({"SeriesDate": "garbage", "SeriesTime": "120000"}, {"SeriesDate": "20200101"}),
    ],
)  # fmt: skip
def test_seg_recency_orders(older, newer):
    assert app_datastore.seg_recency(_stamp(**older)) < app_datastore.seg_recency(_stamp(**newer))
    chosen = app_datastore.newest_segs([("ct", "1.2.9", _stamp(**newer)), ("ct", "1.2.1", _stamp(**older))])
    assert chosen == {"ct": "1.2.9"}
    chosen = app_datastore.newest_segs([("ct", "1.2.1", _stamp(**older)), ("ct", "1.2.9", _stamp(**newer))])
    assert chosen == {"ct": "1.2.9"}  # the store's listing order does not matter


def test_newest_segs_per_image_and_ties():
    day = {"SeriesDate": "20260102", "SeriesTime": "1000"}
    segs = [
        ("ct1", "1.2.5", _stamp(**day)),
        ("ct1", "1.2.40", _stamp(**day)),  # same stamp: the larger UID string, whatever the listing order
        ("ct2", "1.2.7", _stamp(SeriesDate="20250101")),
        ("ct2", "1.2.8", _stamp()),
        # a series with two instances is as new as its newest instance
        ("ct3", "1.3.1", _stamp(SeriesDate="20240101")),
        ("ct3", "1.3.1", _stamp(SeriesDate="20270101")),
        ("ct3", "1.3.2", _stamp(SeriesDate="20260101")),
    ]
    expected = {"ct1": "1.2.5", "ct2": "1.2.7", "ct3": "1.3.1"}
    assert app_datastore.newest_segs(segs) == expected
    assert app_datastore.newest_segs(segs[::-1]) == expected
    assert app_datastore.newest_segs([]) == {}


class _StoreWithSegs:
    """The DICOMwebClient calls the datastore makes, answered from files: one CT series and any number of SEGs
    (the metadata of a SEG is its real header as DICOM JSON, as a DICOMweb server returns it)."""

    def __init__(self, base_url: str, ct: list[Path]):
        first = pydicom.dcmread(ct[0], stop_before_pixels=True)
        self.base_url = base_url
        self.study, self.ct_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
        self.files = {self.ct_uid: ct}
        self.series = [_series_json(self.ct_uid, self.study, "CT")]

    def add_seg(self, path: Path) -> str:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
        self.files[uid] = [path]
        self.series.append(_series_json(uid, self.study, "SEG"))
        return uid

    def search_for_series(self, search_filters=None, **kwargs):
        f = search_filters or {}
        keep = {"Modality": "00080060", "SeriesInstanceUID": "0020000E"}
        return [s for s in self.series if all(s[keep[k]]["Value"] == [v] for k, v in f.items())]

    def retrieve_series(self, study, series, **kwargs):
        return [pydicom.dcmread(f) for f in self.files[series]]

    def retrieve_series_metadata(self, study, series, **kwargs):
        return [pydicom.dcmread(f, stop_before_pixels=True).to_json_dict() for f in self.files[series]]

    def store_instances(self, datasets, **kwargs):
        raise AssertionError("no upload expected in this test")


def _dated_seg(path: Path, label, affine, files, series: tuple[str, str], created: tuple[str, str]) -> Path:
    write_seg(path, label, affine, files)
    ds = pydicom.dcmread(path)
    ds.SeriesDate, ds.SeriesTime = series
    ds.InstanceCreationDate, ds.InstanceCreationTime = created
    ds.save_as(str(path))
    return path


@pytest.fixture(scope="module")
def lps_case(tmp_path_factory):
    """An LPS phantom as a DICOM series."""
    from liverseg.dicom import write_dicom_series
    from liverseg.phantom import generate_phantom

    root = tmp_path_factory.mktemp("seg-selection")
    p = generate_phantom(503, shape=(32, 32, 16), orientation="LPS")
    return p, write_dicom_series(root / "CT", p.image, p.affine, patient_id="UNIT-503")


def test_dicomweb_newest_seg_is_the_label_everywhere(lps_case, tmp_path):
    """Three SEGs of one CT, the newest listed in the middle: the image counts once as labelled, and training's data
    list, scoring's lookup and the label info all use the newest; a newer SEG stored later (OHIF's save) takes over
    at the next data list."""
    p, files = lps_case
    liver_only = (p.label > 0).astype(np.uint8)
    tumor_as_liver = np.where(p.label == 2, 1, 0).astype(np.uint8)
    client = _StoreWithSegs("http://stub-seg-selection/dicom-web", files)
    client.add_seg(_dated_seg(tmp_path / "a.dcm", liver_only, p.affine, files, ("20260101", "120000"),
                              ("20260101", "120000")))  # fmt: skip
    newest = client.add_seg(_dated_seg(tmp_path / "b.dcm", p.label, p.affine, files, ("20260102", "080000"),
                                       ("20260102", "080000")))  # fmt: skip
    client.add_seg(_dated_seg(tmp_path / "c.dcm", tumor_as_liver, p.affine, files, ("20260101", "235959"),
                              ("20260103", "000000")))  # fmt: skip  (created later, but an older series)
    ds = app_datastore.LiverDICOMwebDatastore(
        client=client, search_filter={"Modality": "CT"}, cache_path=str(tmp_path / "cache")
    )
    assert ds.get_labeled_images() == [client.ct_uid]  # once, not three times
    assert ds.get_unlabeled_images() == []
    assert ds.status()["completed"] == 1

    def label_now() -> np.ndarray:
        return np.asarray(nib.load(ds.get_label_uri(client.ct_uid, "final")).dataobj)

    assert ds.get_label_by_image_id(client.ct_uid, "final") == client.ct_uid
    assert ds.get_label_info(client.ct_uid, "final")["SeriesInstanceUID"] == newest
    train = ds.datalist()
    assert [d["image"] for d in train] == [ds.get_image_uri(client.ct_uid)]
    assert sorted(np.unique(label_now()).tolist()) == [0, 1, 2]
    assert (label_now() == 2).sum() == (p.label == 2).sum()

    # a SEG saved later (OHIF writes its browser's clock as SeriesDate/Time): the next data list takes it
    newer = client.add_seg(_dated_seg(tmp_path / "d.dcm", liver_only, p.affine, files, ("20260105", "101010.123"),
                                      ("20260105", "101010")))  # fmt: skip
    ds.datalist()
    assert ds.get_label_info(client.ct_uid, "final")["SeriesInstanceUID"] == newer
    assert sorted(np.unique(label_now()).tolist()) == [0, 1]
    assert ds.get_labeled_images() == [client.ct_uid]
