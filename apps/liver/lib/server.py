"""Turn bad requests into 4xx answers on the running monailabel FastAPI server.

monailabel 0.8.5 registers no exception handler: every ``MONAILabelException`` (unknown model, bad input) becomes a
500, and ``POST /train/<unknown>`` even starts a background process that fails. :func:`install` adds to the server:

- exception handlers: :class:`lib.validation.BadRequest` and other ``INVALID_INPUT`` errors -> 400,
  :class:`lib.validation.NotFound`, ``ImageNotFoundException``, ``LabelNotFoundException`` -> 404, a malformed
  ``params`` JSON -> 400; the body is ``{"detail": "<message>"}`` like FastAPI's own errors;
- a small ASGI middleware answering 404 to ``POST /infer|train|activelearning|scoring/<name>`` when ``<name>`` is
  not one of the app's models / trainers / strategies / scoring methods, before monailabel does anything.

The app is created inside the server's lifespan start-up, after Starlette has built its middleware stack, so
:func:`install` resets ``middleware_stack`` to have it rebuilt on the next request (no request is served before the
lifespan start-up completes).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Callable, Dict

from lib.validation import BadRequest, NotFound
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)

logger = logging.getLogger(__name__)


def _status_of(exc: Exception) -> int:
    if isinstance(exc, (NotFound, ImageNotFoundException, LabelNotFoundException)):
        return 404
    if isinstance(exc, BadRequest):
        return 400
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
            if len(parts) == 2:
                known = self.names().get(parts[0])
                if known is not None and parts[1] not in known:
                    from starlette.responses import JSONResponse

                    what = {"infer": "model", "train": "trainer", "activelearning": "strategy", "scoring": "method"}
                    msg = f"unknown {what[parts[0]]} {parts[1]!r}; available: {', '.join(sorted(known)) or '(none)'}"
                    await JSONResponse({"detail": msg}, status_code=404)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def install(names: Callable[[], Dict[str, list]]) -> bool:
    """Install the handlers and the middleware on the running server; ``False`` outside a server process."""
    module = sys.modules.get("monailabel.app")
    fastapi_app = getattr(module, "app", None) if module else None
    if fastapi_app is None or getattr(fastapi_app, "_liverseg_installed", False):
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

    for exc_class in (MONAILabelException, json.JSONDecodeError):
        fastapi_app.exception_handlers[exc_class] = handler
    fastapi_app.user_middleware.insert(
        0, Middleware(NameCheckMiddleware, names=names, prefix=settings.MONAI_LABEL_API_STR or "")
    )
    fastapi_app.middleware_stack = None  # rebuilt with the handlers and middleware on the next request
    fastapi_app._liverseg_installed = True
    logger.info("liver app: 4xx validation installed on the server")
    return True
