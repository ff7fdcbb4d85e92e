"""Convert the one real LiTS case that ships inside a PyPI wheel (LiTS case 117) to nnU-Net's raw layout.

``liver-ct-segmentation-package==1.6.0`` (MIT licence; the LiTS data is redistributed by the Medical Segmentation
Decathlon under CC BY-SA 4.0) holds ``liver_ct_segmentation_package/data/img_117.mrc`` (CT, float32 HU) and
``lab_117.mrc`` (uint16, 0 background / 1 liver / 2 tumor): LiTS case 117 cropped to the liver bounding box and
resized to 128^3. The liver touches all six faces of the crop. The original spacing and orientation are lost.

File format: MRC2014 (1024-byte main header, ``NSYMBT`` bytes of extended header, raw data, x fastest). The header
is validated here; the data is decoded with the ``mrcfile`` package when it is installed, else with numpy. The
array as decoded (``mrcfile``'s ``data``, C order) is used as ``[i, j, k]``.

Orientation (found by looking at axial, coronal and sagittal renderings): ``i`` runs from the patient's right to
left (the liver is at small ``i``, the spine and the left lobe's tip at large ``i``), ``j`` from anterior to
posterior (vertebral bodies and kidneys at large ``j``), ``k`` from inferior to superior (kidneys and bowel at
small ``k``, lung bases and heart at large ``k``). The array is kept as stored and the orientation goes into the
affine: in RAS+ (nibabel's world convention, +x = patient's Right, +y = Anterior, +z = Superior) the ``i``
column is ``-sx`` (towards Left), ``j`` is ``-sy`` (towards Posterior), ``k`` is ``+sz``: axis codes ``LPS``,
determinant > 0 (the storage order of a plain DICOM series, no mirroring). The volume centre sits at world (0, 0, 0).

Spacing: see :data:`NOMINAL_SPACING`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import math
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from liverseg import LABELS, __version__
from liverseg.dataset import SPLITS, read_dataset_json, write_case, write_dataset_json
from liverseg.errors import InputError, LiverSegError

logger = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "liver-ct-segmentation-package==1.6.0"
WHEEL_FILENAME = "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl"
WHEEL_SHA256 = "67ffa526d8500ce5e3d9f2c96c1690543d811d352d93d531301d35791b9d6bba"
"""SHA-256 of the wheel on PyPI (files there are immutable); checked after every download."""
PACKAGE_DATA_DIR = "liver_ct_segmentation_package/data"
IMAGE_FILE = "img_117.mrc"
LABEL_FILE = "lab_117.mrc"


def _default_cache_dir() -> Path:
    """``<checkout>/.cache/wheels`` when liverseg runs from its source tree (editable install), else
    ``$XDG_CACHE_HOME/liverseg/wheels`` (``~/.cache/liverseg/wheels``): never relative to the current folder."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "setup.cfg").is_file() and (checkout / "liverseg").is_dir():
        return checkout / ".cache" / "wheels"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "liverseg" / "wheels"


DEFAULT_CACHE_DIR = _default_cache_dir()
DEFAULT_CASE_ID = "lits_117"
DATASET_NAME = "LiTS117"

NOMINAL_SPACING: tuple[float, float, float] = (1.35, 1.35, 1.5)
"""Voxel spacing (mm) along ``i`` (R->L), ``j`` (A->P), ``k`` (I->S): an anatomical estimate, the true one is lost.

Measured on the volume: the lumbar vertebral body is ~33 voxels wide and ~26 deep (typical adult L1-L2: ~40-45 mm
wide, ~30-35 mm deep -> ~1.25-1.35 mm); the abdominal aorta is round and ~14 voxels across (~18-22 mm in an older
adult -> ~1.3-1.55 mm); along ``k`` the vertebral segments (body + disc) repeat every ~21-22 voxels (~30-35 mm in
the lower thoracic / upper lumbar spine -> ~1.4-1.6 mm). Hence ~1.35 mm in-plane and 1.5 mm axially, giving a
liver box of ~173 x 173 x 192 mm (plausible: livers span ~150-220 mm in each direction). The CLI's ``--spacing``
overrides it.
"""

