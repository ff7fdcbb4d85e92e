"""REST overhead of the MONAI Label server against running the bundle directly, on one synthetic CT.

Three ways to segment the same image with the same bundle (``bundles/liver_ct_seg``, shipped weights), each in
its own process, each warm (one untimed warm-up call loads the network and fills caches, then ``--repeats`` timed
calls; the median is reported):

- ``direct``: the bundle's ``configs/inference.json`` through ``monai.bundle.ConfigWorkflow`` (what
  ``python -m monai.bundle run`` does): read the NIfTI, preprocess, sliding window, postprocess, save the mask.
- ``app task``: the liver app's own inference task (``apps/liver/lib/infer.py``, a monailabel ``BundleInferTask``)
  called in-process, without HTTP: the same bundle pipeline wrapped by monailabel (result written to a temp file,
  volumetry added to the result JSON).
- ``server``: the real server (``python -m liverseg serve`` on 127.0.0.1 with ``apps/liver``), timed by the client
  from sending ``POST /infer/liver_ct_seg?image=<id>`` to having received the whole multipart answer (mask + JSON).

The overhead is ``(server - direct) / direct``, split into parts that add up to it: the server's monailabel task
outside the network against direct outside the network (e.g. the app's volumetry report), HTTP and request
handling (client clock - the task's own total), and the difference of the network's own time (the same work: noise
on a shared machine). The server's per-stage latencies (pre / infer / invert / post / write, and per transform,
from its result JSON) are printed too, with the app's volumetry report (``liverseg.volumetry``) timed step by step
on the final mask. The ``app task`` run gives the same breakdown in-process and times the volumetry inside the
task. The masks of the three paths are compared voxel by voxel.

    python benchmarks/server_overhead.py [--shape 512 512 200] [--repeats 3] [--threads 2] \
        [--out benchmarks/results/server_overhead.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import CHILD_PATH, code_version, load_average, vmhwm_gb, without_note  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "liver_ct_seg"
APP = REPO / "apps" / "liver"
MODEL = "liver_ct_seg"
IMAGE_ID = "bench_ct"
FOV_MM = (400.0, 400.0, 200.0)
TARGET_OVERHEAD = 0.10
STAGES = ("pre", "infer", "invert", "post", "write", "total")


def make_ct(path: Path, shape: Sequence[int], spacing: Sequence[float] | None = None) -> None:
    """Write a phantom CT of ``shape`` (LPS) to ``path``; by default its voxels cover a 400 x 400 x 200 mm field
    of view, as a clinical abdominal CT (0.78 x 0.78 x 1.0 mm for 512 x 512 x 200)."""
    from liverseg.imageio import write_nifti
    from liverseg.phantom import generate_phantom

    if spacing is None:
        spacing = tuple(f / s for f, s in zip(FOV_MM, shape))
    ph = generate_phantom(0, shape=tuple(shape), spacing=tuple(spacing), orientation="LPS")
    write_nifti(path, ph.image, ph.affine)


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _run_child(code: str, threads: int, what: str, timeout: float = 3600) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=_child_env(threads),
        timeout=timeout,
    )
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# the bundle's inference.json by monai.bundle, in a fresh process: one warm-up run, then `repeats` timed runs
DIRECT_CHILD = r"""
import glob, json, os, sys, time
sys.path.insert(0, {benchmarks!r})
from _report import peak_rss_gb
sys.path.insert(0, {bundle!r})
import torch
torch.set_num_threads({threads})
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.handlers import CheckpointLoader
wf = ConfigWorkflow(config_file={config!r}, meta_file={meta!r}, logging_file=False, workflow_type="infer",
                    bundle_root={bundle!r}, input_files=[{image!r}], output_dir={out!r})
wf.initialize()
evaluator = wf.parser.get_parsed_content("evaluator")
inferer = wf.parser.get_parsed_content("inferer")
clock = {{"net": 0.0, "load_pre": 0.0}}
orig = type(inferer).__call__
def timed(self, *a, **k):
    t = time.perf_counter(); r = orig(self, *a, **k); clock["net"] += time.perf_counter() - t; return r
type(inferer).__call__ = timed
marks = {{}}
evaluator.add_event_handler(Events.GET_BATCH_STARTED, lambda e: marks.__setitem__("b", time.perf_counter()))
def batch_completed(e):
    clock["load_pre"] += time.perf_counter() - marks["b"]
