"""Unit tests of the liver app's pieces and of ``liverseg serve``'s preparation (no server process)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from lib import bundles  # noqa: E402  (apps/liver on sys.path, see conftest)
from lib.validation import BadRequest, check_id, read_header  # noqa: E402

from liverseg import serve
from liverseg.errors import LiverSegError
from liverseg.imageio import write_nifti

from .conftest import BUNDLE, make_test_bundle

# ---------------------------------------------------------------------------------------------------------------
# runtime bundles and variants
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("", []),
        (None, []),
        ("unet", ["unet"]),
        ("unet, aunet,dalunet", ["unet", "aunet", "dalunet"]),
        ("unet+2d,unet", ["unet+2d", "unet"]),
        ("all", bundles.available_variants(BUNDLE)),
    ],
)
def test_parse_variants(spec, expected):
    assert bundles.parse_variants(spec, BUNDLE) == expected


@pytest.mark.parametrize("spec", ["vnet", "unet,nope", "unet+", "../unet", "unet+3d"])
def test_parse_variants_rejects_unknown(spec):
    with pytest.raises(ValueError, match="unknown bundle variant"):
        bundles.parse_variants(spec, BUNDLE)


@pytest.mark.parametrize(
    "variant, name, target",
    [
        ("", "liver_ct_seg", "scripts.networks.AttentionUNetDS"),
        ("unet", "liver_ct_seg_unet", "scripts.networks.UNet"),
        ("dalunet", "liver_ct_seg_dalunet", "scripts.networks.DALUNet"),
        ("2d", "liver_ct_seg_2d", "scripts.networks.UNet"),
        ("2d+aunet", "liver_ct_seg_2d_aunet", "scripts.networks.AttentionUNet"),  # later overrides win
    ],
)
def test_prepare_bundle_merges_variant(tmp_path, variant, name, target):
    b = bundles.prepare_bundle(BUNDLE, tmp_path, variant)
    assert b.name == name and b.path == tmp_path / name
    for cfg in ("inference.json", "train.json"):
        c = json.loads((b.path / "configs" / cfg).read_text())
        assert c["network_def"]["_target_"] == target
    # the 2D override's nested ids land in the configs that have them, and only there
    inf = json.loads((b.path / "configs" / "inference.json").read_text())
    assert ("train" in inf) is False
    assert inf["spatial_dims"] == (2 if "2d" in variant else 3)
    # overlays and code are copied as they are
    assert (b.path / "configs" / "evaluate.json").read_bytes() == (BUNDLE / "configs" / "evaluate.json").read_bytes()
    assert (b.path / "scripts" / "networks" / "__init__.py").is_file()
    assert not list(b.path.rglob("__pycache__"))


def test_prepare_bundle_weights_rules(tmp_path):
    src = make_test_bundle(tmp_path / "src")
    weights = src / "models" / "model.pt"
    weights.write_bytes(b"v1")
    b = bundles.prepare_bundle(src, tmp_path / "rt")
    assert b.weights.read_bytes() == b"v1"
    # weights trained through the API (newer runtime file) are kept at the next start
    b.weights.write_bytes(b"trained")
    os.utime(b.weights, (time.time() + 10, time.time() + 10))
    bundles.prepare_bundle(src, tmp_path / "rt")
    assert b.weights.read_bytes() == b"trained"
    # newer shipped weights replace them
    weights.write_bytes(b"v2")
    os.utime(weights, (time.time() + 20, time.time() + 20))
    bundles.prepare_bundle(src, tmp_path / "rt")
    assert b.weights.read_bytes() == b"v2"
    # a variant reads models/<variant>/model.pt; without it, no runtime weights
    v = bundles.prepare_bundle(src, tmp_path / "rt", "unet")
    assert not v.weights.exists() and v.source_weights == src / "models" / "unet" / "model.pt"
    # the source is only read
    assert sorted(p.name for p in (src / "models").iterdir()) == ["model.pt"]


def test_prepare_bundle_is_idempotent(tmp_path):
    b = bundles.prepare_bundle(BUNDLE, tmp_path, "unet")
    files = {p: p.stat().st_mtime_ns for p in b.path.rglob("*") if p.is_file()}
    time.sleep(0.01)
    bundles.prepare_bundle(BUNDLE, tmp_path, "unet")
    assert {p: p.stat().st_mtime_ns for p in b.path.rglob("*") if p.is_file()} == files


def test_prepare_bundle_rejects_non_bundle(tmp_path):
    with pytest.raises(ValueError, match="not a MONAI bundle"):
        bundles.prepare_bundle(tmp_path, tmp_path / "rt")


# ---------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["case_001", "phantom-12", "a.b", "A1"])
def test_check_id_accepts(value):
    assert check_id(value) == value


@pytest.mark.parametrize("value", ["", "../x", "..", "a/b", "/etc/passwd", "a\\b", ".hidden", "a..b", "x" * 300, 5])
def test_check_id_rejects(value):
    with pytest.raises(BadRequest, match="invalid"):
        check_id(value)


def test_read_header_good(tmp_path):
    f = write_nifti(tmp_path / "ok.nii.gz", np.zeros((8, 9, 10), np.int16), np.diag([-2.0, -2.0, 3.0, 1.0]))
    shape, affine = read_header(str(f))
    assert shape == (8, 9, 10) and affine[0, 0] == -2.0


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("bad.nii.gz", b"garbage", "not a readable"),
        ("bad.nii", b"garbage", "not a readable"),
        ("bad.nrrd", b"garbage", "not a readable"),
        ("notes.txt", b"hello", "unsupported"),
        ("noext", b"hello", "unsupported"),
        ("slice.nii.gz", np.zeros((8, 8), np.int16), "3D"),
        ("vec.nii.gz", np.zeros((8, 8, 8, 3), np.int16), "3D"),
    ],
)
def test_read_header_bad(tmp_path, name, content, words):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_nifti(path, content, np.eye(4))
    with pytest.raises(BadRequest, match=words):
        read_header(str(path))


def test_truncated_gzip_rejected(tmp_path):
    noise = np.random.default_rng(0).integers(0, 99, (32, 32, 32)).astype(np.int16)  # does not compress away
    f = write_nifti(tmp_path / "ok.nii.gz", noise, np.eye(4))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadRequest, match="not a readable"):
        read_header(str(f))


# ---------------------------------------------------------------------------------------------------------------
# monailabel 0.8.5 + monai 1.6.1 traps
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_image_path_key_breaks_plain_bundle_task_but_not_ours(test_bundle, phantoms, tmp_path):
    """monai 1.6.1 Spacingd calls .update() on the str ``image_path``: plain BundleInferTask fails, ours works."""
    from lib.infer import LiverSegInferTask
    from monailabel.tasks.infer.bundle import BundleInferTask

    p = phantoms["case_lps"]
    image = str(write_nifti(tmp_path / "img.nii.gz", p.image, p.affine))
    plain = BundleInferTask(str(test_bundle), {})
    with pytest.raises(AttributeError, match="'str' object has no attribute 'update'"):
        plain({"image": image, "device": "cpu"})
    ours = LiverSegInferTask(str(test_bundle), {})
    out, params = ours({"image": image, "device": "cpu"})
    assert out.endswith(".nii.gz") and "volumetry" in params
    os.remove(out)


@pytest.mark.parametrize(
    "request_in, tracking",
    [
        ({}, "None"),
        ({"tracking": "mlflow"}, "None"),  # file store: rejected by monai 1.6.1
        ({"tracking": ["mlflow", "None"]}, "None"),
        ({"tracking": "mlflow", "tracking_uri": "sqlite:///runs.db"}, "mlflow"),
        ({"tracking": "None"}, "None"),
    ],
)
def test_train_tracking_off_unless_sqlite(monkeypatch, request_in, tracking):
    from lib.train import LiverSegTrainTask
    from monailabel.tasks.train.bundle import BundleTrainTask

    seen = {}
    monkeypatch.setattr(BundleTrainTask, "__call__", lambda self, request, datastore: seen.update(request) or {})
    task = LiverSegTrainTask(str(BUNDLE), {})
    task(dict(request_in, run_id=""), datastore=None)
    assert seen["tracking"] == tracking and seen["run_id"] == "run" and seen["multi_gpu"] is False


@pytest.mark.parametrize(
    "n, val_split, n_train, n_val", [(1, 0.2, 1, 1), (2, 0.2, 1, 1), (5, 0.2, 4, 1), (10, 0.3, 7, 3)]
)
def test_train_partition_always_validates(n, val_split, n_train, n_val):
    from lib.train import LiverSegTrainTask

    task = LiverSegTrainTask(str(BUNDLE), {})
    data = [{"image": f"i{i}", "label": f"l{i}"} for i in range(n)]
    train, val = task._partition_datalist(data, {"val_split": val_split})
    assert (len(train), len(val)) == (n_train, n_val)
    if n > 1:
        assert not {d["image"] for d in train} & {d["image"] for d in val}


@pytest.mark.parametrize("max_epochs, val_interval, expected", [(2, 5, 2), (1, 5, 1), (20, 5, 5), (3, 0, 1)])
def test_train_always_saves_weights(max_epochs, val_interval, expected):
    from lib.train import LiverSegTrainTask

    task = LiverSegTrainTask(str(BUNDLE), {})
    task._request = {"val_interval": val_interval}
    out = task._update_overrides({"train#trainer#max_epochs": max_epochs})
    assert out["val_interval"] == expected
    assert out["ckpt_dir"] == os.path.join(str(BUNDLE), "models") and out["num_workers"] == 0


@pytest.mark.parametrize(
    "pretrained, exists, expected", [(True, True, "weights"), (False, True, ""), (True, False, "")]
)
def test_train_fine_tunes_through_bundle_switch(tmp_path, pretrained, exists, expected):
    """The bundle's train#handlers already hold a (disabled) CheckpointLoader, so monailabel would not add its own:
    the app sets the bundle's ``pretrained_checkpoint`` switch instead."""
    from lib.train import LiverSegTrainTask

    task = LiverSegTrainTask(str(BUNDLE), {})
    weights = tmp_path / "model.pt"
    if exists:
        weights.write_bytes(b"x")
    handlers = task.bundle_config.get("train#handlers", [])
    n_handlers = len(handlers)
    task._load_checkpoint(str(weights), pretrained, handlers)
    task._request = {}
    out = task._update_overrides({"train#trainer#max_epochs": 1})
    assert out["pretrained_checkpoint"] == (str(weights) if expected else "")
    assert len(handlers) == n_handlers  # no second loader inserted


