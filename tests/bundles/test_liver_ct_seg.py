# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""Unit test in the MONAI model zoo's ``ci/unit_tests`` style: train, evaluate and infer a tiny run from the
bundle's own configs, with overrides only.

Self-contained (numpy, nibabel, monai; no liverseg import), so ``make zoo-bundle`` ships it as
``ci/unit_tests/test_liver_ct_seg.py`` next to ``models/liver_ct_seg``. The bundle is taken from
``$LIVER_CT_SEG_BUNDLE_ROOT``, else ``models/liver_ct_seg`` under the current folder (the zoo's layout), else this
repository's ``bundles/liver_ct_seg``. It also checks the first-run promise: a training with no output folders
given writes into a run folder outside the bundle and leaves the shipped weights as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import unittest

import nibabel as nib
import numpy as np
from monai.bundle import ConfigWorkflow


def _bundle_root() -> str:
    if os.environ.get("LIVER_CT_SEG_BUNDLE_ROOT"):
        return os.path.abspath(os.environ["LIVER_CT_SEG_BUNDLE_ROOT"])
    if os.path.isdir(os.path.join("models", "liver_ct_seg", "configs")):
        return os.path.abspath(os.path.join("models", "liver_ct_seg"))
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(os.path.dirname(here)), "bundles", "liver_ct_seg")


BUNDLE_ROOT = _bundle_root()
CONFIGS = os.path.join(BUNDLE_ROOT, "configs")
SHRINK = {  # a tiny network on a coarse grid: seconds per epoch on a CPU
    "pixdim": [6.0, 6.0, 6.0],
    "roi_size": [32, 32, 16],
    "channels": [4, 8, 16, 32, 64],
    "num_workers": 0,
    "sw_batch_size": 4,
}
TRAIN_SHRINK = {
    **SHRINK,
    "cache_rate": 0.0,
    "num_folds": 2,
    "batch_size": 2,
    "num_samples": 2,
    "max_epochs": 1,
    "val_interval": 1,
}


