"""Robot-user benchmark of the interactive (DeepEdit-type) model: simulated clicks, Dice per click, NoC, s per click.

Each case starts from the model's result with no click; then, click after click, the robot puts one click at the
centre of the largest error region of the current result (the voxel farthest from the region's border, in mm; label =
the truth there: a miss gets a liver or tumor click, a false positive a background or liver click), in the voxel
indices of the image as loaded, exactly what OHIF / 3D Slicer send; every click re-runs the served pipeline (load,
preprocessing with the clicks drawn as guidance, network, inversion to the source grid, largest component); the
network re-infers only a crop around the new click (``click_crop`` of ``configs/inference_deepedit.json``,
``scripts/click_crop.py``; ``--no-crop``: the whole volume at every click). Reported per case and overall:

- Dice of the liver (labels 1 + 2) and of the tumor (label 2) after 0, 1, 3, 5 and 10 clicks;
- NoC90 liver / NoC80 tumor: clicks needed to reach Dice 0.90 (liver) / 0.80 (tumor), capped at ``--max-clicks``
  (20; a case that never reaches it counts as the cap, as in the interactive-segmentation literature);
- the largest drop of either Dice after a click;
- seconds per click (the whole pipeline, median over the case's clicks; wall clock and CPU time of the process,
  which on a shared machine says more than the wall clock) and the CT's shape;
- with ``--compare-full``: after each click also the whole-volume re-inference (``click_crop`` off, same clicks):
  its seconds per click, and the Dice between the two results (liver, tumor; lowest over the clicks).

    python benchmarks/robot_user.py --dataset sample-data/Dataset001_LiverPhantom \
        [--weights bundles/liver_ct_seg/models/deepedit/model.pt] [--split Ts] [--cases ID ...] [--max-clicks 20] \
        [--threads 2] [--no-crop] [--compare-full] [--json out.json] [--out BENCHMARKS.md --title "..."]
    python benchmarks/robot_user.py --synthetic 512 512 200 --weights ... --max-clicks 5 --compare-full --threads 1

``--synthetic X Y Z``: one phantom CT of that shape (``benchmarks/inference_cpu.py``'s generator, 400 x 400 x 200 mm)
and its label, written once under ``.cache/robot-user/`` (or ``--dataset``) as an nnU-Net test split.

Cases without a tumor (or whose "tumor" lies outside the liver, ``--no-tumor ID``) are left out of the tumor figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "liver_ct_seg"
REPORT_CLICKS = (0, 1, 3, 5, 10)
LIVER_TARGET, TUMOR_TARGET = 0.90, 0.80

logger = logging.getLogger("robot_user")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks; 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def clicks_to_reach(curve: Sequence[float], target: float, cap: int) -> int:
    """Number of clicks after which ``curve`` (Dice after 0, 1, 2, ... clicks) first reaches ``target``; ``cap`` when
    it never does within the curve (or within ``cap`` clicks)."""
    for n, value in enumerate(curve[: cap + 1]):
        if value >= target:
            return n
    return cap


class InteractiveModel:
    """The bundle's interactive inference (``inference.json`` + ``inference_deepedit.json``) with given weights."""

    def __init__(
        self,
        weights: Path,
        bundle: Path = BUNDLE,
        device: str = "cpu",
        overrides: Optional[dict] = None,
        crop: Optional[bool] = None,
    ):
        """``crop``: override the config's ``click_crop`` (a crop around each new click; ``None``: the config's)."""
        import torch

        sys.path.insert(0, str(bundle))
        from monai.bundle import ConfigParser

        files = [str(bundle / "configs" / f) for f in ("inference.json", "inference_deepedit.json")]
        parser = ConfigParser(ConfigParser.load_config_files(files))
        parser.update({"bundle_root": str(bundle), "device": f"$torch.device('{device}')", **(overrides or {})})
        if crop is not None:
            parser["click_crop"] = bool(crop)
        parser.parse()
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.network = parser.get_parsed_content("network")
        state = torch.load(str(weights), map_location=device, weights_only=True)
        self.network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        self.network.eval()
        self.inferer = parser.get_parsed_content("inferer")
        post = parser.get_parsed_content("postprocessing")
        self.postprocessing = [t for t in post.transforms if type(t).__name__ != "SaveImaged"]
        self.device = device
        self.labels = list(parser.get_parsed_content("guidance_labels"))

    def __call__(self, image: str, clicks: Dict[str, List[List[int]]]) -> np.ndarray:
        """The label map (source grid, array order of the file) for ``clicks`` (voxel indices of the file)."""
        import torch

        data = self.preprocessing({"image": image, **{k: clicks.get(k, []) for k in self.labels}})
        with torch.no_grad():
            data["pred"] = self.inferer(data["image"][None].to(self.device), self.network)[0]
        for t in self.postprocessing:
            data = t(data)
        return np.asarray(data["pred"].detach().cpu())[0].astype(np.int16)

    @property
    def last_mode(self) -> str:
        """What the network step of the last call did: ``full`` / ``crop`` / ``same`` (``scripts/click_crop.py``)."""
        return str(getattr(self.inferer, "last", {}).get("mode", "full"))


