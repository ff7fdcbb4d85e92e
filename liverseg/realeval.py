"""The real-CT table: convert real scans with expert labels, run the default bundle, score, draw, check targets.

One command (``make real-eval`` / ``liverseg real-eval``) does, for the 3D-IRCADb-01 patients in
``../shared/data/3Dircadb1-real`` (or ``--source``; any folder :func:`liverseg.convert.ircadb.find_patients`
accepts):

1. **convert** them with the project's converter (:func:`liverseg.convert.ircadb.convert_ircadb`) into
   ``OUT/dataset`` (kept between runs while the source files are unchanged);
2. decide per case what can be scored: a case whose reference tumor lies mostly *outside* the reference liver
   mask (3Dircadb1.7: its only tumor mask, ``tumor``, lies 99.97 % outside the liver, beside the right kidney) is
   scored **liver-only**: its reference becomes the liver mask alone, predicted tumor counts as liver, and it is
   left out of every tumor and lesion figure (its liver holds no labelled liver tumor, so tumor truth is unknown);
3. run the bundle through its **own inference config** (``configs/inference.json``, in a subprocess from the
   bundle folder, as ``make score-weights`` does), with optional config overrides (the ablations);
4. score with :func:`liverseg.evaluation.evaluate_folder` (``liverseg evaluate``): Dice, HD95, ASSD, volume errors,
   lesion detection by size (<10, 10-20, >=20 mm) and false-positive lesions per case;
5. write ``real_eval.md`` and ``real_eval.json`` (date, versions, weights SHA-256, per-case table, targets) and
   overlay pictures (``pictures/``: axial and coronal through the liver, and through each missed or false lesion;
   truth vs prediction contours);
6. check the targets of issue 14's Show list (:data:`TARGETS`); the command exits 1 when one is missed
   (``--report-only``: always 0 after a complete run).

3D-IRCADb is CC BY-NC-ND: everything is written under ``OUT`` (default ``.cache/real-eval``, git-ignored), never
into the repository; figures measured on it may be reported.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from liverseg import LABELS, __version__
from liverseg.errors import InputError, LiverSegError
from liverseg.imageio import atomic_path, read_nifti, spacing_of, write_json, write_nifti

__all__ = [
    "DEFAULT_SOURCE",
    "DEFAULT_OUT",
    "DEFAULT_BUNDLE",
    "LIVER_ONLY_OUTSIDE_FRACTION",
    "TARGETS",
    "Target",
    "CaseInfo",
    "skip_reason",
    "prepare_dataset",
    "run_bundle_inference",
    "check_targets",
    "real_eval",
    "compare_with_recorded",
    "record_figures",
    "register_cli",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "3Dircadb1-real"
"""The shared folder of real 3D-IRCADb-01 patients (absent on a fresh clone: the command then skips)."""
DEFAULT_OUT = REPO_ROOT / ".cache" / "real-eval"
DEFAULT_BUNDLE = REPO_ROOT / "bundles" / "liver_ct_seg"
SOURCE_ENV = "LIVERSEG_REAL_DATA"
"""Environment variable naming another source folder (``--source`` wins over it)."""
LIVER_ONLY_OUTSIDE_FRACTION = 0.5
"""A case whose reference tumor voxels lie more than this fraction outside the reference liver mask is scored
liver-only: such a mask is not a liver tumor (3Dircadb1.7's ``tumor``: 99.97 % outside, beside the kidney)."""
_LIVER, _TUMOR = LABELS["liver"], LABELS["tumor"]
_STAMP = "real_eval_dataset.json"


@dataclass(frozen=True)
class Target:
    """One target of issue 14's Show list: ``metric`` ``op`` ``value`` on each case of ``scope``.

    ``scope``: ``"all"`` (every case) or ``"tumor"`` (cases scored with tumors, i.e. not liver-only).
    ``absolute``: compare the absolute value (volume error).
    """

    metric: str
    op: str
    value: float
    scope: str
    text: str
    absolute: bool = False

    def passes(self, x: float) -> bool:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return False
        v = abs(x) if self.absolute else x
        return v >= self.value if self.op == ">=" else v <= self.value


TARGETS: tuple[Target, ...] = (
    Target("liver_dice", ">=", 0.93, "all", "liver Dice >= 0.93 on each case"),
    Target("tumor_dice", ">=", 0.65, "tumor", "tumor Dice >= 0.65 on each case scored with tumors"),
    Target("lesion_fp", "<=", 1, "tumor", "<= 1 false-positive lesion per case"),
    Target("liver_vol_err_pct", "<=", 5.0, "all", "liver volume error <= 5 %", absolute=True),
    Target("liver_hd95_mm", "<=", 15.0, "all", "liver HD95 <= 15 mm"),
)
"""Issue 14's targets for the shipped weights on the real table."""


@dataclass
class CaseInfo:
    """A converted case and how it is scored."""

    case: str
    patient_dir: str
    liver_only: bool
    tumor_voxels: int
    tumor_outside_liver_fraction: float
    reason: str = ""
    spacing_mm: tuple[float, ...] = field(default_factory=tuple)
    shape: tuple[int, ...] = field(default_factory=tuple)


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------


def resolve_source(source: str | Path | None) -> Path:
    """``source``, else ``$LIVERSEG_REAL_DATA``, else :data:`DEFAULT_SOURCE`."""
    if source:
        return Path(source)
    return Path(os.environ.get(SOURCE_ENV) or DEFAULT_SOURCE)


def skip_reason(source: Path) -> str | None:
    """A one-line reason why there is nothing to evaluate in ``source``, or None when it holds patients."""
    from liverseg.convert.ircadb import find_patients

    source = Path(source)
    if not source.is_dir():
        return (
            f"real CT folder {source} not found (3D-IRCADb-01 patients, CC BY-NC-ND; not distributed with the "
            f"project: pass --source or set {SOURCE_ENV})"
        )
    try:
        find_patients(source)
    except InputError as e:
        return f"no 3D-IRCADb patient in {source}: {e.reason}"
    return None


def _fingerprint(source: Path) -> list[list[Any]]:
    """Names, sizes and modification times of the files under ``source`` (two levels): the conversion's key."""
    items = []
    for p in sorted(source.rglob("*")):
        if p.is_file() and len(p.relative_to(source).parts) <= 3:
            st = p.stat()
            items.append([str(p.relative_to(source)), st.st_size, int(st.st_mtime)])
    return items


def _liver_mask(patient_dir: Path, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The patient's reference liver mask on the converted grid (the converter's own reading and grid check)."""
    from liverseg.convert.ircadb import LIVER_NAMES, MASKS_DIR, _mask_on_grid, _open_part

    with _open_part(patient_dir, MASKS_DIR) as masks_dir:
        if masks_dir is None:
            raise InputError(patient_dir, f"no {MASKS_DIR} folder or {MASKS_DIR}.zip")
        found = [p for p in masks_dir.iterdir() if p.is_dir() and p.name.lower() in LIVER_NAMES]
        if len(found) != 1:
            raise InputError(masks_dir, f"expected one liver mask folder, found {[p.name for p in found]}")
        return _mask_on_grid(found[0], tuple(shape), affine, None)


def prepare_dataset(source: Path, dataset_dir: Path, *, reuse: bool = True) -> list[CaseInfo]:
    """Convert ``source`` into ``dataset_dir`` (nnU-Net layout, ``imagesTs``/``labelsTs``) and decide per case
    whether it is scored liver-only; write the scoring references into ``dataset_dir/scoring_labels``.

    A previous conversion is reused when ``reuse`` and its record (``real_eval_dataset.json``) names the same source
    files (names, sizes, modification times) and liverseg version. The folder is built beside ``dataset_dir`` and
    renamed into place, so an interrupted run leaves the previous one (or nothing).

    Returns:
        one :class:`CaseInfo` per patient, sorted by case id.
    """
    from liverseg.convert.ircadb import convert_ircadb, find_patients

    source, dataset_dir = Path(source), Path(dataset_dir)
    key = {"source": str(source.resolve()), "files": _fingerprint(source), "liverseg": __version__}
    stamp = dataset_dir / _STAMP
    if reuse and stamp.is_file():
        try:
            record = json.loads(stamp.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("key") == key:
            logger.info("reusing the conversion in %s (source unchanged)", dataset_dir)
            return [CaseInfo(**{**c, "spacing_mm": tuple(c["spacing_mm"]), "shape": tuple(c["shape"])})
                    for c in record["cases"]]
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dataset_dir.name}.", suffix=".part", dir=dataset_dir.parent))
    try:
        convert_ircadb(source, tmp, dataset_name="3Dircadb1-real", split="Ts")
        patients = dict(find_patients(source))
        cases: list[CaseInfo] = []
        for label_path in sorted((tmp / "labelsTs").glob("*.nii.gz")):
            case = label_path.name[: -len(".nii.gz")]
            label, affine = read_nifti(label_path)
            tumor = label == _TUMOR
            n_tumor = int(tumor.sum())
            outside = 0.0
            liver = None
            if n_tumor:
                liver = _liver_mask(patients[case], label.shape, affine)
                outside = float(np.count_nonzero(tumor & ~liver)) / n_tumor
            liver_only = n_tumor > 0 and outside > LIVER_ONLY_OUTSIDE_FRACTION
            reason = ""
            if liver_only:
                reason = (
                    f"{100 * outside:.2f} % of its {n_tumor} reference tumor voxels lie outside the reference liver "
                    "mask: not a liver tumor, and no liver tumor is labelled; scored liver-only (reference = the "
                    "liver mask, predicted tumor counted as liver, left out of tumor and lesion figures)"
                )
                label = np.where(liver, _LIVER, 0).astype(np.uint8)
                logger.warning("%s: %s", case, reason)
            write_nifti(tmp / "scoring_labels" / label_path.name, label, affine, dtype=np.uint8)
            cases.append(
                CaseInfo(
                    case=case,
                    patient_dir=str(patients[case]),
                    liver_only=liver_only,
                    tumor_voxels=n_tumor,
                    tumor_outside_liver_fraction=outside,
                    reason=reason,
                    spacing_mm=tuple(round(s, 4) for s in spacing_of(affine)),
                    shape=tuple(int(s) for s in label.shape),
                )
            )
        if not cases:
            raise InputError(source, "the conversion wrote no labelled case")
        with atomic_path(tmp / _STAMP) as t:
            t.write_text(json.dumps({"key": key, "cases": [asdict(c) for c in cases]}, indent=2) + "\n")
        if dataset_dir.exists():
            shutil.rmtree(dataset_dir)
        os.replace(tmp, dataset_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return cases


# ----------------------------------------------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_bundle_inference(
    images: Sequence[Path],
    output_dir: Path,
    *,
    bundle_dir: Path = DEFAULT_BUNDLE,
    config_files: Sequence[str] = ("configs/inference.json",),
    overrides: dict[str, Any] | None = None,
    timeout_s: float | None = None,
) -> tuple[list[str], float]:
    """Run the bundle's inference config on ``images`` (``python -m monai.bundle run`` from ``bundle_dir``).

    Args:
        images: CT files.
        output_dir: where the masks go (``{case}_0000_seg.nii.gz``).
        bundle_dir: the bundle.
        config_files: config files relative to ``bundle_dir`` (or absolute), merged in order.
        overrides: config ids -> values, passed as ``--id json`` (e.g. ``{"ckpt_dir": "/w"}``).
        timeout_s: kill the run after this many seconds.

    Returns:
        ``(command, seconds)``.

    Raises:
        LiverSegError: the run failed (the end of its output is in the message).
    """
    bundle_dir = Path(bundle_dir).resolve()
    output_dir = Path(output_dir).resolve()
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", json.dumps(list(config_files)),
        "--meta_file", "configs/metadata.json",
        "--logging_file", "configs/logging.conf",
        "--input_files", json.dumps([str(Path(p).resolve()) for p in images]),
        "--output_dir", str(output_dir),
    ]
    for k, v in (overrides or {}).items():
        cmd += [f"--{k}", json.dumps(v)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(bundle_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    logger.info("inference: %s", shlex.join(cmd))
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=bundle_dir, env=env, capture_output=True, text=True, timeout=timeout_s)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        tail = (res.stdout[-2000:] + "\n" + res.stderr[-4000:]).strip()
        raise LiverSegError(f"bundle inference failed (exit {res.returncode}): {shlex.join(cmd)}\n{tail}")
    return cmd, seconds


# ----------------------------------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------------------------------


def _scoring_predictions(cases: list[CaseInfo], pred_dir: Path, out_dir: Path) -> None:
    """Predictions as scored: liver-only cases get predicted tumor as liver; the others are copied."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for c in cases:
        src = pred_dir / f"{c.case}_0000_seg.nii.gz"
        if not src.is_file():
            raise InputError(src, f"the bundle wrote no mask for case {c.case}")
        dst = out_dir / f"{c.case}.nii.gz"
        if c.liver_only:
            pred, affine = read_nifti(src)
            write_nifti(dst, np.where(pred > 0, _LIVER, 0).astype(np.uint8), affine, dtype=np.uint8)
        else:
            with atomic_path(dst) as t:
                shutil.copyfile(src, t)


_CASE_FIELDS = (
    "liver_dice", "liver_hd95_mm", "liver_assd_mm", "liver_ref_ml", "liver_pred_ml", "liver_vol_err_ml",
    "liver_vol_err_pct", "tumor_dice", "tumor_hd95_mm", "tumor_assd_mm", "tumor_ref_ml", "tumor_pred_ml",
    "tumor_vol_err_pct", "lesions_ref", "lesions_pred", "lesion_tp", "lesion_fn", "lesion_fp", "lesion_by_size",
)
_TUMOR_FIELDS = tuple(f for f in _CASE_FIELDS if f.startswith(("tumor_", "lesion")))


def _case_row(res: dict[str, Any], info: CaseInfo) -> dict[str, Any]:
    row: dict[str, Any] = {"case": info.case, "liver_only": info.liver_only}
    for f in _CASE_FIELDS:
        row[f] = None if info.liver_only and f in _TUMOR_FIELDS else res.get(f)
    if info.liver_only:  # what it predicted as tumor inside its liver, for information only
        row["predicted_lesions_not_scored"] = res.get("lesions_pred_before_liver_only")
    return row


def check_targets(rows: list[dict[str, Any]], targets: Sequence[Target] = TARGETS) -> list[dict[str, Any]]:
    """Each target against each case of its scope: ``[{target, case, value, passed}]``."""
    out = []
    for t in targets:
        for r in rows:
            if t.scope == "tumor" and r["liver_only"]:
                continue
            v = r.get(t.metric)
            out.append({"target": t.text, "metric": t.metric, "case": r["case"], "value": v, "passed": t.passes(v)})
    return out


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Real CT: {report['dataset']}",
        "",
        f"Date (UTC): {report['date_utc']}. Weights: `{report['weights']['path']}` SHA-256 "
        f"`{report['weights']['sha256'][:16]}...`; bundle {report['bundle_version']}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + ".",
        "",
        f"Inference: `{' '.join(report['inference']['config_files'])}`"
        + (f" with overrides `{json.dumps(report['inference']['overrides'])}`" if report["inference"]["overrides"]
           else "")
        + f", {report['inference']['seconds']:.1f} s for {len(report['cases'])} case(s) (one process).",
        "",
        "| case | liver Dice | liver HD95 (mm) | liver ASSD (mm) | liver vol. err. (%) | tumor Dice | tumor HD95 (mm) "
        "| tumor vol. err. (%) | lesions ref / TP / FN / FP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["cases"]:
        les = (
            "liver-only" if r["liver_only"]
            else f"{r['lesions_ref']} / {r['lesion_tp']} / {r['lesion_fn']} / {r['lesion_fp']}"
        )
        lines.append(
            f"| {r['case']} | {_fmt(r['liver_dice'])} | {_fmt(r['liver_hd95_mm'], 1)} | {_fmt(r['liver_assd_mm'], 2)} "
            f"| {_fmt(r['liver_vol_err_pct'], 1)} | "
            + ("liver-only | | | " if r["liver_only"] else
               f"{_fmt(r['tumor_dice'])} | {_fmt(r['tumor_hd95_mm'], 1)} | {_fmt(r['tumor_vol_err_pct'], 1)} | ")
            + f"{les} |"
        )
    s = report["summary"]
    lines += [
        "",
        f"Mean over cases: liver Dice {_fmt(s['liver_dice_mean'])}, liver HD95 {_fmt(s['liver_hd95_mm_mean'], 1)} mm, "
        f"liver volume error {_fmt(s['liver_abs_vol_err_pct_mean'], 1)} % (absolute); over the "
        f"{s['num_tumor_cases']} case(s) scored with tumors: tumor Dice {_fmt(s['tumor_dice_mean'])}, "
        f"false-positive lesions per case {_fmt(s['fp_lesions_per_case'], 2)}.",
        "",
        "| lesion size | reference | TP | FN | FP |",
        "|---|---|---|---|---|",
    ]
    for name, b in s["lesion_detection_by_size"].items():
        lines.append(f"| {name} | {b['tp'] + b['fn']} | {b['tp']} | {b['fn']} | {b['fp']} |")
    liver_only = [c for c in report["dataset_cases"] if c["liver_only"]]
    if liver_only:
        lines += [""] + [f"Liver-only: {c['case']}: {c['reason']}." for c in liver_only]
    lines += ["", "| target | case | value | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['case']} | {_fmt(t['value'])} | {'yes' if t['passed'] else '**no**'} |")
    missed = [t for t in report["targets"] if not t["passed"]]
    lines += ["", f"Targets missed: {len(missed)} of {len(report['targets'])}.", ""]
    if report.get("pictures"):
        lines += ["Pictures (green: reference liver, yellow: reference tumor, red: predicted liver, magenta: "
                  "predicted tumor):", ""]
        lines += [f"- `{p}`" for p in report["pictures"]]
    return "\n".join(lines) + "\n"


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"liverseg": __version__}
    for pkg in ("monai", "torch", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _git_commit() -> str:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return res.stdout.strip() if res.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def real_eval(
    source: str | Path | None = None,
    out_dir: str | Path = DEFAULT_OUT,
    *,
    bundle_dir: str | Path = DEFAULT_BUNDLE,
    config_files: Sequence[str] = ("configs/inference.json",),
    overrides: dict[str, Any] | None = None,
    pictures: bool = True,
    reuse_conversion: bool = True,
    targets: Sequence[Target] = TARGETS,
    dataset_dir: str | Path | None = None,
) -> dict[str, Any] | None:
    """Convert, infer, score, draw and check the targets (see the module docstring).

    Args:
        source: folder of 3D-IRCADb patients; default ``$LIVERSEG_REAL_DATA`` or :data:`DEFAULT_SOURCE`.
        out_dir: output folder (``dataset/``, ``pred/``, ``scoring/``, ``evaluate/``, ``pictures/``,
            ``real_eval.md``, ``real_eval.json``).
        bundle_dir: the bundle to run.
        config_files: its config files (relative to ``bundle_dir`` or absolute).
        overrides: config overrides for the run (e.g. ``{"ckpt_dir": ...}`` or a post-processing switch).
        pictures: draw the overlay pictures.
        reuse_conversion: reuse the conversion when the source is unchanged.
        targets: the targets to check.
        dataset_dir: where the converted dataset goes (default ``out_dir/dataset``; share one between runs).

    Returns:
        the report (as written to ``real_eval.json``), or None when ``source`` holds nothing to evaluate (the
        reason is logged; see :func:`skip_reason`).
    """
    from scipy import ndimage

    from liverseg.evaluation import evaluate_folder, summarize

    src = resolve_source(source)
    reason = skip_reason(src)
    if reason:
        logger.warning("real-eval skipped: %s", reason)
        return None
    out = Path(out_dir)
    bundle = Path(bundle_dir)
    overrides = dict(overrides or {})
    started = datetime.datetime.now(datetime.timezone.utc)
    dataset = Path(dataset_dir) if dataset_dir else out / "dataset"
    cases = prepare_dataset(src, dataset, reuse=reuse_conversion)
    images = [dataset / "imagesTs" / f"{c.case}_0000.nii.gz" for c in cases]
    pred_dir = out / "pred"
    if pred_dir.exists():
        shutil.rmtree(pred_dir)
    cmd, seconds = run_bundle_inference(
        images, pred_dir, bundle_dir=bundle, config_files=config_files, overrides=overrides
    )
    scoring = out / "scoring"
    if scoring.exists():
        shutil.rmtree(scoring)
    _scoring_predictions(cases, pred_dir, scoring / "pred")
    results: list[dict[str, Any]] = []
    evaluate_folder(
        scoring / "pred", dataset / "scoring_labels", out_dir=out / "evaluate", case_results=results,
        command=f"liverseg evaluate {scoring / 'pred'} {dataset / 'scoring_labels'} --out {out / 'evaluate'}",
    )
    by_case = {r["case"]: r for r in results}
    missing = [c.case for c in cases if c.case not in by_case]
    if missing:
        raise LiverSegError(f"cases not evaluated: {missing}; see {out / 'evaluate' / 'summary.json'}")
    # lesions a liver-only case's prediction holds inside its liver (not scored: no tumor truth there)
    for c in cases:
        if c.liver_only:
            pred, _ = read_nifti(pred_dir / f"{c.case}_0000_seg.nii.gz")
            by_case[c.case]["lesions_pred_before_liver_only"] = int(
                ndimage.label(pred == _TUMOR, structure=np.ones((3, 3, 3), bool))[1]
            )
    rows = [_case_row(by_case[c.case], c) for c in cases]
    tumor_results = [by_case[c.case] for c in cases if not c.liver_only]
    pooled = summarize(tumor_results) if tumor_results else None

    def mean(values: list[Any]) -> float:
        v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
        return float(np.mean(v)) if v else float("nan")

    summary = {
        "num_cases": len(rows),
        "num_tumor_cases": len(tumor_results),
        "liver_dice_mean": mean([r["liver_dice"] for r in rows]),
        "liver_hd95_mm_mean": mean([r["liver_hd95_mm"] for r in rows]),
        "liver_abs_vol_err_pct_mean": mean([abs(r["liver_vol_err_pct"]) for r in rows]),
        "tumor_dice_mean": mean([r["tumor_dice"] for r in rows if not r["liver_only"]]),
        "tumor_global_dice": pooled["global_dice"]["tumor"] if pooled else None,
        "fp_lesions_per_case": pooled["fp_per_case"] if pooled else None,
        "lesion_detection_by_size": {
            k: {m: v[m] for m in ("tp", "fn", "fp")} for k, v in (pooled or {}).get("lesion_detection", {}).get(
                "by_size", {}).items()
        },
    }
    weights = Path(overrides.get("ckpt_dir") or (bundle / "models")) / "model.pt"
    try:
        bundle_version = json.loads((bundle / "configs" / "metadata.json").read_text()).get("version", "")
    except (OSError, ValueError):
        bundle_version = ""
    report: dict[str, Any] = {
        "dataset": f"{src.name} ({len(cases)} patient(s), 3D-IRCADb-01, CC BY-NC-ND)",
        "date_utc": started.isoformat(timespec="seconds"),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "bundle_version": bundle_version,
        "weights": {"path": str(weights), "sha256": sha256_of(weights) if weights.is_file() else ""},
        "inference": {"config_files": list(config_files), "overrides": overrides, "seconds": seconds,
                      "command": shlex.join(cmd)},
        "dataset_cases": [asdict(c) for c in cases],
        "cases": rows,
        "summary": summary,
        "targets": check_targets(rows, targets),
        "pictures": [],
        "conventions": {
            "liver": "labels 1+2 of the reference and of the prediction (liverseg evaluate)",
            "liver_only": f"a case whose reference tumor lies > {LIVER_ONLY_OUTSIDE_FRACTION:.0%} outside the "
            "reference liver mask: reference = liver mask, predicted tumor counted as liver, no tumor/lesion figures",
            "lesions": "26-connected components of label 2; detected = overlapped by predicted tumor; FP = predicted "
            "lesion overlapping no reference lesion; size = equivalent-sphere diameter, bins <10, 10-20, >=20 mm",
        },
    }
    if pictures:
        report["pictures"] = [
            str(p.relative_to(out))
            for p in draw_pictures(cases, dataset, scoring / "pred", out / "pictures", by_case)
        ]
    report["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(out / "real_eval.json", report)
    with atomic_path(out / "real_eval.md") as t:
        t.write_text(_markdown(report))
    logger.info("wrote %s and %s", out / "real_eval.md", out / "real_eval.json")
    return report


# ----------------------------------------------------------------------------------------------------------------
# pictures
# ----------------------------------------------------------------------------------------------------------------

_WINDOW = (-160.0, 240.0)  # abdomen W400/C40 for display


def _canonical(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(arr, affine))
    return np.asarray(img.dataobj), np.asarray(img.affine)


def _panel(ax: Any, ct: np.ndarray, ref: np.ndarray, pred: np.ndarray, aspect: float, title: str) -> None:
    """One picture: CT (display window) with reference (green liver, yellow tumor) and predicted (red liver,
    magenta tumor) contours. Arrays are already in display order (rows top to bottom, columns left to right)."""
    ax.imshow(ct, cmap="gray", vmin=_WINDOW[0], vmax=_WINDOW[1], aspect=aspect, interpolation="nearest")
    for mask, color, style in (
        (ref > 0, "lime", "solid"),
        (ref == _TUMOR, "yellow", "solid"),
        (pred > 0, "red", "dashed"),
        (pred == _TUMOR, "magenta", "dashed"),
    ):
        if mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=color, linewidths=0.8, linestyles=style)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def _views(ct: np.ndarray, ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], ijk: Sequence[int]):
    """Axial and coronal slices through ``ijk`` of RAS-canonical arrays, in radiological display (patient's right
    on the left, anterior / superior at the top)."""
    i, j, k = (int(v) for v in ijk)
    ax_sl = [a[::-1, ::-1, k].T for a in (ct, ref, pred)]
    co_sl = [a[::-1, j, ::-1].T for a in (ct, ref, pred)]
    return (ax_sl, spacing[1] / spacing[0]), (co_sl, spacing[2] / spacing[0])


