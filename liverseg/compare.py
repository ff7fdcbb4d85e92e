"""The comparison run: train each arm of ``configs/comparison.json`` with the same budget, seeds and split, predict
the test cases, score them, and write the table, side-by-side pictures and training curves.

    liverseg compare [--config configs/comparison.json] [--dataset DIR] [--out DIR] [--arms unet aunet ...]
                     [--seeds 0 1 2]

Each arm is the bundle's ``train.json`` (+ the arm's override files and overrides, + the budget) run by
``python -m monai.bundle run`` in a child process, then ``inference.json`` with the same overrides on the test
images, then :func:`liverseg.evaluation.evaluate_folder`; once per seed of ``seeds`` (every seed trains every arm from
scratch on the same split, which the first seed draws). A run that finished is not run again (``done.json``
records its spec; change the spec and it reruns), so an interrupted comparison resumes where it stopped. The
bundle is copied into the output folder once, so every arm runs the same code and configs even if the working tree
changes meanwhile.

Outputs in ``--out``: ``comparison.md`` / ``comparison.csv`` / ``comparison.json`` (per arm: mean +- SD over the
seeds of each seed's test-case mean, or over the test cases with one seed; global Dice), ``comparison_per_seed.csv``
(every arm and seed: mean +- SD over the test cases), ``curves.png`` (training loss and validation Dice per epoch,
every seed), ``pictures/<case>.png`` (CT, truth and each arm's prediction by the first seed on the same axial
slice), ``provenance.json``, and per arm and seed ``arms/<name>/seed_<k>/{train,models,pred,eval}`` with the
resolved configs, ``history.csv``, logs and per-case metrics.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from liverseg import LABELS
from liverseg.errors import InputError, LiverSegError
from liverseg.evaluation import _versions as evaluation_versions

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "comparison.json"
IMAGE_SUFFIX = "_0000.nii.gz"
ARM_KEYS = {"name", "group", "label", "configs", "overrides"}
TABLE_METRICS = ("liver_dice", "tumor_dice", "liver_hd95_mm", "liver_assd_mm", "liver_vol_err_pct", "lesion_f1")


# ----------------------------------------------------------------------------------------------------------- config
def load_config(path: str | Path) -> dict[str, Any]:
    """Read and check a comparison config (see ``configs/comparison.json``).

    Raises:
        InputError: unreadable JSON, or a missing / malformed field (the message names it).
    """
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(path, f"cannot read the comparison config: {e}") from e
    for key in ("bundle", "arms", "budget"):
        if key not in cfg:
            raise InputError(path, f"missing field {key!r}")
    if not isinstance(cfg["budget"], dict):
        raise InputError(path, "'budget' must be an object of bundle overrides")
    arms = cfg["arms"]
    if not isinstance(arms, list) or not arms:
        raise InputError(path, "'arms' must be a non-empty list")
    names = set()
    for i, arm in enumerate(arms):
        if not isinstance(arm, dict) or "name" not in arm:
            raise InputError(path, f"arm {i} must be an object with a 'name'")
        unknown = set(arm) - ARM_KEYS
        if unknown:
            raise InputError(
                path, f"arm {arm['name']!r}: unknown field(s) {sorted(unknown)}; valid: {sorted(ARM_KEYS)}"
            )
        name = arm["name"]
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise InputError(path, f"arm name {name!r} must be letters, digits, '_' or '-'")
        if name in names:
            raise InputError(path, f"arm name {name!r} appears twice")
        names.add(name)
        if not isinstance(arm.get("configs", []), list) or not isinstance(arm.get("overrides", {}), dict):
            raise InputError(path, f"arm {name!r}: 'configs' must be a list and 'overrides' an object")
        arm.setdefault("configs", [])
        arm.setdefault("overrides", {})
        arm.setdefault("group", "")
        arm.setdefault("label", name)
    if "seed" in cfg and "seeds" in cfg:
        raise InputError(path, "give either 'seeds' (a list) or 'seed', not both")
    cfg["seeds"] = check_seeds(cfg.pop("seeds", [cfg.pop("seed", 0)]), path)
    ref = cfg.get("reference_arm")
    if ref is not None and ref not in names:
        raise InputError(path, f"reference_arm {ref!r} is not one of the arms {sorted(names)}")
    bundle = _resolve(cfg["bundle"], path)
    for arm in arms:
        for f in arm["configs"]:
            if not (bundle / f).is_file():
                raise InputError(path, f"arm {arm['name']!r}: override file {f} not found in {bundle}")
    return cfg


def check_seeds(seeds: Any, source: str | Path) -> list[int]:
    """``seeds`` as a list of distinct integers >= 0 (the seeds every arm is trained with).

    Raises:
        InputError: anything else (``source`` names where the seeds came from).
    """
    ok = (
        isinstance(seeds, list) and seeds
        and all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in seeds)
        and len(set(seeds)) == len(seeds)
    )
    if not ok:
        raise InputError(source, f"'seeds' must be a non-empty list of distinct integers >= 0, got {seeds!r}")
    return list(seeds)


def _resolve(p: str | Path, config_path: Path) -> Path:
    """A path of the config: absolute, else relative to the repository (where the shipped config lives)."""
    p = Path(p)
    return p if p.is_absolute() else (REPO / p)


def arm_spec(arm: dict[str, Any], cfg: dict[str, Any], dataset: Path, seed: int) -> dict[str, Any]:
    """Everything the result of an arm's run with ``seed`` depends on (its ``done.json`` must match to be reused)."""
    return {
        "arm": {k: arm[k] for k in ("name", "configs", "overrides")},
        "budget": cfg["budget"],
        "seed": seed,
        "split_seed": cfg["seeds"][0],
        "dataset": str(dataset.resolve()),
        "split": {k: cfg.get(k) for k in ("test_folds", "test_fold")},
    }