def run_case(
    model: InteractiveModel,
    image: str,
    label: str,
    max_clicks: int,
    click_fn,
    stop_when_done: bool = False,
    full_model: Optional[InteractiveModel] = None,
    liver_only: bool = False,
) -> Dict[str, Any]:
    """The robot user on one case; returns Dice curves, clicks, timings.

    ``liver_only``: the reference labels the liver only (label 2 in it is not a liver tumor, e.g. 3Dircadb1.7's mask
    outside the liver): the truth is label 1, a predicted tumor counts as liver, and the robot clicks liver /
    background only.

    ``stop_when_done``: stop once every reported figure is known: at least ``max(REPORT_CLICKS)`` clicks made and
    both NoC targets reached (the curves then end there; NoC and the Dice after 0-10 clicks are exact).
    ``full_model``: after each click, also this model (the whole-volume re-inference) on the same clicks: its timings
    and the Dice between its result and ``model``'s (the robot follows ``model``)."""
    import nibabel as nib

    ref = nib.load(label)
    truth = np.rint(np.asarray(ref.dataobj)).astype(np.int16)
    if liver_only:
        truth = (truth == 1).astype(np.int16)
    spacing = [float(s) for s in nib.affines.voxel_sizes(ref.affine)]
    clicks: Dict[str, List[List[int]]] = {name: [] for name in model.labels}
    names = {1: "liver", 2: "tumor", 0: "background"}
    liver, tumor, seconds, cpu, placed, modes = [], [], [], [], [], []
    full: Dict[str, List[float]] = {"seconds": [], "cpu": [], "liver_agreement": [], "tumor_agreement": []}
    for n in range(max_clicks + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        pred = model(image, clicks)
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        modes.append(model.last_mode)
        if full_model is not None and n > 0:
            t0, c0 = time.perf_counter(), time.process_time()
            ref_pred = full_model(image, clicks)
            full["seconds"].append(time.perf_counter() - t0)
            full["cpu"].append(time.process_time() - c0)
            full["liver_agreement"].append(dice(pred > 0, ref_pred > 0))
            full["tumor_agreement"].append(dice(pred == 2, ref_pred == 2))
        if pred.shape != truth.shape:
            raise ValueError(f"prediction {pred.shape} and label {truth.shape} of {label} differ in shape")
        liver.append(dice(pred > 0, truth > 0))
        tumor.append(dice(pred == 2, truth == 2))
        logger.info("%s, %d click(s): liver %.4f, tumor %.4f, %.1f s (CPU %.1f s, network: %s)%s", Path(image).name,
                    n, liver[-1], tumor[-1], seconds[-1], cpu[-1], modes[-1],
                    f"; whole volume {full['seconds'][-1]:.1f} s (CPU {full['cpu'][-1]:.1f} s), Dice crop vs whole "
                    f"liver {full['liver_agreement'][-1]:.4f} tumor {full['tumor_agreement'][-1]:.4f}"
                    if full_model is not None and n > 0 else "")  # fmt: skip
        if n == max_clicks:
            break
        if stop_when_done and n >= max(REPORT_CLICKS) and max(liver) >= LIVER_TARGET and (
            max(tumor) >= TUMOR_TARGET or not (truth == 2).any()
        ):
            break
        if liver_only:
            click = click_fn((pred > 0).astype(np.int16), truth, (0, 1), spacing)
        else:
            click = click_fn(pred, truth, (0, 1, 2), spacing)
        if click is None:  # perfect: the curves stay where they are
            liver += [liver[-1]] * (max_clicks - n)
            tumor += [tumor[-1]] * (max_clicks - n)
            break
        value, point = click
        clicks[names[value]].append(list(point))
        placed.append({"label": names[value], "voxel": list(point)})
    out = {
        "shape": list(truth.shape),
        "spacing_mm": [round(s, 3) for s in spacing],
        "liver_dice": liver,
        "tumor_dice": tumor,
        "has_tumor": bool((truth == 2).any()),
        "clicks": placed,
        "seconds_first": seconds[0],
        "seconds_per_click": statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0],
        "cpu_seconds_per_click": statistics.median(cpu[1:]) if len(cpu) > 1 else cpu[0],
        "cpu_seconds_first": cpu[0],
        "network_modes": modes,
    }
    cropped = [n for n in range(1, len(modes)) if modes[n] == "crop"]
    if cropped:  # the clicks whose crop was re-inferred (not those that left the guidance as it was)
        out["seconds_per_crop_click"] = statistics.median(seconds[n] for n in cropped)
        out["cpu_seconds_per_crop_click"] = statistics.median(cpu[n] for n in cropped)
    if full["seconds"]:
        out.update({
            "seconds_per_click_full": statistics.median(full["seconds"]),
            "cpu_seconds_per_click_full": statistics.median(full["cpu"]),
            "crop_vs_full_liver_dice": full["liver_agreement"],
            "crop_vs_full_tumor_dice": full["tumor_agreement"],
        })  # fmt: skip
    return out


