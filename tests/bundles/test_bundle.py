"""The liver_ct_seg bundle, run through its REAL configs shrunk by overrides (small voxels grid, ROI, channels).

Covers: model-zoo checks (metadata schema, properties, network in/out, TorchScript export) for every variant,
a short training whose loss falls, evaluation, inference in the source's world space (RAS, LPS, LAS),
multi-GPU training under torchrun on the CPU (gloo), the 2D slice-by-slice variant, and no drift between the
preprocessing of training and inference.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests import procs
from tests.conftest import BUNDLE, SCHEMA

sys.path.insert(0, str(BUNDLE))

CONFIGS = BUNDLE / "configs"
META = str(CONFIGS / "metadata.json")
VARIANTS = ("unet", "aunet", "aunet_ds", "dalunet")
SHRINK = {
    "pixdim": [6.0, 6.0, 6.0],
    "roi_size": [32, 32, 16],
    "channels": [4, 8, 16, 32, 64],
    "num_workers": 0,
    "sw_batch_size": 4,
}
TRAIN_SHRINK = {**SHRINK, "cache_rate": 0.0, "num_folds": 2, "batch_size": 2, "num_samples": 2}


def configs(kind: str, *variants: str) -> list[str]:
    return [str(CONFIGS / f"{kind}.json")] + [str(CONFIGS / "variants" / f"{v}.json") for v in variants]


def workflow(kind: str, variants: tuple[str, ...] = (), workflow_type: str = "train", **override):
    from monai.bundle import ConfigWorkflow

    files = configs("inference" if kind == "inference" else "train", *variants)
    if kind == "evaluate":
        files.append(str(CONFIGS / "evaluate.json"))
    return ConfigWorkflow(
        config_file=files,
        meta_file=META,
        logging_file=False,
        workflow_type=workflow_type,
        bundle_root=str(BUNDLE),
        **override,
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind,workflow_type", [("train", "train"), ("inference", "infer")])
def test_check_properties(variant, kind, workflow_type, tmp_path, phantom_dataset):
    wf = workflow(
        kind, (variant,), workflow_type=workflow_type, output_dir=str(tmp_path), dataset_dir=str(phantom_dataset)
    )
    wf.initialize()
    assert wf.check_properties() == []


def test_verify_metadata_against_zoo_schema(tmp_path):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=META, filepath=str(SCHEMA))
    broken = json.loads(Path(META).read_text())
    del broken["network_data_format"]
    (tmp_path / "meta.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError):
        verify_metadata(meta_file=str(tmp_path / "meta.json"), filepath=str(SCHEMA))


@pytest.mark.parametrize("variant", VARIANTS)
def test_verify_net_in_out(variant):
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def", meta_file=META, config_file=configs("inference", variant), n=2, device="cpu",
        bundle_root=str(BUNDLE), channels=SHRINK["channels"],
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_ckpt_export_torchscript(variant, tmp_path):
    from monai.bundle import ConfigParser, ckpt_export

    parser = ConfigParser()
    parser.read_config(configs("inference", variant))
    parser.update({"channels": SHRINK["channels"], "bundle_root": str(BUNDLE)})
    net = parser.get_parsed_content("network_def").eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    ckpt_export(
        net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"),
        meta_file=META, config_file=configs("inference", variant), bundle_root=str(BUNDLE),
        channels=SHRINK["channels"],
    )
    ts = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(1, 1, 32, 32, 16)
    with torch.no_grad():
        assert torch.allclose(ts(x), net(x), atol=1e-5)


@pytest.fixture(scope="module")
def trained(phantom_dataset, tmp_path_factory):
    """Train the default variant for a few epochs; return (ckpt_dir, output_dir, per-iteration losses)."""
    from ignite.engine import Events

    out = tmp_path_factory.mktemp("train")
    wf = workflow(
        "train", dataset_dir=str(phantom_dataset), ckpt_dir=str(out / "models"), output_dir=str(out / "log"),
        max_epochs=12, val_interval=12, learning_rate=0.05, **TRAIN_SHRINK,
    )
    wf.initialize()
    losses: list[float] = []
    trainer = wf.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
    wf.run()
    wf.finalize()
    return out / "models", out / "log", losses


def test_training_loss_falls_and_outputs_provenance(trained):
    ckpt_dir, log_dir, losses = trained
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert (ckpt_dir / "model.pt").is_file()
    prov = json.loads((log_dir / "provenance.json").read_text())
    assert prov["seed"] == 0 and prov["versions"]["monai"]
    resolved = json.loads((log_dir / "config_resolved.json").read_text())
    assert resolved["max_epochs"] == 12 and resolved["roi_size"] == [32, 32, 16]


def test_evaluate_writes_metrics(trained, phantom_dataset, tmp_path):
    ckpt_dir, _, _ = trained
    wf = workflow(
        "evaluate", dataset_dir=str(phantom_dataset), ckpt_dir=str(ckpt_dir), output_dir=str(tmp_path), **TRAIN_SHRINK
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    metrics = dict(line.split(",") for line in (tmp_path / "metrics.csv").read_text().split())
    assert set(metrics) == {"val_mean_dice", "val_liver_dice", "val_tumor_dice"}
    assert all(0.0 <= float(v) <= 1.0 for v in metrics.values())
    # predictions were written in the source geometry of each held-out case
    for case in ("ras_4", "lps_4"):
        src = nib.load(phantom_dataset / "imagesTs" / f"{case}_0000.nii.gz")
        seg = nib.load(tmp_path / f"{case}_0000_seg.nii.gz")
        assert seg.shape == src.shape
        np.testing.assert_allclose(seg.affine, src.affine, atol=1e-4)
    assert (tmp_path / "provenance.json").is_file()


def _threshold_model(path: Path, hu: float, hu_min: float, hu_max: float) -> None:
    """A 1x1x1 convolution that calls 'liver' every voxel brighter than ``hu`` (after the bundle's window)."""
    conv = torch.nn.Conv3d(1, 3, kernel_size=1)
    x0 = (hu - hu_min) / (hu_max - hu_min)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.0, 50.0, 0.0]).view(3, 1, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, -50.0 * x0, -1e3]))
    torch.save(conv.state_dict(), path)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))  # 26-connectivity, as MONAI uses by default
    if n == 0:
        return mask
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def test_inference_lands_in_source_world_space(tmp_path):
    """A position-sensitive oracle model run through the real inference pipeline (reorient, resample, crop,
    invert): its mask must match the same rule applied directly on the source grid, for RAS, LPS and LAS inputs,
    and the three outputs must agree in world space."""
    from liverseg.phantom import generate_phantom

    infer_cfg = json.loads((CONFIGS / "inference.json").read_text())
    hu_min, hu_max = infer_cfg["hu_min"], infer_cfg["hu_max"]
    _threshold_model(tmp_path / "model.pt", 80.0, hu_min, hu_max)
    inputs = tmp_path / "in"
    inputs.mkdir()
    phantoms = {}
    for orient in ("RAS", "LPS", "LAS"):
        ph = generate_phantom(4, shape=(64, 64, 32), orientation=orient)
        phantoms[orient] = ph
        nib.save(nib.Nifti1Image(ph.image, ph.affine), inputs / f"{orient}.nii.gz")
    wf = workflow(
        "inference", workflow_type="infer", input_files=sorted(str(p) for p in inputs.glob("*.nii.gz")),
        ckpt_dir=str(tmp_path), output_dir=str(tmp_path / "out"),
        network_def={"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 3, "kernel_size": 1},
        # resampling to the source spacing keeps interpolation out of the comparison: what is left is geometry
        pixdim=[float(s) for s in np.linalg.norm(phantoms["RAS"].affine[:3, :3], axis=0)],
        roi_size=[32, 32, 16], sw_batch_size=4,
        peel_k_mad=0,  # geometry only: the HU peel would trim the threshold model's mask to one tissue
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    world = {}
    for orient, ph in phantoms.items():
        seg_img = nib.load(tmp_path / "out" / f"{orient}_seg.nii.gz")
        assert seg_img.shape == ph.image.shape
        np.testing.assert_allclose(seg_img.affine, ph.affine, atol=1e-4)
        seg = np.asarray(seg_img.dataobj) > 0
        expected = _largest_component(ph.image > 80)
        dice = 2 * (seg & expected).sum() / (seg.sum() + expected.sum())
        assert seg.sum() > 500 and dice > 0.99, (orient, dice)
        # back to a common (RAS) voxel order for the world-space comparison
        world[orient] = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(seg.astype(np.uint8), ph.affine)).dataobj)
    assert np.array_equal(world["RAS"], world["LPS"])
    assert np.array_equal(world["RAS"], world["LAS"])