def _fake_case(seed: int, shape: tuple[int, int, int] = (64, 64, 32)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CT-like volume in HU (air, body, a liver ellipsoid with one tumor) with its label and a 6 mm affine."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    body = zz**2 + yy**2 < 0.8
    liver = ((zz - 0.2) / 0.45) ** 2 + ((yy + 0.1) / 0.35) ** 2 + (xx / 0.6) ** 2 < 1
    tumor = ((zz - 0.25) ** 2 + (yy + 0.1) ** 2 + xx**2) < 0.02
    image = np.where(body, 40.0, -1000.0) + np.where(liver, 60.0, 0.0) - np.where(tumor, 60.0, 0.0)
    image += rng.normal(0, 10, shape)
    label = np.where(tumor, 2, np.where(liver, 1, 0)).astype(np.uint8)
    affine = np.diag([6.0, 6.0, 6.0, 1.0])
    return image.astype(np.int16), label, affine


def _sha256(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class TestLiverCTSeg(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.dataset_dir = os.path.join(self.tmp, "Dataset900_Fake")
        for split, seeds in (("Tr", range(4)), ("Ts", range(4, 5))):
            os.makedirs(os.path.join(self.dataset_dir, f"images{split}"))
            os.makedirs(os.path.join(self.dataset_dir, f"labels{split}"))
            for s in seeds:
                image, label, affine = _fake_case(s)
                nib.save(
                    nib.Nifti1Image(image, affine),
                    os.path.join(self.dataset_dir, f"images{split}", f"c{s}_0000.nii.gz"),
                )
                nib.save(
                    nib.Nifti1Image(label, affine), os.path.join(self.dataset_dir, f"labels{split}", f"c{s}.nii.gz")
                )
        self._env = os.environ.get("LIVER_CT_SEG_RUNS")
        os.environ["LIVER_CT_SEG_RUNS"] = os.path.join(self.tmp, "runs")
        if BUNDLE_ROOT not in sys.path:
            sys.path.insert(0, BUNDLE_ROOT)

    def tearDown(self) -> None:
        if self._env is None:
            os.environ.pop("LIVER_CT_SEG_RUNS", None)
        else:
            os.environ["LIVER_CT_SEG_RUNS"] = self._env
        shutil.rmtree(self.tmp)

    def _workflow(self, files: list[str], workflow_type: str, **override) -> ConfigWorkflow:
        return ConfigWorkflow(
            config_file=[os.path.join(CONFIGS, f) for f in files],
            meta_file=os.path.join(CONFIGS, "metadata.json"),
            logging_file=os.path.join(CONFIGS, "logging.conf"),
            workflow_type=workflow_type,
            bundle_root=BUNDLE_ROOT,
            dataset_dir=self.dataset_dir,
            **override,
        )

    def test_train_eval_infer_config(self) -> None:
        shipped = os.path.join(BUNDLE_ROOT, "models", "model.pt")
        shipped_before = _sha256(shipped)
        bundle_entries = sorted(os.listdir(BUNDLE_ROOT))

        # training with no output folder given: a new run folder under $LIVER_CT_SEG_RUNS
        trainer = self._workflow(["train.json"], "train", **TRAIN_SHRINK)
        trainer.initialize()
        self.assertEqual(trainer.check_properties(), [])
        trainer.run()
        trainer.finalize()
        run_dir = trainer.parser.get_parsed_content("run_dir")
        self.assertTrue(run_dir.startswith(os.path.join(self.tmp, "runs", "train-")), run_dir)
        ckpt = os.path.join(run_dir, "models", "model.pt")
        self.assertTrue(os.path.isfile(ckpt))
        self.assertTrue(os.path.isfile(os.path.join(run_dir, "provenance.json")))
        # the shipped weights and the bundle folder are untouched (no eval/, no new checkpoint)
        self.assertEqual(_sha256(shipped), shipped_before)
        self.assertEqual(sorted(os.listdir(BUNDLE_ROOT)), bundle_entries)

        # evaluation of that run's checkpoint on imagesTs/labelsTs
        evaluator = self._workflow(
            ["train.json", "evaluate.json"], "eval", ckpt_dir=os.path.dirname(ckpt), **TRAIN_SHRINK
        )
        evaluator.initialize()
        evaluator.run()
        evaluator.finalize()
        eval_dir = evaluator.parser.get_parsed_content("output_dir")
        self.assertTrue(eval_dir.startswith(os.path.join(self.tmp, "runs", "evaluate-")), eval_dir)
        with open(os.path.join(eval_dir, "metrics.csv")) as f:
            metrics = dict(line.split(",") for line in f.read().split())
        self.assertEqual(set(metrics), {"val_mean_dice", "val_liver_dice", "val_tumor_dice"})

        # inference with the same checkpoint: a mask on the input's grid
        inferer = self._workflow(["inference.json"], "infer", ckpt_dir=os.path.dirname(ckpt), **SHRINK)
        inferer.initialize()
        self.assertEqual(inferer.check_properties(), [])
        inferer.run()
        inferer.finalize()
        out_dir = inferer.parser.get_parsed_content("output_dir")
        seg = nib.load(os.path.join(out_dir, "c4_0000_seg.nii.gz"))
        src = nib.load(os.path.join(self.dataset_dir, "imagesTs", "c4_0000.nii.gz"))
        self.assertEqual(seg.shape, src.shape)
        np.testing.assert_allclose(seg.affine, src.affine, atol=1e-4)
        self.assertEqual(_sha256(shipped), shipped_before)

    def test_metadata_shape_fits_the_network_at_n_1(self) -> None:
        """The metadata's smallest input (n=1) must reach the bottleneck with more than one voxel (instance norm)."""
        with open(os.path.join(CONFIGS, "metadata.json")) as f:
            shape = json.load(f)["network_data_format"]["inputs"]["image"]["spatial_shape"]
        with open(os.path.join(CONFIGS, "inference.json")) as f:
            strides = json.load(f)["strides"]
        factor = int(np.prod(strides))
        for dim in shape:
            base = int(str(dim).split("*")[0])
            self.assertEqual(base % factor, 0, (dim, strides))
            self.assertGreater(base // factor, 1, f"{dim}: a one-voxel bottleneck at n=1")


if __name__ == "__main__":
    unittest.main()
