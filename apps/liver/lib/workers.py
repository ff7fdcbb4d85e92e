"""Long work off the event loop: monailabel's endpoints run in worker threads, inference behind a bounded queue.

monailabel 0.8.5 declares its endpoints ``async def`` and runs inference, scoring and uploads inside them, on the
server's only event loop: while one inference ran, ``/info/`` waited up to 100 s. :func:`offload_endpoints` rebuilds
each of those routes around a plain function that runs the original coroutine in a worker thread (FastAPI runs plain
functions in its thread pool), so the loop stays free for quick answers. Compute-heavy routes (inference, scoring,
active learning, batch inference) also pass a :class:`Gate`: at most ``LIVERSEG_MAX_RUNNING`` at a time (default 1
on the CPU, one per GPU), at most ``LIVERSEG_MAX_QUEUE`` (default 8) waiting; beyond that the answer is 503 with
``Retry-After`` instead of an ever longer wait.

Before the original endpoint runs, the wrapper also checks what monailabel would have turned into a 500: a ``params``
form field that is not a JSON object (or is nested too deeply), and an inference request without an image.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from lib.validation import BadRequest, check_params_json

logger = logging.getLogger(__name__)

# (method, path template without the API prefix) of the routes that run models
COMPUTE_ROUTES = frozenset(
    {
        ("POST", "/infer/{model}"),
        ("POST", "/scoring/"),
        ("POST", "/scoring/{method}"),
        ("POST", "/activelearning/{strategy}"),
        ("POST", "/batch/infer/{model}"),
    }
)
# monailabel modules whose routes stay as they are (streaming proxies, static files)
KEEP_MODULES = ("monailabel.endpoints.proxy", "monailabel.endpoints.ohif")


class Busy(Exception):
    """The compute queue is full: answered 503 with Retry-After."""

    def __init__(self, msg: str, retry_after: int = 10):
        super().__init__(msg)
        self.msg = msg
        self.retry_after = retry_after


class Gate:
    """At most ``running`` holders at a time and at most ``waiting`` callers queued behind them."""

    def __init__(self, running: int, waiting: int):
        if running < 1 or waiting < 0:
            raise ValueError(f"Gate needs running >= 1 and waiting >= 0; got {running}, {waiting}")
        self.running, self.waiting = running, waiting
        self._sem = threading.BoundedSemaphore(running)
        self._lock = threading.Lock()
        self._queued = 0

    def __enter__(self) -> "Gate":
        if self._sem.acquire(blocking=False):
            return self
        with self._lock:
            if self._queued >= self.waiting:
                raise Busy(
                    f"the server is busy ({self.running} running, {self._queued} waiting); try again shortly"
                )
            self._queued += 1
        try:
            self._sem.acquire()
        finally:
            with self._lock:
                self._queued -= 1
        return self

    def __exit__(self, *exc) -> None:
        self._sem.release()

    @property
    def queued(self) -> int:
        return self._queued


def default_gate() -> Gate:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    running = int(os.environ.get("LIVERSEG_MAX_RUNNING") or max(1, gpus))
    waiting = int(os.environ.get("LIVERSEG_MAX_QUEUE") or 8)
    return Gate(running, waiting)


JSON_FORM_FIELDS = ("params", "info")  # form fields monailabel parses as a JSON object
# integer query parameters monailabel uses unchecked (a deque of 10^28 lines raised OverflowError: 500)
INT_BOUNDS = {
    ("GET", "/logs/"): {"lines": (0, 1_000_000), "refresh": (0, 3600)},
    ("GET", "/datastore/dataset"): {"limit_cases": (1, 1_000_000)},
}


def _check_request(key: tuple, kwargs: dict, check: Optional[Callable[[dict], None]]) -> None:
    for name in JSON_FORM_FIELDS:
        if isinstance(kwargs.get(name), str):
            check_params_json(kwargs[name], name)
    for name, (lo, hi) in INT_BOUNDS.get(key, {}).items():
        value = kwargs.get(name)
        if value is not None and not lo <= value <= hi:
            raise BadRequest(f"{name}={value}: expected {lo} <= {name} <= {hi}")
    if key == ("POST", "/infer/{model}"):
        if not (kwargs.get("image") or kwargs.get("file") or kwargs.get("session_id")):
            raise BadRequest("no input: give image=<datastore image id>, session_id=<session>, or upload a file")
    if check is not None:
        check(kwargs)


def threaded(
    endpoint: Callable, key: tuple, gate: Optional[Gate], check: Optional[Callable[[dict], None]] = None
) -> Callable:
    """A plain function with ``endpoint``'s signature that checks the request (the common checks, then ``check``
    with the endpoint's arguments), then runs the coroutine to the end in the calling (worker) thread, inside
    ``gate`` when given."""

    def run(*args: Any, **kwargs: Any) -> Any:
        _check_request(key, kwargs, check)
        if gate is None:
            return asyncio.run(endpoint(*args, **kwargs))
        with gate:
            return asyncio.run(endpoint(*args, **kwargs))

    # FastAPI reads the parameters from the signature, and would follow a __wrapped__ back to the coroutine function
    run.__signature__ = inspect.signature(endpoint, eval_str=True)
    run.__name__, run.__qualname__, run.__doc__ = endpoint.__name__, endpoint.__qualname__, endpoint.__doc__
    return run


def _route_lists(router: Any) -> Iterator[Any]:
    """``router`` and every router included in it, each once: their ``routes`` lists hold the APIRoutes (FastAPI
    0.16x keeps an included router as one ``_IncludedRouter`` entry pointing to the original router)."""
    seen = set()
    stack = [router]
    while stack:
        r = stack.pop()
        if id(r) in seen:
            continue
        seen.add(id(r))
        yield r
        for route in r.routes:
            original = getattr(route, "original_router", None)
            if original is not None:
                stack.append(original)


def _changed(router: Any) -> None:
    mark = getattr(router, "_mark_routes_changed", None)  # FastAPI caches the effective routes by version
    if mark:
        mark()


def remove_unsupported_routes(fastapi_app: Any, api_prefix: str = "") -> int:
    """Drop monailabel's whole-slide-image inference routes (``/infer/wsi*``): pathology, not CT; they answered 500."""
    removed = 0
    wsi = ("/infer/wsi", f"{api_prefix}/infer/wsi")
    for router in _route_lists(fastapi_app.router):
        keep = [r for r in router.routes if not str(getattr(r, "path", "")).startswith(wsi)]
        if len(keep) != len(router.routes):
            removed += len(router.routes) - len(keep)
            router.routes[:] = keep
            _changed(router)
    _changed(fastapi_app.router)
    return removed


