"""``liverseg segment`` end to end on a full-size synthetic CT (512 x 512 x 200 by default), as a user runs it.

Writes the phantom once as NIfTI and as a DICOM series, then runs ``liverseg segment`` in a fresh process per input
(``--repeat`` times each) and prints the process wall time and the command's own breakdown: start-up (process start
to the first image read), reading the image, importing torch + MONAI, loading the model, and each step per study
(preprocess, network, postprocess, writing the mask + volumetry, the DICOM SEG + SR, the report).

    python benchmarks/segment_cli.py [--shape 512 512 200] [--repeat 3] [--inputs nifti dicom] [--no-report]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIVERSEG = [sys.executable, "-m", "liverseg"]
TIME_LINE = re.compile(
    r"start-up to first image read ([\d.]+) s \(reading it ([\d.]+) s\), torch \+ monai import ([\d.]+) s, "
    r"model load ([\d.]+) s, whole command ([\d.]+) s"
)
STEP = re.compile(r"(\w+) ([\d.]+)")


def make_inputs(folder: Path, shape: tuple[int, int, int]) -> dict[str, Path]:
    from liverseg.dicom import write_dicom_series
    from liverseg.imageio import write_nifti
    from liverseg.phantom import generate_phantom

    ph = generate_phantom(3, shape=shape, orientation="LPS")
    nifti = write_nifti(folder / "ct.nii.gz", ph.image, ph.affine)
    dicom = folder / "dicom" / "CT"
    write_dicom_series(dicom, ph.image, ph.affine, patient_id="BENCH^SEGMENT")
    return {"nifti": nifti, "dicom": dicom}


def run_once(source: Path, out: Path, report: bool) -> dict[str, float]:
    cmd = [*LIVERSEG, "segment", str(source), "--out", str(out), "--no-progress", "--device", "cpu"]
    if not report:
        cmd.append("--no-report")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    m = TIME_LINE.search(proc.stdout)
    if m is None:
        raise RuntimeError(f"no timing line in the output:\n{proc.stdout}")
    keys = ("startup", "read", "import_torch_monai", "model_load", "whole_command")
    result = {k: float(v) for k, v in zip(keys, m.groups())}
    result["process_wall"] = wall
    steps_line = next(line for line in proc.stdout.splitlines() if line.startswith("  ") and ": read" in line)
    for name, value in STEP.findall(steps_line.split(":", 1)[1]):
        result[f"step_{name}"] = float(value)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=[512, 512, 200])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--inputs", nargs="+", choices=("nifti", "dicom"), default=["nifti", "dicom"])
    p.add_argument("--no-report", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(Path(tmp), tuple(args.shape))
        for kind in args.inputs:
            runs = [
                run_once(inputs[kind], Path(tmp) / f"out_{kind}_{r}", not args.no_report) for r in range(args.repeat)
            ]
            runs.sort(key=lambda r: r["process_wall"])
            median = runs[len(runs) // 2]
            steps = ", ".join(f"{k[5:]} {v:.2f}" for k, v in median.items() if k.startswith("step_"))
            print(
                f"{kind} {'x'.join(map(str, args.shape))}: process wall {median['process_wall']:.2f} s (median of "
                f"{len(runs)}); start-up to first image read {median['startup']:.2f} s, "
                f"reading {median['read']:.2f} s, "
                f"torch + monai import {median['import_torch_monai']:.2f} s, model load {median['model_load']:.2f} s; "
                f"per study: {steps} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
