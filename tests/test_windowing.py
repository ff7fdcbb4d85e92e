"""Window statistics: clipping per label and liver/tumor overlap."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liverseg.cli import main
from liverseg.dataset import write_case, write_dataset_json
from liverseg.errors import InputError
from liverseg.windowing import load_windows, window_stats


@pytest.fixture()
def bright_liver(tmp_path):
    """Liver at 130 +- 5 HU (brighter than the report's window top, 125), tumor at 60 HU."""
    rng = np.random.default_rng(0)
    image = rng.normal(-50, 5, (20, 20, 10))
    label = np.zeros(image.shape, np.uint8)
    label[4:16, 4:16, 2:8] = 1
    label[8:12, 8:12, 4:6] = 2
    image[label == 1] = rng.normal(130, 5, int((label == 1).sum()))
    image[label == 2] = rng.normal(60, 5, int((label == 2).sum()))
    write_case(tmp_path, "c", image, np.eye(4), label)
    write_dataset_json(tmp_path, "W")
    return tmp_path


def test_report_window_clips_a_bright_liver_and_the_liver_window_does_not(bright_liver):
    stats = window_stats(bright_liver, {"report": (-125.0, 125.0), "liver": (-100.0, 200.0)})
    assert stats["windows"]["report"]["liver_clipped_high"] > 0.8
    assert stats["windows"]["liver"]["liver_clipped_high"] == 0.0
    assert stats["windows"]["liver"]["tumor_clipped_high"] == 0.0
    assert stats["windows"]["liver"]["liver_tumor_overlap"] < 0.05
    assert stats["hu_median"]["liver"] == pytest.approx(130, abs=2)


def test_default_windows_file_has_the_report_and_liver_windows():
    windows = load_windows()
    assert windows["report_w250_c0"] == (-125.0, 125.0)
    assert windows["liver_w300_c50"] == (-100.0, 200.0)


def test_bad_inputs(tmp_path):
    bad = tmp_path / "w.json"
    bad.write_text(json.dumps({"x": {"center": 0, "width": 0}}))
    with pytest.raises(ValueError, match="width must be > 0"):
        load_windows(bad)
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(InputError, match="no labelled cases"):
        window_stats(tmp_path)


def test_cli_writes_json(bright_liver, tmp_path, capsys):
    out = tmp_path / "stats.json"
    assert main(["window-stats", str(bright_liver), "--json", str(out)]) == 0
    assert "report_w250_c0" in capsys.readouterr().out
    assert json.loads(out.read_text())["cases"] == 1
