# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""Two pages a new user meets first, both served without the internet.

- ``GET /``: the API docs (Swagger UI). monailabel's page loads Swagger UI from a CDN, so offline it is blank; this
  one serves Swagger UI's files from the installed ``swagger-ui-bundle`` package under ``/liverseg-docs/``.
- ``GET /ohif/`` when the server runs on a folder of images (NIfTI mode): OHIF needs a DICOMweb server and showed
  "Data Source Connection Error"; instead a page says how to start the server in PACS (DICOMweb) mode, or to use
  3D Slicer, which works in both modes. In DICOMweb mode monailabel's OHIF is served as before.

:func:`install_docs` puts these routes in front of monailabel's.
"""

from __future__ import annotations

import html
import logging
import os
from typing import Any, Optional

logger = logging.getLogger(__name__)

ASSETS_PREFIX = "/liverseg-docs"
# the files the docs page loads (served from swagger_ui_bundle's folder; nothing else of it is reachable)
ASSETS = {
    "swagger-ui-bundle.js": "application/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
OHIF_GUIDE_TITLE = "OHIF needs a DICOMweb server"


def swagger_assets_dir() -> str:
    """The folder of Swagger UI's files in the installed ``swagger-ui-bundle`` package."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError as e:  # a dependency of the package (setup.cfg); say which
        raise RuntimeError("the API docs page needs swagger-ui-bundle: pip install swagger-ui-bundle") from e
    return str(swagger_ui_path)


def docs_html(openapi_url: str, title: str) -> str:
    """Swagger UI's page with its JavaScript and CSS from :data:`ASSETS_PREFIX` (same origin, no CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=f"{ASSETS_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PREFIX}/favicon-32x32.png",
    )
    body = page.body.decode("utf-8")
    # as monailabel's own page: the schemas section collapsed
    return body.replace("showExtensions: true,", "showExtensions: true, defaultModelsExpandDepth: -1,")


def is_dicomweb(studies: Optional[str]) -> bool:
    return bool(studies) and str(studies).startswith(("http://", "https://"))


def ohif_guide_html(studies: str) -> str:
    """The page shown at ``/ohif/`` in NIfTI mode: why OHIF cannot show this datastore and what to start instead."""
    folder = html.escape(os.path.basename(os.path.normpath(studies)) or studies)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{OHIF_GUIDE_TITLE}</title>
<style>body{{font-family:sans-serif;max-width:52em;margin:2em auto;line-height:1.5}}
pre{{background:#f4f4f4;padding:.6em;overflow-x:auto}}</style></head>
<body>
<h1>{OHIF_GUIDE_TITLE}</h1>
<p>This server runs on a folder of images (<code>{folder}</code>, NIfTI mode). The OHIF viewer reads studies only from
a DICOMweb server (a PACS such as Orthanc), so it has nothing to show here.</p>
<h2>Quickest: a local PACS with the sample study</h2>
<p>Stop this server (Ctrl-C) and run, in the repository:</p>
<pre>make serve-pacs</pre>
<p>It starts Orthanc (a DICOMweb server; install it first with
<code>sudo apt-get install orthanc orthanc-dicomweb</code>) with the sample DICOM study, starts this server on it,
and prints the OHIF address of the study.</p>
<h2>Your own DICOM: start the server in PACS (DICOMweb) mode</h2>
<ol>
<li>Install and start Orthanc with its DICOMweb plugin (Debian/Ubuntu:
<code>sudo apt-get install orthanc orthanc-dicomweb</code>), and upload your DICOM series to it
(Orthanc's web page at <a href="http://127.0.0.1:8042/">http://127.0.0.1:8042/</a>, or <code>storescu</code>).</li>
<li>Stop this server (Ctrl-C) and start it on the DICOMweb address:
<pre>make serve STUDIES=http://127.0.0.1:8042/dicom-web</pre></li>
<li>Open <a href="/ohif/">/ohif/</a> again: OHIF lists the studies, and the MONAI Label panel segments them; saved
labels go back to Orthanc as DICOM SEG.</li>
</ol>
<h2>Or use 3D Slicer, which works in this mode</h2>
<p>In 3D Slicer, open the MONAI Label module and set the server address to this server's address (the one you opened
this page on, without <code>/ohif/</code>). The images of the folder appear there.</p>
<p>The API and its documentation: <a href="/">/</a>. More in the repository's README (sections “3D Slicer” and
“Your own DICOM”).</p>
</body></html>
"""


def install_docs(fastapi_app: Any, api_prefix: str = "", studies: Optional[str] = None) -> int:
    """Put the offline docs page (``/`` and ``/liverseg-docs/*``) and, in NIfTI mode, the OHIF guide (``/ohif/``)
    in front of ``fastapi_app``'s routes; ``studies`` defaults to monailabel's setting. Returns the routes added."""
    from fastapi import APIRouter, Depends, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import RBAC, User

    assets = swagger_assets_dir()
    missing = [name for name in ASSETS if not os.path.isfile(os.path.join(assets, name))]
    if missing:
        raise RuntimeError(f"swagger-ui-bundle in {assets} lacks {', '.join(missing)}: reinstall swagger-ui-bundle")
    studies = settings.MONAI_LABEL_STUDIES if studies is None else studies
    page = docs_html(fastapi_app.openapi_url or f"{api_prefix}/openapi.json", f"{fastapi_app.title} - APIs")

    async def liverseg_docs():
        return HTMLResponse(page)

    async def liverseg_docs_asset(name: str):
        if name not in ASSETS:
            raise HTTPException(status_code=404, detail=f"no docs asset {name!r}; available: {', '.join(ASSETS)}")
        return FileResponse(
            os.path.join(assets, name), media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"}
        )

    router = APIRouter()
    router.add_api_route("/", liverseg_docs, methods=["GET"], include_in_schema=False)
    router.add_api_route(ASSETS_PREFIX + "/{name}", liverseg_docs_asset, methods=["GET"], include_in_schema=False)
    if not is_dicomweb(studies):
        guide = ohif_guide_html(str(studies or ""))

        async def liverseg_ohif_guide(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
            return HTMLResponse(guide, headers={"Cache-Control": "no-cache"})

        # the viewer's entry points; its other files (scripts, app-config.js) stay monailabel's
        for path in ("/ohif", "/ohif/", "/ohif/index.html", "/ohif/viewer", "/ohif/monai-label", "/ohif/segmentation"):
            router.add_api_route(api_prefix + path, liverseg_ohif_guide, methods=["GET"], include_in_schema=False)
    routes = fastapi_app.router.routes
    # monailabel's CDN docs page at "/" goes; ours comes first
    routes[:] = [r for r in routes if not (getattr(r, "path", None) == "/" and "GET" in getattr(r, "methods", ()))]
    before = len(routes)
    fastapi_app.include_router(router)
    added = routes[before:]
    del routes[before:]
    routes[0:0] = added
    logger.info(
        "API docs at / from swagger-ui-bundle (offline)%s",
        "" if is_dicomweb(studies) else "; /ohif/ explains how to start the PACS (DICOMweb) mode",
    )
    return len(added)
