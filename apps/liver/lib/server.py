"""Additions to the running monailabel FastAPI server: 4xx answers to bad requests, a query-forwarding DICOMweb proxy.

monailabel 0.8.5 registers no exception handler: every ``MONAILabelException`` (unknown model, bad input) becomes a
500, and ``POST /train/<unknown>`` even starts a background process that fails. :func:`install` adds to the server:

- exception handlers: :class:`lib.validation.BadRequest` and other ``INVALID_INPUT`` errors -> 400,
  :class:`lib.validation.NotFound`, ``ImageNotFoundException``, ``LabelNotFoundException`` -> 404, a malformed
  ``params`` JSON -> 400; the body is ``{"detail": "<message>"}`` like FastAPI's own errors;
- a small ASGI middleware answering 404 to ``POST /infer|train|activelearning|scoring/<name>`` when ``<name>`` is
  not one of the app's models / trainers / strategies / scoring methods, before monailabel does anything;
- a DICOMweb proxy (``/proxy/dicom/{qido,wado,stow}/<path>``, what OHIF reads the store through) placed before
  monailabel's own, which drops the query string: OHIF's ``includefield``, study-list search filters and paging never
  reached the DICOMweb server. This one forwards the query, the ``Accept`` / ``Content-Type`` headers and the body
  (``POST``: STOW-RS uploads, as monailabel's proxy allows; a SEG that OHIF uploads is coded by its segment names on
  the way, ``lib.ohif.recode_stow``), streams the answer back with its status code, and reaches
  only the configured ``--studies`` DICOMweb URL (paths with ``.`` / ``..`` segments are refused with 400).

The app is created inside the server's lifespan start-up, after Starlette has built its middleware stack, so
:func:`install` resets ``middleware_stack`` to have it rebuilt on the next request (no request is served before the
lifespan start-up completes).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import quote

import requests
from fastapi import Depends, Request
from lib import docs_page, model_store, ohif, security, workers
from lib.validation import BadRequest, InsufficientStorage, NotFound
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)

logger = logging.getLogger(__name__)

PROXY_OPS = ("wado", "qido", "stow", "")  # /proxy/dicom/<op>/<path>; "" = /proxy/dicom/<path> (no prefix)
FORWARDED_REQUEST_HEADERS = ("accept", "content-type")
HOP_BY_HOP_HEADERS = frozenset(
    ["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
     "transfer-encoding", "upgrade"]
)  # fmt: skip
PROXY_CHUNK = 256 * 1024
PROXY_READ_TIMEOUT = 300.0


def _status_of(exc: Exception) -> int:
    if isinstance(exc, (NotFound, ImageNotFoundException, LabelNotFoundException)):
        return 404
    if isinstance(exc, BadRequest):
        return 400
    if isinstance(exc, InsufficientStorage):
        return 507
    if isinstance(exc, MONAILabelException) and exc.error == MONAILabelError.INVALID_INPUT:
        return 400
    if isinstance(exc, json.JSONDecodeError):
        return 400
    return 500


class NameCheckMiddleware:
    """404 for ``POST /<kind>/<name>`` with an unknown ``name`` (see the module docstring)."""

    def __init__(self, app: Any, names: Callable[[], Dict[str, list]], prefix: str = ""):
        self.app = app
        self.names = names
        self.prefix = prefix.rstrip("/")

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "http" and scope.get("method") == "POST":
            path = scope.get("path", "")
            if self.prefix and path.startswith(self.prefix):
                path = path[len(self.prefix) :]
            parts = [p for p in path.split("/") if p]
            if parts[:2] == ["batch", "infer"]:  # /batch/infer/<model>
                parts = ["infer", *parts[2:]]
            if len(parts) == 2:
                known = self.names().get(parts[0])
                if known is not None and parts[1] not in known:
                    from starlette.responses import JSONResponse

                    what = {"infer": "model", "train": "trainer", "activelearning": "strategy", "scoring": "method"}
                    msg = f"unknown {what[parts[0]]} {parts[1]!r}; available: {', '.join(sorted(known)) or '(none)'}"
                    await JSONResponse({"detail": msg}, status_code=404)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def proxy_url(studies: str, op: str, path: str, prefixes: Optional[Dict[str, Optional[str]]] = None) -> str:
    """The DICOMweb URL that ``/proxy/dicom/<op>/<path>`` stands for (without the query string).

    ``studies`` is the server's ``--studies`` (the DICOMweb base URL), ``prefixes`` the optional ``qido`` / ``wado`` /
    ``stow`` URL prefixes (``MONAI_LABEL_{QIDO,WADO,STOW}_PREFIX``); as in monailabel's proxy, a ``qido`` path ending
    in ``metadata`` uses the ``wado`` prefix. The path is percent-encoded again, so the result always lies under the
    base URL.

    Raises:
        NotFound: ``studies`` is not a DICOMweb URL (a local studies folder: there is nothing to proxy).
        BadRequest: ``op`` is unknown, or ``path`` is absolute or has ``.`` / ``..`` segments, backslashes or control
            characters.
    """
    base = (studies or "").strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise NotFound(
            "no DICOMweb store to proxy: the server was started with a local studies folder; OHIF needs "
            "--studies http://<host>:<port>/dicom-web"
        )
    if op not in PROXY_OPS:
        raise BadRequest(f"unknown DICOMweb proxy operation {op!r}; available: qido, wado, stow")
    if (
        path.startswith("/")
        or "\\" in path
        or any(ord(ch) < 32 or ord(ch) == 127 for ch in path)
        or any(part in (".", "..") for part in path.split("/"))
    ):
        raise BadRequest(
            f"invalid DICOMweb proxy path {path!r}: no '.' or '..' segments, absolute paths or backslashes allowed"
        )
    prefixes = prefixes or {}
    prefix = prefixes.get("wado" if op == "qido" and path.endswith("metadata") else op) or ""
    parts = [p for p in (prefix.strip("/"), quote(path, safe="/,;:=@+-._~")) if p]
    return "/".join([base, *parts])


def _upstream_auth(studies: str) -> Tuple[Any, Dict[str, str]]:
    """The credentials monailabel's proxy uses: HTTP basic auth from ``MONAI_LABEL_DICOMWEB_USERNAME`` /
    ``_PASSWORD``, or a Google Cloud bearer token for a ``googleapis.com`` store."""
    from monailabel.config import settings

    auth = None
    if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
        auth = (settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD)
    headers: Dict[str, str] = {}
    if "googleapis.com" in studies:
        import google.auth
        import google.auth.transport.requests

        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        credentials.refresh(google.auth.transport.requests.Request())
        headers["Authorization"] = f"Bearer {credentials.token}"
        auth = None
    return auth, headers


async def proxy_dicom(request: Request, op: str, path: str):
    """Forward one OHIF request to the DICOMweb server: method, path, query string, ``Accept`` / ``Content-Type``,
    body (``POST``); the answer comes back streamed, with its status code and headers (hop-by-hop ones dropped)."""
    from fastapi.responses import JSONResponse, StreamingResponse
    from monailabel.config import settings
    from starlette.background import BackgroundTask
    from starlette.concurrency import run_in_threadpool

    studies = settings.MONAI_LABEL_STUDIES
    prefixes = {
        "qido": settings.MONAI_LABEL_QIDO_PREFIX,
        "wado": settings.MONAI_LABEL_WADO_PREFIX,
        "stow": settings.MONAI_LABEL_STOW_PREFIX,
    }
    url = proxy_url(studies, op, path, prefixes)
    auth, headers = await run_in_threadpool(_upstream_auth, studies)
    for name in FORWARDED_REQUEST_HEADERS:
        if name in request.headers:
            headers[name] = request.headers[name]
    # the body is passed on as it comes (compressed or not), so the upstream may compress only if the client accepts it
    headers["Accept-Encoding"] = request.headers.get("accept-encoding", "identity")
    params: List[Tuple[str, str]] = list(request.query_params.multi_items())
    body = await request.body() if request.method == "POST" else None
    if body and op != "qido":  # STOW-RS (OHIF's save): its SEGs coded by segment name (lib/ohif.py)
        try:
            body = await run_in_threadpool(ohif.recode_stow, body, headers.get("content-type")) or body
        except Exception as e:  # never block a save: forward what came
            logger.warning("DICOMweb proxy: the uploaded SEG was not re-coded (%s: %s)", type(e).__name__, e)
    timeout = (float(settings.MONAI_LABEL_DICOMWEB_PROXY_TIMEOUT), PROXY_READ_TIMEOUT)
    try:
        upstream = await run_in_threadpool(
            requests.request,
            request.method,
            url,
            params=params,
            data=body,
            headers=headers,
            auth=auth,
            stream=True,
            timeout=timeout,
            allow_redirects=False,
        )
    except requests.RequestException as e:
        logger.warning("DICOMweb proxy: %s %s failed: %s", request.method, url, e)
        return JSONResponse({"detail": f"the DICOMweb server did not answer ({type(e).__name__})"}, status_code=502)
    logger.debug("DICOMweb proxy: %s %s -> %d", request.method, upstream.url, upstream.status_code)
    out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP_HEADERS}
    return StreamingResponse(
        upstream.raw.stream(PROXY_CHUNK, decode_content=False),
        status_code=upstream.status_code,
        headers=out_headers,
        background=BackgroundTask(upstream.close),
    )


def _proxy_endpoint(op: str, role: str) -> Callable:
    async def endpoint(request: Request, path: str, user: User = Depends(RBAC(role))):
        return await proxy_dicom(request, op, path)

    endpoint.__name__ = f"liverseg_proxy_{op or 'dicom'}"
    return endpoint


def install_proxy(fastapi_app: Any, api_prefix: str = "") -> int:
    """Put the query-forwarding DICOMweb proxy routes in front of ``fastapi_app``'s routes (so they win over
    monailabel's ``/proxy/dicom/*``); returns how many routes were added. Same role check as monailabel's proxy."""
    from fastapi import APIRouter
    from monailabel.config import settings

    router = APIRouter(prefix="/proxy")
    for op in PROXY_OPS:
        route = f"/dicom/{op}/{{path:path}}" if op else "/dicom/{path:path}"
        endpoint = _proxy_endpoint(op, settings.MONAI_LABEL_AUTH_ROLE_USER)
        router.add_api_route(route, endpoint, methods=["GET", "POST"], include_in_schema=False)
    routes = fastapi_app.router.routes
    before = len(routes)
    fastapi_app.include_router(router, prefix=api_prefix)
    added = routes[before:]
    del routes[before:]
    routes[0:0] = added
    return len(added)


def install(names: Callable[[], Dict[str, list]], checks: Optional[Dict[Tuple[str, str], Callable]] = None) -> bool:
    """Install the handlers, the middleware and the DICOMweb proxy on the running server; ``False`` outside a server
    process (or when already installed)."""
    module = sys.modules.get("monailabel.app")
    fastapi_app = getattr(module, "app", None) if module else None
    if fastapi_app is None:
        return False
    return install_on(fastapi_app, names, checks)


def install_on(
    fastapi_app: Any, names: Callable[[], Dict[str, list]], checks: Optional[Dict[Tuple[str, str], Callable]] = None
) -> bool:
    """:func:`install` on a given FastAPI app (monailabel's, or a test's); ``False`` when already installed."""
    if getattr(fastapi_app, "_liverseg_installed", False):
        return False
    from fastapi.responses import JSONResponse
    from monailabel.config import settings
    from starlette.middleware import Middleware

    async def handler(request, exc):
        status = _status_of(exc)
        msg = getattr(exc, "msg", None) or str(exc)
        if isinstance(exc, json.JSONDecodeError):
            msg = f"malformed JSON in the request parameters: {exc}"
        if status >= 500:
            logger.error("request %s failed: %s", request.url.path, msg)
        return JSONResponse({"detail": msg}, status_code=status)

    async def busy_handler(request, exc):
        return JSONResponse({"detail": exc.msg}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    for exc_class in (MONAILabelException, json.JSONDecodeError):
        fastapi_app.exception_handlers[exc_class] = handler
    fastapi_app.exception_handlers[workers.Busy] = busy_handler
    prefix = settings.MONAI_LABEL_API_STR or ""
    fastapi_app.user_middleware.insert(0, Middleware(NameCheckMiddleware, names=names, prefix=prefix))
    install_proxy(fastapi_app, prefix)
    ohif.install_ohif_config(fastapi_app, prefix)  # GET /ohif/app-config.js: save to DICOMweb from OHIF (lib/ohif.py)
    docs_page.install_docs(fastapi_app, prefix)  # GET /: offline API docs; /ohif/ in NIfTI mode: PACS-mode guide
    model_store.install_model_routes(fastapi_app, prefix)  # checked, atomic PUT/DELETE /model/{model}
    # the access checks go outermost; a setting they cannot use stops the start (ConfigError)
    security.install(fastapi_app, security.AccessPolicy.from_env(), prefix)
    workers.remove_unsupported_routes(fastapi_app, prefix)
    workers.install_gpu_log_route(fastapi_app, prefix)
    workers.offload_endpoints(fastapi_app, prefix, checks=checks)
    fastapi_app.middleware_stack = None  # rebuilt with the handlers and middleware on the next request
    fastapi_app._liverseg_installed = True
    logger.info("liver app: 4xx validation and the query-forwarding DICOMweb proxy installed on the server")
    return True
