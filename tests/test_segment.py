"""``liverseg segment``: study discovery, outputs for NIfTI and DICOM input (mask, SEG, SR, volumetry, report),
failures with and without --keep-going, and a start-up that does not import torch before the first image."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from liverseg.cli import main
from liverseg.convert.dicom_seg import convert_dicom_seg
from liverseg.dicom import write_dicom_series
from liverseg.errors import InputError
from liverseg.imageio import read_nifti, write_nifti
from liverseg.phantom import generate_phantom
from liverseg.segment import discover_studies, segment
from liverseg.volumetry import volumetry
from tests.conftest import REPO


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """A NIfTI phantom (RAS), the same anatomy as a DICOM series (LPS), and a broken NIfTI."""
    root = tmp_path_factory.mktemp("studies")
    ras = generate_phantom(7, shape=(48, 48, 24), orientation="RAS", num_tumors=2)
    lps = generate_phantom(7, shape=(48, 48, 24), orientation="LPS", num_tumors=2)
    write_nifti(root / "in" / "ct_ras.nii.gz", ras.image, ras.affine)
    write_dicom_series(root / "in" / "patient_b" / "CT", lps.image, lps.affine, patient_id="SEG-B")
    (root / "broken").mkdir()
    (root / "broken" / "bad.nii.gz").write_bytes(b"not a nifti file at all")
    return root


def test_discover_studies(tmp_path, studies):
    found = discover_studies([studies / "in"])
    assert [(s.name, s.kind) for s in found] == [("ct_ras", "nifti"), ("patient_b_CT", "dicom")]
    # 3D-IRCADb layout: the patient's DICOM folder is a study, its masks are not
    patient = tmp_path / "3Dircadb1.1"
    write_dicom_series(patient / "PATIENT_DICOM", np.zeros((8, 8, 3)), np.eye(4), patient_id="P")
    write_dicom_series(patient / "MASKS_DICOM" / "liver", np.zeros((8, 8, 3)), np.eye(4), patient_id="P",
                       rescale=False)
    assert [s.name for s in discover_studies([tmp_path])] == ["3Dircadb1.1_PATIENT_DICOM"]
    assert [s.name for s in discover_studies([patient / "PATIENT_DICOM"])] == ["3Dircadb1.1_PATIENT_DICOM"]
    same = discover_studies([studies / "in" / "ct_ras.nii.gz", studies / "in" / "ct_ras.nii.gz"])
    assert [s.name for s in same] == ["ct_ras", "ct_ras_2"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.nii.gz", "not found"),
        (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", "not a NIfTI file"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no NIfTI file and no DICOM series"),
    ],
    ids=["missing", "not nifti", "empty folder"],
)
def test_discover_bad_inputs(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InputError, match=message) as info:
        discover_studies([path])
    assert str(path) in str(info.value)


@pytest.mark.slow
def test_segment_nifti_and_dicom(tmp_path, studies):
    """Both studies get every output; the DICOM study's SEG round-trips into `convert dicom-seg` and lies on the same
    voxels as its mask; volumetry equals volumetry() of the written mask; the RAS and LPS copies of one anatomy
    give the same volumes."""
    out = tmp_path / "out"
    results, run = segment([studies / "in"], out, device="cpu")
    assert [r.ok for r in results] == [True, True]
    for key in ("startup_s", "import_torch_monai_s", "load_model_s", "total_s"):
        assert run[key] >= 0
    ras, dcm = results
    for r in results:
        folder = out / r.study.name
        for name in ("volumetry.json", "volumetry.csv", "report.png", "report.pdf", f"{r.study.name}_seg.nii.gz"):
            assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
        mask, affine = read_nifti(folder / f"{r.study.name}_seg.nii.gz")
        assert json.loads((folder / "volumetry.json").read_text())["liver_volume_ml"] == volumetry(mask, affine)[
            "liver_volume_ml"]
        assert r.volumetry["liver_volume_ml"] > 100  # the model finds a liver in the phantom
    assert "seg" not in ras.outputs and {"seg", "sr"} <= set(dcm.outputs)
    assert ras.volumetry["liver_volume_ml"] == pytest.approx(dcm.volumetry["liver_volume_ml"], rel=0.03)
    # the report's volumes are `liverseg evaluate`'s predicted volumes
    from liverseg.evaluation import evaluate_case
    from liverseg.imageio import spacing_of

    truth = generate_phantom(7, shape=(48, 48, 24), orientation="RAS", num_tumors=2)
    mask, affine = read_nifti(ras.outputs["mask"])
    scores = evaluate_case(mask, truth.label, spacing_of(affine))
    assert scores["liver_pred_ml"] == pytest.approx(ras.volumetry["liver_volume_ml"], abs=1e-3)
    assert scores["tumor_pred_ml"] == pytest.approx(ras.volumetry["total_tumor_volume_ml"], abs=1e-3)

    # the SEG: codes, algorithm, and back into a label equal to the mask
    seg = pydicom.dcmread(str(dcm.outputs["seg"]))
    types = {int(s.SegmentNumber): s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence}
    assert types[1] == "10200004" and all(s.SegmentAlgorithmType == "AUTOMATIC" for s in seg.SegmentSequence)
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName.startswith(
        "liver_ct_seg")
    convert_dicom_seg(studies / "in" / "patient_b" / "CT", dcm.outputs["seg"], tmp_path / "back", case_id="b")
    back, back_affine = read_nifti(tmp_path / "back" / "labelsTr" / "b.nii.gz")
    mask, affine = read_nifti(dcm.outputs["mask"])
    np.testing.assert_allclose(back_affine, affine, atol=1e-4)
    np.testing.assert_array_equal(back, mask)
    sr = pydicom.dcmread(str(dcm.outputs["sr"]))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    with open(out / "summary.csv") as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["ok", "ok"]


@pytest.mark.slow
def test_cli_keep_going_and_exit_codes(tmp_path, studies, capsys):
    good = str(studies / "in" / "ct_ras.nii.gz")
    bad = str(studies / "broken" / "bad.nii.gz")
    code = main(["segment", bad, good, "--out", str(tmp_path / "a"), "--keep-going", "--no-progress",
                 "--no-report", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 1
    assert f"failed: {bad}: not a readable NIfTI file" in printed and "time: start-up to first image read" in printed
    assert (tmp_path / "a" / "ct_ras" / "ct_ras_seg.nii.gz").is_file()
    # without --keep-going the first failure stops the run with a one-line error naming the file (exit 2)
    code = main(["segment", bad, good, "--out", str(tmp_path / "b"), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].startswith(f"error: {bad}: not a readable NIfTI file")
    assert not (tmp_path / "b" / "ct_ras").exists()


def test_bad_device_is_a_one_line_error(tmp_path, studies, capsys):
    code = main(["segment", str(studies / "in" / "ct_ras.nii.gz"), "--out", str(tmp_path / "o"), "--no-progress",
                 "--device", "tpu"])
    assert code == 2 and "unknown device" in capsys.readouterr().err


def test_no_torch_before_the_first_image(tmp_path, studies):
    """Parsing the command line, finding and reading the studies import neither torch nor MONAI."""
    code = (
        "import sys; from liverseg.cli import build_parser; from liverseg.segment import discover_studies, load_study;"
        f"build_parser(); [load_study(s) for s in discover_studies([{str(studies / 'in')!r}])];"
        "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_mask_written_on_the_input_grid(tmp_path, studies, monkeypatch):
    """With a stand-in model (label = a box), the mask NIfTI carries the input's affine and voxel order exactly."""
    from liverseg import segment as seg_module

    class Box:
        info = {"name": "liver_ct_seg", "version": "test", "variant": "none"}
        timings: dict = {}

        def __init__(self, *a, **k):
            pass

        def __call__(self, array, affine, name=""):
            label = np.zeros(array.shape, np.uint8)
            label[10:30, 12:30, 5:15] = 1
            label[15:20, 15:20, 8:10] = 2
            return label, {}

    monkeypatch.setattr(seg_module, "BundleSegmenter", Box)
    results, _ = segment([studies / "in"], tmp_path / "out", report=False)
    for r in results:
        img = nib.load(str(r.outputs["mask"]))
        source = nib.load(str(studies / "in" / "ct_ras.nii.gz")) if r.study.kind == "nifti" else None
        if source is not None:
            np.testing.assert_allclose(img.affine, source.affine, atol=1e-5)
        assert int((np.asarray(img.dataobj) == 2).sum()) == 50
        assert r.volumetry["num_tumors"] == 1


