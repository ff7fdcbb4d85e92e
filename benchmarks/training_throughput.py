"""Training throughput of the bundle's ``train.json`` with and without caching, on synthetic phantoms.

Each setting (``cache_rate`` 1 = ``CacheDataset`` keeps every preprocessed case in memory, 0 = plain ``Dataset``
behaviour: every case is read and preprocessed again at each epoch; DataLoader ``num_workers`` 0 and 2) runs the
REAL ``bundles/liver_ct_seg/configs/train.json`` through ``monai.bundle.ConfigWorkflow`` with command-line style
overrides only (``dataset_dir``, ``max_epochs``, ``val_interval`` larger than ``max_epochs`` so validation never
runs, ``cache_rate``, ``num_workers``, output folders), in its own fresh process, on the same data with the same
seed. Timers are ignite event handlers on the bundle's ``SupervisedTrainer``:

- cache fill: building ``train#dataset`` (the ``CacheDataset`` runs the deterministic transforms on every case);
- data: waiting for the next batch from the DataLoader (``GET_BATCH_STARTED`` -> ``GET_BATCH_COMPLETED``): reading
  and preprocessing when not cached, the random crops / affine augmentation, collation, worker start-up;
- network step: the trainer's iteration function (forward, deep-supervision loss, backward, optimizer step);
- other: the rest of the epoch (train postprocessing and Dice metric, stats and TensorBoard handlers).

The first epoch is a warm-up (first-call allocations) and is reported apart; throughput is over the later epochs.

    python benchmarks/training_throughput.py [--cases 6] [--shape 256 256 96] [--epochs 3] \
        [--out benchmarks/results/training_throughput.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import CHILD_PATH, code_version, load_average, without_note  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "liver_ct_seg"
FOV_MM = (400.0, 400.0, 240.0)
DEFAULT_SETTINGS = ((1.0, 0), (0.0, 0), (1.0, 2), (0.0, 2))
NEVER = 10**6  # val_interval: validation never runs

CHILD = r"""
import json, sys, time
sys.path.insert(0, {benchmarks!r})
from _report import peak_rss_gb
sys.path.insert(0, {bundle!r})
import torch
torch.set_num_threads({threads})
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
override = json.loads({override!r})
wf = ConfigWorkflow(config_file={config!r}, meta_file={meta!r}, logging_file=False, workflow_type="train",
                    bundle_root={bundle!r}, **override)
wf.initialize()
t = time.perf_counter()
dataset = wf.parser.get_parsed_content("train#dataset")
cache_fill = time.perf_counter() - t
t = time.perf_counter()
trainer = wf.parser.get_parsed_content("train#trainer")
build = time.perf_counter() - t
epochs, cur, mark = [], {{}}, {{}}
def epoch_started(e):
    cur.clear(); cur.update(data=0.0, step=0.0, iterations=0, patches=0, steps=[], t0=time.perf_counter())
def epoch_completed(e):
    cur["total"] = time.perf_counter() - cur.pop("t0"); epochs.append(dict(cur))
def batch_started(e):
    mark["b"] = time.perf_counter()
def batch_completed(e):
    cur["data"] += time.perf_counter() - mark["b"]
    cur["iterations"] += 1
    cur["patches"] += int(e.state.batch["image"].shape[0])
trainer.add_event_handler(Events.EPOCH_STARTED, epoch_started)
trainer.add_event_handler(Events.EPOCH_COMPLETED, epoch_completed)
trainer.add_event_handler(Events.GET_BATCH_STARTED, batch_started)
trainer.add_event_handler(Events.GET_BATCH_COMPLETED, batch_completed)
step_fn = trainer._process_function
def timed_step(engine, batch):
    t = time.perf_counter(); out = step_fn(engine, batch); dt = time.perf_counter() - t
    cur["step"] += dt; cur["steps"].append(dt); return out
trainer._process_function = timed_step
t = time.perf_counter()
wf.run()
run = time.perf_counter() - t
cache = getattr(dataset, "_cache", None) or []  # preprocessed cases (cache_rate > 0 only)
shape = [int(s) for s in cache[0]["image"].shape[1:]] if cache and isinstance(cache[0], dict) else []
print(json.dumps({{"cache_fill_s": cache_fill, "build_s": build, "run_s": run, "epochs": epochs,
                  "train_cases": len(dataset), "cached_shape": shape,
                  "peak_rss_gb": peak_rss_gb()}}))
