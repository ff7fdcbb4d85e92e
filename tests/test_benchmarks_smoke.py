"""Smoke tests of the benchmark scripts (benchmarks/server_overhead.py, training_throughput.py, inference_cpu.py): their
core functions run end to end at a tiny size and return positive figures; bad arguments raise. Timings are not
checked (the scripts measure them; a test cannot judge them on a shared machine)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest

from tests.conftest import BUNDLE, REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


server_overhead = _load("server_overhead")
training_throughput = _load("training_throughput")

# a 16x smaller network, coarse grid and small patches for training; for inference the shipped weights with a small
# sliding window (the network is unchanged, so the weights still load)
SMALL_TRAIN = {"channels": [4, 8, 16, 32, 64], "pixdim": [5.0, 5.0, 5.0], "roi_size": [32, 32, 16]}
SMALL_ROI = [32, 32, 16]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def small_roi_bundle(tmp_path_factory) -> Path:
    """The repository bundle (shipped weights) with a 32 x 32 x 16 sliding window in inference.json."""
    dest = tmp_path_factory.mktemp("bundle") / "liver_ct_seg"
    shutil.copytree(BUNDLE, dest, ignore=shutil.ignore_patterns("__pycache__", "eval", "docs", "runs"))
    cfg_file = dest / "configs" / "inference.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["roi_size"] = SMALL_ROI
    cfg_file.write_text(json.dumps(cfg, indent=2))
    return dest


@pytest.mark.slow
def test_server_overhead_smoke(tmp_path, small_roi_bundle):
    r = server_overhead.measure(
        shape=(48, 48, 24), spacing=(2.0, 2.0, 2.5), repeats=1, threads=2, workdir=tmp_path, bundle=small_roi_bundle
    )
    for key in ("direct_s", "app_task_s", "server_s", "server_startup_s", "response_mb", "make_ct_s"):
        assert _positive(r[key]), (key, r[key])
    for path in ("direct", "app_task", "server"):
        assert _positive(r["peak_rss_gb"][path]), path
        assert _positive(r["warmup_s"][path]), path
        assert len(r["runs"][path]) == 1
    assert _positive(r["server_stages"]["total"]) and _positive(r["server_stages"]["infer"])
    assert all(_positive(r["direct_stages"][k]) for k in ("load_pre", "net", "post_save"))
    assert r["overhead"] == pytest.approx((r["server_s"] - r["direct_s"]) / r["direct_s"])
    assert r["overhead"] == pytest.approx(r["http_part"] + r["task_part"] + r["network_part"])
    assert r["http_part"] > 0
    # the three paths give the same mask
    assert r["agreement"]["server_vs_direct"] > 0.999
    assert r["agreement"]["app_task_vs_direct"] > 0.999
    assert r["app_task_stages"]["total"] > 0
    md = server_overhead.markdown(r, "python benchmarks/server_overhead.py --shape 48 48 24", "1.00", "1.00")
    assert md.startswith("## REST overhead") and "Machine:" in md and "Command:" in md and "| server:" in md
    assert len(server_overhead.report_lines(r)) >= 5 and "| per transform" in md
    assert _positive(r["transforms"]["direct"]["post: SaveImaged"])
    assert _positive(r["transforms"]["app_task"]["write: volumetry"])
    assert _positive(r["volumetry_profile"]["total"]) and r["volumetry_profile"]["voxels"] == 48 * 48 * 24
    assert "volumetry" in server_overhead.diagnosis(r)
    # the server runs the bundle's own postprocessing (its SaveImaged replaced by monailabel's writer)
    bundle_post = set(r["transforms"]["direct"]) - {"post: SaveImaged"}
    assert bundle_post and bundle_post <= set(r["transforms"]["server"])
    assert bundle_post <= set(r["transforms"]["app_task"])


@pytest.mark.slow
def test_training_throughput_smoke(tmp_path):
    m = training_throughput.measure(
        num_cases=4, shape=(48, 48, 24), spacing=(5.0, 5.0, 5.0), epochs=2, settings=[(1.0, 0), (0.0, 0)],
        threads=2, num_folds=4, workdir=tmp_path, overrides=SMALL_TRAIN,
    )
    assert m["input_shape"] == (48, 48, 24)
    assert [(s["cache_rate"], s["num_workers"]) for s in m["settings"]] == [(1.0, 0), (0.0, 0)]
    for s in m["settings"]:
        # 3 training cases, batch 2 x 2 crops: 2 iterations (4 + 2 patches) in the timed epoch
        assert s["train_cases"] == 3 and s["iterations"] == 2 and s["patches_per_it"] == pytest.approx(3.0)
        for key in ("first_epoch_s", "epoch_s", "it_per_s", "patches_per_s", "data_s_per_it", "step_s_per_it",
                    "peak_rss_gb"):
            assert _positive(s[key]), (key, s[key])
        assert s["data_frac"] + s["step_frac"] + s["other_frac"] == pytest.approx(1.0, abs=1e-6)
        assert s["patches_per_s"] == pytest.approx(3.0 * s["it_per_s"])
    cached, plain = m["settings"]
    assert _positive(cached["cache_fill_s"]) and len(cached["cached_shape"]) == 3
    assert plain["cached_shape"] == []
    assert _positive(m["speedup"][0]) and _positive(m["speedup_same_step"][0])
    md = training_throughput.markdown(m, "python benchmarks/training_throughput.py --cases 4", "1.00", "1.00")
    assert md.startswith("## Training throughput") and "Machine:" in md and md.count("\n| 1 | 0 |") == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"repeats": 0},
        {"warmup": 0},
        {"shape": (48, 48)},
        {"shape": (4, 48, 24)},
    ],
)
def test_server_overhead_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        server_overhead.measure(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_cases": 1},
        {"epochs": 0},
        {"settings": [(1.5, 0)]},
        {"settings": [(1.0, -1)]},
    ],
)
def test_training_throughput_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        training_throughput.measure(**kwargs)


@pytest.mark.slow
def test_inference_cpu_smoke(tmp_path):
    """benchmarks/inference_cpu.py end to end on a small CT: the default network's row in the markdown table, with
    positive figures, and a FLOP count of the real convolutions (the CPU fast path is not missed by the counter)."""
    import subprocess
    import sys

    out = tmp_path / "inference.md"
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "inference_cpu.py"), "--shape", "96", "96", "40",
         "--variants", "aunet_ds", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    row = next(line for line in out.read_text().splitlines() if line.startswith("| aunet_ds |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    end_to_end, network, ratio, rss, gflops = (float(c) for c in cells[1:6])
    assert all(_positive(x) for x in (end_to_end, network, ratio, rss, gflops))
    assert network < end_to_end and cells[6].endswith("%")
    assert "reference peak" in res.stdout
    # the work counted (GFLOP/s x s) is at least one 96 x 96 x 64 window's 17 GFLOP: a counter that missed the
    # oneDNN convolutions of the CPU fast path would count almost nothing
    assert gflops * network > 10


def test_child_peak_memory_is_its_own():
    """The benchmarks' children report their own peak memory, not their parent's: on Linux ``ru_maxrss`` starts
    from the parent's resident set at fork and keeps it across exec, so a benchmark holding a synthetic CT made every
    child look as big as itself (2.26 GB for every variant in one run)."""
    import subprocess
    import sys

    import numpy as np

    report = _load("_report")
    ballast = np.ones(50_000_000)  # 400 MB written in this (the parent) process
    code = "\n".join([
        "import sys", f"sys.path.insert(0, {report.CHILD_PATH!r})",
        "from _report import peak_rss_gb", "print(peak_rss_gb())",
    ])
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert ballast.sum() == 50_000_000
    # a bare interpreter: tens of MB, far from the parent's 400 MB of ballast
    assert 0 < float(res.stdout) < 0.2, res.stdout


def test_nnunet_side_by_side_without_nnunet(tmp_path, capsys):
    """benchmarks/nnunet_side_by_side.py without nnU-Net or the real CTs: one-line skips, exit 0; its table and
    report from given figures (a finished and a stopped nnU-Net run), the stopped one as a bound and its estimate
    labelled as one. nnU-Net itself is never installed by the tests."""
    side = _load("nnunet_side_by_side")
    missing_env = tmp_path / "no-env"
    reason = side.nnunet_skip_reason(missing_env)
    assert "not installed" in reason and "--create-env" in reason
    assert side.main(["--env", str(missing_env), "--source", str(tmp_path / "no-data")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("skipped: real CT folder") and "not found" in out[0]

    progress = tmp_path / "progress.jsonl"
    progress.write_text("\n".join(json.dumps(r) for r in [
        {"t0_epoch": 1000.0}, {"start_s": 10.0, "passes": 64, "shape": [129, 432, 432]},
        {"pass_end_s": 30.0}, {"pass_end_s": 50.0},
    ]) + "\n")
    stopped = side.progress_at_stop(progress)
    assert stopped["passes_done"] == 2 and stopped["s_per_pass"] == pytest.approx(20.0)
    assert stopped["estimate_to_window_end_s"] == pytest.approx(10.0 + 20.0 * 64)
    results = {
        "case_a": {
            "ours": {"total_s": 10.0, "net_s": 6.0, "peak_rss_gb": 2.0, "windows": 20,
                     "preprocessed_shape": [150, 150, 60]},
            "nnunet": {
                "off": {"total_s": 100.0, "net_s": 90.0, "peak_rss_gb": 8.0, "windows": 64, "network_passes": 64,
                        "patch_size": [56, 192, 192], "preprocessed_shape": [129, 432, 432]},
                "on": {"timed_out": True, "limit_s": 60.0, "stopped_at_s": 55.0, "peak_rss_gb": 4.0,
                       "progress": stopped},
            },
        }
    }
    rows = side.build_rows(results)
    assert [r["tool"].split()[0] for r in rows] == ["ours", "nnU-Net", "nnU-Net"]
    assert rows[1]["ratio_s"] == pytest.approx(0.1) and rows[1]["ratio_peak"] == pytest.approx(0.25)
    assert rows[2]["bound"] and rows[2]["seconds"] == 55.0
    table = "\n".join(side.table_lines(rows))
    assert "| 0.100 | 10.0 | 0.25 |" in table and "> 55 (stopped)" in table and "< 0.182" in table
    report = {"date_utc": "2026-12-03T00:00:00+00:00", "code": "abc", "versions": {"torch": "x"}, "threads": 2,
              "machine": {"processor": "cpu", "cores": 2, "load_start": "1", "load_end": "1"}, "command": "python b",
              "nnunet_plan": {"spacing": [1.6, 0.7, 0.7], "patch_size": [56, 192, 192], "batch_size": 2,
                              "parameters": 30.7e6},
              "results": results, "rows": rows, "training": None, "notes": []}
    md = side.markdown(report)
    assert "Estimate, not measured" in md and "2 of 64 network passes" in md and "30.7 M parameters" in md


def test_real_retrain_loop_without_real_data(tmp_path, capsys):
    """benchmarks/real_retrain_loop.py without the real CTs: one-line skip, exit 0, no server started; its helpers
    (directions, case names, epochs from the training log) and its table from given figures."""
    from types import SimpleNamespace

    loop = _load("real_retrain_loop")
    assert loop.main(["--source", str(tmp_path / "no-data"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("real_retrain_loop skipped: real CT folder") and "not found" in out[0]
    assert not (tmp_path / "out").exists()

    assert loop.parse_direction("1.1:1.7") == ("1.1", "1.7")
    for bad in ("1.1", "1.1:1.1", ":1.7", "a:b:c"):
        with pytest.raises(ValueError):
            loop.parse_direction(bad)
    cases = [SimpleNamespace(case="ircadb_001", patient_dir="/d/3Dircadb1.1"),
             SimpleNamespace(case="ircadb_007", patient_dir="/d/3Dircadb1.7")]
    assert [loop.case_of(n, cases).case for n in ("1.1", "3Dircadb1.7", "ircadb_001")] == [
        "ircadb_001", "ircadb_007", "ircadb_001"]
    with pytest.raises(ValueError, match="known: 3Dircadb1.1"):
        loop.case_of("1.2", cases)
    assert loop.epochs_run(["Epoch[1] Complete", "x", "Epoch[12] Metrics -- loss: 0.3", "Epoch[3]"]) == 12
    assert loop.epochs_run(["no epoch"]) is None

    row = {"liver_dice": 0.8, "liver_hd95_mm": 30.0, "liver_vol_err_pct": 20.0, "tumor_dice": 0.5,
           "liver_only": False}
    directions = [
        {"train": "3Dircadb1.7", "test": "3Dircadb1.1", "before": row,
         "after": dict(row, liver_dice=0.9, liver_vol_err_pct=-3.25, tumor_dice=float("nan")),
         "train_seconds": 321.4, "epochs": 40},
        {"train": "3Dircadb1.1", "test": "3Dircadb1.7", "before": dict(row, liver_only=True, tumor_dice=None),
         "after": None, "train_seconds": None, "epochs": None},
    ]
    lines = loop.table(directions).splitlines()
    assert lines[0] == loop.TABLE_HEAD and len(lines) == 4
    assert lines[2] == ("| 3Dircadb1.7 -> 3Dircadb1.1 | 0.800 | **0.900** | 30.0 | 30.0 | +20.0 | -3.2 | 0.500 | - "
                        "| 321 | 40 |")
    assert "| liver-only |" in lines[3] and lines[3].endswith("| - | - |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
