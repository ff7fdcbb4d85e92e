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

``run_zoo_ci`` runs the zoo's own scripts instead, in a local checkout of the model zoo (``make zoo-ci
ZOO_CHECKOUT=DIR``): the built bundle is copied into ``DIR/models/``, then each hook of ``DIR/.pre-commit-config.yaml``
is run directly (its tool and arguments, from ``.cache/zoo-tools-venv``), isort / black / flake8 as ``runtests.sh
--codeformat`` runs them, ``DIR/ci/verify_bundle.py`` in ``min`` and ``full`` modes with CUDA hidden, and its
GPU-path functions (``verify_net_in_out``, ``verify_torchscript``) with ``device="cpu", n=1``.

Command line: ``python -m liverseg.zoo {large-files,build,check,zoo-ci}`` (``make zoo-bundle`` runs build and check).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
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
            # the zoo's runtests.sh --codeformat runs black with --skip-magic-trailing-comma
            [py, "-m", "black", "--check", "--skip-magic-trailing-comma", "--config", str(root / "pyproject.toml")]
            + targets,
            root,
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


# --- the model zoo's own CI scripts, run on a local checkout of the zoo (``zoo-ci``) ---------------------------------

ZOO_CLONE_URL = "https://github.com/Project-MONAI/model-zoo"
DEFAULT_TOOLS_VENV = REPO / ".cache" / "zoo-tools-venv"
# The hooks of pre-commit/pre-commit-hooks (rev v5.0.0, its .pre-commit-hooks.yaml) and of the formatter repositories
# the zoo's config has had: hook id -> (console script, file types the hook takes; all must match). pre-commit passes
# a hook only the files of its types; a hook with no such file is skipped.
HOOK_TOOLS: dict[str, tuple[str, tuple[str, ...]]] = {
    "check-added-large-files": ("check-added-large-files", ()),
    "check-ast": ("check-ast", ("python",)),
    "check-case-conflict": ("check-case-conflict", ()),
    "check-docstring-first": ("check-docstring-first", ("python",)),
    "check-executables-have-shebangs": ("check-executables-have-shebangs", ("text", "executable")),
    "check-json": ("check-json", ("json",)),
    "check-merge-conflict": ("check-merge-conflict", ("text",)),
    "check-shebang-scripts-are-executable": ("check-shebang-scripts-are-executable", ("text",)),
    "check-toml": ("check-toml", ("toml",)),
    "check-xml": ("check-xml", ("xml",)),
    "check-yaml": ("check-yaml", ("yaml",)),
    "debug-statements": ("debug-statement-hook", ("python",)),
    "detect-private-key": ("detect-private-key", ("text",)),
    "end-of-file-fixer": ("end-of-file-fixer", ("text",)),
    "fix-byte-order-marker": ("fix-byte-order-marker", ("text",)),
    "forbid-new-submodules": ("forbid-new-submodules", ("directory",)),
    "mixed-line-ending": ("mixed-line-ending", ("text",)),
    "pretty-format-json": ("pretty-format-json", ("json",)),
    "trailing-whitespace": ("trailing-whitespace-fixer", ("text",)),
    "black": ("black", ("python",)),
    "isort": ("isort", ("python",)),
    "flake8": ("flake8", ("python",)),
    "pyupgrade": ("pyupgrade", ("python",)),
}
_EXTENSION_TAGS = {".py": "python", ".json": "json", ".yml": "yaml", ".yaml": "yaml", ".toml": "toml", ".xml": "xml"}


class ZooCheckoutMissing(FileNotFoundError):
    """The folder given as the model zoo checkout is not one."""


@dataclasses.dataclass(frozen=True)
class PreCommitHook:
    """One hook of a ``.pre-commit-config.yaml``: what pre-commit would run and on which files."""

    repo: str
    rev: str
    id: str
    args: tuple[str, ...] = ()
    files: str = ""  # regular expressions searched in the path relative to the repository root, as pre-commit does
    exclude: str = "^$"