def _spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------------ split
def _cases(folder: Path) -> list[str]:
    return sorted(p.name[: -len(IMAGE_SUFFIX)] for p in folder.glob(f"*{IMAGE_SUFFIX}"))


def prepare_split(dataset: Path, work: Path, test_folds: int, test_fold: int, seed: int) -> tuple[Path, dict]:
    """The dataset the arms train and test on, in nnU-Net layout.

    A dataset with ``imagesTs`` + ``labelsTs`` is used as it is. Otherwise its training cases are split by case
    (deterministically by ``seed``) and fold ``test_fold`` of ``test_folds`` becomes the test set, in a folder of
    symbolic links ``work/split``; for 3D-IRCADb converted by ``liverseg convert ircadb`` a case is a patient, so
    the folds are patient-level.

    Returns the dataset folder and ``{"train": [...], "test": [...]}`` case ids.

    Raises:
        InputError: no training cases, a missing label, or too few cases to hold out a test fold.
    """
    if not (dataset / "imagesTr").is_dir():
        raise InputError(dataset, "not a dataset in nnU-Net layout (no imagesTr/); convert it with `liverseg convert`")
    train = _cases(dataset / "imagesTr")
    if not train:
        raise InputError(dataset / "imagesTr", f"no *{IMAGE_SUFFIX} image")
    missing = [c for c in train if not (dataset / "labelsTr" / f"{c}.nii.gz").is_file()]
    if missing:
        raise InputError(dataset / "labelsTr", f"no label for case(s) {', '.join(missing[:5])}")
    test = [c for c in _cases(dataset / "imagesTs") if (dataset / "labelsTs" / f"{c}.nii.gz").is_file()] if (
        dataset / "imagesTs").is_dir() else []
    if test:
        return dataset, {"train": train, "test": test, "held_out_from": "imagesTs/labelsTs"}
    if not 2 <= test_folds <= len(train) or not 0 <= test_fold < test_folds:
        raise InputError(
            dataset,
            f"no labelled imagesTs/labelsTs, and {len(train)} training case(s) cannot hold out fold {test_fold} of "
            f"{test_folds} (need 2 <= test_folds <= cases and 0 <= test_fold < test_folds)",
        )
    order = sorted(train)
    random.Random(seed).shuffle(order)
    test = sorted(c for k, c in enumerate(order) if k % test_folds == test_fold)
    train = sorted(set(train) - set(test))
    split = work / "split"
    if split.exists():
        shutil.rmtree(split)
    for sub, cases in (("Tr", train), ("Ts", test)):
        (split / f"images{sub}").mkdir(parents=True)
        (split / f"labels{sub}").mkdir(parents=True)
        for c in cases:
            image = f"{c}{IMAGE_SUFFIX}"
            os.symlink((dataset / "imagesTr" / image).resolve(), split / f"images{sub}" / image)
            os.symlink((dataset / "labelsTr" / f"{c}.nii.gz").resolve(), split / f"labels{sub}" / f"{c}.nii.gz")
    return split, {"train": train, "test": test, "held_out_from": f"fold {test_fold} of {test_folds} of imagesTr"}