MRC_HEADER_BYTES = 1024
MRC_MODES: dict[int, str] = {0: "i1", 1: "i2", 2: "f4", 6: "u2", 12: "f2"}
"""MRC2014 modes of real-valued data: 0 int8, 1 int16, 2 float32, 6 uint16, 12 float16."""


class WheelDownloadError(LiverSegError):
    """``pip download`` of the wheel holding LiTS case 117 failed (offline, index unreachable, ...)."""


def _decode_mrc(raw: bytes, origin: str | Path) -> np.ndarray:
    """Validate an MRC2014 header and return the data as a C-ordered array ``[section, row, column]``."""
    if len(raw) < MRC_HEADER_BYTES:
        raise InputError(origin, f"not an MRC file: {len(raw)} bytes, shorter than the {MRC_HEADER_BYTES}-byte header")
    stamp = raw[212:214]
    endian = ">" if stamp == b"\x11\x11" else "<"  # 0x44 0x44 (or 0x44 0x41) = little-endian
    nx, ny, nz, mode = struct.unpack(f"{endian}4i", raw[:16])
    (nsymbt,) = struct.unpack(f"{endian}i", raw[92:96])
    if raw[208:212] != b"MAP ":
        raise InputError(origin, f"not an MRC2014 file: bytes 208-212 are {raw[208:212]!r}, expected b'MAP '")
    if min(nx, ny, nz) <= 0:
        raise InputError(origin, f"invalid MRC header: dimensions NX, NY, NZ = {nx}, {ny}, {nz}")
    if mode not in MRC_MODES:
        raise InputError(origin, f"unsupported MRC data mode {mode}; supported: {sorted(MRC_MODES)}")
    if nsymbt < 0:
        raise InputError(origin, f"invalid MRC header: negative extended header size NSYMBT={nsymbt}")
    dtype = np.dtype(MRC_MODES[mode]).newbyteorder(endian)
    expected = MRC_HEADER_BYTES + nsymbt + nx * ny * nz * dtype.itemsize
    if len(raw) != expected:
        raise InputError(
            origin,
            f"size mismatch: the header ({nx}x{ny}x{nz}, mode {mode}, {nsymbt}-byte extended header) implies "
            f"{expected} bytes, the file has {len(raw)}",
        )
    try:
        import mrcfile.mrcinterpreter
    except ImportError:
        data = np.frombuffer(raw, dtype=dtype, offset=MRC_HEADER_BYTES + nsymbt).reshape(nz, ny, nx)
    else:
        try:
            with mrcfile.mrcinterpreter.MrcInterpreter(iostream=io.BytesIO(raw), permissive=False) as mrc:
                data = np.array(mrc.data)
        except Exception as e:  # mrcfile raises ValueError / RuntimeWarning-derived errors for bad headers
            raise InputError(origin, f"unreadable MRC file ({type(e).__name__}: {e})") from e
        if data.shape != (nz, ny, nx):
            raise InputError(origin, f"MRC data shape {data.shape} does not match the header ({nz}, {ny}, {nx})")
    return np.ascontiguousarray(data.astype(dtype.newbyteorder("="), copy=False))