def test_inference_preprocessing_is_the_training_one():
    """Guard against drift: inference.json's preprocessing equals train.json's deterministic transforms (image key)."""
    train = json.loads((CONFIGS / "train.json").read_text())
    infer = json.loads((CONFIGS / "inference.json").read_text())
    expected = copy.deepcopy(train["deterministic_transforms"])
    for t in expected:
        if t["keys"] == ["image", "label"]:
            t["keys"] = "image"
        if t["_target_"] == "scripts.transforms.FastSpacingd":
            t["mode"] = "bilinear"
    # inference's own extra: a copy of the loaded HU image for the postprocessing's HU peel (no spatial change)
    kept = [t for t in infer["preprocessing"]["transforms"] if t.get("names") != "hu_source"]
    assert len(kept) == len(infer["preprocessing"]["transforms"]) - 1
    assert kept == expected
    for key in ("hu_min", "hu_max", "use_histogram_equalization", "pixdim", "roi_size", "body_threshold_hu",
                "network_def", "channels", "strides", "spatial_dims", "out_channels", "inferer"):
        assert infer[key] == train[key], key


def test_multi_gpu_train_under_torchrun_on_cpu(phantom_dataset, tmp_path):
    """Two gloo ranks train, rank 0 saves the model, and the config's finalize leaves no gloo thread running: with
    its process group kept alive by DistributedDataParallel, gloo's threads ran into interpreter shutdown, where a
    rank now and then aborted (SIGABRT) after a finished training (scripts.runtime.end_distributed)."""
    # after the config's own finalize steps, each rank writes the names of its threads
    finalize = json.loads((CONFIGS / "multi_gpu_train.json").read_text())["finalize"] + [
        "$__import__('pathlib').Path(" + repr(str(tmp_path)) + ", 'threads_' + os.environ['RANK']).write_text("
        "' '.join(__import__('pathlib').Path('/proc/self/task', t, 'comm').read_text().strip() "
        "for t in os.listdir('/proc/self/task')))"
    ]
    overrides = []
    for k, v in {**TRAIN_SHRINK, "max_epochs": 1, "val_interval": 1, "finalize": finalize}.items():
        overrides += [f"--{k}", json.dumps(v)]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
        "monai.bundle", "run", "--config_file", json.dumps(configs("train") + [str(CONFIGS / "multi_gpu_train.json")]),
        "--meta_file", META, "--bundle_root", str(BUNDLE), "--dataset_dir", str(phantom_dataset),
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "log"), *overrides,
    ]
    env = dict(os.environ, PYTHONPATH=str(BUNDLE), OMP_NUM_THREADS="1")
    res = procs.run(cmd, cwd=BUNDLE, env=env, timeout=1200)  # on a timeout, torchrun's workers are killed too
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()
    assert res.stdout.count("Epoch[1] Complete") + res.stderr.count("Epoch[1] Complete") >= 2
    if sys.platform.startswith("linux"):  # thread names from /proc
        for rank in ("0", "1"):
            threads = (tmp_path / f"threads_{rank}").read_text().split()
            assert "python" in threads and not any("gloo" in t for t in threads), (rank, threads)