"""


def make_dataset(root: Path, num_cases: int, shape: Sequence[int] | None, spacing: Sequence[float] | None) -> None:
    """Write ``num_cases`` phantoms (seeds 1..N, orientation drawn by the seed) in nnU-Net raw layout at ``root``.

    ``shape`` without ``spacing`` covers a 400 x 400 x 240 mm field of view; both ``None``: the phantom's defaults.
    """
    from liverseg.dataset import write_case, write_dataset_json
    from liverseg.phantom import generate_phantom

    if shape is not None and spacing is None:
        spacing = tuple(f / s for f, s in zip(FOV_MM, shape))
    for i in range(num_cases):
        ph = generate_phantom(i + 1, shape=tuple(shape) if shape else None, spacing=tuple(spacing) if spacing else None)
        write_case(root, f"bench_{i:03d}", ph.image, ph.affine, ph.label, split="Tr")
    write_dataset_json(root, "TrainingThroughput", "synthetic phantoms for benchmarks/training_throughput.py")


def run_setting(
    data: Path,
    out: Path,
    cache_rate: float,
    num_workers: int,
    epochs: int,
    threads: int,
    num_folds: int,
    bundle: Path = BUNDLE,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One training run of ``bundle``'s train.json in a fresh process; returns its raw timings."""
    override = {
        "dataset_dir": str(data), "output_dir": str(out), "ckpt_dir": str(out / "ckpt"),
        "max_epochs": epochs, "val_interval": NEVER, "cache_rate": cache_rate, "num_workers": num_workers,
        "num_folds": num_folds, "seed": 0,
        # validation never runs: do not spend time caching its cases (the setting under test is train#dataset)
        "validate#dataset#cache_rate": 0.0,
    }
    override.update(overrides or {})
    code = CHILD.format(
        bundle=str(bundle), threads=threads, config=str(bundle / "configs" / "train.json"),
        meta=str(bundle / "configs" / "metadata.json"), override=json.dumps(override), benchmarks=CHILD_PATH,
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=bundle, env=env)
    if res.returncode != 0:
        raise RuntimeError(
            f"training with cache_rate {cache_rate}, num_workers {num_workers} failed (exit {res.returncode}):\n"
            f"{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
        )
    return json.loads(res.stdout.strip().splitlines()[-1])


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Throughput over the epochs after the first (or the only epoch when there is one) and time fractions."""
    timed = raw["epochs"][1:] or raw["epochs"]
    total = sum(e["total"] for e in timed)
    its = sum(e["iterations"] for e in timed)
    patches = sum(e["patches"] for e in timed)
    data = sum(e["data"] for e in timed)
    step = sum(e["step"] for e in timed)
    return {
        "cache_fill_s": raw["cache_fill_s"],
        "first_epoch_s": raw["epochs"][0]["total"],
        "epoch_s": total / len(timed),
        "timed_epochs": len(timed),
        "iterations": its,
        "it_per_s": its / total,
        "patches_per_s": patches / total,
        "data_frac": data / total,
        "step_frac": step / total,
        "other_frac": max(0.0, 1.0 - (data + step) / total),
        "data_s_per_it": data / its,
        "step_s_per_it": step / its,
        "train_cases": raw["train_cases"],
        "patches_per_it": patches / its,
        "cached_shape": raw["cached_shape"],
        "peak_rss_gb": raw["peak_rss_gb"],
        "run_s": raw["run_s"],
    }


def measure(
    num_cases: int = 6,
    shape: Sequence[int] | None = (256, 256, 96),
    spacing: Sequence[float] | None = None,
    epochs: int = 3,
    settings: Sequence[tuple[float, int]] = DEFAULT_SETTINGS,
    threads: int | None = None,
    num_folds: int | None = None,
    workdir: Path | None = None,
    bundle: Path = BUNDLE,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate the phantoms, then train once per ``(cache_rate, num_workers)`` setting; return the figures.

    ``num_folds`` defaults to ``num_cases`` (one validation case held out, the rest trains). ``overrides`` are
    extra config overrides for every run (e.g. a smaller ``roi_size`` in tests).

    Returns a dict with ``settings`` (one summary per setting, see :func:`summarize`, plus ``cache_rate`` and
    ``num_workers``), ``speedup`` (iterations/s cached / not cached, per ``num_workers``) and the data sizes.
    """
    if num_cases < 2:
        raise ValueError(f"need at least 2 cases (one is held out for validation), got {num_cases}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    for c, w in settings:
        if not 0.0 <= c <= 1.0 or w < 0:
            raise ValueError(f"bad setting (cache_rate {c}, num_workers {w}): cache_rate in [0, 1], workers >= 0")
    threads = threads or os.cpu_count() or 1
    num_folds = num_folds or num_cases
    results = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        data = Path(tmp) / "Dataset900_Throughput"
        t = time.perf_counter()
        make_dataset(data, num_cases, shape, spacing)
        make_s = time.perf_counter() - t
        for cache_rate, workers in settings:
            raw = run_setting(data, Path(tmp) / f"run_c{cache_rate}_w{workers}", cache_rate, workers, epochs,
                              threads, num_folds, Path(bundle).resolve(), overrides)
            results.append({"cache_rate": cache_rate, "num_workers": workers, **summarize(raw)})
        import nibabel as nib

        first = nib.load(str(next(iter(sorted((data / "imagesTr").glob("*.nii.gz"))))))
        input_shape = tuple(int(s) for s in first.shape)
        input_spacing = tuple(round(float(s), 2) for s in first.header.get_zooms()[:3])
    # measured speedup, and the same with one common network step time (median over all runs): the step is the
    # same work in every setting but is what varies most on a shared machine
    common_step = statistics.median(r["step_s_per_it"] for r in results)
    speedup, speedup_same_step = {}, {}
    for w in sorted({w for _, w in settings}):
        cached = [r for r in results if r["num_workers"] == w and r["cache_rate"] == 1.0]
        plain = [r for r in results if r["num_workers"] == w and r["cache_rate"] == 0.0]
        if cached and plain:
            c, p = cached[0], plain[0]
            speedup[w] = c["it_per_s"] / p["it_per_s"]
            non_step = [(1.0 - r["step_frac"]) / r["it_per_s"] for r in (c, p)]  # s/it outside the network step
            speedup_same_step[w] = (common_step + non_step[1]) / (common_step + non_step[0])
    return {
        "num_cases": num_cases, "input_shape": input_shape, "input_spacing": input_spacing, "epochs": epochs,
        "threads": threads, "num_folds": num_folds, "make_data_s": make_s, "settings": results, "speedup": speedup,
        "speedup_same_step": speedup_same_step, "common_step_s": common_step,
    }


def _row(r: dict[str, Any]) -> str:
    return (
        f"| {r['cache_rate']:g} | {r['num_workers']} | {r['cache_fill_s']:.1f} | {r['first_epoch_s']:.1f} | "
        f"{r['epoch_s']:.1f} | {r['it_per_s']:.3f} | {r['patches_per_s']:.2f} | {100 * r['data_frac']:.0f} % | "
        f"{100 * r['step_frac']:.0f} % | {100 * r['other_frac']:.0f} % | {r['data_s_per_it']:.2f} | "
        f"{r['step_s_per_it']:.2f} | {r['peak_rss_gb']:.2f} |"
    )


def report_lines(m: dict[str, Any]) -> list[str]:
    """The figures as printable lines."""
    lines = [
        f"data: {m['num_cases']} phantoms {m['input_shape']} at {m['input_spacing']} mm (written in "
        f"{m['make_data_s']:.1f} s), {m['settings'][0]['train_cases']} training cases, {m['epochs']} epochs "
        f"(first = warm-up), {m['threads']} torch threads",
    ]
    for r in m["settings"]:
        lines.append(
            f"cache_rate {r['cache_rate']:g}, num_workers {r['num_workers']}: cache fill {r['cache_fill_s']:.1f} s, "
            f"first epoch {r['first_epoch_s']:.1f} s, then {r['epoch_s']:.1f} s/epoch = {r['it_per_s']:.3f} it/s, "
            f"{r['patches_per_s']:.2f} patches/s; data {100 * r['data_frac']:.0f} %, network step "
            f"{100 * r['step_frac']:.0f} %, other {100 * r['other_frac']:.0f} %; peak RSS {r['peak_rss_gb']:.2f} GB"
        )
    for w, s in m["speedup"].items():
        lines.append(
            f"speedup of caching (it/s cached / not cached), num_workers {w}: {s:.2f}x measured, "
            f"{m['speedup_same_step'][w]:.2f}x with a common network step of {m['common_step_s']:.2f} s/it"
        )
    return lines


def markdown(m: dict[str, Any], command: str, load_start: str, load_end: str, notes: str = "") -> str:
    """A markdown section with the machine, command, table and method."""
    s0 = m["settings"][0]
    cached = next((s["cached_shape"] for s in m["settings"] if s["cached_shape"]), None)
    after = f"after the deterministic transforms a case is about {' x '.join(map(str, cached))} voxels" if cached else (
        "no setting cached the cases")
    lines = [
        "## Training throughput with and without caching", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads {m['threads']}, no GPU; "
        f"{datetime.date.today().isoformat()}. Load average (1, 5, 15 min) at start {load_start}, at end {load_end}.",
        f"Command: `{command}`. Code: {code_version()}.", "",
        f"Data: {m['num_cases']} phantoms (liverseg.phantom, seeds 1-{m['num_cases']}) of {m['input_shape'][0]} x "
        f"{m['input_shape'][1]} x {m['input_shape'][2]} voxels ({m['input_spacing'][0]} x {m['input_spacing'][1]} x "
        f"{m['input_spacing'][2]} mm for the first), nnU-Net layout; {s0['train_cases']} train (num_folds "
        f"{m['num_folds']}: one case held out); {after}. Default `train.json` (AttentionUNetDS, "
        f"{s0['patches_per_it']:.1f} patches of 96 x 96 x 64 per iteration on average: batch 2 x 2 crops, Dice+CE, "
        f"AdamW); {m['epochs']} epochs, the first a warm-up.", "",
        "| cache_rate | num_workers | cache fill (s) | first epoch (s) | epoch (s) | iterations/s | patches/s "
        "| data | network step | other | data s/it | step s/it | peak RSS (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[_row(r) for r in m["settings"]],
        "",
        "Speedup of caching (iterations/s with cache_rate 1 / with cache_rate 0): "
        + "; ".join(f"num_workers {w}: **{s:.2f}x**" for w, s in m["speedup"].items()) + ". "
        "With one common network step time for all settings (the median, "
        f"{m['common_step_s']:.2f} s/it: the step is the same work everywhere, but varies most on a shared "
        "machine) and each setting's own data and other time per iteration: "
        + "; ".join(f"num_workers {w}: {s:.2f}x" for w, s in m["speedup_same_step"].items()) + ".", "",
        "How: each setting is one run of the real `bundles/liver_ct_seg/configs/train.json` through "
        "`monai.bundle.ConfigWorkflow` in a fresh process, with overrides only: `dataset_dir`, `max_epochs`, "
        f"`val_interval {NEVER}` (no validation), `cache_rate`, `num_workers`, `num_folds`, `seed 0`, output "
        "folders, and `validate#dataset#cache_rate 0` (validation never runs, so its cases are not cached). "
        "Runs one after the other, never concurrently. *cache fill* = building `train#dataset` (with cache_rate 1 "
        "the deterministic transforms of every training case: load, orientation, resampling to 2 x 2 x 2.5 mm, "
        "body crop, intensity window). Per epoch, ignite handlers on the trainer measure *data* (waiting for the "
        "next batch: loading and preprocessing when not cached, random crops and affine augmentation, collation, "
        "DataLoader worker start-up, which happens every epoch as the workers are not persistent) and the "
        "*network step* (the trainer's iteration function: forward, deep-supervision loss, backward, AdamW "
        "step); *other* is the rest (train postprocessing and Dice metric, loss logging, TensorBoard). "
        "Throughput and fractions are over the epochs after the first; *patches* counts the 96 x 96 x 64 crops "
        "in the batches. Peak RSS is the main process (DataLoader workers not included).",
    ]
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=6, help="number of phantoms (default 6; one is held out)")
    p.add_argument("--shape", type=int, nargs=3, default=(256, 256, 96), help="phantom size (default 256 256 96)")
    p.add_argument("--spacing", type=float, nargs=3, help="voxel size in mm (default: 400 x 400 x 240 mm FOV)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per setting, the first a warm-up (default 3)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers to try")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    p.add_argument("--out", type=Path, help="write a markdown section here")
    p.add_argument("--json", type=Path, help="also write every figure (raw runs included) as JSON here")
    p.add_argument("--note", default="", help="a line added to the markdown (e.g. what else ran on the machine)")
    args = p.parse_args(argv)
    settings = [(c, w) for w in args.workers for c in (1.0, 0.0)]
    load_start = load_average()
    print(f"load average at start: {load_start} ({os.cpu_count()} cores)", flush=True)
    m = measure(args.cases, args.shape, args.spacing, args.epochs, settings, args.threads)
    load_end = load_average()
    for line in report_lines(m):
        print(line)
    print(f"load average at end: {load_end}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(m, indent=1, default=str))
    if args.out:
        given = without_note(sys.argv[1:] if argv is None else argv)
        command = shlex.join(["python", "benchmarks/training_throughput.py", *given])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown(m, command, load_start, load_end, args.note))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
