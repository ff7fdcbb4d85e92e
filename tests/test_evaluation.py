"""Tests for liverseg.evaluation: metrics on small hand-built label volumes whose answers are known."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

import liverseg.cli
from liverseg.errors import InputError
from liverseg.evaluation import (
    _size_bin,
    detection_scores,
    equivalent_diameter_mm,
    evaluate_case,
    evaluate_folder,
    match_cases,
    register_cli,
    size_bin_names,
    summarize,
)
from liverseg.imageio import write_nifti

SHAPE = (40, 40, 20)
SPACING = (1.5, 1.5, 3.0)
VOXEL_ML = 1.5 * 1.5 * 3.0 / 1000.0
LIVER = (slice(4, 36), slice(4, 36), slice(2, 18))
# Lesions (label 2, inside the liver, not touching each other) and their equivalent-sphere diameter bin at SPACING:
# small 3x3x2 = 18 voxels = 121.5 mm^3 -> 6.1 mm; medium 8x8x4 = 256 voxels -> 14.9 mm; large 14x14x7 -> 26.1 mm.
LESIONS = {
    "small": ((slice(8, 11), slice(8, 11), slice(5, 7)), "<10mm"),
    "medium": ((slice(20, 28), slice(20, 28), slice(8, 12)), "10-20mm"),
    "large": ((slice(5, 19), slice(22, 36), slice(9, 16)), ">=20mm"),
}
FP_SPOT = (slice(30, 33), slice(8, 11), slice(4, 6))  # inside the liver, away from every lesion above


def make_label(lesions: tuple[str, ...] = ()) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[LIVER] = 1
    for name in lesions:
        label[LESIONS[name][0]] = 2
    return label


def make_affine(spacing: tuple[float, float, float] = SPACING, offset: float = 0.0) -> np.ndarray:
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS-like storage, as converted DICOM often is
    aff[:3, 3] = (30.0 + offset, 25.0, -100.0)
    return aff


# ------------------------------------------------------------------------------------------------------------------
# evaluate_case
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lesions", [(), ("small",), ("small", "medium", "large")])
def test_perfect_prediction(lesions: tuple[str, ...]) -> None:
    ref = make_label(lesions)
    r = evaluate_case(ref.copy(), ref, SPACING)
    assert r["liver_dice"] == pytest.approx(1.0)
    assert r["liver_hd95_mm"] == 0.0 and r["liver_assd_mm"] == 0.0
    assert r["liver_vol_err_ml"] == 0.0 and r["liver_vol_err_pct"] == 0.0
    assert r["liver_ref_ml"] == pytest.approx(32 * 32 * 16 * VOXEL_ML)
    assert r["tumor_dice"] == pytest.approx(1.0)  # also when there is no tumor on either side (convention)
    assert r["lesion_recall"] == 1.0 and r["lesion_precision"] == 1.0 and r["lesion_f1"] == 1.0
    assert r["lesion_fp"] == 0 and r["lesion_fn"] == 0 and r["lesion_tp"] == len(lesions)
    assert not r["failure"]
    assert sorted(les["size_bin"] for les in r["lesions"]) == sorted(LESIONS[n][1] for n in lesions)
    if lesions:
        assert r["tumor_hd95_mm"] == 0.0
    else:
        assert math.isnan(r["tumor_hd95_mm"])
        assert any("no tumor in reference nor prediction" in n for n in r["notes"])


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("coarse_axis", [0, 1, 2])
@pytest.mark.parametrize("shift_axis", [0, 1, 2])
def test_shift_gives_hd95_of_shift_times_spacing(shift_axis: int, coarse_axis: int, k: int) -> None:
    """A one-voxel-thick plate shifted by k voxels across itself: every surface distance is k * spacing[axis]."""
    spacing = [1.5, 1.5, 1.5]
    spacing[coarse_axis] = 3.0  # anisotropic, the coarse axis taking each position in turn
    ref = np.zeros(SHAPE, np.uint8)
    index = [slice(5, 15), slice(5, 15), slice(5, 15)]
    index[shift_axis] = slice(6, 7)
    ref[tuple(index)] = 1
    pred = np.roll(ref, k, axis=shift_axis)
    r = evaluate_case(pred, ref, tuple(spacing))
    expected = k * spacing[shift_axis]
    assert r["liver_hd95_mm"] == pytest.approx(expected)
    assert r["liver_assd_mm"] == pytest.approx(expected)
    assert r["liver_dice"] == 0.0


@pytest.mark.parametrize(
    "present, missed",
    [(("small", "medium"), "small"), (("small", "medium"), "medium"), (("medium", "large"), "large")],
)
def test_missed_lesion(present: tuple[str, str], missed: str) -> None:
    ref = make_label(present)
    pred = make_label(tuple(n for n in present if n != missed))
    r = evaluate_case(pred, ref, SPACING)
    assert (r["lesion_tp"], r["lesion_fn"], r["lesion_fp"]) == (1, 1, 0)
    assert r["lesion_recall"] == 0.5 and r["lesion_precision"] == 1.0
    assert r["lesion_f1"] == pytest.approx(2 / 3)
    fn = [les for les in r["lesions"] if les["status"] == "FN"]
    assert len(fn) == 1 and fn[0]["size_bin"] == LESIONS[missed][1] and fn[0]["source"] == "reference"
    assert fn[0]["overlap_fraction"] == 0.0
    assert fn[0]["num_voxels"] == int((make_label((missed,)) == 2).sum())


def test_extra_false_positive_lesion() -> None:
    ref = make_label(("medium",))
    pred = make_label(("medium",))
    pred[FP_SPOT] = 2
    r = evaluate_case(pred, ref, SPACING)
    assert (r["lesion_tp"], r["lesion_fn"], r["lesion_fp"]) == (1, 0, 1)
    assert r["lesion_precision"] == 0.5 and r["lesion_recall"] == 1.0
    assert r["lesions_pred"] == 2 and r["lesions_ref"] == 1
    fp = [les for les in r["lesions"] if les["status"] == "FP"]
    assert len(fp) == 1 and fp[0]["source"] == "prediction" and fp[0]["size_bin"] == "<10mm"
    assert r["tumor_vol_err_ml"] == pytest.approx(18 * VOXEL_ML)


def test_partial_overlap_counts_as_detected_and_26_connectivity() -> None:
    ref = make_label(("medium",))
    pred = make_label()
    pred[20, 20, 8] = 2  # one voxel inside the reference lesion is enough (overlap rule)
    pred[29, 29, 13] = 2  # away from the reference lesion: a false positive...
    pred[30, 30, 14] = 2  # ...together with its corner-neighbour (one lesion under 26-connectivity)
    r = evaluate_case(pred, ref, SPACING)
    assert (r["lesion_tp"], r["lesion_fn"], r["lesion_fp"], r["lesions_pred"]) == (1, 0, 1, 2)
    tp = [les for les in r["lesions"] if les["status"] == "TP"][0]
    assert tp["overlap_fraction"] == pytest.approx(1 / 256)


def test_empty_prediction_is_a_failure() -> None:
    ref = make_label(("small", "medium"))
    r = evaluate_case(np.zeros(SHAPE, np.uint8), ref, SPACING)
    assert r["liver_dice"] == 0.0 and r["tumor_dice"] == 0.0
    assert math.isnan(r["liver_hd95_mm"]) and math.isnan(r["liver_assd_mm"])
    assert any("liver HD95/ASSD undefined: prediction has no liver voxel" in n for n in r["notes"])
    assert r["failure"]
    assert r["liver_vol_err_pct"] == -100.0
    assert r["lesion_recall"] == 0.0 and math.isnan(r["lesion_precision"]) and r["lesion_f1"] == 0.0
    s = summarize([dict(r, case="x")])
    assert s["failure"]["count"] == 1 and s["failure"]["rate"] == 1.0 and s["failure"]["cases"] == ["x"]


@pytest.mark.parametrize("failure_dice, failed", [(0.5, False), (0.6, False), (0.7, True), (1.0, True)])
def test_failure_threshold(failure_dice: float, failed: bool) -> None:
    ref = make_label()
    pred = np.zeros(SHAPE, np.uint8)
    pred[4:20, 4:36, 2:18] = 1  # half the liver: Dice = 2 * 0.5 / 1.5 = 2/3
    r = evaluate_case(pred, ref, SPACING, failure_dice=failure_dice)
    assert r["liver_dice"] == pytest.approx(2 / 3)
    assert r["failure"] is failed


def test_global_dice_differs_from_mean_dice() -> None:
    # case A: liver 10x10x10 = 1000 voxels predicted exactly (Dice 1); its 2x2x2 tumor is missed (tumor Dice 0).
    ref_a = np.zeros(SHAPE, np.uint8)
    ref_a[5:15, 5:15, 5:15] = 1
    pred_a = ref_a.copy()
    ref_a[8:10, 8:10, 8:10] = 2
    # case B: liver 2x2x2 = 8 voxels, prediction shifted by one voxel: intersection 4, Dice 0.5; no tumor anywhere.
    ref_b = np.zeros(SHAPE, np.uint8)
    ref_b[5:7, 5:7, 5:7] = 1
    pred_b = np.zeros(SHAPE, np.uint8)
    pred_b[6:8, 5:7, 5:7] = 1
    cases = [evaluate_case(pred_a, ref_a, SPACING), evaluate_case(pred_b, ref_b, SPACING)]
    assert [c["liver_dice"] for c in cases] == pytest.approx([1.0, 0.5])
    assert [c["tumor_dice"] for c in cases] == pytest.approx([0.0, 1.0])  # B: both empty -> 1 by convention
    s = summarize(cases)
    assert s["metrics"]["liver_dice"]["mean"] == pytest.approx(0.75)
    assert s["global_dice"]["liver"] == pytest.approx(2 * (1000 + 4) / (1000 + 1000 + 8 + 8))
    assert s["metrics"]["tumor_dice"]["mean"] == pytest.approx(0.5)
    assert s["global_dice"]["tumor"] == pytest.approx(0.0)  # 2 * 0 / (8 + 0)
    assert s["metrics"]["liver_dice"]["sd"] == pytest.approx(math.sqrt(0.125))
    assert s["num_cases"] == 2 and s["failure"]["count"] == 0


def test_summary_pools_lesions_by_size() -> None:
    a = evaluate_case(make_label(("small",)), make_label(("small", "large")), SPACING)  # large missed
    pred_b = make_label(("medium",))
    pred_b[FP_SPOT] = 2
    b = evaluate_case(pred_b, make_label(("medium",)), SPACING)  # medium found, one small FP
    s = summarize([a, b])
    det = s["lesion_detection"]
    assert (det["overall"]["tp"], det["overall"]["fn"], det["overall"]["fp"]) == (2, 1, 1)
    assert det["overall"]["precision"] == pytest.approx(2 / 3) and det["overall"]["recall"] == pytest.approx(2 / 3)
    assert det["by_size"]["<10mm"]["tp"] == 1 and det["by_size"]["<10mm"]["fp"] == 1
    assert det["by_size"]["<10mm"]["precision"] == 0.5
    assert det["by_size"][">=20mm"]["recall"] == 0.0 and det["by_size"]["10-20mm"]["recall"] == 1.0
    assert s["fp_per_case"] == 0.5


@pytest.mark.parametrize(
    "tp, fn, fp, expected",
    [
        (0, 0, 0, (1.0, 1.0, 1.0)),
        (0, 2, 0, (math.nan, 0.0, 0.0)),
        (0, 0, 3, (0.0, math.nan, 0.0)),
        (1, 1, 1, (0.5, 0.5, 0.5)),
        (3, 1, 0, (1.0, 0.75, 6 / 7)),
    ],
)
def test_detection_scores(tp: int, fn: int, fp: int, expected: tuple[float, float, float]) -> None:
    np.testing.assert_allclose(detection_scores(tp, fn, fp), expected)


@pytest.mark.parametrize(
    "bins, names, diameter, expected",
    [
        ((10, 20), ["<10mm", "10-20mm", ">=20mm"], 10.01, "10-20mm"),
        ((10, 20), ["<10mm", "10-20mm", ">=20mm"], 9.99, "<10mm"),
        ((10, 20), ["<10mm", "10-20mm", ">=20mm"], 25.0, ">=20mm"),
        ((5,), ["<5mm", ">=5mm"], 20.0, ">=5mm"),
    ],
)
def test_size_bins(bins: tuple, names: list[str], diameter: float, expected: str) -> None:
    assert size_bin_names(bins) == names
    # a single-voxel lesion of the volume of a sphere with this diameter
    volume = math.pi / 6 * diameter**3
    assert equivalent_diameter_mm(1, (volume, 1.0, 1.0)) == pytest.approx(diameter)
    spacing = (volume ** (1 / 3),) * 3
    ref = np.zeros((5, 5, 5), np.uint8)
    ref[1:4, 1:4, 1:4] = 1
    ref[2, 2, 2] = 2
    r = evaluate_case(ref, ref, spacing, lesion_size_bins_mm=bins)
    assert r["lesions"][0]["size_bin"] == expected


@pytest.mark.parametrize("diameter, expected", [(9.999, "<10mm"), (10.0, "10-20mm"), (20.0, ">=20mm")])
def test_size_bin_lower_edge_inclusive(diameter: float, expected: str) -> None:
    assert _size_bin(diameter, (10.0, 20.0), size_bin_names((10, 20))) == expected


BAD_CASE_INPUTS = [
    ({"pred": np.zeros((40, 40, 19), np.uint8)}, "differs from reference shape"),
    ({"pred": np.zeros((40, 40), np.uint8)}, "3D label volume"),
    ({"pred": np.full(SHAPE, 3, np.uint8)}, "label values [3]"),
    ({"pred": np.full(SHAPE, 0.5)}, "integer label values"),
    ({"ref": np.full(SHAPE, -1, np.int16)}, "reference holds label values [-1]"),
    ({"spacing": (1.5, 1.5)}, "three positive"),
    ({"spacing": (1.5, 0.0, 3.0)}, "three positive"),
    ({"spacing": (1.5, float("nan"), 3.0)}, "three positive"),
    ({"lesion_size_bins_mm": (20, 10)}, "strictly increasing"),
    ({"lesion_size_bins_mm": (0, 10)}, "strictly increasing"),
    ({"lesion_match": "iou"}, "unknown lesion_match 'iou'; available: overlap"),
    ({"failure_dice": 1.5}, "failure_dice must be in [0, 1]"),
]


@pytest.mark.parametrize("change, message", BAD_CASE_INPUTS)
def test_evaluate_case_rejects_bad_input(change: dict, message: str) -> None:
    args = {"pred": make_label(), "ref": make_label(), "spacing": SPACING, **change}
    with pytest.raises(ValueError) as e:
        evaluate_case(args.pop("pred"), args.pop("ref"), args.pop("spacing"), **args)
    assert message in str(e.value)


# ------------------------------------------------------------------------------------------------------------------
# evaluate_folder and the command line
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """labelsTs with c1..c4 and predictions: c1 perfect (``_0000_seg`` name, affine off by 5e-4 mm: accepted),
    c2 misses its small lesion (plain name, in a sub-folder), c3 on a grid shifted by 0.5 mm, c4 has no prediction,
    ``extra`` has no reference."""
    ref_dir, pred_dir = tmp_path / "Dataset900_X" / "labelsTs", tmp_path / "pred"
    for case, lesions in (("c1", ("medium",)), ("c2", ("small", "medium")), ("c3", ()), ("c4", ())):
        write_nifti(ref_dir / f"{case}.nii.gz", make_label(lesions), make_affine(), np.uint8)
    write_nifti(pred_dir / "c1_0000_seg.nii.gz", make_label(("medium",)), make_affine(offset=5e-4), np.uint8)
    write_nifti(pred_dir / "sub" / "c2.nii.gz", make_label(("medium",)), make_affine(), np.uint8)
    write_nifti(pred_dir / "c3_0000_seg.nii.gz", make_label(), make_affine(offset=0.5), np.uint8)
    write_nifti(pred_dir / "extra.nii.gz", make_label(), make_affine(), np.uint8)
    return pred_dir, ref_dir


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_evaluate_folder_writes_everything(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred_dir, ref_dir = folders
    out = tmp_path / "eval"
    s = evaluate_folder(pred_dir, ref_dir.parent, out_dir=out)  # dataset root: its labelsTs is used
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics_per_case.csv",
        "metrics_per_lesion.csv",
        "provenance.json",
        "summary.json",
        "summary.md",
    ]
    assert s["num_cases"] == 2 and s["num_cases_matched"] == 3
    assert s["missing_predictions"] == ["c4"]
    assert s["unmatched_predictions"] == ["extra.nii.gz"]
    assert [e["case"] for e in s["errors"]] == ["c3"]
    err = s["errors"][0]["error"]
    assert "different grids" in err and "c3_0000_seg.nii.gz" in err and str(ref_dir / "c3.nii.gz") in err

    rows = {r["case"]: r for r in _read_csv(out / "metrics_per_case.csv")}
    assert set(rows) == {"c1", "c2", "c3"}
    assert rows["c1"]["status"] == "ok" and rows["c1"]["pred_file"].endswith("c1_0000_seg.nii.gz")
    assert float(rows["c1"]["liver_dice"]) == 1.0
    assert rows["c2"]["lesion_recall"] == "0.5" and rows["c2"]["pred_file"].endswith("sub/c2.nii.gz")
    assert float(rows["c2"]["liver_ref_ml"]) == pytest.approx(32 * 32 * 16 * VOXEL_ML)  # spacing from the affine
    assert rows["c3"]["status"] == "error" and rows["c3"]["liver_dice"] == ""
    lesions = _read_csv(out / "metrics_per_lesion.csv")
    assert sorted((r["case"], r["status"], r["size_bin"]) for r in lesions) == [
        ("c1", "TP", "10-20mm"),
        ("c2", "FN", "<10mm"),
        ("c2", "TP", "10-20mm"),
    ]

    on_disk = json.loads((out / "summary.json").read_text())  # strict JSON: NaN written as null
    assert on_disk["global_dice"]["liver"] == 1.0
    assert on_disk["lesion_detection"]["overall"]["recall"] == pytest.approx(2 / 3)
    assert on_disk["metrics"]["liver_dice"]["sd"] == 0.0 and on_disk["metrics"]["tumor_vol_err_pct"]["n"] == 2
    md = (out / "summary.md").read_text()
    assert "| Liver Dice | 1.000 ± 0.000 | 1.000 | 2 |" in md and "Global Dice: liver 1.000" in md
    assert "- c4" in md and "- extra.nii.gz" in md and "c3: " in md
    prov = json.loads((out / "provenance.json").read_text())
    assert set(prov["versions"]) >= {"liverseg", "monai", "numpy", "nibabel"}
    assert prov["inputs"]["cases"]["c1"]["prediction"].endswith("c1_0000_seg.nii.gz")
    assert "evaluate_folder(" in prov["command"]


@pytest.mark.parametrize(
    "pred_array, pred_affine, message",
    [
        (make_label()[:, :, :19], make_affine(), "has shape (40, 40, 19)"),
        (make_label(), make_affine(spacing=(1.5, 1.5, 2.5)), "different grids"),
        (np.full(SHAPE, 7, np.uint8), make_affine(), "label values [7]"),
        (None, None, "not a readable NIfTI file"),
    ],
)
def test_evaluate_folder_reports_bad_case(
    tmp_path: Path, pred_array: np.ndarray | None, pred_affine: np.ndarray | None, message: str
) -> None:
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    for case in ("good", "bad"):
        write_nifti(ref_dir / f"{case}.nii.gz", make_label(), make_affine(), np.uint8)
    write_nifti(pred_dir / "good.nii.gz", make_label(), make_affine(), np.uint8)
    bad = pred_dir / "bad.nii.gz"
    if pred_array is None:
        bad.write_bytes(b"this is not a NIfTI file")
    else:
        write_nifti(bad, pred_array, pred_affine, np.uint8)
    s = evaluate_folder(pred_dir, ref_dir, out_dir=tmp_path / "out")
    assert s["num_cases"] == 1
    assert len(s["errors"]) == 1 and s["errors"][0]["case"] == "bad"
    assert message in s["errors"][0]["error"] and str(bad) in s["errors"][0]["error"]


def test_match_cases_with_explicit_suffix(folders: tuple[Path, Path]) -> None:
    pred_dir, ref_dir = folders
    matched, missing, unmatched, ambiguous = match_cases(pred_dir, ref_dir, pred_suffix="_0000_seg")
    assert sorted(matched) == ["c1", "c3"] and missing == ["c2", "c4"] and not ambiguous
    assert sorted(unmatched) == ["extra.nii.gz", "sub/c2.nii.gz"]


def test_two_predictions_for_one_case_are_reported(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred_dir, ref_dir = folders
    write_nifti(pred_dir / "c1.nii.gz", make_label(), make_affine(), np.uint8)
    s = evaluate_folder(pred_dir, ref_dir, out_dir=tmp_path / "out")
    err = {e["case"]: e["error"] for e in s["errors"]}
    assert "several predictions" in err["c1"] and "c1_0000_seg.nii.gz" in err["c1"]


@pytest.mark.parametrize(
    "which, message",
    [("pred", "prediction folder not found"), ("ref", "reference folder not found"), ("none", "no prediction matches")],
)
def test_evaluate_folder_bad_folders(folders: tuple[Path, Path], tmp_path: Path, which: str, message: str) -> None:
    pred_dir, ref_dir = folders
    if which == "pred":
        pred_dir = tmp_path / "missing"
    elif which == "ref":
        ref_dir = tmp_path / "missing"
    else:
        pred_dir = tmp_path / "empty"
        pred_dir.mkdir()
    with pytest.raises(InputError) as e:
        evaluate_folder(pred_dir, ref_dir, out_dir=tmp_path / "out")
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("clean, code", [(True, 0), (False, 1)])
def test_cli_exit_codes(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, clean: bool, code: int
) -> None:
    pred_dir, ref_dir = folders
    if clean:  # keep only c1 and c2, which evaluate without problems
        for name in ("c3_0000_seg.nii.gz", "extra.nii.gz"):
            (pred_dir / name).unlink()
        for name in ("c3.nii.gz", "c4.nii.gz"):
            (ref_dir / name).unlink()
    parser = argparse.ArgumentParser(prog="liverseg")
    register_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli_out"
    args = parser.parse_args(["evaluate", str(pred_dir), str(ref_dir), "--out", str(out), "--failure-dice", "0.9"])
    assert args.func(args) == code
    printed = capsys.readouterr().out
    assert "| Liver Dice |" in printed and "Failures (liver Dice < 0.9): 0 of 2" in printed
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["command"].startswith("liverseg evaluate ") and prov["parameters"]["failure_dice"] == 0.9


@pytest.mark.parametrize(
    "argv_tail, code, message",
    [
        (["--failure-dice", "2"], 2, "failure_dice must be in [0, 1]"),
        (["--size-bins", "10,x"], 2, "--size-bins must be comma-separated numbers"),
    ],
)
def test_cli_bad_input_exit_code_2(
    folders: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    argv_tail: list[str],
    code: int,
    message: str,
) -> None:
    monkeypatch.setattr(liverseg.cli, "COMMAND_MODULES", ("liverseg.evaluation",))
    pred_dir, ref_dir = folders
    argv = ["evaluate", str(pred_dir), str(ref_dir), "--out", str(tmp_path / "o"), *argv_tail]
    assert liverseg.cli.main(argv) == code
    assert message in capsys.readouterr().err


def test_cli_missing_folder_exit_code_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(liverseg.cli, "COMMAND_MODULES", ("liverseg.evaluation",))
    missing = tmp_path / "nope"
    assert liverseg.cli.main(["evaluate", str(missing), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"{missing}: prediction folder not found" in capsys.readouterr().err
