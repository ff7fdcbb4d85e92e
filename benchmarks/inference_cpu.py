"""Inference benchmark on a full-size synthetic CT (512 x 512 x 200 by default), run in fresh processes.

Prints, per network variant: end-to-end seconds (load -> saved mask, the bundle's inference.json), peak resident
memory of that process, the network's own sliding-window time on the preprocessed volume, its achieved GFLOP/s
next to this machine's measured fp32 matmul peak, and the ratio of end-to-end to network time. Also a plain MONAI
``UNet`` of similar size through the same pipeline, for a like-for-like ratio in the same run.

    python benchmarks/inference_cpu.py [--shape 512 512 200] [--variants aunet_ds unet aunet dalunet] \
        [--out BENCHMARKS.md] [--image CT.nii.gz] [--repeat 3] [--steps]

``--steps`` adds, per run, the seconds of each pre- and postprocessing transform (timed inside the same run);
``--repeat N`` runs each variant N times (fresh processes) and reports the run with the median end-to-end time;
``--image`` times an existing NIfTI instead of writing the synthetic one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import CHILD_PATH  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "liver_ct_seg"
PLAIN_UNET = {
    "_target_": "monai.networks.nets.UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [8, 16, 32, 64, 128],
    "strides": [2, 2, 2, 2],
    "num_res_units": 0,
    "norm": "instance",
}


def matmul_peak_gflops(n: int = 2048, repeat: int = 5) -> float:
    import torch

    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeat))
    return 2 * n**3 / best / 1e9


FIRST_TOUCH = (
    "import time, numpy as np; a = np.empty(64 * 2**20, np.uint8); t = time.perf_counter(); a.fill(1); "
    "print(time.perf_counter() - t)"
)


def first_touch_ms_per_mb() -> float:
    """Milliseconds per MB to write memory a fresh process has just allocated (64 MB): page faults and zeroing, and
    on a virtual machine whose host backs guest memory lazily, the host's first touch (seen here: 0.2-2.5 ms/MB)."""
    res = subprocess.run([sys.executable, "-c", FIRST_TOUCH], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1]) * 1e3 / 64


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def make_ct(path: Path, shape: tuple[int, int, int]):
    """A phantom CT of ``shape`` (0.78 x 0.78 x 1.0 mm-ish grid covering the abdomen), written as NIfTI; returns the
    phantom (its ``label`` and ``affine`` for a benchmark that needs the truth, ``benchmarks/robot_user.py``)."""
    from liverseg.imageio import write_nifti
    from liverseg.phantom import generate_phantom

    fov = (400.0, 400.0, 200.0)
    ph = generate_phantom(0, shape=shape, spacing=tuple(f / s for f, s in zip(fov, shape)), orientation="LPS")
    write_nifti(path, ph.image, ph.affine)
    return ph


CHILD = r"""
import json, sys, time
sys.path.insert(0, {benchmarks!r})
from _report import peak_rss_gb
sys.path.insert(0, {bundle!r})
import torch
torch.set_num_threads(int({threads}))
from monai.bundle import ConfigWorkflow
from torch.utils.flop_counter import FlopCounterMode
t0 = time.perf_counter()
wf = ConfigWorkflow(config_file={configs!r}, meta_file={meta!r}, logging_file=False, workflow_type="infer",
                    bundle_root={bundle!r}, input_files=[{image!r}], output_dir={out!r}, **json.loads({override!r}))
wf.initialize()
steps = {{}}
if {steps!r}:
    # time each pre-/postprocessing transform where Compose calls it (class-level wrapper, as for the inferer)
    def timed_class(cls, name):
        call = cls.__call__
        def wrapper(self, *a, **k):
            t = time.perf_counter()
            r = call(self, *a, **k)
            steps[name] = steps.get(name, 0.0) + time.perf_counter() - t
            return r
        cls.__call__ = wrapper
    for stage in ("preprocessing", "postprocessing"):
        for tr in wf.parser.get_parsed_content(stage).transforms:
            timed_class(type(tr), stage[:-len("processing")] + "." + type(tr).__name__)
    steps["setup"] = time.perf_counter() - t0
net_time = [0.0]
shapes = []
inferer = wf.parser.get_parsed_content("inferer")
orig = inferer.__call__
def timed_call(*a, **k):
    shapes.append(tuple(a[0].shape[2:]))
    t = time.perf_counter(); r = orig(*a, **k); net_time[0] += time.perf_counter() - t; return r
type(inferer).__call__ = lambda self, *a, **k: timed_call(*a, **k)
wf.run()
total = time.perf_counter() - t0
# peak memory of the pipeline, before the FLOP count below (a forward pass with autograd on keeps its activations)
peak = peak_rss_gb()
net = wf.parser.get_parsed_content("network").eval()
roi = wf.parser["roi_size"]
x = torch.zeros(1, 1, *roi)
# counted with autograd on: the networks' CPU fast path (oneDNN called directly, scripts/networks/channels_last.py)
# runs only without autograd, and FlopCounterMode counts aten.convolution, not the oneDNN op; same arithmetic
with torch.enable_grad(), FlopCounterMode(display=False) as fc:
    net(x)
flops_per_window = fc.get_total_flops()
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval
size = [max(s, r) for s, r in zip(shapes[0], roi)]
windows = len(dense_patch_slices(size, roi, _get_scan_interval(size, roi, 3, [wf.parser["sw_overlap"]] * 3)))
print(json.dumps({{"total_s": total, "net_s": net_time[0], "flops_per_window": flops_per_window,
    "windows": windows, "preprocessed_shape": shapes[0], "steps": steps,
    "peak_rss_gb": peak}}))
"""


