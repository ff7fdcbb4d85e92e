"""scripts.runs: where a bundle run writes (a run folder outside the bundle), --promote, and the short error report."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from tests import procs
from tests.conftest import BUNDLE, REPO

sys.path.insert(0, str(BUNDLE))

from scripts import runs  # noqa: E402


def test_run_dir_is_outside_the_bundle(monkeypatch, tmp_path):
    monkeypatch.delenv(runs.RUNS_ENV, raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    path = Path(runs.default_run_dir(str(BUNDLE), "train"))
    assert path.parent == REPO / ".cache" / "runs" and path.name.startswith("train-")
    assert BUNDLE not in path.parents
    assert not path.exists()  # named, not created: the first writer creates it
    monkeypatch.setenv(runs.RUNS_ENV, str(tmp_path))
    first = runs.default_run_dir(str(BUNDLE), "evaluate")
    os.makedirs(first)
    second = runs.default_run_dir(str(BUNDLE), "evaluate")
    assert Path(first).parent == tmp_path and second != first  # never reuses an existing folder
    # every torchrun rank gets the same folder
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abcdef123456789")
    assert runs.default_run_dir(str(BUNDLE), "train") == str(tmp_path / "train-torchrun-abcdef123456")


def test_run_dir_outside_a_checkout_goes_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(runs.RUNS_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    lone = tmp_path / "a" / "b" / "liver_ct_seg"
    lone.mkdir(parents=True)
    assert Path(runs.default_run_dir(str(lone), "inference")).parent == tmp_path / "xdg" / "liver_ct_seg" / "runs"


@pytest.mark.parametrize("kind", ["", "training", "export"])
def test_unknown_run_kind_is_refused(kind):
    with pytest.raises(ValueError, match="valid: train, evaluate, inference"):
        runs.default_run_dir(str(BUNDLE), kind)


def test_promote_only_when_asked(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, bundle / "models" / "model.pt")
    shipped = (bundle / "models" / "model.pt").read_bytes()
    run = tmp_path / "run" / "models"
    run.mkdir(parents=True)
    torch.save({"w": torch.ones(1)}, run / "model.pt")
    assert runs.promote(str(run), str(bundle), enabled=False) is None
    assert (bundle / "models" / "model.pt").read_bytes() == shipped
    assert runs.promote(str(run), str(bundle), enabled=True) == str(bundle / "models" / "model.pt")
    assert (bundle / "models" / "model.pt").read_bytes() == (run / "model.pt").read_bytes()
    assert (bundle / "models" / "model.previous.pt").read_bytes() == shipped
    assert not [p for p in (bundle / "models").iterdir() if p.suffix == ".tmp"]
    with pytest.raises(FileNotFoundError, match="nothing to promote"):
        runs.promote(str(tmp_path / "empty"), str(bundle), enabled=True)


def test_short_report_names_the_cause_first():
    try:
        try:
            raise ValueError("dataset_dir '/x' is not a folder")
        except ValueError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: $scripts.data.load_datalist(...)") from e
    except RuntimeError as e:
        text = runs.short_report(e, "/tmp/err.log")
    lines = text.splitlines()
    assert lines[0] == "liver_ct_seg: the run failed: ValueError: dataset_dir '/x' is not a folder"
    assert lines[1].startswith("  while: RuntimeError: Failed to evaluate") and lines[-1].endswith("/tmp/err.log")


@pytest.mark.slow
def test_failed_bundle_run_from_outside_prints_the_cause_and_logs_the_trace(tmp_path):
    """The README's invocation from another folder (bundle on PYTHONPATH, --bundle_root) reaches the bundle's code;
    with no dataset it fails in a few lines that name the cause, and the full traceback is in the log file."""
    env = dict(os.environ, PYTHONPATH=str(BUNDLE), OMP_NUM_THREADS="1")
    env[runs.RUNS_ENV] = str(tmp_path / "runs")
    env.pop(runs.FULL_TRACE_ENV, None)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "train.json"),
           "--bundle_root", str(BUNDLE)]
    res = procs.run(cmd, cwd=tmp_path, env=env, timeout=600)
    assert res.returncode != 0
    assert "No module named 'scripts'" not in res.stderr
    assert "the run failed: ValueError: dataset_dir '/workspace/data/DatasetNNN_Liver' is not a folder" in res.stderr
    assert "Traceback" not in res.stderr and len((res.stdout + res.stderr).splitlines()) < 30
    log = res.stderr.split("full traceback: ")[1].strip()
    assert Path(log).parent.parent == tmp_path / "runs" and "Traceback" in Path(log).read_text()
    # the full trace is still one environment variable away
    env[runs.FULL_TRACE_ENV] = "1"
    res = procs.run(cmd, cwd=tmp_path, env=env, timeout=600)
    assert res.returncode != 0 and "Traceback" in res.stderr
