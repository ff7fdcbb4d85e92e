"""benchmarks/robot_user.py: NoC and summary arithmetic, and the robot loop end to end on a tiny phantom (small
network with random weights: the loop, the clicks and the curves are checked, not the accuracy)."""

from __future__ import annotations

import importlib.util
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import BUNDLE, REPO

sys.path.insert(0, str(BUNDLE))

from scripts.clicks import largest_error_click  # noqa: E402

spec = importlib.util.spec_from_file_location("bench_robot_user", REPO / "benchmarks" / "robot_user.py")
robot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(robot)


@pytest.mark.parametrize(
    "curve, target, cap, expected",
    [
        ([0.95, 0.96], 0.90, 20, 0),
        ([0.5, 0.85, 0.91, 0.89], 0.90, 20, 2),
        ([0.5, 0.6], 0.90, 20, 20),  # never reached: the cap
        ([0.5, 0.6, 0.7, 0.95], 0.90, 2, 2),  # reached only after the cap
    ],
)
def test_clicks_to_reach(curve, target, cap, expected):
    assert robot.clicks_to_reach(curve, target, cap) == expected


def test_summarize():
    def case(liver, tumor, has_tumor=True):
        return {"liver_dice": liver, "tumor_dice": tumor, "has_tumor": has_tumor, "seconds_per_click": 1.0,
                "cpu_seconds_per_click": 2.0, "shape": [4, 4, 2]}  # fmt: skip

    cases = {
        "a": case([0.8, 0.92, 0.95, 0.96], [0.5, 0.7, 0.85, 0.84]),
        "b": case([0.95, 0.94, 0.97, 0.97], [1.0, 1.0, 1.0, 1.0], has_tumor=False),
        "c": case([0.9, 0.9, 0.9, 0.9], [0.0, 0.0, 0.1, 0.9]),
    }
    s = robot.summarize(cases, 3, no_tumor=["c"])
    assert s["tumor_cases"] == 1 and s["liver_dice@0"] == pytest.approx((0.8 + 0.95 + 0.9) / 3)
    assert s["liver_dice@3"] == pytest.approx((0.96 + 0.97 + 0.9) / 3) and "liver_dice@5" not in s
    assert s["noc90_liver"] == pytest.approx((1 + 0 + 0) / 3) and s["noc80_tumor"] == 2
    assert s["largest_drop"] == pytest.approx(0.01)  # b's liver 0.95 -> 0.94, a's tumor 0.85 -> 0.84
    text = robot.markdown("t", cases, s, "cmd")
    assert "| a | 4x4x2 | 0.800 | 0.920 | 0.960 | 1 | 0.500 | 0.700 | 0.840 | 2 | 1.00 | 2.00 |" in text
    assert "| b | 4x4x2 | 0.950 | 0.940 | 0.970 | 0 | - | - | - | - | 1.00 | 2.00 |" in text
    assert s["seconds_per_click_median"] == 1.0 and s["cpu_seconds_per_click_median"] == 2.0


def test_robot_loop_on_a_tiny_phantom(tmp_path):
    from liverseg.dataset import write_case
    from liverseg.phantom import generate_phantom

    p = generate_phantom(11, shape=(48, 48, 24), orientation="LPS")
    write_case(tmp_path / "ds", "tiny", p.image, p.affine, p.label, split="Ts")
    small = {"channels": [4, 8, 16, 32, 64], "roi_size": [32, 32, 32], "pixdim": [4.0, 4.0, 4.0]}
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    from monai.bundle import ConfigParser

    files = [str(BUNDLE / "configs" / f) for f in ("inference.json", "inference_deepedit.json")]
    parser = ConfigParser(ConfigParser.load_config_files(files))
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')", **small})
    torch.save(parser.get_parsed_content("network_def").state_dict(), weights)  # random weights

    model = robot.InteractiveModel(weights, overrides=small)
    (image, label), = robot.find_cases(tmp_path / "ds", "Ts", []).values()
    seen = []

    def click_fn(pred, truth, labels, spacing):
        seen.append(pred.copy())
        return largest_error_click(pred, truth, labels, spacing)

    c = robot.run_case(model, image, label, 2, click_fn)
    truth = np.asarray(nib.load(label).dataobj)
    assert c["shape"] == list(truth.shape) and len(c["liver_dice"]) == 3 and len(c["tumor_dice"]) == 3
    assert all(0.0 <= d <= 1.0 for d in c["liver_dice"] + c["tumor_dice"])
    assert len(c["clicks"]) == 2 and all(k["label"] in ("liver", "tumor", "background") for k in c["clicks"])
    for k, pred in zip(c["clicks"], seen, strict=True):  # each click where the result it answers was wrong
        v = tuple(k["voxel"])
        assert pred[v] != truth[v] and {"background": 0, "liver": 1, "tumor": 2}[k["label"]] == truth[v]
    with pytest.raises(FileNotFoundError, match="no case"):
        robot.find_cases(tmp_path / "ds", "Ts", ["other"])
