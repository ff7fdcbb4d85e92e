"""Access control, archive extraction, input checks and off-loop work of the liver app (issue 16).

Each finding of the security review has a test here that fails on the app as it was (monailabel's own behaviour)
and passes now: unit tests of ``lib/security.py``, ``lib/validation.py`` and ``lib/workers.py`` on small FastAPI
apps, and end-to-end tests on a real server bound to all interfaces with a token.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import shutil
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from fastapi import FastAPI, Form
from lib import security, workers  # the app's lib (on sys.path through tests/apps/conftest.py)
from lib.validation import (
    BadRequest,
    check_nifti_data,
    check_params_json,
    check_train_params,
    read_header,
    safe_extract,
)
from starlette.testclient import TestClient

from liverseg.imageio import write_nifti
from tests.apps.conftest import Server

TOKEN = "test-token-0123456789abcdef"
ANNOTATOR_TOKEN = "annotator-token-0123456789"


# ----------------------------------------------------------------------------------------------------------------
# the access policy
# ----------------------------------------------------------------------------------------------------------------


def test_policy_loopback_default_needs_no_token():
    p = security.AccessPolicy.from_env({"LIVERSEG_HOST": "127.0.0.1", "LIVERSEG_PORT": "8000"}, [])
    assert not p.auth_required and not p.exposed
    assert {"127.0.0.1", "localhost", "::1"} <= p.allowed_hosts
    assert "http://127.0.0.1:8000" in p.allowed_origins and "http://localhost:8000" in p.allowed_origins
    assert not p.allow_model_upload and not p.allow_archives


def test_policy_host_from_command_line_and_monailabel_default():
    assert security.AccessPolicy.from_env({}, ["x", "--host", "127.0.0.1", "--port", "9000"]).port == 9000
    with pytest.raises(security.ConfigError, match="needs a token"):
        security.AccessPolicy.from_env({}, ["monailabel", "start_server"])  # monailabel binds 0.0.0.0 by default


@pytest.mark.parametrize(
    "env, words",
    [
        ({"LIVERSEG_HOST": "0.0.0.0"}, "needs a token"),
        ({"LIVERSEG_HOST": "0.0.0.0", "LIVERSEG_TOKEN": TOKEN, "LIVERSEG_AUTH": "off"}, "refused"),
        ({"LIVERSEG_HOST": "127.0.0.1", "LIVERSEG_TOKEN": "short"}, "too short"),
        ({"LIVERSEG_HOST": "127.0.0.1", "LIVERSEG_ALLOWED_ORIGINS": "*"}, "not an allowed origin"),
        ({"LIVERSEG_HOST": "127.0.0.1", "LIVERSEG_ALLOWED_ORIGINS": "javascript:alert(1)"}, "invalid allowed origin"),
        ({"LIVERSEG_HOST": "127.0.0.1", "LIVERSEG_AUTH": "maybe"}, "valid: auto"),
        ({"LIVERSEG_HOST": "127.0.0.1", "LIVERSEG_MAX_UPLOAD_MB": "lots"}, "not a number"),
    ],
)
def test_policy_refuses_unusable_settings(env, words):
    with pytest.raises(security.ConfigError, match=words):
        security.AccessPolicy.from_env(env, [])


def test_policy_exposed_with_token_and_cors_origins_in_either_form():
    env = {
        "LIVERSEG_HOST": "0.0.0.0",
        "LIVERSEG_TOKEN": TOKEN,
        "MONAI_LABEL_CORS_ORIGINS": "http://viewer.example:3000, https://ohif.example/",  # crashed monailabel
    }
    p = security.AccessPolicy.from_env(env, [])
    assert p.auth_required and p.exposed
    assert {"http://viewer.example:3000", "https://ohif.example"} <= p.allowed_origins
    env["MONAI_LABEL_CORS_ORIGINS"] = '["http://viewer.example:3000"]'
    assert "http://viewer.example:3000" in security.AccessPolicy.from_env(env, []).allowed_origins
    assert p.principal(TOKEN).is_admin and p.principal("wrong-token-0123456789") is None


def test_tokens_file_roles(tmp_path):
    f = tmp_path / "tokens.json"
    users = [{"user": "ann", "token_sha256": security.token_hash(ANNOTATOR_TOKEN), "roles": ["annotator"]}]
    f.write_text(json.dumps({"users": users}))
    p = security.AccessPolicy.from_env({"LIVERSEG_HOST": "127.0.0.1", "LIVERSEG_TOKENS_FILE": str(f)}, [])
    assert p.auth_required  # tokens configured: required on loopback too
    assert p.principal(ANNOTATOR_TOKEN).user == "ann" and not p.principal(ANNOTATOR_TOKEN).is_admin
    f.write_text(json.dumps({"users": [{"user": "x", "token_sha256": "abc"}]}))
    with pytest.raises(security.ConfigError, match="64 hex"):
        security.load_tokens({"LIVERSEG_TOKENS_FILE": str(f)})


def test_serve_makes_a_token_when_exposed(tmp_path):
    from liverseg.errors import LiverSegError
    from liverseg.serve import configure_access

    env = {"MONAI_LABEL_CORS_ORIGINS": "http://viewer.example:3000"}
    configure_access(env, "0.0.0.0", 8000, tmp_path)
    token = (tmp_path / "token").read_text().strip()
    assert len(token) >= 32 and env["LIVERSEG_TOKEN"] == token
    assert (tmp_path / "token").stat().st_mode & 0o077 == 0  # readable by the owner only
    assert "MONAI_LABEL_CORS_ORIGINS" not in env  # monailabel cannot parse the comma form
    assert env["LIVERSEG_ALLOWED_ORIGINS"] == "http://viewer.example:3000"
    again = {}
    configure_access(again, "0.0.0.0", 8000, tmp_path)
    assert again["LIVERSEG_TOKEN"] == token  # kept across restarts
    loopback = {}
    configure_access(loopback, "127.0.0.1", 8000, tmp_path / "other")
    assert "LIVERSEG_TOKEN" not in loopback
    with pytest.raises(LiverSegError, match="not an allowed origin"):
        configure_access({"LIVERSEG_ALLOWED_ORIGINS": "*"}, "127.0.0.1", 8000, tmp_path)


@pytest.mark.parametrize(
    "value, host",
    [("127.0.0.1:8000", "127.0.0.1"), ("[::1]:8000", "::1"), ("LocalHost", "localhost"), ("evil.com", "evil.com"),
     ("a@b", ""), ("x:y", ""), ("", "")],
)  # fmt: skip
def test_parse_host_header(value, host):
    assert security.parse_host_header(value) == host


# ----------------------------------------------------------------------------------------------------------------
# the middleware on a small app
# ----------------------------------------------------------------------------------------------------------------


def _app(policy: security.AccessPolicy) -> TestClient:
    app = FastAPI()
    hits = []

    @app.post("/train/{model}")
    async def train(model: str):
        hits.append(model)
        return {"started": model}

    @app.get("/info/")
    async def info():
        return {"ok": True}

    @app.get("/ohif/index.html")
    async def ohif():
        return {"viewer": True}

    @app.put("/model/{model}")
    async def put_model(model: str):
        hits.append("model")
        return {}

    @app.delete("/datastore/image")
    async def delete_image(id: str):
        hits.append("delete")
        return {}

    @app.post("/echo")
    async def echo(params: str = Form("{}")):
        return {"n": len(params)}

    security.install(app, policy)
    client = TestClient(app, base_url="http://127.0.0.1:8000")
    client.hits = hits
    return client


@pytest.fixture
def loopback():
    return _app(security.AccessPolicy.from_env({"LIVERSEG_HOST": "127.0.0.1", "LIVERSEG_PORT": "8000"}, []))


def test_cross_site_simple_post_cannot_start_training(loopback):
    # what <form method=post enctype=text/plain action=http://127.0.0.1:8000/train/x> on any web page sends
    r = loopback.post(
        "/train/liver", content=b"x=1", headers={"Origin": "https://evil.example", "Content-Type": "text/plain"}
    )
    assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
    assert "access-control-allow-origin" not in r.headers
    r = loopback.post("/train/liver", headers={"Sec-Fetch-Site": "cross-site"})  # no Origin, marked cross-site
    assert r.status_code == 403
    assert loopback.hits == []


def test_foreign_origin_gets_no_cors_and_own_origin_does(loopback):
    r = loopback.get("/info/", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    r = loopback.options(
        "/train/liver", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    r = loopback.get("/info/", headers={"Origin": "http://127.0.0.1:8000"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://127.0.0.1:8000"
    r = loopback.options(
        "/train/liver", headers={"Origin": "http://localhost:8000", "Access-Control-Request-Method": "POST"}
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:8000"
    r = loopback.post("/train/liver")  # no Origin: curl, 3D Slicer, Python clients
    assert r.status_code == 200 and loopback.hits == ["liver"]


def test_rebinding_host_refused(loopback):
    r = loopback.get("/info/", headers={"Host": "attacker.example:8000"})
    assert r.status_code == 400 and "Host" in r.json()["detail"]
    r = loopback.post("/train/liver", headers={"Host": "attacker.example:8000"})
    assert r.status_code == 400 and loopback.hits == []


def test_oversized_body_refused_before_reading(loopback):
    small = _app(security.AccessPolicy(max_body_bytes=1000))
    r = small.post("/echo", data={"params": "x" * 5000})
    assert r.status_code == 413
    r = small.post("/echo", data={"params": "x" * 100})
    assert r.status_code == 200


def test_dangerous_operations_off_by_default(loopback):
    r = loopback.put("/model/liver_ct_seg")
    assert r.status_code == 403 and "LIVERSEG_ALLOW_MODEL_UPLOAD" in r.json()["detail"]
    assert security.dangerous_operation("PUT", "/session/", "uncompress=true") == "LIVERSEG_ALLOW_ARCHIVES"
    assert security.dangerous_operation("PUT", "/session/", "uncompress=false") is None
    assert loopback.hits == []


def test_token_required_when_exposed():
    env = {"LIVERSEG_HOST": "0.0.0.0", "LIVERSEG_PORT": "8000", "LIVERSEG_TOKEN": TOKEN}
    c = _app(security.AccessPolicy.from_env(env, []))
    assert c.post("/train/liver").status_code == 401
    assert c.delete("/datastore/image?id=x").status_code == 401
    assert c.get("/info/").status_code == 401
    assert c.post("/train/liver", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    assert c.hits == []
    assert c.get("/ohif/index.html").status_code == 200  # the viewer's static files are public
    ok = c.post("/train/liver", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and c.hits == ["liver"]
    # the login flow of monailabel's client (3D Slicer): user + token as password -> bearer token
    assert c.get("/auth/").json()["enabled"] is True
    assert c.post("/auth/token", data={"username": "admin", "password": "nope-nope-nope-nope"}).status_code == 401
    r = c.post("/auth/token", data={"username": "admin", "password": TOKEN})
    assert r.status_code == 200 and r.json()["access_token"] == TOKEN
    assert c.get("/auth/token/valid", headers={"Authorization": f"Bearer {TOKEN}"}).json()["username"] == "admin"
    # the browser: a login page, then the SameSite cookie opens the API to the viewer
    c.cookies.clear()
    assert c.get("/auth/login").status_code == 200
    assert c.post("/auth/login", data={"username": "admin", "password": "nope-nope-nope-nope"}).status_code == 401
    r = c.post("/auth/login", data={"username": "admin", "password": TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and "samesite=strict" in r.headers["set-cookie"].lower()
    assert c.get("/info/").status_code == 200  # with the cookie


def test_admin_only_operations(tmp_path):
    f = tmp_path / "tokens.json"
    users = [{"user": "ann", "token_sha256": security.token_hash(ANNOTATOR_TOKEN), "roles": ["annotator"]}]
    f.write_text(json.dumps({"users": users}))
    env = {"LIVERSEG_HOST": "127.0.0.1", "LIVERSEG_TOKENS_FILE": str(f), "LIVERSEG_ALLOW_MODEL_UPLOAD": "1"}
    c = _app(security.AccessPolicy.from_env(env, []))
    ann = {"Authorization": f"Bearer {ANNOTATOR_TOKEN}"}
    assert c.post("/train/liver", headers=ann).status_code == 200
    assert c.delete("/datastore/image?id=x", headers=ann).status_code == 403
    assert c.put("/model/liver", headers=ann).status_code == 403
    assert c.hits == ["liver"]


# ----------------------------------------------------------------------------------------------------------------
# archives
# ----------------------------------------------------------------------------------------------------------------


def _tar(path: Path, members: list) -> Path:
    with tarfile.open(path, "w") as t:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                t.addfile(info, io.BytesIO(payload))
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                t.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, payload
                t.addfile(info)
    return path


@pytest.mark.parametrize(
    "members, words",
    [
        ([("ok.nii.gz", "file", b"x"), ("../../escaped.pth", "file", b"import os")], "'..'"),
        ([("/tmp/escaped_abs.pth", "file", b"x")], "absolute"),
        ([("link", "symlink", "/etc/passwd")], "link"),
        ([("ok", "file", b"x"), ("hard", "hardlink", "../../etc/passwd")], "link"),
    ],
)
def test_exploit_archives_refused_before_writing(tmp_path, members, words):
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = _tar(tmp_path / "a.tar", members)
    with pytest.raises(BadRequest, match=words):
        safe_extract(str(archive), str(dest))
    assert list(dest.rglob("*")) == []  # nothing written, not even the good members
    assert not list(tmp_path.parent.rglob("escaped*"))


def test_zip_slip_refused_and_good_archives_extract(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as z:
        z.writestr("../evil.txt", "x")
    with pytest.raises(BadRequest, match="'..'"):
        safe_extract(str(tmp_path / "bad.zip"), str(dest))
    with zipfile.ZipFile(tmp_path / "good.zip", "w") as z:
        z.writestr("series/1.dcm", "a")
        z.writestr("series/2.dcm", "b")
    assert safe_extract(str(tmp_path / "good.zip"), str(dest)) == 2
    assert (dest / "series" / "2.dcm").read_text() == "b"
    _tar(tmp_path / "good.tar", [("d/x.nii.gz", "file", b"abc")])
    assert safe_extract(str(tmp_path / "good.tar"), str(dest)) == 1
    with pytest.raises(BadRequest, match="members"):
        safe_extract(str(tmp_path / "good.zip"), str(dest), max_members=1)
    with pytest.raises(BadRequest, match="bytes"):
        safe_extract(str(tmp_path / "good.zip"), str(dest), max_bytes=1)


# ----------------------------------------------------------------------------------------------------------------
# uploaded images and request parameters
# ----------------------------------------------------------------------------------------------------------------


def _nifti_bytes(arr: np.ndarray, tmp_path: Path, name: str) -> Path:
    return write_nifti(tmp_path / name, arr, np.diag([0.8, 0.8, 2.0, 1.0]))


def test_gzip_bomb_is_stopped_early(tmp_path):
    # a header declaring 16^3 int16 voxels followed by 400 MB of zeros that compress to ~400 kB
    good = _nifti_bytes(np.zeros((16, 16, 16), np.int16), tmp_path, "small.nii")
    raw = good.read_bytes()
    bomb = tmp_path / "bomb.nii.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write(raw)
        zeros = bytes(1 << 20)
        for _ in range(400):
            f.write(zeros)
    assert bomb.stat().st_size < 2_000_000
    t0 = time.perf_counter()
    with pytest.raises(BadRequest, match="more than"):
        read_header(str(bomb), "image")
    assert time.perf_counter() - t0 < 20  # stopped after ~1 MB of slack, not after 400 MB


def test_huge_header_truncated_and_nan_images_refused(tmp_path):
    img = _nifti_bytes(np.zeros((8, 8, 8), np.float32), tmp_path, "ok.nii.gz")
    read_header(str(img), "image")  # a good one passes
    import nibabel as nib

    huge = nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4))
    huge.header.set_data_shape((4096, 4096, 4096))
    raw = huge.header.binaryblock + b"\0" * 4 + bytes(1024)
    (tmp_path / "huge.nii").write_bytes(raw)
    with pytest.raises(BadRequest, match="voxels"):
        read_header(str(tmp_path / "huge.nii"), "image")
    data = _nifti_bytes(np.arange(4096, dtype=np.int16).reshape(16, 16, 16), tmp_path, "t.nii").read_bytes()
    (tmp_path / "trunc.nii").write_bytes(data[:-100])
    with pytest.raises(BadRequest, match="truncated"):
        read_header(str(tmp_path / "trunc.nii"), "image")
    arr = np.zeros((16, 16, 16), np.float32)
    arr[15, 15, 15] = np.nan  # the last voxel: found at the end of the stream
    nan = _nifti_bytes(arr, tmp_path, "nan.nii.gz")
    with pytest.raises(BadRequest, match="NaN"):
        read_header(str(nan), "image")
    with pytest.raises(BadRequest, match="NaN"):
        check_nifti_data(str(nan), nib.load(str(nan)))


@pytest.mark.parametrize(
    "text, words",
    [("[1, 2]", "JSON object"), ("3", "JSON object"), ("{", "not valid JSON"), ("[" * 5000 + "]" * 5000, "deeper"),
     ('{"a": "' + "x" * (2 << 20) + '"}', "larger")],
)  # fmt: skip
def test_bad_params_json(text, words):
    with pytest.raises(BadRequest, match=words):
        check_params_json(text)


def test_nan_label_is_400_not_500(tmp_path):
    from lib.validation import check_label_file

    image = write_nifti(tmp_path / "img.nii.gz", np.zeros((8, 8, 8), np.int16), np.eye(4))
    label = np.zeros((8, 8, 8), np.float32)
    label[2, 2, 2] = np.nan
    f = write_nifti(tmp_path / "nan_label.nii.gz", label, np.eye(4))
    with pytest.raises(BadRequest, match="NaN"):  # was ValueError (int(nan)): 500
        check_label_file(str(f), str(image), {0, 1, 2})


@pytest.mark.parametrize(
    "path, code", [("/batch/infer/unknown", 404), ("/batch/infer/liver_ct_seg", 200), ("/infer/unknown", 404)]
)
def test_unknown_batch_model_is_404(path, code):
    from lib.server import NameCheckMiddleware

    app = FastAPI()

    @app.post("/batch/infer/{model}")
    async def batch(model: str):
        return {"model": model}

    @app.post("/infer/{model}")
    async def infer(model: str):
        return {"model": model}

    app.add_middleware(NameCheckMiddleware, names=lambda: {"infer": ["liver_ct_seg"]})
    r = TestClient(app).post(path)
    assert r.status_code == code, r.text  # /batch/infer/unknown answered 200


def test_params_json_good():
    assert check_params_json('{"a": [1, {"b": "[[[["}]}') == {"a": [1, {"b": "[[[["}]}
    assert check_params_json("") == {}


@pytest.mark.parametrize(
    "params, words",
    [
        ({"max_epochs": 1e9}, "max_epochs"),
        ({"max_epochs": "10"}, "expected int"),
        ({"model_filename": "/etc/passwd"}, "no path"),
        ({"model_filename": "../model.pt"}, "no path"),
        ({"run_id": "../../x"}, "letters"),
        ({"learning_rate": -1}, "learning_rate"),
        ({"pretrained": "yes"}, "true or false"),
        ({"device": "cuda; rm -rf /"}, "cpu, cuda"),
        ({"bogus": 1}, "unknown training parameter"),
    ],
)
def test_bad_training_parameters(params, words):
    with pytest.raises(BadRequest, match=words):
        check_train_params(params)


def test_good_training_parameters():
    good = {"max_epochs": 5, "val_split": 0.2, "model_filename": ["model.pt"], "device": "cuda:0", "run_id": "",
            "tracking": ["None", "mlflow"], "pretrained": True, "learning_rate": 1e-3,
            "client_id": "slicer"}  # fmt: skip
    assert check_train_params(good) == good


# ----------------------------------------------------------------------------------------------------------------
# long work off the event loop
# ----------------------------------------------------------------------------------------------------------------


def test_gate_refuses_beyond_queue():
    gate = workers.Gate(running=1, waiting=1)
    started, release = threading.Event(), threading.Event()

    def hold():
        with gate:
            started.set()
            release.wait(10)

    def wait_in_queue():
        with gate:
            pass

    t1 = threading.Thread(target=hold)
    t1.start()
    started.wait(5)
    t2 = threading.Thread(target=wait_in_queue)
    t2.start()
    deadline = time.time() + 5
    while gate.queued < 1 and time.time() < deadline:
        time.sleep(0.01)
    with pytest.raises(workers.Busy):
        with gate:
            pass
    release.set()
    t1.join(5)
    t2.join(5)
    with gate:  # free again
        pass


def test_slow_endpoint_does_not_block_quick_ones():
    app = FastAPI()

    async def slow_infer(model: str, image: str = ""):
        time.sleep(1.5)  # monailabel's endpoints block like this (inference inside an async def)
        return {"model": model}

    async def info():
        return {"ok": True}

    for f in (slow_infer, info):
        f.__module__ = "monailabel.endpoints.fake"
    from fastapi import APIRouter

    router = APIRouter(prefix="/infer")  # included as monailabel includes its routers
    router.add_api_route("/{model}", slow_infer, methods=["POST"])
    app.include_router(router)
    app.add_api_route("/info/", info, methods=["GET"])
    assert workers.offload_endpoints(app, gate=workers.Gate(1, 4)) == 2

    async def scenario():
        import httpx

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            slow = asyncio.create_task(c.post("/infer/m?image=x"))
            await asyncio.sleep(0.2)
            t0 = time.perf_counter()
            r = await c.get("/info/")
            quick = time.perf_counter() - t0
            assert (await slow).json() == {"model": "m"}
            return r.status_code, quick

    status, quick = asyncio.run(scenario())
    assert status == 200 and quick < 1.0, quick  # before: /info/ waited for the inference (1.3 s here)


def test_offloaded_endpoint_checks_params_and_input():
    app = FastAPI()

    async def infer(model: str, image: str = "", params: str = Form("{}")):
        return {"ok": model}

    infer.__module__ = "monailabel.endpoints.fake"
    app.add_api_route("/infer/{model}", infer, methods=["POST"])
    assert workers.offload_endpoints(app, gate=workers.Gate(1, 1)) == 1

    @app.exception_handler(BadRequest)
    async def bad(request, exc):
        from fastapi.responses import JSONResponse

        return JSONResponse({"detail": exc.msg}, status_code=400)

    async def logs(lines: int = 300):
        return {"lines": lines}

    logs.__module__ = "monailabel.endpoints.fake"
    app.add_api_route("/logs/", logs, methods=["GET"])
    assert workers.offload_endpoints(app, gate=workers.Gate(1, 1)) == 1
    c = TestClient(app)
    assert c.get("/logs/?lines=65427987019531203714693988352").status_code in (400, 422)  # was OverflowError
    assert c.get("/logs/?lines=2000000").status_code == 400
    assert c.get("/logs/?lines=10").json() == {"lines": 10}
    assert c.post("/infer/m").status_code == 400  # no image: monailabel answered 500
    assert c.post("/infer/m?image=x", data={"params": "[1]"}).status_code == 400
    assert c.post("/infer/m?image=x", data={"params": '{"a": 1}'}).json() == {"ok": "m"}


def test_openapi_schema_builds_on_the_served_app(monkeypatch):
    """Rebuilt and added routes keep a valid OpenAPI schema (API docs, Schemathesis and clients read it)."""
    from monailabel.app import app as monailabel_app

    monkeypatch.setenv("LIVERSEG_HOST", "127.0.0.1")
    from lib import server as app_server

    app_server.install_on(monailabel_app, lambda: {})
    paths = monailabel_app.openapi()["paths"]
    assert "/infer/{model}" in paths and "/datastore/label" in paths and "/auth/token" in paths
    assert not [p for p in paths if p.startswith("/infer/wsi")]  # pathology routes answered 500 on CT
    assert workers.offload_endpoints(FastAPI()) == 0
    threaded = [
        (m, r.path)
        for router in workers._route_lists(monailabel_app.router)
        for r in router.routes
        if getattr(r, "endpoint", None) is not None and r.endpoint.__module__ == "lib.workers"
        for m in r.methods
    ]
    assert ("POST", "/infer/{model}") in threaded and ("PUT", "/datastore/label") in threaded
    client = TestClient(monailabel_app, base_url="http://127.0.0.1:8000")
    if not shutil.which("nvidia-smi"):
        r = client.get("/logs/gpu")
        assert r.status_code == 404 and "nvidia-smi" in r.json()["detail"]


def test_datastore_reads_of_missing_things_are_4xx(tmp_path):
    from lib.datastore import LiverDatastore
    from lib.validation import NotFound

    write_nifti(tmp_path / "img.nii.gz", np.zeros((8, 8, 8), np.int16), np.eye(4))
    ds = LiverDatastore(str(tmp_path), extensions=("*.nii.gz",), auto_reload=False)
    with pytest.raises(NotFound, match="nothing to put"):
        ds.get_dataset_archive(None)  # monailabel: AssertionError, 500
    with pytest.raises(NotFound, match="no label"):
        ds.update_label_info("img", "final", {"a": 1})
    with pytest.raises(BadRequest, match="invalid label id"):
        ds.update_label_info("../img", "final", {})


# ----------------------------------------------------------------------------------------------------------------
# a real server bound to all interfaces, with a token and archives turned on
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exposed(tmp_path_factory, test_bundle, studies):
    """A server bound to all interfaces (``make serve HOST=0.0.0.0``) with an admin token and archives turned on."""
    srv = Server(studies, tmp_path_factory.mktemp("exposed"), test_bundle)
    srv.host = "0.0.0.0"
    srv.tmp = srv.workdir / "tmp"  # the server's temporary folder, to see what it leaves there
    srv.tmp.mkdir(parents=True)
    srv.env = {"LIVERSEG_TOKEN": TOKEN, "LIVERSEG_ALLOW_ARCHIVES": "1", "TMPDIR": str(srv.tmp)}
    srv.headers = {"Authorization": f"Bearer {TOKEN}"}
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.slow
def test_exposed_server_refuses_unauthenticated_mutations(exposed):
    url = exposed.url
    calls = [("DELETE", "/datastore/image?id=case_ras"), ("PUT", "/model/liver_ct_seg"),
             ("POST", "/train/liver_ct_seg"), ("GET", "/datastore/dataset"), ("GET", "/info/")]  # fmt: skip
    for method, path in calls:
        r = requests.request(method, url + path)
        assert r.status_code == 401, (method, path, r.status_code)
    assert requests.get(url + "/info/", headers=exposed.headers).status_code == 200
    r = requests.delete(url + "/datastore/image?id=case_ras", headers={**exposed.headers, "Host": "evil.example"})
    assert r.status_code == 400
    ds = requests.get(url + "/datastore/?output=all", headers=exposed.headers).json()
    assert "case_ras" in ds["objects"]


@pytest.mark.slow
def test_exposed_server_exploit_tar_writes_nothing_outside(exposed, tmp_path):
    target = exposed.workdir.parent / "escaped_by_tar.pth"
    archive = _tar(tmp_path / "exploit.tar", [("ok.nii.gz", "file", b"x"), (f"../../../{target.name}", "file", b"x")])
    with open(archive, "rb") as fh:
        r = requests.put(
            exposed.url + "/session/?uncompress=true", files={"files": ("exploit.tar", fh)}, headers=exposed.headers
        )
    assert r.status_code == 400 and "refused" in r.json()["detail"], r.text
    assert not list(exposed.workdir.parent.rglob("escaped_by_tar*"))
    assert not list(Path("/tmp").glob("escaped_by_tar*"))


@pytest.mark.slow
def test_exposed_server_cross_origin_post_refused(exposed):
    r = requests.post(
        exposed.url + "/train/liver_ct_seg",
        data="x=1",
        headers={**exposed.headers, "Origin": "https://evil.example", "Content-Type": "text/plain"},
    )
    assert r.status_code == 403


@pytest.mark.slow
def test_exposed_server_bad_uploads_stored_nowhere(exposed, tmp_path):
    """Bad images get a 400 with the reason, are not stored, and leave no temporary file behind."""
    noise = np.random.default_rng(0).integers(0, 99, (32, 32, 16)).astype(np.int16)
    data = write_nifti(tmp_path / "ok.nii.gz", noise, np.eye(4)).read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    nan = np.zeros((32, 32, 16), np.float32)
    nan[3, 3, 3] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", nan, np.eye(4))
    bomb = tmp_path / "bomb.nii.gz"
    with gzip.open(bomb, "wb") as f:
        f.write(write_nifti(tmp_path / "tiny.nii", np.zeros((8, 8, 8), np.int16), np.eye(4)).read_bytes())
        f.write(bytes(64 << 20))
    before = set(exposed.tmp.rglob("*"))
    for name in ("truncated.nii.gz", "nan.nii.gz", "bomb.nii.gz"):
        with open(tmp_path / name, "rb") as fh:
            r = requests.post(
                f"{exposed.url}/infer/liver_ct_seg?output=json", files={"file": (name, fh)}, headers=exposed.headers
            )
        assert r.status_code == 400, (name, r.status_code, r.text)
        with open(tmp_path / name, "rb") as fh:
            r = requests.put(
                f"{exposed.url}/datastore/image?image=bad_upload", files={"file": (name, fh)}, headers=exposed.headers
            )
        assert r.status_code == 400, (name, r.status_code, r.text)
    time.sleep(1)
    left = [p for p in set(exposed.tmp.rglob("*")) - before if p.is_file()]
    assert left == [], left
    objects = requests.get(exposed.url + "/datastore/?output=all", headers=exposed.headers).json()["objects"]
    assert "bad_upload" not in objects


@pytest.mark.slow
def test_trainers_advertised_config_passes_the_training_schema(exposed):
    """What 3D Slicer sends back (the trainer's config from /info/, plus the client id) is accepted."""
    info = requests.get(exposed.url + "/info/", headers=exposed.headers).json()
    for name, trainer in info["trainers"].items():
        params = dict(trainer["config"], client_id="slicer", model=name)
        assert check_train_params(params) == params


@pytest.mark.slow
def test_exposed_server_session_of_several_files(exposed, tmp_path):
    """A session made of several files is a folder: downloading it as an image is a 400, not a 500 (Schemathesis)."""
    files = [("files", (f"part{i}.dcm", b"x" * 10)) for i in range(2)]
    r = requests.put(exposed.url + "/session/", files=files, headers=exposed.headers)
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    r = requests.get(f"{exposed.url}/session/{sid}?image=true", headers=exposed.headers)
    assert r.status_code == 400 and "folder" in r.json()["detail"]
    assert requests.get(f"{exposed.url}/session/{sid}", headers=exposed.headers).status_code == 200
    assert requests.get(f"{exposed.url}/session/a..b", headers=exposed.headers).status_code == 400  # checked id
