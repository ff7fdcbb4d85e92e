"""Transcode real DICOM files to the compressed transfer syntaxes PACS store (GDCM, through python-gdcm)."""

from __future__ import annotations

from pathlib import Path

import pytest

gdcm = pytest.importorskip("gdcm", reason="python-gdcm is needed to transcode test files (pip install python-gdcm)")

# name -> (GDCM transfer syntax, DICOM UID)
SYNTAXES = {
    "jpeg2000": ("JPEG2000Lossless", "1.2.840.10008.1.2.4.90"),
    "jpeg-ls": ("JPEGLSLossless", "1.2.840.10008.1.2.4.80"),
    "jpeg-lossless": ("JPEGLosslessProcess14_1", "1.2.840.10008.1.2.4.70"),
    "rle": ("RLELossless", "1.2.840.10008.1.2.5"),
}


def transcode(source: Path, target: Path, syntax: str) -> Path:
    """Write ``source`` (a DICOM image file) to ``target`` in the transfer syntax ``syntax`` (a :data:`SYNTAXES`
    key), all other attributes kept."""
    if syntax not in SYNTAXES:
        raise ValueError(f"unknown transfer syntax {syntax!r}; valid: {', '.join(SYNTAXES)}")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    if not reader.Read():
        raise RuntimeError(f"GDCM cannot read {source}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, SYNTAXES[syntax][0])))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM cannot transcode {source} to {syntax}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM cannot write {target}")
    return target


def transcode_folder(source: Path, target: Path, syntax: str, names: list[str] | None = None) -> Path:
    """Transcode every file of ``source`` (or the listed ``names``) into the new folder ``target``."""
    target.mkdir(parents=True)
    for f in sorted(source.iterdir()) if names is None else [source / n for n in names]:
        transcode(f, target / f.name, syntax)
    return target
