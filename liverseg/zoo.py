"""The bundle as it would be submitted to the MONAI model zoo, and the zoo's checks that run offline.

``build_zoo_bundle`` lays out what a zoo pull request adds: ``models/liver_ct_seg/`` (the bundle without its weights,
which ``large_files.yml`` references by URL and hash, as the zoo requires for files over its 1,024 KB limit),
``ci/unit_tests/test_liver_ct_seg.py`` (the zoo-style unit test), plus the zoo's style settings (``setup.cfg``,
``pyproject.toml``: line length 120) so that its checks read the same configuration as in the zoo repository; and
a zip of the bundle folder.

``check_zoo_bundle`` runs on that folder what the zoo's CI runs and what works offline:

- ``ci/verify_bundle.py`` in its ``min`` and ``full`` modes: necessary and preferred files, version in the
  changelog, metadata against the zoo's schema (a local copy), the inference workflow's properties,
  ``verify_net_in_out`` (n=1, on the CPU here; the zoo runs it on a GPU) and ``ckpt_export`` to TorchScript.
  The weights are "downloaded" from a local copy (``weights_source``) instead of the URL, with the hash checked as
  the zoo's ``download_large_files`` does.
- Code style: black (line length 120), isort (profile black, 120) and flake8 with flake8-bugbear, with the zoo's
  selection of codes.
- The zoo's pre-commit hooks (pre-commit-hooks, rev v5.0.0) that need no git repository, on a scratch copy.

Command line: ``python -m liverseg.zoo {large-files,build,check}`` (``make zoo-bundle`` runs build and check).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
BUNDLE_NAME = "liver_ct_seg"
DEFAULT_BUNDLE = REPO / "bundles" / BUNDLE_NAME
DEFAULT_OUT = REPO / ".cache" / "zoo-bundle"
DEFAULT_SCHEMA = REPO / "tests" / "data" / "zoo-schema" / "meta_schema_20240725.json"
ZOO_UNIT_TEST = REPO / "tests" / "bundles" / f"test_{BUNDLE_NAME}.py"
# Where the release assets of a bundle version are to be published. No release is published yet: upload
# models/model.pt to this address (or pass another --url) before submitting to the zoo.
RELEASE_URL = "https://github.com/liverseg/liverseg/releases/download/{name}-v{version}/{file}"
LARGE_FILES = ("models/model.pt",)
HASH_TYPE = "sha256"
MAX_KB = 1024  # the zoo's check-added-large-files limit
EXCLUDE_DIRS = {"__pycache__", "eval", ".pytest_cache", "runs"}
EXCLUDE_SUFFIXES = (".pyc", ".ts", ".tmp")

# The zoo repository's style settings (its setup.cfg [flake8]/[isort] and pyproject.toml [tool.black]).
ZOO_SETUP_CFG = """[flake8]
select = B,C,E,F,N,P,T4,W,B9
max_line_length = 120
ignore =
    E203
    E501
    E741
    W503
    W504
    C408
    N812
    B023
per_file_ignores = __init__.py: F401, __main__.py: F401

