"""``liverseg segment``: the default bundle on one's own scans, with results a person can read.

INPUT is a NIfTI file, a DICOM series folder (any common transfer syntax), a folder of studies (NIfTI files and
DICOM series folders found recursively; 3D-IRCADb's ``MASKS_DICOM`` / ``LABELLED_DICOM`` folders are not studies), or
a DICOMweb study URL ``http(s)://<host>/<dicom-web>/studies/<StudyUID>[/series/<SeriesUID>]`` (downloaded in its
stored transfer syntax; the results stay local).
For every study, ``OUT/<study>/`` gets:

- ``<study>_seg.nii.gz``: the mask (0 background, 1 liver, 2 tumor) on the input's grid (``liverseg evaluate``
  pairs it with ``<study>.nii.gz`` references);
- ``<study>_seg.dcm`` (DICOM input): a DICOM SEG of the mask referencing the source series (:mod:`liverseg.dicom.seg`),
  and ``<study>_sr.dcm``: the volumetry as a DICOM SR (TID 1500) referencing the SEG (:mod:`liverseg.dicom.sr`);
- ``volumetry.json`` / ``volumetry.csv``: :func:`liverseg.volumetry.volumetry` (what the server reports);
- ``report.png`` / ``report.pdf``: one page (:mod:`liverseg.report`).

``OUT/summary.csv`` lists every study (status, volumes, seconds). The model is the bundle's own inference config
(``configs/inference.json``, as ``make score-weights`` runs it) without its loader and writer: the image read here is
handed to its preprocessing as a MetaTensor with the image's affine, and its postprocessing inverts back to the input
grid. torch and MONAI are imported only after the first image has been read and checked, so a bad input fails in
about a second; the time of each step is logged and returned.

Example::

    results = segment(["ct.nii.gz", "patient1/DICOM"], Path("out"), device="cpu", keep_going=True)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from liverseg.errors import InputError, LiverSegError

__all__ = ["Study", "StudyResult", "discover_studies", "load_study", "BundleSegmenter", "segment", "register_cli"]

logger = logging.getLogger(__name__)

REPO_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "liver_ct_seg"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
NOT_STUDY_FOLDERS = frozenset({"MASKS_DICOM", "LABELLED_DICOM"})
GENERIC_SERIES_NAMES = frozenset({"PATIENT_DICOM", "DICOM", "CT", "SERIES", "IMAGES", "IMAGE"})
SUMMARY_FIELDS = (
    "study", "status", "source", "liver_volume_ml", "num_tumors", "total_tumor_volume_ml", "tumor_burden_percent",
    "seconds", "error",
)  # fmt: skip


def process_age_s() -> float:
    """Seconds since this process started (Linux ``/proc``; elsewhere since this module was imported)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return max(0.0, time.time() - (boot + start_ticks / os.sysconf("SC_CLK_TCK")))
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time() - _IMPORTED_AT


_IMPORTED_AT = time.time()


# -------------------------------------------------------------------------------------------------------------------
# studies
# -------------------------------------------------------------------------------------------------------------------


@dataclass
class Study:
    """One scan to segment: a NIfTI file or a DICOM folder, and the name of its output folder."""

    name: str
    source: Path | str  # a str for a DICOMweb URL
    kind: str  # "nifti" | "dicom" | "dicomweb" (source: the study URL)


@dataclass
class StudyResult:
    study: Study
    ok: bool
    error: str = ""
    outputs: dict[str, Path] = field(default_factory=dict)
    volumetry: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return name or "study"


def _holds_dicom(folder: Path) -> bool:
    from liverseg.dicom.series import is_obviously_not_dicom

    try:
        return any(p.is_file() and not is_obviously_not_dicom(p) for p in folder.iterdir())
    except OSError:
        return False


