"""Tests for liverseg.preview: the four-panel preprocessing picture of one case."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from monai.transforms import HistogramNormalize, ScaleIntensityRange

import liverseg.cli
from liverseg import LABELS
from liverseg.cli import main
from liverseg.dataset import write_case
from liverseg.errors import InputError
from liverseg.imageio import write_nifti
from liverseg.preview import DPI, FIGSIZE, axial_slice_to_show, compute_preview, find_case, render_preview

SHAPE = (32, 28, 12)
SPACING = (0.8, 0.9, 2.5)
LIVER_SLICE = 8  # the liver is centred on slice 8, away from the middle slice (6)


def make_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU-like CT in RAS: body, a liver on the patient's right (high i), anterior to the centre, a tumor in it."""
    rng = np.random.default_rng(3)
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    image = np.full(SHAPE, -1000.0)
    image[((i - 16) / 14) ** 2 + ((j - 14) / 12) ** 2 <= 1] = 10.0
    liver = ((i - 22) / 7) ** 2 + ((j - 17) / 6) ** 2 + ((k - LIVER_SLICE) / 3.2) ** 2 <= 1
    tumor = (i - 22) ** 2 + (j - 17) ** 2 + ((k - LIVER_SLICE) * 2) ** 2 <= 5
    image[liver] = 70.0
    image[tumor] = 20.0
    image += rng.normal(0, 10, SHAPE)
    label = np.zeros(SHAPE, np.uint8)
    label[liver] = LABELS["liver"]
    label[tumor] = LABELS["tumor"]
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-12.0, -15.0, 40.0)
    return image, label, affine


def _reoriented(image: np.ndarray, label: np.ndarray, affine: np.ndarray, flips: tuple[int, ...]):
    """The same anatomy stored with the given array axes reversed (affine adjusted to match)."""
    flip = np.eye(4)
    for ax in flips:
        flip[ax, ax] = -1.0
        flip[ax, 3] = SHAPE[ax] - 1
    return np.flip(image, flips), np.flip(label, flips), affine @ flip


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "Dataset901_Preview"
    image, label, affine = make_case()
    write_case(root, "ras", image, affine, label)
    for case_id, flips in (("lps", (0, 1)), ("feet_first", (2,))):
        img, lab, aff = _reoriented(image, label, affine, flips)
        write_case(root, case_id, img, aff, lab)
    write_case(root, "test_only", image, affine, split="Ts")
    return root


def _case(root: Path, case_id: str) -> tuple[Path, Path | None]:
    c = find_case(root, case_id)
    return c.image, c.label


def test_png_is_written_with_expected_size(dataset: Path, tmp_path: Path) -> None:
    image, label = _case(dataset, "ras")
    out = render_preview(image, tmp_path / "sub" / "p.png", label=label)
    assert out == tmp_path / "sub" / "p.png" and out.is_file()
    assert not [p for p in out.parent.iterdir() if p != out]  # no temporary file left behind
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI))
    assert pixels[..., :3].std() > 0.1  # not blank
    assert len(np.unique(pixels[..., 0])) > 50
    # a float volume without label (middle slice, evenly spaced histogram bins) renders too
    float_image = write_nifti(tmp_path / "float.nii.gz", make_case()[0].astype(np.float32), make_case()[2])
    float_png = matplotlib.image.imread(render_preview(float_image, tmp_path / "f.png", window_width=400))
    assert float_png.shape == pixels.shape and float_png[..., :3].std() > 0.1


def test_max_liver_slice_is_chosen(dataset: Path, tmp_path: Path) -> None:
    image, label = _case(dataset, "ras")
    data = compute_preview(image, label=label)
    assert data.slice_index == LIVER_SLICE
    assert axial_slice_to_show(make_case()[1], SHAPE[2]) == LIVER_SLICE
    assert axial_slice_to_show(None, SHAPE[2]) == SHAPE[2] // 2
    assert axial_slice_to_show(np.zeros(SHAPE, np.uint8), SHAPE[2]) == SHAPE[2] // 2
    assert compute_preview(image).slice_index == SHAPE[2] // 2  # no label: middle slice
    # the rendered picture is the same as when asking for that slice explicitly, and differs from another slice
    auto = matplotlib.image.imread(render_preview(image, tmp_path / "auto.png", label=label))
    explicit = matplotlib.image.imread(render_preview(image, tmp_path / "k.png", label=label, slice_index=LIVER_SLICE))
    other = matplotlib.image.imread(render_preview(image, tmp_path / "o.png", label=label, slice_index=LIVER_SLICE - 3))
    # the title differs ("most liver" vs "chosen"); the panels below it must be identical
    body = slice(60, None)
    np.testing.assert_array_equal(auto[body], explicit[body])
    assert not np.array_equal(auto[body], other[body])


