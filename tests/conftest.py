"""Shared fixtures: small synthetic CT phantoms (HU, liver with tumors, known affine) in nnU-Net layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "liver_ct_seg"
SCHEMA = REPO / "tests" / "data" / "zoo-schema" / "meta_schema_20240725.json"

# (case id, phantom seed, orientation, split); seed 4 is rendered twice (RAS and LPS) for geometry checks.
SMALL_CASES = (
    ("case_a", 1, "RAS", "Tr"),
    ("case_b", 2, "LPS", "Tr"),
    ("case_c", 3, "LAS", "Tr"),
    ("case_d", 5, "RAS", "Tr"),
    ("ras_4", 4, "RAS", "Ts"),
    ("lps_4", 4, "LPS", "Ts"),
)
SMALL_SHAPE = (64, 64, 32)


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 + 2 case dataset of 64x64x32 phantoms (~6 mm voxels) covering the whole abdomen at the liver level.

    Test cases ``ras_4`` and ``lps_4`` are the same anatomy stored in RAS and in LPS orientation.
    """
    from liverseg.dataset import write_case, write_dataset_json
    from liverseg.phantom import generate_phantom

    root = tmp_path_factory.mktemp("phantoms") / "Dataset900_SmallPhantom"
    truth = {}
    for case_id, seed, orientation, split in SMALL_CASES:
        ph = generate_phantom(seed, shape=SMALL_SHAPE, orientation=orientation)
        write_case(root, case_id, ph.image, ph.affine, ph.label, split)
        truth[case_id] = ph.info
    write_dataset_json(root, "SmallPhantom", "test fixture", phantoms=truth)
    return root


def resample_to(src: np.ndarray, src_affine: np.ndarray, ref_affine: np.ndarray, ref_shape) -> np.ndarray:
    """Values of ``src`` at the world positions of the voxels of the reference grid (grids must coincide)."""
    t = np.linalg.inv(src_affine) @ ref_affine  # reference voxel -> source voxel
    idx = np.indices(ref_shape).reshape(3, -1).astype(float)
    src_idx = t[:3, :3] @ idx + t[:3, 3:]
    rounded = np.rint(src_idx)
    assert np.max(np.abs(src_idx - rounded)) < 1e-3, "grids do not coincide in world space"
    rounded = rounded.astype(int)
    assert np.all(rounded >= 0) and all(np.all(rounded[d] < src.shape[d]) for d in range(3)), "grids differ in extent"
    return src[tuple(rounded)].reshape(ref_shape)