[isort]
known_first_party = models
profile = black
line_length = 120
"""
ZOO_PYPROJECT = """[tool.black]
line-length = 120
"""
# pre-commit-hooks v5.0.0 as the zoo's .pre-commit-config.yaml calls them (forbid-new-submodules needs git: the
# folder is built by copying files, so it holds no submodule)
PRE_COMMIT_HOOKS: tuple[tuple[str, tuple[str, ...], Callable[[Path], bool]], ...] = (
    ("end-of-file-fixer", (), lambda p: True),
    ("trailing-whitespace-fixer", (), lambda p: p.suffix not in (".ts", ".pt")),
    ("check-yaml", (), lambda p: p.suffix in (".yml", ".yaml")),
    ("check-docstring-first", (), lambda p: p.suffix == ".py"),
    ("check-executables-have-shebangs", (), lambda p: os.access(p, os.X_OK)),
    ("check-toml", (), lambda p: p.suffix == ".toml"),
    ("check-case-conflict", (), lambda p: True),
    ("check-added-large-files", (f"--maxkb={MAX_KB}", "--enforce-all"), lambda p: True),
    ("detect-private-key", (), lambda p: True),
    ("pretty-format-json", ("--no-sort-keys", "--indent=4"), lambda p: p.suffix == ".json"),
    ("mixed-line-ending", ("--fix=no",), lambda p: True),
)


class ZooCheckError(RuntimeError):
    """One or more zoo checks failed; ``results`` maps each check to ``"ok"`` or what went wrong."""

    def __init__(self, results: dict[str, str]) -> None:
        self.results = results
        failed = {k: v for k, v in results.items() if v != "ok"}
        super().__init__(
            f"{len(failed)} of {len(results)} zoo checks failed:\n"
            + "\n".join(f"- {k}: {v}" for k, v in failed.items())
        )


def file_hash(path: str | Path, hash_type: str = HASH_TYPE) -> str:
    if hash_type not in ("md5", "sha1", "sha256", "sha512"):
        raise ValueError(f"unknown hash type {hash_type!r}; valid: md5, sha1, sha256, sha512")
    h = hashlib.new(hash_type)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def bundle_version(bundle_dir: str | Path) -> str:
    return json.loads((Path(bundle_dir) / "configs" / "metadata.json").read_text())["version"]


def read_large_files(bundle_dir: str | Path) -> list[dict[str, str]]:
    """The entries of ``<bundle>/large_files.yml`` (``path``, ``url``, ``hash_val``, ``hash_type``)."""
    import yaml

    path = Path(bundle_dir) / "large_files.yml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: write it with `python -m liverseg.zoo large-files`")
    entries = (yaml.safe_load(path.read_text()) or {}).get("large_files")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty list under 'large_files'")
    for e in entries:
        missing = [k for k in ("path", "url", "hash_val", "hash_type") if not e.get(k)]
        if missing:
            raise ValueError(f"{path}: entry {e!r} lacks {', '.join(missing)}")
    return entries


def write_large_files(bundle_dir: str | Path = DEFAULT_BUNDLE, url_pattern: str = RELEASE_URL) -> Path:
    """Write ``<bundle>/large_files.yml`` for :data:`LARGE_FILES`: each file's release URL and its sha256."""
    bundle_dir = Path(bundle_dir)
    version = bundle_version(bundle_dir)
    lines = [
        "# Files over the model zoo's 1,024 KB limit, kept out of the bundle and fetched by URL (hash checked).",
        "# The URL is this project's release-asset pattern; written by `python -m liverseg.zoo large-files`.",
        "large_files:",
    ]
    for rel in LARGE_FILES:
        src = bundle_dir / rel
        if not src.is_file():
            raise FileNotFoundError(f"{src} does not exist: nothing to reference in large_files.yml")
        url = url_pattern.format(name=BUNDLE_NAME, version=version, file=Path(rel).name)
        lines += [
            f'  - path: "{rel}"',
            f'    url: "{url}"',
            f'    hash_val: "{file_hash(src)}"',
            f'    hash_type: "{HASH_TYPE}"',
        ]
    out = bundle_dir / "large_files.yml"
    _atomic_write_text(out, "\n".join(lines) + "\n")
    return out


def large_files_problems(bundle_dir: str | Path = DEFAULT_BUNDLE) -> list[str]:
    """What is wrong between ``large_files.yml`` and the files it references (missing entries, stale hashes)."""
    bundle_dir = Path(bundle_dir)
    try:
        entries = {e["path"]: e for e in read_large_files(bundle_dir)}
    except (FileNotFoundError, ValueError) as e:
        return [str(e)]
    problems = [f"{rel} has no entry in large_files.yml" for rel in LARGE_FILES if rel not in entries]
    for rel, e in entries.items():
        path = bundle_dir / rel
        if path.is_file() and file_hash(path, e["hash_type"]) != e["hash_val"]:
            problems.append(
                f"{rel}: its {e['hash_type']} is not the one in large_files.yml (weights changed?): "
                "run `python -m liverseg.zoo large-files`"
            )
    return problems