def test_train_without_labels_is_400():
    from lib.train import LiverSegTrainTask

    class Empty:
        def datalist(self):
            return []

    with pytest.raises(BadRequest, match="no labelled image"):
        LiverSegTrainTask(str(BUNDLE), {})._fetch_datalist({}, Empty())


# ---------------------------------------------------------------------------------------------------------------
# liverseg serve
# ---------------------------------------------------------------------------------------------------------------


def _studies(tmp_path: Path, names: list[str]) -> Path:
    d = tmp_path / "Dataset009_X" / "imagesTs"
    for n in names:
        write_nifti(d / n, np.zeros((8, 8, 8), np.int16), np.eye(4))
    (d / "notes.txt").write_text("not an image")
    return d


def test_prepare_datastore_copies_once_and_keeps_labels(tmp_path):
    studies = _studies(tmp_path, ["a_0000.nii.gz", "b_0000.nii.gz"])
    dest = tmp_path / "work" / "datastore" / serve.datastore_name(studies)
    assert dest.name == "Dataset009_X_imagesTs"
    ds, added = serve.prepare_datastore(studies, dest)
    assert added == ["a", "b"] and sorted(p.name for p in ds.iterdir()) == ["a.nii.gz", "b.nii.gz"]
    # a label saved by the server, and an edited image, are left alone at the next start; new images are added
    (ds / "labels" / "final").mkdir(parents=True)
    (ds / "labels" / "final" / "a.nii.gz").write_bytes(b"label")
    (ds / "a.nii.gz").write_bytes(b"kept")
    write_nifti(studies / "c_0000.nii.gz", np.zeros((8, 8, 8), np.int16), np.eye(4))
    _, added = serve.prepare_datastore(studies, dest)
    assert added == ["c"]
    assert (ds / "a.nii.gz").read_bytes() == b"kept" and (ds / "labels" / "final" / "a.nii.gz").is_file()


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p.mkdir() or p])
def test_prepare_datastore_errors(tmp_path, make):
    with pytest.raises(LiverSegError, match="--studies"):
        serve.prepare_datastore(make(tmp_path / "s"), tmp_path / "ds")