evaluator.add_event_handler(Events.GET_BATCH_COMPLETED, batch_completed)
post = wf.parser.get_parsed_content("postprocessing")  # the instance the evaluator runs
steps = {{}}
class Timed:
    def __init__(self, t):
        self.t, self.name = t, type(t).__name__
    def __call__(self, data):
        t0 = time.perf_counter()
        r = self.t(data)
        steps[self.name] = steps.get(self.name, 0.0) + time.perf_counter() - t0
        return r
post.transforms = tuple(Timed(t) for t in post.transforms)
runs = []
for i in range({warmup} + {repeats}):
    clock.update(net=0.0, load_pre=0.0)
    steps.clear()
    t = time.perf_counter()
    wf.run()
    total = time.perf_counter() - t
    runs.append({{"total": total, "load_pre": clock["load_pre"], "net": clock["net"],
                 "post_save": total - clock["load_pre"] - clock["net"], "outside_net": total - clock["net"],
                 "post_transforms": dict(steps)}})
    if i == 0:  # warm: the weights stay in memory, as in the server (its network cache)
        for h in wf.parser.get_parsed_content("handlers"):
            if isinstance(h, CheckpointLoader) and evaluator.has_event_handler(h, Events.STARTED):
                evaluator.remove_event_handler(h, Events.STARTED)
mask = sorted(glob.glob(os.path.join({out!r}, "*seg*")))
print(json.dumps({{"warmup": runs[0], "runs": runs[{warmup}:], "mask": mask[0] if mask else None,
                  "peak_rss_gb": peak_rss_gb()}}))
"""

# the app's inference task (what POST /infer runs inside the server), called in-process without HTTP
APP_TASK_CHILD = r"""
import json, os, shutil, sys, time
sys.path.insert(0, {benchmarks!r})
from _report import peak_rss_gb
sys.path.insert(0, {app!r})
import torch
torch.set_num_threads({threads})
from lib.bundles import prepare_bundle
from lib.infer import LiverSegInferTask
served = prepare_bundle({bundle!r}, {model_root!r}, "")
task = LiverSegInferTask(str(served.path), {{}}, variant="")
if not task.is_valid():
    raise SystemExit("the app's infer task is not valid for " + str(served.path))
volumetry, spent = task.volumetry, [0.0]
def timed_volumetry(data):
    t0 = time.perf_counter(); r = volumetry(data); spent[0] += time.perf_counter() - t0; return r
task.volumetry = timed_volumetry  # called by the task's writer: part of monailabel's "write" latency
runs, latencies, mask = [], [], None
for i in range({warmup} + {repeats}):
    spent[0] = 0.0
    t = time.perf_counter()
    result_file, result_json = task({{"image": {image!r}, "device": "cpu"}})
    total = time.perf_counter() - t
    runs.append({{"total": total, "volumetry": spent[0]}})
    latencies.append(result_json.get("latencies", {{}}))
    mask = {out!r}
    shutil.move(result_file, mask)
print(json.dumps({{"warmup": runs[0], "runs": runs[{warmup}:], "latencies": latencies[{warmup}:], "mask": mask,
                  "peak_rss_gb": peak_rss_gb()}}))
"""


# the app's volumetry report (liverseg.volumetry, called by the app's writer) on the final mask, step by step
# (the steps of liverseg.volumetry.volumetry, each timed once more on its own)
VOLUMETRY_CHILD = r"""
import json, time
import nibabel as nib
import numpy as np
from scipy import ndimage
from liverseg.volumetry import _bounding_box, volumetry
img = nib.load({mask!r})
label = np.ascontiguousarray(np.asarray(img.dataobj)).squeeze()
out = {{}}
def timed(name, fn):
    t = time.perf_counter(); r = fn(); out[name] = time.perf_counter() - t; return r
timed("total", lambda: volumetry(label, img.affine))
timed("min/max (value check)", lambda: (label.min(), label.max()))
tumor = timed("label == 2", lambda: label == 2)
timed("count_nonzero (liver, tumor)", lambda: (np.count_nonzero(label == 1), np.count_nonzero(tumor)))
if tumor.any():
    box = timed("tumor bounding box", lambda: _bounding_box(tumor))
    sub = tumor[box]
    comp, num = timed("ndimage.label in the box", lambda: ndimage.label(sub, structure=np.ones((3, 3, 3), bool)))
    timed("ndimage.center_of_mass in the box", lambda: ndimage.center_of_mass(sub, comp, index=np.arange(1, num + 1)))