def read_mrc(path: str | Path) -> np.ndarray:
    """Read an MRC2014 volume as a C-ordered array; :class:`InputError` for a non-MRC or truncated file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    return _decode_mrc(path.read_bytes(), path)


def _read_members(source: Path) -> tuple[tuple[bytes, str], tuple[bytes, str]]:
    """Raw bytes and display names of the image and label files in a wheel or folder."""
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise InputError(source, "not a wheel (zip) file nor a folder holding img_117.mrc / lab_117.mrc")
        with zipfile.ZipFile(source) as zf:
            names = set(zf.namelist())
            out = []
            for fname in (IMAGE_FILE, LABEL_FILE):
                member = f"{PACKAGE_DATA_DIR}/{fname}"
                if member not in names:
                    raise InputError(source, f"wheel has no member {member} (is it {WHEEL_FILENAME}?)")
                out.append((zf.read(member), f"{source}!{member}"))
            return out[0], out[1]
    if source.is_dir():
        for folder in (source, source / "data", source / PACKAGE_DATA_DIR):
            if (folder / IMAGE_FILE).is_file() or (folder / LABEL_FILE).is_file():
                out = []
                for fname in (IMAGE_FILE, LABEL_FILE):
                    if not (folder / fname).is_file():
                        raise InputError(folder / fname, "file not found (need both img_117.mrc and lab_117.mrc)")
                    out.append(((folder / fname).read_bytes(), str(folder / fname)))
                return out[0], out[1]
        raise InputError(
            source, f"no {IMAGE_FILE} / {LABEL_FILE} here, in data/ or in {PACKAGE_DATA_DIR}/ (extracted wheel)"
        )
    raise InputError(source, "not found")


def read_lits117(source: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read LiTS case 117 from the wheel, an extracted package folder or a folder holding the two ``.mrc`` files.

    Returns:
        ``(image, label)``: float32 HU and uint8 labels (0 background, 1 liver, 2 tumor), both ``[i, j, k]``
        with the orientation described in the module docstring (use :func:`lits117_affine`).
    """
    source = Path(source)
    (img_raw, img_name), (lab_raw, lab_name) = _read_members(source)
    image = _decode_mrc(img_raw, img_name)
    label = _decode_mrc(lab_raw, lab_name)
    if image.shape != label.shape:
        raise InputError(lab_name, f"shape {label.shape} differs from image {img_name} shape {image.shape}")
    if image.dtype.kind != "f" or label.dtype.kind not in "iu":
        raise InputError(img_name, f"expected a float image and an integer label, got {image.dtype} / {label.dtype}")
    unexpected = sorted(set(np.unique(label).tolist()) - set(LABELS.values()))
    if unexpected:
        raise InputError(lab_name, f"unexpected label values {unexpected}; valid: {LABELS}")
    return image.astype(np.float32, copy=False), label.astype(np.uint8)


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be three positive numbers (mm), got {tuple(spacing)}")
    return values  # type: ignore[return-value]


def lits117_affine(
    spacing: Sequence[float] = NOMINAL_SPACING, shape: Sequence[int] = (128, 128, 128)
) -> np.ndarray:
    """Voxel -> RAS affine of the case: axes R->L, A->P, I->S (codes ``LPS``), volume centre at the origin."""
    sx, sy, sz = _check_spacing(spacing)
    affine = np.diag([-sx, -sy, sz, 1.0])
    centre = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_lits117_wheel(cache_dir: str | Path) -> Path:
    """Return the wheel in ``cache_dir``, downloading it with ``pip download`` if it is not there yet.

    Raises :class:`WheelDownloadError` if pip fails and :class:`InputError` if the wheel's SHA-256 is wrong.
    """
    cache_dir = Path(cache_dir)
    wheel = cache_dir / WHEEL_FILENAME
    if not wheel.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
            "--disable-pip-version-check", "--no-input", WHEEL_REQUIREMENT, "-d", str(cache_dir),
        ]  # fmt: skip
        logger.info("downloading %s into %s", WHEEL_REQUIREMENT, cache_dir)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise WheelDownloadError(f"`{' '.join(cmd)}` failed: {e}") from e
        if proc.returncode != 0 or not wheel.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise WheelDownloadError(f"`{' '.join(cmd)}` exited with code {proc.returncode}:\n{tail}")
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise InputError(wheel, f"SHA-256 {digest} differs from the PyPI wheel's {WHEEL_SHA256}; delete it and retry")
    return wheel


