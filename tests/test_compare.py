"""`liverseg compare`: config checks, the train/test split, and a tiny end-to-end comparison run (two arms, two
epochs, small phantoms) that writes the table, curves and pictures and resumes without retraining."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from liverseg.compare import (
    DEFAULT_CONFIG,
    _cli_value,
    load_config,
    prepare_split,
    run_comparison,
)
from liverseg.errors import InputError
from liverseg.phantom import write_phantom_dataset
from tests.conftest import BUNDLE

TINY_BUDGET = {
    "max_epochs": 2, "val_interval": 1, "num_folds": 2, "fold": 0, "pixdim": [6.0, 6.0, 6.0],
    "roi_size": [32, 32, 16], "channels": [4, 8, 16, 32, 64], "batch_size": 1, "num_samples": 1,
    "early_stop_patience": 1000, "num_workers": 0,
}  # fmt: skip


def _config(tmp_path: Path, **changes) -> Path:
    cfg = {
        "bundle": str(BUNDLE), "seed": 0, "test_folds": 3, "test_fold": 0, "budget": TINY_BUDGET,
        "reference_arm": "unet",
        "arms": [
            {"name": "unet", "group": "network", "label": "U-Net", "configs": ["configs/variants/unet.json"]},
            {"name": "unet_w250", "group": "window", "label": "U-Net W250/C0",
             "configs": ["configs/variants/unet.json"], "overrides": {"hu_min": -125, "hu_max": 125}},
        ],
    }  # fmt: skip
    if "seeds" in changes and "seed" not in changes:
        del cfg["seed"]
    cfg.update(changes)
    path = tmp_path / "comparison.json"
    path.write_text(json.dumps(cfg))
    return path


def test_shipped_config_declares_the_four_networks_and_the_ablations():
    cfg = load_config(DEFAULT_CONFIG)
    arms = {a["name"]: a for a in cfg["arms"]}
    networks = {a["configs"][0] for a in cfg["arms"] if a["group"] == "network"}
    assert networks == {f"configs/variants/{v}.json" for v in ("unet", "aunet", "aunet_ds", "dalunet")}
    assert all(not a["overrides"] for a in cfg["arms"] if a["group"] == "network")
    # ablations change exactly the preprocessing switch they name, on top of the reference arm's network
    ref = arms[cfg["reference_arm"]]
    windows = [a for a in cfg["arms"] if a["overrides"].get("hu_min") == -125 and a["overrides"].get("hu_max") == 125]
    histeq = [a for a in cfg["arms"] if a["overrides"].get("use_histogram_equalization") is True]
    assert windows and histeq
    assert all(a["configs"] == ref["configs"] for a in windows + histeq)
    assert set(cfg["budget"]) >= {"max_epochs", "roi_size", "pixdim", "num_folds", "fold"}
    assert len(cfg["seeds"]) >= 3  # mean +- SD over training runs, not over one run's test cases only


@pytest.mark.parametrize(
    "change, message",
    [
        ({"arms": []}, "non-empty"),
        ({"budget": 3}, "budget"),
        ({"arms": [{"name": "a"}, {"name": "a"}]}, "twice"),
        ({"arms": [{"name": "a", "extra": 1}]}, "unknown field"),
        ({"arms": [{"name": "../x"}]}, "letters"),
        ({"arms": [{"name": "a", "configs": ["configs/variants/nope.json"]}]}, "not found"),
        ({"arms": [{"name": "a", "configs": "configs/variants/unet.json"}]}, "must be a list"),
        ({"reference_arm": "other"}, "reference_arm"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [0, 0]}, "distinct"),
        ({"seeds": [1, -2]}, "seeds"),
        ({"seeds": 3}, "seeds"),
        ({"seeds": [0, True]}, "seeds"),
        ({"seeds": [0, 1], "seed": 0}, "not both"),
    ],
)
def test_bad_configs_are_refused_with_the_reason(tmp_path, change, message):
    with pytest.raises(InputError, match=message):
        load_config(_config(tmp_path, **{"reference_arm": None, **change}))


def test_missing_field_and_bad_json(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "nobundle.json").write_text(json.dumps({"arms": [{"name": "a"}], "budget": {}}))
    with pytest.raises(InputError, match="'bundle'"):
        load_config(tmp_path / "nobundle.json")


@pytest.mark.parametrize(
    "value, text",
    [(True, "True"), (False, "False"), (None, "None"), (-125, "-125"), (0.5, "0.5"), ([3.0, 3.0], "[3.0, 3.0]"),
     ({"a": True, "b": None}, '{"a": True, "b": None}'), ("$torch.device('cpu')", "$torch.device('cpu')")],
)
def test_cli_values_are_python_literals_for_monai_bundle(value, text):
    assert _cli_value(value) == text


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cmp") / "Dataset009_Tiny"
    write_phantom_dataset(root, num_train=6, num_test=0, seed=5, shape=(48, 48, 24), spacing=(8.0, 8.0, 10.0))
    return root


def test_split_holds_out_a_fold_by_case_with_links(tiny_dataset, tmp_path):
    data, split = prepare_split(tiny_dataset, tmp_path, test_folds=3, test_fold=0, seed=0)
    assert data == tmp_path / "split"
    assert len(split["test"]) == 2 and len(split["train"]) == 4
    assert not set(split["test"]) & set(split["train"])
    for sub, cases in (("Tr", split["train"]), ("Ts", split["test"])):
        images = sorted(p.name for p in (data / f"images{sub}").iterdir())
        assert images == sorted(f"{c}_0000.nii.gz" for c in cases)
        assert all(os.path.islink(data / f"labels{sub}" / f"{c}.nii.gz") for c in cases)
    # deterministic, and every case is tested in exactly one fold
    again = prepare_split(tiny_dataset, tmp_path / "again", test_folds=3, test_fold=0, seed=0)[1]
    assert again["test"] == split["test"]
    tested = [c for f in range(3) for c in prepare_split(tiny_dataset, tmp_path / f"f{f}", 3, f, 0)[1]["test"]]
    assert sorted(tested) == sorted(split["train"] + split["test"])


def test_split_uses_the_datasets_own_test_set(phantom_dataset, tmp_path):
    data, split = prepare_split(phantom_dataset, tmp_path, test_folds=3, test_fold=0, seed=0)
    assert data == phantom_dataset and split["held_out_from"] == "imagesTs/labelsTs"
    assert not (tmp_path / "split").exists()


@pytest.mark.parametrize("folds, fold", [(1, 0), (3, 3), (99, 0)])
def test_split_refuses_impossible_folds(tiny_dataset, tmp_path, folds, fold):
    with pytest.raises(InputError, match="cannot hold out"):
        prepare_split(tiny_dataset, tmp_path, test_folds=folds, test_fold=fold, seed=0)


def test_split_refuses_a_dataset_without_labels(tmp_path):
    (tmp_path / "ds" / "imagesTr").mkdir(parents=True)
    (tmp_path / "ds" / "imagesTr" / "a_0000.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="no label"):
        prepare_split(tmp_path / "ds", tmp_path, 3, 0, 0)
    with pytest.raises(InputError, match="nnU-Net layout"):
        prepare_split(tmp_path, tmp_path, 3, 0, 0)


def test_tiny_comparison_run_writes_table_curves_pictures_and_resumes(tiny_dataset, tmp_path):
    config = _config(tmp_path)
    out = tmp_path / "out"
    rows = run_comparison(config, out=out, dataset=tiny_dataset)
    assert [r["name"] for r in rows] == ["unet", "unet_w250"]
    table = (out / "comparison.md").read_text()
    assert "| U-Net | network |" in table and "| U-Net W250/C0 | window |" in table
    with open(out / "comparison.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["arm"] for r in csv_rows] == ["unet", "unet_w250"]
    for r in csv_rows:
        assert 0.0 <= float(r["liver_dice_mean"]) <= 1.0 and int(r["parameters"]) > 0
    for name, hu in (("unet", -100), ("unet_w250", -125)):
        arm = out / "arms" / name / "seed_0"
        resolved = json.loads((arm / "train" / "config_resolved.json").read_text())
        assert resolved["hu_min"] == hu and resolved["max_epochs"] == 2 and resolved["seed"] == 0
        with open(arm / "train" / "history.csv") as f:
            history = list(csv.DictReader(f))
        assert [int(h["epoch"]) for h in history] == [1, 2]
        assert all(float(h["train_loss"]) > 0 and 0 <= float(h["val_dice_per_class_liver"]) <= 1 for h in history)
        preds = sorted(p.name for p in (arm / "pred").glob("*.nii.gz"))
        assert len(preds) == 2 and (arm / "eval" / "summary.json").is_file()
    assert (out / "curves.png").stat().st_size > 10_000
    pictures = sorted(p.name for p in (out / "pictures").glob("*.png"))
    assert len(pictures) == 2
    # a rerun reuses finished arms (no retraining), a changed arm reruns
    model = out / "arms" / "unet" / "seed_0" / "models" / "model.pt"
    stamp = model.stat().st_mtime_ns
    run_comparison(config, out=out, dataset=tiny_dataset, arms=["unet"])
    assert model.stat().st_mtime_ns == stamp
    run_comparison(config, out=out, dataset=tiny_dataset, arms=["unet"], max_epochs=1)
    assert model.stat().st_mtime_ns != stamp
    with open(out / "arms" / "unet" / "seed_0" / "train" / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 1
    # a second seed trains the arm again from scratch (seed 0 is reused); the table is then over the seeds
    rows = run_comparison(config, out=out, dataset=tiny_dataset, arms=["unet"], max_epochs=1, seeds=[0, 1])
    assert model.stat().st_mtime_ns != stamp  # (changed by the max_epochs=1 run above, not by this one)
    assert rows[0]["seeds"] == [0, 1] and rows[0]["over"] == "seeds"
    seed1 = out / "arms" / "unet" / "seed_1"
    assert json.loads((seed1 / "train" / "config_resolved.json").read_text())["seed"] == 1
    losses = []
    for k in (0, 1):
        with open(out / "arms" / "unet" / f"seed_{k}" / "train" / "history.csv") as f:
            losses.append(float(next(csv.DictReader(f))["train_loss"]))
    assert losses[0] != losses[1]  # different initial weights and patches
    per_seed = [r["liver_dice"]["mean"] for r in (s["summary"]["metrics"] for s in rows[0]["runs"])]
    cell = rows[0]["cells"]["liver_dice"]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(sum(per_seed) / 2)
    assert "liver Dice per seed" in (out / "comparison.md").read_text()
    with open(out / "comparison_per_seed.csv") as f:
        assert [(r["arm"], r["seed"]) for r in csv.DictReader(f)] == [("unet", "0"), ("unet", "1")]
    with open(out / "comparison.csv") as f:
        assert next(csv.DictReader(f))["over"] == "seeds"


def test_unknown_arm_is_refused(tmp_path, tiny_dataset):
    with pytest.raises(InputError, match="unknown arm"):
        run_comparison(_config(tmp_path), out=tmp_path / "o", dataset=tiny_dataset, arms=["nope"])
