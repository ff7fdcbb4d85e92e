"""Kill saves: SIGKILL the liver app in the middle of label saves, model replacements and training runs, then check
that nothing is lost or corrupt (issue 16, "nothing lost").

Each kill is a real ``SIGKILL`` of a separate process running the app's own classes (``apps/liver/lib``): the
benchmark imports them once, then forks a child per kill (a fork costs milliseconds, where a fresh interpreter
importing monailabel costs 5-20 s), lets it work and kills it at a random moment (every other kill: within 20 ms
after a file write starts, so that kills land in the copy, fsync, rename and index update too). The child tells the
parent, through a pipe, when it enters and leaves each save, so every kill is counted by where it landed.

- ``labels``: the child opens the datastore (:class:`lib.datastore.LiverDatastore`) and saves the ``final`` labels of
  4 images (RAS and LPS) in a loop, alternating two versions of each (``A``/``B``, 20-60 KB ``.nii.gz``). After each
  kill the parent opens the datastore afresh (the server's start) and checks every label: listed in the index, its
  file byte-identical to version ``A`` or ``B`` of that image; the index is valid JSON (a rebuilt one is counted).
- ``models``: the child replaces the served weights (``model.pt``, the shipped default network, 5.8 MB) in a loop
  with :func:`lib.model_store.install_weights`, alternating two sets of weights (what ``PUT /model`` does). After each
  kill: ``model.pt`` and ``model.pt.prev`` load into the network (strict, finite) and are byte-identical to one of
  the two.
- ``training``: the child runs the app's training task (:class:`lib.train.LiverSegTrainTask`, a small network on
  4 small phantoms, 3 epochs) and is killed at a random moment of the run, or (every other kill) within 0.5 s after
  the installation of the trained weights starts. After each kill: the served ``model.pt`` loads and is the one
  before the run, or a new one only if the run had reached its installation step.

``--baseline`` runs the same kills against monailabel 0.8.5's own writers (``LocalDatastore``, and ``shutil.copy``
over ``model.pt`` as its ``PUT /model`` does; no training part), for comparison.

    python benchmarks/kill_saves.py [--label-kills 50] [--model-kills 20] [--train-kills 5] [--seed 0] \\
        [--out benchmarks/results/kill_saves.txt] [--baseline]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: OpenMP's thread pool and fork do not mix

import argparse  # noqa: E402
import datetime  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, List, Optional, Sequence  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "liver"
BUNDLE = REPO / "bundles" / "liver_ct_seg"
sys.path[:0] = [str(Path(__file__).resolve().parent), str(APP), str(REPO)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _report import code_version, load_average  # noqa: E402

logger = logging.getLogger("kill_saves")

IMAGE_SHAPE = (64, 64, 48)
INSTALL_WINDOW_S = 0.5  # targeted kills during training: within this long after the installation starts
WRITE_WINDOW_S = 0.02  # targeted kills: within this long after a file write starts (copy, fsync, rename, index)
ORIENTATIONS = ("RAS", "LPS", "RAS", "LPS")
# the training part: the shipped configs with a 16x smaller network, coarse resampling and small patches
SMALL_NET = {"channels": [4, 8, 16, 32, 64], "pixdim": [5.0, 5.0, 5.0], "roi_size": [32, 32, 16]}
TRAIN_REQUEST = {
    "max_epochs": 3, "val_split": 0.25, "val_interval": 1, "device": "cpu", "num_workers": 0, "cache_rate": 0,
    "multi_gpu": False, "tracking": "None", "pretrained": True,
}  # fmt: skip


def sha(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -------------------------------------------------------------------------------------------------------------------
# one killed child
# -------------------------------------------------------------------------------------------------------------------


def fork_and_kill(
    work: Callable[[Callable[[bytes], None]], None], delay: Callable[[], float], trigger: bytes = b"r"
) -> Dict[str, Any]:
    """Fork a child running ``work(say)``; once it says ``trigger`` (default ``b"r"``, ready), SIGKILL it after
    ``delay()`` seconds.

    ``say`` writes one status byte to the parent: ``r`` ready, ``s`` entering a save, ``w`` its file write starts,
    ``d`` save done, ``p`` installation of trained weights started. Returns ``{"status": last byte before the kill,
    "killed": bool, "saves": n}``.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        code = 0
        try:
            logging.disable(logging.CRITICAL)
            work(lambda b: os.write(write_fd, b))
        except BaseException:  # noqa: BLE001  (reported through the exit code)
            import traceback

            traceback.print_exc()
            code = 70
        finally:
            os._exit(code)
    os.close(write_fd)
    got = b""
    while trigger not in got:  # wait for the trigger
        chunk = os.read(read_fd, 1)
        if not chunk:
            break
        got += chunk
    wait = delay()
    deadline = time.monotonic() + wait
    killed = False
    status = b""
    os.set_blocking(read_fd, False)
    while True:
        try:
            chunk = os.read(read_fd, 4096)
            if chunk:
                got += chunk
        except BlockingIOError:
            pass
        done_pid, code = os.waitpid(pid, os.WNOHANG)
        if done_pid:
            break
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            killed = True
            os.waitpid(pid, 0)
            break
        time.sleep(0.002)
    try:
        rest = os.read(read_fd, 1 << 16)
        got += rest or b""
    except BlockingIOError:
        pass
    os.close(read_fd)
    status = got[-1:] if got else b""
    return {"status": status.decode() or "?", "killed": killed, "saves": got.count(b"d")}