out["voxels"] = int(label.size)
print(json.dumps(out))
"""


def profile_volumetry(mask: Path, threads: int) -> dict[str, float]:
    """Seconds of :func:`liverseg.volumetry.volumetry` on ``mask`` and of its main steps, in a fresh process."""
    return _run_child(VOLUMETRY_CHILD.format(mask=str(mask)), threads, "volumetry profile")


def run_direct(
    image: Path, out: Path, repeats: int, threads: int, bundle: Path = BUNDLE, warmup: int = 1
) -> dict[str, Any]:
    """Warm runs of the bundle's inference.json (ConfigWorkflow) in a fresh process."""
    code = DIRECT_CHILD.format(
        bundle=str(bundle), threads=threads, config=str(bundle / "configs" / "inference.json"),
        meta=str(bundle / "configs" / "metadata.json"), image=str(image), out=str(out), repeats=repeats,
        warmup=warmup, benchmarks=CHILD_PATH,
    )
    return _run_child(code, threads, "direct bundle inference")


def run_app_task(
    image: Path, work: Path, repeats: int, threads: int, bundle: Path = BUNDLE, warmup: int = 1
) -> dict[str, Any]:
    """Warm calls of the app's infer task (no HTTP) in a fresh process."""
    code = APP_TASK_CHILD.format(
        app=str(APP), bundle=str(bundle), model_root=str(work / "model"), threads=threads, image=str(image),
        out=str(work / "app_task_seg.nii.gz"), repeats=repeats,
        warmup=warmup, benchmarks=CHILD_PATH,
    )
    return _run_child(code, threads, "app infer task")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree_peak_rss_gb(pid: int) -> float:
    """Largest peak resident set (VmHWM) among ``pid`` and its descendants (the monailabel server process)."""
    import psutil

    try:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    return max((hwm for hwm in (vmhwm_gb(p.pid) for p in procs) if hwm is not None), default=0.0)