def _draw(path: Path, ct, ref, pred, spacing, ijk, title: str) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.6), dpi=110)
    (axial, a_aspect), (coronal, c_aspect) = _views(ct, ref, pred, spacing, ijk)
    _panel(fig.add_subplot(1, 2, 1), *axial, a_aspect, f"{title}: axial, slice k={int(ijk[2])}")
    _panel(fig.add_subplot(1, 2, 2), *coronal, c_aspect, f"{title}: coronal, j={int(ijk[1])}")
    fig.tight_layout()
    with atomic_path(path) as t:
        fig.savefig(t, format="png")
    return path


def draw_pictures(
    cases: list[CaseInfo], dataset_dir: Path, pred_dir: Path, out_dir: Path, results: dict[str, dict[str, Any]]
) -> list[Path]:
    """Overlay pictures per case: axial + coronal through the reference liver's centre, and through the centre of
    each missed (FN) reference lesion and each false (FP) predicted lesion. Returns the files written."""
    from scipy import ndimage

    written: list[Path] = []
    for c in cases:
        ct, affine = read_nifti(dataset_dir / "imagesTs" / f"{c.case}_0000.nii.gz")
        ref, _ = read_nifti(dataset_dir / "scoring_labels" / f"{c.case}.nii.gz")
        pred, _ = read_nifti(pred_dir / f"{c.case}.nii.gz")
        ct_c, aff_c = _canonical(ct, affine)
        ref_c, _ = _canonical(ref, affine)
        pred_c, _ = _canonical(pred, affine)
        spacing = spacing_of(aff_c)
        to_canon = np.linalg.inv(aff_c) @ affine

        def canon_ijk(ijk: Sequence[float]) -> list[int]:
            p = to_canon @ np.array([*ijk, 1.0])
            return [int(np.clip(round(float(v)), 0, s - 1)) for v, s in zip(p[:3], ct_c.shape)]

        liver_centre = ndimage.center_of_mass(ref_c > 0) if (ref_c > 0).any() else [s / 2 for s in ct_c.shape]
        res = results[c.case]
        title = f"{c.case} liver Dice {res['liver_dice']:.3f}" + (" (liver-only)" if c.liver_only else "")
        written.append(_draw(out_dir / f"{c.case}_liver.png", ct_c, ref_c, pred_c, spacing,
                             [int(round(v)) for v in liver_centre], title))
        if c.liver_only:
            continue
        for les in res["lesions"]:
            if les["status"] not in ("FN", "FP"):
                continue
            what = "missed" if les["status"] == "FN" else "false"
            name = f"{c.case}_{les['status']}{les['lesion_id']:02d}.png"
            title = f"{c.case} {what} lesion {les['lesion_id']} ({les['diameter_mm']:.0f} mm)"
            written.append(_draw(out_dir / name, ct_c, ref_c, pred_c, spacing, canon_ijk(les["centroid_ijk"]), title))
    return written