def install_gpu_log_route(fastapi_app: Any, api_prefix: str = "") -> None:
    """``GET /logs/gpu`` answers 404 with the reason on a machine without ``nvidia-smi`` (monailabel: 500)."""
    import shutil
    import subprocess

    from fastapi.responses import JSONResponse, PlainTextResponse

    def gpu_info():
        exe = shutil.which("nvidia-smi")
        if not exe:
            return JSONResponse({"detail": "no NVIDIA GPU on this server (nvidia-smi not found)"}, status_code=404)
        run = subprocess.run([exe], capture_output=True, text=True, timeout=60)
        return PlainTextResponse(run.stdout or run.stderr, status_code=200 if run.returncode == 0 else 503)

    for router in _route_lists(fastapi_app.router):  # monailabel's own (it runs nvidia-smi unchecked)
        keep = [r for r in router.routes if getattr(r, "path", "") not in ("/logs/gpu", f"{api_prefix}/logs/gpu")]
        if len(keep) != len(router.routes):
            router.routes[:] = keep
            _changed(router)
    fastapi_app.add_api_route(f"{api_prefix}/logs/gpu", gpu_info, methods=["GET"], summary="GPU Info (nvidia-smi)")
    routes = fastapi_app.router.routes
    routes.insert(0, routes.pop())
    _changed(fastapi_app.router)


def offload_endpoints(
    fastapi_app: Any,
    api_prefix: str = "",
    gate: Optional[Gate] = None,
    checks: Optional[Dict[Tuple[str, str], Callable[[dict], None]]] = None,
) -> int:
    """Rebuild monailabel's ``async def`` routes of ``fastapi_app`` around :func:`threaded`; returns how many.

    ``checks`` maps ``(method, path template)`` to a function called with the endpoint's arguments before it runs
    (raising :class:`lib.validation.BadRequest` & co. to refuse the request).
    """
    from fastapi.routing import APIRoute

    gate = gate or default_gate()
    checks = checks or {}
    count = 0
    for router in _route_lists(fastapi_app.router):
        routes = router.routes
        for i, route in enumerate(routes):
            if not isinstance(route, APIRoute) or not inspect.iscoroutinefunction(route.endpoint):
                continue
            module = getattr(route.endpoint, "__module__", "") or ""
            if not module.startswith("monailabel.endpoints") or module.startswith(KEEP_MODULES):
                continue
            path = route.path[len(api_prefix) :] if api_prefix and route.path.startswith(api_prefix) else route.path
            keys = {(m, path) for m in route.methods}
            key = next(iter(keys & COMPUTE_ROUTES), next(iter(keys)))
            endpoint = threaded(route.endpoint, key, gate if key in COMPUTE_ROUTES else None, checks.get(key))
            routes[i] = APIRoute(
                route.path,
                endpoint,
                methods=list(route.methods),
                name=route.name,
                summary=route.summary,
                description=route.description,
                tags=route.tags,
                dependencies=route.dependencies,
                responses=route.responses,
                response_model=route.response_model,
                response_class=route.response_class,
                status_code=route.status_code,
                include_in_schema=route.include_in_schema,
                operation_id=route.operation_id,
                deprecated=route.deprecated,
            )
            count += 1
        _changed(router)
    _changed(fastapi_app.router)
    logger.info("%d monailabel routes run in worker threads (compute: %d running, %d waiting)", count,
                gate.running, gate.waiting)  # fmt: skip
    return count