def run_server(
    studies: Path,
    work: Path,
    repeats: int,
    threads: int,
    bundle: Path = BUNDLE,
    warmup: int = 1,
    start_timeout: float = 300,
) -> dict[str, Any]:
    """Start ``python -m liverseg serve`` on a free port, ``warmup`` untimed requests, then ``repeats`` timed ones."""
    import requests
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "serve.log"
    cmd = [sys.executable, "-m", "liverseg", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--studies", str(studies), "--workdir", str(work / "serve"), "--bundle", str(bundle)]
    t0 = time.perf_counter()
    with open(log, "ab") as log_f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_child_env(threads), stdout=log_f, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server did not answer within {start_timeout} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        startup = time.perf_counter() - t0
        runs, latencies, mask = [], [], None
        for i in range(warmup + repeats):
            t = time.perf_counter()
            r = requests.post(f"{url}/infer/{MODEL}", params={"image": IMAGE_ID}, timeout=1800)
            body = r.content  # the whole answer is received before the clock stops
            total = time.perf_counter() - t
            if r.status_code != 200:
                raise RuntimeError(f"POST /infer/{MODEL} answered {r.status_code}: {r.text[:2000]}")
            params, image_bytes = None, None
            for part in MultipartDecoder(body, r.headers["content-type"]).parts:
                disposition = part.headers.get(b"Content-Disposition", b"").decode()
                if 'name="params"' in disposition:
                    params = json.loads(part.content)
                elif 'name="image"' in disposition:
                    image_bytes = part.content
            if params is None or image_bytes is None:
                raise RuntimeError("the server's answer lacks the params JSON or the mask")
            net = float(params.get("latencies", {}).get("infer", 0.0))
            runs.append({"total": total, "response_mb": len(body) / 1024**2, "outside_net": total - net})
            latencies.append(params.get("latencies", {}))
            mask = work / "server_seg.nii.gz"
            mask.write_bytes(image_bytes)
        peak = _tree_peak_rss_gb(proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {"startup_s": startup, "warmup": runs[0], "runs": runs[warmup:], "latencies": latencies[warmup:],
            "mask": str(mask), "peak_rss_gb": peak}


def decompose(server_s: float, direct_s: float, server_stages: dict[str, float], direct_net: float) -> dict:
    """Split ``(server - direct) / direct`` into parts that add up to it exactly (fractions of direct)."""
    outside_task = server_s - server_stages["total"]
    task_outside_net = server_stages["total"] - server_stages["infer"]
    return {
        "http_part": outside_task / direct_s,
        "task_part": (task_outside_net - (direct_s - direct_net)) / direct_s,
        "network_part": (server_stages["infer"] - direct_net) / direct_s,
    }


def _median(runs: list[dict], key: str = "total") -> float:
    return float(statistics.median(r[key] for r in runs))


def _stage_medians(latencies: list[dict]) -> dict[str, float]:
    return {s: float(statistics.median(float(lat.get(s, 0.0)) for lat in latencies)) for s in STAGES}


def _transform_medians(latencies: list[dict]) -> dict[str, float]:
    """Median seconds per transform from monailabel's ``latencies["transform"]`` (``pre: Name`` / ``post: Name``)."""
    names: dict[str, list[float]] = {}
    for lat in latencies:
        for stage, per in (lat.get("transform") or {}).items():
            for name, sec in (per or {}).items():
                names.setdefault(f"{stage}: {name}", []).append(float(sec))
    return {k: float(statistics.median(v)) for k, v in names.items()}


def _agreement(a: str | Path, b: str | Path) -> float:
    """Fraction of voxels with the same label in two masks (1.0 = identical)."""
    import nibabel as nib
    import numpy as np

    x = np.asarray(nib.load(str(a)).dataobj).squeeze()
    y = np.asarray(nib.load(str(b)).dataobj).squeeze()
    if x.shape != y.shape:
        return 0.0
    return float(np.mean(x == y))


def measure(
    shape: Sequence[int] = (512, 512, 200),
    repeats: int = 3,
    threads: int | None = None,
    spacing: Sequence[float] | None = None,
    workdir: Path | None = None,
    bundle: Path = BUNDLE,
    with_app_task: bool = True,
    warmup: int = 1,
) -> dict[str, Any]:
    """Run the three paths (direct, app task, server) on one synthetic CT with ``bundle`` (default: the
    repository's ``bundles/liver_ct_seg``); return the figures. ``with_app_task=False`` skips the in-process app
    task (its figures are then ``None``). Each path makes ``warmup`` untimed calls first.

    Returned keys: ``direct_s``, ``app_task_s``, ``server_s`` (medians of the warm calls), ``overhead``
    (fraction) and its parts (fractions of direct, they add up to ``overhead``): ``network_part`` (the server's
    sliding window vs direct's: the same work, so this is noise), ``task_part`` (monailabel's task outside the
    network vs direct outside the network), ``http_part`` (client clock - monailabel's total),
    ``server_stages`` (median monailabel latencies), ``direct_stages``, ``server_startup_s``, peak RSS of each
    process (GB), ``response_mb``, mask agreement between paths, and the raw runs.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1 (the first call loads the network), got {warmup}")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes >= 8, got {tuple(shape)}")
    threads = threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        work = Path(tmp)
        studies = work / "studies"
        studies.mkdir()
        image = studies / f"{IMAGE_ID}.nii.gz"
        t = time.perf_counter()
        make_ct(image, shape, spacing)
        make_s = time.perf_counter() - t
        bundle = Path(bundle).resolve()
        direct = run_direct(image, work / "direct", repeats, threads, bundle, warmup)
        app_task = run_app_task(image, work, repeats, threads, bundle, warmup) if with_app_task else None
        server = run_server(studies, work, repeats, threads, bundle, warmup)
        agreement = {
            "server_vs_direct": _agreement(server["mask"], direct["mask"]) if direct["mask"] else 0.0,
        }
        volumetry = profile_volumetry(Path(direct["mask"]), threads) if direct["mask"] else {}
        if app_task:
            agreement["app_task_vs_direct"] = _agreement(app_task["mask"], direct["mask"]) if direct["mask"] else 0.0
    paths = {"direct": direct, "server": server, **({"app_task": app_task} if app_task else {})}
    d, s = _median(direct["runs"]), _median(server["runs"])
    a = _median(app_task["runs"]) if app_task else None
    return {
        "shape": tuple(shape), "repeats": repeats, "warmup": warmup, "threads": threads, "make_ct_s": make_s,
        "direct_s": d, "app_task_s": a, "server_s": s, "overhead": (s - d) / d,
        # the same comparison without the network's own time (identical work on both sides, but the part that
        # varies most when the machine is shared): server's time outside its inferer vs direct's outside the inferer
        "overhead_excl_network": (_median(server["runs"], "outside_net") - _median(direct["runs"], "outside_net")) / d,
        **decompose(s, d, _stage_medians(server["latencies"]), _median(direct["runs"], "net")),
        "direct_stages": {k: _median(direct["runs"], k) for k in ("load_pre", "net", "post_save")},
        "app_task_stages": _stage_medians(app_task["latencies"]) if app_task else None,
        "server_stages": _stage_medians(server["latencies"]),
        "transforms": {
            "direct": {
                f"post: {k}": float(statistics.median(r["post_transforms"].get(k, 0.0) for r in direct["runs"]))
                for k in direct["runs"][0]["post_transforms"]
            },
            "server": _transform_medians(server["latencies"]),
            **(
                {"app_task": {**_transform_medians(app_task["latencies"]),
                              "write: volumetry": _median(app_task["runs"], "volumetry")}}
                if app_task else {}
            ),
        },
        "server_startup_s": server["startup_s"],
        "warmup_s": {k: v["warmup"]["total"] for k, v in paths.items()},
        "peak_rss_gb": {k: v["peak_rss_gb"] for k, v in paths.items()},
        "response_mb": _median(server["runs"], "response_mb"),
        "agreement": agreement,
        "volumetry_profile": volumetry,
        "runs": {k: v["runs"] for k, v in paths.items()},
    }


def report_lines(r: dict[str, Any]) -> list[str]:
    """The figures as printable lines."""
    ss, ds = r["server_stages"], r["direct_stages"]
    met = "met" if r["overhead"] <= TARGET_OVERHEAD else "NOT met"
    lines = [
        f"input: synthetic CT {r['shape']} (written in {r['make_ct_s']:.1f} s), {r['repeats']} warm calls each, "
        f"{r['threads']} torch threads",
        f"direct (monai.bundle, inference.json): median {r['direct_s']:.2f} s "
        f"[load+preprocess {ds['load_pre']:.2f}, network {ds['net']:.2f}, postprocess+save {ds['post_save']:.2f}] "
        f"peak RSS {r['peak_rss_gb']['direct']:.2f} GB",
    ]
    if r["app_task_s"] is not None:
        a = r["app_task_stages"]
        lines.append(
            f"app infer task, no HTTP: median {r['app_task_s']:.2f} s ["
            + ", ".join(f"{k} {a[k]:.2f}" for k in STAGES) + f"] peak RSS {r['peak_rss_gb']['app_task']:.2f} GB"
        )
    lines += [
        f"server, POST /infer/{MODEL} end to end: median {r['server_s']:.2f} s "
        f"(start-up {r['server_startup_s']:.1f} s, answer {r['response_mb']:.2f} MB), "
        f"peak RSS {r['peak_rss_gb']['server']:.2f} GB",
        "server latencies (median, s): " + ", ".join(f"{k} {ss[k]:.2f}" for k in STAGES)
        + f"; outside the task (HTTP, request handling, multipart) {r['server_s'] - ss['total']:.2f}",
        f"overhead (server - direct) / direct = {100 * r['overhead']:+.1f} % (target <= 10 %: {met}); without the "
        f"network's own time on both sides {100 * r['overhead_excl_network']:+.1f} %"
        + f"; parts: monailabel task outside the network {100 * r['task_part']:+.1f} %, HTTP and request handling "
        f"{100 * r['http_part']:+.1f} %, network time difference (same work: noise) {100 * r['network_part']:+.1f} %",
        "per transform (median s): "
        + "; ".join(f"{p}: " + ", ".join(f"{k} {v:.2f}" for k, v in tr.items()) for p, tr in r["transforms"].items()),
        diagnosis(r),
        "mask agreement (fraction of equal voxels): "
        + ", ".join(f"{k.replace('_', ' ')} {v:.6f}" for k, v in r["agreement"].items()),
    ]
    return lines


def diagnosis(r: dict[str, Any]) -> str:
    """Where the server's extra time (outside the network) comes from, stage by stage against direct."""
    ss, ds, vp = r["server_stages"], r["direct_stages"], r.get("volumetry_profile") or {}
    extra = (r["server_s"] - ss["infer"]) - (r["direct_s"] - ds["net"])
    text = (
        f"Outside the network the server takes {extra:+.2f} s compared with direct: load + preprocess "
        f"{ss['pre'] - ds['load_pre']:+.2f} s, postprocess + write {ss['post'] + ss['write'] - ds['post_save']:+.2f} s "
        f"(monailabel *write* = {ss['write']:.2f} s"
    )
    if r["transforms"].get("app_task", {}).get("write: volumetry") is not None:
        text += f", of which the app's volumetry report {r['transforms']['app_task']['write: volumetry']:.2f} s in " \
                "the app-task run"
    text += f"), HTTP and request handling {r['server_s'] - ss['total']:+.2f} s."
    if vp:
        steps = ", ".join(f"{k} {v:.2f} s" for k, v in vp.items() if k not in ("total", "voxels"))
        text += (
            f" `liverseg.volumetry.volumetry` on this {vp['voxels'] / 1e6:.0f} M-voxel mask alone: {vp['total']:.2f} s "
            f"({steps}; each step run once more on its own)."
        )
    return text


def _transform_table(r: dict[str, Any]) -> list[str]:
    """Per-transform medians (s) of each path as a markdown table."""
    tr = r["transforms"]
    paths = [p for p in ("direct", "app_task", "server") if p in tr]
    order = {"pre": 0, "post": 1, "write": 2}
    seen = list(dict.fromkeys(k for p in paths for k in tr[p]))  # pipeline order as recorded
    names = sorted(seen, key=lambda k: (order.get(k.split(":")[0], 3), seen.index(k)))
    lines = [
        "| per transform (median s) | " + " | ".join(p.replace("_", " ") for p in paths) + " |",
        "|---|" + "---|" * len(paths),
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{tr[p][name]:.2f}" if name in tr[p] else "-" for p in paths) + " |")
    return lines


def markdown(r: dict[str, Any], command: str, load_start: str, load_end: str, notes: str = "") -> str:
    """A markdown section with the machine, command, table and method."""
    ss, ds, rss, warm = r["server_stages"], r["direct_stages"], r["peak_rss_gb"], r["warmup_s"]
    runs = {k: ", ".join(f"{x['total']:.2f}" for x in v) for k, v in r["runs"].items()}
    met = "met" if r["overhead"] <= TARGET_OVERHEAD else "**not met**"
    has_app = r["app_task_s"] is not None
    lines = [
        "## REST overhead of the MONAI Label server", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads {r['threads']}, no GPU; "
        f"{datetime.date.today().isoformat()}. Load average (1, 5, 15 min) at start {load_start}, at end {load_end}.",
        f"Command: `{command}`. Code: {code_version()}.", "",
        f"Input: synthetic CT {r['shape'][0]} x {r['shape'][1]} x {r['shape'][2]} (liverseg.phantom, seed 0, LPS), "
        "shipped weights of `bundles/liver_ct_seg`, default `inference.json`.", "",
        "| path | median (s) | timed calls (s) | warm-up (s) | peak RSS (GB) |",
        "|---|---|---|---|---|",
        f"| direct: `monai.bundle` ConfigWorkflow on inference.json | {r['direct_s']:.2f} | {runs['direct']} | "
        f"{warm['direct']:.2f} | {rss['direct']:.2f} |",
    ]
    if has_app:
        lines.append(
            f"| app infer task in-process (no HTTP) | {r['app_task_s']:.2f} | {runs['app_task']} | "
            f"{warm['app_task']:.2f} | {rss['app_task']:.2f} |"
        )
    lines += [
        f"| server: `POST /infer/{MODEL}?image=<id>`, client side | {r['server_s']:.2f} | {runs['server']} | "
        f"{warm['server']:.2f} | {rss['server']:.2f} |",
        "",
        f"Overhead (server - direct) / direct: **{100 * r['overhead']:+.1f} %** (target <= 10 %: {met}). "
        f"Counting only the time outside the network on both sides (the sliding window is the same work in every "
        f"path but varies most on a shared machine): {100 * r['overhead_excl_network']:+.1f} % of direct"
        + f". Parts (they add up): the server's monailabel task outside the network vs direct outside the network "
        f"{100 * r['task_part']:+.1f} %, HTTP and request handling (client clock - monailabel's total) "
        f"{100 * r['http_part']:+.1f} %, difference of the network's own time (the same work: noise) "
        f"{100 * r['network_part']:+.1f} %.",
        "",
        "| where the time goes (median s) | load + preprocess | network | invert | postprocess | write mask "
        "| outside the task | total |",
        "|---|---|---|---|---|---|---|---|",
        f"| direct (own timers) | {ds['load_pre']:.2f} | {ds['net']:.2f} | - | {ds['post_save']:.2f} (with save) "
        f"| (in postprocess) | - | {r['direct_s']:.2f} |",
    ]
    if has_app:
        a = r["app_task_stages"]
        lines.append(
            f"| app task (monailabel latencies) | {a['pre']:.2f} | {a['infer']:.2f} | {a['invert']:.2f} | "
            f"{a['post']:.2f} | {a['write']:.2f} | - | {a['total']:.2f} |"
        )
    lines += [
        f"| server (monailabel latencies + client clock) | {ss['pre']:.2f} | {ss['infer']:.2f} | {ss['invert']:.2f} "
        f"| {ss['post']:.2f} | {ss['write']:.2f} | {r['server_s'] - ss['total']:.2f} | {r['server_s']:.2f} |",
        "",
        diagnosis(r),
        "",
        *_transform_table(r),
        "",
        f"Server start-up (process start to `/info/` answering): {r['server_startup_s']:.1f} s. Answer size "
        f"(multipart: mask .nii.gz + JSON): {r['response_mb']:.2f} MB. Masks, fraction of equal voxels: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.6f}" for k, v in r["agreement"].items()) + ".",
        "",
        "How: each path runs in its own fresh process (`OMP_NUM_THREADS` and torch threads equal), one after the "
        f"other, never concurrently. Each makes {r['warmup']} untimed warm-up call(s) (loads the network, "
        f"first-call costs; the warm-up column is the first) and then {r['repeats']} timed calls on the same file; "
        "the table gives the median. *Direct* times `ConfigWorkflow.run()` (reads the NIfTI, preprocessing, "
        "sliding window, the bundle's postprocessing back to the input grid with the largest-component filter, and "
        "`SaveImaged`; the per-transform table lists them); its `CheckpointLoader` is detached after the warm-up, "
        "so the weights stay loaded as in the server. *App task* calls `apps/liver/lib/infer.py:LiverSegInferTask` "
        "in-process (no HTTP). *Server* is `python -m liverseg serve` on 127.0.0.1 (the app copied to a temporary "
        "workdir, the CT in its datastore); the client clock runs from sending the request to having read the whole "
        "multipart answer. The stage columns are monailabel's own `latencies` from the result JSON (the bundle's "
        "postprocessing, inversion included, runs in monailabel's *post*; *write mask* is the app's writer: "
        "monailabel's ITK NIfTI writer plus the volumetry report; \"outside the task\" = client clock - "
        "monailabel's total: HTTP, FastAPI, `app.info()` per request, multipart encoding). Direct's stages come "
        "from ignite events (batch loading) and a timer around the inferer.",
    ]
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=(512, 512, 200), help="CT size (default 512 512 200)")
    p.add_argument("--spacing", type=float, nargs=3, help="voxel size in mm (default: 400 x 400 x 200 mm FOV)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per path after one warm-up (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per path before the timed ones (default 1)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of every process")
    p.add_argument("--out", type=Path, help="write a markdown section here")
    p.add_argument("--json", type=Path, help="also write every figure (raw runs included) as JSON here")
    p.add_argument("--note", default="", help="a line added to the markdown (e.g. what else ran on the machine)")
    args = p.parse_args(argv)
    load_start = load_average()
    print(f"load average at start: {load_start} ({os.cpu_count()} cores)", flush=True)
    r = measure(args.shape, args.repeats, args.threads, args.spacing, warmup=args.warmup)
    load_end = load_average()
    for line in report_lines(r):
        print(line)
    print(f"load average at end: {load_end}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=1, default=str))
    if args.out:
        given = without_note(sys.argv[1:] if argv is None else argv)
        command = shlex.join(["python", "benchmarks/server_overhead.py", *given])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown(r, command, load_start, load_end, args.note))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