def discover_studies(inputs: Sequence[str | Path]) -> list[Study]:
    """The studies named by ``inputs`` (see the module docstring), in the order given, with unique names.

    Raises:
        InputError: an input that does not exist, a file that is not NIfTI, a folder with no study in it.
    """
    found: list[tuple[str, Path | str, str]] = []
    for raw in inputs:
        if str(raw).startswith(("http://", "https://")):
            _, study_uid, series_uid = parse_dicomweb_url(str(raw))
            found.append((series_uid or study_uid, str(raw), "dicomweb"))
            continue
        path = Path(raw)
        if not path.exists():
            raise InputError(path, "not found")
        if path.is_file():
            if not path.name.endswith(NIFTI_SUFFIXES):
                raise InputError(path, "not a NIfTI file (.nii / .nii.gz); give a DICOM series as its folder")
            found.append((path.name[: -len(next(s for s in NIFTI_SUFFIXES if path.name.endswith(s)))], path, "nifti"))
            continue
        if _holds_dicom(path):
            resolved = path.resolve()
            name = resolved.name
            if name.upper() in GENERIC_SERIES_NAMES:  # 3Dircadb1.1/PATIENT_DICOM -> 3Dircadb1.1_PATIENT_DICOM
                name = f"{resolved.parent.name}_{name}"
            found.append((name, path, "dicom"))
            continue
        before = len(found)
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in NOT_STUDY_FOLDERS and not d.startswith("."))
            here = Path(folder)
            rel = here.relative_to(path)
            for f in sorted(files):
                if f.endswith(NIFTI_SUFFIXES) and not f.startswith("."):
                    stem = f[: -len(next(s for s in NIFTI_SUFFIXES if f.endswith(s)))]
                    found.append(("_".join([*rel.parts, stem]), here / f, "nifti"))
            if here != path and _holds_dicom(here):
                found.append(("_".join(rel.parts), here, "dicom"))
                dirs[:] = []  # a series folder's subfolders are not other studies
        if len(found) == before:
            raise InputError(path, "no NIfTI file and no DICOM series found in this folder")
    studies: list[Study] = []
    used: set[str] = set()
    for name, source, kind in found:
        base = _safe_name(name)
        unique, n = base, 2
        while unique in used:
            unique, n = f"{base}_{n}", n + 1
        used.add(unique)
        studies.append(Study(unique, source, kind))
    return studies


@dataclass
class LoadedStudy:
    array: np.ndarray  # [i, j, k]
    affine: np.ndarray  # voxel -> RAS mm
    dicom: dict[str, Any] | None = None  # read_dicom_series' meta for DICOM input
    keep: Any = None  # what must live as long as the study (the download folder of a DICOMweb study)


_DICOMWEB_URL = re.compile(r"^(?P<base>https?://.+?)/studies/(?P<study>[0-9.]+)(?:/series/(?P<series>[0-9.]+))?/?$")


def parse_dicomweb_url(url: str) -> tuple[str, str, str]:
    """``(DICOMweb base URL, study UID, series UID or "")`` of ``<base>/studies/<uid>[/series/<uid>]``.

    Raises:
        InputError: another form of URL.
    """
    m = _DICOMWEB_URL.match(url.strip())
    if m is None:
        raise InputError(url, "not a DICOMweb study URL: expected http(s)://<host>/<dicom-web>/studies/<StudyUID> "
                         "(optionally /series/<SeriesUID>)")
    return m.group("base"), m.group("study"), m.group("series") or ""


def dicomweb_client(base_url: str) -> Any:
    """A DICOMweb client for ``base_url`` (dicomweb-client; no authentication)."""
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=base_url)