# ----------------------------------------------------------------------------------------------------------------
# recorded figures (the regression guard)
# ----------------------------------------------------------------------------------------------------------------

RECORDED_METRICS = ("liver_dice", "liver_hd95_mm", "liver_vol_err_pct", "tumor_dice", "lesion_fp")
DEFAULT_TOLERANCE = {"liver_dice": 0.01, "tumor_dice": 0.02, "liver_hd95_mm": 2.0, "liver_vol_err_pct": 1.0,
                     "lesion_fp": 0}
"""How much worse than recorded a figure may come out before the guard fails (CPU runs are deterministic; the
margin covers library and thread-count rounding)."""


def record_figures(report: dict[str, Any], path: Path, note: str = "") -> Path:
    """Write the per-case figures of ``report`` as the recorded ones (the model card's JSON) at ``path``."""
    payload = {
        "date_utc": report["date_utc"],
        "weights_sha256": report["weights"]["sha256"],
        "bundle_version": report["bundle_version"],
        "inference_overrides": report["inference"]["overrides"],
        "note": note,
        "tolerance": DEFAULT_TOLERANCE,
        "cases": {
            r["case"]: {"liver_only": r["liver_only"], **{m: r[m] for m in RECORDED_METRICS}} for r in report["cases"]
        },
    }
    write_json(Path(path), payload, indent=4)  # the bundle's JSON style (the zoo's pretty-format-json --indent=4)
    return Path(path)


