"""Real-data retraining through the server: the annotators' loop on real CT, Dice before and after on a held-out case.

For each direction (train on 3Dircadb1.1, test on 3Dircadb1.7; and the reverse), from the shipped weights:

1. convert the real patients once (:func:`liverseg.realeval.prepare_dataset`, kept under ``OUT/dataset``) and copy
   the bundle to ``OUT/bundle`` (the served source: the repository's ``models/model.pt`` is only read, once);
2. start ``liverseg serve`` on a fresh work folder whose studies folder holds both real CTs;
3. ``POST /infer/liver_ct_seg`` on the held-out case and score it (**before**);
4. ``PUT /datastore/label?tag=final`` the expert label of the training case, as an annotator saves a corrected
   label (3Dircadb1.7 is liver-only, as in ``liverseg real-eval``: its liver mask as label 1);
5. ``POST /train/liver_ct_seg`` (fine-tuning from the served weights; small CPU-sized parameters, see
   :data:`DEFAULT_PARAMS`) and poll ``GET /train/`` until it ends (the deadline moves with the training log);
6. ``POST /infer/liver_ct_seg`` on the held-out case again, with the weights training installed, and score it
   (**after**).

Scoring is ``liverseg real-eval``'s: its scoring labels and liver-only rule, :func:`liverseg.evaluation.evaluate_folder`
(liver Dice, HD95, volume error; tumor Dice on cases scored with tumors). Everything (conversion, server work
folders with the trained weights, masks, ``real_retrain_loop.json`` / ``.md``) goes under ``OUT`` (default
``.cache/real-retrain``, git-ignored): 3D-IRCADb is CC BY-NC-ND, and weights trained on it are never shipped.

    python benchmarks/real_retrain_loop.py [--source ../shared/data/3Dircadb1-real] [--out .cache/real-retrain] \
        [--directions 1.1:1.7 1.7:1.1] [--epochs 40] [--learning-rate 3e-4]

Exit 0 with a one-line reason when the real data is absent.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import logging
import math
import re
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import code_version, load_average  # noqa: E402
from _server import REPO, ServeProcess  # noqa: E402

MODEL = "liver_ct_seg"
DEFAULT_OUT = REPO / ".cache" / "real-retrain"
DEFAULT_DIRECTIONS = ("1.1:1.7", "1.7:1.1")
DEFAULT_PARAMS: Dict[str, Any] = {
    "max_epochs": 40,
    "learning_rate": 3e-4,
    "val_split": 0.0,
    "val_interval": 40,
    "pretrained": True,
    "device": "cpu",
    "num_workers": 0,
}
"""Training request (checked by the app against ``lib.validation.TRAIN_PARAMS``). One labelled image: an epoch is one
iteration of ``num_samples`` (2) patches of ``roi_size`` (train.json: 96 x 96 x 64 at 2 x 2 x 2.5 mm); the single
image is also the validation image (the app warns), validated once at the end (``val_interval`` = ``max_epochs``), so
the last epoch's weights are installed. lr 3e-4 is the shipped weights' fine-tuning phase."""
SERVER_CONF = (("deepedit", "false"), ("scribbles", "false"))
"""Only the automatic model is served (its infer and train tasks): less memory on a shared machine."""
STALL_S = 900.0
CAP_S = 3 * 3600.0
INFER_TIMEOUT_S = 1800.0
_EPOCH = re.compile(r"Epoch\[(\d+)\]")

logger = logging.getLogger("real_retrain_loop")


# ----------------------------------------------------------------------------------------------------------------
# pure helpers (tested without data)
# ----------------------------------------------------------------------------------------------------------------


def skip_line(source: Path) -> Optional[str]:
    """The one line printed when there is nothing to run on (``liverseg real-eval``'s reason), else None."""
    from liverseg.realeval import skip_reason

    reason = skip_reason(Path(source))
    return f"real_retrain_loop skipped: {reason}" if reason else None


def case_of(name: str, cases: Sequence[Any]) -> Any:
    """The :class:`~liverseg.realeval.CaseInfo` named ``name``: the case id (``ircadb_001``), the patient folder
    (``3Dircadb1.1``) or its number (``1.1``)."""
    for c in cases:
        folder = Path(c.patient_dir).name
        if name in (c.case, folder) or folder == f"3Dircadb{name}":
            return c
    known = ", ".join(f"{Path(c.patient_dir).name} ({c.case})" for c in cases)
    raise ValueError(f"unknown case {name!r}; known: {known}")


def parse_direction(spec: str) -> tuple[str, str]:
    """``"TRAIN:TEST"`` -> ``(TRAIN, TEST)``; the two must differ."""
    parts = spec.split(":")
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise ValueError(f"direction {spec!r}: expected TRAIN:TEST with two different cases, e.g. 1.1:1.7")
    return parts[0], parts[1]


def epochs_run(details: Sequence[Any]) -> Optional[int]:
    """The highest ``Epoch[N]`` in a training log (``GET /train/``'s ``details``), None when it names none."""
    found = [int(m) for line in details for m in _EPOCH.findall(str(line))]
    return max(found) if found else None


def _fmt(x: Any, digits: int = 3, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    return str(x)


TABLE_HEAD = (
    "| train on -> held out | liver Dice before | after | liver HD95 (mm) before | after | liver vol. err. (%) before "
    "| after | tumor Dice before | after | training (s) | epochs |"
)


def table(directions: Sequence[Dict[str, Any]]) -> str:
    """The Markdown table of the directions (``{train, test, before, after, train_seconds, epochs}``; ``before`` and
    ``after`` are score rows with ``liver_dice``, ``liver_hd95_mm``, ``liver_vol_err_pct``, ``tumor_dice``, and
    ``liver_only``)."""
    lines = [TABLE_HEAD, "|" + "---|" * 11]
    for d in directions:
        b, a = d.get("before") or {}, d.get("after") or {}
        tumor = ("liver-only", "") if b.get("liver_only") or a.get("liver_only") else (
            _fmt(b.get("tumor_dice")), _fmt(a.get("tumor_dice")))
        lines.append(
            f"| {d['train']} -> {d['test']} | {_fmt(b.get('liver_dice'))} | **{_fmt(a.get('liver_dice'))}** "
            f"| {_fmt(b.get('liver_hd95_mm'), 1)} | {_fmt(a.get('liver_hd95_mm'), 1)} "
            f"| {_fmt(b.get('liver_vol_err_pct'), 1, True)} | {_fmt(a.get('liver_vol_err_pct'), 1, True)} "
            f"| {tumor[0]} | {tumor[1]} | {_fmt(d.get('train_seconds'), 0)} | {_fmt(d.get('epochs'))} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# the API
# ----------------------------------------------------------------------------------------------------------------


def infer(url: str, case: str, dest: Path) -> float:
    """``POST /infer/liver_ct_seg?image=case&output=image``; the mask is written (gzipped NIfTI) to ``dest``.
    Returns the seconds the request took."""
    t0 = time.perf_counter()
    r = requests.post(f"{url}/infer/{MODEL}?image={case}&output=image", timeout=INFER_TIMEOUT_S)
    seconds = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"inference of {case} answered HTTP {r.status_code}: {r.text[:500]}")
    content = r.content if r.content[:2] == b"\x1f\x8b" else gzip.compress(r.content)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(content)
    return seconds


def save_final_label(url: str, case: str, label: Path) -> None:
    """``PUT /datastore/label?image=case&tag=final``: what a client sends when an annotator saves a finished label."""
    with open(label, "rb") as fh:
        r = requests.put(f"{url}/datastore/label?image={case}&tag=final",
                         files={"label": (f"{case}.nii.gz", fh)}, timeout=600)  # fmt: skip
    if r.status_code != 200:
        raise RuntimeError(f"saving the label of {case} answered HTTP {r.status_code}: {r.text[:500]}")


def train_status(url: str) -> Dict[str, Any]:
    r = requests.get(f"{url}/train/", timeout=120)
    r.raise_for_status()
    return r.json()


def wait_for_training(url: str, stall_s: float = STALL_S, cap_s: float = CAP_S, poll_s: float = 10.0) -> Dict:
    """The final training status. The deadline moves with the training log: a run without a new log line for
    ``stall_s`` (or running longer than ``cap_s``) is stopped (``DELETE /train/``) and raises."""
    start = last = time.time()
    seen = None
    status = train_status(url)
    while status.get("status") in ("SUBMITTED", "RUNNING"):
        now = time.time()
        progress = json.dumps(status.get("details", []), default=str)
        if progress != seen:
            seen, last = progress, now
            epoch = epochs_run(status.get("details", []))
            if epoch:
                logger.info("training: epoch %d, %.0f s", epoch, now - start)
        if now - last > stall_s or now - start > cap_s:
            requests.delete(f"{url}/train/", timeout=120)
            raise RuntimeError(f"training stalled ({now - last:.0f} s without a log line): {str(status)[-2000:]}")
        time.sleep(poll_s)
        status = train_status(url)
    return status


# ----------------------------------------------------------------------------------------------------------------
# scoring (liverseg real-eval's)
# ----------------------------------------------------------------------------------------------------------------


def score(info: Any, pred_dir: Path, dataset: Path, out_dir: Path) -> Dict[str, Any]:
    """``liverseg real-eval``'s per-case row for the mask ``pred_dir/<case>_0000_seg.nii.gz``."""
    from liverseg.evaluation import evaluate_folder
    from liverseg.realeval import _case_row, _scoring_predictions

    if out_dir.exists():
        shutil.rmtree(out_dir)
    _scoring_predictions([info], pred_dir, out_dir / "pred")
    results: List[Dict[str, Any]] = []
    evaluate_folder(out_dir / "pred", dataset / "scoring_labels", out_dir=out_dir / "evaluate", case_results=results)
    found = [r for r in results if r["case"] == info.case]
    if not found:
        raise RuntimeError(f"{info.case} was not evaluated: see {out_dir / 'evaluate' / 'summary.json'}")
    return _case_row(found[0], info)


# ----------------------------------------------------------------------------------------------------------------
# one direction
# ----------------------------------------------------------------------------------------------------------------


def run_direction(train: Any, test: Any, dataset: Path, bundle: Path, out: Path, params: Dict[str, Any],
                  stall_s: float = STALL_S) -> Dict[str, Any]:  # fmt: skip
    """Infer + score the held-out ``test``, save ``train``'s expert label, train, infer + score again."""
    from liverseg.realeval import sha256_of

    name = f"train_{train.case}_test_{test.case}"
    work = out / name
    if work.exists():  # each direction starts from the shipped weights
        shutil.rmtree(work)
    result: Dict[str, Any] = {
        "train": Path(train.patient_dir).name, "test": Path(test.patient_dir).name, "train_case": train.case,
        "test_case": test.case, "workdir": str(work), "params": params,
        "label_submitted": "liver mask as label 1 (liver-only case)" if train.liver_only
        else "expert liver (1) and liver tumor (2) labels",
    }  # fmt: skip
    with ServeProcess(dataset / "imagesTs", work / "server", conf=SERVER_CONF, bundle=bundle) as srv:
        served = work / "server" / "app" / "model" / MODEL / "models" / "model.pt"
        result["weights_before_sha256"] = sha256_of(served) if served.is_file() else ""
        logger.info("%s: inference before training", test.case)
        result["infer_before_s"] = infer(srv.url, test.case, work / "before" / f"{test.case}_0000_seg.nii.gz")
        result["before"] = score(test, work / "before", dataset, work / "scoring_before")
        logger.info("before: liver Dice %.4f", result["before"]["liver_dice"])
        save_final_label(srv.url, train.case, dataset / "scoring_labels" / f"{train.case}.nii.gz")
        logger.info("%s: label saved; training %s", train.case, json.dumps(params))
        t0 = time.perf_counter()
        r = requests.post(f"{srv.url}/train/{MODEL}", json=params, timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"POST /train/{MODEL} answered HTTP {r.status_code}: {r.text[:500]}")
        status = wait_for_training(srv.url, stall_s=stall_s)
        result["train_seconds"] = time.perf_counter() - t0
        details = status.get("details", [])
        result["epochs"] = epochs_run(details)
        result["train_status"] = status.get("status")
        (work / "train_log.txt").write_text("\n".join(str(x) for x in details) + "\n")
        if status.get("status") != "DONE":
            raise RuntimeError(f"training ended {status.get('status')}: see {work / 'train_log.txt'}")
        result["weights_after_sha256"] = sha256_of(served) if served.is_file() else ""
        if result["weights_after_sha256"] == result["weights_before_sha256"]:
            raise RuntimeError(f"training did not install new weights ({served}): see {work / 'train_log.txt'}")
        logger.info("%s: inference after training", test.case)
        result["infer_after_s"] = infer(srv.url, test.case, work / "after" / f"{test.case}_0000_seg.nii.gz")
        result["after"] = score(test, work / "after", dataset, work / "scoring_after")
        logger.info("after: liver Dice %.4f", result["after"]["liver_dice"])
    result["served_weights"] = str(served)
    return result


# ----------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------


def markdown(report: Dict[str, Any]) -> str:
    lines = [
        f"# Real-data retraining through the server ({report['date_utc']})",
        "",
        f"`{report['command']}`",
        "",
        table(report["directions"]),
        "",
        f"Training request: `{json.dumps(report['params'])}` (`POST /train/{MODEL}`, fine-tuning from the served "
        "weights, which are the shipped ones at the start of each direction). Seeds: train.json `seed` "
        f"{report['seeds']['train_json_seed']}, the app's split `random.Random({report['seeds']['app_split']})`; "
        "random patches and augmentation are not seeded (MONAI's global RNG), so a rerun differs a little.",
        "",
        f"Shipped weights `{report['shipped_weights']['path']}` SHA-256 `{report['shipped_weights']['sha256'][:16]}"
        f"...` (unchanged after the run: {report['shipped_weights']['unchanged']}). Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + f"; code {report['code']}; load average at the end {report['load_average']}.",
        "",
    ]
    for d in report["directions"]:
        lines.append(f"- {d['train']} -> {d['test']}: submitted {d['label_submitted']}; inference "
                     f"{_fmt(d.get('infer_before_s'), 0)} s before, {_fmt(d.get('infer_after_s'), 0)} s after; trained "
                     f"weights (not in the repository) `{d.get('served_weights', '')}`.")  # fmt: skip
    if report.get("errors"):
        lines += ["", "Errors:"] + [f"- {e}" for e in report["errors"]]
    return "\n".join(lines) + "\n"


def _versions() -> Dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("liverseg", "monai", "monailabel", "torch", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    from liverseg.realeval import DEFAULT_BUNDLE, prepare_dataset, resolve_source, sha256_of

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=None, help="3Dircadb1.N patients (default: ../shared/data/...)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="work and output folder (default: %(default)s)")
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="bundle to copy and serve")
    ap.add_argument("--directions", nargs="+", default=list(DEFAULT_DIRECTIONS),
                    help="TRAIN:TEST pairs (case id, patient folder or number; default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=DEFAULT_PARAMS["max_epochs"], help="max_epochs of the request")
    ap.add_argument("--learning-rate", type=float, default=DEFAULT_PARAMS["learning_rate"])
    ap.add_argument("--stall-s", type=float, default=STALL_S, help="stop a training silent for this long")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    source = resolve_source(args.source)
    line = skip_line(source)
    if line:
        print(line)
        return 0
    try:
        directions = [parse_direction(d) for d in args.directions]
    except ValueError as e:
        ap.error(str(e))
    params = dict(DEFAULT_PARAMS, max_epochs=args.epochs, val_interval=args.epochs, learning_rate=args.learning_rate)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    shipped = Path(args.bundle) / "models" / "model.pt"
    shipped_sha = sha256_of(shipped)
    cases = prepare_dataset(source, out / "dataset")
    try:
        pairs = [(case_of(a, cases), case_of(b, cases)) for a, b in directions]
    except ValueError as e:
        ap.error(str(e))
    bundle = out / "bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    shutil.copytree(args.bundle, bundle, ignore=shutil.ignore_patterns("__pycache__", "eval", "runs", "docs"))
    command = "python benchmarks/real_retrain_loop.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results, errors = [], []
    for train, test in pairs:
        try:
            results.append(run_direction(train, test, out / "dataset", bundle, out, params, args.stall_s))
        except Exception as e:  # report what was measured; the other direction still runs
            logger.exception("direction %s -> %s failed", train.case, test.case)
            errors.append(f"{Path(train.patient_dir).name} -> {Path(test.patient_dir).name}: {e}")
    report = {
        "date_utc": started.isoformat(timespec="seconds"),
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command.strip(),
        "source": str(source),
        "params": params,
        "server_conf": [list(c) for c in SERVER_CONF],
        "seeds": {"train_json_seed": 0, "app_split": 0},
        "shipped_weights": {"path": str(shipped), "sha256": shipped_sha,
                            "unchanged": sha256_of(shipped) == shipped_sha},  # fmt: skip
        "versions": _versions(),
        "code": code_version(),
        "load_average": load_average(),
        "dataset_cases": [asdict(c) for c in cases],
        "directions": results,
        "errors": errors,
    }
    (out / "real_retrain_loop.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    text = markdown(report)
    (out / "real_retrain_loop.md").write_text(text)
    print(text)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