def download_dicomweb_study(url: str, folder: Path) -> Path:
    """Download the study (or series) named by a DICOMweb URL into ``folder`` in its stored transfer syntax
    (WADO-RS, ``transfer-syntax=*``: JPEG 2000 and the other compressed syntaxes are decoded here); returns it."""
    base, study_uid, series_uid = parse_dicomweb_url(url)
    client = dicomweb_client(base)
    media = (("application/dicom", "*"),)
    try:
        if series_uid:
            instances = client.retrieve_series(study_uid, series_uid, media_types=media)
        else:
            instances = client.retrieve_study(study_uid, media_types=media)
    except Exception as e:  # requests' HTTP / connection errors, dicomweb-client's ValueErrors
        raise InputError(url, f"could not be retrieved ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    if not instances:
        raise InputError(url, "the DICOMweb server returned no instance")
    folder.mkdir(parents=True, exist_ok=True)
    for n, ds in enumerate(instances):
        ds.save_as(str(folder / f"{n:05d}.dcm"), write_like_original=False)
    logger.info("%s: %d instance(s) downloaded", url, len(instances))
    return folder


def load_study(study: Study) -> LoadedStudy:
    """Read a study's image (a DICOM folder with several image series: the CT series with most slices, logged).

    Raises:
        InputError: naming the file or folder.
    """
    if study.kind == "nifti":
        from liverseg.imageio import read_nifti

        array, affine = read_nifti(study.source)
        if array.dtype.kind not in "iuf":
            raise InputError(study.source, f"voxel type {array.dtype} is not a CT intensity")
        return LoadedStudy(array, affine)
    from liverseg.dicom.series import find_series, read_series_files

    keep = None
    source = study.source
    if study.kind == "dicomweb":
        import tempfile

        keep = tempfile.TemporaryDirectory(prefix="liverseg-dicomweb-")
        source = download_dicomweb_study(str(study.source), Path(keep.name))
    where, series, _ = find_series(source)
    if len(series) > 1:
        def rank(s):
            return (str(getattr(s.first, "Modality", "")).upper() == "CT", len(s.items))

        chosen = max(series, key=rank)
        others = "; ".join(s.describe() for s in series if s is not chosen)
        logger.warning("%s: %d image series; segmenting %s (others: %s)", where, len(series), chosen.describe(), others)
    else:
        chosen = series[0]
    try:
        array, affine, meta = read_series_files(where, chosen)
    except InputError as e:
        if study.kind == "dicomweb":  # name the study's URL, not the download folder
            raise InputError(study.source, e.reason) from e
        raise
    modality = meta["modality"].upper()
    if modality and modality != "CT":
        logger.warning("%s: modality %s, not CT; the model was trained on CT", study.source, modality)
    return LoadedStudy(array, affine, meta, keep=keep)


# -------------------------------------------------------------------------------------------------------------------
# the model
# -------------------------------------------------------------------------------------------------------------------


def bundle_info(bundle_dir: Path) -> dict[str, str]:
    """``name``, ``version`` and ``variant`` of a bundle (metadata.json / inference.json), without torch."""
    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    inference = json.loads((bundle_dir / "configs" / "inference.json").read_text())
    return {
        "name": bundle_dir.name,
        "title": str(meta.get("name", bundle_dir.name)),
        "version": str(meta.get("version", "?")),
        "variant": str(inference.get("variant", "default")),
    }


class BundleSegmenter:
    """The bundle's inference pipeline in this process: preprocessing (without its loader), network + sliding-window
    inferer, postprocessing (without its writer); one instance serves many studies.

    Args:
        bundle_dir: the bundle (``configs/inference.json``, ``models/model.pt``, ``scripts/``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available.
    """

    def __init__(self, bundle_dir: Path = REPO_BUNDLE, device: str | None = None) -> None:
        t0 = time.perf_counter()
        import torch
        from monai.bundle import ConfigParser

        self.timings: dict[str, float] = {"import_torch_monai_s": time.perf_counter() - t0}
        t0 = time.perf_counter()
        bundle_dir = Path(bundle_dir).resolve()
        config, weights = bundle_dir / "configs" / "inference.json", bundle_dir / "models" / "model.pt"
        for needed in (config, weights):
            if not needed.is_file():
                raise InputError(needed, "not found: not a bundle with trained weights")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as e:
            raise InputError(device, "unknown device; valid: cpu, cuda, cuda:N") from e
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(device, "CUDA is not available on this machine; use --device cpu")
        if str(bundle_dir) not in sys.path:
            sys.path.insert(0, str(bundle_dir))  # the bundle's own `scripts` package
        parser = ConfigParser()
        parser.read_config(str(config))
        parser.read_meta(str(bundle_dir / "configs" / "metadata.json"))
        parser["bundle_root"] = str(bundle_dir)
        parser["device"] = f"$torch.device('{self.device}')"
        parser["amp"] = self.device.type == "cuda"
        post = parser["postprocessing"]["transforms"]
        parser["postprocessing"]["transforms"] = [t for t in post if "SaveImage" not in str(t.get("_target_", ""))]
        # the config's `initialize` also announces an output folder, which is not used here: only its settings
        from monai.utils import set_determinism

        set_determinism(seed=0)
        if parser.get("keep_freed_memory", False):
            import scripts.runtime  # the bundle's: glibc keeps freed memory (faster CPU network)

            scripts.runtime.keep_freed_memory()
        self.network = parser.get_parsed_content("network")
        checkpoint = torch.load(str(weights), map_location=self.device, weights_only=True)
        if isinstance(checkpoint, dict) and "model" in checkpoint and isinstance(checkpoint["model"], dict):
            checkpoint = checkpoint["model"]
        self.network.load_state_dict(checkpoint)
        self.network.eval()
        preprocessing = parser.get_parsed_content("preprocessing")
        first = preprocessing.transforms[0]
        if type(first).__name__ != "LoadImaged":
            raise ValueError(f"{config}: preprocessing starts with {type(first).__name__}, expected LoadImaged")
        from monai.transforms import Compose

        self.preprocessing = Compose(preprocessing.transforms[1:])
        self.inferer = parser.get_parsed_content("inferer")
        self.postprocessing = parser.get_parsed_content("postprocessing")
        self.amp = bool(parser.get_parsed_content("amp"))
        self.info = bundle_info(bundle_dir)
        self.timings["load_model_s"] = time.perf_counter() - t0

    def __call__(self, array: np.ndarray, affine: np.ndarray, name: str = "") -> tuple[np.ndarray, dict[str, float]]:
        """The label (uint8 ``[i, j, k]``, on the input grid) of one CT, and the seconds of each step."""
        import torch
        from monai.data import MetaTensor, decollate_batch, list_data_collate

        t: dict[str, float] = {}
        t0 = time.perf_counter()
        image = MetaTensor(
            # C order, as the bundle's own NIfTI reader hands it over: its resampling is about 2 x slower on the
            # first-index-fastest (Fortran-order) arrays that nibabel and ITK give
            torch.as_tensor(np.ascontiguousarray(array)),
            affine=torch.as_tensor(np.asarray(affine, dtype=np.float64)),
            meta={
                "original_affine": np.asarray(affine, dtype=np.float64),
                "spatial_shape": np.asarray(array.shape),
                "original_channel_dim": "no_channel",
                "filename_or_obj": name,
            },
        )
        data = self.preprocessing({"image": image})
        batch = list_data_collate([data])
        t["preprocess_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.amp):
            pred = self.inferer(batch["image"].to(self.device), self.network)
        t["network_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        item = decollate_batch({"image": batch["image"], "pred": pred}, detach=True)[0]
        # what the preprocessing kept for the postprocessing besides the image (e.g. the HU copy on the source grid
        # that inference.json's PeelLiverOutliersd reads)
        item.update({k: v for k, v in data.items() if k != "image" and k not in item})
        out = self.postprocessing(item)["pred"]
        label = np.asarray(out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out)
        label = label[0] if label.ndim == 4 else label
        if label.shape != tuple(array.shape):
            raise RuntimeError(f"the bundle returned a label of shape {label.shape} for an image of {array.shape}")
        t["postprocess_s"] = time.perf_counter() - t0
        return label.astype(np.uint8, copy=False), t


# -------------------------------------------------------------------------------------------------------------------
# outputs
# -------------------------------------------------------------------------------------------------------------------


def _atomic_text(path: Path, text: str) -> Path:
    from liverseg.imageio import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return path


def volumetry_csv(vol: dict[str, Any]) -> str:
    """The volumetry as CSV: one ``summary`` row, then one ``tumor`` row per lesion."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["item", "id", "volume_ml", "diameter_mm", "equivalent_diameter_mm", "x_mm", "y_mm", "z_mm",
                "liver_volume_ml", "num_tumors", "tumor_burden_percent"])
    w.writerow(["summary", "", vol["total_tumor_volume_ml"], "", "", "", "", "", vol["liver_volume_ml"],
                vol["num_tumors"], "" if vol["tumor_burden_percent"] is None else vol["tumor_burden_percent"]])
    for t in vol["tumors"]:
        w.writerow(["tumor", t["id"], t["volume_ml"], t.get("diameter_mm", ""), t.get("equivalent_diameter_mm", ""),
                    *t["centroid_mm"], "", "", ""])
    return buf.getvalue()


def write_outputs(
    study: Study, loaded: LoadedStudy, label: np.ndarray, out_dir: Path, model: dict[str, str], report: bool = True
) -> tuple[dict[str, Path], dict[str, Any], dict[str, float]]:
    """Write a study's outputs (see the module docstring); returns ``(files, volumetry, seconds per step)``."""
    from liverseg.imageio import write_nifti
    from liverseg.volumetry import volumetry

    t: dict[str, float] = {}
    folder = out_dir / study.name
    files: dict[str, Path] = {}
    t0 = time.perf_counter()
    files["mask"] = write_nifti(folder / f"{study.name}_seg.nii.gz", label, loaded.affine, dtype=np.uint8)
    vol = volumetry(label, loaded.affine)
    vol_doc = {"study": study.name, "source": str(study.source), "model": model, **vol}
    files["volumetry_json"] = _atomic_text(folder / "volumetry.json", json.dumps(vol_doc, indent=2) + "\n")
    files["volumetry_csv"] = _atomic_text(folder / "volumetry.csv", volumetry_csv(vol))
    t["write_mask_volumetry_s"] = time.perf_counter() - t0
    if loaded.dicom is not None:
        t0 = time.perf_counter()
        from liverseg.dicom.seg import Algorithm, write_seg

        algorithm = Algorithm(f"{model['name']} ({model['variant']})", model["version"])
        if np.any(label):
            files["seg"] = write_seg(
                label, loaded.dicom["headers"], folder / f"{study.name}_seg.dcm", algorithm=algorithm,
                algorithm_type="AUTOMATIC", series_description="Liver and tumor (liverseg, not for diagnosis)",
            )
            from liverseg.dicom.sr import write_volumetry_sr

            files["sr"] = write_volumetry_sr(
                vol, files["seg"], loaded.dicom["headers"], folder / f"{study.name}_sr.dcm", algorithm=algorithm
            )
        else:
            logger.warning("%s: no liver found; no DICOM SEG / SR written", study.source)
        t["write_dicom_s"] = time.perf_counter() - t0
    if report:
        t0 = time.perf_counter()
        from liverseg.report import render_report

        files["report_png"], files["report_pdf"] = render_report(
            loaded.array, loaded.affine, label, vol, folder / "report.png", folder / "report.pdf",
            title=study.name, source=str(study.source), model=model,
        )
        t["report_s"] = time.perf_counter() - t0
    return files, vol, t


# -------------------------------------------------------------------------------------------------------------------
# the run
# -------------------------------------------------------------------------------------------------------------------


def segment(
    inputs: Sequence[str | Path],
    out_dir: Path,
    *,
    device: str | None = None,
    keep_going: bool = False,
    bundle_dir: Path = REPO_BUNDLE,
    report: bool = True,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> tuple[list[StudyResult], dict[str, float]]:
    """Segment every study of ``inputs`` into ``out_dir`` (see the module docstring).

    Args:
        inputs: NIfTI files, DICOM series folders, folders of studies.
        out_dir: output folder (created); one subfolder per study, ``summary.csv``.
        device: torch device (default: CUDA when available, else CPU).
        keep_going: go on after a failed study (otherwise the first failure raises).
        bundle_dir: the bundle to run (default: the repository's ``bundles/liver_ct_seg``).
        report: write the PNG / PDF report.
        progress: wraps the iteration over studies (e.g. ``tqdm``).

    Returns:
        ``(results, run timings)``; run timings hold ``startup_s`` (process start to the first image read),
        ``import_torch_monai_s``, ``load_model_s`` and ``total_s``.

    Raises:
        InputError: a missing input, or (without ``keep_going``) the first study that fails.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    studies = discover_studies(inputs)
    logger.info("%d stud%s to segment", len(studies), "y" if len(studies) == 1 else "ies")
    run: dict[str, float] = {}
    segmenter: BundleSegmenter | None = None
    results: list[StudyResult] = []
    iterator = progress(studies) if progress is not None else studies
    for study in iterator:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            loaded = load_study(study)
            timings["read_s"] = time.perf_counter() - t0
            if "startup_s" not in run:
                run["startup_s"] = process_age_s() - timings["read_s"]
                run["first_image_read_s"] = process_age_s()
            if segmenter is None:
                segmenter = BundleSegmenter(bundle_dir, device)
                run.update(segmenter.timings)
            label, t = segmenter(loaded.array, loaded.affine, str(study.source))
            timings.update(t)
            files, vol, t = write_outputs(study, loaded, label, out_dir, segmenter.info, report=report)
            timings.update(t)
            timings["total_s"] = time.perf_counter() - t0
            results.append(StudyResult(study, True, outputs=files, volumetry=vol, timings=timings))
            logger.info("%s: liver %.1f mL, %d tumor(s), %.1f s", study.name, vol["liver_volume_ml"],
                        vol["num_tumors"], timings["total_s"])
        except Exception as e:  # one study's failure, whatever its kind, is reported and (keep_going) skipped
            message = str(e) if isinstance(e, LiverSegError) else f"{study.source}: {type(e).__name__}: {e}"
            timings["total_s"] = time.perf_counter() - t0
            results.append(StudyResult(study, False, error=message.splitlines()[0], timings=timings))
            if not keep_going:
                _write_summary(out_dir, results)
                if isinstance(e, LiverSegError):
                    raise
                raise InputError(study.source, f"{type(e).__name__}: {e}") from e
            logger.error("%s", message.splitlines()[0])
    run["total_s"] = time.perf_counter() - t_start
    _write_summary(out_dir, results)
    return results, run


def _write_summary(out_dir: Path, results: list[StudyResult]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS)
    w.writeheader()
    for r in results:
        v = r.volumetry
        w.writerow(
            {
                "study": r.study.name,
                "status": "ok" if r.ok else "failed",
                "source": str(r.study.source),
                "liver_volume_ml": v.get("liver_volume_ml", ""),
                "num_tumors": v.get("num_tumors", ""),
                "total_tumor_volume_ml": v.get("total_tumor_volume_ml", ""),
                "tumor_burden_percent": "" if v.get("tumor_burden_percent") is None else v["tumor_burden_percent"],
                "seconds": round(r.timings.get("total_s", 0.0), 2),
                "error": r.error,
            }
        )
    return _atomic_text(out_dir / "summary.csv", buf.getvalue())


def summary_table(results: list[StudyResult]) -> str:
    """A plain-text table of the results (one line per study)."""
    rows = [("study", "status", "liver mL", "tumors", "tumor mL", "burden %", "s")]
    for r in results:
        v = r.volumetry
        if r.ok:
            burden = v["tumor_burden_percent"]
            rows.append((r.study.name, "ok", f"{v['liver_volume_ml']:.1f}", str(v["num_tumors"]),
                         f"{v['total_tumor_volume_ml']:.2f}", "-" if burden is None else f"{burden:.2f}",
                         f"{r.timings.get('total_s', 0):.1f}"))
        else:
            rows.append((r.study.name, "FAILED", "", "", "", "", f"{r.timings.get('total_s', 0):.1f}"))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        if not r.ok:
            lines.append(f"failed: {r.error}")
    return "\n".join(lines)


def _quiet_libraries() -> None:
    """Keep the command's output to its own lines: library chatter to WARNING, known harmless warnings off."""
    import warnings

    for name in ("highdicom", "scripts.runs"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)  # an optional GPU decoder
    warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
    warnings.filterwarnings("ignore", message=".*Default value changed to None meaning.*")
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


def _run(args: argparse.Namespace) -> int:
    _quiet_libraries()
    progress: Callable[[Iterable], Iterable] | None = None
    if not args.no_progress:
        from tqdm import tqdm

        def bar(items: Iterable) -> Iterable:
            return tqdm(items, desc="studies", unit="study", file=sys.stderr, leave=False)

        progress = bar

    results, run = segment(
        args.inputs, Path(args.out), device=args.device, keep_going=args.keep_going,
        bundle_dir=Path(args.bundle), report=not args.no_report, progress=progress,
    )
    print(summary_table(results))
    steps = ("preprocess_s", "network_s", "postprocess_s", "write_mask_volumetry_s", "write_dicom_s", "report_s")
    print(
        "time: start-up to first image read {:.2f} s (reading it {:.2f} s), torch + monai import {:.2f} s, "
        "model load {:.2f} s, whole command {:.2f} s".format(
            run.get("startup_s", 0.0), run.get("first_image_read_s", 0.0) - run.get("startup_s", 0.0),
            run.get("import_torch_monai_s", 0.0), run.get("load_model_s", 0.0),
            process_age_s(),
        )
    )
    for r in results:
        if r.ok:
            parts = ", ".join(f"{k[:-2]} {r.timings[k]:.2f}" for k in ("read_s", *steps) if k in r.timings)
            print(f"  {r.study.name}: {parts} s")
    print(f"outputs in {args.out} (summary.csv); not for diagnostic use")
    return 1 if any(not r.ok for r in results) else 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """``liverseg segment INPUT... --out DIR [--device cpu|cuda] [--keep-going]``."""
    p = subparsers.add_parser(
        "segment",
        help="segment liver and tumors in NIfTI files / DICOM folders: masks, DICOM SEG + SR, volumetry, report",
        description="Run the default bundle on each study (a NIfTI file, a DICOM series folder, or a folder of "
        "studies) and write per study the mask (NIfTI; DICOM SEG and SR for DICOM input), volumetry JSON + CSV and a "
        "one-page report (PNG + PDF), then a summary. Exit code 0 when every study succeeded, 1 when one failed "
        "(with --keep-going), 2 on bad input. Research use only: not for diagnostic use.",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="NIfTI file, DICOM series folder, folder of studies, or DICOMweb URL <base>/studies/<StudyUID>",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default=None, help="torch device: cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--keep-going", action="store_true", help="segment the other studies when one fails")
    p.add_argument("--bundle", default=str(REPO_BUNDLE), help="bundle folder (default: bundles/liver_ct_seg)")
    p.add_argument("--no-report", action="store_true", help="skip the PNG / PDF report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
