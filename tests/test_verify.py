"""Tests for liverseg.verify: each kind of broken dataset is reported, and only that."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
import pytest

import liverseg.cli
from liverseg import LABELS
from liverseg.cli import main
from liverseg.dataset import case_paths, write_case, write_dataset_json
from liverseg.errors import DatasetProblems, InputError
from liverseg.imageio import read_nifti, write_nifti
from liverseg.verify import inspect_dataset, verify_dataset, verify_or_raise

SHAPE = (32, 32, 12)
SPACING = (0.8, 0.8, 2.5)
VOXEL_ML = float(np.prod(SPACING)) / 1000.0


def make_affine(spacing: tuple[float, float, float] = SPACING, flip: bool = False) -> np.ndarray:
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = (-12.8, -20.0, 30.0)
    if flip:  # LPS-stored: first two axes point left and posterior
        aff = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
    return aff


def make_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """HU-like CT: air around a soft-tissue body, a liver ellipsoid and a tumor sphere inside it."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    image = np.full(SHAPE, -1000.0)
    body = ((i - 16) / 14) ** 2 + ((j - 16) / 12) ** 2 <= 1
    image[body] = 20.0
    liver = ((i - 14) / 9) ** 2 + ((j - 15) / 7) ** 2 + ((k - 6) / 4.5) ** 2 <= 1
    tumor = (i - 12) ** 2 + (j - 15) ** 2 + ((k - 6) * 2) ** 2 <= 6
    image[liver] = 60.0
    image[tumor] = 25.0
    image += rng.normal(0, 8, SHAPE)
    label = np.zeros(SHAPE, np.uint8)
    label[liver] = LABELS["liver"]
    label[tumor] = LABELS["tumor"]
    return image, label


CASES = (("Tr", "case_000"), ("Tr", "case_001"), ("Ts", "case_100"))


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "Dataset900_Tiny"
    for n, (split, case_id) in enumerate(CASES):
        image, label = make_case(n)
        write_case(root, case_id, image, make_affine(), label, split=split)
    write_dataset_json(root, "Tiny", "synthetic test dataset")
    return root


def _rewrite_label(root: Path, case_id: str, label: np.ndarray, affine: np.ndarray | None = None) -> None:
    path = case_paths(root, case_id).label
    old, old_affine = read_nifti(path)
    write_nifti(path, label, old_affine if affine is None else affine)


def _edit_json(root: Path, **changes: Any) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    (root / "dataset.json").write_text(json.dumps(meta))


def _nan_affine(root: Path) -> None:
    path = case_paths(root, "case_001").image
    image, affine = read_nifti(path)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(image.shape)
    hdr.set_data_dtype(np.int16)
    bad = affine.copy()
    bad[0, 0] = np.nan
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = bad[0], bad[1], bad[2]
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    nib.save(nib.Nifti1Image(image, None, hdr), str(path))


def _flip_case(root: Path) -> None:
    """Store case_001 LPS-oriented (same anatomy): the data flipped along i and j, the affine to match."""
    image, label = make_case(1)
    aff = make_affine()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = SHAPE[0] - 1, SHAPE[1] - 1
    write_case(root, "case_001", image[::-1, ::-1], aff @ flip, label[::-1, ::-1])


def _label_with_value(root: Path, value: float, dtype: type) -> None:
    _, label = make_case(0)
    label = label.astype(dtype)
    label[0:2, 0:2, 0] = value
    _rewrite_label(root, "case_000", label)


def _tumor_outside(root: Path) -> None:
    _, label = make_case(0)
    label[28:31, 28:31, 0:2] = LABELS["tumor"]
    _rewrite_label(root, "case_000", label)


def _thick_slices(root: Path) -> None:
    image, label = make_case(1)
    write_case(root, "case_001", image, make_affine((0.8, 0.8, 10.0)), label)


def _not_hu(root: Path) -> None:
    image, _ = make_case(1)
    normalized = (image - image.min()) / (image.max() - image.min())
    write_nifti(case_paths(root, "case_001").image, normalized.astype(np.float32), make_affine())


def _translation(shift: tuple[float, float, float]) -> np.ndarray:
    out = np.zeros((4, 4))
    out[:3, 3] = shift
    return out


