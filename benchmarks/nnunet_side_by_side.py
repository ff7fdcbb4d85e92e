"""Ours against nnU-Net v2 (``nnunetv2``, the tool a user would pick instead), side by side on the same real CTs.

For each real 3D-IRCADb-01 patient in ``../shared/data/3Dircadb1-real`` (CC BY-NC-ND; skipped with a one-line reason
when the folder is absent), each run in its own child process (so the peak resident memory is that tool's own):

* **ours**: the shipped bundle's default ``configs/inference.json`` with the shipped weights, timed as
  ``benchmarks/inference_cpu.py`` times it (from the workflow's creation to the written mask: load, preprocess,
  network, postprocess, write; the network's sliding window separately);
* **nnU-Net v2**: the default ``3d_fullres`` plan, made by ``nnUNetv2_plan_and_preprocess`` on an nnU-Net raw
  dataset of the same real CTs with their liver/tumor labels (``Dataset914_IrcadbReal`` under
  ``.cache/nnunet-side-by-side``), so the plan has the target spacing and patch size a real-CT user gets; the
  network built from the plan with random weights (speed does not depend on them) and saved as a trained-model
  folder (``fold_all/checkpoint_final.pth``); then nnU-Net's own ``nnUNetPredictor`` with its defaults (step size
  0.5, Gaussian weighting, mirroring on all three axes) on the CPU, ``predict_from_files_sequential`` (read,
  preprocess, sliding window, resample the logits back, write), timed from the predictor's creation to the written
  mask; the sliding window separately. ``--mirroring off`` runs it without the mirroring (8x fewer network passes).

Both tools run with the same ``torch.set_num_threads`` (``--threads``, default: the machine's cores). Also, with
``--train-iters N``: seconds of N iterations of nnU-Net's default ``nnUNetTrainer`` on this CPU (batch and patch of
the same plan, data augmentation in the same process) and what its default schedule (250 iterations x 1000 epochs)
costs at that rate: an estimate, labelled as one.

    python benchmarks/nnunet_side_by_side.py --create-env            # once: nnU-Net v2 in .cache/nnunet-venv
    nice -n 19 python benchmarks/nnunet_side_by_side.py [--cases ircadb_001 ircadb_007] [--mirroring on off] \
        [--timeout 1200] [--train-iters 3] [--threads 2] [--out benchmarks/results/nnunet_side_by_side]

The nnU-Net environment (``--create-env``, or by hand)::

    .venv/bin/python -m venv .cache/nnunet-venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > .cache/nnunet-venv/lib/python3.11/site-packages/project.pth
    printf 'torch==<the project venv's torch>\\nnumpy==<its numpy>\\n' > .cache/nnunet-constraints.txt
    .cache/nnunet-venv/bin/python -m pip install -c .cache/nnunet-constraints.txt nnunetv2==2.8.1
    .cache/nnunet-venv/bin/python -m pip check

The ``.pth`` file lets the new environment import the project venv's torch (no second torch download), and the
constraints keep pip from replacing torch or numpy; what nnU-Net needs besides lands in ``.cache/nnunet-venv`` only,
never in ``.venv``. Without that environment the script prints why and exits 0 (so does a missing data folder).

Everything derived from the CTs (conversions, the raw dataset, plans, preprocessed data, masks) stays under
``.cache/`` (git-ignored); the report (``--out``: ``.json`` and ``.md``) holds figures only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import CHILD_PATH, code_version, load_average, vmhwm_gb, without_note  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV_DIR = REPO / ".cache" / "nnunet-venv"
WORK = REPO / ".cache" / "nnunet-side-by-side"
NNUNET_VERSION = "2.8.1"
DATASET_ID = 914
DATASET_NAME = f"Dataset{DATASET_ID}_IrcadbReal"
TRAINER_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "nnunet_side_by_side"
TARGET_SPEEDUP = 2.0
"""Issue 14: ours at least this many times faster than nnU-Net v2 at equal or better Dice."""
SCHEDULE = (250, 1000)
"""nnU-Net's default training schedule: iterations per epoch, epochs (``nnUNetTrainer``)."""