# -------------------------------------------------------------------------------------------------------------------
# labels
# -------------------------------------------------------------------------------------------------------------------


def make_label(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """Blobs of liver (1) with tumors (2) and speckle: 20-60 KB as .nii.gz."""
    lab = np.zeros(shape, np.uint8)
    idx = np.indices(shape).astype(np.float32)
    for _ in range(6):
        c = rng.uniform(0.2, 0.8, 3) * np.asarray(shape)
        r = rng.uniform(4, 14)
        lab[((idx - c[:, None, None, None]) ** 2).sum(0) < r * r] = rng.integers(1, 3)
    speckle = rng.random(shape) < 0.05
    lab[speckle] = rng.integers(0, 3, int(speckle.sum()))
    return lab


def label_kills(root: Path, n: int, rng: random.Random, baseline: bool) -> Dict[str, Any]:
    from monailabel.datastore.local import LocalDatastore

    from liverseg.imageio import write_nifti
    from liverseg.phantom import generate_phantom

    ds_cls: Any = LocalDatastore
    if not baseline:
        from lib.datastore import LiverDatastore

        ds_cls = LiverDatastore
    store, uploads = root / "datastore", root / "uploads"
    versions: Dict[str, List[Path]] = {}
    nrng = np.random.default_rng(0)
    for i, orient in enumerate(ORIENTATIONS):
        case = f"case{i}_{orient.lower()}"
        p = generate_phantom(100 + i, shape=IMAGE_SHAPE, orientation=orient)
        write_nifti(store / f"{case}.nii.gz", p.image, p.affine)
        versions[case] = [
            write_nifti(uploads / f"{case}_{v}.nii.gz", make_label(nrng, IMAGE_SHAPE), p.affine) for v in "AB"
        ]
    hashes = {case: {sha(f): "AB"[k] for k, f in enumerate(files)} for case, files in versions.items()}
    ds = ds_cls(str(store), extensions=("*.nii.gz",))
    t0 = time.perf_counter()
    for case, files in versions.items():
        ds.save_label(case, str(files[0]), "final", {})
    save_s = (time.perf_counter() - t0) / len(versions)
    cases = list(versions)

    def work(say):
        ds = ds_cls(str(store), extensions=("*.nii.gz",))
        if baseline:
            copy = shutil.copy

            def saying_copy(*a, **kw):
                say(b"w")
                return copy(*a, **kw)

            shutil.copy = saying_copy  # in this child only
        else:
            from lib import atomic

            copy_file = atomic.copy_file

            def saying_copy_file(*a, **kw):
                say(b"w")
                return copy_file(*a, **kw)

            atomic.copy_file = saying_copy_file
        say(b"r")
        k = 0
        while True:
            case = cases[k % len(cases)]
            say(b"s")
            ds.save_label(case, str(versions[case][(k // len(cases) + 1) % 2]), "final", {"k": k})  # B first
            say(b"d")
            k += 1

    counts = {"kills": 0, "kills_in_save": 0, "kills_in_write": 0, "lost": 0, "corrupt": 0, "index_rebuilt": 0,
              "start_failed": 0, "temps_cleaned": 0, "labels_checked": 0, "new": 0, "old": 0}  # fmt: skip
    problems: List[str] = []
    rounds = 0
    while counts["kills_in_save"] < n and rounds < 3 * n:
        rounds += 1
        # every other kill lands at random in the loop, the others in the 20 ms after a file write starts
        if rounds % 2:
            r = fork_and_kill(work, lambda: rng.uniform(0.0, 3.0 * save_s))
        else:
            r = fork_and_kill(work, lambda: rng.uniform(0.0, WRITE_WINDOW_S), trigger=b"w")
        if not r["killed"]:
            problems.append(f"round {rounds}: the child ended by itself")
            continue
        counts["kills"] += 1
        counts["kills_in_save"] += r["status"] in ("s", "w")
        counts["kills_in_write"] += r["status"] == "w"
        counts["temps_cleaned"] += sum(1 for p in store.rglob(".*.tmp"))
        try:
            ds = ds_cls(str(store), extensions=("*.nii.gz",))
        except Exception as e:  # noqa: BLE001  (the old datastore does not start on a broken index)
            counts["start_failed"] += 1
            problems.append(f"kill {counts['kills']}: the datastore did not open ({type(e).__name__})")
            (store / "datastore_v2.json").unlink()  # what an operator has to do by hand
            ds = ds_cls(str(store), extensions=("*.nii.gz",))
        counts["index_rebuilt"] += bool(getattr(ds, "_index_rebuilt", False))
        for case in cases:
            counts["labels_checked"] += 1
            uri = ds.get_label_uri(case, "final")
            if not uri or not os.path.isfile(uri):
                counts["lost"] += 1
                problems.append(f"kill {counts['kills']}: the label of {case} is lost")
                ds.save_label(case, str(versions[case][0]), "final", {})
                continue
            version = hashes[case].get(sha(uri))
            if version is None:
                counts["corrupt"] += 1
                problems.append(f"kill {counts['kills']}: the label of {case} is corrupt ({os.path.getsize(uri)} B)")
                ds.save_label(case, str(versions[case][0]), "final", {})
            else:
                counts["new" if version == "B" else "old"] += 1
    counts["save_s"] = round(save_s, 3)
    return {"counts": counts, "problems": problems}


# -------------------------------------------------------------------------------------------------------------------
# model replacement
# -------------------------------------------------------------------------------------------------------------------


def model_kills(root: Path, n: int, rng: random.Random, baseline: bool) -> Dict[str, Any]:
    from lib import model_store

    net = model_store.bundle_network(BUNDLE)
    state = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    state = state.get("model", state)
    net.load_state_dict(state)
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(2):
        g = torch.Generator().manual_seed(k)
        sd = {
            name: (t + 0.01 * torch.randn(t.shape, generator=g) if t.is_floating_point() else t)
            for name, t in state.items()
        }
        torch.save({"model": sd}, root / f"weights_{'AB'[k]}.pt")
        files.append(root / f"weights_{'AB'[k]}.pt")
    known = {sha(f): "AB"[k] for k, f in enumerate(files)}
    target = root / "models" / "model.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    model_store.install_weights(files[0], target, net)

    copy_source = model_store._copy_source

    def install(src: Path, say: Callable[[bytes], None] = lambda b: None) -> None:
        if baseline:
            say(b"w")
            shutil.copy(src, target)  # monailabel 0.8.5's PUT /model
        else:
            def saying_copy_source(*a, **kw):
                say(b"w")
                return copy_source(*a, **kw)

            model_store._copy_source = saying_copy_source  # in the child, or a no-op in the parent
            model_store.install_weights(src, target, net)
            model_store._copy_source = copy_source

    t0 = time.perf_counter()
    install(files[1])
    install(files[0])
    save_s = (time.perf_counter() - t0) / 2

    def work(say):
        say(b"r")
        k = 1
        while True:
            say(b"s")
            install(files[k % 2], say)
            say(b"d")
            k += 1

    counts = {"kills": 0, "kills_in_save": 0, "kills_in_write": 0, "lost": 0, "corrupt": 0, "prev_corrupt": 0,
              "new": 0, "old": 0}  # fmt: skip
    problems: List[str] = []
    rounds = 0
    while counts["kills_in_save"] < n and rounds < 3 * n:
        rounds += 1
        if rounds % 2:
            r = fork_and_kill(work, lambda: rng.uniform(0.0, 3.0 * save_s))
        else:
            r = fork_and_kill(work, lambda: rng.uniform(0.0, WRITE_WINDOW_S), trigger=b"w")
        if not r["killed"]:
            continue
        counts["kills"] += 1
        counts["kills_in_save"] += r["status"] in ("s", "w")
        counts["kills_in_write"] += r["status"] == "w"
        for path, key in ((target, "corrupt"), (model_store.previous_path(target), "prev_corrupt")):
            if not os.path.isfile(path):
                if path == target:
                    counts["lost"] += 1
                    problems.append(f"kill {counts['kills']}: model.pt is missing")
                continue
            ok = known.get(sha(path)) is not None and model_store.is_loadable(path, net)
            if not ok:
                counts[key] += 1
                size = os.path.getsize(path)
                problems.append(f"kill {counts['kills']}: {os.path.basename(path)} is corrupt ({size} B)")
            elif path == target:
                counts["new" if known[sha(path)] == "B" else "old"] += 1
        if not model_store.is_loadable(target, net):
            shutil.copy(files[0], target)  # repair, so that the next round starts from good weights
    counts["save_s"] = round(save_s, 3)
    return {"counts": counts, "problems": problems}


# -------------------------------------------------------------------------------------------------------------------
# training
# -------------------------------------------------------------------------------------------------------------------


def small_bundle(dest: Path) -> Path:
    shutil.copytree(BUNDLE, dest, ignore=shutil.ignore_patterns("__pycache__", "models", "eval", "docs", "runs"))
    for name in ("inference.json", "train.json", "evaluate.json"):
        f = dest / "configs" / name
        if f.exists():
            cfg = json.loads(f.read_text())
            cfg.update(SMALL_NET)
            f.write_text(json.dumps(cfg, indent=2))
    (dest / "models").mkdir()
    return dest


def train_kills(root: Path, n: int, rng: random.Random) -> Dict[str, Any]:
    from lib import model_store
    from lib.datastore import LiverDatastore
    from lib.train import LiverSegTrainTask

    from liverseg.imageio import write_nifti
    from liverseg.phantom import generate_phantom

    bundle = small_bundle(root / "liver_ct_seg")
    net = model_store.bundle_network(bundle)
    torch.manual_seed(0)
    target = bundle / "models" / "model.pt"
    torch.save({"model": net.state_dict()}, target)
    store = root / "datastore"
    for i, orient in enumerate(ORIENTATIONS):
        p = generate_phantom(200 + i, shape=(64, 64, 32), orientation=orient)
        write_nifti(store / f"t{i}.nii.gz", p.image, p.affine)
        write_nifti(root / "labels" / f"t{i}.nii.gz", p.label, p.affine)
    ds = LiverDatastore(str(store), extensions=("*.nii.gz",))
    for i in range(len(ORIENTATIONS)):
        ds.save_label(f"t{i}", str(root / "labels" / f"t{i}.nii.gz"), "final", {})

    def work(say):
        task = LiverSegTrainTask(str(bundle), {})
        publish = task.publish

        def reporting_publish(staged):
            say(b"p")
            out = publish(staged)
            say(b"d")
            return out

        task.publish = reporting_publish
        say(b"r")
        say(b"s")
        task(dict(TRAIN_REQUEST), LiverDatastore(str(store), extensions=("*.nii.gz",)))
        say(b"e")

    # one full run: its duration sets the range of the kill times; it must install new weights
    before = sha(target)
    t0 = time.perf_counter()
    full = fork_and_kill(work, lambda: 3600.0)
    run_s = time.perf_counter() - t0
    assert not full["killed"] and full["status"] == "e", f"the training run failed: {full}"
    assert sha(target) != before and model_store.is_loadable(target, net), "the full run installed no weights"
    counts = {"kills": 0, "kills_in_training": 0, "kills_in_install": 0, "completed": 0, "lost": 0, "corrupt": 0,
              "old": 0, "new": 0}  # fmt: skip
    problems: List[str] = []
    rounds = 0
    while counts["kills"] < n and rounds < 3 * n:
        rounds += 1
        before = sha(target)
        if rounds % 2:  # anywhere in the run
            r = fork_and_kill(work, lambda: rng.uniform(0.3, 1.05) * run_s)
        else:  # in the installation of the trained weights (network built, checked, copied, renamed)
            r = fork_and_kill(work, lambda: rng.uniform(0.0, INSTALL_WINDOW_S), trigger=b"p")
        if not r["killed"] or r["status"] == "e":  # the run had ended (killed before its process exited)
            counts["completed"] += 1
            if not model_store.is_loadable(target, net):
                counts["corrupt"] += 1
                problems.append(f"round {rounds}: model.pt does not load after a complete run")
            continue
        counts["kills"] += 1
        counts["kills_in_install"] += r["status"] in ("p", "d")
        counts["kills_in_training"] += r["status"] in ("s", "r")
        if not target.is_file():
            counts["lost"] += 1
            problems.append(f"kill {counts['kills']}: model.pt is missing")
            continue
        if not model_store.is_loadable(target, net):
            counts["corrupt"] += 1
            problems.append(f"kill {counts['kills']}: model.pt does not load")
            continue
        changed = sha(target) != before
        if changed and r["status"] not in ("p", "d"):
            counts["corrupt"] += 1
            problems.append(f"kill {counts['kills']}: model.pt changed before the installation step")
        counts["new" if changed else "old"] += 1
    counts["run_s"] = round(run_s, 1)
    return {"counts": counts, "problems": problems}


def write_cost(folder: Path, repeats: int = 15) -> str:
    """Median time of ``shutil.copy`` (in place, what monailabel does) and of :func:`lib.atomic.copy_file` (temp file,
    fsync, rename, fsync of the folder) for a 40 KB label and a 5.8 MB model, on the disk of ``folder``."""
    import statistics

    from lib import atomic

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for what, size in (("40 KB label", 40_000), ("5.8 MB model", 5_780_345)):
        src, dst = folder / "src", folder / "dst"
        src.write_bytes(np.random.default_rng(0).bytes(size))
        times = {}
        for how, fn in (("shutil.copy", shutil.copy), ("atomic", atomic.copy_file)):
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn(src, dst)
                ts.append(time.perf_counter() - t0)
            times[how] = statistics.median(ts) * 1000
        out.append(f"{what} {times['atomic']:.1f} ms atomic vs {times['shutil.copy']:.1f} ms shutil.copy")
    return "write cost (median of 15): " + "; ".join(out)


# -------------------------------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label-kills", type=int, default=50, help="kills inside label saves (default 50)")
    ap.add_argument("--model-kills", type=int, default=20, help="kills inside model replacements (default 20)")
    ap.add_argument("--train-kills", type=int, default=5, help="kills during training runs (default 5)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    ap.add_argument("--baseline", action="store_true", help="monailabel 0.8.5's own writers instead of the app's")
    ap.add_argument("--out", type=Path, help="also write the report here")
    ap.add_argument("--workdir", type=Path, help="keep the work files here (default: a temporary folder, removed)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill_saves_")) if args.workdir is None else args.workdir
    t0 = time.perf_counter()
    parts: Dict[str, Dict[str, Any]] = {}
    cost = ""
    try:
        if args.label_kills:
            parts["labels"] = label_kills(work / "labels", args.label_kills, rng, args.baseline)
        if args.model_kills:
            parts["models"] = model_kills(work / "models", args.model_kills, rng, args.baseline)
        if args.train_kills and not args.baseline:
            parts["training"] = train_kills(work / "training", args.train_kills, rng)
        cost = "" if args.baseline else write_cost(work / "cost")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"# kill_saves ({'BASELINE: monailabel 0.8.5 writers' if args.baseline else 'the liver app'}) "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"command: python {' '.join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}",
        f"code: {code_version()}; python {platform.python_version()}, torch {torch.__version__}; "
        f"{os.cpu_count()} CPUs, load average {load_average()}; {time.perf_counter() - t0:.0f} s",
    ]
    if cost:
        lines.append(cost)
    total_bad = 0
    for name, part in parts.items():
        c = part["counts"]
        bad = c.get("lost", 0) + c.get("corrupt", 0) + c.get("prev_corrupt", 0) + c.get("start_failed", 0)
        total_bad += bad
        lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
        lines += [f"  {p}" for p in part["problems"][:20]]
    kills_labels = parts.get("labels", {}).get("counts", {}).get("kills_in_save", 0)
    kills_models = parts.get("models", {}).get("counts", {}).get("kills_in_save", 0)
    kills_training = parts.get("training", {}).get("counts", {}).get("kills", 0)
    lines.append(
        f"TOTAL: {kills_labels} kills inside label saves, {kills_models + kills_training} during model replacement "
        f"or training ({kills_models} + {kills_training}); lost or corrupt: {total_bad}"
    )
    report = "\n".join(lines)
    print(report)
    if args.out:
        from lib import atomic

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(args.out, report + "\n")
    return 0 if total_bad == 0 or args.baseline else 1


if __name__ == "__main__":
    sys.exit(main())