def _leak_to_test(root: Path) -> None:
    image, label = make_case(0)
    write_case(root, "case_000", image, make_affine(), label, split="Ts")


def _orphan_label(root: Path) -> None:
    case_paths(root, "case_001").image.unlink()
    write_dataset_json(root, "Tiny")


# (name, how to break the good dataset -> kwargs for verify, text that the single problem must contain)
BREAKAGES: list[tuple[str, Callable[[Path], Any], str]] = [
    ("missing dataset.json", lambda r: (r / "dataset.json").unlink(), "dataset.json: missing"),
    ("unparsable dataset.json", lambda r: (r / "dataset.json").write_text("{not json"), "not readable JSON"),
    ("missing key", lambda r: _drop_key(r, "channel_names"), "missing key"),
    (
        "wrong labels",
        lambda r: _edit_json(r, labels={"background": 0, "liver": 1, "lesion": 2}),
        "'tumor' missing (expected 2); unexpected label 'lesion'",
    ),
    ("numTraining mismatch", lambda r: _edit_json(r, numTraining=5), "numTraining is 5 but imagesTr holds 2"),
    ("orphan image", lambda r: case_paths(r, "case_001").label.unlink(), "case_001_0000.nii.gz: no label"),
    ("orphan label", _orphan_label, "labelsTr/case_001.nii.gz: no image"),
    ("orphan test label", lambda r: case_paths(r, "case_100", "Ts").image.unlink(), "labelsTs/case_100.nii.gz: no"),
    (
        "corrupt NIfTI",
        lambda r: case_paths(r, "case_001").image.write_bytes(b"\x1f\x8b garbage" * 10),
        "imagesTr/case_001_0000.nii.gz: not a readable NIfTI",
    ),
    (
        "4D image",
        lambda r: write_nifti(case_paths(r, "case_001").image, np.zeros((*SHAPE, 2), np.int16) - 1000, make_affine()),
        "expected a 3D volume",
    ),
    (
        "shape mismatch",
        lambda r: _rewrite_label(r, "case_000", make_case(0)[1][:, :, :10]),
        "shape (32, 32, 10) differs from image shape (32, 32, 12)",
    ),
    (
        "affine mismatch",
        lambda r: _rewrite_label(r, "case_000", make_case(0)[1], make_affine() + _translation((5.0, 0.0, 0.0))),
        "affine differs from the image's by up to 5 mm",
    ),
    ("label value 3", lambda r: _label_with_value(r, 3, np.uint8), "unexpected label value(s) 3 (4 voxels)"),
    ("negative label value", lambda r: _label_with_value(r, -1, np.int16), "unexpected label value(s) -1 (4 voxels)"),
    ("non-integer label", lambda r: _label_with_value(r, 0.5, np.float32), "4 voxel(s) have non-integer values"),
    ("spacing too large", _thick_slices, "spacing (0.8, 0.8, 10) mm is outside (0, 8] mm"),
    ("NaN in affine", _nan_affine, "imagesTr/case_001_0000.nii.gz: affine contains NaN"),
    ("image not in HU", _not_hu, "do not look like Hounsfield units"),
    (
        "label without liver",
        lambda r: _rewrite_label(r, "case_000", np.zeros(SHAPE, np.uint8)),
        "labelsTr/case_000.nii.gz: no liver voxel",
    ),
    ("tumor outside liver", _tumor_outside, "18 of"),
    ("orientation mismatch", lambda r: _flip_case(r) or {"check_orientation": "RAS"}, "orientation LPS, expected RAS"),
    ("case in both splits", _leak_to_test, "both"),
    (
        "extra channel",
        lambda r: (r / "imagesTr" / "case_000_0001.nii.gz").write_bytes(b""),
        "extra channel 0001",
    ),
    ("leftover partial file", lambda r: (r / "labelsTr" / ".case_000.x.part.nii.gz").write_bytes(b""), "partial file"),
]


def _drop_key(root: Path, key: str) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta.pop(key)
    (root / "dataset.json").write_text(json.dumps(meta))