def test_prepare_app_refreshes_code_keeps_runtime(tmp_path):
    dest = serve.prepare_app(serve.DEFAULT_APP, tmp_path)
    assert (dest / "main.py").is_file() and (dest / "lib" / "infer.py").is_file()
    (dest / "model" / "x").mkdir(parents=True)
    (dest / "lib" / "stale.py").write_text("")
    serve.prepare_app(serve.DEFAULT_APP, tmp_path)
    assert (dest / "model" / "x").is_dir() and not (dest / "lib" / "stale.py").exists()
    with pytest.raises(LiverSegError, match="main.py"):
        serve.prepare_app(tmp_path / "nothing", tmp_path / "w2")


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.register_cli(parser.add_subparsers(dest="command"))
    argv = ["serve", "--studies", str(_studies(tmp_path, ["a_0000.nii.gz"])), "--workdir", str(tmp_path / "w")]
    for k, v in kw.items():
        argv += [f"--{k}", *([v] if isinstance(v, str) else v)]
    return parser.parse_args(argv)


def test_dry_run_command_and_env(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MONAI_LABEL_TRACKING_ENABLED", raising=False)
    monkeypatch.setenv("MONAI_LABEL_AUTO_UPDATE_SCORING", "true")  # a user's own setting wins
    args = _args(tmp_path, conf=["variants", "unet"])
    cmd, env, url = serve.prepare(args)
    assert cmd[1:4] == ["-m", "monailabel.main", "start_server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8000"
    assert cmd[cmd.index("--app") + 1] == str((tmp_path / "w" / "app").resolve())
    assert str(tmp_path / "w" / "datastore") in cmd[cmd.index("--studies") + 1]
    conf = [cmd[i + 1 : i + 3] for i, c in enumerate(cmd) if c == "--conf"]
    assert ["variants", "unet"] in conf and ["bundle", str(BUNDLE.resolve())] in conf
    assert url == "http://127.0.0.1:8000/"
    assert env["MONAI_LABEL_TRACKING_ENABLED"] == "false" and env["BUNDLE_DOWNLOAD_SRC"] == "github"
    assert env["MONAI_LABEL_AUTO_UPDATE_SCORING"] == "true"
    args.dry_run = True
    assert serve._run(args) == 0 and "start_server" in capsys.readouterr().out


@pytest.mark.parametrize("kw, words", [({"port": "0"}, "--port"), ({"bundle": "/nonexistent"}, "--bundle")])
def test_prepare_errors(tmp_path, kw, words):
    with pytest.raises(LiverSegError, match=words):
        serve.prepare(_args(tmp_path, **kw))


def test_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(LiverSegError, match="cannot listen"):
            serve.check_port("127.0.0.1", s.getsockname()[1])


def test_cli_has_serve():
    from liverseg.cli import build_parser

    args = build_parser().parse_args(["serve", "--port", "8123"])
    assert args.port == 8123 and args.host == "127.0.0.1" and args.func is serve._run


def test_app_folder_has_no_runtime_files():
    """The tests and ``liverseg serve`` run the app from a copy: apps/liver never gets model/, logs/ or bin/."""
    app = serve.DEFAULT_APP
    assert not any((app / d).exists() for d in ("model", "logs", "bin")), "runtime folders inside apps/liver"