def test_report_2d_pipeline_trains_and_infers_slice_by_slice(phantom_dataset, tmp_path):
    shrink_2d = {**TRAIN_SHRINK, "roi_size": [32, 32], "num_samples": 4, "batch_size": 4}
    wf = workflow(
        "train", ("2d",), dataset_dir=str(phantom_dataset), ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "log"), max_epochs=1, val_interval=1, **shrink_2d,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    assert (tmp_path / "models" / "model.pt").is_file()
    net = wf.parser.get_parsed_content("network_def")
    assert type(net).__name__ == "UNet" and net.spatial_dims == 2
    # the report's own settings: W250/C0, histogram equalization on, cross-entropy, Adagrad
    assert (wf.parser["hu_min"], wf.parser["hu_max"], wf.parser["use_histogram_equalization"]) == (-125, 125, True)
    assert isinstance(wf.parser.get_parsed_content("optimizer"), torch.optim.Adagrad)
    assert wf.parser.get_parsed_content("loss").loss.lambda_dice == 0.0
    src = phantom_dataset / "imagesTs" / "lps_4_0000.nii.gz"
    wf = workflow(
        "inference", ("2d",), workflow_type="infer", input_files=[str(src)], ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "out"), **{k: v for k, v in shrink_2d.items() if k in SHRINK},
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    seg = nib.load(tmp_path / "out" / "lps_4_0000_seg.nii.gz")
    ref = nib.load(src)
    assert seg.shape == ref.shape
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-4)


def test_pretrained_checkpoint_switch(tmp_path, phantom_dataset):
    """Fine-tuning: `pretrained_checkpoint` adds a CheckpointLoader to the train handlers; empty (default) adds none."""
    from monai.handlers import CheckpointLoader

    def loaders(**override):
        wf = workflow("train", dataset_dir=str(phantom_dataset), output_dir=str(tmp_path), **override)
        wf.initialize()
        return [h for h in wf.parser.get_parsed_content("train#handlers") if isinstance(h, CheckpointLoader)]

    assert loaders() == []
    ckpt = tmp_path / "start.pt"
    torch.save({}, ckpt)
    (loader,) = loaders(pretrained_checkpoint=str(ckpt))
    assert loader.load_path == str(ckpt)
