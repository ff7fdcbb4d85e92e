"""Runtime copies of the ``liver_ct_seg`` bundle that the app serves (one per network variant).

The app never writes into the source bundle (``bundles/liver_ct_seg`` of the repository): at start-up each served
model gets a runtime bundle under ``<app_dir>/model/<model name>/`` with

- ``configs/``: the source configs; for a variant, ``inference.json`` and ``train.json`` merged
  with ``configs/variants/<part>.json`` (in order, for ``"unet+2d"``) at the config-parser level;
- ``scripts/``: the bundle's code;
- ``models/model.pt``: the weights, copied from ``<source>/models/model.pt`` (default variant) or
  ``<source>/models/<variant>/model.pt`` when the source file is newer than the runtime copy. Training through the
  API overwrites the runtime copy only, so trained weights survive restarts until newer weights are shipped.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from lib import atomic
from monai.bundle import ConfigParser

logger = logging.getLogger(__name__)

BUNDLE_NAME = "liver_ct_seg"
MERGED_CONFIGS = ("inference.json", "train.json")  # evaluate.json is an overlay on train.json: copied as is
ID_SEP = "#"
_VARIANT_PART = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class ServedBundle:
    """One served model: its name in the API, variant spec ("" = bundle default) and runtime bundle path."""

    name: str
    variant: str
    path: Path
    source_weights: Path

    @property
    def weights(self) -> Path:
        return self.path / "models" / "model.pt"


def available_variants(source: Path) -> list[str]:
    """Names of the variant override files in ``<source>/configs/variants``."""
    return sorted(p.stem for p in (Path(source) / "configs" / "variants").glob("*.json"))


def parse_variants(spec: str | None, source: Path) -> list[str]:
    """Parse the ``variants`` app option: comma-separated variant specs (``"unet,aunet,dalunet"``), each one or
    more override names joined by ``+`` (``"unet+2d"``); ``"all"`` means every single override file.

    Raises:
        ValueError: a name without an override file ``configs/variants/<name>.json`` (the message lists them).
    """
    if not spec or not spec.strip():
        return []
    known = available_variants(source)
    if spec.strip().lower() == "all":
        return known
    out: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        for part in item.split("+"):
            if not _VARIANT_PART.match(part) or part not in known:
                raise ValueError(
                    f"unknown bundle variant {part!r} in the 'variants' option {spec!r}: no file "
                    f"{Path(source) / 'configs' / 'variants' / (part + '.json')}; available: {', '.join(known)}"
                )
        if item not in out:
            out.append(item)
    return out


def model_name(variant: str) -> str:
    """API name of a served model: ``liver_ct_seg`` for the default, ``liver_ct_seg_unet_2d`` for ``unet+2d``."""
    return BUNDLE_NAME if not variant else f"{BUNDLE_NAME}_{variant.replace('+', '_')}"


def source_weights(source: Path, variant: str) -> Path:
    """Where the source bundle keeps the weights of ``variant``."""
    models = Path(source) / "models"
    return models / "model.pt" if not variant else models / variant / "model.pt"


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, text)


def _copy_if_changed(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (:mod:`lib.atomic`) unless the bytes are the same; the copy keeps the
    source's modification time (the weights rule of :func:`prepare_bundle` compares them)."""
    if dst.exists() and dst.read_bytes() == src.read_bytes():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic.copy_file(src, dst)
    st = src.stat()
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def merged_config(source: Path, config_name: str, variant: str) -> dict:
    """``configs/<config_name>`` of ``source`` with the variant's override files applied in order.

    Keys are config ids (``network_def#_target_``); a nested id whose parent is absent from this config (e.g. the
    2D variant's ``train#random_transforms`` applied to ``inference.json``) is skipped: it belongs to another config.
    """
    parser = ConfigParser(ConfigParser.load_config_file(str(Path(source) / "configs" / config_name)))
    for part in (p for p in variant.split("+") if p):
        overrides = ConfigParser.load_config_file(str(Path(source) / "configs" / "variants" / f"{part}.json"))
        for key, value in overrides.items():
            if key.startswith("_comment"):
                continue
            parent = key.rsplit(ID_SEP, 1)[0] if ID_SEP in key else None
            if parent is not None:
                try:
                    parser[parent]
                except (KeyError, IndexError, TypeError, ValueError):
                    continue
            parser[key] = value
    return parser.get()


def prepare_bundle(source: str | Path, dest_root: str | Path, variant: str = "") -> ServedBundle:
    """Create or refresh the runtime bundle of ``variant`` under ``dest_root`` (see the module docstring).

    Idempotent and safe while a server reads the same folder: files are replaced atomically and only when their
    content changed; weights are copied only when the source file is newer than the runtime one.

    Raises:
        ValueError: ``source`` is not a bundle (no ``configs/inference.json`` or ``configs/metadata.json``).
    """
    source = Path(source).resolve()
    for required in ("configs/inference.json", "configs/metadata.json"):
        if not (source / required).is_file():
            raise ValueError(f"{source} is not a MONAI bundle: {required} is missing")
    name = model_name(variant)
    dest = Path(dest_root) / name
    (dest / "configs").mkdir(parents=True, exist_ok=True)
    (dest / "models").mkdir(parents=True, exist_ok=True)

    for cfg in sorted((source / "configs").iterdir()):
        if not cfg.is_file():
            continue
        if variant and cfg.name in MERGED_CONFIGS:
            content = merged_config(source, cfg.name, variant)
            _write_if_changed(dest / "configs" / cfg.name, json.dumps(content, indent=2))
        else:
            _copy_if_changed(cfg, dest / "configs" / cfg.name)

    for src in sorted((source / "scripts").rglob("*")):
        if src.is_file() and "__pycache__" not in src.parts and src.suffix != ".pyc":
            _copy_if_changed(src, dest / "scripts" / src.relative_to(source / "scripts"))

    weights_src = source_weights(source, variant)
    weights_dst = dest / "models" / "model.pt"
    if weights_src.is_file():
        if not weights_dst.exists() or weights_src.stat().st_mtime > weights_dst.stat().st_mtime:
            logger.info("Copying weights %s -> %s", weights_src, weights_dst)
            _copy_if_changed(weights_src, weights_dst)
    elif not weights_dst.exists():
        logger.warning(
            "No weights for model %r: %s does not exist (train it through the API, or put weights there)",
            name,
            weights_src,
        )
    return ServedBundle(name=name, variant=variant, path=dest, source_weights=weights_src)


def bundle_module(bundle_path: str | os.PathLike, name: str) -> ModuleType:
    """``<bundle>/scripts/<name>.py`` loaded from its file under a private module name: monailabel puts the bundle
    on ``sys.path`` only while it builds the transforms, and every served bundle has a package called ``scripts``."""
    path = os.path.join(bundle_path, "scripts", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"liverseg_served_{abs(hash(path))}_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