def compare_with_recorded(report: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    """Figures of ``report`` worse than ``recorded`` by more than its tolerance: one line each (empty = no
    regression). Higher is better for Dice; lower is better for HD95, FP lesions and absolute volume error."""
    tol = {**DEFAULT_TOLERANCE, **recorded.get("tolerance", {})}
    rows = {r["case"]: r for r in report["cases"]}
    problems = []
    for case, rec in recorded["cases"].items():
        if case not in rows:
            problems.append(f"{case}: recorded but not evaluated")
            continue
        row = rows[case]
        for m in RECORDED_METRICS:
            old, new = rec.get(m), row.get(m)
            if old is None:
                continue
            if new is None:
                problems.append(f"{case} {m}: recorded {old}, now not computed")
                continue
            if m.endswith("_dice"):
                worse = new < old - tol[m]
            elif m == "liver_vol_err_pct":
                worse = abs(new) > abs(old) + tol[m]
            else:
                worse = new > old + tol[m]
            if worse:
                problems.append(f"{case} {m}: {new:.4g} vs recorded {old:.4g} (tolerance {tol[m]:g})")
    if problems and recorded.get("weights_sha256") and recorded["weights_sha256"] != report["weights"]["sha256"]:
        problems.append("the weights differ from the recorded ones (SHA-256): re-record with `liverseg real-eval "
                        "--record` if the change is intended")
    return problems


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(Path("--set"), f"expected ID=JSON, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _run_cli(args: argparse.Namespace) -> int:
    source = resolve_source(args.source)
    reason = skip_reason(source)
    if reason:
        print(f"real-eval skipped: {reason}")
        return 0
    report = real_eval(
        source,
        args.out,
        bundle_dir=args.bundle,
        config_files=args.config_file or ("configs/inference.json",),
        overrides=_parse_overrides(args.set or []),
        pictures=not args.no_pictures,
        reuse_conversion=not args.reconvert,
        dataset_dir=args.dataset_dir,
    )
    assert report is not None  # skip handled above
    print(_markdown(report), end="")
    print(f"\nWrote real_eval.md, real_eval.json, evaluate/, pictures/ to {args.out}")
    if args.record:
        record_figures(report, args.record, note=args.note or "")
        print(f"Recorded the figures in {args.record}")
    if args.compare:
        recorded = json.loads(Path(args.compare).read_text())
        problems = compare_with_recorded(report, recorded)
        for p in problems:
            print(f"regression: {p}")
        if problems:
            return 1
    missed = [t for t in report["targets"] if not t["passed"]]
    if missed and not args.report_only:
        print(f"{len(missed)} target(s) missed (issue 14's Show list); --report-only to exit 0 anyway")
        return 1
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``liverseg real-eval``."""
    p = sub.add_parser(
        "real-eval",
        help="the real-CT table: convert 3D-IRCADb patients, run the default bundle, score, draw, check targets",
        description="Convert the real 3D-IRCADb patients (default ../shared/data/3Dircadb1-real), run the bundle's "
        "own inference config, score with `liverseg evaluate`, write real_eval.md/.json and overlay pictures to "
        "--out, and check issue 14's targets. Exit 0 when the source folder is absent (one-line reason) or every "
        "target is met, 1 when a target is missed (0 with --report-only) or --compare finds a regression, 2 on bad "
        "input.",
    )
    p.add_argument("--source", type=Path, default=None,
                   help=f"folder of 3Dircadb1.N patients (default: ${SOURCE_ENV} or {DEFAULT_SOURCE})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="bundle folder (default: %(default)s)")
    p.add_argument("--config-file", action="append",
                   help="bundle config file(s), merged in order (default: configs/inference.json); repeatable")
    p.add_argument("--set", action="append", metavar="ID=JSON",
                   help="config override, e.g. --set ckpt_dir='\"/w\"' or --set tta_flips=false; repeatable")
    p.add_argument("--report-only", "--no-fail", dest="report_only", action="store_true",
                   help="exit 0 even when a target is missed (regression-guard use)")
    p.add_argument("--no-pictures", action="store_true", help="skip the overlay pictures")
    p.add_argument("--reconvert", action="store_true", help="convert again even if the source is unchanged")
    p.add_argument("--dataset-dir", type=Path, default=None,
                   help="where the converted dataset is kept (default: OUT/dataset)")
    p.add_argument("--record", type=Path, help="write the per-case figures as the recorded ones (JSON) to this file")
    p.add_argument("--note", help="a note stored with --record")
    p.add_argument("--compare", type=Path,
                   help="recorded figures (JSON) to compare with; exit 1 when a figure is worse than its tolerance")
    p.set_defaults(func=_run_cli)
