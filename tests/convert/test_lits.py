"""Tests of liverseg.convert.lits on small synthetic LiTS and MSD Task03_Liver layouts."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from liverseg.convert import lits
from liverseg.convert.lits import convert_lits
from liverseg.dataset import read_dataset_json
from liverseg.errors import DatasetProblems, InputError
from liverseg.imageio import read_nifti

SHAPE = (20, 18, 6)
AFFINE = np.array(
    [[-0.8, 0.0, 0.0, 120.0], [0.0, -0.8, 0.0, 95.5], [0.0, 0.0, 2.5, -300.0], [0.0, 0.0, 0.0, 1.0]]
)


def make_case(seed: int, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """HU-like image with a liver blob (1) and a tumor (2) inside it; different per seed."""
    rng = np.random.default_rng(seed)
    image = rng.normal(-50, 20, shape).astype(np.int16)
    ii, jj, kk = np.indices(shape)
    ci, cj = 6 + seed % 5, 7 + seed % 4
    liver = (ii - ci) ** 2 / 25 + (jj - cj) ** 2 / 20 + (kk - 3) ** 2 / 9 < 1
    tumor = (ii - ci) ** 2 + (jj - cj) ** 2 + (kk - 3) ** 2 < 3
    label = np.zeros(shape, np.uint8)
    label[liver] = 1
    label[tumor] = 2
    image[liver] += 110
    return image, label


def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def make_lits(
    root: Path, train: dict[int, str], test: tuple[int, ...] = (), ext: str = ".nii"
) -> dict[int, np.ndarray]:
    """LiTS layout: ``train`` maps case number -> sub-folder. Returns the labels written."""
    labels = {}
    for n, folder in train.items():
        image, label = make_case(n)
        save(root / folder / f"volume-{n}{ext}", image)
        save(root / folder / f"segmentation-{n}{ext}", label)
        labels[n] = label
    for n in test:
        save(root / "Test Batch" / f"test-volume-{n}{ext}", make_case(100 + n)[0])
    return labels


def make_msd(root: Path, train: tuple[int, ...], test: tuple[int, ...] = ()) -> dict[int, np.ndarray]:
    labels = {}
    for n in train:
        image, label = make_case(n)
        save(root / "imagesTr" / f"liver_{n}.nii.gz", image)
        save(root / "labelsTr" / f"liver_{n}.nii.gz", label)
        labels[n] = label
    for n in test:
        save(root / "imagesTs" / f"liver_{n}.nii.gz", make_case(100 + n)[0])
    # macOS resource forks as in the real MSD tarball: garbage that must be ignored
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / f"._liver_{train[0]}.nii.gz").write_bytes(b"\x00\x05\x16\x07 not a nifti")
    (root / "._dataset.json").write_bytes(b"\x00\x05\x16\x07")
    (root / "dataset.json").write_text('{"name": "Liver", "reference": "LiTS", "licence": "CC-BY-SA 4.0"}')
    return labels


def out_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def check_labels(out: Path, labels: dict[int, np.ndarray]) -> None:
    for n, expected in labels.items():
        got, affine = read_nifti(out / "labelsTr" / f"liver_{n:03d}.nii.gz")
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_allclose(affine, AFFINE, atol=1e-5)
        image, image_affine = read_nifti(out / "imagesTr" / f"liver_{n:03d}_0000.nii.gz")
        np.testing.assert_array_equal(image, make_case(n)[0])
        np.testing.assert_allclose(image_affine, AFFINE, atol=1e-5)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_lits_layout_with_subfolders_and_test_volumes(tmp_path: Path, ext: str) -> None:
    src, out = tmp_path / "LiTS", tmp_path / "Dataset003_Liver"
    train = {0: "Training Batch 1", 3: "Training Batch 1", 28: "Training Batch 2"}
    labels = make_lits(src, train, test=(0, 5), ext=ext)
    ids = convert_lits(src, out)
    assert ids == ["liver_000", "liver_003", "liver_028", "liver_test_000", "liver_test_005"]
    check_labels(out, labels)
    assert out_files(out) == [
        "dataset.json",
        "imagesTr/liver_000_0000.nii.gz",
        "imagesTr/liver_003_0000.nii.gz",
        "imagesTr/liver_028_0000.nii.gz",
        "imagesTs/liver_test_000_0000.nii.gz",
        "imagesTs/liver_test_005_0000.nii.gz",
        "labelsTr/liver_000.nii.gz",
        "labelsTr/liver_003.nii.gz",
        "labelsTr/liver_028.nii.gz",
    ]
    meta = read_dataset_json(out)
    assert meta["numTraining"] == 3 and meta["name"] == "LiTS"
    assert meta["labels"] == {"background": 0, "liver": 1, "tumor": 2}
    assert meta["provenance"]["source_layout"] == lits.LAYOUT_LITS


@pytest.mark.parametrize("nested", [False, True])
def test_msd_layout(tmp_path: Path, nested: bool) -> None:
    root = tmp_path / "Task03_Liver" if nested else tmp_path / "msd"
    labels = make_msd(root, train=(1, 7, 130), test=(132,))
    out = tmp_path / "out"
    ids = convert_lits(tmp_path if nested else root, out, dataset_name="Dataset003_Liver")
    assert ids == ["liver_001", "liver_007", "liver_130", "liver_132"]
    check_labels(out, labels)
    assert (out / "imagesTs" / "liver_132_0000.nii.gz").is_file()
    assert not any(p.name.startswith("._") for p in out.rglob("*"))
    meta = read_dataset_json(out)
    assert meta["numTraining"] == 3 and meta["name"] == "Dataset003_Liver"
    assert meta["licence"] == "CC-BY-SA 4.0" and meta["provenance"]["source_layout"] == lits.LAYOUT_MSD


def test_progress_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_lits(tmp_path / "src", {3: "a", 4: "b"})
    with caplog.at_level(logging.INFO, logger="liverseg.convert.lits"):
        convert_lits(tmp_path / "src", tmp_path / "out")
    assert "[1/2] liver_003" in caplog.text and "[2/2] liver_004" in caplog.text


def test_tiny_affine_difference_is_accepted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src"
    labels = make_lits(src, {2: "."})
    noisy = AFFINE.copy()
    noisy[0, 3] += 2e-5
    noisy[1, 1] += 1e-6
    save(src / "segmentation-2.nii", labels[2], noisy)
    with caplog.at_level(logging.DEBUG, logger="liverseg.convert.lits"):
        assert convert_lits(src, tmp_path / "out") == ["liver_002"]
    assert "float noise" in caplog.text
    _, label_affine = read_nifti(tmp_path / "out" / "labelsTr" / "liver_002.nii.gz")
    _, image_affine = read_nifti(tmp_path / "out" / "imagesTr" / "liver_002_0000.nii.gz")
    np.testing.assert_array_equal(label_affine, image_affine)


def _shape_mismatch(src: Path) -> str:
    save(src / "segmentation-1.nii", np.zeros((20, 18, 5), np.uint8))
    return "shape (20, 18, 5) differs from image"


def _affine_mismatch(src: Path) -> str:
    shifted = AFFINE.copy()
    shifted[2, 3] += 2.5  # one slice off
    save(src / "segmentation-1.nii", make_case(1)[1], shifted)
    return "affine differs from image"


def _label_value_3(src: Path) -> str:
    label = make_case(1)[1]
    label[0, 0, 0] = 3
    save(src / "segmentation-1.nii", label)
    return "unexpected label values 3"


def _label_fractional(src: Path) -> str:
    label = make_case(1)[1].astype(np.float32)
    label[1, 1, 1] = 0.5
    save(src / "segmentation-1.nii", label)
    return "unexpected label values 0.5"


def _orphan_label(src: Path) -> str:
    (src / "volume-1.nii").unlink()
    return "label without image"


def _image_without_label(src: Path) -> str:
    (src / "segmentation-1.nii").unlink()
    return "training image without segmentation"


def _corrupt_gz(src: Path) -> str:
    (src / "volume-1.nii").unlink()
    (src / "volume-1.nii.gz").write_bytes(b"\x1f\x8b\x08garbage bytes, not a gzip stream" * 3)
    return "not a readable NIfTI"


def _duplicate(src: Path) -> str:
    save(src / "copy" / "volume-1.nii.gz", make_case(1)[0])
    return "two files for liver_001"


BAD_CASES = {
    "shape": (_shape_mismatch, "segmentation-1.nii"),
    "affine": (_affine_mismatch, "segmentation-1.nii"),
    "label_value_3": (_label_value_3, "segmentation-1.nii"),
    "label_fractional": (_label_fractional, "segmentation-1.nii"),
    "orphan_label": (_orphan_label, "segmentation-1.nii"),
    "image_without_label": (_image_without_label, "volume-1.nii"),
    "corrupt_gz": (_corrupt_gz, "volume-1.nii.gz"),
    "duplicate": (_duplicate, "volume-1.nii"),
}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_case_raises_and_leaves_nothing(tmp_path: Path, name: str) -> None:
    spoil, file_name = BAD_CASES[name]
    src, out = tmp_path / "src", tmp_path / "out"
    make_lits(src, {0: ".", 1: ".", 2: "."})
    message = spoil(src)
    with pytest.raises(InputError) as err:
        convert_lits(src, out)
    assert file_name in str(err.value) and message in str(err.value)
    # liver_000 was written before the bad case; nothing of liver_001, no temporary files, no dataset.json
    assert out_files(out) == ["imagesTr/liver_000_0000.nii.gz", "labelsTr/liver_000.nii.gz"]


def test_affine_error_states_difference(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_lits(src, {1: "."})
    _affine_mismatch(src)
    with pytest.raises(InputError, match=r"by up to 2\.5 mm \(tolerance 0\.001 mm\)"):
        convert_lits(src, tmp_path / "out")


def test_keep_going_converts_good_and_reports_all_bad(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    labels = make_lits(src, {0: ".", 1: ".", 2: ".", 3: "."})
    _label_value_3(src)  # spoils case 1
    (src / "volume-3.nii").unlink()  # case 3: orphan label
    with pytest.raises(DatasetProblems) as err:
        convert_lits(src, out, keep_going=True)
    problems = err.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("liver_001") and "segmentation-1.nii" in problems[0]
    assert problems[1].startswith("liver_003") and "segmentation-3.nii" in problems[1]
    check_labels(out, {0: labels[0], 2: labels[2]})
    assert read_dataset_json(out)["numTraining"] == 2
    assert not (out / "labelsTr" / "liver_001.nii.gz").exists()


def test_failure_while_writing_leaves_no_half_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import liverseg.dataset

    src, out = tmp_path / "src", tmp_path / "out"
    make_lits(src, {5: "."})
    real_write = liverseg.dataset.write_nifti

    def failing_write(path, array, affine, dtype=None):  # the label write fails after the image was written
        if Path(path).parent.name == "labelsTr":
            raise OSError("disk full")
        return real_write(path, array, affine, dtype)

    monkeypatch.setattr(liverseg.dataset, "write_nifti", failing_write)
    with pytest.raises(OSError, match="disk full"):
        convert_lits(src, out)
    assert out_files(out) == []


@pytest.mark.parametrize(
    "setup",
    [
        lambda p: p.mkdir(),  # empty folder
        lambda p: (p.mkdir(), (p / "scan-1.nii").write_bytes(b"x"), (p / "notes.txt").write_text("x")),
        lambda p: (p.mkdir(), (p / "._volume-1.nii").write_bytes(b"x")),  # only macOS junk
        lambda p: p.write_text("a file, not a folder"),
        lambda p: None,  # missing
    ],
    ids=["empty", "unknown_files", "only_resource_forks", "file", "missing"],
)
def test_unknown_layout_raises(tmp_path: Path, setup) -> None:
    src = tmp_path / "src"
    setup(src)
    with pytest.raises(InputError) as err:
        convert_lits(src, tmp_path / "out")
    assert str(src) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_lits(src, {9: "Training Batch 2"})
    parser = argparse.ArgumentParser()
    lits.register_cli(parser.add_subparsers())
    args = parser.parse_args(["lits", str(src), str(out), "--dataset-name", "Dataset009_X", "--keep-going"])
    assert args.func(args) == 0
    assert read_dataset_json(out)["name"] == "Dataset009_X"
    assert (out / "labelsTr" / "liver_009.nii.gz").is_file()
    assert "MSD Task03_Liver" in parser._subparsers._group_actions[0].choices["lits"].format_help()