def test_good_dataset_has_no_problem(dataset: Path) -> None:
    assert verify_dataset(dataset) == []
    assert verify_dataset(dataset, check_orientation="ras") == []
    report = verify_or_raise(dataset)
    assert [(c.split, c.case_id) for c in report.cases] == sorted(CASES, key=lambda c: c[0])
    _, label = make_case(0)
    case0 = report.cases[0]
    assert case0.shape == SHAPE and case0.orientation == "RAS"
    assert case0.spacing_mm == pytest.approx(SPACING)
    assert case0.liver_ml == pytest.approx(np.count_nonzero(label) * VOXEL_ML, rel=1e-6)
    assert case0.tumor_ml == pytest.approx(np.count_nonzero(label == 2) * VOXEL_ML, rel=1e-6)
    assert case0.hu_range[0] < -900 and "liver" in case0.line()


@pytest.mark.parametrize("name,breaker,expected", BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_each_breakage_is_reported_alone(dataset: Path, name: str, breaker: Callable, expected: str) -> None:
    result = breaker(dataset)
    kwargs = result if isinstance(result, dict) else {}
    problems = verify_dataset(dataset, **kwargs)
    assert len(problems) == 1, problems
    assert expected in problems[0]
    with pytest.raises(DatasetProblems, match="1 problem"):
        verify_or_raise(dataset, **kwargs)


def test_several_problems_are_all_reported(dataset: Path) -> None:
    _edit_json(dataset, numTraining=7)
    _label_with_value(dataset, 3, np.uint8)
    _thick_slices(dataset)
    case_paths(dataset, "case_100", "Ts").label.write_bytes(b"corrupt")
    problems = verify_dataset(dataset)
    expected = [
        "numTraining is 7",
        "case_000.nii.gz: unexpected label value(s) 3",
        "(0.8, 0.8, 10)",
        "labelsTs/case_100",
    ]
    assert len(problems) == len(expected), problems
    for text in expected:
        assert any(text in p for p in problems), (text, problems)


def test_spacing_limit_is_configurable(dataset: Path) -> None:
    _thick_slices(dataset)
    assert verify_dataset(dataset, max_spacing_mm=12.0) == []
    assert len(verify_dataset(dataset, max_spacing_mm=2.0)) == 3  # every case has 2.5 mm slices or thicker


def test_test_split_without_labels_is_fine(dataset: Path) -> None:
    case_paths(dataset, "case_100", "Ts").label.unlink()
    (dataset / "labelsTs").rmdir()
    report = inspect_dataset(dataset)
    assert report.ok and report.cases[-1].liver_ml is None


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"check_orientation": "RAX"}, ValueError),
        ({"check_orientation": "RRS"}, ValueError),
        ({"check_orientation": "RA"}, ValueError),
        ({"max_spacing_mm": 0.0}, ValueError),
        ({"max_spacing_mm": float("nan")}, ValueError),
    ],
)
def test_bad_arguments_raise(dataset: Path, kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        verify_dataset(dataset, **kwargs)


def test_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset folder not found"):
        verify_dataset(tmp_path / "nope")


def test_empty_folder_reports_layout(tmp_path: Path) -> None:
    problems = verify_dataset(tmp_path)
    assert any("dataset.json: missing" in p for p in problems)
    assert any("imagesTr/: folder missing" in p for p in problems)


def test_cli_exit_codes_and_json(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(liverseg.cli, "COMMAND_MODULES", ("liverseg.verify",))  # only this command is under test
    report_path = tmp_path / "out" / "report.json"
    assert main(["verify", str(dataset), "--json", str(report_path)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "OK: 3 cases checked"
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["cases_checked"] == 3 and report["problems"] == []
    assert report["cases"][0]["orientation"] == "RAS"

    _label_with_value(dataset, 3, np.uint8)
    _edit_json(dataset, numTraining=1)
    assert main(["verify", str(dataset), "--orientation", "LPS", "--json", str(report_path)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("5 problem(s)")  # numTraining, value 3, and 3 cases in RAS instead of LPS
    report = json.loads(report_path.read_text())
    assert not report["ok"] and report["num_problems"] == 5 and report["problems"] == lines[:-1]

    assert main(["verify", str(dataset), "--max-spacing", "1"]) == 1
    assert main(["verify", str(dataset / "missing")]) == 2
    assert main(["verify", str(dataset), "--orientation", "XYZ"]) == 2