def convert_lits117(
    source: Path | None,
    out_root: Path,
    *,
    cache_dir: Path | None = None,
    spacing: tuple[float, float, float] = NOMINAL_SPACING,
    case_id: str = DEFAULT_CASE_ID,
    split: str = "Tr",
) -> str:
    """Write LiTS case 117 as one case of an nnU-Net raw dataset and (re)write ``dataset.json``.

    Args:
        source: the wheel, an extracted package folder or a folder holding the two ``.mrc`` files; ``None``
            downloads the wheel into ``cache_dir`` (default :data:`DEFAULT_CACHE_DIR`) unless it is there.
        out_root: dataset folder; existing cases and ``dataset.json`` fields (name, description, extras) are kept.
        spacing: voxel spacing in mm (nominal, see :data:`NOMINAL_SPACING`).
        case_id: case id to write.
        split: ``"Tr"`` (image + label in imagesTr / labelsTr) or ``"Ts"`` (imagesTs / labelsTs).

    Returns:
        The case id written.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    spacing = _check_spacing(spacing)
    out_root = Path(out_root)
    if source is None:
        source = fetch_lits117_wheel(DEFAULT_CACHE_DIR if cache_dir is None else cache_dir)
    source = Path(source)
    image, label = read_lits117(source)
    affine = lits117_affine(spacing, image.shape)
    logger.info("LiTS 117 from %s -> %s (%s), nominal spacing %s mm", source, case_id, split, spacing)
    write_case(out_root, case_id, image, affine, label, split=split)

    meta: dict[str, Any] = {}
    if (out_root / "dataset.json").is_file():
        try:
            meta = read_dataset_json(out_root)
        except ValueError as e:
            raise InputError(out_root / "dataset.json", f"not valid JSON ({e}); fix or delete it") from e
    name = meta.pop("name", DATASET_NAME)
    description = meta.pop("description", "LiTS case 117 from the PyPI wheel liver-ct-segmentation-package 1.6.0")
    for computed in ("channel_names", "labels", "numTraining", "file_ending"):
        meta.pop(computed, None)
    cases_meta = meta.setdefault("lits117", {})
    cases_meta[case_id] = {
        "source": f"{WHEEL_REQUIREMENT} ({PACKAGE_DATA_DIR}/{IMAGE_FILE}, {LABEL_FILE}); LiTS case 117, "
        "cropped to the liver box and resized to 128^3 by the package author",
        "licence": "LiTS data redistributed by MSD under CC BY-SA 4.0; package MIT",
        "split": split,
        "spacing_mm": list(spacing),
        "spacing_note": "nominal estimate, the original spacing is lost",
        "converter": f"liverseg {__version__} convert lits117",
    }
    write_dataset_json(out_root, name, description, **meta)
    return case_id


def _run(args: argparse.Namespace) -> int:
    convert_lits117(
        args.source, args.out, cache_dir=args.cache_dir, spacing=tuple(args.spacing), case_id=args.case_id,
        split=args.split,
    )  # fmt: skip
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``liverseg convert lits117 OUT [--source WHEEL_OR_DIR] [--cache-dir D] [--spacing X Y Z] [--split S]``."""
    parser = subparsers.add_parser(
        "lits117",
        help="the real LiTS case 117 shipped in the PyPI wheel liver-ct-segmentation-package 1.6.0",
        description=(
            "Write LiTS case 117 (128^3 liver crop with liver and tumor labels, from the wheel "
            f"{WHEEL_REQUIREMENT}) into an nnU-Net raw dataset. Downloads the wheel with pip unless --source is "
            "given. Its spacing is lost: a nominal spacing is used (see --spacing)."
        ),
    )
    parser.add_argument("out", type=Path, help="output dataset folder (existing cases are kept)")
    parser.add_argument(
        "--source", type=Path, default=None, help="the wheel, an extracted wheel or a folder with the .mrc files"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help=f"wheel cache (default: {DEFAULT_CACHE_DIR})"
    )
    parser.add_argument(
        "--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), default=list(NOMINAL_SPACING),
        help=f"voxel spacing in mm along R->L, A->P, I->S (default: nominal {' '.join(map(str, NOMINAL_SPACING))})",
    )  # fmt: skip
    parser.add_argument("--split", choices=SPLITS, default="Tr", help="Tr (default) or Ts (imagesTs / labelsTs)")
    parser.add_argument("--case-id", default=DEFAULT_CASE_ID, help=f"case id (default: {DEFAULT_CASE_ID})")
    parser.set_defaults(func=_run)
