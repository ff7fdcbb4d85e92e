"""Quick answers while the server works: ``/info/`` latency with several inference clients and a training run.

Starts ``liverseg serve`` on the sample phantoms (shipped weights; the ``unet`` variant served as a trainer), saves two
final labels, computes each image's reference mask with one client on an idle server, then starts a training run
of the ``unet`` variant (its own weights: the default model's masks must not change) and, while it runs,
``--clients`` threads each segment every image ``--rounds`` times while one more thread asks ``/info/`` every 0.25 s.

Printed: ``/info/`` latency (p50 / p95 / max), inference latency, how many masks equal the reference voxel for voxel,
how many requests were refused as busy (503), and whether training was running throughout. Target (issue 16):
``/info/`` p95 < 1 s and every mask correct.

    python benchmarks/concurrent_clients.py [--clients 4] [--rounds 2] \
        [--out benchmarks/results/concurrent_clients.json]
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import code_version, load_average  # noqa: E402
from _server import REPO, ServeProcess  # noqa: E402

DATA = REPO / "sample-data" / "Dataset001_LiverPhantom"
MODEL, TRAINER = "liver_ct_seg", "liver_ct_seg_unet"
INFO_TARGET_S = 1.0


def _mask(content: bytes) -> np.ndarray:
    raw = gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content
    return np.asarray(nib.Nifti1Image.from_bytes(raw).dataobj)


def infer(url: str, image: str) -> tuple[int, float, np.ndarray | None]:
    t0 = time.perf_counter()
    r = requests.post(f"{url}/infer/{MODEL}?image={image}&output=image", timeout=900)
    dt = time.perf_counter() - t0
    return r.status_code, dt, (_mask(r.content) if r.status_code == 200 else None)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def measure(clients: int, rounds: int, train_epochs: int, workdir: Path) -> dict:
    studies = DATA / "imagesTs"
    images = sorted(p.name[: -len("_0000.nii.gz")] for p in studies.glob("*_0000.nii.gz"))
    with ServeProcess(studies, workdir, conf=[("variants", "unet")]) as srv:
        for case in images[:2]:
            with open(DATA / "labelsTs" / f"{case}.nii.gz", "rb") as fh:
                r = requests.put(
                    f"{srv.url}/datastore/label?image={case}&tag=final", files={"label": (f"{case}.nii.gz", fh)}
                )
            r.raise_for_status()
        reference = {}
        for case in images:
            status, _, mask = infer(srv.url, case)
            if status != 200:
                raise RuntimeError(f"reference inference of {case} answered {status}")
            reference[case] = mask
        r = requests.post(f"{srv.url}/train/{TRAINER}", json={"max_epochs": train_epochs, "val_interval": 1000})
        r.raise_for_status()
        time.sleep(3)
        info_lat: list[float] = []
        infer_lat: list[float] = []
        results = {"correct": 0, "wrong": 0, "busy": 0, "errors": 0}
        training_seen: list[bool] = []
        lock = threading.Lock()
        done = threading.Event()

        def client(k: int) -> None:
            for _ in range(rounds):
                for case in images[k % len(images) :] + images[: k % len(images)]:
                    status, dt, mask = infer(srv.url, case)
                    with lock:
                        if status == 200:
                            infer_lat.append(dt)
                            results["correct" if np.array_equal(mask, reference[case]) else "wrong"] += 1
                        elif status == 503:
                            results["busy"] += 1
                        else:
                            results["errors"] += 1

        def poller() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                r = requests.get(f"{srv.url}/info/", timeout=120)
                dt = time.perf_counter() - t0
                with lock:
                    info_lat.append(dt if r.status_code == 200 else float("inf"))
                st = requests.get(f"{srv.url}/train/", timeout=120).json()
                training_seen.append(isinstance(st, dict) and st.get("status") == "RUNNING")
                time.sleep(0.25)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        watch = threading.Thread(target=poller)
        t_start = time.perf_counter()
        watch.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        watch.join()
        wall = time.perf_counter() - t_start
        requests.delete(f"{srv.url}/train/", timeout=60)
    return {
        "clients": clients,
        "rounds": rounds,
        "images": len(images),
        "wall_s": round(wall, 1),
        "info_requests": len(info_lat),
        "info_p50_s": round(pct(info_lat, 0.5), 3),
        "info_p95_s": round(pct(info_lat, 0.95), 3),
        "info_max_s": round(max(info_lat), 3) if info_lat else None,
        "infer_p50_s": round(pct(infer_lat, 0.5), 2),
        "infer_p95_s": round(pct(infer_lat, 0.95), 2),
        "training_running_fraction": round(sum(training_seen) / max(1, len(training_seen)), 2),
        **results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--train-epochs", type=int, default=200, help="long enough to run throughout")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "concurrent_clients.json")
    args = ap.parse_args(argv)
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="liverseg-concurrency-") as tmp:
        r = measure(args.clients, args.rounds, args.train_epochs, Path(tmp))
    r.update(
        date=datetime.date.today().isoformat(), code=code_version(), load_start=load_start, load_end=load_average()
    )
    ok = r["info_p95_s"] < INFO_TARGET_S and r["wrong"] == 0 and r["errors"] == 0
    print(
        f"{r['clients']} clients x {r['rounds']} rounds x {r['images']} images during training "
        f"(running {r['training_running_fraction']:.0%} of the polls), {r['wall_s']} s:\n"
        f"  /info/  p50 {r['info_p50_s']} s, p95 {r['info_p95_s']} s, max {r['info_max_s']} s "
        f"({r['info_requests']} requests; target p95 < {INFO_TARGET_S} s)\n"
        f"  infer   p50 {r['infer_p50_s']} s, p95 {r['infer_p95_s']} s\n"
        f"  masks   {r['correct']} equal to the idle server's, {r['wrong']} different, {r['busy']} busy (503), "
        f"{r['errors']} errors\n  {'target met' if ok else 'TARGET MISSED'}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
