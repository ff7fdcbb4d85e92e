"""The API docs at / work offline (Swagger UI from the installed package), and /ohif/ in NIfTI mode explains how to
start the PACS (DICOMweb) mode instead of OHIF's "Data Source Connection Error"."""

from __future__ import annotations

import re

import pytest

from tests.apps import conftest  # noqa: F401  (puts the app's `lib` package on sys.path)

from lib import docs_page  # noqa: E402  isort: skip


def _app(studies: str, ohif_router: bool = False):
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="MONAILabel", docs_url=None)

    @app.get("/", include_in_schema=False)
    async def cdn_docs():  # stands for monailabel's page, which loads Swagger UI from a CDN
        return HTMLResponse('<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js">')

    if ohif_router:
        from monailabel.endpoints import ohif

        app.include_router(ohif.router)
    docs_page.install_docs(app, studies=studies)
    return app


@pytest.fixture()
def nifti_client():
    from fastapi.testclient import TestClient

    with TestClient(_app("/data/Dataset001_LiverPhantom/imagesTs", ohif_router=True)) as client:
        yield client


def test_docs_page_loads_everything_from_this_server(nifti_client):
    res = nifti_client.get("/")
    assert res.status_code == 200 and "swagger-ui" in res.text
    assert "cdn" not in res.text.lower()
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", res.text)
    assert urls and all(u.startswith("/") for u in urls), urls  # no other host
    for url in urls:
        asset = nifti_client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 500, url
    assert nifti_client.get("/liverseg-docs/swagger-ui-bundle.js").headers["content-type"].startswith(
        "application/javascript"
    )
    assert "openapi.json" in res.text and nifti_client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("name", ["index.html", "..%2Fswagger-ui-bundle.js", "swagger-ui.js.map", "x"])
def test_only_the_docs_assets_are_served(nifti_client, name):
    res = nifti_client.get(f"/liverseg-docs/{name}")
    assert res.status_code == 404


@pytest.mark.parametrize(
    "path", ["/ohif/", "/ohif", "/ohif/index.html", "/ohif/viewer", "/ohif/monai-label", "/ohif/segmentation"]
)
def test_ohif_in_nifti_mode_says_how_to_start_the_pacs_mode(nifti_client, path):
    res = nifti_client.get(path)
    assert res.status_code == 200 and docs_page.OHIF_GUIDE_TITLE in res.text
    assert "make serve STUDIES=http://127.0.0.1:8042/dicom-web" in res.text and "3D Slicer" in res.text
    assert "make serve-pacs" in res.text and "apt-get install orthanc orthanc-dicomweb" in res.text
    assert "imagesTs" in res.text and "/data/" not in res.text  # the folder's name, not the server's paths


def test_ohif_files_are_still_monailabels(nifti_client):
    res = nifti_client.get("/ohif/app-config.js")
    assert docs_page.OHIF_GUIDE_TITLE not in res.text


def test_ohif_in_dicomweb_mode_is_the_viewer():
    from fastapi.testclient import TestClient

    with TestClient(_app("http://127.0.0.1:8042/dicom-web", ohif_router=True)) as client:
        res = client.get("/ohif/")
    assert docs_page.OHIF_GUIDE_TITLE not in res.text
    assert res.status_code == 200 and "<html" in res.text.lower()  # monailabel's OHIF index.html


@pytest.mark.slow
def test_real_server_serves_offline_docs_and_the_ohif_guide(server):
    import requests

    page = requests.get(f"{server.url}/", headers=server.headers, timeout=60)
    assert page.status_code == 200 and f"{docs_page.ASSETS_PREFIX}/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower()
    js = requests.get(f"{server.url}{docs_page.ASSETS_PREFIX}/swagger-ui-bundle.js", timeout=60)
    assert js.status_code == 200 and len(js.content) > 100_000
    guide = requests.get(f"{server.url}/ohif/", headers=server.headers, timeout=60)  # the test server: NIfTI mode
    assert guide.status_code == 200 and docs_page.OHIF_GUIDE_TITLE in guide.text