def read_pre_commit_config(path: str | Path) -> list[PreCommitHook]:
    """The hooks of a pre-commit config in their order (commented-out ones are not hooks); the config's top-level
    ``files`` / ``exclude`` are combined with each hook's own."""
    import yaml

    config = yaml.safe_load(Path(path).read_text()) or {}
    top_files, top_exclude = config.get("files", ""), config.get("exclude", "^$")
    hooks = []
    for repo in config.get("repos") or []:
        for hook in repo.get("hooks") or []:
            excludes = [e for e in (top_exclude, hook.get("exclude", "^$")) if e != "^$"]
            hooks.append(
                PreCommitHook(
                    repo=str(repo.get("repo", "")),
                    rev=str(repo.get("rev", "")),
                    id=str(hook["id"]),
                    args=tuple(str(a) for a in hook.get("args") or ()),
                    files="|".join(f"(?:{f})" for f in (top_files, hook.get("files", "")) if f),
                    exclude="|".join(f"(?:{e})" for e in excludes) or "^$",
                )
            )
    return hooks


def file_tags(path: Path) -> set[str]:
    """The pre-commit (``identify``) tags of ``path`` that the hooks above select on."""
    if path.is_dir():
        return {"directory"}
    tags = {"file"}
    with open(path, "rb") as f:
        head = f.read(8192)
    tags.add("binary" if b"\0" in head else "text")
    if path.suffix in _EXTENSION_TAGS:
        tags.add(_EXTENSION_TAGS[path.suffix])
    tags.add("executable" if os.access(path, os.X_OK) else "non-executable")
    return tags


def hook_files(hook: PreCommitHook, files: list[str], root: Path) -> list[str] | None:
    """The files (relative to ``root``) that pre-commit would pass to ``hook``; None for a hook with no known tool."""
    if hook.id not in HOOK_TOOLS:
        return None
    types = set(HOOK_TOOLS[hook.id][1])
    return [
        f
        for f in files
        if (not hook.files or re.search(hook.files, f))
        and not re.search(hook.exclude, f)
        and types <= file_tags(root / f)
    ]


def _tools_bin(tools_venv: Path | None) -> Path:
    if tools_venv is not None and (tools_venv / "bin").is_dir():
        return tools_venv / "bin"
    return Path(sys.executable).parent


def run_pre_commit_hooks(
    checkout: Path, files: list[str], tools_venv: Path | None = DEFAULT_TOOLS_VENV
) -> dict[str, str]:
    """Each hook of ``checkout/.pre-commit-config.yaml`` run directly (its console script, its args) on ``files``
    (relative to the checkout), as pre-commit would without cloning the hook repositories. The fixers fix in place:
    a hook that changed a file fails, as in pre-commit. ``check-added-large-files`` gets ``--enforce-all`` (every file
    of the submission counts as added, whatever git's index holds)."""
    bindir = _tools_bin(tools_venv)
    results: dict[str, str] = {}
    for hook in read_pre_commit_config(checkout / ".pre-commit-config.yaml"):
        name = f"pre-commit {hook.id} {' '.join(hook.args)}".rstrip()
        if name in results:
            name += " (again)"
        selected = hook_files(hook, files, checkout)
        if selected is None:
            results[name] = f"not run: no local tool known for hook {hook.id!r} of {hook.repo}"
            continue
        if not selected:
            results[name] = "ok"  # pre-commit: "(no files to check) Skipped"
            continue
        tool = bindir / HOOK_TOOLS[hook.id][0]
        if not tool.exists():
            results[name] = f"not run: {tool} is missing (pip install pre-commit-hooks=={hook.rev.lstrip('v')})"
            continue
        extra = ["--enforce-all"] if hook.id == "check-added-large-files" else []
        results[name] = _run([str(tool), *hook.args, *extra, *selected], checkout)
    return results


