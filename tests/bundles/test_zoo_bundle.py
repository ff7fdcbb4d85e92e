"""The bundle as submitted to the MONAI model zoo (``make zoo-bundle``) passes the zoo's checks that run offline.

See ``liverseg/zoo.py`` for the list: ``ci/verify_bundle.py``'s min and full modes (metadata schema, files, version,
properties, ``verify_net_in_out`` with n=1 on the CPU, TorchScript export), black / isort / flake8-bugbear with the
zoo's settings, and its pre-commit hooks. Each check is also shown to fail on a bundle with that defect.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from liverseg import zoo
from tests.conftest import BUNDLE, SCHEMA


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zoo") / "zoo-bundle"
    zoo.build_zoo_bundle(BUNDLE, out)
    return out


def test_large_files_yml_references_the_shipped_weights():
    (entry,) = zoo.read_large_files(BUNDLE)
    assert entry["path"] == "models/model.pt" and entry["url"].startswith("https://")
    assert entry["hash_val"] == zoo.file_hash(BUNDLE / "models" / "model.pt", entry["hash_type"])
    assert zoo.large_files_problems(BUNDLE) == []


def test_built_folder_is_the_submission_without_weights(built):
    bundle = built / "models" / "liver_ct_seg"
    for rel in ("configs/metadata.json", "configs/inference.json", "LICENSE", "large_files.yml",
                "docs/README.md", "docs/data_license.txt"):
        assert (bundle / rel).is_file(), rel
    assert not list(bundle.rglob("*.pt")) and not list(bundle.rglob("__pycache__"))
    assert (built / "ci" / "unit_tests" / "test_liver_ct_seg.py").is_file()
    assert max(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) <= zoo.MAX_KB * 1024
    with zipfile.ZipFile(built / "liver_ct_seg.zip") as zf:
        names = set(zf.namelist())
    assert "liver_ct_seg/configs/metadata.json" in names and "liver_ct_seg/models/model.pt" not in names
    # no absolute path of a machine in what is shipped
    for p in bundle.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".md", ".txt", ".yml"):
            text = p.read_text()
            assert "/work/" not in text and "/home/" not in text and "/root/" not in text, p


@pytest.mark.slow
def test_zoo_checks_pass_on_the_built_folder(built):
    results = zoo.check_zoo_bundle(built, schema=SCHEMA, weights_source=BUNDLE)
    assert all(v == "ok" for v in results.values())
    names = " ".join(results)
    for expected in ("verify_net_in_out, n=1", "verify_torchscript", "verify_metadata_format", "black", "isort",
                     "flake8", "pretty-format-json", "check-added-large-files", "end-of-file-fixer"):
        assert expected in names, expected


def test_stale_weights_hash_is_refused(tmp_path):
    copy = tmp_path / "liver_ct_seg"
    shutil.copytree(BUNDLE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "models" / "model.pt", "ab") as f:
        f.write(b"retrained")
    assert any("large_files.yml" in p for p in zoo.large_files_problems(copy))
    with pytest.raises(ValueError, match="large_files.yml"):
        zoo.build_zoo_bundle(copy, tmp_path / "out")
    with pytest.raises(ValueError, match="sha256"):
        zoo.fetch_large_files(BUNDLE, weights_source=copy)  # the zoo's download: the hash no longer matches


def test_pre_commit_hooks_catch_what_the_zoo_rejects(tmp_path):
    bad = tmp_path / "bundle"
    (bad / "configs").mkdir(parents=True)
    (bad / "configs" / "a.json").write_text('{"a": 1}')  # no final newline, not 4-space pretty
    (bad / "big.bin").write_bytes(b"0" * (zoo.MAX_KB + 1) * 1024)
    (bad / "ok.py").write_text('"""Doc."""\n')
    res = zoo.pre_commit_checks(bad)
    assert res["pre-commit end-of-file-fixer"] != "ok"
    assert res["pre-commit pretty-format-json"] != "ok"
    assert res["pre-commit check-added-large-files"] != "ok"
    assert res["pre-commit check-docstring-first"] == "ok"
    assert (bad / "configs" / "a.json").read_text() == '{"a": 1}'  # checked on a copy: nothing was fixed in place


def test_style_checks_catch_black_and_bugbear(tmp_path):
    (tmp_path / "models" / "b").mkdir(parents=True)
    (tmp_path / "setup.cfg").write_text(zoo.ZOO_SETUP_CFG)
    (tmp_path / "pyproject.toml").write_text(zoo.ZOO_PYPROJECT)
    (tmp_path / "models" / "b" / "m.py").write_text(
        '"""M."""\n\n\ndef f(a, b):\n    try:\n        return [x for x in zip(a,b)]\n    except BaseException:\n'
        "        return None\n"
    )
    res = zoo.style_checks(tmp_path)
    assert res["black --check (line length 120)"] != "ok"
    flake = res["flake8 + flake8-bugbear (zoo's selection)"]
    assert "B036" in flake and "B905" in flake


def test_metadata_failure_is_reported_not_raised(tmp_path, built):
    root = tmp_path / "zoo"
    shutil.copytree(built, root)
    meta = root / "models" / "liver_ct_seg" / "configs" / "metadata.json"
    md = json.loads(meta.read_text())
    md["version"] = "9.9.9"  # not in the changelog
    meta.write_text(json.dumps(md, indent=4) + "\n")
    results = zoo.verify_bundle_checks(meta.parents[1], Path(SCHEMA), weights_source=BUNDLE)
    assert results["verify_version_changes (version in changelog)"].startswith("ValueError")
    assert results["verify_metadata_format (zoo schema)"] == "ok"


def test_model_card_has_the_zoo_template_sections():
    text = (BUNDLE / "docs" / "README.md").read_text()
    headings = {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}
    for section in ("Model Overview", "Data", "Preprocessing", "Training configuration", "Input", "Output",
                    "Performance", "MONAI Bundle Commands", "Disclaimer", "References", "License"):
        assert section in headings, section
    assert "docs/data_license.txt" in text and "large_files.yml" in text


def test_required_packages_install_on_the_zoos_python_3_10():
    """The zoo's CPU pre-merge runs Python 3.10: scipy 1.16 and later need 3.11 (1.17.1 was pinned before)."""
    from packaging.version import Version

    md = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert Version(md["required_packages_version"]["scipy"]) < Version("1.16")


