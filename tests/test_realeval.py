"""liverseg.realeval: the real-CT table (issue 14).

Fast tests on tiny synthetic 3D-IRCADb-style patients (DICOM written by the project's writer, LPS-stored) and a
threshold 'network' run through the bundle's real inference config; the real evaluation itself runs when the
shared folder of real patients is present (skipped with the reason otherwise) and guards against regression
versus the figures recorded in the model card (``bundles/liver_ct_seg/docs/real_ct_figures.json``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import liverseg.cli
from liverseg.evaluation import evaluate_case, lesion_counts_by_size
from liverseg.realeval import (
    DEFAULT_TOLERANCE,
    TARGETS,
    Target,
    check_targets,
    compare_with_recorded,
    prepare_dataset,
    real_eval,
    record_figures,
    resolve_source,
    skip_reason,
)
from tests.conftest import BUNDLE

RECORDED = BUNDLE / "docs" / "real_ct_figures.json"
REAL_SOURCE = resolve_source(None)
REAL_SKIP = skip_reason(REAL_SOURCE)

# ------------------------------------------------------------------------------------------------------------------
# metrics on tiny arrays
# ------------------------------------------------------------------------------------------------------------------

SPACING = (1.0, 1.0, 1.0)


def _liver(shape=(40, 40, 30)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[2:38, 2:38, 2:28] = 1
    return lab


# equivalent-sphere diameters at 1 mm voxels: 2x2x2 = 8 mm^3 -> 2.5 mm; 3x3x3 -> 3.7 mm; 16x16x16 -> 19.9 mm;
# 16x16x20 -> 21.4 mm (none touches another)
TINY = (slice(4, 6), slice(4, 6), slice(4, 6))
SMALL = (slice(30, 33), slice(30, 33), slice(4, 7))
MEDIUM = (slice(4, 20), slice(20, 36), slice(10, 26))
LARGE = (slice(22, 38), slice(2, 18), slice(8, 28))


@pytest.mark.parametrize(
    "ref_lesions,pred_lesions,expected",
    [
        # found / missed / false, binned by the reference size (TP, FN) or the predicted size (FP)
        ((TINY, MEDIUM), (MEDIUM,), {"<10mm": (0, 1, 0), "10-20mm": (1, 0, 0), ">=20mm": (0, 0, 0)}),
        ((LARGE,), (LARGE, SMALL), {"<10mm": (0, 0, 1), "10-20mm": (0, 0, 0), ">=20mm": (1, 0, 0)}),
        ((), (SMALL, MEDIUM), {"<10mm": (0, 0, 1), "10-20mm": (0, 0, 1), ">=20mm": (0, 0, 0)}),
        ((TINY, SMALL, MEDIUM, LARGE), (), {"<10mm": (0, 2, 0), "10-20mm": (0, 1, 0), ">=20mm": (0, 1, 0)}),
    ],
)
def test_lesion_detection_by_size_per_case(ref_lesions, pred_lesions, expected):
    ref, pred = _liver(), _liver()
    for b in ref_lesions:
        ref[b] = 2
    for b in pred_lesions:
        pred[b] = 2
    res = evaluate_case(pred, ref, SPACING)
    got = {k: (v["tp"], v["fn"], v["fp"]) for k, v in res["lesion_by_size"].items()}
    assert got == expected
    assert res["lesion_fp"] == sum(v[2] for v in expected.values())
    assert lesion_counts_by_size(res["lesions"]) == res["lesion_by_size"]


def _row(case="a", liver_only=False, **values):
    base = {"liver_dice": 0.95, "tumor_dice": 0.7, "lesion_fp": 0, "liver_vol_err_pct": -3.0, "liver_hd95_mm": 9.0}
    base.update(values)
    if liver_only:
        base.update(tumor_dice=None, lesion_fp=None)
    return {"case": case, "liver_only": liver_only, **base}


@pytest.mark.parametrize(
    "values,missed",
    [
        ({}, set()),
        ({"liver_dice": 0.929}, {"liver_dice"}),
        ({"liver_vol_err_pct": -5.5}, {"liver_vol_err_pct"}),  # absolute value
        ({"liver_vol_err_pct": 5.0, "lesion_fp": 1}, set()),  # the bounds themselves pass
        ({"lesion_fp": 2, "tumor_dice": 0.64}, {"lesion_fp", "tumor_dice"}),
        ({"liver_hd95_mm": float("nan")}, {"liver_hd95_mm"}),  # not computed: missed
    ],
)
def test_targets(values, missed):
    checks = check_targets([_row(**values)])
    assert {c["metric"] for c in checks if not c["passed"]} == missed
    assert len(checks) == len(TARGETS)


def test_liver_only_case_is_not_held_to_tumor_targets():
    checks = check_targets([_row("a"), _row("b", liver_only=True)])
    b = [c for c in checks if c["case"] == "b"]
    assert {c["metric"] for c in b} == {t.metric for t in TARGETS if t.scope == "all"}
    assert all(c["passed"] for c in checks)
    assert not Target("x", ">=", 1.0, "all", "x").passes(None)


def _report(rows, sha="abc"):
    return {"cases": rows, "weights": {"sha256": sha}, "date_utc": "2026-12-03T00:00:00+00:00",
            "bundle_version": "0", "inference": {"overrides": {}}}


def test_record_and_compare(tmp_path):
    rows = [_row("a"), _row("b", liver_only=True, liver_dice=0.9)]
    path = record_figures(_report(rows), tmp_path / "rec.json", note="test")
    recorded = json.loads(path.read_text())
    assert recorded["cases"]["b"]["tumor_dice"] is None and recorded["tolerance"] == DEFAULT_TOLERANCE
    assert compare_with_recorded(_report(rows), recorded) == []
    tol = DEFAULT_TOLERANCE["liver_dice"]
    within = [_row("a", liver_dice=0.95 - tol / 2), _row("b", liver_only=True, liver_dice=0.9)]
    assert compare_with_recorded(_report(within), recorded) == []
    worse = [_row("a", liver_dice=0.95 - 2 * tol, lesion_fp=1), _row("b", liver_only=True, liver_dice=0.9)]
    problems = compare_with_recorded(_report(worse, sha="other"), recorded)
    assert any(p.startswith("a liver_dice") for p in problems) and any(p.startswith("a lesion_fp") for p in problems)
    assert any("weights differ" in p for p in problems)
    assert compare_with_recorded(_report([_row("a")]), recorded) == ["b: recorded but not evaluated"]
    better = [_row("a", liver_dice=0.99, liver_hd95_mm=3.0, liver_vol_err_pct=0.5), _row("b", True, liver_dice=0.97)]
    assert compare_with_recorded(_report(better), recorded) == []


# ------------------------------------------------------------------------------------------------------------------
# skipping, conversion and the whole command on synthetic patients
# ------------------------------------------------------------------------------------------------------------------


def test_absent_source_skips_with_one_line(tmp_path, capsys):
    missing = tmp_path / "nothing-here"
    assert "not found" in skip_reason(missing)
    assert liverseg.cli.main(["real-eval", "--source", str(missing), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("real-eval skipped: ") and str(missing) in out
    assert not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no 3D-IRCADb patient" in skip_reason(empty)
    assert real_eval(empty, tmp_path / "out") is None


def _synthetic_ct(tumors: list[tuple[tuple[int, int, int], int]]) -> tuple[np.ndarray, np.ndarray]:
    """A 64 x 64 x 24 CT (HU): body 40 HU, an ellipsoid liver 110 HU, hypodense (30 HU) spheres; and the liver
    mask (tumors included)."""
    i, j, k = np.indices((64, 64, 24))
    ct = np.full((64, 64, 24), -1000.0)
    ct[((i - 32) / 30.0) ** 2 + ((j - 32) / 26.0) ** 2 <= 1] = 40.0
    liver = ((i - 22) / 13.0) ** 2 + ((j - 30) / 15.0) ** 2 + ((k - 12) / 9.0) ** 2 <= 1
    ct[liver] = 110.0
    for (ci, cj, ck), r in tumors:
        ct[(i - ci) ** 2 + (j - cj) ** 2 + ((k - ck) * 1.6) ** 2 <= r * r] = 30.0
    return ct, liver


@pytest.fixture(scope="module")
def ircadb_source(tmp_path_factory) -> Path:
    """Two small 3D-IRCADb-style patients stored LPS (3 x 3 x 5 mm): 3Dircadb1.1 with two liver tumors, 3Dircadb1.7
    with its only 'tumor' mask outside the liver (as in the real 3Dircadb1.7)."""
    from liverseg.convert.ircadb import write_ircadb_patient

    root = tmp_path_factory.mktemp("ircadb") / "real"
    affine = np.diag([-3.0, -3.0, 5.0, 1.0])
    affine[:3, 3] = (95.0, 120.0, -60.0)
    tumors = [((20, 30, 12), 5), ((28, 36, 9), 2)]
    ct, liver = _synthetic_ct(tumors)
    i, j, k = np.indices(ct.shape)
    tumor = liver & (ct < 80)
    assert ndimage.label(tumor, np.ones((3, 3, 3)))[1] == 2
    write_ircadb_patient(root / "3Dircadb1.1", ct, affine, {"liver": liver, "livertumor01": tumor}, patient_id="p1")
    ct7, liver7 = _synthetic_ct([])
    outside = (np.abs(i - 50) <= 3) & (np.abs(j - 30) <= 3) & (np.abs(k - 12) <= 2)
    assert not (outside & ndimage.binary_dilation(liver7, iterations=2)).any()
    write_ircadb_patient(root / "3Dircadb1.7", ct7, affine, {"liver": liver7, "tumor": outside}, patient_id="p7")
    label1 = np.where(tumor, 2, np.where(liver, 1, 0)).astype(np.uint8)
    np.savez(root.parent / "truth.npz", label1=label1, liver7=liver7)
    return root


def test_prepare_dataset_scores_an_outside_tumor_liver_only(ircadb_source, tmp_path):
    from liverseg.imageio import read_nifti

    cases = prepare_dataset(ircadb_source, tmp_path / "ds")
    by = {c.case: c for c in cases}
    assert sorted(by) == ["ircadb_001", "ircadb_007"]
    assert not by["ircadb_001"].liver_only and by["ircadb_001"].tumor_outside_liver_fraction == 0.0
    assert by["ircadb_007"].liver_only and by["ircadb_007"].tumor_outside_liver_fraction == 1.0
    assert "outside the reference liver" in by["ircadb_007"].reason
    truth = np.load(ircadb_source.parent / "truth.npz")
    lab1, aff1 = read_nifti(tmp_path / "ds" / "scoring_labels" / "ircadb_001.nii.gz")
    lab7, _ = read_nifti(tmp_path / "ds" / "scoring_labels" / "ircadb_007.nii.gz")
    conv7, _ = read_nifti(tmp_path / "ds" / "labelsTs" / "ircadb_007.nii.gz")
    # the converter's label keeps the outside 'tumor' as 2; the scoring reference is the liver mask alone
    assert (conv7 == 2).sum() > 20 and set(np.unique(lab7)) == {0, 1}
    # same voxels as written (the DICOM series was stored LPS; NIfTI keeps that voxel order and affine)
    assert np.array_equal(lab1, truth["label1"]) and np.array_equal(lab7 > 0, truth["liver7"])
    assert aff1[0, 0] < 0 and aff1[1, 1] < 0  # stored LPS, as written
    stamp = tmp_path / "ds" / "real_eval_dataset.json"
    mtime = stamp.stat().st_mtime_ns
    again = prepare_dataset(ircadb_source, tmp_path / "ds")
    assert again == cases and stamp.stat().st_mtime_ns == mtime  # reused, not converted again


def _threshold_model(path: Path, hu: float) -> None:
    """A 1x1x1 convolution calling 'liver' every voxel brighter than ``hu`` (in the bundle's window)."""
    cfg = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    x0 = (hu - cfg["hu_min"]) / (cfg["hu_max"] - cfg["hu_min"])
    conv = torch.nn.Conv3d(1, 3, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.0, 50.0, 0.0]).view(3, 1, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, -50.0 * x0, -1e3]))
    torch.save(conv.state_dict(), path)


