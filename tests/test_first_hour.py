"""The first hour of a new user: what `make test` installs is said before, SKIP_SYSTEM=1 installs nothing system-wide,
and caches live under the project's `.cache/`, not under whatever folder a command runs from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


@needs_make
def test_skip_system_installs_nothing():
    res = subprocess.run(
        ["make", "-s", "system-deps", "SKIP_SYSTEM=1"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert "SKIP_SYSTEM=1: not installing orthanc orthanc-dicomweb chromium" in res.stdout
    assert "apt-get" not in res.stdout


@needs_make
def test_make_test_says_what_it_installs_and_why():
    # -n: print the recipes, run nothing; -B: as on a fresh clone (nothing installed yet)
    res = subprocess.run(
        ["make", "-n", "-B", "test"], cwd=REPO, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, MAKEFLAGS=""),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "about 8.5 GB" in out and "nothing is installed outside" in out
    assert "installing system packages with apt-get, as root" in out and "why: the DICOMweb/OHIF tests" in out
    assert "SKIP_SYSTEM=1 make test" in out
    assert out.index("installing liverseg and its Python dependencies") < out.index("pip install")


def test_lits117_cache_is_the_projects_wherever_the_command_runs(tmp_path):
    code = "from liverseg.convert.lits117 import DEFAULT_CACHE_DIR as d; print(d)"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == str(REPO / ".cache" / "wheels")