class _StubDICOMweb:
    """dicomweb-client's retrieve calls, answered from a folder; records the media types asked for."""

    def __init__(self, folder: Path):
        self.folder, self.asked = folder, []

    def retrieve_study(self, study_uid, media_types=None):
        self.asked.append(media_types)
        return [pydicom.dcmread(str(f)) for f in sorted(self.folder.iterdir())]

    retrieve_series = None


def test_dicomweb_study_url(tmp_path, studies, monkeypatch):
    from liverseg import segment as seg_module

    folder = studies / "in" / "patient_b" / "CT"
    stub = _StubDICOMweb(folder)
    monkeypatch.setattr(seg_module, "dicomweb_client", lambda base: stub)
    study_uid = pydicom.dcmread(str(next(folder.iterdir())), stop_before_pixels=True).StudyInstanceUID
    url = f"http://pacs.example/dicom-web/studies/{study_uid}"
    [study] = discover_studies([url])
    assert (study.kind, study.name, study.source) == ("dicomweb", study_uid, url)
    loaded = seg_module.load_study(study)
    assert stub.asked == [(("application/dicom", "*"),)]
    ref = seg_module.load_study(discover_studies([folder])[0])
    np.testing.assert_array_equal(loaded.array, ref.array)
    np.testing.assert_allclose(loaded.affine, ref.affine)
    with pytest.raises(InputError, match="not a DICOMweb study URL"):
        discover_studies(["http://pacs.example/dicom-web/patients/7"])