def zoo_code_format_checks(checkout: Path, targets: list[str], tools_venv: Path | None = DEFAULT_TOOLS_VENV) -> dict:
    """isort, black and flake8 as the zoo's ``runtests.sh --codeformat`` runs them, with the checkout's settings
    (``setup.cfg``, ``pyproject.toml``), on ``targets`` (relative to the checkout)."""
    bindir = _tools_bin(tools_venv)
    return {
        "runtests.sh --codeformat: isort --check": _run([str(bindir / "isort"), "--check", *targets], checkout),
        "runtests.sh --codeformat: black --skip-magic-trailing-comma --check": _run(
            [str(bindir / "black"), "--skip-magic-trailing-comma", "--check", *targets], checkout
        ),
        "runtests.sh --codeformat: flake8": _run([str(bindir / "flake8"), *targets, "--count"], checkout),
    }


# Run from the checkout root with ci/ on the path: the GPU-path functions of ci/verify_bundle.py, on the CPU with n=1.
_GPU_PATH_ON_CPU = """
import os, sys
sys.path[:0] = ["ci", {bundle_path!r}]
import torch
import verify_bundle
from monai.bundle import verify_net_in_out
b = {bundle_path!r}
verify_net_in_out(net_id=verify_bundle._get_net_id({bundle!r}), meta_file=os.path.join(b, "configs/metadata.json"),
                  config_file=os.path.join(b, "configs/inference.json"), bundle_root=b, device="cpu", n=1)
model_name, ts_name = verify_bundle._get_weights_names({bundle!r})
verify_bundle.verify_torchscript(b, verify_bundle._get_net_id({bundle!r}), "configs/inference.json", model_name,
                                 ts_name)
torch.jit.load(os.path.join(b, "models/verify_model.ts"), map_location="cpu")
"""


def install_into_zoo_checkout(checkout: Path, built: Path, schema: Path, weights_source: Path) -> list[str]:
    """Copy the built submission into the checkout (``models/<bundle>``, ``ci/unit_tests``), return its files
    (relative to the checkout), then do offline what the zoo's CI does before ``verify_bundle.py``: the metadata
    schema into ``eval/schema.json`` (``prepare_schema.py``; our copy when it is the schema the metadata names) and
    the weights where ``large_files.yml`` puts them (``download_large_files`` then finds them, checks their hash and
    downloads nothing)."""
    src, dst = built / "models" / BUNDLE_NAME, checkout / "models" / BUNDLE_NAME
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    files = [str(p.relative_to(checkout)) for p in sorted(dst.rglob("*")) if p.is_file()]
    for test in sorted((built / "ci" / "unit_tests").glob("test_*.py")):
        (checkout / "ci" / "unit_tests").mkdir(parents=True, exist_ok=True)
        shutil.copy2(test, checkout / "ci" / "unit_tests" / test.name)
        files.append(f"ci/unit_tests/{test.name}")
    schema_url = json.loads((dst / "configs" / "metadata.json").read_text())["schema"]
    (dst / "eval").mkdir(exist_ok=True)
    if schema.name == schema_url.rsplit("/", 1)[-1]:
        shutil.copy2(schema, dst / "eval" / "schema.json")
    else:  # another schema than our copy: let the zoo's script download it
        subprocess.run([sys.executable, "ci/prepare_schema.py", "--l", BUNDLE_NAME], cwd=checkout, check=True)
    fetch_large_files(dst, weights_source)
    return files