# --- `python -m liverseg.zoo zoo-ci`: the zoo's own CI scripts in a local zoo checkout (the parts that need none) ---

PRE_COMMIT_YAML = """\
exclude: '.*\\.ipynb$'
repos:
  - repo: https://github.com/pre-commit/pre-commit-hooks
    rev: v5.0.0
    hooks:
      - id: end-of-file-fixer
      - id: trailing-whitespace
        exclude: '.*\\.(ts|pt)$'
      - id: check-added-large-files
        args: ['--maxkb=1024']
      - id: pretty-format-json
        args: ['--autofix', '--no-sort-keys', '--indent=4']
  # - repo: https://github.com/psf/black
  #   rev: 21.7b0
  #   hooks:
  #     - id: black
  - repo: https://example.org/some-hooks
    rev: v1
    hooks:
      - id: some-unknown-hook
"""


def test_zoo_ci_without_a_checkout_says_so_in_one_line(tmp_path, capsys):
    assert zoo.main(["zoo-ci", "--zoo-checkout", str(tmp_path / "model-zoo")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "not a checkout of the MONAI model zoo" in err
    assert "git clone https://github.com/Project-MONAI/model-zoo" in err


def test_pre_commit_config_hooks_and_their_files(tmp_path):
    (tmp_path / ".pre-commit-config.yaml").write_text(PRE_COMMIT_YAML)
    hooks = zoo.read_pre_commit_config(tmp_path / ".pre-commit-config.yaml")
    assert [h.id for h in hooks] == [
        "end-of-file-fixer", "trailing-whitespace", "check-added-large-files", "pretty-format-json", "some-unknown-hook"
    ]
    assert hooks[2].args == ("--maxkb=1024",) and hooks[3].args == ("--autofix", "--no-sort-keys", "--indent=4")
    assert hooks[0].rev == "v5.0.0" and hooks[0].repo.endswith("pre-commit-hooks")
    b = tmp_path / "models" / "b"
    (b / "models").mkdir(parents=True)
    (b / "a.json").write_text('{"a": 1}\n')
    (b / "s.py").write_text('"""S."""\n')
    (b / "n.ipynb").write_text("{}\n")
    (b / "models" / "m.pt").write_bytes(b"PK\0\0weights")
    files = sorted(str(p.relative_to(tmp_path)) for p in b.rglob("*") if p.is_file())
    selected = {h.id: zoo.hook_files(h, files, tmp_path) for h in hooks}
    assert selected["end-of-file-fixer"] == ["models/b/a.json", "models/b/s.py"]  # text only, no notebook
    assert selected["trailing-whitespace"] == ["models/b/a.json", "models/b/s.py"]
    assert selected["check-added-large-files"] == ["models/b/a.json", "models/b/models/m.pt", "models/b/s.py"]
    assert selected["pretty-format-json"] == ["models/b/a.json"]
    assert selected["some-unknown-hook"] is None


def test_pre_commit_hooks_run_directly_report_failures(tmp_path):
    (tmp_path / ".pre-commit-config.yaml").write_text(PRE_COMMIT_YAML)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a.json").write_text('{"a": 1}')  # no final newline, not indented by 4
    (tmp_path / "models" / "ok.txt").write_text("fine\n")
    res = zoo.run_pre_commit_hooks(tmp_path, ["models/a.json", "models/ok.txt"], tools_venv=None)
    assert res["pre-commit end-of-file-fixer"] != "ok"
    assert res["pre-commit pretty-format-json --autofix --no-sort-keys --indent=4"] != "ok"
    assert res["pre-commit trailing-whitespace"] == "ok"  # (check-added-large-files needs a git checkout)
    assert res["pre-commit some-unknown-hook"].startswith("not run")