@pytest.mark.slow
def test_real_eval_end_to_end_on_synthetic_patients(ircadb_source, tmp_path, capsys):
    """Convert, run the bundle's own inference config (a threshold model), score, draw, check, exit codes."""
    _threshold_model(tmp_path / "model.pt", 80.0)
    sets = [
        "--set", f"ckpt_dir={json.dumps(str(tmp_path))}",
        "--set", json.dumps({"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 3,
                             "kernel_size": 1}).join(["network_def=", ""]),
        "--set", "roi_size=[32,32,16]", "--set", "sw_batch_size=4",
    ]
    out = tmp_path / "out"
    args = ["real-eval", "--source", str(ircadb_source), "--out", str(out), "--dataset-dir", str(tmp_path / "ds")]
    args += sets
    rec = tmp_path / "rec.json"
    assert liverseg.cli.main(args + ["--record", str(rec)]) == 1  # no tumor predicted: tumor targets missed
    assert "target(s) missed" in capsys.readouterr().out
    report = json.loads((out / "real_eval.json").read_text())
    rows = {r["case"]: r for r in report["cases"]}
    assert rows["ircadb_007"]["liver_only"] and rows["ircadb_007"]["tumor_dice"] is None
    assert rows["ircadb_001"]["tumor_dice"] == 0.0 and rows["ircadb_001"]["lesion_fn"] >= 1
    for r in rows.values():  # liver = voxels above 80 HU (the tumors are left out): close to the liver
        assert r["liver_dice"] > 0.9, r
    assert report["weights"]["sha256"] and report["versions"]["monai"] and report["date_utc"]
    assert report["inference"]["overrides"]["roi_size"] == [32, 32, 16]
    missed = {(t["case"], t["metric"]) for t in report["targets"] if not t["passed"]}
    assert ("ircadb_001", "tumor_dice") in missed and not any(c == "ircadb_007" and m.startswith(("tumor", "lesion"))
                                                              for c, m in missed)
    md = (out / "real_eval.md").read_text()
    assert "| ircadb_007 |" in md and "liver-only" in md and "Targets missed" in md
    pictures = sorted(p.name for p in (out / "pictures").glob("*.png"))
    assert "ircadb_001_liver.png" in pictures and "ircadb_007_liver.png" in pictures
    assert any(n.startswith("ircadb_001_FN") for n in pictures)  # each missed lesion gets its picture
    assert (out / "evaluate" / "summary.json").is_file() and (out / "evaluate" / "metrics_per_case.csv").is_file()
    # --report-only: the same run exits 0, and it matches the figures it recorded
    assert json.loads(rec.read_text())["cases"]["ircadb_001"]["liver_dice"] == rows["ircadb_001"]["liver_dice"]
    assert liverseg.cli.main(args + ["--report-only", "--no-pictures", "--compare", str(rec)]) == 0
    assert "regression" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------------------
# the real evaluation (regression guard)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(REAL_SKIP is not None, reason=f"real CT not available: {REAL_SKIP}")
def test_real_ct_no_regression_against_the_model_card(tmp_path):
    """The shipped weights through the shipped inference config on the real 3D-IRCADb patients: no figure worse
    than recorded in the model card (beyond its tolerance). The issue's targets are reported, not required here
    (`make real-eval` fails on them)."""
    recorded = json.loads(RECORDED.read_text())
    report = real_eval(REAL_SOURCE, tmp_path / "out", pictures=False)
    assert report is not None
    problems = compare_with_recorded(report, recorded)
    assert problems == [], "\n".join(problems)
    rows = {r["case"]: r for r in report["cases"]}
    assert set(rows) == set(recorded["cases"])
    for case, rec in recorded["cases"].items():
        assert rows[case]["liver_only"] == rec["liver_only"], case
        assert not math.isnan(rows[case]["liver_dice"])