def _bundle_files(bundle_dir: Path) -> list[Path]:
    large = set(LARGE_FILES)
    out = []
    for root, dirs, files in os.walk(bundle_dir):
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDE_DIRS and not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(bundle_dir).as_posix()
            if rel in large or name.endswith(EXCLUDE_SUFFIXES) or name.startswith("."):
                continue
            if rel.startswith("models/") and name.endswith(".pt"):
                continue  # other checkpoints (model.previous.pt, ...) are not part of a release
            out.append(path)
    return out


def build_zoo_bundle(
    bundle_dir: str | Path = DEFAULT_BUNDLE, out_dir: str | Path = DEFAULT_OUT, make_zip: bool = True
) -> Path:
    """Lay out the zoo submission under ``out_dir`` (replaced whole, atomically); return the bundle folder in it."""
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    problems = large_files_problems(bundle_dir)
    if problems:
        raise ValueError("large_files.yml does not match the bundle: " + "; ".join(problems))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=out_dir.name + ".building-"))
    stage.chmod(0o755)  # mkdtemp's 0700 is not what a copied-out folder should have
    try:
        target = stage / "models" / BUNDLE_NAME
        for src in _bundle_files(bundle_dir):
            dst = target / src.relative_to(bundle_dir)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        (target / "models").mkdir(exist_ok=True)  # the weights land here when large_files.yml is fetched
        if ZOO_UNIT_TEST.is_file():
            (stage / "ci" / "unit_tests").mkdir(parents=True)
            shutil.copy2(ZOO_UNIT_TEST, stage / "ci" / "unit_tests" / ZOO_UNIT_TEST.name)
        (stage / "setup.cfg").write_text(ZOO_SETUP_CFG)
        (stage / "pyproject.toml").write_text(ZOO_PYPROJECT)
        if make_zip:
            with zipfile.ZipFile(stage / f"{BUNDLE_NAME}.zip", "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(p for p in target.rglob("*") if p.is_file()):
                    zf.write(path, Path(BUNDLE_NAME) / path.relative_to(target))
        old = None
        if out_dir.exists():
            old = out_dir.with_name(out_dir.name + f".old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(stage, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    logger.info("zoo bundle in %s", out_dir)
    return out_dir / "models" / BUNDLE_NAME


def fetch_large_files(bundle_dir: str | Path, weights_source: str | Path) -> list[Path]:
    """Offline stand-in for the zoo's ``download_large_files``: each ``large_files.yml`` entry is copied from
    ``weights_source/<path>`` instead of its URL, and must have the declared hash."""
    bundle_dir, weights_source = Path(bundle_dir), Path(weights_source)
    out = []
    for e in read_large_files(bundle_dir):
        src, dst = weights_source / e["path"], bundle_dir / e["path"]
        if not src.is_file():
            raise FileNotFoundError(f"{src}: no local copy of {e['url']}")
        got = file_hash(src, e["hash_type"])
        if got != e["hash_val"]:
            raise ValueError(f"{e['path']}: {e['hash_type']} {got} != {e['hash_val']} declared in large_files.yml")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        out.append(dst)
    return out


def _run(cmd: list[str], cwd: Path) -> str:
    """'ok', or the command's output when it fails."""
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    if res.returncode == 0:
        return "ok"
    return (res.stdout + res.stderr).strip()[-3000:] or f"exit code {res.returncode}"


def _tool(name: str) -> str:
    """A console script of this Python environment (black, flake8, pre-commit hooks)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            raise FileNotFoundError(f"{name} is not installed: pip install -e '.[dev]'")
        return found
    return str(path)


def style_checks(root: Path) -> dict[str, str]:
    """black, isort and flake8(-bugbear) on ``models/`` and ``ci/`` of a zoo layout, with the zoo's settings."""
    root = Path(root).resolve()
    targets = [p for p in ("models", "ci") if (root / p).is_dir()]
    py = sys.executable
    return {
        "black --check (line length 120)": _run(
            [py, "-m", "black", "--check", "--config", str(root / "pyproject.toml"), *targets], root
        ),
        "isort --check-only (profile black, 120)": _run(
            [py, "-m", "isort", "--check-only", "--settings-path", str(root / "setup.cfg"), *targets], root
        ),
        "flake8 + flake8-bugbear (zoo's selection)": _run(
            [py, "-m", "flake8", "--config", str(root / "setup.cfg"), *targets], root
        ),
    }


def pre_commit_checks(bundle_dir: Path) -> dict[str, str]:
    """The zoo's pre-commit hooks on a scratch copy of ``bundle_dir`` (the fixers would edit files)."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="zoo-pre-commit-") as tmp:
        copy = Path(tmp) / bundle_dir.name
        shutil.copytree(bundle_dir, copy)
        files = [p for p in sorted(copy.rglob("*")) if p.is_file()]
        # check-case-conflict and check-added-large-files ask git: the copy becomes a repository with all files added
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"]):
            subprocess.run(cmd, cwd=copy, capture_output=True, check=True, timeout=120)
        for hook, args, wanted in PRE_COMMIT_HOOKS:
            selected = [str(p.relative_to(copy)) for p in files if wanted(p)]
            if not selected:
                results[f"pre-commit {hook}"] = "ok"
                continue
            results[f"pre-commit {hook}"] = _run([_tool(hook), *args, *selected], copy)
    return results


def verify_bundle_checks(bundle_dir: Path, schema: Path, weights_source: Path | None, device: str = "cpu") -> dict:
    """What the zoo's ``ci/verify_bundle.py`` checks in its ``min`` and ``full`` modes, on a scratch copy (the
    weights are fetched into it and ``ckpt_export`` writes into its ``models/``)."""
    from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

    results: dict[str, str] = {}

    def check(name: str, fn: Callable[[], object]) -> None:
        try:
            fn()
            results[name] = "ok"
        except Exception as e:  # a failed check is reported with the others, not raised
            results[name] = f"{type(e).__name__}: {e}"

    with tempfile.TemporaryDirectory(prefix="zoo-verify-") as tmp:
        b = Path(tmp) / bundle_dir.name
        shutil.copytree(bundle_dir, b)
        meta, infer = str(b / "configs" / "metadata.json"), str(b / "configs" / "inference.json")

        def directory() -> None:
            if weights_source is not None:
                fetch_large_files(b, weights_source)
            for rel in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"):
                if not (b / rel).is_file():
                    raise FileNotFoundError(f"{rel} is missing")

        def version() -> None:
            md = json.loads(Path(meta).read_text())
            if md.get("version") not in md.get("changelog", {}):
                raise ValueError(f"version {md.get('version')!r} is not in the changelog")

        def properties() -> None:
            wf = ConfigWorkflow(
                config_file=infer,
                meta_file=meta,
                logging_file=str(b / "configs" / "logging.conf"),
                workflow_type="inference",
                bundle_root=str(b),
            )
            wf.initialize()
            missing = wf.check_properties()
            if missing:
                raise ValueError(f"missing properties: {missing}")

        def export() -> None:
            import torch

            ts = b / "models" / "verify_model.ts"
            ckpt_export(
                net_id="network_def",
                filepath=str(ts),
                ckpt_file=str(b / "models" / "model.pt"),
                meta_file=meta,
                config_file=infer,
                bundle_root=str(b),
            )
            torch.jit.load(str(ts))

        added = str(b) not in sys.path
        if added:
            sys.path.insert(0, str(b))  # as verify_bundle.py does, so that the bundle's scripts import
        try:
            check("verify_bundle_directory (large files fetched, hash checked)", directory)
            check("verify_version_changes (version in changelog)", version)
            check("verify_metadata_format (zoo schema)", lambda: verify_metadata(meta_file=meta, filepath=str(schema)))
            check("verify_bundle_properties (inference workflow)", properties)
            check(
                f"verify_data_shape (verify_net_in_out, n=1, {device})",
                lambda: verify_net_in_out(
                    net_id="network_def", meta_file=meta, config_file=infer, bundle_root=str(b), n=1, device=device
                ),
            )
            check("verify_torchscript (ckpt_export + torch.jit.load)", export)
        finally:
            if added:
                sys.path.remove(str(b))
            for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
                del sys.modules[name]  # the scratch copy's package; the next import finds the right one
    return results


def check_zoo_bundle(
    root: str | Path = DEFAULT_OUT,
    schema: str | Path = DEFAULT_SCHEMA,
    weights_source: str | Path | None = DEFAULT_BUNDLE,
    device: str = "cpu",
    unit_tests: bool = False,
) -> dict[str, str]:
    """Run the offline zoo checks on a built zoo layout ``root``; return ``{check: "ok"}`` or raise
    :class:`ZooCheckError` listing every failed check. ``unit_tests`` also runs ``ci/unit_tests`` there (a tiny
    training, evaluation and inference from the configs; about a minute on 2 cores)."""
    root = Path(root).resolve()
    bundle = root / "models" / BUNDLE_NAME
    if not (bundle / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"{bundle} is not a built zoo bundle: run `make zoo-bundle` first")
    results = {}
    results.update(pre_commit_checks(bundle))
    results.update(style_checks(root))
    results.update(verify_bundle_checks(bundle, Path(schema), Path(weights_source) if weights_source else None, device))
    if unit_tests:
        tests = sorted(str(p.relative_to(root)) for p in (root / "ci" / "unit_tests").glob("test_*.py"))
        name = "ci/unit_tests (" + ", ".join(Path(t).name for t in tests) + ")"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
        results[name] = _run(cmd, root) if tests else "no unit test in ci/unit_tests"
    if any(v != "ok" for v in results.values()):
        raise ZooCheckError(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m liverseg.zoo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lf = sub.add_parser("large-files", help="write <bundle>/large_files.yml (URL + sha256 of models/model.pt)")
    lf.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    lf.add_argument("--url", default=RELEASE_URL, help="URL pattern with {name}, {version}, {file}")
    b = sub.add_parser("build", help="lay out the zoo submission (and a zip of the bundle)")
    b.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    b.add_argument("--out", default=str(DEFAULT_OUT))
    b.add_argument("--no-zip", action="store_true")
    c = sub.add_parser("check", help="run the zoo's offline checks on a built layout")
    c.add_argument("--out", default=str(DEFAULT_OUT))
    c.add_argument("--schema", default=str(DEFAULT_SCHEMA))
    c.add_argument("--weights-from", default=str(DEFAULT_BUNDLE), help="bundle folder with the weights to fetch")
    c.add_argument("--device", default="cpu")
    c.add_argument("--unit-tests", action="store_true", help="also run ci/unit_tests on the folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "large-files":
        logger.info("wrote %s", write_large_files(args.bundle, args.url))
    elif args.command == "build":
        folder = build_zoo_bundle(args.bundle, args.out, make_zip=not args.no_zip)
        logger.info("bundle folder: %s", folder)
    else:
        try:
            results = check_zoo_bundle(args.out, args.schema, args.weights_from, args.device, args.unit_tests)
        except ZooCheckError as e:
            for name, res in e.results.items():
                if res == "ok":
                    logger.info("%-60s ok", name)
                else:
                    logger.error("%-60s FAILED\n%s", name, res)
            return 1
        for name in results:
            logger.info("%-60s ok", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