def summarize(cases: Dict[str, Dict[str, Any]], max_clicks: int, no_tumor: Sequence[str] = ()) -> Dict[str, Any]:
    """Mean Dice after :data:`REPORT_CLICKS` clicks, mean NoC90 liver / NoC80 tumor, largest drop, s per click."""

    def at(curve: List[float], n: int) -> float:
        return curve[min(n, len(curve) - 1)]

    tumor_cases = [c for k, c in cases.items() if c["has_tumor"] and k not in set(no_tumor)]
    out: Dict[str, Any] = {"cases": len(cases), "tumor_cases": len(tumor_cases), "max_clicks": max_clicks}
    for n in REPORT_CLICKS:
        if n <= max_clicks:
            out[f"liver_dice@{n}"] = float(np.mean([at(c["liver_dice"], n) for c in cases.values()]))
            if tumor_cases:
                out[f"tumor_dice@{n}"] = float(np.mean([at(c["tumor_dice"], n) for c in tumor_cases]))
    out["noc90_liver"] = float(np.mean([clicks_to_reach(c["liver_dice"], LIVER_TARGET, max_clicks)
                                        for c in cases.values()]))  # fmt: skip
    if tumor_cases:
        out["noc80_tumor"] = float(np.mean([clicks_to_reach(c["tumor_dice"], TUMOR_TARGET, max_clicks)
                                            for c in tumor_cases]))  # fmt: skip
    drops = []
    for k, c in cases.items():
        curves = [c["liver_dice"]] + ([c["tumor_dice"]] if c in tumor_cases else [])
        drops += [max([0.0] + [a - b for a, b in zip(curve[:-1], curve[1:], strict=True)]) for curve in curves]
    out["largest_drop"] = float(max(drops))
    out["seconds_per_click_median"] = float(statistics.median(c["seconds_per_click"] for c in cases.values()))
    out["cpu_seconds_per_click_median"] = float(statistics.median(c["cpu_seconds_per_click"] for c in cases.values()))
    compared = [c for c in cases.values() if "seconds_per_click_full" in c]
    if compared:
        out["seconds_per_click_full_median"] = float(statistics.median(c["seconds_per_click_full"] for c in compared))
        out["cpu_seconds_per_click_full_median"] = float(statistics.median(c["cpu_seconds_per_click_full"]
                                                                           for c in compared))  # fmt: skip
        out["crop_vs_full_liver_dice_min"] = float(min(min(c["crop_vs_full_liver_dice"]) for c in compared))
        out["crop_vs_full_tumor_dice_min"] = float(min(min(c["crop_vs_full_tumor_dice"]) for c in compared))
    return out