def test_panels_use_monai_window_and_equalization(dataset: Path) -> None:
    image, label = _case(dataset, "ras")
    data = compute_preview(image, label=label, window_center=40, window_width=400, num_bins=64)
    assert data.window == (-160.0, 240.0)
    assert data.windowed.min() >= 0 and data.windowed.max() <= 1
    image_arr, label_arr, _ = make_case()
    hu = np.rint(image_arr).astype(np.int16).astype(np.float32)  # stored as int16 HU
    expected_win = np.asarray(ScaleIntensityRange(-160, 240, 0.0, 1.0, clip=True)(hu[None]))
    expected_eq = np.asarray(HistogramNormalize(num_bins=64, min=0, max=1)(expected_win))[0]
    np.testing.assert_allclose(data.windowed, expected_win[0][:, :, LIVER_SLICE].T[::-1, ::-1], atol=1e-6)
    np.testing.assert_allclose(data.equalized, expected_eq[:, :, LIVER_SLICE].T[::-1, ::-1], atol=1e-5)
    assert np.abs(data.equalized - data.windowed).mean() > 0.05  # equalization visibly changes the picture
    np.testing.assert_array_equal(data.hu, hu[:, :, LIVER_SLICE].T[::-1, ::-1])
    assert data.aspect == pytest.approx(SPACING[1] / SPACING[0])


def test_radiological_display_orientation(dataset: Path) -> None:
    """Patient's right (the liver) on the image's left, anterior up, whatever the storage orientation."""
    image, label = _case(dataset, "ras")
    ras = compute_preview(image, label=label)
    rows, cols = np.nonzero(ras.label > 0)
    assert cols.mean() < ras.label.shape[1] / 2  # liver on the left of the picture
    assert rows.mean() < ras.label.shape[0] / 2  # liver anterior to the centre: upper half
    for case_id, file_slice in (("lps", LIVER_SLICE), ("feet_first", SHAPE[2] - 1 - LIVER_SLICE)):
        img, lab = _case(dataset, case_id)
        other = compute_preview(img, label=lab)
        assert other.slice_index == file_slice
        np.testing.assert_array_equal(other.label, ras.label)
        np.testing.assert_array_equal(other.hu, ras.hu)
        # an explicit slice is a file index
        np.testing.assert_array_equal(compute_preview(img, slice_index=file_slice).hu, ras.hu)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"window_width": 0.0}, "window width"),
        ({"window_width": -10.0}, "window width"),
        ({"window_width": float("nan")}, "window width"),
        ({"window_center": float("inf")}, "window center"),
        ({"slice_index": SHAPE[2]}, r"slice 12 out of range: the volume has 12 axial slices \(0..11\)"),
        ({"slice_index": -1}, "out of range"),
        ({"num_bins": 1}, "num_bins"),
    ],
)
def test_bad_arguments_raise(dataset: Path, tmp_path: Path, kwargs: dict, match: str) -> None:
    image, label = _case(dataset, "ras")
    with pytest.raises(InputError, match=match):
        render_preview(image, tmp_path / "x.png", label=label, **kwargs)
    assert not (tmp_path / "x.png").exists()


def test_bad_files_raise(dataset: Path, tmp_path: Path) -> None:
    image, label = _case(dataset, "ras")
    with pytest.raises(InputError, match="file not found"):
        render_preview(tmp_path / "missing.nii.gz", tmp_path / "x.png")
    small = write_nifti(tmp_path / "small.nii.gz", np.zeros((32, 28, 5), np.uint8), make_case()[2])
    with pytest.raises(InputError, match=r"label shape \(32, 28, 5\) differs"):
        render_preview(image, tmp_path / "x.png", label=small)
    shifted_affine = make_case()[2]
    shifted_affine[0, 3] += 4.0
    shifted = write_nifti(tmp_path / "shifted.nii.gz", make_case()[1], shifted_affine)
    with pytest.raises(InputError, match="label affine differs"):
        render_preview(image, tmp_path / "x.png", label=shifted)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="not a readable NIfTI"):
        render_preview(corrupt, tmp_path / "x.png")


def test_find_case(dataset: Path, tmp_path: Path) -> None:
    assert find_case(dataset, "lps").label is not None
    test_case = find_case(dataset, "test_only")
    assert test_case.split == "Ts" and test_case.label is None
    with pytest.raises(InputError, match="case 'nope' not found in imagesTr/ or imagesTs/; available: feet_first, lps"):
        find_case(dataset, "nope")
    with pytest.raises(InputError, match="invalid case id"):
        find_case(dataset, "../x")
    with pytest.raises(InputError, match="no image"):
        find_case(tmp_path, "x")
    with pytest.raises(InputError, match="dataset folder not found"):
        find_case(tmp_path / "missing", "x")


def test_cli(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(liverseg.cli, "COMMAND_MODULES", ("liverseg.preview",))  # only this command is under test
    out = tmp_path / "cli.png"
    assert main(["preview", str(dataset), "--case", "lps", "--out", str(out), "--window-width", "400"]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    image, label = _case(dataset, "ras")
    out2 = tmp_path / "cli2.png"
    assert main(["preview", "--image", str(image), "--label", str(label), "--out", str(out2), "--slice", "3"]) == 0
    assert out2.is_file()
    assert main(["preview", str(dataset), "--case", "nope", "--out", str(out)]) == 2
    assert main(["preview", "--image", str(image), "--out", str(out), "--window-width", "0"]) == 2
    assert main(["preview", "--image", str(image), "--out", str(out), "--slice", "99"]) == 2
    for argv in (
        [str(dataset), "--image", str(image)],  # both sources
        [str(dataset)],  # ROOT without --case
        ["--case", "ras"],  # --case without ROOT
        [],  # nothing
    ):
        with pytest.raises(SystemExit) as exc:
            main(["preview", *argv, "--out", str(out)])
        assert exc.value.code == 2