def run_variant(name: str, image: Path, out: Path, threads: int, weights: bool, steps: bool = False) -> dict:
    configs = [str(BUNDLE / "configs" / "inference.json")]
    override: dict = {}
    if name == "plain_monai_unet":
        override["network_def"] = PLAIN_UNET
    elif name != "aunet_ds":
        configs.append(str(BUNDLE / "configs" / "variants" / f"{name}.json"))
    if not weights or name != "aunet_ds":
        # no trained weights for this network: time it with random weights (speed does not depend on them)
        ckpt = out / f"{name}_ckpt"
        ckpt.mkdir(parents=True, exist_ok=True)
        override["ckpt_dir"] = str(ckpt)
        override["handlers"] = [{"_target_": "StatsHandler", "iteration_log": False}]
    code = CHILD.format(
        bundle=str(BUNDLE), threads=threads, configs=configs, meta=str(BUNDLE / "configs" / "metadata.json"),
        image=str(image), out=str(out / name), override=json.dumps(override), steps=bool(steps),
        benchmarks=CHILD_PATH,
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=(512, 512, 200))
    p.add_argument("--variants", nargs="+", default=["aunet_ds", "plain_monai_unet", "unet", "aunet", "dalunet"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, help="write a markdown report here")
    p.add_argument("--image", type=Path, help="time this NIfTI instead of a synthetic CT of --shape")
    p.add_argument("--repeat", type=int, default=1, help="runs per variant; the median end-to-end run is reported")
    p.add_argument("--steps", action="store_true", help="also print the seconds of each pre-/postprocessing step")
    args = p.parse_args()
    if args.repeat < 1:
        p.error(f"--repeat must be >= 1, got {args.repeat}")
    if args.image is not None and not args.image.is_file():
        p.error(f"--image {args.image} is not a file")
    import torch

    torch.set_num_threads(args.threads)
    peak_start = matmul_peak_gflops()
    print(f"fp32 matmul peak (2048^2, {args.threads} threads): {peak_start:.1f} GFLOP/s")
    touch = first_touch_ms_per_mb()
    print(f"first touch of fresh memory in a new process: {touch:.2f} ms/MB (every new full-volume array pays it)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.image is not None:
            image = args.image
        else:
            image = tmp_path / "ct.nii.gz"
            t = time.perf_counter()
            make_ct(image, tuple(args.shape))
            print(f"synthetic CT {tuple(args.shape)} written in {time.perf_counter() - t:.1f} s")
        for name in args.variants:
            runs = sorted(
                (run_variant(name, image, tmp_path, args.threads, weights=True, steps=args.steps)
                 for _ in range(args.repeat)),
                key=lambda run: run["total_s"],
            )
            r = runs[len(runs) // 2]
            r["gflops_per_s"] = r["flops_per_window"] * r["windows"] / max(r["net_s"], 1e-9) / 1e9
            rows.append((name, r))
            print(f"{name}: end-to-end {r['total_s']:.1f} s, network {r['net_s']:.1f} s "
                  f"({r['total_s'] / max(r['net_s'], 1e-9):.2f}x), peak RSS {r['peak_rss_gb']:.2f} GB, "
                  f"{r['windows']} windows over {r['preprocessed_shape']}, {r['gflops_per_s']:.1f} GFLOP/s "
                  f"({100 * r['gflops_per_s'] / peak_start:.0f}% of the matmul peak measured at the start)")
            if args.repeat > 1:
                print(f"  {args.repeat} runs, end-to-end / network: "
                      + ", ".join(f"{x['total_s']:.1f}/{x['net_s']:.1f}" for x in runs))
            if args.steps:
                rest = r["total_s"] - r["net_s"] - sum(r["steps"].values())
                print("  steps (s): " + ", ".join(f"{k} {v:.2f}" for k, v in r["steps"].items())
                      + f", network {r['net_s']:.2f}, other {rest:.2f}")
    # the peak moves with the machine's clock (186-333 GFLOP/s seen on the same 2-core machine): measured again at
    # the end, and the higher of the two is the reference (the lower percentage)
    peak_end = matmul_peak_gflops()
    peak = max(peak_start, peak_end)
    print(f"fp32 matmul peak at the end: {peak_end:.1f} GFLOP/s; reference peak {peak:.1f} GFLOP/s: "
          + ", ".join(f"{name} {100 * r['gflops_per_s'] / peak:.0f}%" for name, r in rows))
    if args.out:
        lines = [
            "# Inference benchmark", "",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
            f"{args.threads}; fp32 matmul peak {peak_start:.1f} GFLOP/s at the start, {peak_end:.1f} at the end "
            f"(reference: {peak:.1f}); first touch of fresh memory {touch:.2f} ms/MB. "
            f"Command: `python {' '.join(sys.argv)}`.",
            (f"Input: synthetic CT {tuple(args.shape)} voxels (LPS, 0.78 x 0.78 x 1.0 mm), default inference.json."
             if args.image is None else f"Input: {args.image.name}, default inference.json."), "",
            "| network | end to end (s) | network (s) | end-to-end / network | peak RSS (GB) | network GFLOP/s "
            "| % of matmul peak |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in rows:
            lines.append(f"| {name} | {r['total_s']:.1f} | {r['net_s']:.1f} | "
                         f"{r['total_s'] / max(r['net_s'], 1e-9):.2f} | {r['peak_rss_gb']:.2f} | "
                         f"{r['gflops_per_s']:.1f} | {100 * r['gflops_per_s'] / peak:.0f}% |")
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