def markdown(
    title: str, cases: Dict[str, Dict[str, Any]], summary: Dict[str, Any], command: str, no_tumor: Sequence[str] = ()
) -> str:
    shown = [n for n in REPORT_CLICKS if n <= summary["max_clicks"]]
    lines = [f"### {title}", "", f"`{command}`", ""]
    head = "| case | shape | " + " | ".join(f"liver @{n}" for n in shown) + " | NoC90 liver | "
    head += " | ".join(f"tumor @{n}" for n in shown) + " | NoC80 tumor | s / click | CPU s / click |"
    lines += [head, "|" + "---|" * (6 + 2 * len(shown))]
    cap = summary["max_clicks"]
    for k, c in cases.items():
        liver = " | ".join(f"{c['liver_dice'][min(n, len(c['liver_dice']) - 1)]:.3f}" for n in shown)
        if c["has_tumor"] and k not in set(no_tumor):
            tumor = " | ".join(f"{c['tumor_dice'][min(n, len(c['tumor_dice']) - 1)]:.3f}" for n in shown)
            noc80 = str(clicks_to_reach(c["tumor_dice"], TUMOR_TARGET, cap))
        else:
            tumor, noc80 = " | ".join("-" for _ in shown), "-"
        noc90 = clicks_to_reach(c["liver_dice"], LIVER_TARGET, cap)
        shape = "x".join(str(s) for s in c["shape"])
        lines.append(f"| {k} | {shape} | {liver} | {noc90} | {tumor} | {noc80} | {c['seconds_per_click']:.2f} | "
                     f"{c['cpu_seconds_per_click']:.2f} |")  # fmt: skip
    mean_l = " | ".join(f"**{summary[f'liver_dice@{n}']:.3f}**" for n in shown)
    mean_t = " | ".join(f"**{summary[f'tumor_dice@{n}']:.3f}**" if f"tumor_dice@{n}" in summary else "-"
                        for n in shown)  # fmt: skip
    noc80 = f"**{summary['noc80_tumor']:.1f}**" if "noc80_tumor" in summary else "-"
    timing = f"{summary['seconds_per_click_median']:.2f} | {summary['cpu_seconds_per_click_median']:.2f}"
    lines.append(f"| mean | | {mean_l} | **{summary['noc90_liver']:.1f}** | {mean_t} | {noc80} | {timing} |")
    lines += ["", f"Largest Dice drop after a click: {summary['largest_drop']:.4f}. Tumor figures over "
              f"{summary['tumor_cases']} case(s) with a tumor. NoC capped at {cap}.", ""]  # fmt: skip
    compared = {k: c for k, c in cases.items() if "seconds_per_click_full" in c}
    if compared:
        lines += ["Crop around the click vs the whole-volume re-inference on the same clicks (median s per click over "
                  "the clicks whose crop was re-inferred, n; a click that leaves the guidance as it was reuses the "
                  "kept logits; lowest Dice between the two results over all clicks):", "",
                  "| case | n | s / click crop | CPU s crop | s / click whole | CPU s whole | Dice liver | "
                  "Dice tumor | first inference s (CPU s) |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for k, c in compared.items():
            n = c["network_modes"][1:].count("crop")
            wall = c.get("seconds_per_crop_click", c["seconds_per_click"])
            cpu = c.get("cpu_seconds_per_crop_click", c["cpu_seconds_per_click"])
            lines.append(f"| {k} | {n} | {wall:.2f} | {cpu:.2f} | "
                         f"{c['seconds_per_click_full']:.2f} | {c['cpu_seconds_per_click_full']:.2f} | "
                         f"{min(c['crop_vs_full_liver_dice']):.4f} | {min(c['crop_vs_full_tumor_dice']):.4f} | "
                         f"{c['seconds_first']:.2f} ({c['cpu_seconds_first']:.2f}) |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def find_cases(
    dataset: Path, split: str, only: Sequence[str], labels: Optional[Path] = None
) -> Dict[str, tuple[str, str]]:
    """``{case: (image, label)}`` of ``dataset``'s ``images<split>``; labels from ``labels<split>`` or ``labels``."""
    images = sorted((dataset / f"images{split}").glob("*_0000.nii.gz"))
    out = {}
    for img in images:
        case = img.name[: -len("_0000.nii.gz")]
        label = (labels or dataset / f"labels{split}") / f"{case}.nii.gz"
        if only and case not in only:
            continue
        if not label.is_file():
            raise FileNotFoundError(f"no label {label} for image {img}")
        out[case] = (str(img), str(label))
    if not out:
        raise FileNotFoundError(f"no case in {dataset}/images{split} (cases asked: {list(only) or 'all'})")
    return out


def synthetic_dataset(shape: Sequence[int], root: Optional[Path] = None) -> Path:
    """An nnU-Net test split with one phantom CT of ``shape`` and its label (``benchmarks/inference_cpu.py``'s
    generator), written once: ``<root>/imagesTs/synthetic_0000.nii.gz``, ``<root>/labelsTs/synthetic.nii.gz``."""
    shape = tuple(int(s) for s in shape)
    root = root or REPO / ".cache" / "robot-user" / ("synthetic_" + "x".join(str(s) for s in shape))
    image, label = root / "imagesTs" / "synthetic_0000.nii.gz", root / "labelsTs" / "synthetic.nii.gz"
    if image.is_file() and label.is_file():
        return root
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inference_cpu import make_ct

    from liverseg.imageio import write_nifti

    image.parent.mkdir(parents=True, exist_ok=True)
    label.parent.mkdir(parents=True, exist_ok=True)
    logger.info("writing a synthetic %s CT and its label under %s", "x".join(map(str, shape)), root)
    phantom = make_ct(image, shape)
    write_nifti(label, np.asarray(phantom.label).astype(np.uint8), phantom.affine)
    return root


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, help="nnU-Net raw dataset folder (with --synthetic: where to write it)")
    ap.add_argument("--synthetic", type=int, nargs=3, metavar=("X", "Y", "Z"),
                    help="benchmark one synthetic phantom CT of this shape (written once) instead of --dataset")
    ap.add_argument("--split", default="Ts", choices=["Ts", "Tr"], help="imagesTs/labelsTs (default) or Tr")
    ap.add_argument("--cases", nargs="*", default=[], help="case ids (default: all)")
    ap.add_argument("--labels", type=Path,
                    help="folder of the reference labels (default: the dataset's labels<split>; for the real "
                         "3D-IRCADb patients: .cache/real-eval/dataset/scoring_labels, as `liverseg real-eval` scores)")
    ap.add_argument("--weights", type=Path, default=BUNDLE / "models" / "deepedit" / "model.pt")
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-crop", action="store_true", help="re-infer the whole volume at every click (click_crop off)")
    ap.add_argument("--compare-full", action="store_true",
                    help="after each click also re-infer the whole volume: its timings and the Dice between the two")
    ap.add_argument("--stop-when-done", action="store_true",
                    help="stop a case after 10 clicks once both NoC targets are reached (same figures, less time)")
    ap.add_argument("--no-tumor", nargs="*", default=[],
                    help="cases scored liver-only (label 1 is the truth; left out of the tumor figures)")
    ap.add_argument("--json", type=Path, help="write all curves and the summary here")
    ap.add_argument("--out", type=Path, help="append the markdown table to this file")
    ap.add_argument("--title", default="Robot user")
    args = ap.parse_args(argv)
    if args.dataset is None and not args.synthetic:
        raise SystemExit("--dataset or --synthetic X Y Z is needed")
    if args.max_clicks < 1:
        raise SystemExit(f"--max-clicks must be >= 1, got {args.max_clicks}")
    if not args.weights.is_file():
        raise SystemExit(f"no interactive weights at {args.weights} (train configs/train_deepedit.json first)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    model = InteractiveModel(args.weights, crop=not args.no_crop)
    full_model = InteractiveModel(args.weights, crop=False) if args.compare_full else None
    from scripts.clicks import largest_error_click

    if args.synthetic:
        args.dataset, args.split = synthetic_dataset(args.synthetic, args.dataset), "Ts"

    cases = {}
    for case, (image, label) in find_cases(args.dataset, args.split, args.cases, args.labels).items():
        cases[case] = run_case(model, image, label, args.max_clicks, largest_error_click, args.stop_when_done,
                               full_model, liver_only=case in set(args.no_tumor))  # fmt: skip
        c = cases[case]
        logger.info("%s: liver %.3f -> %.3f, tumor %.3f -> %.3f, %.2f s/click", case, c["liver_dice"][0],
                    c["liver_dice"][-1], c["tumor_dice"][0], c["tumor_dice"][-1], c["seconds_per_click"])  # fmt: skip
    summary = summarize(cases, args.max_clicks, args.no_tumor)
    command = "python benchmarks/robot_user.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(args.title, cases, summary, command, args.no_tumor)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "cases": cases, "command": command}, indent=1))
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)
    return {"summary": summary, "cases": cases}


if __name__ == "__main__":
    main()