# ----------------------------------------------------------------------------------------------------------------
# the nnU-Net environment
# ----------------------------------------------------------------------------------------------------------------


def env_python(env_dir: Path = ENV_DIR) -> Path:
    return Path(env_dir) / "bin" / "python"


def nnunet_skip_reason(env_dir: Path = ENV_DIR) -> str | None:
    """One line saying why nnU-Net cannot be run from ``env_dir``, or None when ``nnunetv2`` imports there."""
    py = env_python(env_dir)
    hint = f"create it with: python {Path(__file__).relative_to(REPO)} --create-env"
    if not py.is_file():
        return f"nnU-Net v2 is not installed: no environment at {env_dir} ({hint})"
    res = subprocess.run([str(py), "-c", "import nnunetv2"], capture_output=True, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["?"])[-1]
        return f"nnunetv2 does not import in {env_dir}: {last} ({hint})"
    return None


def create_env(env_dir: Path = ENV_DIR, version: str = NNUNET_VERSION) -> None:
    """nnU-Net v2 in its own venv that sees this venv's packages (torch, numpy, ...) through a ``.pth`` file; pip
    is held to this venv's torch and numpy by a constraints file, and ``pip check`` must pass."""
    import numpy
    import torch

    env_dir = Path(env_dir)
    if not env_python(env_dir).is_file():
        subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    site = subprocess.run(
        [str(env_python(env_dir)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    ours = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    Path(site, "project_venv.pth").write_text(ours + "\n")
    constraints = env_dir.parent / "nnunet-constraints.txt"
    # the public version (no local label such as +cu130): pip matches it against the torch it sees via the .pth
    constraints.write_text(f"torch=={torch.__version__.split('+')[0]}\nnumpy=={numpy.__version__}\n")
    pip = [str(env_python(env_dir)), "-m", "pip"]
    subprocess.run([*pip, "install", "-c", str(constraints), f"nnunetv2=={version}"], check=True)
    subprocess.run([*pip, "check"], check=True)
    check = "import torch, nnunetv2; print(torch.__version__, torch.__file__)"
    print(subprocess.run([str(env_python(env_dir)), "-c", check], capture_output=True, text=True, check=True).stdout)


def nnunet_env_vars(work: Path = WORK, threads: int = 1, da_processes: int | None = None) -> dict[str, str]:
    """nnU-Net's folders under ``work``; its worker processes (``nnUNet_def_n_proc``, ``nnUNet_n_proc_DA``: also
    the planner's thread count) at ``threads``, or training's data augmentation at ``da_processes`` (0: in the
    training process itself)."""
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(work / "nnUNet_raw"),
        nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
        nnUNet_results=str(work / "nnUNet_results"),
        nnUNet_n_proc_DA=str(threads if da_processes is None else da_processes),
        nnUNet_def_n_proc=str(threads),
        nnUNet_compile="f",
    )
    return env


# ----------------------------------------------------------------------------------------------------------------
# data, plan and the random-weight model folder
# ----------------------------------------------------------------------------------------------------------------


def prepare_raw_dataset(source: Path, work: Path = WORK) -> list[dict[str, Any]]:
    """Convert the real CTs with ``liverseg real-eval``'s converter (reusing its conversion in
    ``.cache/real-eval/dataset``) and lay them out as the nnU-Net raw dataset ``Dataset914_IrcadbReal`` (links to
    the converted CTs and to the references as ``real-eval`` scores them). Returns the cases."""
    from dataclasses import asdict

    from liverseg import LABELS
    from liverseg.realeval import DEFAULT_OUT as REAL_EVAL_OUT
    from liverseg.realeval import prepare_dataset

    converted = REAL_EVAL_OUT / "dataset"
    cases = prepare_dataset(source, converted)
    raw = work / "nnUNet_raw" / DATASET_NAME
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    for c in cases:
        links = {
            raw / "imagesTr" / f"{c.case}_0000.nii.gz": converted / "imagesTs" / f"{c.case}_0000.nii.gz",
            raw / "labelsTr" / f"{c.case}.nii.gz": converted / "scoring_labels" / f"{c.case}.nii.gz",
        }
        for link, target in links.items():
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": dict(sorted(LABELS.items(), key=lambda kv: kv[1])),
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": "3D-IRCADb-01 patients (CC BY-NC-ND), liverseg issue 14 side by side",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    return [{**asdict(c), "image": str(converted / "imagesTs" / f"{c.case}_0000.nii.gz")} for c in cases]


def plans_path(work: Path = WORK) -> Path:
    return work / "nnUNet_preprocessed" / DATASET_NAME / "nnUNetPlans.json"


def plan_and_preprocess(work: Path, env_dir: Path, threads: int, replan: bool = False) -> float | None:
    """``nnUNetv2_plan_and_preprocess -d 914 -c 3d_fullres`` as a user runs it (once; ``replan`` redoes it).
    Returns its seconds, or None when an earlier plan was reused."""
    if plans_path(work).is_file() and not replan:
        return None
    cmd = [str(Path(env_dir) / "bin" / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
           "-np", str(threads), "-npfp", str(threads), "--verify_dataset_integrity"]
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=nnunet_env_vars(work, threads))
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    return time.perf_counter() - t


MODEL_CHILD = r"""
import json, sys, torch
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
torch.manual_seed(0)
plans, dataset = load_json({plans!r}), load_json({dataset!r})
pm = PlansManager(plans)
cm = pm.get_configuration("3d_fullres")
net = nnUNetTrainer.build_network_architecture(pm, cm, determine_num_input_channels(pm, cm, dataset),
    pm.get_label_manager(dataset).num_segmentation_heads, enable_deep_supervision=False)
save_json(plans, {folder!r} + "/plans.json", sort_keys=False)
save_json(dataset, {folder!r} + "/dataset.json", sort_keys=False)
torch.save({{"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
            "init_args": {{"configuration": "3d_fullres"}}, "inference_allowed_mirroring_axes": (0, 1, 2)}},
           {folder!r} + "/fold_all/checkpoint_final.pth")
print(json.dumps({{"parameters": sum(p.numel() for p in net.parameters())}}))
"""


def make_model_folder(work: Path, env_dir: Path) -> tuple[Path, int]:
    """A trained-model folder as ``nnUNetv2_train`` leaves one, with the plan's network at random weights.
    Returns the folder and the network's parameter count."""
    folder = work / "nnUNet_results" / DATASET_NAME / TRAINER_FOLDER
    (folder / "fold_all").mkdir(parents=True, exist_ok=True)
    code = MODEL_CHILD.format(plans=str(plans_path(work)), folder=str(folder),
                              dataset=str(work / "nnUNet_preprocessed" / DATASET_NAME / "dataset.json"))
    res = subprocess.run([str(env_python(env_dir)), "-c", code], capture_output=True, text=True,
                         env=nnunet_env_vars(work))
    if res.returncode != 0:
        raise RuntimeError(f"building the nnU-Net model folder failed:\n{res.stderr[-3000:]}")
    return folder, json.loads(res.stdout.strip().splitlines()[-1])["parameters"]


# ----------------------------------------------------------------------------------------------------------------
# the timed runs
# ----------------------------------------------------------------------------------------------------------------

NNUNET_CHILD = r"""
import json, sys, time
sys.path.insert(0, {benchmarks!r})
from _report import peak_rss_gb
import torch
torch.set_num_threads(int({threads}))
import nnunetv2, dynamic_network_architectures
from importlib.metadata import version
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
t0 = time.perf_counter()
predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring={mirroring!r},
                            perform_everything_on_device=True, device=torch.device("cpu"), verbose=False,
                            verbose_preprocessing=False, allow_tqdm=False)
predictor.initialize_from_trained_model_folder({folder!r}, use_folds=("all",), checkpoint_name="checkpoint_final.pth")
net = [0.0]
shapes = []
progress = open({progress!r}, "w", buffering=1)  # read by the parent when it stops a run at --timeout
progress.write(json.dumps({{"t0_epoch": time.time() - (time.perf_counter() - t0)}}) + "\n")
orig = predictor.predict_sliding_window_return_logits
def timed(x):
    shapes.append(tuple(x.shape[1:]))
    n = len(predictor._internal_get_sliding_window_slicers(shapes[-1])) * (8 if {mirroring!r} else 1)
    t = time.perf_counter()
    progress.write(json.dumps({{"start_s": t - t0, "passes": n, "shape": shapes[-1]}}) + "\n")
    r = orig(x); net[0] += time.perf_counter() - t; return r
predictor.predict_sliding_window_return_logits = timed
forward = predictor.network.forward
def counted(*a, **k):
    r = forward(*a, **k)
    progress.write(json.dumps({{"pass_end_s": time.perf_counter() - t0}}) + "\n")
    return r
predictor.network.forward = counted
predictor.predict_from_files_sequential([[{image!r}]], [{out!r}], save_probabilities=False, overwrite=True)
total = time.perf_counter() - t0
peak = peak_rss_gb()
windows = len(predictor._internal_get_sliding_window_slicers(shapes[0]))
passes = 8 if {mirroring!r} else 1
cm = predictor.configuration_manager
print(json.dumps({{"total_s": total, "net_s": net[0], "peak_rss_gb": peak, "windows": windows,
    "network_passes": windows * passes, "preprocessed_shape": shapes[0], "patch_size": list(cm.patch_size),
    "spacing": list(cm.spacing), "torch_threads": torch.get_num_threads(),
    "versions": {{"nnunetv2": version("nnunetv2"),
                 "dynamic_network_architectures": version("dynamic_network_architectures"),
                 "torch": torch.__version__}}}}))
"""


def run_child(cmd: Sequence[str], timeout: float | None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; its last stdout line is JSON. On timeout: ``{"timed_out": True, "limit_s", "peak_rss_gb"}`` with
    the child's peak resident memory read from ``/proc`` just before it is killed."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        peak = vmhwm_gb(proc.pid)
        killed = time.time()
        proc.kill()
        proc.communicate()
        return {"timed_out": True, "limit_s": timeout, "wall_s": time.perf_counter() - t, "peak_rss_gb": peak,
                "killed_epoch": killed}
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def run_nnunet(image: Path, out_dir: Path, *, work: Path, env_dir: Path, threads: int, mirroring: bool,
               timeout: float | None) -> dict[str, Any]:
    folder = work / "nnUNet_results" / DATASET_NAME / TRAINER_FOLDER
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = out_dir / "progress.jsonl"
    code = NNUNET_CHILD.format(benchmarks=CHILD_PATH, threads=threads, mirroring=bool(mirroring), folder=str(folder),
                               image=str(image), out=str(out_dir / "seg"), progress=str(progress))
    r = run_child([str(env_python(env_dir)), "-c", code], timeout, nnunet_env_vars(work, threads))
    if r.get("timed_out"):
        r["progress"] = progress_at_stop(progress)
        if r["progress"] and "t0_epoch" in r["progress"]:
            # measured from the same start as a finished run's total_s (the predictor's creation)
            r["stopped_at_s"] = r["killed_epoch"] - r["progress"]["t0_epoch"]
    return r


def progress_at_stop(path: Path) -> dict[str, Any] | None:
    """What a stopped nnU-Net run had done: seconds to the start of its sliding window, the network passes it
    needed and had finished, and the mean seconds per finished pass (measured; any total from them is an
    estimate)."""
    try:
        records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    t0 = next((r["t0_epoch"] for r in records if "t0_epoch" in r), None)
    start = next((r for r in records if "start_s" in r), None)
    ends = [r["pass_end_s"] for r in records if "pass_end_s" in r]
    base = {} if t0 is None else {"t0_epoch": t0}
    if start is None:
        return {**base, "sliding_window_started": False}
    out = {**base, "sliding_window_started": True, "start_s": start["start_s"], "passes_needed": start["passes"],
           "passes_done": len(ends), "preprocessed_shape": start["shape"]}
    if ends:
        out["s_per_pass"] = (ends[-1] - start["start_s"]) / len(ends)
        out["estimate_to_window_end_s"] = start["start_s"] + out["s_per_pass"] * start["passes"]
    return out


def run_ours(image: Path, out_dir: Path, *, threads: int) -> dict[str, Any]:
    """The shipped bundle's default inference, timed as ``inference_cpu.py`` does (its own child process)."""
    from inference_cpu import run_variant

    r = run_variant("aunet_ds", image, out_dir, threads, weights=True)
    return {k: r[k] for k in ("total_s", "net_s", "peak_rss_gb", "windows", "preprocessed_shape")}


TRAIN_CHILD = r"""
import json, sys, time
sys.path.insert(0, {benchmarks!r})
from _report import peak_rss_gb
import torch
torch.set_num_threads(int({threads}))
from nnunetv2.run.run_training import get_trainer_from_args
progress = open({progress!r}, "w", buffering=1)  # read by the parent when it stops the run at --timeout
t0 = time.perf_counter()
# as nnUNetv2_train {dataset} 3d_fullres all -device cpu builds it
trainer = get_trainer_from_args("{dataset}", "3d_fullres", "all", device=torch.device("cpu"))
trainer.on_train_start()
trainer.on_train_epoch_start()
setup = time.perf_counter() - t0
progress.write(json.dumps({{"setup_s": setup, "batch_size": trainer.batch_size}}) + "\n")
load, step = [], []
for i in range(int({iters}) + 1):
    t = time.perf_counter(); batch = next(trainer.dataloader_train); t1 = time.perf_counter()
    trainer.train_step(batch); t2 = time.perf_counter()
    load.append(t1 - t); step.append(t2 - t1)
    progress.write(json.dumps({{"load_s": load[-1], "step_s": step[-1]}}) + "\n")
print(json.dumps({{"setup_s": setup, "load_s": load[1:], "step_s": step[1:], "first_load_s": load[0],
    "first_step_s": step[0], "batch_size": trainer.batch_size,
    "patch_size": list(trainer.configuration_manager.patch_size),
    "peak_rss_gb": peak_rss_gb(), "torch_threads": torch.get_num_threads()}}))
"""


def time_training(work: Path, env_dir: Path, threads: int, iters: int, timeout: float | None) -> dict[str, Any]:
    """``iters`` iterations (after one warm-up) of nnU-Net's default trainer on the preprocessed dataset, fold
    ``all``; data loading + augmentation and the optimizer step timed apart (``nnUNet_n_proc_DA=0``)."""
    progress = work / "training_progress.jsonl"
    code = TRAIN_CHILD.format(benchmarks=CHILD_PATH, threads=threads, iters=iters, dataset=DATASET_ID,
                              progress=str(progress))
    r = run_child([str(env_python(env_dir)), "-c", code], timeout, nnunet_env_vars(work, threads, da_processes=0))
    if r.get("timed_out"):
        try:
            records = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
        except (OSError, ValueError):
            records = []
        r["iterations_done"] = [x for x in records if "step_s" in x]  # the first one is the warm-up
        r["setup"] = next((x for x in records if "setup_s" in x), None)
    else:
        r["per_iter_s"] = (sum(r["load_s"]) + sum(r["step_s"])) / len(r["step_s"])
        r["step_only_s"] = sum(r["step_s"]) / len(r["step_s"])
        its = SCHEDULE[0] * SCHEDULE[1]
        r["schedule_estimate_h"] = {"step_only": r["step_only_s"] * its / 3600, "with_loading": r["per_iter_s"] * its
                                    / 3600}
    return r


# ----------------------------------------------------------------------------------------------------------------
# the table and the report (pure: tested without nnU-Net)
# ----------------------------------------------------------------------------------------------------------------


def tool_label(mirroring: bool) -> str:
    return "nnU-Net v2 3d_fullres (default: mirroring on)" if mirroring else "nnU-Net v2 3d_fullres, mirroring off"


def build_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """``results[case] = {"ours": run, "nnunet": {"on"|"off": run}}`` -> one row per case and tool, with the ratio
    of our seconds and peak to each nnU-Net run's (a timed-out run gives a bound: ours / more than its limit)."""
    rows = []
    for case, r in results.items():
        ours = r["ours"]
        rows.append({"case": case, "tool": "ours (bundle inference.json, shipped weights)", "seconds": ours["total_s"],
                     "network_s": ours["net_s"], "peak_gb": ours["peak_rss_gb"], "ratio_s": None,
                     "ratio_peak": None, "bound": False})
        for mode, n in r.get("nnunet", {}).items():
            timed_out = bool(n.get("timed_out"))
            seconds = n.get("stopped_at_s", n.get("limit_s")) if timed_out else n["total_s"]
            peak = n.get("peak_rss_gb")
            rows.append({
                "case": case, "tool": tool_label(mode == "on"), "seconds": seconds,
                "network_s": None if timed_out else n["net_s"], "peak_gb": peak,
                "ratio_s": ours["total_s"] / seconds, "ratio_peak": ours["peak_rss_gb"] / peak if peak else None,
                "bound": timed_out,
            })
    return rows


def _f(x: Any, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| case | tool | seconds (load to written mask) | network (s) | peak RSS (GB) | ours / nnU-Net (s) "
             "| nnU-Net / ours (x faster) | ours / nnU-Net (peak) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bound = r["bound"]
        secs = f"> {r['seconds']:.0f} (stopped)" if bound else _f(r["seconds"])
        ratio = "" if r["ratio_s"] is None else ("< " if bound else "") + _f(r["ratio_s"], 3)
        faster = "" if r["ratio_s"] is None else ("> " if bound else "") + _f(1 / r["ratio_s"])
        peak = "" if r["ratio_peak"] is None else ("(at stop) " if bound else "") + _f(r["ratio_peak"], 2)
        lines.append(f"| {r['case']} | {r['tool']} | {secs} | {_f(r['network_s'])} | {_f(r['peak_gb'], 2)} "
                     f"| {ratio} | {faster} | {peak} |")
    return lines


def stopped_text(n: dict[str, Any]) -> str:
    """A stopped nnU-Net run in words: what was measured, and the estimate labelled as one."""
    text = f"stopped after {_f(n.get('stopped_at_s', n.get('limit_s')), 0)} s (--timeout {n['limit_s']:g})"
    pr = n.get("progress") or {}
    if not pr.get("sliding_window_started"):
        return text + ", before its sliding window started."
    text += (f"; its sliding window over {pr['preprocessed_shape']} started at {pr['start_s']:.1f} s and had done "
             f"{pr['passes_done']} of {pr['passes_needed']} network passes")
    if "s_per_pass" in pr:
        text += (f", {pr['s_per_pass']:.1f} s per pass (measured). Estimate, not measured: start + passes x s per "
                 f"pass = {pr['estimate_to_window_end_s']:.0f} s to the end of the sliding window, before resampling "
                 "the logits back and writing the mask.")
    return text


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Ours vs nnU-Net v2 on real CT", "",
        f"Date (UTC): {report['date_utc']}. Code {report['code']}; " + ", ".join(
            f"{k} {v}" for k, v in report["versions"].items()) + ".",
        f"Machine: {m['processor']}, {m['cores']} cores, load average at the start {m['load_start']}, at the end "
        f"{m['load_end']}; torch threads {report['threads']} for both tools.",
        f"Command: `{report['command']}`.", "",
    ]
    plan = report.get("nnunet_plan")
    if plan:
        lines += [f"nnU-Net plan (`nnUNetv2_plan_and_preprocess -d {DATASET_ID} -c 3d_fullres` on the same real CTs): "
                  f"spacing {plan['spacing']} mm, patch {plan['patch_size']}, batch {plan['batch_size']}, "
                  f"{plan['parameters'] / 1e6:.1f} M parameters (random weights).", ""]
    lines += table_lines(report["rows"])
    for case, r in report["results"].items():
        for mode, n in r.get("nnunet", {}).items():
            if not n.get("timed_out"):
                lines.append(f"\n{case}, nnU-Net mirroring {mode}: {n['windows']} windows of {n['patch_size']} over "
                             f"{n['preprocessed_shape']}, {n['network_passes']} network passes.")
            else:
                lines.append(f"\n{case}, nnU-Net mirroring {mode}: " + stopped_text(n))
        o = r["ours"]
        lines.append(f"\n{case}, ours: {o['windows']} windows over {o['preprocessed_shape']}.")
    tr = report.get("training")
    if tr and tr.get("timed_out"):
        done = tr.get("iterations_done") or []
        lines += ["", f"nnU-Net training on this CPU: stopped after {tr['limit_s']:g} s; iterations done (the first "
                  f"is the warm-up), data loading + augmentation / optimizer step in s: "
                  + (", ".join(f"{x['load_s']:.1f} / {x['step_s']:.1f}" for x in done) or "none")
                  + f"; peak at the stop {_f(tr.get('peak_rss_gb'), 2)} GB."]
    elif tr and tr.get("error"):
        lines += ["", "nnU-Net training timing failed: " + tr["error"].strip().splitlines()[-1]]
    elif tr:
        est = tr["schedule_estimate_h"]
        lines += ["", f"nnU-Net training on this CPU (default `nnUNetTrainer`, batch {tr['batch_size']}, patch "
                  f"{tr['patch_size']}, {len(tr['step_s'])} iterations after one warm-up): "
                  f"{tr['step_only_s']:.1f} s per optimizer step, {tr['per_iter_s']:.1f} s per iteration with data "
                  f"loading and augmentation in the same process; peak {tr['peak_rss_gb']:.2f} GB. Estimate (not "
                  f"run), {SCHEDULE[0]} x {SCHEDULE[1]} iterations at that rate: {est['step_only']:.0f} h "
                  f"(steps only) to {est['with_loading']:.0f} h."]
    for note in report.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--create-env", action="store_true", help="install nnU-Net v2 into --env and exit")
    p.add_argument("--env", type=Path, default=ENV_DIR, help="the nnU-Net environment (default %(default)s)")
    p.add_argument("--source", type=Path, help="real CT folder (default: liverseg real-eval's)")
    p.add_argument("--cases", nargs="+", help="case ids (default: all)")
    p.add_argument("--mirroring", nargs="+", choices=("on", "off"), default=["on"],
                   help="nnU-Net runs per case: on (its default), off, or both")
    p.add_argument("--timeout", type=float, default=None, help="stop an nnU-Net run after this many seconds")
    p.add_argument("--train-iters", type=int, default=0, help="time this many nnU-Net training iterations")
    p.add_argument("--train-timeout", type=float, default=None, help="stop the training timing after this many s")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--replan", action="store_true", help="run nnUNetv2_plan_and_preprocess again")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report prefix (.json, .md; default %(default)s)")
    p.add_argument("--note", action="append", default=[], help="a line printed under the table")
    args = p.parse_args(argv)
    if args.create_env:
        create_env(args.env)
        return 0
    from liverseg.realeval import resolve_source, skip_reason

    source = resolve_source(args.source)
    reason = skip_reason(source)
    if reason is None:
        reason = nnunet_skip_reason(args.env)
    if reason is not None:
        print(f"skipped: {reason}")
        return 0
    import monai
    import torch

    import liverseg

    torch.set_num_threads(args.threads)
    load_start = load_average()
    cases = prepare_raw_dataset(source)
    if args.cases:
        cases = [c for c in cases if c["case"] in args.cases]
    plan_s = plan_and_preprocess(WORK, args.env, args.threads, args.replan)
    if plan_s is not None:
        print(f"nnUNetv2_plan_and_preprocess: {plan_s:.0f} s")
    folder, n_params = make_model_folder(WORK, args.env)
    plans = json.loads(plans_path(WORK).read_text())["configurations"]["3d_fullres"]
    plan = {"spacing": plans["spacing"], "patch_size": plans["patch_size"], "batch_size": plans["batch_size"],
            "parameters": n_params, "plan_and_preprocess_s": plan_s}
    print(f"nnU-Net 3d_fullres plan: spacing {plan['spacing']}, patch {plan['patch_size']}, batch "
          f"{plan['batch_size']}, {n_params / 1e6:.1f} M parameters (random weights) in {folder}")
    results: dict[str, dict[str, Any]] = {}
    versions: dict[str, str] = {"liverseg": liverseg.__version__, "monai": monai.__version__,
                                "torch": torch.__version__}
    training = None
    if args.train_iters > 0:
        try:
            training = time_training(WORK, args.env, args.threads, args.train_iters, args.train_timeout)
        except RuntimeError as e:  # the inference runs below still run and are reported
            training = {"error": str(e)[-2000:]}
            print(f"nnU-Net training failed: {training['error'][-500:]}")
        if training.get("error"):
            pass
        elif training.get("timed_out"):
            print(f"nnU-Net training: stopped after {training['limit_s']:.0f} s; iterations done (the first is the "
                  f"warm-up): {training['iterations_done']}")
        else:
            print(f"nnU-Net training: {training['step_only_s']:.1f} s per step, {training['per_iter_s']:.1f} s per "
                  f"iteration with loading; estimate for {SCHEDULE[0]} x {SCHEDULE[1]}: "
                  f"{training['schedule_estimate_h']['step_only']:.0f}-"
                  f"{training['schedule_estimate_h']['with_loading']:.0f} h")
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        for c in cases:
            image = Path(c["image"])
            r: dict[str, Any] = {"shape": c["shape"], "spacing_mm": c["spacing_mm"], "nnunet": {}}
            r["ours"] = run_ours(image, Path(tmp) / c["case"], threads=args.threads)
            print(f"{c['case']} ours: {r['ours']['total_s']:.1f} s (network {r['ours']['net_s']:.1f} s), peak "
                  f"{r['ours']['peak_rss_gb']:.2f} GB", flush=True)
            for mode in args.mirroring:
                n = run_nnunet(image, Path(tmp) / c["case"] / f"nnunet_{mode}", work=WORK, env_dir=args.env,
                               threads=args.threads, mirroring=mode == "on", timeout=args.timeout)
                r["nnunet"][mode] = n
                if n.get("timed_out"):
                    print(f"{c['case']} nnU-Net mirroring {mode}: {stopped_text(n)} Peak so far "
                          f"{_f(n['peak_rss_gb'], 2)} GB", flush=True)
                else:
                    versions.update({k: v for k, v in n["versions"].items() if k != "torch"})
                    print(f"{c['case']} nnU-Net mirroring {mode}: {n['total_s']:.1f} s (network {n['net_s']:.1f} s, "
                          f"{n['network_passes']} passes), peak {n['peak_rss_gb']:.2f} GB", flush=True)
            results[c["case"]] = r
    rows = build_rows(results)
    report = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "code": code_version(), "versions": versions, "threads": args.threads,
        "machine": {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_start": load_start, "load_end": load_average()},
        "command": "python " + " ".join(without_note([str(Path(sys.argv[0]).relative_to(REPO))
                                                      if Path(sys.argv[0]).is_absolute() else sys.argv[0],
                                                      *sys.argv[1:]])),
        "nnunet_plan": plan, "results": results, "rows": rows, "training": training, "notes": args.note,
        "target": f"ours at least {TARGET_SPEEDUP:g}x faster than nnU-Net v2 at equal or better Dice",
    }
    print("\n".join(table_lines(rows)))
    for note in args.note:
        print(note)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