# ------------------------------------------------------------------------------------------------------------- arms
def _bundle_args(bundle: Path, configs: Sequence[str], overrides: dict[str, Any]) -> list[str]:
    files = [str(bundle / c) for c in configs]
    args = ["--config_file", json.dumps(files), "--meta_file", str(bundle / "configs" / "metadata.json"),
            "--logging_file", str(bundle / "configs" / "logging.conf"), "--bundle_root", str(bundle)]
    for k, v in overrides.items():
        args += [f"--{k}", _cli_value(v)]
    return args


def _cli_value(v: Any) -> str:
    """A value as ``monai.bundle run`` (python-fire) parses it back: Python literals, strings as they are."""
    if isinstance(v, str):
        return v
    return repr(v) if isinstance(v, (bool, type(None), int, float)) else json.dumps(v).replace("true", "True").replace(
        "false", "False").replace("null", "None")


def _run_logged(cmd: list[str], log: Path, cwd: Path, what: str) -> float:
    """Run ``cmd`` with output to ``log``; return its wall time. Raises LiverSegError naming the log on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd)
    if res.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise LiverSegError(f"{what} failed (exit {res.returncode}); log: {log}\n{tail}")
    return time.perf_counter() - t


def run_arm(arm: dict[str, Any], cfg: dict[str, Any], bundle: Path, dataset: Path, arm_dir: Path, seed: int,
            device: str | None = None) -> dict[str, Any]:
    """Train with ``seed``, predict and evaluate one arm in ``arm_dir`` (skipped when ``arm_dir/done.json`` holds
    the same spec)."""
    from liverseg.evaluation import evaluate_folder

    spec = arm_spec(arm, cfg, dataset, seed)
    done = arm_dir / "done.json"
    if done.is_file():
        try:
            previous = json.loads(done.read_text())
            if previous.get("spec_hash") == _spec_hash(spec):
                logger.info("arm %s, seed %d: already done (%s), reused", arm["name"], seed, done)
                return previous
        except (OSError, json.JSONDecodeError):
            pass
    if arm_dir.exists():
        shutil.rmtree(arm_dir)  # a partial or outdated run: start clean
    overrides = {**cfg["budget"], **arm["overrides"], "seed": seed, "dataset_dir": str(dataset)}
    if device:
        overrides["device"] = f"$torch.device({device!r})"
    py = [sys.executable, "-m", "monai.bundle", "run"]
    train_over = {**overrides, "output_dir": str(arm_dir / "train"), "ckpt_dir": str(arm_dir / "models")}
    logger.info("arm %s, seed %d: training (%s epochs); log %s", arm["name"], seed, cfg["budget"].get("max_epochs"),
                arm_dir / "train.log")
    train_s = _run_logged(py + _bundle_args(bundle, ["configs/train.json", *arm["configs"]], train_over),
                          arm_dir / "train.log", bundle, f"training of arm {arm['name']} (seed {seed})")
    if not (arm_dir / "models" / "model.pt").is_file():
        raise LiverSegError(f"arm {arm['name']}: training saved no checkpoint in {arm_dir / 'models'}")
    training_only = ("max_epochs", "val_interval", "lr_patience", "early_stop_patience", "num_folds", "fold",
                     "batch_size", "num_samples", "learning_rate")
    infer_over = {k: v for k, v in overrides.items() if k not in training_only}
    infer_over.update(output_dir=str(arm_dir / "pred"), ckpt_dir=str(arm_dir / "models"))
    logger.info("arm %s, seed %d: predicting the test cases", arm["name"], seed)
    infer_s = _run_logged(py + _bundle_args(bundle, ["configs/inference.json", *arm["configs"]], infer_over),
                          arm_dir / "inference.log", bundle, f"inference of arm {arm['name']} (seed {seed})")
    summary = evaluate_folder(arm_dir / "pred", dataset / "labelsTs", out_dir=arm_dir / "eval",
                              command=f"liverseg compare (arm {arm['name']})")
    if summary.get("errors"):
        raise LiverSegError(f"arm {arm['name']}: evaluation errors {summary['errors']}")
    history = _read_history(arm_dir / "train" / "history.csv")
    result = {
        "name": arm["name"], "label": arm["label"], "group": arm["group"], "seed": seed, "spec": spec,
        "spec_hash": _spec_hash(spec), "train_s": train_s, "infer_s": infer_s,
        "num_test_cases": summary["num_cases"], "parameters": _count_parameters(arm_dir / "models" / "model.pt"),
        "best_val": _best_val(history), "epochs_run": int(max((r["epoch"] for r in history), default=0)),
    }
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, done)
    return result


def _read_history(path: Path) -> list[dict[str, float]]:
    import csv

    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _best_val(history: list[dict[str, float]]) -> dict[str, float] | None:
    rows = [r for r in history if "val_mean_dice" in r]
    if not rows:
        return None
    best = max(rows, key=lambda r: r["val_mean_dice"])
    return {"epoch": int(best["epoch"]), "val_mean_dice": best["val_mean_dice"]}


def _count_parameters(checkpoint: Path) -> int | None:
    """Parameters of the trained network in ``checkpoint`` (its state dict without normalization statistics)."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as e:
        logger.warning("could not read %s to count parameters: %s", checkpoint, e)
        return None
    state = state.get("model", state) if isinstance(state, dict) else state
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return int(sum(v.numel() for k, v in state.items() if torch.is_tensor(v) and not k.endswith(skip)))