def run_zoo_ci(
    checkout: str | Path,
    built: str | Path = DEFAULT_OUT,
    schema: str | Path = DEFAULT_SCHEMA,
    weights_source: str | Path = DEFAULT_BUNDLE,
    tools_venv: str | Path | None = DEFAULT_TOOLS_VENV,
    unit_tests: bool = False,
) -> dict[str, str]:
    """The zoo's own CI scripts on the built submission, in a local checkout of the model zoo: pre-commit hooks per
    its config, its code-format checks, ``ci/verify_bundle.py`` in ``min`` and ``full`` modes (CUDA hidden, so its
    GPU steps run on the CPU at n=1) and those GPU-path functions called with ``device="cpu", n=1``; with
    ``unit_tests``, ``ci/unit_tests/runner.py``. Returns ``{check: "ok" or what went wrong}``."""
    checkout, built = Path(checkout).resolve(), Path(built).resolve()
    tools = Path(tools_venv).resolve() if tools_venv else None
    if not (checkout / "ci" / "verify_bundle.py").is_file() or not (checkout / ".pre-commit-config.yaml").is_file():
        raise ZooCheckoutMissing(
            f"{checkout} is not a checkout of the MONAI model zoo (no ci/verify_bundle.py or .pre-commit-config.yaml):"
            f" git clone {ZOO_CLONE_URL} {checkout}"
        )
    if not (built / "models" / BUNDLE_NAME / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"{built} holds no built zoo bundle: run `make zoo-bundle` first")
    files = install_into_zoo_checkout(checkout, built, Path(schema), Path(weights_source))
    results = run_pre_commit_hooks(checkout, files, tools)
    py_files = [f for f in files if f.endswith(".py")]
    results.update(zoo_code_format_checks(checkout, py_files, tools))
    env = {**os.environ, "PYTHONPATH": str(checkout), "CUDA_VISIBLE_DEVICES": ""}

    def run(cmd: list[str]) -> str:
        res = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=1800, check=False)
        return "ok" if res.returncode == 0 else (res.stdout + res.stderr).strip()[-3000:]

    verify = [sys.executable, "ci/verify_bundle.py", "-b", BUNDLE_NAME]
    results[f"ci/verify_bundle.py -b {BUNDLE_NAME} -m min"] = run([*verify, "-m", "min"])
    results[f"ci/verify_bundle.py -b {BUNDLE_NAME} -m full (CUDA hidden: CPU, n=1)"] = run([*verify, "-m", "full"])
    code = _GPU_PATH_ON_CPU.format(bundle=BUNDLE_NAME, bundle_path=f"models/{BUNDLE_NAME}")
    results["verify_net_in_out(device='cpu', n=1) + verify_torchscript"] = run([sys.executable, "-c", code])
    if unit_tests:
        runner = [sys.executable, "ci/unit_tests/runner.py", "--b", BUNDLE_NAME]
        results[f"ci/unit_tests/runner.py --b {BUNDLE_NAME}"] = run(runner)
    return results


def print_results_table(results: dict[str, str]) -> None:
    width = max(len(k) for k in results)
    for name, res in results.items():
        print(f"{name:<{width}}  {'pass' if res == 'ok' else 'FAIL'}")
    for name, res in results.items():
        if res != "ok":
            print(f"\n--- {name}:\n{res}")
    failed = sum(r != "ok" for r in results.values())
    print(f"\n{len(results) - failed} passed, {failed} failed")


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
    z = sub.add_parser("zoo-ci", help="run the zoo's own CI scripts on the built layout, in a local zoo checkout")
    z.add_argument("--zoo-checkout", required=True, help=f"a clone of {ZOO_CLONE_URL} (models/ is written into)")
    z.add_argument("--out", default=str(DEFAULT_OUT), help="the built layout (make zoo-bundle)")
    z.add_argument("--schema", default=str(DEFAULT_SCHEMA))
    z.add_argument("--weights-from", default=str(DEFAULT_BUNDLE), help="bundle folder with the weights to fetch")
    z.add_argument("--tools-venv", default=str(DEFAULT_TOOLS_VENV), help="venv with pre-commit-hooks, black, ...")
    z.add_argument("--unit-tests", action="store_true", help="also run ci/unit_tests/runner.py (if the zoo has it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "large-files":
        logger.info("wrote %s", write_large_files(args.bundle, args.url))
    elif args.command == "build":
        folder = build_zoo_bundle(args.bundle, args.out, make_zip=not args.no_zip)
        logger.info("bundle folder: %s", folder)
    elif args.command == "zoo-ci":
        try:
            results = run_zoo_ci(
                args.zoo_checkout, args.out, args.schema, args.weights_from, args.tools_venv, args.unit_tests
            )
        except (ZooCheckoutMissing, FileNotFoundError) as e:
            print(f"zoo-ci: {e}", file=sys.stderr)
            return 2
        print_results_table(results)
        return 0 if all(v == "ok" for v in results.values()) else 1
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
