"""Tests for liverseg.phantom: determinism, realism (HU, volumes, noise, partial volume), world geometry, datasets."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from liverseg import LABELS
from liverseg.dataset import list_cases, read_dataset_json
from liverseg.imageio import orientation_of, read_nifti, spacing_of
from liverseg.phantom import TISSUES, Phantom, generate_phantom, register_cli, write_phantom_dataset

SMALL = (48, 48, 24)


def _world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _centroid_world(ph: Phantom, mask: np.ndarray) -> np.ndarray:
    return _world(ph.affine, np.argwhere(mask).mean(axis=0))


def _canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array), affine))
    return np.asarray(img.dataobj), img.affine


@pytest.fixture(scope="module")
def full() -> Phantom:
    """A full-size case (default spacing) with several tumors of both kinds."""
    return generate_phantom(2, num_tumors=5, orientation="RAS", spacing=(2.5, 2.5, 3.0))


# ---------------------------------------------------------------------------------------------------------------
# determinism and options
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7, 12345])
def test_same_seed_same_phantom(seed):
    a, b = generate_phantom(seed, shape=SMALL), generate_phantom(seed, shape=SMALL)
    for name in ("image", "label", "tissues", "tumor_ids", "affine"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert json.dumps(a.info, sort_keys=True) == json.dumps(b.info, sort_keys=True)


@pytest.mark.parametrize("seeds", [(0, 1), (3, 4), (10, 11)])
def test_different_seeds_differ(seeds):
    a, b = (generate_phantom(s, shape=SMALL, orientation="RAS") for s in seeds)
    assert a.image.shape == b.image.shape
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.label, b.label)


@pytest.mark.parametrize(
    "kwargs, shape, spacing, orientation",
    [
        ({"shape": (48, 48, 24), "orientation": "RAS"}, (48, 48, 24), None, "RAS"),
        ({"shape": (40, 44, 20), "orientation": "LPS"}, (40, 44, 20), None, "LPS"),
        ({"shape": (32, 32, 16), "spacing": (9.0, 9.0, 12.0), "orientation": "LAS"}, (32, 32, 16), (9, 9, 12), "LAS"),
        ({"spacing": (8.0, 8.0, 10.0), "orientation": "LPI"}, None, (8, 8, 10), "LPI"),
        ({"shape": (20, 48, 48), "orientation": "SAR"}, (20, 48, 48), None, "SAR"),
    ],
)
def test_grid_options(kwargs, shape, spacing, orientation):
    ph = generate_phantom(5, **kwargs)
    assert ph.image.dtype == np.int16 and ph.label.dtype == np.uint8 and ph.tissues.dtype == np.uint8
    assert ph.image.shape == ph.label.shape == ph.tissues.shape == ph.tumor_ids.shape
    if shape is not None:
        assert ph.image.shape == shape
    if spacing is not None:
        np.testing.assert_allclose(spacing_of(ph.affine), spacing, rtol=1e-6)
    assert orientation_of(ph.affine) == orientation
    assert ph.info["orientation"] == orientation
    assert list(ph.info["shape"]) == list(ph.image.shape)
    np.testing.assert_allclose(ph.info["spacing"], spacing_of(ph.affine), rtol=1e-3)
    assert set(np.unique(ph.label)) <= set(LABELS.values())


def test_default_grid_covers_the_liver_level():
    for seed in range(6):
        ph = generate_phantom(seed)
        sp = np.array(spacing_of(ph.affine))
        # in-plane / slice spacing ranges; FOV in-plane 340-420 mm, cranio-caudal 150-240 mm
        canon, _ = _canonical(ph.label, ph.affine)
        fov = np.array(canon.shape) * np.array(spacing_of(_canonical(ph.label, ph.affine)[1]))
        assert 340 <= fov[0] <= 420 and 340 <= fov[1] <= 420, fov
        assert 150 <= fov[2] <= 240, fov
        assert sp.min() >= 2.2 and sp.max() <= 5.0
        # the whole liver is inside the grid: no liver voxel on the first / last slice
        zs = np.nonzero(canon.any(axis=(0, 1)))[0]
        assert zs.min() > 0 and zs.max() < canon.shape[2] - 1
    assert {generate_phantom(s, shape=(16, 16, 8)).info["orientation"] for s in range(12)} >= {"RAS", "LPS"}


@pytest.mark.parametrize("num_tumors", [0, 1, 3, 5])
def test_num_tumors(num_tumors):
    ph = generate_phantom(1, shape=(64, 64, 32), num_tumors=num_tumors)
    assert len(ph.info["tumors"]) == num_tumors
    if num_tumors == 0:
        assert not (ph.label == LABELS["tumor"]).any()
    # the first tumors do not depend on how many are asked for
    if num_tumors >= 1:
        one = generate_phantom(1, shape=(64, 64, 32), num_tumors=1)
        assert one.info["tumors"][0] == ph.info["tumors"][0] | {"num_voxels": one.info["tumors"][0]["num_voxels"]}


BAD_ARGS = [
    ({"orientation": "XYZ"}, "orientation"),
    ({"orientation": "RRS"}, "orientation"),
    ({"orientation": "RA"}, "orientation"),
    ({"spacing": (0.0, 1.0, 1.0)}, "spacing"),
    ({"spacing": (-1.0, 1.0, 1.0)}, "spacing"),
    ({"spacing": (1.0, float("nan"), 1.0)}, "spacing"),
    ({"spacing": (1.0, 1.0)}, "spacing"),
    ({"shape": (7, 48, 48)}, "shape"),
    ({"shape": (48, 48, 0)}, "shape"),
    ({"shape": (48, 48, 24.5)}, "shape"),
    ({"shape": (48, 48)}, "shape"),
    ({"num_tumors": -1}, "num_tumors"),
    ({"num_tumors": 100}, "num_tumors"),
    ({"spacing": (0.2, 0.2, 0.2)}, "voxels"),
]


@pytest.mark.parametrize("kwargs, word", BAD_ARGS)
def test_bad_arguments_raise(kwargs, word):
    with pytest.raises(ValueError, match=word):
        generate_phantom(0, **kwargs)


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_bad_seed_raises(seed):
    with pytest.raises(ValueError, match="seed"):
        generate_phantom(seed, shape=SMALL)


# ---------------------------------------------------------------------------------------------------------------
# realism
# ---------------------------------------------------------------------------------------------------------------

HU_RANGES = [
    ("air", -1030, -970),
    ("lung", -900, -800),
    ("fat", -125, -75),
    ("muscle", 35, 65),
    ("bone_cancellous", 240, 400),
    ("kidney", 135, 185),
    ("spleen", 100, 130),
    ("aorta", 145, 205),
    ("ivc", 140, 190),
    ("liver", 95, 115),
    ("gallbladder", -10, 25),
    ("gi_content", 0, 45),
    ("tumor_hypo", 25, 65),
    ("tumor_hyper", 135, 175),
]


@pytest.mark.parametrize("tissue, lo, hi", HU_RANGES)
def test_median_hu_per_tissue(full, tissue, lo, hi):
    interior = ndimage.binary_erosion(full.tissues == TISSUES[tissue])
    assert interior.sum() >= 10, f"too few interior {tissue} voxels"
    median = float(np.median(full.image[interior]))
    assert lo <= median <= hi, f"{tissue}: median {median} HU outside [{lo}, {hi}]"


def test_cortical_bone_brighter_than_cancellous(full):
    cortical = full.image[full.tissues == TISSUES["bone_cortical"]]
    cancellous = full.image[ndimage.binary_erosion(full.tissues == TISSUES["bone_cancellous"])]
    assert np.percentile(cortical, 90) > 600
    assert np.median(cortical) > np.median(cancellous)


@pytest.mark.parametrize("seed", range(8))
def test_liver_volume(seed):
    ph = generate_phantom(seed, shape=(64, 64, 32))
    voxel_ml = float(np.prod(spacing_of(ph.affine))) / 1000
    volume = float(np.count_nonzero(ph.label)) * voxel_ml
    assert 1000 <= volume <= 2500
    assert volume == pytest.approx(ph.info["liver_volume_ml"], rel=1e-3)


@pytest.mark.parametrize("seed", [0, 2, 9])
def test_tumors_inside_liver(seed):
    ph = generate_phantom(seed, num_tumors=5, spacing=(3.0, 3.0, 3.0))
    liver_region = ph.label > 0
    tumor = ph.label == LABELS["tumor"]
    assert tumor.any()
    np.testing.assert_array_equal(tumor, ph.tumor_ids > 0)
    # tumors rarely reach the liver's outer surface (voxels of the region next to background)
    surface = liver_region & ~ndimage.binary_erosion(liver_region)
    assert np.count_nonzero(tumor & surface) <= 0.05 * np.count_nonzero(tumor)
    inv = np.linalg.inv(ph.affine)
    for n, t in enumerate(ph.info["tumors"], start=1):
        assert t["kind"] in ("hypo", "hyper")
        assert 5.0 <= t["diameter_mm"] <= 60.0
        ijk = np.rint(inv[:3, :3] @ np.asarray(t["center_ras_mm"]) + inv[:3, 3]).astype(int)
        assert liver_region[tuple(ijk)], f"tumor {n} centre outside the liver"
        assert np.count_nonzero(ph.tumor_ids == n) == t["num_voxels"]
        if t["diameter_mm"] >= 10:
            assert t["num_voxels"] > 0
        lo, hi = (30, 60) if t["kind"] == "hypo" else (140, 170)
        assert lo <= t["hu"] <= hi


def test_tumors_are_not_spheres(full):
    big = max(range(len(full.info["tumors"])), key=lambda i: full.info["tumors"][i]["diameter_mm"])
    mask = full.tumor_ids == big + 1
    pts = _world(full.affine, np.argwhere(mask).astype(float))
    radii = np.linalg.norm(pts - pts.mean(axis=0), axis=1)
    edge = mask & ~ndimage.binary_erosion(mask)
    r_edge = np.linalg.norm(_world(full.affine, np.argwhere(edge).astype(float)) - pts.mean(axis=0), axis=1)
    assert radii.max() > 0 and r_edge.std() / r_edge.mean() > 0.04


def test_noise_sigma(full):
    interior = ndimage.binary_erosion(full.tissues == TISSUES["liver"], iterations=2)
    sigma = float(np.std(full.image[interior]))
    assert 7.0 <= sigma <= 22.0
    assert sigma == pytest.approx(full.info["noise_sigma_hu"], rel=0.2)


def test_noise_sigma_varies_with_seed():
    sigmas = {generate_phantom(s, shape=(16, 16, 8)).info["noise_sigma_hu"] for s in range(6)}
    assert len(sigmas) == 6 and min(sigmas) >= 8 and max(sigmas) <= 20


def test_partial_volume_at_the_skin(full):
    body = full.tissues != TISSUES["air"]
    edge = body & ~ndimage.binary_erosion(body)
    values = full.image[edge]
    # hard boundaries would leave only fat (~ -100) and air (~ -1000); partial volume gives values in between
    intermediate = np.count_nonzero((values > -850) & (values < -250))
    assert intermediate >= 0.1 * values.size


def test_vessels_stay_liver(full):
    for name in ("portal_vein", "hepatic_vein"):
        vessel = full.tissues == TISSUES[name]
        assert vessel.any()
        inside = vessel & (full.label > 0)
        # intrahepatic branches are labelled liver (the extrahepatic trunk / IVC confluence are not liver)
        assert np.count_nonzero(inside) >= 50
        assert (full.label[inside] == LABELS["liver"]).all()
        assert np.median(full.image[inside]) > np.median(full.image[full.tissues == TISSUES["liver"]]) + 30


# ---------------------------------------------------------------------------------------------------------------
# world geometry
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 4])
@pytest.mark.parametrize("other", ["LPS", "LAS", "PIR"])
def test_same_anatomy_in_world_space_for_any_orientation(seed, other):
    spacing = (6.0, 6.0, 8.0)
    ras = generate_phantom(seed, spacing=spacing, orientation="RAS")
    oth = generate_phantom(seed, spacing=tuple(spacing[{"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}[c]]
                                               for c in other), orientation=other)
    c_ras = _centroid_world(ras, ras.label > 0)
    c_oth = _centroid_world(oth, oth.label > 0)
    np.testing.assert_allclose(c_ras, c_oth, atol=min(spacing))
    # same voxels, reordered: canonical views are identical
    for a, b in ((ras.image, oth.image), (ras.label, oth.label)):
        ca, aff_a = _canonical(a, ras.affine)
        cb, aff_b = _canonical(b, oth.affine)
        np.testing.assert_array_equal(ca, cb)
        np.testing.assert_allclose(aff_a, aff_b, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_liver_on_patients_right_and_under_the_diaphragm(seed, orientation):
    ph = generate_phantom(seed, shape=(64, 64, 32), orientation=orientation)
    body_c = _centroid_world(ph, ph.tissues != TISSUES["air"])
    liver_c = _centroid_world(ph, ph.label > 0)
    spleen_c = _centroid_world(ph, ph.tissues == TISSUES["spleen"])
    # RAS world: +x is the patient's right
    assert liver_c[0] > body_c[0] + 20
    assert spleen_c[0] < body_c[0] - 20
    # the liver dome is superior to the kidneys' centroid; lungs sit above the liver's centroid
    liver_pts = _world(ph.affine, np.argwhere(ph.label > 0).astype(float))
    kidney_c = _centroid_world(ph, ph.tissues == TISSUES["kidney"])
    lung_c = _centroid_world(ph, ph.tissues == TISSUES["lung"])
    assert liver_pts[:, 2].max() > kidney_c[2] + 40
    assert lung_c[2] > liver_c[2]
    # the liver is anterior to the spine
    spine_c = _centroid_world(ph, ph.tissues == TISSUES["bone_cancellous"])
    assert liver_c[1] > spine_c[1]


# ---------------------------------------------------------------------------------------------------------------
# datasets and CLI
# ---------------------------------------------------------------------------------------------------------------


def test_write_phantom_dataset(tmp_path):
    root = tmp_path / "Dataset001_LiverPhantom"
    res = write_phantom_dataset(root, num_train=2, num_test=1, seed=0, shape=(32, 32, 16))
    assert [c.case_id for c in list_cases(root, "Tr")] == ["phantom_000", "phantom_001"]
    ts = list_cases(root, "Ts")
    assert [c.case_id for c in ts] == ["phantom_002"] and ts[0].label is not None
    meta = read_dataset_json(root)
    assert meta["name"] == "LiverPhantom" and meta["numTraining"] == 2
    assert meta["labels"] == LABELS and meta["channel_names"] == {"0": "CT"}
    assert meta["generator"]["name"] == "liverseg.phantom"
    assert set(meta["generator"]["seeds"]) == set(meta["phantoms"]) == {"phantom_000", "phantom_001", "phantom_002"}
    infos = list(meta["phantoms"].values())
    tumors = [t for i in infos for t in i["tumors"]]
    assert any(i["orientation"] == "LPS" for i in infos)
    assert any(not i["tumors"] for i in infos)
    assert any(t["diameter_mm"] < 10 for t in tumors)
    assert {t["kind"] for t in tumors} == {"hypo", "hyper"}
    # files match the phantoms regenerated from the recorded seeds
    for case_id, seed in meta["generator"]["seeds"].items():
        ph = generate_phantom(seed, shape=(32, 32, 16))
        split = res["cases"][case_id]["split"]
        img, aff = read_nifti(root / f"images{split}" / f"{case_id}_0000.nii.gz")
        lab, _ = read_nifti(root / f"labels{split}" / f"{case_id}.nii.gz")
        assert img.dtype == np.int16 and lab.dtype == np.uint8
        np.testing.assert_array_equal(img, ph.image)
        np.testing.assert_array_equal(lab, ph.label)
        np.testing.assert_allclose(aff, ph.affine, atol=1e-4)
    # deterministic: the same call gives the same seeds
    again = write_phantom_dataset(tmp_path / "again", num_train=2, num_test=1, seed=0, shape=(32, 32, 16))
    assert {k: v["seed"] for k, v in again["cases"].items()} == {k: v["seed"] for k, v in res["cases"].items()}


BAD_DATASET_ARGS = [
    ({"num_train": 0, "num_test": 2}, "num_train"),
    ({"num_train": 1, "num_test": 0}, "at least 2"),
    ({"num_train": 2, "num_test": -1}, "num_test"),
    ({"num_train": 2, "num_test": 1, "ircadb_cases": 2, "ircadb_out": "x"}, "ircadb_cases"),
    ({"num_train": 2, "num_test": 1, "shape": (4, 32, 16)}, "shape"),
]


@pytest.mark.parametrize("kwargs, word", BAD_DATASET_ARGS)
def test_write_phantom_dataset_bad_arguments(tmp_path, kwargs, word):
    with pytest.raises(ValueError, match=word):
        write_phantom_dataset(tmp_path / "d", seed=0, **kwargs)


def test_write_phantom_dataset_refuses_foreign_cases(tmp_path):
    root = tmp_path / "d"
    write_phantom_dataset(root, num_train=3, num_test=0, seed=1, shape=(16, 16, 8))
    with pytest.raises(ValueError, match="phantom_002"):
        write_phantom_dataset(root, num_train=2, num_test=0, seed=1, shape=(16, 16, 8))


def test_write_ircadb_copy(tmp_path):
    from liverseg.convert.ircadb import read_ircadb_patient

    res = write_phantom_dataset(tmp_path / "d", num_train=1, num_test=2, seed=3, shape=(24, 24, 12),
                                ircadb_out=tmp_path / "ircadb", ircadb_cases=1)
    assert len(res["ircadb"]) == 1
    patient = tmp_path / "ircadb" / "3Dircadb1.1"
    assert (patient / "PATIENT_DICOM").is_dir() and (patient / "MASKS_DICOM" / "liver").is_dir()
    assert len(list((patient / "PATIENT_DICOM").iterdir())) == 12
    image, label, affine = read_ircadb_patient(patient)
    case = next(c for c, v in res["cases"].items() if v.get("ircadb"))
    ref_img, ref_aff = read_nifti(res["cases"][case]["image"])
    ref_lab, _ = read_nifti(res["cases"][case]["label"])
    for ours, theirs in ((ref_img, image), (ref_lab, label)):
        a, aff_a = _canonical(ours, ref_aff)
        b, aff_b = _canonical(theirs, affine)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(aff_a, aff_b, atol=1e-3)


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["phantoms", "--out", str(tmp_path / "d"), "--num-train", "2", "--num-test", "1",
                              "--seed", "4", "--shape", "16", "16", "8"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("phantom_000 Tr 16x16x8") and lines[2].startswith("phantom_002 Ts")
    assert lines[-1].startswith("wrote 3 cases (2 train, 1 test)")
    args = parser.parse_args(["phantoms", "--out", str(tmp_path / "e"), "--num-train", "1", "--num-test", "0"])
    assert args.func(args) == 2
    assert "at least 2" in capsys.readouterr().out