# ----------------------------------------------------------------------------------------------------------- report
def _fmt_ms(stats: dict[str, Any], digits: int = 3) -> str:
    mean, sd = stats.get("mean", math.nan), stats.get("sd", math.nan)
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if sd is None or (isinstance(sd, float) and math.isnan(sd)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, SD (n-1) and count of the finite ``values``."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    return {"mean": float(arr.mean()) if arr.size else math.nan,
            "sd": float(arr.std(ddof=1)) if arr.size > 1 else math.nan, "n": int(arr.size)}


def _run_dir(out: Path, name: str, seed: int) -> Path:
    return out / "arms" / name / f"seed_{seed}"


def collect(out: Path, results: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per arm from its runs (``results``: per arm, one result per seed): the runs with their evaluation
    summaries (``arms/<name>/seed_<k>/eval``) and the table's ``cells``. With one seed a cell is the mean +- SD over
    the test cases; with several, the mean +- SD over the seeds of each seed's test-case mean (``over``)."""
    import csv

    rows = []
    for runs in results:
        scored = []
        for r in runs:
            ev = _run_dir(out, r["name"], r["seed"]) / "eval"
            summary = json.loads((ev / "summary.json").read_text())
            with open(ev / "metrics_per_case.csv", newline="") as f:
                cases = [c for c in csv.DictReader(f) if c.get("status") == "ok"]
            # tumor Dice over the cases that have a tumor: a case without tumor in the truth and in the prediction
            # counts as Dice 1 in the per-case mean, which says nothing about tumor segmentation
            tumor = _stats([float(c["tumor_dice"]) for c in cases if float(c["tumor_ref_voxels"] or 0) > 0])
            scored.append({**r, "summary": summary, "tumor_dice_cases_with_tumor": tumor})
        first = scored[0]
        if len(scored) == 1:
            cells = {k: first["summary"]["metrics"][k] for k in TABLE_METRICS}
            cells["tumor_dice_cases_with_tumor"] = first["tumor_dice_cases_with_tumor"]
        else:
            cells = {k: _stats([s["summary"]["metrics"][k]["mean"] for s in scored]) for k in TABLE_METRICS}
            cells["tumor_dice_cases_with_tumor"] = _stats([s["tumor_dice_cases_with_tumor"]["mean"] for s in scored])
        for part in ("liver", "tumor"):
            cells[f"{part}_global_dice"] = _stats([s["summary"]["global_dice"][part] for s in scored])
        cells["best_val_mean_dice"] = _stats([(s.get("best_val") or {}).get("val_mean_dice") for s in scored])
        cells["train_min"] = _stats([s["train_s"] / 60 for s in scored])
        cells["infer_s_per_case"] = _stats([s["infer_s"] / max(s["num_test_cases"], 1) for s in scored])
        rows.append({
            "name": first["name"], "label": first["label"], "group": first["group"],
            "parameters": first.get("parameters"), "seeds": [s["seed"] for s in scored],
            "over": "test cases" if len(scored) == 1 else "seeds",
            "cases_with_tumor": first["tumor_dice_cases_with_tumor"]["n"],
            "cells": cells, "runs": scored,
        })
    return rows


def table_markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    seeds = info["seeds"]
    several = len(seeds) > 1
    if several:
        how = (f"Every arm trained from scratch with each of the {len(seeds)} seeds {seeds}; a cell is the mean ± SD "
               "(n-1) over the seeds of each seed's mean over the test cases (global Dice: pooled over all test "
               "voxels, then over the seeds); per seed and case: `comparison_per_seed.csv`, "
               "`arms/<arm>/seed_<k>/eval/metrics_per_case.csv`.")
    else:
        how = ("Mean ± SD over the test cases (SD with n-1), global Dice pooled over all test voxels; per case: "
               f"`arms/<arm>/seed_{seeds[0]}/eval/metrics_per_case.csv`.")
    lines = [
        "# Comparison run", "",
        f"Dataset: `{info['dataset']}` ({len(info['split']['train'])} training cases, of which fold "
        f"{info['budget'].get('fold', 0)} of {info['budget'].get('num_folds')} validates; "
        f"{len(info['split']['test'])} test cases from {info['split']['held_out_from']}). "
        f"Seed{'s' if several else ''} {', '.join(map(str, seeds))}. "
        f"Same budget for every arm: {json.dumps(info['budget'])}.",
        f"Command: `{info['command']}`; {info['machine']}; {info['date']}.", "",
        how + " Each run's best checkpoint (by validation mean Dice) predicts the test cases in their own geometry.",
        "",
        "| arm | group | liver Dice |" + (" liver Dice per seed |" if several else "")
        + " tumor Dice (cases with tumor) | liver global Dice | tumor global Dice | liver HD95 (mm) | liver ASSD (mm) "
        "| liver volume error (%) | lesion F1 | best validation Dice | parameters | training (min) "
        "| inference (s/case) |",
        "|---" * (14 + several) + "|",
    ]
    for r in rows:
        c = r["cells"]
        best = r["runs"][0].get("best_val") or {}
        best_cell = _fmt_ms(c["best_val_mean_dice"]) + ("" if several else f" (epoch {best.get('epoch', '-')})")
        params = f"{r['parameters'] / 1e6:.2f} M" if r.get("parameters") else "n/a"
        per_seed = " / ".join(f"{s['summary']['metrics']['liver_dice']['mean']:.3f}" for s in r["runs"])
        lines.append(
            f"| {r['label']} | {r['group']} | {_fmt_ms(c['liver_dice'])} |" + (f" {per_seed} |" if several else "")
            + f" {_fmt_ms(c['tumor_dice_cases_with_tumor'])} (cases: {r['cases_with_tumor']}) | "
            f"{_fmt_ms(c['liver_global_dice'])} | {_fmt_ms(c['tumor_global_dice'])} | "
            f"{_fmt_ms(c['liver_hd95_mm'], 1)} | {_fmt_ms(c['liver_assd_mm'], 2)} | "
            f"{_fmt_ms(c['liver_vol_err_pct'], 1)} | {_fmt_ms(c['lesion_f1'], 2)} | {best_cell} | {params} | "
            f"{c['train_min']['mean']:.1f} | {c['infer_s_per_case']['mean']:.1f} |"
        )
    lines += ["", "Pictures: `pictures/<case>.png` (CT, truth, each arm's prediction by the first seed); curves: "
              "`curves.png` (every seed). Training and inference times are means over the seeds, measured on a "
              "machine that may have run other jobs meanwhile: they compare arms only roughly; inference time "
              "includes the process start and model loading."]
    return "\n".join(lines) + "\n"


def write_tables(out: Path, rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    import csv

    (out / "comparison.md").write_text(table_markdown(rows, info))
    cell_keys = (*TABLE_METRICS, "tumor_dice_cases_with_tumor", "liver_global_dice", "tumor_global_dice",
                 "best_val_mean_dice", "train_min", "infer_s_per_case")
    with open(out / "comparison.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "group", "over", "seeds"] + [f"{k}_{s}" for k in cell_keys for s in ("mean", "sd")]
                   + ["cases_with_tumor", "parameters"])
        for r in rows:
            w.writerow([r["name"], r["group"], r["over"], " ".join(map(str, r["seeds"]))]
                       + [r["cells"][k][s] for k in cell_keys for s in ("mean", "sd")]
                       + [r["cases_with_tumor"], r.get("parameters")])
    with open(out / "comparison_per_seed.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "group", "seed"] + [f"{m}_{s}" for m in TABLE_METRICS for s in ("mean", "sd")]
                   + ["tumor_dice_cases_with_tumor_mean", "tumor_dice_cases_with_tumor_sd", "cases_with_tumor"]
                   + ["liver_global_dice", "tumor_global_dice", "best_val_mean_dice", "best_epoch", "epochs_run",
                      "train_s", "infer_s"])
        for r in rows:
            for s in r["runs"]:
                m, g = s["summary"]["metrics"], s["summary"]["global_dice"]
                best = s.get("best_val") or {}
                t = s["tumor_dice_cases_with_tumor"]
                w.writerow([r["name"], r["group"], s["seed"]] + [m[k][x] for k in TABLE_METRICS for x in ("mean", "sd")]
                           + [t["mean"], t["sd"], t["n"]]
                           + [g["liver"], g["tumor"], best.get("val_mean_dice"), best.get("epoch"), s["epochs_run"],
                              round(s["train_s"], 1), round(s["infer_s"], 1)])
    (out / "comparison.json").write_text(json.dumps({"info": info, "arms": rows}, indent=2, default=str))


def plot_curves(out: Path, rows: list[dict[str, Any]]) -> Path:
    """``curves.png``: training loss, validation liver Dice and validation tumor Dice per epoch, one line per arm
    and seed (an arm's seeds share its colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (ax_loss, ax_liver, ax_tumor) = plt.subplots(1, 3, figsize=(16, 4.5))
    for i, r in enumerate(rows):
        style = "-" if r["group"] == "network" else "--"
        for j, run in enumerate(r["runs"]):
            hist = _read_history(_run_dir(out, r["name"], run["seed"]) / "train" / "history.csv")
            kw = {"color": colors[i % len(colors)], "alpha": 0.9 if j == 0 else 0.5, "lw": 1.2,
                  "label": r["label"] if j == 0 else None}
            ep = [h["epoch"] for h in hist if "train_loss" in h]
            ax_loss.plot(ep, [h["train_loss"] for h in hist if "train_loss" in h], style, **kw)
            for ax, key in ((ax_liver, "val_dice_per_class_liver"), (ax_tumor, "val_dice_per_class_tumor")):
                val = [h for h in hist if key in h]
                ax.plot([h["epoch"] for h in val], [h[key] for h in val], style + "o", ms=2.5, **kw)
    several = any(len(r["runs"]) > 1 for r in rows)
    note = " (one line per seed)" if several else ""
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss (mean per epoch)" + note)
    ax_liver.set(xlabel="epoch", ylabel="Dice", title="Validation Dice, liver" + note, ylim=(0, 1))
    ax_tumor.set(xlabel="epoch", ylabel="Dice", title="Validation Dice, tumor" + note, ylim=(0, 1))
    ax_liver.legend(fontsize=7, loc="lower right")
    for ax in (ax_loss, ax_liver, ax_tumor):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _canonical(path: Path, dtype=np.float32) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj).astype(dtype)


def plot_pictures(out: Path, rows: list[dict[str, Any]], dataset: Path, cases: Sequence[str]) -> list[Path]:
    """One PNG per test case: CT, truth and each arm's prediction (by its first seed) on the axial slice with the most
    tumor (else liver).

    Slices are shown in radiological convention (patient's right on the left, anterior at the top), CT in the
    W400/C40 abdominal window; liver green, tumor red.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from liverseg.preview import _to_display

    cmap = ListedColormap([(0, 0, 0, 0), (0.1, 0.8, 0.2, 0.45), (1.0, 0.1, 0.1, 0.7)])
    paths = []
    (out / "pictures").mkdir(exist_ok=True)
    for case in cases:
        ct = _canonical(dataset / "imagesTs" / f"{case}{IMAGE_SUFFIX}")
        truth = _canonical(dataset / "labelsTs" / f"{case}.nii.gz", np.uint8)
        tumor = np.count_nonzero(truth == LABELS["tumor"], axis=(0, 1))
        liver = np.count_nonzero(truth > 0, axis=(0, 1))
        k = int(np.argmax(tumor)) if tumor.max() > 0 else int(np.argmax(liver))
        panels = [("CT", None), ("truth", truth)]
        for r in rows:
            pred = _run_dir(out, r["name"], r["seeds"][0]) / "pred"
            found = [p for p in pred.glob(f"{case}*.nii.gz")
                     if p.name in (f"{case}_0000_seg.nii.gz", f"{case}_seg.nii.gz", f"{case}.nii.gz")]
            panels.append((r["label"], _canonical(found[0], np.uint8) if found else None))
        fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0))
        ct_slice = _to_display(np.clip(ct[:, :, k], -160, 240))
        for ax, (title, lab) in zip(axes, panels):
            ax.imshow(ct_slice, cmap="gray", vmin=-160, vmax=240)
            if lab is not None:
                ax.imshow(_to_display(lab[:, :, k]), cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
            ax.set_title(textwrap.fill(title, 24), fontsize=8)
            ax.axis("off")
        fig.suptitle(f"{case}, axial slice {k} (R on the left)", fontsize=9)
        fig.tight_layout()
        path = out / "pictures" / f"{case}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------- driver
def run_comparison(config: str | Path = DEFAULT_CONFIG, *, out: str | Path, dataset: str | Path | None = None,
                   arms: Sequence[str] | None = None, max_epochs: int | None = None, device: str | None = None,
                   seeds: Sequence[int] | None = None, command: str | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the comparison of ``config`` into ``out``, with the config's ``seeds`` unless ``seeds`` is
    given; returns one row per arm (see :func:`collect`)."""
    config = Path(config)
    cfg = load_config(config)
    if max_epochs is not None:
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
        cfg["budget"] = {**cfg["budget"], "max_epochs": int(max_epochs)}
    if seeds is not None:
        cfg["seeds"] = check_seeds(list(seeds), "--seeds")
    selected = cfg["arms"]
    if arms:
        unknown = set(arms) - {a["name"] for a in selected}
        if unknown:
            raise InputError(config, f"unknown arm(s) {sorted(unknown)}; available: {[a['name'] for a in selected]}")
        by_name = {a["name"]: a for a in selected}
        selected = [by_name[name] for name in dict.fromkeys(arms)]  # in the order given
    dataset = (Path(dataset) if dataset else _resolve(cfg.get("dataset", ""), config)).resolve()
    if not dataset.is_dir():
        raise InputError(dataset, "dataset folder not found")
    out = Path(out).resolve()  # the bundle runs with its own folder as working directory
    out.mkdir(parents=True, exist_ok=True)
    # one split for all seeds (drawn by the first): the seeds vary the training only
    data_dir, split = prepare_split(dataset, out, int(cfg.get("test_folds", 5)), int(cfg.get("test_fold", 0)),
                                    cfg["seeds"][0])
    bundle = out / "bundle"
    src = _resolve(cfg["bundle"], config)
    if not bundle.exists():  # one frozen copy for every arm of this output folder
        shutil.copytree(src, bundle, ignore=shutil.ignore_patterns("__pycache__", "models", "eval", "docs", "runs"))
    info = {
        "config": str(config), "dataset": str(dataset), "split": split, "seeds": cfg["seeds"],
        "budget": cfg["budget"], "command": command or "liverseg compare",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        + ("GPU " + device if device and device.startswith("cuda") else "device: cuda if available else cpu"),
        "date": datetime.date.today().isoformat(), "versions": evaluation_versions(),
    }
    (out / "provenance.json").write_text(json.dumps({**info, "config_content": cfg}, indent=2))
    results: list[list[dict[str, Any]]] = [[] for _ in selected]
    total, done = len(selected) * len(cfg["seeds"]), 0
    # seed by seed: an interrupted run already holds every arm of its first seeds
    for seed in cfg["seeds"]:
        for runs, arm in zip(results, selected):
            t = time.perf_counter()
            done += 1
            logger.info("[%d/%d] arm %s (%s), seed %d", done, total, arm["name"], arm["label"], seed)
            runs.append(run_arm(arm, cfg, bundle, data_dir, _run_dir(out, arm["name"], seed), seed, device=device))
            logger.info("[%d/%d] arm %s, seed %d finished in %.1f min", done, total, arm["name"], seed,
                        (time.perf_counter() - t) / 60)
    rows = collect(out, results)
    write_tables(out, rows, info)
    plot_curves(out, rows)
    plot_pictures(out, rows, data_dir, split["test"])
    logger.info("comparison written to %s", out / "comparison.md")
    return rows


def _run_cli(args: argparse.Namespace) -> int:
    rows = run_comparison(args.config, out=args.out, dataset=args.dataset, arms=args.arms, max_epochs=args.max_epochs,
                          device=args.device, seeds=args.seeds, command=" ".join(["liverseg", *sys.argv[1:]]))
    for r in rows:
        c = r["cells"]
        print(f"{r['name']:28s} liver Dice {_fmt_ms(c['liver_dice'])}  tumor Dice (cases with tumor) "
              f"{_fmt_ms(c['tumor_dice_cases_with_tumor'])}  (mean ± SD over {r['over']})")
    print(f"table: {Path(args.out) / 'comparison.md'}")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="train and compare the network variants and preprocessing ablations",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="comparison config (default: %(default)s)")
    p.add_argument("--dataset", help="dataset in nnU-Net layout (default: the config's, the sample phantoms)")
    p.add_argument("--out", default=".cache/comparison", help="output folder; a rerun resumes (default: %(default)s)")
    p.add_argument("--arms", nargs="+", help="run only these arms (names from the config), in this order")
    p.add_argument("--max-epochs", type=int, help="override the budget's max_epochs (e.g. 2 for a smoke run)")
    p.add_argument("--seeds", type=int, nargs="+", help="train every arm once per seed (default: the config's seeds)")
    p.add_argument("--device", help="torch device for training and inference, e.g. cuda:0 or cpu (default: cuda if "
                   "available)")
    p.set_defaults(func=_run_cli)
